"""Attention of query blocks over overlapping key strips with an additive bias, forward and
backward in torch's fused CPU kernels (the flash kernel with a float ``attn_mask``).

Adaptive span (:mod:`qkv.api.adaptive_span`) cuts the queries into blocks of ``Qb`` and lets
block ``n`` score only its strip of ``L`` keys, padded positions ``[(first + n) Qb, (first + n)
Qb + L)`` of the keys. Its span ``z`` enters through the bias ``log m_z``, which the fused
kernels take as their mask but do not differentiate: :class:`SpanStrips` gives ``q``, ``k`` and
``v`` their gradients (torch's fused backward, on the same strips and bias), and
:mod:`qkv.api.span_ramp` gives ``z`` its own from the ramp alone.

The strips are overlapping strided views of the padded keys and values, read in place by both
kernels; the backward's strip gradients ``(nb, N, L, d)`` are added back into the padded key
positions they came from. Work: the forward's two strip products and the backward's five,
``O(T L D)`` per head. Equal to autograd through the reference backend within floating-point
tolerance (the tests compare them in float64).

Shape legend::

    N  B*H   nb query blocks of this call   Qb block length   L strip length   D, Dv head dims
    q_blocks (nb, N, Qb, D), kp (N, W, D), vp (N, W, Dv)   W padded key positions
    bias (nb | 1, N, Qb, L)  -> out (nb, N, Qb, Dv), lse (nb, N, Qb)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SpanStrips", "fused_strips_available", "key_strips", "span_strips"]

_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_BACKWARD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


def fused_strips_available(q: Tensor) -> bool:
    """Whether :func:`span_strips` can run for ``q``: torch has the fused CPU kernels (forward
    and backward), ``q`` is on the CPU, and no graph is being traced."""
    return (
        _FLASH is not None
        and _FLASH_BACKWARD is not None
        and q.device.type == "cpu"
        and not torch.compiler.is_compiling()
    )


def key_strips(xp: Tensor, first: int, n: int, block: int, strip: int) -> Tensor:
    """The strips of blocks ``first .. first + n - 1``: ``(n, N, L, d)``, an overlapping strided
    view of ``xp (N, W, d)`` (no copy); strip ``i`` is rows ``[(first + i) Qb, (first + i) Qb + L)``."""
    k0 = first * block
    return xp[:, k0 : k0 + (n - 1) * block + strip].unfold(1, strip, block).permute(1, 0, 3, 2)


def span_strips(
    q_blocks: Tensor, kp: Tensor, vp: Tensor, bias: Tensor, *, first: int, strip: int, scale: float | None
) -> tuple[Tensor, Tensor]:
    """``(out (nb, N, Qb, Dv), lse (nb, N, Qb))``: block ``first + i`` of ``q_blocks`` attends
    its strip of ``kp``/``vp`` with ``bias`` added to its logits (``-inf`` = masked; a row with
    no key gives output 0, lse 0 and no gradient). Differentiable in ``q_blocks``, ``kp`` and
    ``vp`` (the bias is a constant here); ``lse`` (of the biased logits) is not differentiable.
    Needs :func:`fused_strips_available`. The kernels want one head dim: with ``D != Dv`` the
    smaller side is padded with zeros (scores and outputs unchanged) and the output cut back."""
    d, dv = q_blocks.shape[-1], vp.shape[-1]
    scale = d**-0.5 if scale is None else scale
    if d < dv:
        q_blocks, kp = F.pad(q_blocks, (0, dv - d)), F.pad(kp, (0, dv - d))
    elif dv < d:
        vp = F.pad(vp, (0, d - dv))
    out, lse = SpanStrips.apply(q_blocks, kp, vp, bias.detach(), first, strip, scale)
    return out[..., :dv], lse


class SpanStrips(torch.autograd.Function):
    """See the module docstring."""

    @staticmethod
    def forward(ctx: Any, q_blocks, kp, vp, bias, first, strip, scale):  # type: ignore[override]
        n, _, block, _ = q_blocks.shape
        ks, vs = (key_strips(x, first, n, block, strip) for x in (kp, vp))
        out, lse = _FLASH(q_blocks, ks, vs, 0.0, False, attn_mask=bias, scale=scale)
        ctx.save_for_backward(q_blocks, kp, vp, bias, out, lse)
        ctx.first, ctx.strip, ctx.scale = first, strip, scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, _grad_lse: Tensor | None):  # type: ignore[override]
        q_blocks, kp, vp, bias, out, lse = ctx.saved_tensors
        n, _, block, _ = q_blocks.shape
        ks, vs = (key_strips(x, ctx.first, n, block, ctx.strip) for x in (kp, vp))
        dq, dks, dvs = _FLASH_BACKWARD(
            grad_out.contiguous(), q_blocks, ks, vs, out, lse, 0.0, False, attn_mask=bias, scale=ctx.scale
        )
        dkp, dvp = (_strips_added(g, x, ctx.first, block) for g, x in ((dks, kp), (dvs, vp)))
        return dq, dkp, dvp, None, None, None, None


def _strips_added(strips: Tensor, xp: Tensor, first: int, block: int) -> Tensor:
    """The gradient of the padded rows ``xp (N, W, d)`` from the gradients of their strips
    ``(n, N, L, d)`` (strip ``i`` = rows from ``(first + i) Qb``, ``L >= Qb``; strips overlap).
    Rows ``[j, j + Qb)`` of every strip land on rows that no other strip's same rows touch, so
    each such slice of all the strips is written in one strided op: the first copied (the rows
    no strip starts on zeroed), the others added, ``ceil(L / Qb)`` in all."""
    n, heads, strip, d = strips.shape
    k0 = first * block
    grad = xp.new_empty(xp.shape)  # contiguous
    grad[:, :k0].zero_()
    grad[:, k0 + n * block :].zero_()
    for j0 in range(0, strip, block):
        rows = min(block, strip - j0)
        target = grad.as_strided((n, heads, rows, d), (block * d, grad.stride(0), d, 1), (k0 + j0) * d)
        if j0 == 0:
            target.copy_(strips[:, :, :rows])
        else:
            target.add_(strips[:, :, j0 : j0 + rows])
    return grad
