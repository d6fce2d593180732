"""The plain weights-first calls of ``attn_implementation="qkv"``, in a handful of tensor ops.

A ``transformers`` attention call that keeps every weight (a capture of every head,
``output_attentions=True``) computes its output from them (:mod:`qkv.api.weights_first`). When
the call has at most a tensor mask and an additive mask to apply (an encoder batch, padded or
not: no pattern, no position bias), one head per key/value head, a floating dtype of its own
compute precision (float32 or float64) and no gradient, that is::

    logits  = Q K^T * scale               # (B, H, Tq, Tk), scaled in place
    logits += additive mask               # a float attention_mask's finite part, if any
    logits[~mask] = -inf                  # a bool mask (True = takes part), if any
    weights = softmax(logits)             # in place; rows left no key: 0
    out     = weights @ V                 # V zeroed at keys no row may attend (NaN stays out)

exactly the ops :func:`qkv.api.weights_first.attention_from_weights` runs for it (its weights
pass's one-block case), so the result is bitwise the same (``tests/test_interop_hf_implementation.py``),
and bitwise ``transformers``' eager attention wherever eager leaves a row some key (eager adds
``finfo.min`` where qkv writes ``-inf``: both weights come out exactly 0 there). It skips the
argument checks, the memory plan and the block bookkeeping of the general path: a few
microseconds of Python instead of a few hundred between a model's matrix products (where the
interpreter's caches are cold), which is what made a capture of every map cost more than eager
attention at short lengths. The layers of one forward pass share one mask tensor: what is read
from it (its complement, its rows left no key) is kept for the last mask seen while the tensor
is unchanged (its version counter; an inference tensor has none and is read on each call). Every other call takes the general path. The
arguments come from ``transformers``, which built them as ``(B, H, T, D)`` tensors of one dtype
and device; a mismatch goes to the general path, whose checks report it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..backends.attention_weights import softmax_in_place  # the weights pass's own in-place softmax
from ..backends.base import zero_unreachable_keys

__all__ = ["plain_weights_first"]

_DTYPES = (torch.float32, torch.float64)  # their own compute dtype: the logits are not cast
_KEY_BLOCK = 1024  # one key block of the weights pass: longer rows normalize by log-sum-exp

# The last bool mask read: (mask, its version, ~mask, rows left no key (..., 1) or None).
_LAST_MASK: tuple[Tensor, int, Tensor, Tensor | None] | None = None


def _fits(t: Tensor, shape: tuple[int, ...]) -> bool:
    """A 4-D ``t`` that broadcasts to ``shape`` without growing it, on the logits' device."""
    return t.dim() == 4 and all(a == 1 or a == b for a, b in zip(t.shape, shape))


def _closed(mask: Tensor) -> tuple[Tensor, Tensor | None]:
    """``(~mask, rows of mask left no key or None when every row has one)``, kept for the last
    mask (one forward pass's layers share it) while the tensor is unchanged; an inference
    tensor, which keeps no version counter, is read on each call."""
    global _LAST_MASK
    version = None if mask.is_inference() else mask._version
    last = _LAST_MASK
    if version is not None and last is not None and last[0] is mask and last[1] == version:
        return last[2], last[3]
    closed = ~mask
    empty = closed.all(dim=-1, keepdim=True)  # as the weights pass: those rows give 0
    empty = empty if bool(empty.any()) else None
    if version is not None:
        _LAST_MASK = (mask, version, closed, empty)
    return closed, empty


def plain_weights_first(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    scale: float | None,
    mask: Tensor | None = None,
    additive: Tensor | None = None,
) -> tuple[Tensor, Tensor] | None:
    """``(out (B, H, Tq, Dv), weights (B, H, Tq, Tk))`` of a call with as many key/value heads
    as query heads, at most a bool ``mask`` (True = takes part) and a float ``additive`` mask,
    both 4-D and broadcastable to the weights without growing them, or None when the call is
    not that plain (then :func:`qkv.api.weights_first.attention_from_weights` runs it). The
    caller has checked that there is no pattern, no position bias and no active dropout."""
    if (
        query.dim() != 4
        or key.shape[:2] != query.shape[:2]
        or value.shape[:3] != key.shape[:3]
        or query.shape[-1] != key.shape[-1]
        or query.dtype not in _DTYPES
        or not query.dtype == key.dtype == value.dtype
        or not query.device == key.device == value.device
        or query.shape[-2] == 0
        or key.shape[-2] == 0
        or key.shape[-2] > _KEY_BLOCK
        or torch.compiler.is_compiling()
        or (torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad))
        or not (scale is None or (type(scale) in (int, float) and math.isfinite(scale)))
    ):
        return None
    shape = (*query.shape[:3], key.shape[-2])
    if mask is not None and (
        mask.dtype != torch.bool or mask.device != query.device or not _fits(mask, shape)
    ):
        return None
    if additive is not None and (
        additive.dtype != query.dtype or additive.device != query.device or not _fits(additive, shape)
    ):
        return None
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)  # as qkv.attention's
    logits = query @ key.transpose(-2, -1)  # (B, H, Tq, Tk), a new contiguous tensor
    if scale != 1.0:
        logits.mul_(scale)
    return _normalize_and_apply(logits, value, mask, additive)


def _normalize_and_apply(
    logits: Tensor, value: Tensor, mask: Tensor | None, additive: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The weights pass's one-block steps after the scaled logits, in its order, then ``@ V``."""
    empty = None
    if additive is not None:
        logits.add_(additive)
    if mask is not None:
        closed, empty = _closed(mask)
        logits.masked_fill_(closed, float("-inf"))
    top = logits.amax(dim=-1, keepdim=True) if additive is not None else None  # rows the mask closed
    softmax_in_place(logits)  # in place, as the weights pass: no second logit-sized tensor to fault in
    if top is not None:
        logits.masked_fill_(top == float("-inf"), 0.0)
    if empty is not None:
        logits.masked_fill_(empty, 0.0)
    if mask is not None:
        _, value = zero_unreachable_keys(value, value, mask)  # NaN in a key no row attends stays out
    return logits @ value, logits
