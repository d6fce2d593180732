"""``qkv.scaled_dot_product_attention``: PyTorch's ``F.scaled_dot_product_attention`` signature,
semantics and return, on :func:`qkv.attention`'s dispatch.

Replacing ``F.scaled_dot_product_attention(q, k, v, ...)`` by
``qkv.scaled_dot_product_attention(q, k, v, ...)`` is a one-line change; the arguments are read
as torch reads them and converted at this edge to qkv's convention:

=================  ====================================================================
SDPA argument      qkv
=================  ====================================================================
``attn_mask``      bool: ``mask=`` (True = takes part, as in qkv); float: added to the
                   scores, so ``-inf`` entries become ``mask=False`` and the finite ones
                   ``bias=``. Broadcast as torch broadcasts: from the right, so a 3-D mask
                   ``(X, L, S)`` is per head.
``dropout_p``      applied whenever it is > 0 (SDPA has no ``training`` flag).
``is_causal``      ``qkv.masks.causal("top_left")``; with ``attn_mask`` too it is refused,
                   as torch refuses it.
``scale``          ``scale=`` (default ``1/sqrt(E)``).
``enable_gqa``     grouped-query attention (key/value heads dividing the query heads);
                   without it, leading dims broadcast as in torch.
=================  ====================================================================

Rows with no key to attend give 0, as torch's CPU kernels do.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..masks.core import causal
from ..masks.torch_masks import split_float_mask
from .attention import attention

__all__ = ["scaled_dot_product_attention"]


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``F.scaled_dot_product_attention`` on qkv's dispatch.

    Shapes as in torch: ``query (N, ..., Hq, L, E)``, ``key (N, ..., H, S, E)``, ``value
    (N, ..., H, S, Ev)`` -> ``(N, ..., Hq, L, Ev)``; leading dims broadcast, and with
    ``enable_gqa=True`` ``H`` may divide ``Hq``.

    Args:
        attn_mask: bool (True = takes part in attention) or float (added to the scores),
            broadcastable to ``(N, ..., L, S)``.
        dropout_p: dropout probability on the weights, applied whenever > 0.
        is_causal: the top-left causal mask (query ``i`` sees keys ``j <= i``).
        scale: multiplies ``q @ k^T``; default ``1/sqrt(E)``.
        enable_gqa: grouped-query attention (``H`` key/value heads for ``Hq`` query heads).

    Returns:
        The attention output, a tensor (use :func:`qkv.attention` for weights and the backend).
    """
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal: expected a bool, got {is_causal!r}")
    query, key, value = _broadcast(query, key, value, enable_gqa)
    if is_causal and attn_mask is not None:
        raise ValueError(
            "attn_mask: expected None when is_causal=True (as torch's SDPA); give one of them, e.g. "
            "attn_mask & torch.ones(L, S, dtype=torch.bool).tril()"
        )
    mask, bias = _from_attn_mask(attn_mask, query.dim())
    if is_causal:
        mask = causal("top_left")
    res = attention(
        query, key, value, mask=mask, bias=bias, scale=scale, dropout_p=dropout_p, training=dropout_p > 0
    )
    return res.out


def _broadcast(query: Tensor, key: Tensor, value: Tensor, enable_gqa: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Leading dims broadcast (views, nothing copied); with ``enable_gqa`` the head dim (-3) of
    key and value is left as it is for grouped-query attention."""
    if query.dim() < 2 or key.dim() < 2 or value.dim() < 2:
        return query, key, value  # qkv.attention names the argument
    keep = 3 if enable_gqa and min(query.dim(), key.dim(), value.dim()) >= 4 else 2
    try:
        lead = torch.broadcast_shapes(query.shape[:-keep], key.shape[:-keep], value.shape[:-keep])
    except RuntimeError:
        raise ValueError(
            f"key, value: leading dims of key {tuple(key.shape)} and value {tuple(value.shape)} do not "
            f"broadcast with query {tuple(query.shape)}"
        ) from None
    if enable_gqa and keep == 3 and query.shape[-3] % key.shape[-3]:
        raise ValueError(
            f"key: with enable_gqa=True expected key/value heads (dim -3) dividing query's "
            f"{query.shape[-3]} heads, got {key.shape[-3]}"
        )
    return tuple(t.expand(*lead, *t.shape[-keep:]) for t in (query, key, value))  # type: ignore[return-value]


def _from_attn_mask(attn_mask: Tensor | None, dims: int) -> tuple[Tensor | None, Tensor | None]:
    """torch's ``attn_mask`` -> qkv's ``(mask, bias)``, with every dim given, as torch
    broadcasts it (from the right)."""
    if attn_mask is None:
        return None, None
    if not isinstance(attn_mask, Tensor) or not (
        attn_mask.dtype == torch.bool or attn_mask.is_floating_point()
    ):
        got = attn_mask.dtype if isinstance(attn_mask, Tensor) else type(attn_mask).__name__
        raise TypeError(f"attn_mask: expected a bool or float tensor, got {got}")
    if attn_mask.dim() > dims:
        raise ValueError(
            f"attn_mask: expected at most {dims} dims like query, got shape {tuple(attn_mask.shape)}"
        )
    attn_mask = attn_mask.reshape((1,) * (dims - attn_mask.dim()) + tuple(attn_mask.shape))
    if attn_mask.dtype == torch.bool:
        return attn_mask, None
    keep, bias = split_float_mask(attn_mask)
    return (None if bool(keep.all()) else keep), bias
