"""Attention of query blocks over overlapping key strips with a learned additive bias: the fused
forward, and a FlashAttention-style backward that gives the bias its gradient.

Adaptive span (:mod:`qkv.api.adaptive_span`) cuts the queries into blocks of ``Qb`` and lets
block ``n`` score only its strip of ``L`` keys, padded positions ``[(first + n) Qb, (first + n)
Qb + L)`` of the keys. Its span ``z`` enters through the bias ``log m_z``, which SDPA takes but
cannot differentiate. :class:`SpanStrips` runs the forward through :func:`qkv.attention` with
the bias detached (so the fused SDPA kernel runs it) and writes the backward itself, recomputing
each strip's probabilities (Dao et al. 2022, "FlashAttention", Algorithm 4)::

    s  = q k^T * scale + bias          p = softmax(s)   (0 in a row with no key)
    dv = p^T do                        dp = do v^T
    ds = p * (dp - rowsum(do * o))     dq = ds k * scale,   dk = ds^T q * scale
    d bias = ds, summed over the blocks (and batch) that share the bias

The strips of ``dk`` and ``dv`` overlap: each is added back (``index_add_``) into the padded
key positions it came from. The backward runs head by head, a group of blocks at a time, so
that a group's scores ``(n, Qb, L)`` stay within :data:`GROUP_ELEMENTS`; the strips are strided
views of the keys that ``bmm`` reads in place. Work: the forward's two strip products and five
in the backward, ``O(T L D)`` per head. Equal to autograd through the reference backend within
floating-point tolerance (the tests compare them in float64).

Shape legend::

    N  B*H   nb query blocks of this call   Qb block length   L strip length   D, Dv head dims
    q_blocks (nb, N, Qb, D), kp (N, W, D), vp (N, W, Dv)   W padded key positions
    bias (nb | 1, N, Qb, L)  -> out (nb, N, Qb, Dv)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from .attention import attention

__all__ = ["GROUP_ELEMENTS", "SpanStrips", "key_strips", "span_strips"]

GROUP_ELEMENTS = 1 << 22  # scores of one group of blocks in the backward (16 MiB in float32)


def key_strips(xp: Tensor, first: int, n: int, block: int, strip: int) -> Tensor:
    """The strips of blocks ``first .. first + n - 1``: ``(n, N, L, d)``, an overlapping strided
    view of ``xp (N, W, d)`` (no copy); strip ``i`` is rows ``[(first + i) Qb, (first + i) Qb + L)``."""
    k0 = first * block
    return xp[:, k0 : k0 + (n - 1) * block + strip].unfold(1, strip, block).permute(1, 0, 3, 2)


def span_strips(
    q_blocks: Tensor, kp: Tensor, vp: Tensor, bias: Tensor, *, first: int, strip: int, scale: float | None
) -> tuple[Tensor, str]:
    """``(out (nb, N, Qb, Dv), backend)``: block ``first + i`` of ``q_blocks`` attends its strip
    of ``kp``/``vp`` with ``bias`` added to its logits (``-inf`` = masked; see the module
    docstring). Differentiable in all four tensors, with :class:`SpanStrips`' backward."""
    ran: list[str] = []
    out = SpanStrips.apply(q_blocks, kp, vp, bias, first, strip, scale, ran)
    return out, ran[0]


class SpanStrips(torch.autograd.Function):
    """See the module docstring. ``ran`` (a list) receives the name of the backend that ran the
    forward."""

    @staticmethod
    def forward(ctx: Any, q_blocks, kp, vp, bias, first, strip, scale, ran):  # type: ignore[override]
        n, _, block, d = q_blocks.shape
        ks, vs = (key_strips(x.detach(), first, n, block, strip) for x in (kp, vp))
        # detached: SDPA's fused kernel refuses inputs that require grad, even without autograd
        res = attention(q_blocks.detach(), ks, vs, bias=bias.detach(), scale=scale)
        ran.append(res.backend)
        ctx.save_for_backward(q_blocks, kp, vp, bias, res.out)
        ctx.first, ctx.strip = first, strip
        ctx.scale = d**-0.5 if scale is None else scale
        return res.out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor):  # type: ignore[override]
        q_blocks, kp, vp, bias, out = ctx.saved_tensors
        n, heads, block, _ = q_blocks.shape
        dt = torch.float32 if q_blocks.dtype in (torch.float16, torch.bfloat16) else q_blocks.dtype
        do = grad_out.to(dt)
        delta = (do * out.to(dt)).sum(dim=-1, keepdim=True)  # (nb, N, Qb, 1): rowsum(do * o)
        empty = torch.isneginf(bias).all(dim=-1, keepdim=True)  # (nb | 1, N, Qb, 1): rows with no key
        grads = _Grads(
            dq=q_blocks.new_empty((heads, n, block, q_blocks.shape[3]), dtype=dt),  # (N, nb, Qb, D)
            dk=_key_rows(kp, dt),
            dv=_key_rows(vp, dt),
            dbias=torch.zeros_like(bias, dtype=dt) if ctx.needs_input_grad[3] else None,
        )
        qs = q_blocks.to(dt) * ctx.scale  # q * scale: s = qs k^T + bias, dk = ds^T qs
        any_empty = bool(empty.any())
        group = max(1, GROUP_ELEMENTS // (block * ctx.strip))
        strip_rows = _strip_rows(min(n, group), block, ctx.strip, kp.device)
        for i0 in range(0, n, group):
            part = slice(i0, min(n, i0 + group))
            shared = slice(0, 1) if bias.shape[0] == 1 else part
            k0 = (ctx.first + i0) * block  # the first key row of these strips
            rows = strip_rows[: (part.stop - i0) * ctx.strip] + k0  # (n * L,): the key row of each strip row
            for h in range(heads):
                head = (qs[part, h], kp[h], vp[h], bias[shared, h], do[part, h], delta[part, h])
                empty_rows = empty[shared, h] if any_empty else None
                _group_grads(grads, h, part, rows, *(x.to(dt) for x in head), empty_rows, ctx.strip, k0)
        dq = grads.dq.mul_(ctx.scale).transpose(0, 1)  # dq = ds k * scale, (nb, N, Qb, D)
        dbias = None if grads.dbias is None else grads.dbias.to(bias.dtype)
        dkp, dvp = grads.dk.to(kp.dtype), grads.dv.to(vp.dtype)
        return dq.to(q_blocks.dtype), dkp, dvp, dbias, None, None, None, None


class _Grads(NamedTuple):
    """The gradients :meth:`SpanStrips.backward` accumulates: ``dq (nb, N, Qb, D)``; ``dk``,
    ``dv`` like the padded keys and values ``(N, W, d)``; ``dbias`` like the bias (None when not needed)."""

    dq: Tensor
    dk: Tensor
    dv: Tensor
    dbias: Tensor | None


def _group_grads(
    grads: _Grads, h: int, part: slice, rows: Tensor, qs: Tensor, kp: Tensor, vp: Tensor,
    bias: Tensor, do: Tensor, delta: Tensor, empty: Tensor | None, strip: int, k0: int,
) -> None:  # fmt: skip
    """Head ``h``, blocks ``part``: ``qs (n, Qb, D)`` the scaled queries, this head's padded keys
    ``kp (W, D)`` and values ``vp (W, Dv)``, ``bias (n | 1, Qb, L)``, ``do (n, Qb, Dv)``,
    ``delta (n, Qb, 1)``, ``empty (n | 1, Qb, 1)`` (rows with no key, None if there are none),
    ``rows (n * L,)`` the key row of each strip row (the first is ``k0``). The strips are strided views that ``bmm``
    reads in place. Writes ``dq / scale``."""
    n, block = qs.shape[:2]
    ks_t = kp[k0 : k0 + (n - 1) * block + strip].unfold(0, strip, block)  # (n, D, L): k^T per strip
    vs_t = vp[k0 : k0 + (n - 1) * block + strip].unfold(0, strip, block)  # (n, Dv, L)
    p = torch.softmax(torch.baddbmm(bias, qs, ks_t), dim=-1)  # (n, Qb, L)
    if empty is not None:
        p.masked_fill_(empty, 0.0)  # a row with no key: softmax gave NaN, its weights are 0
    grads.dv[h].index_add_(0, rows, torch.bmm(p.transpose(1, 2), do).flatten(0, 1))  # dv = p^T do
    ds = torch.bmm(do, vs_t).sub_(delta).mul_(p)  # dp = do v^T; ds = p (dp - delta)
    if grads.dbias is not None:
        if grads.dbias.shape[0] == 1:  # one bias shared by every block
            grads.dbias[0, h] += ds.sum(dim=0)
        else:
            grads.dbias[part, h] = ds
    torch.bmm(ds, ks_t.transpose(1, 2), out=grads.dq[h, part])  # dq / scale = ds k
    grads.dk[h].index_add_(0, rows, torch.bmm(ds.transpose(1, 2), qs).flatten(0, 1))  # dk = ds^T qs


def _key_rows(xp: Tensor, dt: torch.dtype) -> Tensor:
    """Zeros ``(N, W, d)``: the gradient of the padded keys or values ``xp``."""
    return xp.new_zeros(xp.shape, dtype=dt)


def _strip_rows(n: int, block: int, strip: int, device: torch.device) -> Tensor:
    """``(n * L,)``: the key row of each strip row, for strips ``0 .. n-1`` (strip ``i`` starts
    at row ``i Qb``); add ``first * Qb`` for strips that start at block ``first``."""
    rows = torch.arange(n, device=device)[:, None] * block + torch.arange(strip, device=device)
    return rows.reshape(-1)
