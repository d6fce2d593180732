"""The gradient of an adaptive span ``z`` (:mod:`qkv.api.adaptive_span`), from its ramp alone.

The weights are ``p = softmax(s + log m_z)`` with ``m_z(x) = clamp((R + z - x) / R, 0, 1)``, so
``dL/dz_h = sum_ij ds_ij * d log m_z(x_ij) / dz`` with ``ds = p (dp - delta)``, ``dp = do v^T``
and ``delta = rowsum(do * o)`` (FlashAttention's backward). ``d log m / dz = 1 / (R m)`` where
the clamp passes the gradient (``z <= x < z + R``, as autograd through the formula: the clamp
is inclusive at ``m = 1``) and 0 elsewhere, and ``p / m = exp(s - lse)``::

    dL/dz_h = 1/R * sum over (b, i, j) with z_h <= x_ij < z_h + R of exp(s_ij - lse_i) (dp_ij - delta_i)

Only the ramp's band of about ``R`` diagonals enters: :class:`SpanRamp` passes the output's
gradient through unchanged and computes this sum for every head's band at once (two bands
when not causal: keys before and after the query), over tiles of :data:`TILE` queries against
the ``TILE + R`` keys their band reaches, gathered (a few samples at a time, at most
:data:`CHUNK_ELEMENTS` scores). ``lse`` is the log-sum-exp of ``s + log m_z`` from
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

__all__ = ["CHUNK_ELEMENTS", "TILE", "SpanRamp", "ramp_offsets", "span_grad", "with_span_gradient"]

TILE = 64  # queries per tile of the band
CHUNK_ELEMENTS = 1 << 22  # band scores of the samples taken at once (about 16 MiB in float32)


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
    """``dL/dspan (H,)`` in ``span``'s dtype, given the output's gradient ``do``: every head's
    band (or two) in one batch of tiles (:func:`_band_sums`)."""
    dt = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    bands = [
        (h, d0, d1)
        for h in range(span.shape[0])
        for d0, d1 in ramp_offsets(span[h], ramp, causal, q.shape[-2])
    ]
    grad = torch.zeros(span.shape[0], dtype=dt, device=q.device)
    if not bands:
        return grad.to(span.dtype)
    delta = (do.to(dt) * out.to(dt)).sum(dim=-1)  # (B, H, T)
    per_sample = len(bands) * -(-q.shape[-2] // TILE) * TILE * (TILE + math.ceil(ramp) + 1)  # band scores
    step = max(1, CHUNK_ELEMENTS // per_sample)
    heads = torch.tensor([h for h, _, _ in bands], device=q.device)
    for b0 in range(0, q.shape[0], step):
        part = [x[b0 : b0 + step] for x in (q, k, v, do, lse, delta)]
        mask = None if key_mask is None else key_mask[b0 : b0 + step]
        grad.index_add_(0, heads, _band_sums(*part, mask, bands, scale, dt))  # (bands,) into (H,)
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


def _band_sums(
    q: Tensor, k: Tensor, v: Tensor, do: Tensor, lse: Tensor, delta: Tensor, key_mask: Tensor | None,
    bands: list[tuple[int, int, int]], scale: float, dt: torch.dtype,
) -> Tensor:  # fmt: skip
    """``(I,)``: for each band ``(h, d0, d1)``, ``sum exp(s_ij - lse_i) (dp_ij - delta_i)`` over
    the queries ``i`` and keys ``j = i + d``, ``d0 <= d <= d1``, that exist (and that
    ``key_mask`` allows) in head ``h``. Tile ``n`` of :data:`TILE` queries reads the keys
    ``n TILE + d0 + c``, ``0 <= c < TILE + w - 1`` (``w`` the widest band), gathered once for
    every band; ``(c - r)`` in ``[0, d1 - d0]`` keeps row ``r``'s band."""
    bsz, _, t, _ = q.shape
    dev = q.device
    heads = torch.tensor([h for h, _, _ in bands], device=dev)  # (I,)
    d0 = torch.tensor([b[1] for b in bands], device=dev)
    width = torch.tensor([b[2] - b[1] + 1 for b in bands], device=dev)
    reach = TILE + int(width.max()) - 1
    n_tiles = -(-t // TILE)
    pos = d0[:, None, None] + (
        torch.arange(n_tiles, device=dev)[:, None] * TILE + torch.arange(reach, device=dev)
    )
    exists = (pos >= 0) & (pos < t)  # (I, nt, reach)
    pos = pos.clamp(0, t - 1)

    def keys(x: Tensor) -> Tensor:  # (B, H, T, d) -> (B, I, nt, reach, d)
        return x[:, heads[:, None, None], pos].to(dt)

    def tiles(x: Tensor) -> Tensor:  # (B, H, T, ...) -> (B, I, nt, TILE, ...)
        xp = F.pad(x[:, heads].to(dt), (0, 0) * (x.dim() - 3) + (0, n_tiles * TILE - t))
        return xp.reshape(bsz, len(bands), n_tiles, TILE, *x.shape[3:])

    s = torch.matmul(tiles(q), keys(k).transpose(-1, -2)).mul_(scale)  # (B, I, nt, TILE, reach)
    e = torch.exp(s.sub_(tiles(lse)[..., None]))
    dp = torch.matmul(tiles(do), keys(v).transpose(-1, -2)).sub_(tiles(delta)[..., None])
    c_minus_r = torch.arange(reach, device=dev) - torch.arange(TILE, device=dev)[:, None]  # (TILE, reach)
    band = (c_minus_r >= 0) & (c_minus_r < width[:, None, None])  # (I, TILE, reach)
    valid = band[:, None] & exists[:, :, None, :]  # (I, nt, TILE, reach)
    real_rows = (torch.arange(n_tiles * TILE, device=dev) < t).view(n_tiles, TILE, 1)
    valid = valid & real_rows
    if key_mask is not None:
        valid = valid & key_mask[:, pos][:, :, :, None, :]  # (B, I, nt, TILE, reach)
    return torch.where(valid, e * dp, 0.0).sum(dim=(0, 2, 3, 4))
