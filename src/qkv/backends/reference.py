"""The reference backend: the specification of ``qkv.attention``, written as the math reads.

    logits  = score(Q, K) * scale + bias                      (..., H, Tq, Tk)
    weights = softmax(logits over the keys allowed by mask)   (..., H, Tq, Tk)
    out     = weights @ V                                     (..., H, Tq, Dv)

It supports every score, mask, bias, dtype and device, always returns the weights when asked
and the log-sum-exp always. Every other backend must equal it within tolerance.
"""

from __future__ import annotations

import torch.nn.functional as F

from .._types import AttentionOutput
from ..functional.normalize import masked_softmax
from .base import AttentionInputs, zero_unreachable_keys

__all__ = ["ReferenceBackend"]


class ReferenceBackend:
    name = "reference"

    def supports(self, inputs: AttentionInputs) -> list[str]:
        return []

    def run(self, inputs: AttentionInputs) -> AttentionOutput:
        q, k, v, mask = inputs.query, inputs.key, inputs.value, inputs.mask
        if mask is not None:
            k, v = zero_unreachable_keys(k, v, mask)
        logits = inputs.logits(q, k)  # (..., H, Tq, Tk)
        if inputs.bias is not None:
            logits = logits + inputs.bias
        weights, lse = masked_softmax(logits, mask)  # softmax in float32 for half inputs
        attn = weights
        if inputs.dropout_active:
            attn = F.dropout(weights, p=inputs.dropout_p, training=True)
        out = attn.to(v.dtype) @ v  # (..., H, Tq, Dv)
        return AttentionOutput(
            out=out,
            weights=weights if inputs.need_weights else None,
            lse=lse,
            backend=self.name,
        )
