"""A :class:`~qkv.train.loop.Trainer` as one process of a data-parallel group.

:func:`data_parallel` gives the trainer a :class:`DataParallelTask`: the application's task
sharded (its ``shard(rank, world)``: batches of this rank's :class:`~qkv.parallel.sampler.Share`
of each step of ``world x batch_size``), its model replicated by
:class:`~torch.nn.parallel.DistributedDataParallel` (gradients averaged over the ranks in the
backward pass). The step of ``world`` ranks with ``batch_size`` each equals the step of one
process with ``world x batch_size``: each rank's mean loss is weighted by its share of the
step's units (target tokens, images), so the averaged gradient is the gradient of the step's
mean, and the loss the trainer records is the step's mean over all ranks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..train.loop import Task, Trainer
from .group import Group
from .sampler import Share

__all__ = ["DataParallelTask", "data_parallel"]


class _Replica(DistributedDataParallel):
    """DistributedDataParallel that also answers for the attributes of its module (a task's
    loss may look up, e.g., ``auxiliary_loss`` on the model it is given)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


class _Step(NamedTuple):
    share: Share
    epoch: int
    index: int  # the step's batch in its epoch


class DataParallelTask:
    """``task`` (sharded: its batches are :class:`Share` objects) run through ``replica`` (the
    trainer's model in :class:`~torch.nn.parallel.DistributedDataParallel`) on ``group``. The
    random numbers of a step (dropout) come from a generator seeded by ``(seed, epoch, batch,
    rank)``: each rank draws its own, and a resumed run draws the same without storing every
    rank's generators. Validation is the task's, on every rank (the same weights everywhere)."""

    def __init__(self, task: Task, replica: nn.Module, group: Group, *, seed: int):
        self.task, self.replica, self.group, self.seed = task, replica, group, seed
        self.batches_per_epoch, self.count_unit = task.batches_per_epoch, task.count_unit

    def batches(self, epoch: int, start: int) -> Iterator[_Step]:
        for index, share in enumerate(self.task.batches(epoch, start), start=start):
            yield _Step(share, epoch, index)

    def loss(self, model: nn.Module, step: _Step) -> tuple[Tensor, int]:
        """The loss whose gradient, averaged over the ranks, is the step's mean loss gradient;
        its value is the step's mean loss, and the count the units of the whole step."""
        seed = ((self.seed * 1_000_003 + step.epoch) * 1_000_003 + step.index) * 1_009 + self.group.rank
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed % 2**63)
            loss, count = self.task.loss(self.replica, step.share.batch)
        count = count if step.share.real else 0
        totals = torch.tensor([float(loss.detach()) * count, count], dtype=torch.float64)
        dist.all_reduce(totals)  # (sum of loss x units, units) over the ranks
        units = max(float(totals[1]), 1.0)
        weighted = loss * (self.group.world * count / units)  # DDP divides the gradient sum by world
        return weighted + (float(totals[0]) / units - weighted.detach()), int(totals[1])

    def validate(self, model: nn.Module) -> dict[str, float | None]:
        return self.task.validate(model)


def data_parallel(trainer: Trainer, group: Group) -> Trainer:
    """Make ``trainer`` rank ``group.rank`` of a data-parallel run (in place; returned): its task
    sharded and run through a :class:`DataParallelTask`, checkpoints written by rank 0 alone
    (the others waiting at a barrier), one stop decision for all ranks, and the world size in
    the run state (a resume checks it). Raises TypeError: a task without ``shard``."""
    shard = getattr(trainer.task, "shard", None)
    if shard is None:
        raise TypeError(
            f"task: data-parallel training needs a task with shard(rank, world), "
            f"got {type(trainer.task).__name__} without one"
        )
    device = next(trainer.model.parameters()).device
    replica = _Replica(trainer.model, device_ids=[device.index] if device.type == "cuda" else None)
    trainer.task = DataParallelTask(shard(group.rank, group.world), replica, group, seed=trainer.config.seed)
    trainer.group = group
    trainer.state.world_size = group.world
    return trainer
