"""A pattern read at global positions: the rows and columns of one call are a window of a longer
sequence (a decoder's new tokens against its KV cache, one chunk of a long prefill).

    shifted(pattern, q_offset=5, kv_offset=0)   # query i is position 5 + i, key j is position j

Query ``i`` of the call sits at position ``q_offset + i``, key ``j`` at ``kv_offset + j``, and the
pair is allowed when ``pattern`` allows those positions in a sequence long enough to hold
both. ``shifted(causal("top_left"), q_offset=Tk - Tq, kv_offset=0)`` is
``causal("bottom_right")``; a decode step's single query at position ``p`` sees the keys
``pattern`` allows in row ``p``.

Block layouts stay analytic where the pattern is a band (:func:`causal`,
:func:`sliding_window`: the band moves by ``q_offset - kv_offset``) and ``&``, ``|``, ``~``
distribute over the shift. Another pattern's layout is its own at the full lengths, sliced,
when both offsets are multiples of the tile sizes (a prefill from position 0), and otherwise
the tile reduction of its ``Tq x Tk`` matrix (a decode step: ``Tq = 1``).
"""

from __future__ import annotations

import torch

from .._checks import check_int
from .core import Mask, _Causal, _Combined, _Full, _Not, _TensorMask, band_layout, reduce_dense
from .window import _SlidingWindow

__all__ = ["shifted"]


def shifted(mask: Mask, *, q_offset: int, kv_offset: int) -> Mask:
    """``mask`` with query ``i`` at position ``q_offset + i`` and key ``j`` at ``kv_offset + j``.

    Args:
        mask: a :class:`Mask` pattern (a bool tensor has fixed lengths and cannot be shifted).
        q_offset, kv_offset: ints >= 0.

    Returns:
        A :class:`Mask` (``mask`` itself when both offsets are 0).

    Raises:
        TypeError: ``mask`` is not a pattern (a tensor mask, or not a mask at all).
        TypeError / ValueError: an offset is not an int >= 0.
    """
    check_int("shifted: q_offset", q_offset, 0)
    check_int("shifted: kv_offset", kv_offset, 0)
    if not isinstance(mask, Mask) or isinstance(mask, _TensorMask):
        raise TypeError(
            f"shifted: mask must be a qkv.masks pattern (a tensor has fixed lengths), got {mask!r:.60}"
        )
    if q_offset == 0 and kv_offset == 0:
        return mask
    return _shift(mask, q_offset, kv_offset)


def _shift(mask: Mask, qo: int, ko: int) -> Mask:
    d = qo - ko  # position difference kv - q = (j - i) - d
    if isinstance(mask, _Combined):
        return _Combined(mask.op, _shift(mask.left, qo, ko), _shift(mask.right, qo, ko))
    if isinstance(mask, _Not):
        return _Not(_shift(mask.inner, qo, ko))
    if isinstance(mask, _Full):
        return mask
    if isinstance(mask, _Band):
        return _Band(_add(mask.lo, d), _add(mask.hi, d), f"{mask.name}@{qo},{ko}")
    if isinstance(mask, _SlidingWindow):
        return _Band(d - mask.left, d + mask.right, f"{mask.name}@{qo},{ko}")
    if isinstance(mask, _Causal) and mask.alignment in (None, "top_left"):
        return _Band(None, d, f"causal@{qo},{ko}")
    return _Shifted(mask, qo, ko)


def _add(bound: int | None, d: int) -> int | None:
    return None if bound is None else bound + d


class _Band(Mask):
    """Query ``i`` sees key ``j`` when ``lo <= j - i <= hi`` (None = unbounded on that side)."""

    depends_on_batch_head = False

    def __init__(self, lo: int | None, hi: int | None, name: str) -> None:
        self.lo, self.hi, self.name = lo, hi, name

    def is_plain_causal(self, q_len: int, kv_len: int) -> bool:
        return self.lo is None and self.hi == 0 and q_len == kv_len

    def mask_mod(self, q_len, kv_len):
        lo, hi = self.lo, self.hi

        def fn(b, h, q, kv):
            d = kv - q
            ok = torch.ones_like(d, dtype=torch.bool)
            if lo is not None:
                ok = ok & (d >= lo)
            return ok if hi is None else ok & (d <= hi)

        return fn

    def _layout(self, q_len, kv_len, q_block, kv_block, device):
        return band_layout(q_len, kv_len, q_block, kv_block, self.lo, self.hi, device)


class _Shifted(Mask):
    """Any other pattern, evaluated at ``(q_offset + i, kv_offset + j)``."""

    def __init__(self, inner: Mask, q_offset: int, kv_offset: int) -> None:
        self.inner, self.q_offset, self.kv_offset = inner, q_offset, kv_offset
        self.name = f"{inner.name}@{q_offset},{kv_offset}"

    @property
    def depends_on_batch_head(self) -> bool:
        return self.inner.depends_on_batch_head

    @property
    def batch_head_shape(self) -> tuple[int, int] | None:
        return self.inner.batch_head_shape

    def mask_mod(self, q_len, kv_len):
        qo, ko = self.q_offset, self.kv_offset
        fn = self.inner.mask_mod(qo + q_len, ko + kv_len)
        return lambda b, h, q, kv: fn(b, h, q + qo, kv + ko)

    def _layout(self, q_len, kv_len, q_block, kv_block, device):
        qo, ko = self.q_offset, self.kv_offset
        if qo % q_block or ko % kv_block:  # tiles do not line up: reduce this call's matrix
            dense = self.materialize(q_len, kv_len, device=device)
            return reduce_dense(dense, q_len, kv_len, q_block, kv_block)
        full = self.inner.block_layout(qo + q_len, ko + kv_len, q_block, kv_block, device=device)
        rows, cols = slice(qo // q_block, None), slice(ko // kv_block, None)
        return full.any[rows, cols], full.all[rows, cols]
