"""A sequence split into this rank's shard and put back together, under a layout."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..backends.sequence_parallel import positions
from .context import group_rank_world

__all__ = ["gather_sequence", "sequence_positions", "shard_sequence"]


def sequence_positions(length: int, *, rank: int, world: int, layout: str = "contiguous") -> Tensor:
    """The global positions ``(length / world,)`` rank ``rank`` holds of a sequence of
    ``length`` (``"contiguous"``: one run; ``"zigzag"``: chunks ``rank`` and
    ``2 world - 1 - rank`` of ``2 world``)."""
    parts = world if layout == "contiguous" else 2 * world
    if length % parts:
        raise ValueError(
            f"length: layout {layout!r} over {world} ranks needs a multiple of {parts} positions, got {length}"
        )
    return positions(layout, rank, world, length // world)


def shard_sequence(x: Tensor, *, dim: int = -2, group: Any = None, layout: str = "contiguous") -> Tensor:
    """This rank's shard of the full sequence ``x`` along ``dim`` (positions of
    :func:`sequence_positions`), contiguous in memory."""
    rank, world = group_rank_world(group)
    pos = sequence_positions(x.shape[dim], rank=rank, world=world, layout=layout).to(x.device)
    return x.index_select(dim, pos).contiguous()


def gather_sequence(x: Tensor, *, dim: int = -2, group: Any = None, layout: str = "contiguous") -> Tensor:
    """The full sequence from every rank's shard ``x`` (the inverse of :func:`shard_sequence`;
    an all-gather, not differentiable)."""
    _, world = group_rank_world(group)
    shards = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(shards, x.contiguous(), group=group)
    total = x.shape[dim] * world
    full = torch.cat(shards, dim)
    order = torch.cat([sequence_positions(total, rank=r, world=world, layout=layout) for r in range(world)])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(total)
    return full.index_select(dim, inverse.to(x.device))
