"""The distributed sampler of qkv's batches: rank ``r`` of ``world`` takes rows ``r::world`` of
each batch of ``world x batch_size`` the task plans (shuffled, bucketed by length: the plan of a
one-process run with that batch size), so every rank has a different, deterministic share of
every step, and the union of the shares is that step's batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from .._checks import check_int

__all__ = ["Share", "share_of"]


class Share(NamedTuple):
    """One rank's part of a step: ``batch`` (its rows), and ``real``: False when the step's batch
    has no row for this rank (a last batch smaller than the world), ``batch`` then being a
    stand-in row whose loss counts zero (every rank must still run the step)."""

    batch: Any
    real: bool


def share_of(rows: Sequence[int], rank: int, world: int) -> Share:
    """Rank ``rank``'s rows of a step's ``rows``: ``rows[rank::world]`` (interleaved, so in a
    batch sorted by length every rank gets lengths alike); ``Share(rows[:1], False)`` when
    there is none. Raises ValueError: ``world < 1``, ``rank`` outside ``[0, world)``, no rows."""
    check_int("world", world, 1)
    check_int("rank", rank, 0)
    if rank >= world:
        raise ValueError(f"rank: expected an int in [0, {world}), got {rank}")
    if not len(rows):
        raise ValueError("rows: expected the rows of a batch, got none")
    mine = list(rows[rank::world])
    return Share(mine, True) if mine else Share(list(rows[:1]), False)
