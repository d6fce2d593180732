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

import torch
from torch import Tensor

from .._types import AttentionOutput
from ..functional import scores as _scores
from ..masks.core import Mask

__all__ = [
    "AttentionInputs",
    "Backend",
    "BackendNotSupportedError",
    "check_fits",
    "plain_causal",
    "slice_block",
    "softmax_only",
]


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
        pattern: the caller's :class:`qkv.masks.Mask` (kept lazy: block-aware backends never
            build it densely), or None.
        tensor_mask: the caller's bool tensor mask, already fitted to the layout, or None.
        bias: float, added to the scaled logits, same broadcast rule, or None.
        scale: the factor applied to the logits.
        need_weights, weights_for: the caller wants weights (all, or ``(heads, rows)``); a
            backend returns them only if it has them anyway, else ``qkv.attention`` computes
            them on demand (:mod:`qkv.backends.weights`).
        normalize: the normalizer's name (``"softmax"``, ``"sparsemax"``, ...; see
            :data:`qkv.functional.normalize.NORMALIZERS`) or ``"custom"`` for a callable.
        normalize_fn: ``(logits, mask) -> weights`` with its parameters bound, or None for
            softmax (backends compute softmax themselves).

    :attr:`mask` is the dense bool mask (True = may attend, broadcastable to
    ``(..., H, Tq, Tk)``) or None, built from ``pattern`` the first time a backend asks.
    """

    query: Tensor
    key: Tensor
    value: Tensor
    score: str
    score_fn: Callable[[Tensor, Tensor], Tensor]
    scale: float
    pattern: Mask | None = None
    tensor_mask: Tensor | None = None
    bias: Tensor | None = None
    dropout_p: float = 0.0
    training: bool = False
    need_weights: bool = False
    weights_for: tuple[Any, Any] | None = None
    score_kwargs: dict[str, Any] = field(default_factory=dict)
    normalize: str = "softmax"
    normalize_fn: Callable[[Tensor, Tensor | None], Tensor] | None = None
    # Built lazily (a plain dict rather than functools.cached_property, whose lock
    # torch.compile cannot trace).
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def q_len(self) -> int:
        return self.query.shape[-2]

    @property
    def kv_len(self) -> int:
        return self.key.shape[-2]

    @property
    def logits_shape(self) -> tuple[int, ...]:
        return (*self.query.shape[:-1], self.kv_len)

    @property
    def has_mask(self) -> bool:
        return self.pattern is not None or self.tensor_mask is not None

    @property
    def mask(self) -> Tensor | None:
        """The dense bool mask, broadcastable to :attr:`logits_shape` (built once, lazily)."""
        if self.pattern is None:
            return self.tensor_mask
        if "mask" not in self._cache:
            dense = self.pattern.materialize(self.q_len, self.kv_len, device=self.query.device)
            self._cache["mask"] = check_fits("mask", dense, self.logits_shape)
        return self._cache["mask"]

    def mask_block(
        self, q0: int, q1: int, k0: int, k1: int, *, rows: Tensor | None = None, heads: Tensor | None = None
    ) -> Tensor | None:
        """The mask of queries ``q0:q1`` (or the positions ``rows``) x keys ``k0:k1``, for all
        heads (or ``heads``), broadcastable to ``(..., H', Tq', k1 - k0)``, without building the
        whole mask."""
        if self.pattern is not None:
            dev = self.query.device
            q_idx = torch.arange(q0, q1, device=dev) if rows is None else rows
            kv_idx = torch.arange(k0, k1, device=dev)
            if self.pattern.depends_on_batch_head:
                b = torch.arange(self.query.shape[-4], device=dev).view(-1, 1, 1, 1)
                h = torch.arange(self.query.shape[-3], device=dev) if heads is None else heads
                h = h.view(1, -1, 1, 1)
            else:
                b = h = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=dev)
            fn = self.pattern.mask_mod(self.q_len, self.kv_len)
            return fn(b, h, q_idx.view(1, 1, -1, 1), kv_idx.view(1, 1, 1, -1))
        if self.tensor_mask is None:
            return None
        return slice_block(self.tensor_mask, q0, q1, k0, k1, rows=rows, heads=heads)

    def bias_block(
        self, q0: int, q1: int, k0: int, k1: int, *, rows: Tensor | None = None, heads: Tensor | None = None
    ) -> Tensor | None:
        if self.bias is None:
            return None
        return slice_block(self.bias, q0, q1, k0, k1, rows=rows, heads=heads)

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


def softmax_only(inputs: AttentionInputs, backend: str) -> list[str]:
    """The reason a softmax-only backend gives for a non-softmax ``normalize``, or none."""
    if inputs.normalize == "softmax":
        return []
    what = (
        "a custom normalize callable" if inputs.normalize == "custom" else f"normalize {inputs.normalize!r}"
    )
    return [f"{what}: {backend} computes softmax weights only (the reference runs every normalizer)"]


def zero_unreachable_keys(key: Tensor, value: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Zero the keys/values that no query may attend, so NaN/inf placed there cannot leak
    through ``0 * NaN`` in the matmuls (forward or backward). Their gradients become 0."""
    reachable = mask.any(dim=-2).unsqueeze(-1)  # (..., Tk, 1)
    if not torch.compiler.is_compiling() and bool(reachable.all()):  # traced: no data-dependent branch
        return key, value
    return key.masked_fill(~reachable, 0), value.masked_fill(~reachable, 0)


def slice_block(
    t: Tensor, q0: int, q1: int, k0: int, k1: int, *, rows: Tensor | None = None, heads: Tensor | None = None
) -> Tensor:
    """``t[..., q0:q1, k0:k1]`` (or rows ``rows``, heads ``heads``) for a tensor broadcastable
    to ``(..., H, Tq, Tk)``; its size-1 (broadcast) dims stay."""
    if heads is not None and t.dim() >= 3 and t.shape[-3] != 1:
        t = t.index_select(-3, heads)
    if t.shape[-2] != 1:
        t = t[..., q0:q1, :] if rows is None else t.index_select(-2, rows)
    return t if t.shape[-1] == 1 else t[..., k0:k1]


def check_fits(name: str, t: Tensor, logits_shape: tuple[int, ...]) -> Tensor:
    """Raise a clear error unless ``t`` broadcasts to ``logits_shape`` without growing it."""
    try:
        fits = torch.broadcast_shapes(t.shape, logits_shape) == logits_shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"{name}: shape {tuple(t.shape)} is not broadcastable to the scores' shape "
            f"(..., H, Tq, Tk) = {logits_shape}"
        )
    return t


def plain_causal(inputs: AttentionInputs) -> bool:
    """The mask is exactly ``qkv.masks.causal()`` over a square ``Tq == Tk`` (no other mask):
    the case of SDPA's ``is_causal=True`` kernel, which never builds the ``T x T`` matrix."""
    return (
        inputs.pattern is not None
        and inputs.tensor_mask is None
        and inputs.pattern.is_plain_causal(inputs.q_len, inputs.kv_len)
    )
