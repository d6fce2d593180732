"""The processes of a data-parallel run: :func:`process_group` joins the group ``torchrun`` set
up (its ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` environment)
or one already initialized (tests: a ``file://`` rendezvous), and gives a :class:`Group`."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Group", "backend_for", "check_world_size", "process_group"]


def backend_for(cuda: bool) -> str:
    """The ``torch.distributed`` backend: gloo for CPU tensors; with CUDA, nccl for CUDA tensors
    beside gloo for CPU ones (``"cpu:gloo,cuda:nccl"``)."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


@dataclass
class Group:
    """This process in a group of ``world`` (``rank`` 0 the one that writes checkpoints and
    prints). SIGINT and SIGTERM, inside :meth:`stop_signals`, only record a stop:
    :meth:`agree_stop` turns the records of all ranks into one decision, so every rank stops
    at the same step boundary (a signal reaches the ranks at different moments)."""

    rank: int
    world: int
    local_rank: int = 0
    _signal: int = field(default=0, repr=False)

    @property
    def is_writer(self) -> bool:
        """Whether this process writes checkpoints and prints the progress (rank 0)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank is here."""
        dist.barrier()

    def agree_stop(self) -> int | None:
        """The stop signal any rank has received (the highest number), or None: a collective,
        called by every rank at the same point."""
        flag = torch.tensor([self._signal], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag) or None

    @contextlib.contextmanager
    def stop_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM record a stop for :meth:`agree_stop` for the block's duration
        (main thread only, never over an ignored signal); the handlers before are restored."""
        installed: dict[int, Any] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            before = signal.getsignal(signum)
            if threading.current_thread() is threading.main_thread() and before not in (None, signal.SIG_IGN):
                installed[signum] = signal.signal(signum, self._record)
        try:
            yield
        finally:
            for signum, before in installed.items():
                signal.signal(signum, before)

    def _record(self, signum: int, frame: Any) -> None:
        self._signal = self._signal or signum


@contextlib.contextmanager
def process_group() -> Iterator[Group | None]:
    """The :class:`Group` of this process, or None for a one-process run. A group already
    initialized is used as it is (and left to its owner); else, when ``WORLD_SIZE`` > 1 (set
    by ``torchrun``), the group is initialized from the environment with
    :func:`backend_for` and destroyed at the end of the block."""
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        yield Group(dist.get_rank(), world, local) if world > 1 else None
        return
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield None
        return
    dist.init_process_group(backend=backend_for(torch.cuda.is_available()))
    try:
        yield Group(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    finally:
        dist.destroy_process_group()


def check_world_size(saved: int, world: int) -> None:
    """Refuse to resume a run saved by ``saved`` processes on ``world``: each process trains on
    ``batch_size`` examples a step, so another world size is another batch (and another plan of
    batches). Raises ValueError naming both and how to resume."""
    if saved != world:
        raise ValueError(
            f"--resume: the run was trained by {saved} process{'es' if saved > 1 else ''} "
            f"(a step of {saved} x batch_size examples); resume it with {saved} "
            f"(--nproc {saved}, or torchrun --nproc_per_node/--nnodes making {saved}), not {world}"
        )
