"""The one signature every backend implements.

A backend is an object with a ``name``, declared :class:`Capabilities` (what it accepts:
scores, bias, dropout, ...), ``supports(inputs) -> list[str]`` (empty when it can run these
inputs; otherwise one human-readable reason per obstacle: :func:`not_supported_reasons` for the
declared capabilities plus its own), ``auto_skip(inputs) -> list[str]`` (why ``auto`` should
prefer another although it could run), ``memory_bytes(inputs) -> int`` (its memory plan: the
peak extra bytes of one call, see :mod:`qkv.backends.memory`) and
``run(inputs) -> AttentionOutput``. Backends see :class:`AttentionInputs`, already validated
and normalized by :func:`qkv.attention`: at least 4-D tensors ``(B, H, T, D)``, a dense bool
mask (or None), a resolved scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from .._checks import broadcasts_to
from .._types import AttentionOutput
from ..functional.scores import SPECS, Score
from ..masks.core import Mask

__all__ = [
    "AttentionInputs",
    "Backend",
    "BackendNotSupportedError",
    "Capabilities",
    "check_fits",
    "not_supported_reasons",
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
        score: the resolved :class:`qkv.functional.scores.Score` (its ``name``, bound ``fn``,
            ``params`` and the properties backends read: ``dot_like``, ``same_dim``, ...).
        pattern: the caller's :class:`qkv.masks.Mask` (kept lazy: block-aware backends never
            build it densely), or None.
        tensor_mask: the caller's bool tensor mask, already fitted to the layout, or None.
        bias: float, added to the scaled logits, same broadcast rule, or None.
        scale: the factor applied to the logits.
        need_weights, weights_for: the caller wants weights (all, or ``(heads, rows)``); a
            backend returns them only if it has them anyway, else ``qkv.attention`` computes
            them on demand (:mod:`qkv.backends.attention_weights`).
        normalize: the normalizer's name (``"softmax"``, ``"sparsemax"``, ...; see
            :data:`qkv.functional.normalize.NORMALIZERS`) or ``"custom"`` for a callable.
        normalize_fn: ``(logits, mask) -> weights`` with its parameters bound, or None for
            softmax (backends compute softmax themselves).
        signature: a hashable key of everything the checks and the backend choice read
            (shapes, dtypes, devices, arguments: :func:`qkv.api.prepare.call_signature`), under
            which ``dispatch`` caches its choice; None for a call that is not cached.

    :attr:`mask` is the dense bool mask (True = may attend, broadcastable to
    ``(..., H, Tq, Tk)``) or None, built from ``pattern`` the first time a backend asks.
    """

    query: Tensor
    key: Tensor
    value: Tensor
    score: Score
    scale: float
    pattern: Mask | None = None
    tensor_mask: Tensor | None = None
    bias: Tensor | None = None
    dropout_p: float = 0.0
    training: bool = False
    need_weights: bool = False
    weights_for: tuple[Any, Any] | None = None
    normalize: str = "softmax"
    normalize_fn: Callable[[Tensor, Tensor | None], Tensor] | None = None
    signature: Hashable | None = field(default=None, compare=False, repr=False)
    # Built lazily (a plain dict rather than functools.cached_property, whose lock
    # torch.compile cannot trace).
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def score_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        """``(q, k) -> logits (..., Tq, Tk)`` before ``scale`` (the score's bound function)."""
        return self.score.fn

    @property
    def score_kwargs(self) -> dict[str, Any]:
        """The parameters bound into :attr:`score_fn`."""
        return self.score.params

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
        if self.scale == 1.0:
            return s
        if self.score.dot_like and not (torch.is_grad_enabled() and s.requires_grad):
            return s.mul_(self.scale)  # a fresh matmul output that autograd does not track
        return s * self.scale


@dataclass(frozen=True)
class Capabilities:
    """What a backend accepts, declared once on the backend class; :func:`not_supported_reasons`
    turns every mismatch with the inputs into a human-readable reason.

    Attributes:
        label: how the reasons name the backend (``"SDPA"``, ...).
        dot_only: it runs only dot-product scores (:attr:`ScoreSpec.dot_like`).
        scores: the score names it runs, or None for every named score.
        custom_scores: whether it runs a callable score.
        softmax_only: whether it computes softmax weights only (no other normalizer).
        bias: whether it takes an additive bias.
        bias_grad: whether that bias may require grad.
        dropout: whether it has attention dropout.
        needs_pattern: whether it needs a lazy :class:`qkv.masks.Mask` pattern.
        empty: whether it runs ``Tq = 0`` or ``Tk = 0``.
        instead: the backend to use for what it refuses (added to score/bias reasons).
    """

    label: str
    dot_only: bool = False
    scores: frozenset[str] | None = None
    custom_scores: bool = True
    softmax_only: bool = False
    bias: bool = True
    bias_grad: bool = True
    dropout: bool = True
    needs_pattern: bool = False
    empty: bool = True
    instead: str = ""


def not_supported_reasons(caps: Capabilities, inputs: AttentionInputs) -> list[str]:
    """One reason per declared capability the inputs need and the backend lacks (empty: it can
    run them, as far as its declaration goes)."""
    use = f" (use {caps.instead})" if caps.instead else ""
    reasons = softmax_only(inputs, caps.label) if caps.softmax_only else []
    score = inputs.score
    runs = [n for n, spec in SPECS.items() if not caps.dot_only or spec.dot_like]
    runs = [n for n in runs if caps.scores is None or n in caps.scores]
    if score.spec is None and not caps.custom_scores:
        reasons.append(f"a custom score callable: {caps.label} runs only {', '.join(runs)}{use}")
    elif score.spec is not None and score.name not in runs:
        reasons.append(f"score {score.name!r}: {caps.label} runs only {', '.join(runs)}{use}")
    if caps.needs_pattern and inputs.pattern is None:
        reasons.append(f"no mask pattern ({caps.label} needs a qkv.masks.Mask such as sliding_window)")
    if inputs.bias is not None and not caps.bias:
        reasons.append(f"bias: {caps.label} takes no additive bias{use}")
    elif (
        inputs.bias is not None
        and not caps.bias_grad
        and inputs.bias.requires_grad
        and torch.is_grad_enabled()
    ):
        reasons.append(f"a bias that requires grad: {caps.label} does not differentiate its bias{use}")
    if inputs.dropout_active and not caps.dropout:
        reasons.append(f"dropout: {caps.label} has no attention dropout")
    if not caps.empty and (inputs.q_len == 0 or inputs.kv_len == 0):
        reasons.append("an empty sequence (Tq = 0 or Tk = 0)")
    return reasons


class Backend(Protocol):
    """The one signature of a backend (see the module docstring)."""

    name: str
    capabilities: Capabilities

    def supports(self, inputs: AttentionInputs) -> list[str]:
        """Why it cannot run ``inputs`` (empty: it can)."""
        ...

    def auto_skip(self, inputs: AttentionInputs) -> list[str]:
        """Why ``auto`` should pass over it although it could run (empty: take it)."""
        ...

    def memory_bytes(self, inputs: AttentionInputs) -> int:
        """Estimated peak extra bytes of :meth:`run` on ``inputs`` beyond the inputs themselves
        (the output included), on the safe side; asked only when it supports them. ``auto``
        skips a backend whose plan does not fit the device budget, and an explicit one raises
        :class:`qkv.backends.memory.MemoryPlanError`."""
        ...

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
    through ``0 * NaN`` in the matmuls (forward or backward). Their gradients become 0.

    Nothing is copied when every key is reachable (one reduction over the mask, none when its
    query dim is 1, a key-padding mask ``(..., 1, Tk)``: the mask is then the reachable keys)
    or when ``key`` and ``value`` hold only finite numbers (one sum each; one when ``value``
    is ``key``), which ``0 * x`` erases anyway."""
    reachable = mask if mask.shape[-2] == 1 else mask.any(dim=-2, keepdim=True)  # (..., 1, Tk)
    if not torch.compiler.is_compiling() and _nothing_to_zero(key, value, reachable):
        return key, value
    keep = reachable.transpose(-2, -1)  # (..., Tk, 1)
    zeroed = key.masked_fill(~keep, 0)
    return zeroed, (zeroed if value is key else value.masked_fill(~keep, 0))


def _nothing_to_zero(key: Tensor, value: Tensor, reachable: Tensor) -> bool:
    """Every key is reachable, or every element of ``key`` and ``value`` is finite (a sum in
    float32: a NaN or inf anywhere makes it non-finite; an overflow only answers False, which
    zeroes as before). Cheaper than zeroing: reductions instead of copies; the sums run only
    when some key is unreachable."""
    with torch.no_grad():
        if bool(reachable.all()):
            return True
        total = key.sum(dtype=torch.float32)
        if value is not key:
            total = total + value.sum(dtype=torch.float32)
        return math.isfinite(float(total))


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
    if not broadcasts_to(t.shape, logits_shape):
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
