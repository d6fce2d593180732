"""d2l-style ``valid_lens`` at the edge of the d2l-shaped modules.

Shape legend: ``B`` batch, ``Tq`` query length, ``Tk`` key length.
"""

from __future__ import annotations

from torch import Tensor

from ..masks.core import Mask, MaskLike, check_bool_mask, from_lengths

__all__ = ["lengths_mask"]


def lengths_mask(
    valid_lens: Tensor | None, mask: MaskLike | None, *, batch: int, q_len: int, kv_len: int
) -> MaskLike | None:
    """``from_lengths(valid_lens, Tk) & mask`` (either may be None), checked against ``B``/``Tq``.

    ``valid_lens`` is ``(B,)`` (one length per sequence) or ``(B, Tq)`` (one per query); the
    mask it gives is ``(B, 1, 1, Tk)`` or ``(B, 1, Tq, Tk)``, which fits a one-head
    ``(B, T, D)`` call of :func:`qkv.attention`.

    Raises:
        ValueError: ``valid_lens`` whose shape is not ``(B,)`` or ``(B, Tq)``.
        TypeError: a mask that is not bool.
    """
    if mask is not None and not isinstance(mask, Mask):
        check_bool_mask(mask, "mask")
    if valid_lens is None:
        return mask
    if not isinstance(valid_lens, Tensor):
        raise TypeError(
            f"valid_lens: expected an integer tensor (B,) or (B, Tq), got {type(valid_lens).__name__}"
        )
    if tuple(valid_lens.shape) not in ((batch,), (batch, q_len)):
        raise ValueError(
            f"valid_lens: expected shape (B,) = ({batch},) or (B, Tq) = ({batch}, {q_len}), "
            f"got {tuple(valid_lens.shape)}"
        )
    keep = from_lengths(valid_lens, kv_len)  # (B, 1, 1, Tk) or (B, 1, Tq, Tk)
    if isinstance(mask, Tensor) and mask.dim() <= 3:
        # the one-head layout of qkv.attention: (B, Tq, Tk) is per sample -> (B, 1, Tq, Tk)
        mask = mask.reshape((1,) * (3 - mask.dim()) + tuple(mask.shape)).unsqueeze(-3)
    return keep if mask is None else mask & keep
