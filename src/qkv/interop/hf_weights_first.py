"""The plainest weights-first call of ``attn_implementation="qkv"``, in a handful of tensor ops.

A ``transformers`` attention call that keeps every weight (a capture of every head,
``output_attentions=True``) computes its output from them (:mod:`qkv.api.weights_first`). When
the call has nothing to mask and nothing to add (no mask, no bias, no pattern: an encoder batch
without padding), one head per key/value head, a floating dtype of its own compute precision
(float32 or float64) and no gradient, that is::

    weights = softmax(Q K^T * scale)      # (B, H, Tq, Tk), scaled and normalized in place
    out     = weights @ V                 # (B, H, Tq, Dv)

exactly the ops :func:`qkv.api.weights_first.attention_from_weights` runs for it, so the result
is bitwise the same (``tests/test_interop_hf_implementation.py``), without the argument checks,
the memory plan and the block bookkeeping of the general path: a few microseconds of Python
instead of a few hundred between a model's matrix products (where the interpreter's caches are
cold), which is what made a capture of
every map cost more than eager attention at short lengths. Every other call takes the general
path. The arguments come from ``transformers``, which built them as ``(B, H, T, D)`` tensors of
one dtype and device; a mismatch goes to the general path, whose checks report it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..backends.attention_weights import softmax_in_place  # the weights pass's own in-place softmax

__all__ = ["plain_weights_first"]

_DTYPES = (torch.float32, torch.float64)  # their own compute dtype: the logits are not cast


def plain_weights_first(
    query: Tensor, key: Tensor, value: Tensor, scale: float | None
) -> tuple[Tensor, Tensor] | None:
    """``(out (B, H, Tq, Dv), weights (B, H, Tq, Tk))`` of an unmasked, unbiased call with as
    many key/value heads as query heads, or None when the call is not that plain (then
    :func:`qkv.api.weights_first.attention_from_weights` runs it). The caller has checked that
    there is no mask, no bias, no active dropout and no pattern."""
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
        or key.shape[-2] > 1024  # one key block of the weights pass
        or torch.compiler.is_compiling()
        or (torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad))
        or not (scale is None or (type(scale) in (int, float) and math.isfinite(scale)))
    ):
        return None
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)  # as qkv.attention's
    logits = query @ key.transpose(-2, -1)  # (B, H, Tq, Tk), a new contiguous tensor
    if scale != 1.0:
        logits.mul_(scale)
    softmax_in_place(logits)  # in place, as the weights pass: no second logit-sized tensor to fault in
    return logits @ value, logits
