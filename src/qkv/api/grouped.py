"""Grouped-query attention for :func:`qkv.attention`: fewer key/value heads than query heads.

    query (..., H, Tq, D)   key (..., Hkv, Tk, D)   value (..., Hkv, Tk, Dv),  G = H / Hkv
    query head h attends with key/value head h // G (as SDPA's ``enable_gqa``)

Key/value heads are not copied: the ``G`` query heads of a group are stacked as extra query
rows of one ``(..., Hkv, G*Tq, D)`` problem (every row attends on its own, so this is exact),
masks and biases are folded the same way, and the result is unfolded back to ``(..., H, ...)``.
Two cases repeat the key/value heads instead: a lazy :class:`qkv.masks.Mask` pattern (it
indexes rows by position, so block-sparse backends keep seeing the pattern) and
``weights_for`` (it names query heads).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from .._checks import broadcasts_to
from .._types import AttentionOutput
from ..masks.core import Mask, check_ambiguous_layout

__all__ = ["fold", "group_size"]


def group_size(query: Any, key: Any, value: Any) -> int:
    """``G = H / Hkv`` for grouped-query inputs (at least 4-D, key and value with the same
    ``Hkv`` heads dividing the ``H`` query heads); 1 for every other call, whose checks
    :func:`qkv.api.prepare` makes."""
    if not all(isinstance(t, Tensor) and t.dim() >= 4 for t in (query, key, value)):
        return 1
    if key.dim() != query.dim() or value.dim() != query.dim() or key.shape[-3] == query.shape[-3]:
        return 1
    heads, kv_heads = query.shape[-3], key.shape[-3]
    if value.shape[-3] != kv_heads:
        raise ValueError(
            f"value: expected {kv_heads} heads (dim -3) like key {tuple(key.shape)}, got {tuple(value.shape)}"
        )
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(
            f"key: expected a number of key/value heads (dim -3) that divides query's {heads} heads "
            f"(grouped-query attention), got {kv_heads} (key {tuple(key.shape)})"
        )
    return heads // kv_heads


def fold(
    query: Tensor, key: Tensor, value: Tensor, g: int, *, mask: Any, bias: Any, weights_for: Any
) -> tuple[Tensor, Tensor, Tensor, Any, Any, Callable[[AttentionOutput], AttentionOutput]]:
    """The grouped problem as an ungrouped one: ``(query, key, value, mask, bias, unfold)``,
    ``unfold`` bringing its result back to ``(..., H, ...)``."""
    if isinstance(mask, Mask) or weights_for is not None:
        key = key.repeat_interleave(g, dim=-3)  # (..., Hkv, Tk, D) -> (..., H, Tk, D)
        value = value.repeat_interleave(g, dim=-3)
        return query, key, value, mask, bias, _same
    *lead, heads, q_len, dh = query.shape
    kv_heads, kv_len = key.shape[-3], key.shape[-2]
    target = (*lead, heads, q_len, kv_len)
    folded_q = query.reshape(*lead, kv_heads, g * q_len, dh)  # (..., H, Tq, D) -> (..., Hkv, G*Tq, D)
    mask = None if mask is None else _fold_extra("mask", mask, target, kv_heads)
    bias = None if bias is None else _fold_extra("bias", bias, target, kv_heads)

    def unfold(res: AttentionOutput) -> AttentionOutput:
        return AttentionOutput(
            out=res.out.reshape(
                *lead, heads, q_len, res.out.shape[-1]
            ),  # (..., Hkv, G*Tq, Dv) -> (..., H, Tq, Dv)
            weights=None if res.weights is None else res.weights.reshape(target),
            lse=None if res.lse is None else res.lse.reshape(*lead, heads, q_len),
            backend=res.backend,
        )

    return folded_q, key, value, mask, bias, unfold


def _same(res: AttentionOutput) -> AttentionOutput:
    return res


def _fold_extra(name: str, t: Any, target: tuple[int, ...], kv_heads: int) -> Tensor:
    """A mask or bias broadcastable to ``target = (..., H, Tq, Tk)`` in the folded layout
    ``(..., Hkv or 1, G*Tq or 1, Tk)``: row ``j * Tq + i`` is query ``i`` of head ``kvh * G + j``.
    The fit is checked here, against the shape the caller gave (the folded one would name the
    wrong dims)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a tensor or a qkv.masks.Mask, got {type(t).__name__}")
    check_ambiguous_layout(name, t, len(target))
    if not broadcasts_to(t.shape, target, max_dims=len(target)):
        raise ValueError(
            f"{name}: expected a shape broadcastable to (..., H, Tq, Tk) = {target}, got {tuple(t.shape)}"
        )
    *_, heads, q_len, _ = target
    g = heads // kv_heads
    t = t.reshape((1,) * (len(target) - t.dim()) + tuple(t.shape))
    *lead, h, tq, tk = t.shape
    if tq == 1 and h == 1:  # the same for every row of every head
        return t
    if h == 1:  # (..., 1, Tq, tk) -> (..., 1, G, Tq, tk) -> (..., 1, G*Tq, tk)
        rows = t.expand(*lead, 1, q_len, tk).unsqueeze(-3).expand(*lead, 1, g, q_len, tk)
        return rows.reshape(*lead, 1, g * q_len, tk)
    return t.expand(*lead, heads, q_len, tk).reshape(*lead, kv_heads, g * q_len, tk)
