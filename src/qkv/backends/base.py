"""The one signature every backend implements.

A backend is an object with a ``name``, ``supports(inputs) -> list[str]`` (empty when it can
run these inputs; otherwise one human-readable reason per obstacle) and
``run(inputs) -> AttentionOutput``. Backends see :class:`AttentionInputs`, already validated
and normalized by :func:`qkv.attention`: at least 4-D tensors ``(B, H, T, D)``, a dense bool
mask (or None), a resolved scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor

from .._types import AttentionOutput
from ..functional import scores as _scores

__all__ = ["AttentionInputs", "Backend", "BackendNotSupportedError"]


class BackendNotSupportedError(ValueError):
    """An explicitly requested backend cannot run these inputs (the message lists why)."""


@dataclass(frozen=True)
class AttentionInputs:
    """Validated inputs of one attention call (layout ``(B, H, T, D)``, leading dims allowed).

    Attributes:
        query, key, value: ``(..., H, Tq, D)``, ``(..., H, Tk, D)``, ``(..., H, Tk, Dv)``.
        score: the score's name (``"dot"``, ...) or ``"custom"`` for a callable.
        score_fn: ``(q, k) -> logits (..., Tq, Tk)`` before ``scale``.
        score_kwargs: parameters bound into ``score_fn`` (for reporting).
        mask: bool, True = may attend, broadcastable to ``(..., H, Tq, Tk)``, or None.
        bias: float, added to the scaled logits, same broadcast rule, or None.
        scale: the factor applied to the logits.
    """

    query: Tensor
    key: Tensor
    value: Tensor
    score: str
    score_fn: Callable[[Tensor, Tensor], Tensor]
    scale: float
    mask: Tensor | None = None
    bias: Tensor | None = None
    dropout_p: float = 0.0
    training: bool = False
    need_weights: bool = False
    score_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def dropout_active(self) -> bool:
        return self.training and self.dropout_p > 0.0

    def logits(self, query: Tensor, key: Tensor) -> Tensor:
        """``score(q, k) * scale``: (..., Tq, D), (..., Tk, D) -> (..., Tq, Tk)."""
        s = self.score_fn(query, key)
        return s if self.scale == 1.0 else s * self.scale

    @staticmethod
    def score_function(name: str, kwargs: dict[str, Any]) -> Callable[[Tensor, Tensor], Tensor]:
        fn = _scores.SCORES[name][0]
        return (lambda q, k: fn(q, k, **kwargs)) if kwargs else fn


class Backend(Protocol):
    name: str

    def supports(self, inputs: AttentionInputs) -> list[str]: ...

    def run(self, inputs: AttentionInputs) -> AttentionOutput: ...


def zero_unreachable_keys(key: Tensor, value: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Zero the keys/values that no query may attend, so NaN/inf placed there cannot leak
    through ``0 * NaN`` in the matmuls (forward or backward). Their gradients become 0."""
    reachable = mask.any(dim=-2).unsqueeze(-1)  # (..., Tk, 1)
    if bool(reachable.all()):
        return key, value
    return key.masked_fill(~reachable, 0), value.masked_fill(~reachable, 0)
