"""Attention whose output is computed from its exact weights: one pass where a caller keeps every
weight anyway (a capture of every head of a Hugging Face model, ``output_attentions=True``).

    weights = softmax(score(Q, K) * scale + bias, over the keys the mask allows)   (..., H, Tq, Tk)
    out     = weights @ V                                                          (..., H, Tq, Dv)

:func:`qkv.attention` with ``need_weights=True`` runs its backend's kernel for the output and
a second, exact pass for the weights (:mod:`qkv.backends.attention_weights`), so that asking for
weights never changes the output. When every weight is materialised anyway, that is two passes
over ``Q K^T``; this composition makes one: the weights pass (logits scaled and masked in
place, normalized a slab of rows at a time), then one matrix product. On CPU, at 128 tokens,
the product costs about half of the fused kernel it replaces.

The output is the reference backend's formula, so it equals the reference within tolerance
(the error-ratio rule), not bitwise the fused kernel's. Rows with no key to attend give 0;
keys no query may attend are zeroed first (NaN or inf placed there changes nothing).

Only plain softmax attention qualifies (:func:`weights_first_applies`): a named dot score, a
tensor mask or none, no dropout in training, no gradient wanted, every head and row asked for.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._types import AttentionOutput
from ..backends import dispatch
from ..backends.attention_weights import weights_and_lse
from ..backends.base import zero_unreachable_keys
from . import grouped
from .prepare import prepare

__all__ = ["BACKEND", "attention_from_weights", "weights_first_applies"]

BACKEND = "weights"  # the name the results carry (AttentionOutput.backend)


def weights_first_applies(
    query: Tensor, key: Tensor, value: Tensor, mask: object, dropout_active: bool
) -> bool:
    """Whether :func:`attention_from_weights` may run this call: a tensor mask or none (a
    pattern is left to its block-sparse kernel), no active dropout, and no tensor asking for a
    gradient (the weights pass builds no autograd graph)."""
    if dropout_active or not (mask is None or isinstance(mask, Tensor)):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)))


def attention_from_weights(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    scale: float | None = None,
) -> AttentionOutput:
    """Scaled dot-product attention, every weight returned, the output ``weights @ value``.

    Shapes as :func:`qkv.attention` (grouped-query key/value heads included)::

        query (..., H, Tq, D)   key, value (..., Hkv, Tk, D | Dv)
        -> out (..., H, Tq, Dv), weights (..., H, Tq, Tk), lse (..., H, Tq) or None

    Arguments are checked as :func:`qkv.attention` checks them (the same errors), and the
    weights must fit the memory budget as there. ``lse`` is None when every key fits one block
    of the weights pass (1024 keys): the weights are then one softmax, which needs none.

    Raises:
        ValueError: ``query``, ``key`` or ``value`` requires a gradient while grad mode is on
            (use :func:`qkv.attention`).
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        raise ValueError(
            "attention_from_weights: query, key and value must not require a gradient (the weights pass "
            "builds no autograd graph); use qkv.attention"
        )
    unfold = None
    g = grouped.group_size(query, key, value)
    if g > 1:
        query, key, value, mask, bias, unfold = grouped.fold(
            query, key, value, g, mask=mask, bias=bias, weights_for=None
        )
    inputs, restore = prepare(query, key, value, mask=mask, bias=bias, scale=scale, need_weights=True)
    dispatch.check_weights_fit(inputs)
    weights, lse = weights_and_lse(inputs, want_lse=False)  # (..., H, Tq, Tk); lse only past one key block
    v = inputs.value
    if inputs.mask is not None:
        _, v = zero_unreachable_keys(v, v, inputs.mask)  # NaN in a key no row attends stays out
    out = weights @ v  # (..., H, Tq, Tk) @ (..., H, Tk, Dv) -> (..., H, Tq, Dv)
    result = restore(AttentionOutput(out=out, weights=weights, lse=lse, backend=BACKEND))
    return result if unfold is None else unfold(result)
