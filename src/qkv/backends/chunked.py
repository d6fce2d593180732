"""The ``chunked`` backend: FlashAttention's online softmax in PyTorch, for every score.

Equal to the reference backend within tolerance; memory ``O(Tq x block)`` instead of
``O(Tq x Tk)``. Shapes (any leading dims ``...``)::

    query (..., H, Tq, D), key (..., H, Tk, D), value (..., H, Tk, Dv)
    -> out (..., H, Tq, Dv), lse (..., H, Tq)

Forward, for each query block and each key block it may attend (Milakov & Gimelshein 2018;
Dao et al. 2022)::

    s    = score(q_blk, k_blk) * scale + bias_blk, masked to -inf
    m'   = max(m, rowmax(s));  p = exp(s - m')
    l    = l * exp(m - m') + rowsum(p);  acc = acc * exp(m - m') + p @ v_blk
    out  = acc / l;  lse = m + log(l)

Backward recomputes each block from the saved ``lse`` instead of storing ``Tq x Tk``
(FlashAttention-2, Dao 2023)::

    p = exp(s - lse);  dV += p^T dO;  dP = dO V^T;  dS = p * (dP - rowsum(dO * O))

and sends ``dS * scale`` through the score: directly for dot scores, through autograd on the
recomputed block for the others (their parameters included). Blocks that a
:class:`qkv.masks.Mask` pattern never touches are skipped (its block layout says which), and
blocks it fully allows skip the mask. Rows with nothing to attend give 0 and lse ``-inf``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._types import AttentionOutput
from . import memory
from .base import AttentionInputs, Capabilities, not_supported_reasons, slice_block, zero_unreachable_keys
from .online_softmax import OnlineSoftmax, block_logits, compute_dtype

__all__ = ["ChunkedBackend", "iter_blocks", "score_parameters"]


def score_parameters(inputs: AttentionInputs) -> tuple[list[str], list[Tensor], Callable]:
    """The score's tensor parameters and a builder ``make(params) -> score_fn``.

    Named scores take theirs from ``score_kwargs``; an ``nn.Module`` score from its
    parameters (called with :func:`torch.func.functional_call`); a plain callable has none.
    """
    if inputs.score.spec is None:
        fn = inputs.score_fn
        if isinstance(fn, nn.Module):
            names = [n for n, _ in fn.named_parameters()]
            tensors = [p for _, p in fn.named_parameters()]

            def make(params, fn=fn, names=names):
                return lambda q, k: torch.func.functional_call(fn, dict(zip(names, params)), (q, k))

            return names, tensors, make
        return [], [], lambda params: fn
    fn = inputs.score.spec.fn
    names = [n for n, t in inputs.score_kwargs.items() if isinstance(t, Tensor)]
    tensors = [inputs.score_kwargs[n] for n in names]
    fixed = {n: t for n, t in inputs.score_kwargs.items() if n not in names}

    def make(params, fn=fn, names=names, fixed=fixed):
        kw = dict(fixed, **dict(zip(names, params)))
        return (lambda q, k: fn(q, k, **kw)) if kw else fn

    return names, tensors, make


@dataclass(frozen=True)
class _Block:
    k0: int
    k1: int
    partial: bool  # True: apply the mask inside the block


def iter_blocks(
    inputs: AttentionInputs, q_block: int, kv_block: int
) -> Iterator[tuple[int, int, list[_Block]]]:
    """Yield ``(q0, q1, key blocks)``: only the key blocks the mask may allow, each marked
    partial unless the mask allows all of it."""
    tq, tk = inputs.q_len, inputs.kv_len
    n_kb = math.ceil(tk / kv_block)
    layout = None
    if inputs.pattern is not None and tq and tk:
        layout = inputs.pattern.block_layout(tq, tk, q_block, kv_block)
        any_blocks, all_blocks = layout.any.tolist(), layout.all.tolist()
    for qi, q0 in enumerate(range(0, tq, q_block)):
        q1 = min(q0 + q_block, tq)
        blocks = []
        for kj in range(n_kb):
            k0, k1 = kj * kv_block, min((kj + 1) * kv_block, tk)
            if layout is not None:
                if not any_blocks[qi][kj]:
                    continue
                blocks.append(_Block(k0, k1, not all_blocks[qi][kj]))
            else:
                blocks.append(_Block(k0, k1, inputs.tensor_mask is not None))
        yield q0, q1, blocks


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs, make_score, q_block, kv_block, q, k, v, bias, *params):
        score_fn = make_score(params)
        cdt = compute_dtype(q)
        lead = q.shape[:-2]
        tq, dv = q.shape[-2], v.shape[-1]
        out = q.new_zeros((*lead, tq, dv), dtype=v.dtype)
        lse = q.new_full((*lead, tq), float("-inf"), dtype=cdt)
        for q0, q1, blocks in iter_blocks(inputs, q_block, kv_block):
            qb = q[..., q0:q1, :]
            rows = OnlineSoftmax((*lead, q1 - q0), cdt, q.device, value_dim=dv)
            for blk in blocks:
                kb, vb = k[..., blk.k0 : blk.k1, :], v[..., blk.k0 : blk.k1, :]
                keep = inputs.mask_block(q0, q1, blk.k0, blk.k1) if blk.partial else None
                if keep is not None:  # NaN in keys no row of the block may attend must not leak
                    kb, vb = zero_unreachable_keys(kb, vb, keep)
                _, s = block_logits(inputs, score_fn, qb, kb, inputs.bias_block(q0, q1, blk.k0, blk.k1), keep)
                rows.update(s, vb)
            out[..., q0:q1, :] = rows.out(v.dtype)
            lse[..., q0:q1] = rows.lse()
        ctx.inputs, ctx.make_score, ctx.blocks = inputs, make_score, (q_block, kv_block)
        ctx.save_for_backward(q, k, v, bias, out, lse, *params)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, _d_lse):
        grads = _Gradients(ctx, d_out)
        for q0, q1, blocks in iter_blocks(ctx.inputs, *ctx.blocks):
            for blk in blocks:
                grads.add_block(q0, q1, blk)
        return (None, None, None, None, *grads.result())


class _Gradients:
    """The backward of :class:`_ChunkedAttention`, one block at a time from the saved ``lse``
    (FlashAttention-2, Dao 2023), accumulated in :func:`compute_dtype`. For a block of logits
    ``s (..., bq, bk)`` recomputed from ``q_blk (..., bq, D)`` and ``k_blk (..., bk, D)``::

        p = exp(s - lse);  dV += p^T dO;  dP = dO V^T;  dS = p * (dP - delta)
        dbias += dS;  g = dS * scale  ->  through the score to dQ, dK (and its parameters)

    where ``delta = rowsum(dO * O)`` (..., Tq). Dot scores take ``dQ += g K``, ``dK += g^T Q``;
    the others run autograd on the recomputed block, which reaches their parameters too.
    """

    def __init__(self, ctx, d_out: Tensor) -> None:
        q, k, v, bias, out, lse, *params = ctx.saved_tensors
        self.inputs, self.q, self.k, self.v, self.bias, self.params = ctx.inputs, q, k, v, bias, params
        cdt = compute_dtype(q)
        self.d_out = d_out.to(cdt)
        self.delta = (self.d_out * out.to(cdt)).sum(-1)  # (..., Tq): rowsum(dO * O)
        # exp(s - lse) must be 0 on empty rows (lse = -inf): use +inf there.
        self.lse_safe = lse.masked_fill(lse == float("-inf"), float("inf"))
        self.dq = torch.zeros_like(q, dtype=cdt)
        self.dk = torch.zeros_like(k, dtype=cdt)
        self.dv = torch.zeros_like(v, dtype=cdt)
        need_bias = bias is not None and ctx.needs_input_grad[7]
        self.dbias = torch.zeros_like(bias, dtype=cdt) if need_bias else None
        self.dparams = [torch.zeros_like(p, dtype=cdt) for p in params]
        self.fast = self.inputs.score.dot_like
        self.leaves = [p.detach().requires_grad_() for p in params]  # what autograd differentiates
        self.score_fn = ctx.make_score(self.leaves)

    def add_block(self, q0: int, q1: int, blk: _Block) -> None:
        """Add the gradients of the block of queries ``q0:q1`` and keys ``blk.k0:blk.k1``."""
        cdt = self.d_out.dtype
        qb, kb, vb = self.q[..., q0:q1, :], self.k[..., blk.k0 : blk.k1, :], self.v[..., blk.k0 : blk.k1, :]
        keep = self.inputs.mask_block(q0, q1, blk.k0, blk.k1) if blk.partial else None
        if keep is not None:  # NaN in keys no row of the block may attend must not leak
            kb, vb = zero_unreachable_keys(kb, vb, keep)
        if not self.fast:  # leaves of the recomputed block, for autograd through the score
            qb, kb = qb.detach().requires_grad_(), kb.detach().requires_grad_()
        with torch.set_grad_enabled(not self.fast):  # the backward itself runs without grad
            raw, s = block_logits(
                self.inputs, self.score_fn, qb, kb, self.inputs.bias_block(q0, q1, blk.k0, blk.k1), keep
            )
        ds = self._logit_grads(s.detach(), vb, q0, q1, blk)  # (..., bq, bk)
        if self.dbias is not None:
            view = slice_block(self.dbias, q0, q1, blk.k0, blk.k1)
            view += ds.sum_to_size(view.shape)
        g = ds * self.inputs.scale if self.inputs.scale != 1.0 else ds
        if self.fast:
            self.dq[..., q0:q1, :] += g @ kb.to(cdt)
            self.dk[..., blk.k0 : blk.k1, :] += g.transpose(-2, -1) @ qb.to(cdt)
        else:
            self._through_score(raw, g, qb, kb, q0, q1, blk)

    def _logit_grads(self, s: Tensor, vb: Tensor, q0: int, q1: int, blk: _Block) -> Tensor:
        """``dS = dL/ds (..., bq, bk)`` of one block of logits; adds the block's ``dV`` on the way."""
        do_b = self.d_out[..., q0:q1, :]  # (..., bq, Dv)
        p = torch.exp(s - self.lse_safe[..., q0:q1].unsqueeze(-1))  # (..., bq, bk)
        self.dv[..., blk.k0 : blk.k1, :] += p.transpose(-2, -1) @ do_b
        dp = do_b @ vb.to(do_b.dtype).transpose(-2, -1)
        return p * (dp - self.delta[..., q0:q1].unsqueeze(-1))

    def _through_score(
        self, raw: Tensor, g: Tensor, qb: Tensor, kb: Tensor, q0: int, q1: int, blk: _Block
    ) -> None:
        """Send ``g = dL/draw (..., bq, bk)`` back through the score by autograd, from the
        recomputed ``raw`` to the block's leaves ``qb``, ``kb`` and the score's parameters."""
        grads = torch.autograd.grad(raw, [qb, kb, *self.leaves], g.to(raw.dtype), allow_unused=True)
        if grads[0] is not None:
            self.dq[..., q0:q1, :] += grads[0]
        if grads[1] is not None:
            self.dk[..., blk.k0 : blk.k1, :] += grads[1]
        for acc, gp in zip(self.dparams, grads[2:]):
            if gp is not None:
                acc += gp

    def result(self) -> tuple:
        """``(dq, dk, dv, dbias, *dparams)`` in the dtypes of their inputs (dbias None unless needed)."""
        return (
            self.dq.to(self.q.dtype), self.dk.to(self.k.dtype), self.dv.to(self.v.dtype),
            None if self.dbias is None else self.dbias.to(self.bias.dtype),
            *[d.to(p.dtype) for d, p in zip(self.dparams, self.params)],
        )  # fmt: skip


class ChunkedBackend:
    """Online-softmax attention over key blocks for every score, mask, pattern and bias.

    Args:
        q_block, kv_block: block sizes (rows of queries, keys) for dot scores; other scores
            shrink ``kv_block`` so a block's intermediate (e.g. additive's ``bq x bk x A``)
            stays near ``max_block_elements``.
    """

    name = "chunked"
    auto_min_logits = 1 << 22

    def __init__(self, q_block: int = 128, kv_block: int = 512, max_block_elements: int = 1 << 22) -> None:
        self.q_block, self.kv_block, self.max_block_elements = q_block, kv_block, max_block_elements

    capabilities = Capabilities("chunked (online softmax)", softmax_only=True, dropout=False)

    def supports(self, inputs: AttentionInputs) -> list[str]:
        reasons = not_supported_reasons(self.capabilities, inputs)
        if inputs.score.spec is None and not inputs.score.is_module and torch.is_grad_enabled():
            reasons.append(
                "a custom score that is not an nn.Module: its backward cannot reach tensors the "
                "callable closes over (wrap it in an nn.Module)"
            )
        return reasons

    def block_sizes(self, inputs: AttentionInputs) -> tuple[int, int]:
        """(q_block, kv_block) for these inputs: smaller key blocks for wide scores."""
        q_block, kv_block = self.q_block, self.kv_block
        width = inputs.score.width(inputs.query.shape[-1])
        lead = math.prod(inputs.query.shape[:-2])
        while kv_block > 16 and lead * q_block * kv_block * width > self.max_block_elements:
            kv_block //= 2
        return q_block, kv_block

    def auto_skip(self, inputs: AttentionInputs) -> list[str]:
        """Why ``auto`` passes over this backend although it could run."""
        size = math.prod(inputs.logits_shape)
        if size < self.auto_min_logits:
            return [f"small problem ({size} logits < {self.auto_min_logits}): the reference is faster"]
        return []

    def memory_bytes(self, inputs: AttentionInputs) -> int:
        """Peak extra bytes (see :mod:`qkv.backends.memory`): the output and lse, plus per
        element of one ``q_block x kv_block`` block (all heads) about 16 c bytes of block
        tensors (logits, masks, exp, corrections) and 4 W e for a wide score's intermediates;
        with grad dq, dk, dv in the compute dtype (and dbias) and 8 c more per block element."""
        s = memory.sizes(inputs)
        c, e = s["c"], s["e"]
        q_block, kv_block = self.block_sizes(inputs)
        block = s["n"] * min(q_block, s["tq"]) * min(kv_block, s["tk"])
        width = memory.score_width(inputs)
        total = s["n"] * s["tq"] * (s["dv"] * e + c) + block * 16 * c + memory.pattern_tables_bytes(inputs)
        if width > 1:
            total += 4 * block * width * e
        if memory.needs_grad(inputs):  # dq, dk, dv, and the backward's own block tensors (p, dp, ds...)
            total += s["qkv"] * c + block * 8 * c
            if inputs.bias is not None and inputs.bias.requires_grad:
                total += inputs.bias.numel() * c
        return total

    def run(self, inputs: AttentionInputs) -> AttentionOutput:
        out, lse = chunked_attention(inputs, *self.block_sizes(inputs))
        return AttentionOutput(out=out, weights=None, lse=lse, backend=self.name)


def chunked_attention(inputs: AttentionInputs, q_block: int, kv_block: int) -> tuple[Tensor, Tensor]:
    """``(out, lse)`` of :class:`ChunkedBackend` with explicit block sizes."""
    _, params, make = score_parameters(inputs)
    return _ChunkedAttention.apply(
        inputs, make, q_block, kv_block, inputs.query, inputs.key, inputs.value, inputs.bias, *params
    )
