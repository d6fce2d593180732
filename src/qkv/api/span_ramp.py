"""The gradient of an adaptive span ``z`` (:mod:`qkv.api.adaptive_span`), from its ramp alone.

The weights are ``p = softmax(s + log m_z)`` with ``m_z(x) = clamp((R + z - x) / R, 0, 1)``, so
``dL/dz_h = sum_ij ds_ij * d log m_z(x_ij) / dz`` with ``ds = p (dp - delta)``, ``dp = do v^T``
and ``delta = rowsum(do * o)`` (FlashAttention's backward). ``d log m / dz = 1 / (R m)`` where
the clamp passes the gradient (``z <= x < z + R``, as autograd through the formula: the clamp
is inclusive at ``m = 1``) and 0 elsewhere, and ``p / m = exp(s - lse)``::

    dL/dz_h = 1/R * sum over (b, i, j) with z_h <= x_ij < z_h + R of exp(s_ij - lse_i) (dp_ij - delta_i)

Only the ramp's band of about ``R`` diagonals enters: :class:`SpanRamp` passes the output's
gradient through unchanged and computes this sum, head by head, over tiles of
:data:`TILE` queries against the ``TILE + R`` keys their band reaches (two bands when not
causal: keys before and after the query). ``lse`` is the log-sum-exp of ``s + log m_z`` from
the forward; ``s = q k^T * scale``. Work ``O(T (TILE + R) D)`` per head.

Shapes: ``q, k (B, H, T, D)``, ``v, out (B, H, T, Dv)``, ``lse (B, H, T)``, ``span (H,)``,
``key_mask (B, T)`` or None.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TILE", "SpanRamp", "ramp_offsets", "with_span_gradient"]

TILE = 64  # queries per tile of the band


def with_span_gradient(
    out: Tensor, span: Tensor, q: Tensor, k: Tensor, v: Tensor, lse: Tensor, *,
    key_mask: Tensor | None, ramp: float, causal: bool, scale: float,
) -> Tensor:  # fmt: skip
    """``out`` itself (a view), through which the loss's gradient reaches ``span`` (module
    docstring); ``q``, ``k``, ``v`` and ``lse`` are read, not differentiated here."""
    detached = [x.detach() for x in (q, k, v, lse)]
    return SpanRamp.apply(out, span, *detached, key_mask, ramp, causal, scale)


class SpanRamp(torch.autograd.Function):
    """Identity on ``out``; its backward gives ``span`` the ramp's gradient (module docstring)."""

    @staticmethod
    def forward(ctx: Any, out, span, q, k, v, lse, key_mask, ramp, causal, scale):  # type: ignore[override]
        ctx.save_for_backward(out, span, q, k, v, lse)
        ctx.key_mask, ctx.ramp, ctx.causal, ctx.scale = key_mask, ramp, causal, scale
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor):  # type: ignore[override]
        out, span, q, k, v, lse = ctx.saved_tensors
        dspan = None
        if ctx.needs_input_grad[1]:
            dspan = span_grad(
                grad_out, out, span, q, k, v, lse, ctx.key_mask, ctx.ramp, ctx.causal, ctx.scale
            )
        return grad_out, dspan, None, None, None, None, None, None, None, None


def span_grad(
    do: Tensor, out: Tensor, span: Tensor, q: Tensor, k: Tensor, v: Tensor, lse: Tensor,
    key_mask: Tensor | None, ramp: float, causal: bool, scale: float,
) -> Tensor:  # fmt: skip
    """``dL/dspan (H,)`` in ``span``'s dtype, given the output's gradient ``do``."""
    dt = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    delta = (do.to(dt) * out.to(dt)).sum(dim=-1)  # (B, H, T)
    grad = torch.zeros(span.shape[0], dtype=dt, device=q.device)
    t = q.shape[-2]
    for h in range(span.shape[0]):
        head = [x[:, h].to(dt) for x in (q, k, v, do, lse)]
        for d0, d1 in ramp_offsets(span[h], ramp, causal, t):
            grad[h] += _band_sum(*head, delta[:, h], key_mask, d0, d1, scale)
    return (grad / ramp).to(span.dtype)


def ramp_offsets(z: Tensor, ramp: float, causal: bool, t: int) -> list[tuple[int, int]]:
    """The ranges ``[d0, d1]`` of signed offsets key - query whose logits carry the ramp's
    gradient: distances ``z <= x < z + R`` and ``x <= T - 1`` (found with the mask's own
    formula in ``z``'s dtype, so the band is the one autograd would see), ``x = -d`` when
    ``causal``, ``x = |d|`` otherwise (two ranges, or one through 0)."""
    lo, hi = max(0, math.floor(float(z)) - 1), min(t - 1, math.ceil(float(z) + ramp) + 1)
    if lo > hi:
        return []
    x = torch.arange(lo, hi + 1, dtype=z.dtype, device=z.device)
    u = (ramp + z.detach() - x) / ramp  # the clamp's input
    kept = x[(u > 0) & (u <= 1)]
    if kept.numel() == 0:
        return []
    x_lo, x_hi = int(kept.min()), int(kept.max())
    if causal:
        return [(-x_hi, -x_lo)]
    return [(-x_hi, x_hi)] if x_lo == 0 else [(-x_hi, -x_lo), (x_lo, x_hi)]


def _band_sum(
    q: Tensor, k: Tensor, v: Tensor, do: Tensor, lse: Tensor, delta: Tensor,
    key_mask: Tensor | None, d0: int, d1: int, scale: float,
) -> Tensor:  # fmt: skip
    """``sum exp(s_ij - lse_i) (dp_ij - delta_i)`` over the queries ``i`` and keys ``j = i + d``,
    ``d0 <= d <= d1``, that exist (and that ``key_mask`` allows) for one head: ``q, k (B, T, D)``,
    ``v, do (B, T, Dv)``, ``lse, delta (B, T)``. Tile ``n`` of :data:`TILE` queries reads keys
    ``[n TILE + d0, (n + 1) TILE - 1 + d1]``, a strided window of the padded keys."""
    bsz, t, _ = q.shape
    width = d1 - d0 + 1
    reach = TILE + width - 1  # keys a tile's band reaches
    n_tiles = -(-t // TILE)
    t_pad = n_tiles * TILE
    pad_lo, pad_hi = max(0, -d0), max(0, t_pad - 1 + d1 - (t - 1))
    start = d0 + pad_lo  # padded position of the first tile's first key

    def windows(x: Tensor) -> Tensor:  # (B, T, d) -> (B * n_tiles, d, reach)
        xp = F.pad(x, (0, 0, pad_lo, pad_hi))[:, start : start + (n_tiles - 1) * TILE + reach]
        return xp.unfold(1, reach, TILE).reshape(bsz * n_tiles, x.shape[-1], reach)

    def tiles(x: Tensor) -> Tensor:  # (B, T, ...) -> (B * n_tiles, TILE, ...)
        xp = F.pad(x, (0, 0) * (x.dim() - 2) + (0, t_pad - t))
        return xp.reshape(bsz * n_tiles, TILE, *x.shape[2:])

    s = torch.bmm(tiles(q), windows(k)).mul_(scale)  # (B * n_tiles, TILE, reach)
    e = torch.exp(s - tiles(lse)[..., None])
    dp = torch.bmm(tiles(do), windows(v)).sub_(tiles(delta)[..., None])
    real = torch.ones(bsz, t, dtype=torch.bool, device=q.device) if key_mask is None else key_mask
    real_keys = windows(real[..., None].to(q.dtype)).squeeze(1) > 0  # (B * n_tiles, reach)
    c_minus_r = torch.arange(reach, device=q.device)[None, :] - torch.arange(TILE, device=q.device)[:, None]
    band = (c_minus_r >= 0) & (c_minus_r < width)  # (TILE, reach): key - query in [d0, d1]
    real_rows = (torch.arange(t_pad, device=q.device) < t).view(1, n_tiles, TILE, 1)
    valid = band & real_keys[:, None, :] & real_rows.expand(bsz, -1, -1, -1).reshape(-1, TILE, 1)
    return torch.where(valid, e * dp, 0.0).sum()
