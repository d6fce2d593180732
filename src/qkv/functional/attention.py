"""``qkv.attention``: every attention of the source articles behind one Query-Key-Value call.

    score -> scale -> (+ bias) -> mask -> normalize (softmax by default) -> weighted sum of values

The call validates and normalizes its inputs, then runs one backend (see ``qkv.backends``):
the readable ``reference`` (the specification) or PyTorch's fused ``sdpa``; ``auto`` picks the
fastest backend that can run the inputs, and the result names it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from torch import Tensor

from .._types import AttentionOutput
from ..backends import dispatch
from ..backends.base import AttentionInputs, check_fits
from ..backends.weights import as_index, attention_weights
from ..masks.core import Mask, MaskLike, check_ambiguous_layout, check_bool_mask
from . import scores as _scores
from .normalize import NormalizerFn, resolve_normalizer

__all__ = ["attention", "dispatch_report", "prepare"]

ScoreLike = str | Callable[[Tensor, Tensor], Tensor]


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    score: ScoreLike = "scaled_dot",
    mask: MaskLike | None = None,
    bias: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
    backend: str = "auto",
    need_weights: bool = False,
    weights_for: tuple[Any, Any] | None = None,
    score_kwargs: dict[str, Any] | None = None,
    normalize: str | NormalizerFn = "softmax",
    normalize_kwargs: dict[str, Any] | None = None,
) -> AttentionOutput:
    """Attention of ``query`` over ``key``/``value``.

    Shapes (any number of leading batch dims ``...``)::

        query (..., H, Tq, D)   key (..., H, Tk, D)   value (..., H, Tk, Dv)
        -> out (..., H, Tq, Dv), weights (..., H, Tq, Tk), lse (..., H, Tq)

    A 3-D ``(B, T, D)`` input is one head: masks of shape ``(B, Tq, Tk)`` or
    ``(B, 1, Tq, Tk)`` both fit it. A 2-D ``(T, D)`` input is one sequence.

    Args:
        score: ``"dot"``, ``"scaled_dot"`` (default), ``"general"``, ``"additive"``,
            ``"gaussian"``, ``"cosine"`` (see :mod:`qkv.functional.scores`), or any callable
            ``(q, k) -> logits (..., Tq, Tk)`` such as the score modules in :mod:`qkv.modules`.
        score_kwargs: parameters of a named score, e.g. ``{"weight": W}`` for ``"general"``,
            ``{"sigma": 0.5}`` for ``"gaussian"``.
        mask: bool, True = may attend, broadcastable to ``(..., H, Tq, Tk)``, or a
            :class:`qkv.masks.Mask` such as ``qkv.masks.causal()``.
        bias: float tensor added to the logits (ALiBi, relative positions...), same broadcast.
        scale: multiplies the logits; default ``1/sqrt(D)`` for ``scaled_dot``, else 1.
        dropout_p, training: dropout on the weights, only when ``training=True``.
        backend: ``"auto"``, ``"reference"`` or ``"sdpa"``. An explicit backend that cannot run
            the inputs raises :class:`qkv.backends.BackendNotSupportedError` with the reasons.
        need_weights: also return the weights ``(..., H, Tq, Tk)``. Backends that do not build
            them (sdpa, blocksparse, ...) still run: the weights come from a second, exact pass
            over key blocks (from the log-sum-exp when the backend returns it), so asking for
            weights never forces the slow path on a large problem.
        weights_for: ``(heads, rows)``: only these heads (dim -3) and query rows (dim -2),
            each an int, a sequence, a slice or None (all); implies ``need_weights``. The
            weights are then ``(..., len(heads), len(rows), Tk)``.
        normalize: how logits become weights: ``"softmax"`` (default), ``"sparsemax"``,
            ``"entmax15"``, ``"entmax_bisect"`` (``alpha``), ``"topk"`` (``k``), ``"gumbel"``
            (``tau``, ``hard``, ``generator``), ``"hard"`` (one-hot argmax), see
            :mod:`qkv.functional.normalize`; or a callable ``(logits, mask) -> weights`` that
            gets the scaled, biased logits ``(..., H, Tq, Tk)`` and the bool mask (True = may
            attend, broadcastable, or None) and must give weights of the logits' shape (it
            owns what masked entries and fully masked rows get). Only the reference backend
            runs a non-softmax normalizer (``auto`` picks it; the fast backends refuse with
            a reason), and ``lse`` is then None.
        normalize_kwargs: parameters of a named normalizer, e.g. ``{"k": 4}`` for ``"topk"``.

    Rows with no key to attend give output 0, weights 0 and gradients 0. NaN or inf placed in
    masked-out positions does not change the result. Otherwise NaN propagates as in eager
    PyTorch, on every backend: a query row holding NaN gives a NaN output row, and a NaN in a
    key or value that a row attends makes that row NaN. Half-precision inputs are normalized in
    float32.
    """
    inputs, restore = prepare(
        query, key, value, score=score, mask=mask, bias=bias, scale=scale, dropout_p=dropout_p,
        training=training, need_weights=need_weights, weights_for=weights_for,
        score_kwargs=score_kwargs, normalize=normalize, normalize_kwargs=normalize_kwargs,
    )  # fmt: skip
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a name (str), got {type(backend).__name__}")
    chosen = dispatch.choose(inputs, backend)
    dispatch.check_weights_fit(inputs)
    result = chosen.run(inputs)
    if inputs.need_weights:
        heads, rows = inputs.weights_for or (None, None)
        if result.weights is None:
            weights = attention_weights(inputs, heads=heads, rows=rows, lse=result.lse)
        else:
            weights = _select(result.weights, heads, rows)
        result = dataclasses.replace(result, weights=weights)
    return restore(result)


def _select(weights: Tensor, heads, rows) -> Tensor:
    """Weights of the chosen heads (dim -3) and rows (dim -2) of full weights."""
    h_idx = as_index(heads, weights.shape[-3], "heads", weights.device)
    r_idx = as_index(rows, weights.shape[-2], "rows", weights.device)
    if h_idx is not None:
        weights = weights.index_select(-3, h_idx)
    return weights if r_idx is None else weights.index_select(-2, r_idx)


def dispatch_report(query: Tensor, key: Tensor, value: Tensor, *, backend: str = "auto", **kwargs):
    """Which backend :func:`attention` would run for these arguments, and why not the others.

    Takes the same arguments as :func:`attention`; returns a
    :class:`qkv.backends.DispatchReport` (print it for a table).
    """
    inputs, _ = prepare(query, key, value, **kwargs)
    return dispatch.report(inputs, backend)


# ----------------------------------------------------------------------------- validation


def _check_tensor(name: str, t: Any) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    if t.dim() < 2:
        raise ValueError(f"{name}: expected shape (..., T, D) with at least 2 dims, got {tuple(t.shape)}")
    return t


def _check_weights_for(weights_for):
    if weights_for is None:
        return None
    if not isinstance(weights_for, (tuple, list)) or len(weights_for) != 2:
        raise TypeError(f"weights_for: expected a pair (heads, rows), got {weights_for!r}")
    return tuple(weights_for)


def _resolve_score(score: ScoreLike, score_kwargs: dict[str, Any] | None):
    kwargs = dict(score_kwargs or {})
    if callable(score) and not isinstance(score, str):
        if kwargs:
            raise ValueError("score_kwargs: only valid with a named score; bind them into your callable")
        return "custom", score, kwargs
    if not isinstance(score, str) or score not in _scores.SCORES:
        valid = ", ".join(_scores.SCORES)
        raise ValueError(
            f"score: unknown score {score!r}; valid names: {valid}, or a callable (q, k) -> logits"
        )
    _, required, optional = _scores.SCORES[score]
    missing = [p for p in required if p not in kwargs]
    if missing:
        raise ValueError(
            f"score {score!r} needs parameters {missing} in score_kwargs "
            f"(or use the module qkv.{'GeneralScore' if score == 'general' else 'AdditiveScore'})"
        )
    unknown = [p for p in kwargs if p not in required + optional]
    if unknown:
        raise ValueError(
            f"score_kwargs: {unknown} are not parameters of score {score!r} "
            f"(expected {list(required + optional) or 'none'})"
        )
    return score, AttentionInputs.score_function(score, kwargs), kwargs


def _check_pattern_fits(pattern: Mask, logits_shape: tuple[int, ...]) -> None:
    """A pattern made for another batch or number of heads is refused before any backend runs
    (a backend that evaluates it block by block would otherwise index only part of it)."""
    bh = pattern.batch_head_shape
    lead = (*logits_shape[:-2],)
    target = (lead[-2] if len(lead) >= 2 else 1, lead[-1] if lead else 1)
    if bh is not None and any(n not in (1, m) for n, m in zip(bh, target, strict=True)):
        raise ValueError(
            f"mask: the pattern {pattern!r} is for (B, H) = {tuple(bh)}, the inputs have (B, H) = {target}"
        )


def _fit_extra(name: str, t: Tensor, n_in: int, logits_shape: tuple[int, ...], ref: Tensor) -> Tensor:
    """Bring a mask or bias to the (at least 4-D) layout of the logits and check it fits."""
    if t.device != ref.device:
        raise ValueError(f"{name}: expected device {ref.device} like query, got {t.device}")
    check_ambiguous_layout(name, t, n_in)
    if t.dim() < 2:  # (Tk,) or a scalar: the same for every query
        t = t.reshape(1, -1) if t.dim() == 1 else t.reshape(1, 1)
    if n_in == 3 and t.dim() <= 3:
        t = t.reshape((1,) * (3 - t.dim()) + tuple(t.shape)).unsqueeze(-3)  # (B, 1, Tq, Tk)
    elif n_in == 2 and t.dim() > 2:
        raise ValueError(f"{name}: for 2-D (T, D) inputs expected at most 2 dims, got {tuple(t.shape)}")
    return check_fits(name, t, logits_shape)


def prepare(
    query, key, value, *, score: ScoreLike = "scaled_dot", mask=None, bias=None, scale=None,
    dropout_p: float = 0.0, training: bool = False, need_weights: bool = False, weights_for=None,
    score_kwargs=None, normalize="softmax", normalize_kwargs=None,
):  # fmt: skip
    """Validate the arguments of :func:`attention`; return the backend inputs and a function
    that brings a result back to the caller's layout."""
    q = _check_tensor("query", query)
    k = _check_tensor("key", key)
    v = _check_tensor("value", value)
    for name, t in (("key", k), ("value", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: expected dtype {q.dtype} like query, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name}: expected device {q.device} like query, got {t.device}")
        if t.dim() != q.dim():
            raise ValueError(
                f"{name}: expected {q.dim()} dims like query {tuple(q.shape)}, got {tuple(t.shape)}"
            )
        if t.shape[:-2] != q.shape[:-2]:
            raise ValueError(
                f"{name}: leading (batch, head) dims {tuple(t.shape[:-2])} differ from "
                f"query's {tuple(q.shape[:-2])}"
            )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"value: expected Tk = {k.shape[-2]} rows like key {tuple(k.shape)}, got {tuple(v.shape)}"
        )
    for name, t in (("query", q), ("key", k)):
        if t.shape[-1] == 0:
            raise ValueError(
                f"{name}: expected a feature dim D >= 1 (the last dim; scores compare D features), "
                f"got shape {tuple(t.shape)}"
            )
    score_name, score_fn, kwargs = _resolve_score(score, score_kwargs)
    normalize_name, normalize_fn = resolve_normalizer(normalize, normalize_kwargs)
    if score_name in ("dot", "scaled_dot", "gaussian", "cosine") and q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"key: score {score_name!r} needs the feature dim D of query ({q.shape[-1]}) "
            f"and key ({k.shape[-1]}) to match"
        )
    if scale is None:
        scale = _scores.default_scale(score_name, q.shape[-1])
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TypeError(f"scale: expected a finite number, got {scale!r}")
    if not (isinstance(dropout_p, (int, float)) and 0.0 <= dropout_p < 1.0):
        raise ValueError(f"dropout_p: expected a number in [0, 1), got {dropout_p!r}")

    n_in = q.dim()
    if n_in == 2:  # (T, D) -> (1, 1, T, D)
        q, k, v = (t[None, None] for t in (q, k, v))
    elif n_in == 3:  # (B, T, D) -> (B, 1, T, D): one head
        q, k, v = (t.unsqueeze(-3) for t in (q, k, v))
    logits_shape = (*q.shape[:-1], k.shape[-2])  # (..., H, Tq, Tk)

    pattern = tensor_mask = None
    if isinstance(mask, Mask):
        pattern = mask  # stays lazy: (1, 1, Tq, Tk) or (B, H, Tq, Tk) when a backend builds it
        _check_pattern_fits(pattern, logits_shape)
    elif mask is not None:
        tensor_mask = _fit_extra("mask", check_bool_mask(mask, "mask"), n_in, logits_shape, q)
    if bias is not None:
        if not isinstance(bias, Tensor) or not bias.is_floating_point():
            got = bias.dtype if isinstance(bias, Tensor) else type(bias).__name__
            raise TypeError(f"bias: expected a float tensor (additive; masks go to mask=), got {got}")
        bias = _fit_extra("bias", bias, n_in, logits_shape, q)

    inputs = AttentionInputs(
        query=q, key=k, value=v, score=score_name, score_fn=score_fn, scale=float(scale),
        pattern=pattern, tensor_mask=tensor_mask, bias=bias, dropout_p=float(dropout_p), training=bool(training),
        need_weights=bool(need_weights) or weights_for is not None,
        weights_for=_check_weights_for(weights_for), score_kwargs=kwargs, normalize=normalize_name,
        normalize_fn=None if normalize_name == "softmax" else normalize_fn,
    )  # fmt: skip

    def restore(result: AttentionOutput) -> AttentionOutput:
        if n_in >= 4:
            return result
        lead = (0, 0) if n_in == 2 else (slice(None), 0)

        def back(t, trailing):
            return None if t is None else t[(*lead, *([slice(None)] * trailing))]

        return AttentionOutput(
            out=back(result.out, 2),
            weights=back(result.weights, 2),
            lse=back(result.lse, 1),
            backend=result.backend,
        )

    return inputs, restore
