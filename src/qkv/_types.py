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

from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["AttentionMaps", "AttentionOutput"]


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
        backend: the name of the backend that ran (``"reference"``, ``"sdpa"``, ``"chunked"``,
            ``"blocksparse"``, ``"flex"``; compositions join theirs with ``"+"``). Keyword-only
            and required: every producer names the backend that ran.
    """

    out: Tensor
    weights: Tensor | None = None
    lse: Tensor | None = None
    backend: str = field(kw_only=True)

    def __iter__(self):
        # Allows ``out, weights = qkv.attention(...)`` like torch's MultiheadAttention.
        yield self.out
        yield self.weights


@dataclass
class AttentionMaps:
    """The attention weights of a model's forward pass, by kind, for visualization.

    Each entry is a list over layers of ``(B, H, Tq, Tk)`` tensors (an RNN decoder's
    attention is one layer with one head). Models return this when asked for their weights;
    :mod:`qkv.viz` and :mod:`qkv.interpret` consume it.

    Attributes:
        encoder: encoder self-attention, ``Tq = Tk = source length``.
        decoder: decoder (causal) self-attention, ``Tq = Tk = target length``.
        cross: decoder-to-encoder attention, ``Tq = target``, ``Tk = source length``.
    """

    encoder: list[Tensor] = field(default_factory=list)
    decoder: list[Tensor] = field(default_factory=list)
    cross: list[Tensor] = field(default_factory=list)

    def kinds(self) -> dict[str, list[Tensor]]:
        """The non-empty kinds, ``{"encoder": [...], ...}``."""
        return {
            k: v
            for k, v in (("encoder", self.encoder), ("decoder", self.decoder), ("cross", self.cross))
            if v
        }
