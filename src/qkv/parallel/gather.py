"""Rows of every rank, gathered with their gradient: what a contrastive loss over a
data-parallel step needs (every rank's embeddings are the negatives of every other's).

:func:`gather_rows` is open_clip's ``gather_with_grad`` for shares of unequal size: each rank
pads its rows to the largest share, ``dist.all_gather`` collects them, and the padding is
dropped, so the result is the step's rows in rank order. Its backward sums the gradients every
rank computed for the gathered rows (``all_reduce``) and keeps this rank's slice: a loss each
rank computes on its own rows against all of them (open_clip's ``local_loss``), weighted by its
share, then has, summed over the ranks, the gradient of the loss of the whole step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["gather_rows"]


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sizes: tuple[int, ...], rank: int) -> Tensor:
        ctx.sizes, ctx.rank, ctx.rows = sizes, rank, x.shape[0]
        padded = x.new_zeros(max(sizes), *x.shape[1:])  # (most, ...)
        padded[: sizes[rank]] = x[: sizes[rank]]
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])  # (sum(sizes), ...)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        total = grad.contiguous().clone()
        dist.all_reduce(total)  # every rank's gradient of the gathered rows, summed
        start, n = sum(ctx.sizes[: ctx.rank]), ctx.sizes[ctx.rank]
        out = grad.new_zeros(ctx.rows, *grad.shape[1:])
        out[:n] = total[start : start + n]
        return out, None, None


def gather_rows(x: Tensor, sizes: Sequence[int], rank: int) -> Tensor:
    """Every rank's rows, in rank order, differentiable (module docstring): ``x (n, ...)`` is
    this rank's, of which the first ``sizes[rank]`` are real (a rank without a share gives 0 of
    its stand-in row); -> ``(sum(sizes), ...)``. A collective: every rank calls it, with the same
    ``sizes``. Outside a process group (one process) it returns ``x[:sizes[0]]``.

    Raises:
        ValueError: ``sizes`` not one count per rank, or ``x`` with fewer rows than its count.
    """
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    sizes = tuple(int(n) for n in sizes)
    if len(sizes) != world or not 0 <= rank < world or min(sizes) < 0 or max(sizes) < 1:
        raise ValueError(f"sizes: expected {world} row counts (one per rank, some > 0) and rank in "
                         f"[0, {world}), got sizes={sizes}, rank={rank}")  # fmt: skip
    if x.shape[0] < sizes[rank]:
        raise ValueError(f"x: expected at least sizes[{rank}]={sizes[rank]} rows, got {x.shape[0]}")
    if world == 1:
        return x[: sizes[0]]
    return _GatherRows.apply(x, sizes, rank)
