"""Longformer and BigBird: named compositions of the basic patterns (no new classes)."""

from __future__ import annotations

from .._checks import check_int
from .core import Mask
from .global_tokens import _as_indices, _GlobalTokens
from .random_blocks import random_blocks as _random_blocks
from .window import block_local, sliding_window

__all__ = ["bigbird", "longformer"]


def longformer(window: int, global_indices=()) -> Mask:
    """Longformer attention (Beltagy et al., 2020): ``sliding_window(window) |
    global_tokens(global_indices)``: a symmetric window of ``window`` keys on each side plus
    global positions that see and are seen by all. ``longformer(1, [0])`` at ``Tq = Tk = 6``::

        x x x x x x
        x x x . . .
        x x x x . .
        x . x x x .
        x . . x x x
        x . . . x x

    Raises:
        TypeError / ValueError: as :func:`sliding_window` and :func:`global_tokens`.
    """
    check_int("longformer: window", window, 0)
    glob = _GlobalTokens(_as_indices("longformer: global_indices", global_indices))
    mask = sliding_window(window) | glob
    mask.name = f"longformer(window={window}, globals={len(glob.indices)})"
    return mask


def bigbird(
    block: int = 64, window_blocks: int = 3, global_blocks: int = 2, random_blocks: int = 3, seed: int = 0
) -> Mask:
    """BigBird attention (Zaheer et al., 2020, "Big Bird: Transformers for Longer Sequences"),
    blocked form (ITC): with ``qb = i // block`` and ``kb = j // block``, ``(i, j)`` is allowed by

    - the block window: ``|qb - kb| <= window_blocks // 2`` (3 window blocks = the block itself
      and one on each side), i.e. ``block_local(block, radius=window_blocks // 2)``;
    - global tokens: the first ``global_blocks * block`` positions see and are seen by all
      (positions beyond the sequence are dropped);
    - random blocks: ``random_blocks(random_blocks, block, seed)``.

    ``bigbird(block=2, window_blocks=1, global_blocks=1, random_blocks=1, seed=0)`` at
    ``Tq = Tk = 8``::

        x x x x x x x x
        x x x x x x x x
        x x x x x x . .
        x x x x x x . .
        x x . . x x x x
        x x . . x x x x
        x x . . . . x x
        x x . . . . x x

    Raises:
        TypeError / ValueError: ``block`` or ``window_blocks`` < 1, negative counts, non-int seed.
    """
    check_int("bigbird: block", block, 1)
    check_int("bigbird: window_blocks", window_blocks, 1)
    check_int("bigbird: global_blocks", global_blocks, 0)
    check_int("bigbird: random_blocks", random_blocks, 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"bigbird: seed must be an int, got {seed!r}")
    mask = block_local(block, radius=window_blocks // 2)
    if global_blocks:
        n = global_blocks * block
        mask = mask | _GlobalTokens(tuple(range(n)), strict=False, name=f"global_tokens(first {n})")
    if random_blocks:
        mask = mask | _random_blocks(random_blocks, block, seed)
    mask.name = (
        f"bigbird(block={block}, window_blocks={window_blocks}, global_blocks={global_blocks}, "
        f"random_blocks={random_blocks}, seed={seed})"
    )
    return mask
