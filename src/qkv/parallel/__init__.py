"""Data-parallel training on ``torch.distributed``: one process per share of every batch, their
gradients averaged by :class:`~torch.nn.parallel.DistributedDataParallel`.

:func:`process_group` joins the group ``torchrun`` (or a test) set up and gives a :class:`Group`
(rank, world size, the one writing process, barriers, one stop decision for all);
:func:`share_of` is the sampler: each rank's rows of a batch of ``world x batch_size``;
:func:`gather_rows` gathers every rank's rows with their gradient (contrastive losses);
:func:`data_parallel` turns a :class:`~qkv.train.loop.Trainer` into one of the group's
processes; :func:`launch` starts ``N`` processes with torchrun's elastic agent.
"""

from .gather import gather_rows
from .group import Group, backend_for, check_world_size, process_group
from .launch import launch
from .sampler import Share, share_of
from .task import DataParallelTask, data_parallel

__all__ = [
    "DataParallelTask",
    "Group",
    "Share",
    "backend_for",
    "check_world_size",
    "data_parallel",
    "gather_rows",
    "launch",
    "process_group",
    "share_of",
]
