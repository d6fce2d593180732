"""``qkv.attention``: every attention of the source articles behind one Query-Key-Value call.

    score -> scale -> (+ bias) -> mask -> normalize (softmax by default) -> weighted sum of values

The call validates its inputs once (:mod:`qkv.api.prepare`), then runs one backend (see
``qkv.backends``): the readable ``reference`` (the specification), PyTorch's fused ``sdpa``,
``chunked``, ``blocksparse``, ``flex``; ``auto`` picks the fastest backend that can run the
inputs and fits in memory, and the result names it. Weights come from that backend or from an
exact second pass (:mod:`qkv.backends.attention_weights`): asking for them never changes the
kernel.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from .._types import AttentionOutput
from ..backends import dispatch
from ..backends.attention_weights import as_index, weights_and_lse
from ..functional.normalize import NormalizerFn
from ..masks.core import MaskLike
from . import grouped, plain_calls
from .prepare import ScoreLike, prepare

__all__ = ["attention", "dispatch_report"]


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

    Grouped-query attention: key and value may have ``Hkv`` heads dividing ``H`` (query head
    ``h`` uses key/value head ``h // (H / Hkv)``, as SDPA's ``enable_gqa``); masks and biases
    are still given for ``(..., H, Tq, Tk)``. Key/value heads are not copied (see
    :mod:`qkv.api.grouped`).

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
        backend: ``"auto"`` (the first of :data:`qkv.backends.PRIORITY` that can run the
            inputs and fits in memory), or one of ``"reference"``, ``"sdpa"``, ``"chunked"``,
            ``"blocksparse"``, ``"flex"`` (:data:`qkv.backends.BACKENDS`). An explicit backend
            that cannot run the inputs raises :class:`qkv.backends.BackendNotSupportedError`
            with the reasons.
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
    plain = None  # a plain call (no mask, bias, weights or parameters) runs its kept runner
    if (
        mask is None
        and bias is None
        and weights_for is None
        and not (need_weights or score_kwargs or normalize_kwargs)
    ):
        plain = plain_calls.plain_key(
            query, key, value, score, scale, dropout_p, training, backend, normalize
        )
        runner = plain_calls.lookup(plain, backend)
        if runner is not None:
            return runner(query, key, value)
    unfold = None
    g = grouped.group_size(query, key, value)
    if g > 1:
        plain = None
        query, key, value, mask, bias, unfold = grouped.fold(
            query, key, value, g, mask=mask, bias=bias, weights_for=weights_for
        )
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
    plain_calls.remember(plain, inputs, backend, chosen)
    if inputs.need_weights:
        heads, rows = inputs.weights_for or (None, None)
        if result.weights is None:
            weights, lse = weights_and_lse(inputs, heads=heads, rows=rows, lse=result.lse)
            if result.lse is None and inputs.weights_for is None:  # the pass computed every row's
                result = dataclasses.replace(result, lse=lse)
        else:
            weights = _select(result.weights, heads, rows)
        result = dataclasses.replace(result, weights=weights)
    result = restore(result)
    return result if unfold is None else unfold(result)


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
    g = grouped.group_size(query, key, value)
    if g > 1:
        query, key, value, kwargs["mask"], kwargs["bias"], _ = grouped.fold(
            query, key, value, g, mask=kwargs.get("mask"), bias=kwargs.get("bias"),
            weights_for=kwargs.get("weights_for"),
        )  # fmt: skip
    inputs, _ = prepare(query, key, value, **kwargs)
    return dispatch.report(inputs, backend)
