"""Normalizers: turn logits into attention weights along the key axis.

Every normalizer returns weights whose rows sum to 1, except rows whose keys are all masked:
those are all zeros, with zero gradients and no NaN (as SDPA and FlexAttention do, and unlike
a plain ``softmax`` over ``-inf``, which gives NaN, or d2l's ``-1e6`` fill, which gives uniform
weights).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_softmax"]


def masked_softmax(logits: Tensor, mask: Tensor | None = None, *, dim: int = -1) -> tuple[Tensor, Tensor]:
    """Softmax over ``dim`` that ignores masked entries and returns ``(weights, lse)``.

    Args:
        logits: any float tensor; ``-inf`` entries count as masked.
        mask: optional bool tensor broadcastable to ``logits``; True = keep.

    Returns:
        ``weights`` (same shape and dtype as ``logits``) and ``lse``, the log-sum-exp over
        ``dim`` (``-inf`` for rows with nothing to attend). Half-precision logits are
        normalized in float32 and the weights cast back.

    Entries that are masked never reach ``exp``: NaN or inf there changes nothing.
    """
    in_dtype = logits.dtype
    if in_dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    if logits.shape[dim] == 0:  # no keys at all: every row is empty
        row_max = logits.new_zeros(1).expand_as(logits.sum(dim, keepdim=True))
    else:
        # Shift by the row max (detached: softmax does not depend on it); empty rows shift by 0.
        row_max = logits.detach().amax(dim, keepdim=True)
        row_max = row_max.masked_fill(row_max == float("-inf"), 0.0)
    exp = torch.exp(logits - row_max)
    total = exp.sum(dim, keepdim=True)
    weights = exp / torch.where(total == 0, torch.ones_like(total), total)
    lse = (torch.log(total) + row_max).squeeze(dim)
    return weights.to(in_dtype), lse
