"""Validation at the public entry: :func:`prepare` checks every argument of
:func:`qkv.attention` once and turns them into the :class:`qkv.backends.AttentionInputs` that
backends trust (layout ``(..., H, T, D)``, a resolved score and scale, masks and biases fitted
to the logits). Modules call :func:`qkv.attention` and rely on it instead of re-checking.
"""

from __future__ import annotations

import math
import types
from typing import Any

import torch
from torch import Tensor

from .._bounded_cache import BoundedCache
from .._types import AttentionOutput
from ..backends.base import AttentionInputs, check_fits
from ..functional import scores as _scores
from ..functional.normalize import resolve_normalizer
from ..masks.core import Mask, check_ambiguous_layout, check_bool_mask

__all__ = ["ScoreLike", "call_signature", "prepare"]

ScoreLike = _scores.ScoreLike


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
    if n_in == 2 and t.dim() > 2:
        raise ValueError(f"{name}: for 2-D (T, D) inputs expected at most 2 dims, got {tuple(t.shape)}")
    return check_fits(name, _layout_extra(t, n_in), logits_shape)


def _layout_extra(t: Tensor, n_in: int) -> Tensor:
    """A mask or bias of a ``n_in``-D call in the (at least 4-D) layout of the logits."""
    if t.dim() < 2:  # (Tk,) or a scalar: the same for every query
        t = t.reshape(1, -1) if t.dim() == 1 else t.reshape(1, 1)
    if n_in == 3 and t.dim() <= 3:
        t = t.reshape((1,) * (3 - t.dim()) + tuple(t.shape)).unsqueeze(-3)  # (B, 1, Tq, Tk)
    return t


def _check_qkv(query, key, value) -> tuple[Tensor, Tensor, Tensor]:
    """Tensors of one dtype and device, equal leading dims, ``Tk`` rows in key and value."""
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
    return q, k, v


def _check_scale(scale, score: _scores.Score, head_dim: int) -> float:
    if scale is None:
        return score.default_scale(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TypeError(f"scale: expected a finite number, got {scale!r}")
    return float(scale)


def _fit_mask_and_bias(mask, bias, n_in: int, logits_shape: tuple[int, ...], ref: Tensor):
    """``(pattern, tensor_mask, bias)`` fitted to the logits ``(..., H, Tq, Tk)``."""
    pattern = tensor_mask = None
    if isinstance(mask, Mask):
        pattern = mask  # stays lazy: (1, 1, Tq, Tk) or (B, H, Tq, Tk) when a backend builds it
        _check_pattern_fits(pattern, logits_shape)
    elif mask is not None:
        tensor_mask = _fit_extra("mask", check_bool_mask(mask, "mask"), n_in, logits_shape, ref)
    if bias is not None:
        if not isinstance(bias, Tensor) or not bias.is_floating_point():
            got = bias.dtype if isinstance(bias, Tensor) else type(bias).__name__
            raise TypeError(f"bias: expected a float tensor (additive; masks go to mask=), got {got}")
        bias = _fit_extra("bias", bias, n_in, logits_shape, ref)
    return pattern, tensor_mask, bias


def _restorer(n_in: int):
    """The function that brings a ``(..., H, T, .)`` result back to a 2-D or 3-D caller."""

    def restore(result: AttentionOutput) -> AttentionOutput:
        if n_in >= 4:
            return result
        lead = (0, 0) if n_in == 2 else (slice(None), 0)
        dims = (0, 1) if n_in == 2 else (1,)  # the dims prepare added, of size 1

        def back(t, trailing):
            if t is None:
                return None
            if all(t.shape[d] == 1 for d in dims):
                return t.squeeze(dims)  # a view whose backward is one too (no zero-filled copy)
            return t[(*lead, *([slice(None)] * trailing))]  # weights_for repeating a head

        return AttentionOutput(
            out=back(result.out, 2),
            weights=back(result.weights, 2),
            lse=back(result.lse, 1),
            backend=result.backend,
        )

    return restore


def prepare(
    query, key, value, *, score: ScoreLike = "scaled_dot", mask=None, bias=None, scale=None,
    dropout_p: float = 0.0, training: bool = False, need_weights: bool = False, weights_for=None,
    score_kwargs=None, normalize="softmax", normalize_kwargs=None,
):  # fmt: skip
    """Validate the arguments of :func:`qkv.attention`; return the backend inputs and a
    function that brings a result back to the caller's layout.

    Every check depends only on shapes, dtypes, devices and the plain arguments: a call whose
    :func:`call_signature` passed them before (a bounded, thread-safe cache) skips them and
    reuses their result (resolved score, scale), its errors unchanged."""
    sig = call_signature(
        query, key, value, score=score, mask=mask, bias=bias, scale=scale, dropout_p=dropout_p,
        training=training, need_weights=need_weights, weights_for=weights_for,
        score_kwargs=score_kwargs, normalize=normalize, normalize_kwargs=normalize_kwargs,
    )  # fmt: skip
    checked = None if sig is None else _CHECKED.get(sig)
    hit = checked is not None
    if not hit:
        checked = _check_arguments(
            query, key, value, score, score_kwargs, normalize, normalize_kwargs, scale, dropout_p
        )
    resolved, scale, normalize_name, normalize_fn = checked
    n_in = query.dim()
    q, k, v = query, key, value
    if n_in == 2:  # (T, D) -> (1, 1, T, D)
        q, k, v = (t[None, None] for t in (q, k, v))
    elif n_in == 3:  # (B, T, D) -> (B, 1, T, D): one head
        q, k, v = (t.unsqueeze(-3) for t in (q, k, v))
    if n_in <= 3 and value is key:
        v = k  # one tensor stays one (the NaN rule then checks and zeroes it once)
    if not hit:
        logits_shape = (*q.shape[:-1], k.shape[-2])  # (..., H, Tq, Tk)
        pattern, tensor_mask, bias = _fit_mask_and_bias(mask, bias, n_in, logits_shape, q)
        if sig is not None:
            _CHECKED.put(sig, checked)
    else:
        pattern, tensor_mask = None, None if mask is None else _layout_extra(mask, n_in)
        bias = None if bias is None else _layout_extra(bias, n_in)
    inputs = AttentionInputs(
        query=q, key=k, value=v, score=resolved, scale=scale, pattern=pattern, tensor_mask=tensor_mask,
        bias=bias, dropout_p=float(dropout_p), training=bool(training),
        need_weights=bool(need_weights) or weights_for is not None,
        weights_for=_check_weights_for(weights_for), normalize=normalize_name,
        normalize_fn=None if normalize_name == "softmax" else normalize_fn, signature=sig,
    )  # fmt: skip
    return inputs, _restorer(n_in)


def _check_arguments(query, key, value, score, score_kwargs, normalize, normalize_kwargs, scale, dropout_p):
    """The checks of everything but the mask and bias: ``(score, scale, normalize name, fn)``."""
    q, k, _ = _check_qkv(query, key, value)
    resolved = _scores.resolve_score(score, score_kwargs)
    normalize_name, normalize_fn = resolve_normalizer(normalize, normalize_kwargs)
    if resolved.same_dim and q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"key: score {resolved.name!r} needs the feature dim D of query ({q.shape[-1]}) "
            f"and key ({k.shape[-1]}) to match"
        )
    scale = _check_scale(scale, resolved, q.shape[-1])
    if not (isinstance(dropout_p, (int, float)) and 0.0 <= dropout_p < 1.0):
        raise ValueError(f"dropout_p: expected a number in [0, 1), got {dropout_p!r}")
    return resolved, scale, normalize_name, normalize_fn


_CHECKED = BoundedCache(512)  # call_signature -> what _check_arguments returned


def _cacheable_score(score: Any) -> bool:
    """A name, or a callable compared by identity (a module or a plain function), or a method
    bound to such a module (compared by its module and function, as Python compares bound
    methods): its checks depend on nothing but the object, which the key holds."""
    if isinstance(score, str):
        return True
    if isinstance(score, types.MethodType):
        return isinstance(score.__self__, torch.nn.Module) and _by_identity(score.__self__)
    return _by_identity(score) and isinstance(score, (torch.nn.Module, types.FunctionType))


def _by_identity(obj: Any) -> bool:
    return type(obj).__hash__ is object.__hash__ and type(obj).__eq__ is object.__eq__


_PLAIN = (int, float, bool, type(None))


def _tensor_key(t: Tensor) -> tuple:
    return (t.shape, t.dtype, t.device, t.stride(-1) if t.dim() else 0, t.requires_grad)


def call_signature(
    query, key, value, *, score, mask, bias, scale, dropout_p, training, need_weights, weights_for,
    score_kwargs, normalize, normalize_kwargs,
):  # fmt: skip
    """A hashable key of everything the checks and the backend choice read (shapes, dtypes,
    devices, strides of the last dim, ``requires_grad``, autograd's mode, the plain arguments),
    or None for a call that is not cached: a named score or normalizer with parameters, a
    callable score other than a module or a plain function, a :class:`qkv.masks.Mask` pattern,
    ``weights_for``, a non-tensor input, or a graph being traced. A score module (the score of
    :class:`qkv.modules.AdditiveAttention`, say) is in the key itself: compared and hashed by
    identity, kept alive while its entry is cached, so its checks are made once per module; so is
    a method bound to a module (:meth:`qkv.modules.AdditiveScore.from_projected_keys`)."""
    if score_kwargs or normalize_kwargs or weights_for is not None or torch.compiler.is_compiling():
        return None
    if not (_cacheable_score(score) and isinstance(normalize, str) and normalize == "softmax"):
        return None
    if not all(isinstance(t, Tensor) for t in (query, key, value)):
        return None
    if not all(t is None or isinstance(t, Tensor) for t in (mask, bias)):
        return None
    if not all(type(x) in _PLAIN for x in (scale, dropout_p, training, need_weights)):
        return None
    return (
        _tensor_key(query), _tensor_key(key), _tensor_key(value), torch.is_grad_enabled(), score,
        type(scale), scale, type(dropout_p), dropout_p, training, bool(need_weights),
        None if mask is None else _tensor_key(mask), None if bias is None else _tensor_key(bias),
    )  # fmt: skip
