"""Local patterns: sliding window (Longformer), dilated window, block-local (and BigBird's
block-level window).

Indices of queries and keys live in the same space, top-left aligned: query ``i`` and key ``i``
are the same position, also when ``Tq != Tk``.
"""

from __future__ import annotations

import torch

from .._checks import check_int
from .core import Mask, band_layout, block_bounds

__all__ = ["block_local", "dilated", "sliding_window"]


class _SlidingWindow(Mask):
    depends_on_batch_head = False

    def __init__(self, left: int, right: int) -> None:
        self.left, self.right = left, right
        self.name = (
            f"sliding_window({left})" if left == right else f"sliding_window(left={left}, right={right})"
        )

    def mask_mod(self, q_len, kv_len):
        left, right = self.left, self.right

        def fn(b, h, q, kv):
            d = kv - q
            return (d >= -left) & (d <= right)

        return fn

    def _layout(self, q_len, kv_len, q_block, kv_block, device):
        return band_layout(q_len, kv_len, q_block, kv_block, -self.left, self.right, device)


def sliding_window(left: int, right: int | None = None) -> Mask:
    """Local attention: query ``i`` sees key ``j`` when ``i - left <= j <= i + right``.

    Longformer's local part (Beltagy et al., 2020, "Longformer: The Long-Document
    Transformer"); ``right=None`` means ``right = left`` (symmetric), ``right=0`` is causal
    local attention. ``sliding_window(1)`` at ``Tq = Tk = 5``::

        x x . . .
        x x x . .
        . x x x .
        . . x x x
        . . . x x

    Raises:
        TypeError / ValueError: ``left`` or ``right`` not an int >= 0.
    """
    check_int("sliding_window: left", left, 0)
    right = left if right is None else check_int("sliding_window: right", right, 0)
    return _SlidingWindow(left, right)


class _Dilated(Mask):
    depends_on_batch_head = False

    def __init__(self, window: int, dilation: int) -> None:
        self.window, self.dilation = window, dilation
        self.name = f"dilated(window={window}, dilation={dilation})"

    def mask_mod(self, q_len, kv_len):
        reach, dil = self.window * self.dilation, self.dilation

        def fn(b, h, q, kv):
            d = kv - q
            return (d.abs() <= reach) & (d.remainder(dil) == 0)

        return fn

    def _layout(self, q_len, kv_len, q_block, kv_block, device):
        reach, dil = self.window * self.dilation, self.dilation
        band_any, band_all = band_layout(q_len, kv_len, q_block, kv_block, -reach, reach, device)
        if dil == 1:
            return band_any, band_all
        qf, ql = block_bounds(q_len, q_block, device)
        kf, kl = block_bounds(kv_len, kv_block, device)
        d_min = kf[None, :] - ql[:, None]  # (nQB, nKB): the tile's differences kv - q are
        d_max = kl[None, :] - qf[:, None]  # every integer in [d_min, d_max]
        lo, hi = d_min.clamp(min=-reach), d_max.clamp(max=reach)
        # some multiple of the dilation lies in [lo, hi]
        any_ = band_any & (torch.div(hi, dil, rounding_mode="floor") * dil >= lo)
        # all pairs allowed only when the tile holds a single difference (1 x 1 tiles)
        all_ = band_all & (d_min == d_max) & (d_min.remainder(dil) == 0)
        return any_, all_


def dilated(window: int, dilation: int) -> Mask:
    """Dilated sliding window: query ``i`` sees key ``j = i + m * dilation`` for ``|m| <= window``.

    Longformer's dilated window (Beltagy et al., 2020): the receptive field grows to
    ``window * dilation`` on each side at the cost of ``2 * window + 1`` keys.
    ``dilated(window=1, dilation=2)`` at ``Tq = Tk = 6``::

        x . x . . .
        . x . x . .
        x . x . x .
        . x . x . x
        . . x . x .
        . . . x . x

    Raises:
        TypeError / ValueError: ``window`` < 0 or ``dilation`` < 1 (or not ints).
    """
    check_int("dilated: window", window, 0)
    check_int("dilated: dilation", dilation, 1)
    return _Dilated(window, dilation)


class _BlockLocal(Mask):
    depends_on_batch_head = False

    def __init__(self, block: int, radius: int) -> None:
        self.block, self.radius = block, radius
        self.name = f"block_local({block})" if radius == 0 else f"block_local({block}, radius={radius})"

    def mask_mod(self, q_len, kv_len):
        block, radius = self.block, self.radius

        def fn(b, h, q, kv):
            return (
                torch.div(kv, block, rounding_mode="floor") - torch.div(q, block, rounding_mode="floor")
            ).abs() <= radius

        return fn

    def _layout(self, q_len, kv_len, q_block, kv_block, device):
        # A layout tile covers pattern blocks [q_first // block, q_last // block] x (same for kv);
        # every pair of pattern blocks in that rectangle has a real pair in the tile, so the
        # band test on pattern-block differences is exact.
        qf, ql = block_bounds(q_len, q_block, device)
        kf, kl = block_bounds(kv_len, kv_block, device)
        bs, r = self.block, self.radius
        d_min = (kf // bs)[None, :] - (ql // bs)[:, None]
        d_max = (kl // bs)[None, :] - (qf // bs)[:, None]
        return (d_max >= -r) & (d_min <= r), (d_min >= -r) & (d_max <= r)


def block_local(block: int, radius: int = 0) -> Mask:
    """Block-local attention: query ``i`` sees key ``j`` when ``i // block == j // block``.

    The sequence is cut into blocks of ``block`` positions that attend only within themselves
    (the local block attention of Image Transformer, Parmar et al., 2018, and of BigBird's
    blocked implementation). With ``radius = r`` each block also sees ``r`` neighbour blocks on
    each side: ``|i // block - j // block| <= r`` (BigBird's window of ``2r + 1`` blocks).
    ``block_local(2)`` at ``Tq = Tk = 5``::

        x x . . .
        x x . . .
        . . x x .
        . . x x .
        . . . . x

    Raises:
        TypeError / ValueError: ``block`` < 1 or ``radius`` < 0 (or not ints).
    """
    check_int("block_local: block", block, 1)
    check_int("block_local: radius", radius, 0)
    return _BlockLocal(block, radius)
