"""``context_parallel``: the ``with`` block inside which ``qkv.attention`` runs the ring."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch.distributed as dist

from ..backends.sequence_parallel import LAYOUTS, SequenceParallel, activate

__all__ = ["context_parallel", "group_rank_world"]


def group_rank_world(group: Any) -> tuple[int, int]:
    """``(rank, world)`` of this process in ``group`` (None: the default group); a clear
    error when ``torch.distributed`` is not initialized."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "group: torch.distributed is not initialized; call torch.distributed.init_process_group "
            "(or run under torchrun) before sharding a sequence"
        )
    return dist.get_rank(group), dist.get_world_size(group)


@contextlib.contextmanager
def context_parallel(group: Any = None, *, layout: str = "contiguous") -> Iterator[SequenceParallel]:
    """Run attention over a sequence sharded across ``group`` inside the block.

    Inside it, ``qkv.attention(q, k, v, backend="ring")`` and ``backend="auto"`` take this
    rank's shards ``(..., H, T / world, D)`` (positions given by ``layout``, see
    :func:`qkv.distributed.sequence_positions`) and return this rank's rows; patterns such as
    ``qkv.masks.causal()`` are in global coordinates. The context is per thread (a context
    variable), never process-wide.

    Args:
        group: a ``torch.distributed`` process group (None: the default group). A group of one
            process runs the ring with no messages.
        layout: ``"contiguous"`` (rank r holds ``[r T/w, (r+1) T/w)``) or ``"zigzag"`` (two
            chunks per rank, balanced under a causal mask).

    Yields:
        the :class:`SequenceParallel` context; its ``stats`` count the ring's receives and bytes.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    rank, world = group_rank_world(group)
    with activate(SequenceParallel(group=group, layout=layout, rank=rank, world=world)) as sp:
        yield sp
