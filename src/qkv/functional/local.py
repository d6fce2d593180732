"""Luong local attention (Luong, Pham, Manning 2015, section 3.2), as a functional op.

Global attention looks at every source position. Local attention first picks an aligned
position ``p_t`` for each query, then attends only to the window ``[p_t - D, p_t + D]``:

    local-m (monotonic)   p_t = t                                   (the query's own index)
    local-p (predictive)  p_t = S * sigmoid(v_p^T tanh(W_p h_t))    (S = source length)

    a_t(s) = softmax_{s in window}(score(h_t, h_s)) * exp(-(s - p_t)^2 / (2 sigma^2)),  sigma = D / 2

The Gaussian factor is applied after the softmax, without renormalizing, as in the paper (so
for local-p the weights of a row sum to at most 1); local-m uses no Gaussian. ``p_t`` is real
for local-p and the gradient reaches it through the Gaussian. The window around a real
``p_t`` is ``|s - p_t| <= D``.

Shapes::

    query (B, Tq, Dq)   key (B, Tk, Dk)   value (B, Tk, Dv)   center (B, Tq)
    -> out (B, Tq, Dv), weights (B, Tq, Tk)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._types import AttentionOutput
from . import scores as _scores
from .normalize import masked_softmax

__all__ = ["local_attention", "local_centers"]


def local_centers(
    mode: str, *, query_len: int, source_lengths: Tensor, predicted: Tensor | None = None
) -> Tensor:
    """The aligned positions ``p_t`` of local attention, ``(B, Tq)`` float.

    Args:
        mode: ``"m"`` (monotonic: ``p_t = t``, clipped to the last source position) or ``"p"``
            (predictive: ``p_t = S_b * predicted``).
        query_len: ``Tq``; the query index ``t`` runs over ``0..Tq-1``.
        source_lengths: ``(B,)`` true source lengths ``S_b``.
        predicted: for ``"p"``: ``sigmoid(v_p^T tanh(W_p h_t))`` in ``[0, 1]``, ``(B, Tq)``.
            Luong uses ``S``; we use ``S_b - 1`` so the centre stays on a real position.
    """
    if mode not in ("m", "p"):
        raise ValueError(f"mode: expected 'm' or 'p', got {mode!r}")
    last = (source_lengths.to(torch.get_default_dtype()) - 1).clamp_min(0).unsqueeze(-1)  # (B, 1)
    if mode == "m":
        t = torch.arange(query_len, dtype=last.dtype, device=source_lengths.device)
        return torch.minimum(t.unsqueeze(0), last)  # (B, Tq)
    if predicted is None:
        raise ValueError("predicted: local-p needs the predicted fraction sigmoid(v_p^T tanh(W_p h_t))")
    return predicted * last.to(predicted.dtype)


def local_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    center: Tensor,
    window: int,
    gaussian: bool = True,
    score: Any = "dot",
    score_kwargs: dict[str, Any] | None = None,
    mask: Tensor | None = None,
) -> AttentionOutput:
    """Luong local attention around ``center`` with half-width ``window`` (``D``).

    Args:
        query, key, value: ``(B, Tq, Dq)``, ``(B, Tk, Dk)``, ``(B, Tk, Dv)``.
        center: ``p_t``, ``(B, Tq)`` float (see :func:`local_centers`).
        window: ``D >= 0``; positions with ``|s - p_t| <= D`` are attended.
        gaussian: multiply by ``exp(-(s - p_t)^2 / (2 (D/2)^2))`` after the softmax (local-p);
            False for local-m.
        score: a name of :mod:`qkv.functional.scores` (``score_kwargs`` its parameters) or a
            callable ``(q, k) -> (B, Tq, Tk)`` such as a :class:`qkv.GeneralScore`.
        mask: bool ``(B, Tk)`` or ``(B, Tq, Tk)``, True = may attend (source padding).

    Returns:
        :class:`qkv.AttentionOutput` with ``out (B, Tq, Dv)`` and ``weights (B, Tq, Tk)``,
        zero outside the window; rows with nothing to attend are zeros. ``lse`` is the
        log-sum-exp inside the window.
    """
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor) or t.dim() != 3:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected a (B, T, D) tensor, got {got}")
    bsz, q_len, kv_len = query.shape[0], query.shape[1], key.shape[1]
    if key.shape[0] != bsz or value.shape[:2] != key.shape[:2]:
        raise ValueError(
            f"key/value: expected (B={bsz}, Tk, .) with equal Tk, got {tuple(key.shape)} and {tuple(value.shape)}"
        )
    if not isinstance(window, int) or isinstance(window, bool) or window < 0:
        raise ValueError(f"window: expected an int >= 0, got {window!r}")
    if not isinstance(center, Tensor) or center.shape != (bsz, q_len):
        got = tuple(center.shape) if isinstance(center, Tensor) else type(center).__name__
        raise ValueError(f"center: expected shape (B, Tq) = {(bsz, q_len)}, got {got}")

    if callable(score) and not isinstance(score, str):
        logits = score(query, key)
    else:
        resolved = _scores.resolve_score(score, score_kwargs)
        logits = resolved.fn(query, key)  # (B, Tq, Tk)
        scale = resolved.default_scale(query.shape[-1])
        if scale != 1.0:
            logits = logits * scale

    positions = torch.arange(kv_len, device=query.device, dtype=center.dtype)  # (Tk,)
    dist = positions.view(1, 1, kv_len) - center.unsqueeze(-1)  # (B, Tq, Tk)
    allowed = dist.detach().abs() <= window
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask: expected a bool tensor (True = may attend), got {mask.dtype}")
        if tuple(mask.shape) not in ((bsz, kv_len), (bsz, q_len, kv_len)):
            raise ValueError(
                f"mask: expected shape (B, Tk) = {(bsz, kv_len)} or (B, Tq, Tk) = {(bsz, q_len, kv_len)} "
                f"(True = may attend), got {tuple(mask.shape)}"
            )
        allowed = allowed & (mask.unsqueeze(1) if mask.dim() == 2 else mask)
    weights, lse = masked_softmax(logits, allowed)
    if gaussian:
        sigma = max(window, 1) / 2.0
        weights = weights * torch.exp(-dist.square() / (2 * sigma * sigma)).to(weights.dtype)
    out = weights @ value  # (B, Tq, Tk) @ (B, Tk, Dv) -> (B, Tq, Dv)
    return AttentionOutput(out=out, weights=weights, lse=lse, backend="local")
