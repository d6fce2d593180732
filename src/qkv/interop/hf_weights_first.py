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
is unchanged (its version counter), or, for the padding mask ``qkv_mask`` made for the pass
(:func:`own_mask`; under ``torch.inference_mode`` a tensor keeps no version counter), while it
is the last one made; an inference tensor made elsewhere is read on each call. A key-padding
mask is added to the logits as ``0``/``-inf`` (a vectorized add; ``masked_fill`` is several
times slower on CPU), the same logits as long as the keys it closes are finite: when one is
not, the logits are filled instead. Every other call takes the general path. The arguments
come from ``transformers``, which built them as ``(B, H, T, D)`` tensors of one dtype and
device; a mismatch goes to the general path, whose checks report it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..backends.attention_weights import softmax_in_place  # the weights pass's own in-place softmax
from ..backends.base import zero_unreachable_keys

__all__ = ["own_mask", "plain_weights", "plain_weights_first"]

_DTYPES = (torch.float32, torch.float64)  # their own compute dtype: the logits are not cast
_KEY_BLOCK = 1024  # one key block of the weights pass: longer rows normalize by log-sum-exp


def _fits(t: Tensor, shape: tuple[int, ...]) -> bool:
    """A 4-D ``t`` that broadcasts to ``shape`` without growing it."""
    return t.dim() == 4 and all(a == 1 or a == b for a, b in zip(t.shape, shape))


_OWN = -1  # the version kept for a mask qkv_mask made (trusted by identity: see own_mask)


class _MaskPlan:
    """What the calls of one forward pass read from their shared bool mask: its complement,
    its rows left no key (``(..., 1)``, or None when every row has one) and, per dtype, the
    mask as ``0``/``-inf`` to add to the logits (a key-padding mask only)."""

    def __init__(self, mask: Tensor) -> None:
        self.closed = ~mask
        empty = self.closed.all(dim=-1, keepdim=True)  # as the weights pass: those rows give 0
        self.empty = empty if bool(empty.any()) else None
        self._added: dict[torch.dtype, Tensor] = {}

    def added(self, dtype: torch.dtype) -> Tensor:
        hit = self._added.get(dtype)
        if hit is None:
            hit = self._added[dtype] = torch.zeros(self.closed.shape, dtype=dtype, device=self.closed.device)
            hit.masked_fill_(self.closed, float("-inf"))
        return hit


# The last mask read: (mask, its version or _OWN, its plan, or None until a call reads it).
_LAST_MASK: tuple[Tensor, int, _MaskPlan | None] | None = None


def own_mask(mask: Tensor) -> Tensor:
    """Mark ``mask``, a bool tensor :func:`~qkv.interop.hf_implementation.qkv_mask` has just
    made for one forward pass, as read once for all its calls (an inference tensor keeps no
    version counter; this one is handed from the mask interface to the attention calls alone)."""
    global _LAST_MASK
    version = _OWN if mask.is_inference() else mask._version  # a version counter is still read
    _LAST_MASK = (mask, version, None)  # read by the first call that needs it
    return mask


def _plan(mask: Tensor) -> _MaskPlan:
    """The plan of ``mask``, kept for the last mask while the tensor is unchanged (its version
    counter), or for the mask :func:`own_mask` marked; an inference tensor made elsewhere,
    which keeps no version counter, is read on each call."""
    global _LAST_MASK
    last = _LAST_MASK
    version = None if mask.is_inference() else mask._version
    if last is not None and last[0] is mask and (last[1] == _OWN or last[1] == version):
        if last[2] is None:
            last = _LAST_MASK = (mask, last[1], _MaskPlan(mask))
        return last[2]
    plan = _MaskPlan(mask)
    if version is not None:
        _LAST_MASK = (mask, version, plan)
    return plan


def _declined(
    query: Tensor,
    key: Tensor,
    value: Tensor | None,
    scale: float | None,
    mask: Tensor | None,
    additive: Tensor | None,
) -> bool:
    """Whether a call is not plain: see :func:`plain_weights_first` (``value`` None: not read)."""
    value = key if value is None else value
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
        return True
    shape = (*query.shape[:3], key.shape[-2])
    if mask is not None and (
        mask.dtype != torch.bool or mask.device != query.device or not _fits(mask, shape)
    ):
        return True
    return additive is not None and (
        additive.dtype != query.dtype or additive.device != query.device or not _fits(additive, shape)
    )


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
    if _declined(query, key, value, scale, mask, additive):
        return None
    add = mask is not None and mask.shape[-2] == 1  # a key-padding mask, added as 0 / -inf
    if mask is not None:  # NaN or inf in a key no row attends stays out (of V, as the general path)
        zeroed, value_zeroed = zero_unreachable_keys(key, value, mask)
        if zeroed is not key:  # some were not finite: V zeroed there, the logits filled
            value, add = value_zeroed, False
    weights = _weights(query, key, scale, mask, additive, add)
    return weights @ value, weights


def plain_weights(
    query: Tensor,
    key: Tensor,
    scale: float | None,
    heads: tuple[int, ...],
    mask: Tensor | None = None,
    additive: Tensor | None = None,
) -> Tensor | None:
    """The weights ``(B, len(heads), Tq, Tk)`` of ``heads`` alone (each in ``[0, H)``) of a
    call :func:`plain_weights_first` would run, by the same ops on those heads' queries and
    keys, or None when the call is not that plain or a mask differs per head."""
    if (
        _declined(query, key, None, scale, mask, additive)
        or not heads
        or any(type(h) is not int or not 0 <= h < query.shape[1] for h in heads)
        or any(t is not None and t.shape[1] != 1 for t in (mask, additive))
    ):
        return None
    if heads == tuple(range(heads[0], heads[0] + len(heads))):  # a range: views, as eager's
        query, key = query[:, heads[0] : heads[0] + len(heads)], key[:, heads[0] : heads[0] + len(heads)]
    else:
        index = torch.tensor(heads, device=query.device)
        query, key = query.index_select(1, index), key.index_select(1, index)
    add = mask is not None and mask.shape[-2] == 1 and zero_unreachable_keys(key, key, mask)[0] is key
    return _weights(query, key, scale, mask, additive, add)


def _weights(
    query: Tensor, key: Tensor, scale: float | None, mask: Tensor | None, additive: Tensor | None, add: bool
) -> Tensor:
    """The normalized weights of a plain call: the logits, scaled, masked and normalized in place."""
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)  # as qkv.attention's
    logits = query @ key.transpose(-2, -1)  # (B, H, Tq, Tk), a new contiguous tensor
    if scale != 1.0:
        logits.mul_(scale)
    return _normalize(logits, mask, additive, add)


def _normalize(logits: Tensor, mask: Tensor | None, additive: Tensor | None, add: bool) -> Tensor:
    """The weights pass's one-block steps after the scaled logits, in its order.
    With ``add`` (a key-padding mask ``(..., 1, Tk)`` whose closed keys are finite) the mask is
    added as ``0``/``-inf``, one vectorized add instead of a ``masked_fill`` (several times
    slower on CPU): the same logits, ``finite - inf = -inf``."""
    plan = None if mask is None else _plan(mask)
    if additive is not None:
        logits.add_(additive)
    if plan is not None and add:
        logits.add_(plan.added(logits.dtype))
    elif plan is not None:
        logits.masked_fill_(plan.closed, float("-inf"))
    top = logits.amax(dim=-1, keepdim=True) if additive is not None else None  # rows the mask closed
    softmax_in_place(logits)  # in place, as the weights pass: no second logit-sized tensor to fault in
    if top is not None:
        logits.masked_fill_(top == float("-inf"), 0.0)
    if plan is not None and plan.empty is not None:
        logits.masked_fill_(plan.empty, 0.0)
    return logits
