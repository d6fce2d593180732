"""The ``ring`` backend: exact attention over a sequence sharded across the ranks of a
``torch.distributed`` group (context parallelism), in the active
:mod:`qkv.backends.sequence_parallel` context.

Each rank holds ``n = T / world`` positions of the query, key and value (``(..., H, n, D)``);
masks, patterns and biases are in global coordinates. The keys may be another sequence than
the queries (cross-attention: a decoder's queries over an encoder's memory), of another length
``Tk``, sharded in the same layout (``m = Tk / world`` keys per rank): the queries stay, the
memory's blocks go round. The K/V blocks go round the ring by
point-to-point messages (``batch_isend_irecv``): at step ``i = 1 .. world - 1`` rank ``r``
sends its own block to rank ``r + i`` and receives the block of rank ``r - i`` (mod world),
each block crossing one link once, in pieces that travel while the piece before them is used
(below). A rank's partial results over the blocks
it sees merge exactly by the online softmax (:mod:`qkv.backends.online_softmax`): the running
max and log-sum-exp, the same arithmetic as the chunked backend. A pair of ranks whose
positions a pattern never lets meet exchanges nothing (a sliding window talks only to its
neighbours): every rank computes the same need table from the pattern's block layout.

Backward (FlashAttention-2 from the saved ``lse``): the K/V blocks go round again; rank ``r``
computes ``dQ`` of its queries and the partial ``dK``, ``dV`` of block ``r - i``, and sends
that partial back to its owner, which sums what it receives in step order (deterministic).

Streaming: a block never travels, nor is held, whole. It goes in pieces of ``kv_block`` keys
(the tiles' key side, :meth:`RingBackend.tiles`), and the pieces of all steps form one stream:
the messages of the next piece are posted before the current one is used, so a rank holds one
received piece in use and one in flight (and the copies it is sending of its own). A received
piece is folded into every query tile, then dropped. In the backward the partial ``dK``,
``dV`` of a piece is complete once its query tiles are done (keys outer): it goes home at once,
and its owner adds it in place one piece later (the wait for it lags one piece, so no rank
waits for a peer still computing). Memory per rank: the outputs (``out``, which the running
rows accumulate in, ``dQ``, its own ``dK``, ``dV``), the row statistics, a few pieces and one
tile of logits: beyond ``1 / world`` of one process, nothing that grows with the sequence but
the pieces and tiles, which shrink with the shard. A block (keys and values, or their
gradients) counts as one receive however many pieces carry it: dense attention costs
``world - 1`` receives per rank forward and ``2 (world - 1)`` backward. Every rank must take
part in every call (and in its backward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .._types import AttentionOutput
from . import memory
from .base import AttentionInputs, Capabilities, not_supported_reasons, zero_unreachable_keys
from .online_softmax import OnlineSoftmax, block_logits, compute_dtype
from .sequence_parallel import SequenceParallel, active, positions

__all__ = ["RingBackend", "RingCommunicationError"]

#: Message tags: a stream's base, plus two per piece (its keys and values, or dK and dV).
_FORWARD_TAG, _BACKWARD_KV_TAG, _BACKWARD_GRAD_TAG = 1 << 24, 2 << 24, 3 << 24


class RingCommunicationError(RuntimeError):
    """A ring exchange failed (a rank died, timed out, or sent something else)."""


@dataclass(frozen=True)
class _Plan:
    """One call's ring: the inputs, the context, the global lengths of the queries and of the
    keys, every rank's global query and key positions and which rank's keys each rank needs
    (``need[dst][src]``)."""

    inputs: AttentionInputs
    sp: SequenceParallel
    q_total: int
    k_total: int
    qpos: tuple[Tensor, ...]
    kpos: tuple[Tensor, ...]
    need: tuple[tuple[bool, ...], ...]
    q_block: int
    kv_block: int

    @property
    def rank(self) -> int:
        return self.sp.rank

    @property
    def world(self) -> int:
        return self.sp.world


def _chunks(layout: str, rank: int, world: int) -> list[int]:
    """The chunk indices rank ``rank`` holds (chunks of ``n`` contiguous, ``n / 2`` zigzag)."""
    return [rank] if layout == "contiguous" else [rank, 2 * world - 1 - rank]


def _need(inputs: AttentionInputs, sp: SequenceParallel, totals: tuple[int, int], pos: tuple):
    """``need[dst][src]``: whether some query of rank ``dst`` may attend some key of rank
    ``src`` (from the pattern's block layout and the tensor mask; a superset is safe).
    ``totals``: the global query and key lengths; ``pos``: every rank's query and key positions."""
    w, (q_total, k_total), (qpos, kpos) = sp.world, totals, pos
    need = [[True] * w for _ in range(w)]
    if inputs.pattern is not None and q_total and k_total:
        parts = w if sp.layout == "contiguous" else 2 * w
        layout = inputs.pattern.block_layout(q_total, k_total, q_total // parts, k_total // parts)
        any_ = layout.any.tolist()
        for d in range(w):
            for s in range(w):
                cd, cs = _chunks(sp.layout, d, w), _chunks(sp.layout, s, w)
                need[d][s] = any(any_[i][j] for i in cd for j in cs)
    if inputs.tensor_mask is not None:
        for d in range(w):
            for s in range(w):
                need[d][s] = need[d][s] and bool(_take(inputs.tensor_mask, qpos[d], kpos[s]).any())
    return tuple(tuple(row) for row in need)


def _take(t: Tensor, qpos: Tensor, kpos: Tensor) -> Tensor:
    """``t[..., qpos, kpos]`` of a global ``(..., T | 1, T | 1)`` tensor (size-1 dims stay)."""
    if t.shape[-2] != 1:
        t = t.index_select(-2, qpos)
    return t if t.shape[-1] == 1 else t.index_select(-1, kpos)


def _keep(plan: _Plan, qpos: Tensor, kpos: Tensor) -> Tensor | None:
    """The bool mask of global queries ``qpos`` x keys ``kpos`` (None: all allowed)."""
    inputs, keep = plan.inputs, None
    if inputs.pattern is not None:
        dev = qpos.device
        if inputs.pattern.depends_on_batch_head:
            b = torch.arange(inputs.query.shape[-4], device=dev).view(-1, 1, 1, 1)
            h = torch.arange(inputs.query.shape[-3], device=dev).view(1, -1, 1, 1)
        else:
            b = h = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=dev)
        fn = inputs.pattern.mask_mod(plan.q_total, plan.k_total)
        keep = fn(b, h, qpos.view(1, 1, -1, 1), kpos.view(1, 1, 1, -1))
    if inputs.tensor_mask is not None:
        t = _take(inputs.tensor_mask, qpos, kpos)
        keep = t if keep is None else keep & t
    return keep


def _bias(plan: _Plan, qpos: Tensor, kpos: Tensor) -> Tensor | None:
    return None if plan.inputs.bias is None else _take(plan.inputs.bias, qpos, kpos)


def _peer(group, rank: int) -> int:
    """The global rank of ``rank`` in ``group`` (what point-to-point ops address)."""
    return rank if group is None else dist.get_global_rank(group, rank)


class _Exchange:
    """One piece's point-to-point messages: send the tensors ``payload`` to ``dst`` and/or
    receive into the tensors ``bufs`` from ``src`` (either may be None), the ``j``-th tensor
    each way under tag ``tag + j``. The received bytes are counted in the context's stats, as
    ``receives`` receives (1 for a block's first piece, 0 for the others: a block counts once)."""

    def __init__(self, plan: _Plan, step: int, tag: int, payload, dst: int, bufs, src: int, backward: bool,
                 receives: int = 1):  # fmt: skip
        self.plan, self.step, self.src, self.backward, self.bufs = plan, step, src, backward, bufs
        group, ops = plan.sp.group, []
        for j, t in enumerate(payload or []):
            ops.append(dist.P2POp(dist.isend, t, _peer(group, dst), group, tag + j))
        for j, t in enumerate(bufs or []):
            ops.append(dist.P2POp(dist.irecv, t, _peer(group, src), group, tag + j))
        self.payload, self.receives = payload, receives  # the payload kept alive until the send completes
        self.works = self._start(ops) if ops else []

    def _start(self, ops):
        try:
            return dist.batch_isend_irecv(ops)
        except RuntimeError as e:
            raise self._error(e) from e

    def _error(self, e: Exception) -> RingCommunicationError:
        return RingCommunicationError(
            f"ring attention, rank {self.plan.rank}: the exchange of step {self.step} "
            f"({'backward' if self.backward else 'forward'}) with rank {self.src} failed: {e}"
        )

    def wait(self) -> list[Tensor] | None:
        """Wait for this piece's messages; the received tensors (or None)."""
        try:
            for work in self.works:
                work.wait()
        except RuntimeError as e:
            raise self._error(e) from e
        self.payload = None
        if self.bufs is not None:
            self.plan.sp.stats.add(self.backward, self.bufs, self.src, self.receives)
        return self.bufs


def _pieces(plan: _Plan, n: int) -> list[tuple[int, int, int]]:
    """``(step, j0, j1)``: every piece of ``kv_block`` keys of every other rank's block, in the
    order they travel (step by step, keys in order)."""
    return [(step, j0, j1) for step in range(1, plan.world) for j0, j1 in _key_ranges(plan, n)]


def _post_kv(plan: _Plan, index: int, piece, kv: list[Tensor], tag: int, backward: bool) -> _Exchange:
    """The messages of piece ``index`` ``(step, j0, j1)``: keys ``j0:j1`` of this rank's block
    to rank ``r + step`` (if it needs them; copied when the slice is not contiguous), the same
    keys of rank ``r - step``'s block in (into new piece-sized buffers)."""
    step, j0, j1 = piece
    r, w = plan.rank, plan.world
    dst, src = (r + step) % w, (r - step) % w
    payload = [t[..., j0:j1, :].contiguous() for t in kv] if plan.need[dst][r] else None
    bufs = [t.new_empty((*t.shape[:-2], j1 - j0, t.shape[-1])) for t in kv] if plan.need[r][src] else None
    return _Exchange(plan, step, tag + 2 * index, payload, dst, bufs, src, backward, int(j0 == 0))


def _kv_stream(plan: _Plan, kv: list[Tensor], tag: int, backward: bool):
    """Iterate ``(index, (step, j0, j1), src, piece)`` over the pieces of every other rank's
    block (``piece`` the received ``[k, v]`` of keys ``j0:j1`` of rank ``src``, or None when
    this rank needs none of them). The first piece's messages are posted now, each next one's
    before the current piece is handed out: one piece in use, one in flight."""
    pieces = _pieces(plan, kv[0].shape[-2])
    first = _post_kv(plan, 0, pieces[0], kv, tag, backward) if pieces else None

    def stream():
        pending = first
        for index, piece in enumerate(pieces):
            got = pending.wait()
            pending = (
                _post_kv(plan, index + 1, pieces[index + 1], kv, tag, backward)
                if index + 1 < len(pieces)
                else None
            )
            yield index, piece, (plan.rank - piece[0]) % plan.world, got
            got = None  # dropped before the next piece is waited for

    return stream()


def _send_home(plan: _Plan, index: int, piece, part: list[Tensor] | None, own: list[Tensor]):
    """Piece ``index`` ``(step, j0, j1)``'s gradients home: ``part`` (this rank's partial
    ``[dK, dV]`` of keys ``j0:j1`` of rank ``r - step``, or None) to that rank, and the partial
    of the same keys of this rank's own block from rank ``r + step`` (when it has one) into
    new piece-sized buffers. Returns what :func:`_add_home` finishes."""
    step, j0, j1 = piece
    r, w = plan.rank, plan.world
    src, dst = (r - step) % w, (r + step) % w
    shape = (*own[0].shape[:-2], j1 - j0)
    bufs = [t.new_empty((*shape, t.shape[-1])) for t in own] if plan.need[dst][r] else None
    tag = _BACKWARD_GRAD_TAG + 2 * index
    return _Exchange(plan, step, tag, part, src, bufs, dst, True, int(j0 == 0)), j0, j1


def _add_home(homing, own: list[Tensor]) -> None:
    """Wait for a piece's gradients (:func:`_send_home`) and add the received partial of this
    rank's keys to ``own``."""
    exchange, j0, j1 = homing
    got = exchange.wait()
    for acc, g in zip(own, got or []):
        acc[..., j0:j1, :] += g


def _query_tiles(plan: _Plan, n_q: int, src: int, j0: int, j1: int) -> list[tuple[int, int, Tensor | None]]:
    """``(q0, q1, keep)`` of this rank's ``q_block``s that the mask lets meet keys ``j0:j1`` of
    rank ``src`` at all, with their mask (None: all allowed); empty when none does."""
    qpos, kpos, tiles = plan.qpos[plan.rank], plan.kpos[src][j0:j1], []
    for q0 in range(0, n_q, plan.q_block):
        q1 = min(q0 + plan.q_block, n_q)
        keep = _keep(plan, qpos[q0:q1], kpos)
        if keep is None or bool(keep.all()):
            tiles.append((q0, q1, None))  # nothing to mask in this tile
        elif bool(keep.any()):
            tiles.append((q0, q1, keep))
    return tiles


def _key_ranges(plan: _Plan, n: int) -> list[tuple[int, int]]:
    """``(j0, j1)`` of the ``kv_block``s of a block of ``n`` keys: the pieces a block travels in
    (and this rank's own block is used in)."""
    return [(j0, min(j0 + plan.kv_block, n)) for j0 in range(0, n, plan.kv_block)]


def _forward_keys(plan: _Plan, rows: list, q: Tensor, k: Tensor, v: Tensor, src: int, j0: int, logits):
    """Fold keys ``j0 : j0 + len(k)`` of rank ``src`` (``k``, ``v``: those keys) into this rank's
    running softmax (one :class:`OnlineSoftmax` per block of queries, each taking the keys in
    order)."""
    qpos, kpos = plan.qpos[plan.rank], plan.kpos[src][j0 : j0 + k.shape[-2]]
    for q0, q1, keep in _query_tiles(plan, q.shape[-2], src, j0, j0 + k.shape[-2]):
        kb, vb = (k, v) if keep is None else zero_unreachable_keys(k, v, keep)
        _, s = block_logits(
            plan.inputs, plan.inputs.score_fn, q[..., q0:q1, :], kb, _bias(plan, qpos[q0:q1], kpos), keep
        )
        rows[q0 // plan.q_block].update(s, vb)
        if logits is not None:
            logits.append((q0, q1, kpos, s))


def _ring_forward(plan: _Plan, q: Tensor, k: Tensor, v: Tensor):
    """``(out, lse, weights or None)`` of this rank's queries over the whole sequence. The
    rows accumulate ``softmax @ v`` in place in ``out`` (in a compute-dtype buffer for half
    inputs); the other ranks' keys come as a stream of pieces (:func:`_kv_stream`)."""
    kv, cdt = [k.contiguous(), v.contiguous()], compute_dtype(q)
    out = q.new_zeros((*q.shape[:-1], v.shape[-1]), dtype=v.dtype)
    acc = out if out.dtype == cdt else torch.zeros_like(out, dtype=cdt)
    starts = range(0, q.shape[-2], plan.q_block)
    rows = [
        OnlineSoftmax(a.shape[:-1], cdt, q.device, acc=a)
        for a in (acc[..., q0 : q0 + plan.q_block, :] for q0 in starts)
    ]
    logits = [] if plan.inputs.need_weights else None
    stream = _kv_stream(plan, kv, _FORWARD_TAG, False)  # the first piece travels while the own block is used
    if plan.need[plan.rank][plan.rank]:
        for j0, j1 in _key_ranges(plan, k.shape[-2]):
            _forward_keys(plan, rows, q, kv[0][..., j0:j1, :], kv[1][..., j0:j1, :], plan.rank, j0, logits)
    for _, (_, j0, _), src, piece in stream:
        if piece is not None:
            _forward_keys(plan, rows, q, *piece, src, j0, logits)
        piece = None
    lse = q.new_empty(q.shape[:-1], dtype=cdt)
    for q0, r in zip(starts, rows):
        finished = r.out(v.dtype)  # divided in place: already ``out``'s rows when acc is out
        if acc is not out:
            out[..., q0 : q0 + r.m.shape[-1], :] = finished
        lse[..., q0 : q0 + r.m.shape[-1]] = r.lse()
    weights = None if logits is None else _weights(plan, q, v, lse, logits)
    return out, lse, weights


def _weights(plan: _Plan, q: Tensor, v: Tensor, lse: Tensor, logits: list) -> Tensor:
    """``(..., H, n, T)``: this rank's rows of the weights, from the kept logits and ``lse``."""
    safe = lse.masked_fill(lse == float("-inf"), float("inf")).unsqueeze(-1)
    weights = q.new_zeros((*q.shape[:-1], plan.k_total), dtype=v.dtype)
    for q0, q1, kpos, s in logits:
        weights[..., q0:q1, :].index_copy_(-1, kpos, torch.exp(s - safe[..., q0:q1, :]).to(v.dtype))
    return weights


class _Backward:
    """The backward of one rank: ``dQ`` of its queries, the partial ``dK, dV`` of each piece of
    keys it sees (sent back to the keys' owner) and the sum of the partials of its own block."""

    def __init__(self, plan: _Plan, q, out, lse, d_out) -> None:
        self.plan, self.q = plan, q
        cdt = compute_dtype(q)
        self.d_out = d_out.to(cdt)
        self.delta = (self.d_out * out.to(cdt)).sum(-1)  # rowsum(dO * O)
        self.lse_safe = lse.masked_fill(lse == float("-inf"), float("inf"))
        self.dq = torch.zeros_like(q, dtype=cdt)
        self.fast = plan.inputs.score.dot_like

    def keys(
        self, k: Tensor, v: Tensor, src: int, j0: int, grads: list[Tensor] | None = None
    ) -> list[Tensor]:
        """``[dK, dV]`` of keys ``j0 : j0 + len(k)`` of rank ``src`` (``k``, ``v``: those keys)
        from this rank's queries (``dQ`` accumulated): added to ``grads`` when given (views of
        this rank's own gradients), else in new compute-dtype tensors (what goes home)."""
        cdt, qpos = self.d_out.dtype, self.plan.qpos[self.plan.rank]
        kpos = self.plan.kpos[src][j0 : j0 + k.shape[-2]]
        if grads is None:
            grads = [torch.zeros_like(k, dtype=cdt), torch.zeros_like(v, dtype=cdt)]
        for q0, q1, keep in _query_tiles(self.plan, self.q.shape[-2], src, j0, j0 + k.shape[-2]):
            kt, vt = (k, v) if keep is None else zero_unreachable_keys(k, v, keep)
            self._block(q0, q1, grads, kt, vt, keep, _bias(self.plan, qpos[q0:q1], kpos))
        return grads

    def _block(self, q0: int, q1: int, grads: list[Tensor], kb: Tensor, vb: Tensor, keep, bias) -> None:
        """Add one tile's ``dQ`` rows and its keys' ``dK``, ``dV`` to ``grads``."""
        cdt, qb = self.d_out.dtype, self.q[..., q0:q1, :]
        d_out = self.d_out[..., q0:q1, :]
        if not self.fast:
            qb, kb = qb.detach().requires_grad_(), kb.detach().requires_grad_()
        with torch.set_grad_enabled(not self.fast):
            raw, s = block_logits(self.plan.inputs, self.plan.inputs.score_fn, qb, kb, bias, keep)
        p = torch.exp(s.detach() - self.lse_safe[..., q0:q1].unsqueeze(-1))
        grads[1] += p.transpose(-2, -1) @ d_out
        dp = d_out @ vb.to(cdt).transpose(-2, -1)
        g = p * (dp - self.delta[..., q0:q1].unsqueeze(-1)) * self.plan.inputs.scale
        if self.fast:
            self.dq[..., q0:q1, :] += g @ kb.to(cdt)
            grads[0] += g.transpose(-2, -1) @ qb.to(cdt)
        else:
            gq, gk = torch.autograd.grad(raw, [qb, kb], g.to(raw.dtype))
            self.dq[..., q0:q1, :] += gq
            grads[0] += gk


def _ring_backward(plan: _Plan, saved, d_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)`` of this rank's shards (see the module docstring). Held at once beyond
    the gradients: a received K/V piece in use and the next in flight, the partial of the
    piece in use and of the one before it (still going home) and the pieces of this rank's
    own partial coming home. The partials of a key piece are added in step order
    (deterministic)."""
    q, k, v, out, lse = saved
    bw = _Backward(plan, q, out, lse, d_out)
    kv, r = [k.contiguous(), v.contiguous()], plan.rank
    own = [torch.zeros_like(t, dtype=bw.d_out.dtype) for t in kv]
    stream = _kv_stream(plan, kv, _BACKWARD_KV_TAG, True)  # the first piece travels meanwhile
    if plan.need[r][r]:
        for j0, j1 in _key_ranges(plan, k.shape[-2]):
            bw.keys(kv[0][..., j0:j1, :], kv[1][..., j0:j1, :], r, j0, [g[..., j0:j1, :] for g in own])
    homing = None
    for index, piece, src, kv_piece in stream:
        part = None if kv_piece is None else bw.keys(*kv_piece, src, piece[1])
        kv_piece = None
        sent = _send_home(plan, index, piece, part, own)
        part = None
        if homing is not None:
            _add_home(homing, own)  # one piece late: the peer had a piece's time to send it
        homing = sent
    if homing is not None:
        _add_home(homing, own)
    return bw.dq.to(q.dtype), own[0].to(k.dtype), own[1].to(v.dtype)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan, q, k, v):
        out, lse, weights = _ring_forward(plan, q, k, v)
        ctx.plan = plan
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mark_non_differentiable(lse)
        if weights is not None:
            ctx.mark_non_differentiable(weights)
        return out, lse, weights

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, _d_lse, _d_weights):
        return (None, *_ring_backward(ctx.plan, ctx.saved_tensors, d_out))


def _check_ranks(plan: _Plan) -> None:
    """Every rank holds shards of one length, feature sizes, batch and dtype (one small
    all-gather); a clear error on every rank otherwise, before any block is sent."""
    q, v = plan.inputs.query, plan.inputs.value
    dtypes = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
    mine = torch.tensor(
        [q.shape[-2], v.shape[-2], q.shape[-1], v.shape[-1], math.prod(q.shape[:-2]), dtypes.index(q.dtype)]
    )
    every = [torch.empty_like(mine) for _ in range(plan.world)]
    try:
        dist.all_gather(every, mine, group=plan.sp.group)
    except RuntimeError as e:
        raise RingCommunicationError(
            f"ring attention, rank {plan.rank}: the shard check with the other ranks failed: {e}"
        ) from e
    what = ["shard length (positions per rank)", "key shard length (positions per rank)",
            "query feature size D", "value feature size Dv", "batch x heads", "dtype"]  # fmt: skip
    for i, name in enumerate(what):
        values = [int(t[i]) for t in every]
        if len(set(values)) > 1:
            shown = [str(dtypes[x]) for x in values] if name == "dtype" else values
            per_rank = ", ".join(f"rank {r}: {x}" for r, x in enumerate(shown))
            raise ValueError(f"query: every rank must hold the same {name}; got {per_rank}")


class RingBackend:
    """Exact attention over a sequence sharded across a process group (see the module
    docstring); runs only inside an active sequence-parallel context.

    Args:
        q_block, kv_block: the tiles of logits within one pair of ranks' blocks (queries, keys);
            the key side (as :meth:`tiles` sizes it) is also the piece a block travels in.
    """

    name = "ring"

    def __init__(self, q_block: int = 128, kv_block: int = 512) -> None:
        self.q_block, self.kv_block = q_block, kv_block

    capabilities = Capabilities(
        "ring (sequence parallel)", custom_scores=False, softmax_only=True, bias_grad=False,
        dropout=False, empty=False,
    )  # fmt: skip

    def supports(self, inputs: AttentionInputs) -> list[str]:
        sp = active()
        if sp is None:
            return ["no sequence-parallel context (use qkv.distributed.context_parallel(group))"]
        reasons = not_supported_reasons(self.capabilities, inputs)
        q_total, k_total = inputs.q_len * sp.world, inputs.kv_len * sp.world
        for name, t in (("mask", inputs.tensor_mask), ("bias", inputs.bias)):
            if t is not None and (t.shape[-2] not in (1, q_total) or t.shape[-1] not in (1, k_total)):
                reasons.append(
                    f"{name}: a tensor of shape {tuple(t.shape)}; ring takes it in global coordinates "
                    f"(..., Tq | 1, Tk | 1) with (Tq, Tk) = ({q_total}, {k_total}) "
                    "(qkv.distributed.ring_attention takes those)"
                )
        params = [t for t in inputs.score_kwargs.values() if isinstance(t, Tensor) and t.requires_grad]
        if params and torch.is_grad_enabled():
            reasons.append(
                f"score {inputs.score.name!r} with parameters that require grad: ring does not differentiate them"
            )
        if sp.layout == "zigzag" and (inputs.q_len % 2 or inputs.kv_len % 2):
            reasons.append(
                f"layout 'zigzag' needs even shard lengths, got {inputs.q_len} queries and {inputs.kv_len} keys"
            )
        return reasons

    def auto_skip(self, inputs: AttentionInputs) -> list[str]:
        return []

    def tiles(self, shard_len: int, features: int) -> tuple[int, int]:
        """``(q_block, kv_block)`` for shards of ``shard_len`` positions: the tile is sized
        to the shard, about ``shard_len x features / 16`` logits per batch x head (so its
        temporaries shrink with the shard, as everything else), near square, neither side
        below 32 nor above the configured blocks."""
        target = shard_len * features // 16
        q_block = max(1, min(self.q_block, max(32, math.isqrt(target)), shard_len))
        return q_block, max(1, min(self.kv_block, max(32, target // q_block), shard_len))

    def memory_bytes(self, inputs: AttentionInputs) -> int:
        """Peak extra bytes on this rank: the output (the rows accumulate in it; in a compute-
        dtype buffer as well for half inputs) and the row statistics; with other ranks, four
        K/V pieces (``kv_block`` keys each: the one in use, the next in flight, and the copies
        of this rank's own being sent); the logits of one tile (:meth:`tiles`; 16 c per
        element, as chunked); the weights (and their kept logits) when asked. With grad: dq
        and the own dK/dV in the compute dtype and, with other ranks, four pieces of partials
        in the compute dtype (the one just made, the one before it still going home, and the
        two of this rank's own coming home); 8 c per tile element more."""
        s = memory.sizes(inputs)
        c, e = s["c"], s["e"]
        world = sp.world if (sp := active()) is not None else 1
        kv = s["n"] * s["tk"] * (s["d"] + s["dv"])
        q_block, kv_block = self.tiles(s["tq"], max(s["d"], s["dv"]))
        piece = (world > 1) * s["n"] * min(kv_block, s["tk"]) * (s["d"] + s["dv"])
        tile = s["n"] * q_block * kv_block
        rows = s["n"] * s["tq"]
        total = rows * s["dv"] * (e + c * (c != e)) + 3 * rows * c + 4 * piece * e + tile * 16 * c
        if inputs.need_weights:
            total += s["n"] * s["tq"] * s["tk"] * world * (e + c)
        if memory.needs_grad(inputs):
            total += rows * s["d"] * c + kv * c + 4 * piece * c + tile * 8 * c
        return total

    def run(self, inputs: AttentionInputs) -> AttentionOutput:
        sp = active()
        dev, ranks = inputs.query.device, range(sp.world)
        qpos = tuple(positions(sp.layout, r, sp.world, inputs.q_len, dev) for r in ranks)
        kpos = tuple(positions(sp.layout, r, sp.world, inputs.kv_len, dev) for r in ranks)
        totals = (inputs.q_len * sp.world, inputs.kv_len * sp.world)
        q_block, kv_block = self.tiles(inputs.q_len, max(inputs.query.shape[-1], inputs.value.shape[-1]))
        need = _need(inputs, sp, totals, (qpos, kpos))
        plan = _Plan(inputs, sp, *totals, qpos, kpos, need, q_block, kv_block)
        _check_ranks(plan)
        out, lse, weights = _RingAttention.apply(plan, inputs.query, inputs.key, inputs.value)
        return AttentionOutput(out=out, weights=weights, lse=lse, backend=self.name)
