"""The reference backend: the specification of ``qkv.attention``, written as the math reads.

    logits  = score(Q, K) * scale + bias                      (..., H, Tq, Tk)
    weights = softmax(logits over the keys allowed by mask)   (..., H, Tq, Tk)
    out     = weights @ V                                     (..., H, Tq, Dv)

It supports every score, mask, bias, dtype, device and normalizer (softmax, sparsemax,
entmax, top-k, Gumbel, hard, a callable: see :mod:`qkv.functional.normalize`), always returns
the weights when asked and the log-sum-exp for softmax (None for the other normalizers). Every
other backend must equal it within tolerance.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .._types import AttentionOutput
from ..functional.normalize import masked_softmax
from . import memory
from .base import AttentionInputs, Capabilities, zero_unreachable_keys

__all__ = ["ReferenceBackend"]


class ReferenceBackend:
    name = "reference"
    capabilities = Capabilities("reference")  # everything

    def supports(self, inputs: AttentionInputs) -> list[str]:
        return []

    def auto_skip(self, inputs: AttentionInputs) -> list[str]:
        return []

    def memory_bytes(self, inputs: AttentionInputs) -> int:
        """Peak extra bytes (see :mod:`qkv.backends.memory`): logits (scaled), exp and weights at
        once: 3 L c (softmax in float32 for halves: + 2 L e for the half copies); autograd keeps
        them and the backward adds as many: 6 L c. A mask adds the masked copy (L c) and
        ``~mask`` (L bytes), dropout its output (L c); a non-softmax normalizer sorts (values
        and int64 indices: 3 L c + 16 L more); a wide score builds ``(..., Tq, Tk, W)`` twice
        (4 times with grad); a pattern, its dense mask."""
        s = memory.sizes(inputs)
        L, c, e = s["L"], s["c"], s["e"]
        grad = memory.needs_grad(inputs)
        work = (6 if grad else 3) * L * c + (2 * L * e if c != e else 0)
        if inputs.has_mask:
            work += L * c + L
        if inputs.dropout_active:
            work += L * c
        if inputs.normalize != "softmax":
            work += 3 * L * c + 16 * L
        width = memory.score_width(inputs)
        if width > 1:
            work += (4 if grad else 2) * L * width * e
        kept, building = memory.dense_mask_bytes(inputs)
        return max(building, kept + work)

    def run(self, inputs: AttentionInputs) -> AttentionOutput:
        q, k, v, mask = inputs.query, inputs.key, inputs.value, inputs.mask
        if mask is not None:
            k, v = zero_unreachable_keys(k, v, mask)
        logits = inputs.logits(q, k)  # (..., H, Tq, Tk)
        if inputs.bias is not None:
            logits = logits + inputs.bias
        if inputs.normalize == "softmax":
            weights, lse = masked_softmax(logits, mask)  # softmax in float32 for half inputs
        else:
            weights, lse = _normalized(inputs, logits, mask), None
        attn = weights
        if inputs.dropout_active:
            attn = F.dropout(weights, p=inputs.dropout_p, training=True)
        out = (attn if attn.dtype == v.dtype else attn.to(v.dtype)) @ v  # (..., H, Tq, Dv)
        return AttentionOutput(
            out=out,
            weights=weights if inputs.need_weights else None,
            lse=lse,
            backend=self.name,
        )


def _normalized(inputs: AttentionInputs, logits: Tensor, mask: Tensor | None) -> Tensor:
    """The weights of a non-softmax normalizer, checked to have the logits' shape."""
    weights = inputs.normalize_fn(logits, mask)
    if not isinstance(weights, Tensor) or weights.shape != logits.shape:
        got = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(
            f"normalize {inputs.normalize!r}: expected weights of the logits' shape "
            f"(..., H, Tq, Tk) = {tuple(logits.shape)}, got {got}"
        )
    return weights
