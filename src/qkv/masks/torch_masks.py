"""torch's mask conventions, converted at the edge to qkv's (bool, True = may attend, plus an
additive float bias).

``torch.nn.MultiheadAttention`` takes:

- ``attn_mask``: bool with True = *not* allowed, or float added to the scores (``-inf`` =
  not allowed); shape ``(Tq, Tk)`` or ``(B * num_heads, Tq, Tk)``.
- ``key_padding_mask``: ``(B, Tk)``, bool with True = padding (never attended), or float
  added to the scores.

A float mask becomes a bool mask (``-inf`` entries are not allowed) and, when any finite entry
is not zero, an additive bias holding the finite entries. Rows without an allowed key give
zeros in qkv (NaN in torch).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .core import PADDING_MEANING

__all__ = [
    "ATTN_MASK_MEANING", "from_torch_attn_mask", "from_torch_key_padding", "is_causal_matrix", "split_float_mask",
]  # fmt: skip

ATTN_MASK_MEANING = "torch's convention: bool True = not allowed, or float added to the scores"


def split_float_mask(mask: Tensor) -> tuple[Tensor, Tensor | None]:
    """A float mask added to the scores -> ``(keep, bias)``: ``keep`` bool, True where the
    entry is not ``-inf``; ``bias`` the finite entries, or None when they are all zero."""
    keep = mask != float("-inf")
    bias = mask.masked_fill(~keep, 0.0)
    if torch.compiler.is_compiling():  # no data-dependent branch in a traced graph
        return keep, bias
    return keep, (bias if bool(bias.any()) else None)


def _check_dtype(name: str, mask: Tensor, meaning: str) -> None:
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name}: expected a bool or float tensor ({meaning}), got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"{name}: expected dtype torch.bool or a float dtype ({meaning}), got {mask.dtype} "
            "(an integer mask has no agreed meaning: convert it with .bool() after checking which "
            "value marks what)"
        )


def from_torch_attn_mask(
    attn_mask: Tensor, bsz: int, heads: int, q_len: int, kv_len: int
) -> tuple[Tensor, Tensor | None]:
    """torch's ``attn_mask`` -> ``(keep, bias)`` broadcastable to ``(B, H, Tq, Tk)``.

    Args:
        attn_mask: ``(Tq, Tk)`` (every sample and head) or ``(B * H, Tq, Tk)`` (row
            ``b * H + h``, torch's layout), bool (True = not allowed) or float (additive).

    Returns:
        ``keep`` bool, True = may attend, ``(1, 1, Tq, Tk)`` or ``(B, H, Tq, Tk)``, and the
        additive ``bias`` of the same shape or None.

    Raises:
        TypeError: a dtype other than bool or float.
        ValueError: any other shape (a 3-D mask whose first dim is not ``B * H`` is refused:
            its layout would have to be guessed).
    """
    _check_dtype("attn_mask", attn_mask, ATTN_MASK_MEANING)
    shape = tuple(attn_mask.shape)
    if shape == (q_len, kv_len):
        mask = attn_mask.reshape(1, 1, q_len, kv_len)
    elif shape == (bsz * heads, q_len, kv_len):
        mask = attn_mask.reshape(bsz, heads, q_len, kv_len)  # row b * H + h -> [b, h]
    else:
        raise ValueError(
            f"attn_mask: expected shape (Tq, Tk) = ({q_len}, {kv_len}) or (B * num_heads, Tq, Tk) = "
            f"({bsz * heads}, {q_len}, {kv_len}) ({ATTN_MASK_MEANING}), got {shape}"
        )
    if mask.dtype == torch.bool:
        return ~mask, None
    return split_float_mask(mask)


def from_torch_key_padding(key_padding_mask: Tensor, bsz: int, kv_len: int) -> tuple[Tensor, Tensor | None]:
    """torch's ``key_padding_mask (B, Tk)`` -> ``(keep, bias)``, each ``(B, 1, 1, Tk)``.

    Bool: True = padding (never attended); float: added to the scores (``-inf`` = padding).
    """
    meaning = f"bool {PADDING_MEANING}, or float added to the scores"
    _check_dtype("key_padding_mask", key_padding_mask, meaning)
    if tuple(key_padding_mask.shape) != (bsz, kv_len):
        raise ValueError(
            f"key_padding_mask: expected shape (B, Tk) = ({bsz}, {kv_len}) ({meaning}), "
            f"got {tuple(key_padding_mask.shape)}"
        )
    mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk)
    if mask.dtype == torch.bool:
        return ~mask, None
    return split_float_mask(mask)


def is_causal_matrix(keep: Tensor, bias: Tensor | None) -> bool:
    """Whether ``(keep, bias)`` from :func:`from_torch_attn_mask` is exactly the square causal
    mask (query ``i`` sees keys ``j <= i``, no bias), for every sample and head."""
    q_len, kv_len = keep.shape[-2:]
    if bias is not None or q_len != kv_len:
        return False
    tril = torch.ones(q_len, kv_len, dtype=torch.bool, device=keep.device).tril()
    return bool((keep == tril).all())
