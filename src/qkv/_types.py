"""Types shared by every layer of qkv.

Shape legend (used in every module's docstrings and shape comments):

    B   batch (any number of leading dims is allowed where "..." is written)
    H   heads
    Tq  query length          Tk  key/value length
    D   query/key feature dim Dv  value feature dim
    E   model (embedding) dim

The internal layout is ``(B, H, T, D)``. Masks are boolean, ``True`` = may attend, and
broadcastable to ``(B, H, Tq, Tk)``. Additive biases are float tensors passed as ``bias=``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["AttentionOutput"]


@dataclass(frozen=True)
class AttentionOutput:
    """What every attention op and module returns.

    Attributes:
        out: the attended values, ``(..., H, Tq, Dv)`` (or the module's output shape).
        weights: the attention weights ``(..., H, Tq, Tk)`` when requested, else ``None``.
            Rows whose keys are all masked are all zeros. Weights are those of the
            distribution (before dropout).
        lse: the log-sum-exp of each row's logits ``(..., H, Tq)`` in float32 (float64 for
            float64 inputs) where the backend gives it, else ``None``; ``-inf`` for fully
            masked rows.
        backend: the name of the backend that ran (``"reference"``, ``"sdpa"``, ...).
    """

    out: Tensor
    weights: Tensor | None = None
    lse: Tensor | None = None
    backend: str = "reference"

    def __iter__(self):
        # Allows ``out, weights = qkv.attention(...)`` like torch's MultiheadAttention.
        yield self.out
        yield self.weights
