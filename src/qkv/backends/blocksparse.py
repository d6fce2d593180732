"""The ``blocksparse`` backend: compute only the key blocks a sparse pattern touches.

Equal to the reference backend within tolerance, for ``dot``/``scaled_dot`` scores with a
:class:`qkv.masks.Mask` pattern (sliding window, Longformer, BigBird, ...), forward and backward.
Memory is ``O(T x window)``: no ``Tq x Tk`` tensor is ever built. Shapes::

    query (B, H, Tq, D), key (B, H, Tk, D), value (B, H, Tk, Dv)
    -> out (B, H, Tq, Dv), lse (B, H, Tq)

How. The pattern's block layout says which ``q_block x kv_block`` tiles may hold an allowed
pair. They are split into pieces, each one call of PyTorch's fused CPU attention kernel:

* the **band**: the run of key blocks that slides with the query block (a sliding window's
  diagonal). Every query block's span is an overlapping strided *view* of the keys: no copy.
* the **extras**: the other tiles of each query block (global columns, random blocks, whole
  rows of global tokens), gathered per query block and grouped by count; a group whose rows
  have a few tiles fewer joins a larger one, padded with a masked zero block, while the padding
  stays under :data:`PAD_SHARE` of the group's tiles (fewer, larger kernel calls, and rows that
  form one run of consecutive query blocks are views, not gathers).

A row's pieces are merged exactly by their log-sum-exps (``out = sum_p exp(lse_p - lse) out_p``,
``lse = logsumexp_p lse_p``), the same merge FlashAttention uses across key blocks, straight into
the output ``(B, H, Tq, Dv)`` and log-sum-exp: a piece runs a part of its query blocks at a time
(one kernel output under ``_BlockSparseAttention.forward_bytes``) and its rows are written or
merged in place, so the forward holds the output, the log-sum-exp and a workspace that does not
grow with ``T`` (keys are views or gathers of the blocks a part needs, never a padded copy of
``K``; an additive mask all rows share is built for one row and broadcast). The backward
runs the fused kernel's backward on each piece with the merged output and log-sum-exp (as ring
attention does), and adds the key gradients back through the views and gathers. Any split of
the allowed pairs into pieces gives the same gradients from the merged output, so the backward
may run another plan of the pattern: one with taller query blocks
(:meth:`BlockSparseBackend.backward_plan`), fewer and larger kernel calls, which the fused
backward kernel runs faster per pair.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .._types import AttentionOutput
from . import memory
from .base import AttentionInputs, Capabilities, not_supported_reasons, plain_causal
from .online_softmax import compute_dtype

__all__ = ["BlockSparseBackend"]

_ops = torch.ops.aten
_FLASH = getattr(_ops, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_BACKWARD = getattr(_ops, "_scaled_dot_product_flash_attention_for_cpu_backward", None)

GATHER_BYTES = 32 << 20  # the keys one gather collects (rows x blocks) stay under this
PAD_SHARE = 0.125  # a group of gathered tiles joins a larger one while its padding stays under this share
BACKWARD_Q_SCALE = 2  # the backward's query blocks are this many times taller ...
BACKWARD_MAX_WORK = 1.4  # ... when that computes at most this many times the pairs
RUN_ROWS = 8  # a piece is cut at the ends of its runs of consecutive query blocks when they average this many


class BlockSparseBackend:
    """Block-sparse attention for patterns (see the module docstring).

    Args:
        q_block, kv_block: tile sizes; ``q_block`` must be a multiple of ``kv_block`` for the
            band (else everything is gathered). 64 suits the fused CPU kernel.
        auto_max_density: ``auto`` prefers SDPA on the dense mask above this fraction of tiles.
    """

    name = "blocksparse"
    capabilities = Capabilities(
        "blocksparse", dot_only=True, custom_scores=False, softmax_only=True, bias=False, dropout=False,
        needs_pattern=True, empty=False, instead="backend='chunked'",
    )  # fmt: skip

    def __init__(self, q_block: int = 64, kv_block: int = 64, auto_max_density: float = 0.5) -> None:
        self.q_block, self.kv_block, self.auto_max_density = q_block, kv_block, auto_max_density
        self.cache_size = 8
        self._plans: OrderedDict = OrderedDict()
        self._lock = threading.Lock()  # guards _plans

    def supports(self, inputs: AttentionInputs) -> list[str]:
        reasons = not_supported_reasons(self.capabilities, inputs)
        if _FLASH is None or _FLASH_BACKWARD is None:
            reasons.append(f"torch {torch.__version__} lacks the fused CPU attention kernel with log-sum-exp")
        if inputs.query.dim() != 4:
            reasons.append(f"layout: expected 4-D (B, H, T, D) inputs, got {inputs.query.dim()}-D")
        elif inputs.query.device.type != "cpu":
            reasons.append(f"device {inputs.query.device.type}: blocksparse runs the CPU kernel (use flex)")
        return reasons

    def auto_skip(self, inputs: AttentionInputs) -> list[str]:
        if inputs.bias is None and plain_causal(inputs):
            return ["a plain causal mask: SDPA's is_causal kernel is faster"]
        if inputs.q_len < 2 * self.q_block or inputs.kv_len < 2 * self.kv_block:
            return ["short sequences: the dense kernels are faster"]
        if torch.compiler.is_compiling() and inputs.pattern.depends_on_batch_head:
            # a pattern joined with a tensor (padding) inside the traced function has no host
            # object to plan from; the dense kernels run it in the graph
            return ["a pattern holding a tensor, under torch.compile: blocksparse plans on the host"]
        n_qb, n_kb = -(-inputs.q_len // self.q_block), -(-inputs.kv_len // self.kv_block)
        density = self._tiles(inputs) / (n_qb * n_kb)
        if density > self.auto_max_density:
            return [f"dense pattern ({density:.0%} of tiles): SDPA is faster"]
        return []

    def layout(self, inputs: AttentionInputs):
        return inputs.pattern.block_layout(inputs.q_len, inputs.kv_len, self.q_block, self.kv_block)

    def _tiles(self, inputs: AttentionInputs) -> int:
        """The number of tiles the pattern's layout may touch (``any``); inside a graph being
        traced, counted on the host once per pattern and lengths (a constant of the graph)."""
        return any_tiles(self, inputs.pattern, inputs.q_len, inputs.kv_len)

    def plan(self, inputs: AttentionInputs) -> _Plan:
        """The pieces of these inputs (cached per pattern, lengths, batch and device, the
        ``cache_size`` most recent kept; safe to share between threads)."""
        b, h = inputs.query.shape[:2]
        return self.plan_for(inputs.pattern, inputs.q_len, inputs.kv_len, b, h, inputs.query.device)

    def plan_for(self, pattern, q_len: int, kv_len: int, b: int, h: int, device, q_block: int = 0) -> _Plan:
        """:meth:`plan` from the pattern, the lengths, the batch and head counts and the device
        (with query blocks of ``q_block`` rows when given, else the backend's)."""
        q_block = q_block or self.q_block
        key = (id(pattern), q_len, kv_len, b, h, q_block, self.kv_block, device)
        with self._lock:  # an OrderedDict is not safe to reorder from several threads
            hit = self._plans.get(key)
            if hit is not None and hit[0] is pattern:
                self._plans.move_to_end(key)
                return hit[1]
        layout = pattern.block_layout(q_len, kv_len, q_block, self.kv_block)
        plan = _Planner(pattern, (q_len, kv_len, b, h, device), layout, q_block, self.kv_block).plan()
        with self._lock:
            self._plans[key] = (pattern, plan)
            self._plans.move_to_end(key)
            while len(self._plans) > self.cache_size:
                self._plans.popitem(last=False)
        return plan

    def backward_plan(self, plan: _Plan, query: Tensor) -> _Plan:
        """The plan the backward runs (any plan of the pattern gives the exact gradients from
        the merged output and log-sum-exp): query blocks :data:`BACKWARD_Q_SCALE` times taller
        when that computes at most :data:`BACKWARD_MAX_WORK` times the pairs (a sliding
        window: the fused backward kernel runs tall query blocks much faster), else ``plan``."""
        q_block = BACKWARD_Q_SCALE * plan.q_block
        if plan.q_len < 2 * q_block or plan.q_block % plan.kv_block:
            return plan
        b, h = query.shape[:2]
        tall = self.plan_for(plan.pattern, plan.q_len, plan.kv_len, b, h, query.device, q_block)
        return tall if _work(tall) <= BACKWARD_MAX_WORK * _work(plan) else plan

    def memory_bytes(self, inputs: AttentionInputs) -> int:
        """Peak extra bytes (see :mod:`qkv.backends.memory`): the plan's masks, each allowed
        ``q_block x kv_block`` tile as bool and as additive float (1 + e bytes per element,
        twice for the band's padding; per batch and head when the pattern depends on them), the
        output in the compute dtype and one part's kernel output (``forward_bytes``), the
        gathered keys and values (at most :data:`GATHER_BYTES`); with grad, the backward's
        blocked copies and outputs (8 N Tq D c) and gradient buffers."""
        s = memory.sizes(inputs)
        c, e = s["c"], s["e"]
        tiles = self._tiles(inputs)
        per = s["n"] if inputs.pattern.depends_on_batch_head else 1
        width = max(s["d"], s["dv"])
        total = 2 * tiles * self.q_block * self.kv_block * (1 + e) * per
        total += s["n"] * s["tq"] * width * c + _BlockSparseAttention.forward_bytes
        total += memory.pattern_tables_bytes(inputs)
        total += min(GATHER_BYTES, 2 * tiles * self.kv_block * s["n"] * width * e)
        if memory.needs_grad(inputs):
            total += 8 * s["n"] * s["tq"] * width * c + 4 * s["qkv"] * c
        return total

    def run(self, inputs: AttentionInputs) -> AttentionOutput:
        if torch.compiler.is_compiling():  # one opaque operator, its plan found on the host
            b, h = inputs.query.shape[:2]
            token = traced_plan(self, inputs.pattern, inputs.q_len, inputs.kv_len, b, h, inputs.query.device)
            out, lse = torch.ops.qkv.blocksparse(inputs.query, inputs.key, inputs.value, token, inputs.scale)
            return AttentionOutput(out=out, weights=None, lse=lse, backend=self.name)
        out, lse = self.attend(self.plan(inputs), inputs.query, inputs.key, inputs.value, inputs.scale)
        return AttentionOutput(out=out, weights=None, lse=lse, backend=self.name)

    def attend(self, plan: _Plan, query: Tensor, key: Tensor, value: Tensor, scale: float):
        """``(out, lse)`` of ``plan`` (its pattern) over these inputs, with the NaN rule."""
        nan_keys = _nan_keys(key, value)  # (B, H, Tk) | None
        if nan_keys is not None:  # inside a block, masked entries would meet them as NaN + -inf
            key = key.masked_fill(nan_keys.unsqueeze(-1), 0.0)
            value = value.masked_fill(nan_keys.unsqueeze(-1), 0.0)
        out, lse = _BlockSparseAttention.apply(query, key, value, plan, scale, self)
        if nan_keys is not None:
            hit = _rows_attending(plan, nan_keys)  # (B, H, Tq)
            out = out.masked_fill(hit.unsqueeze(-1), float("nan"))
            lse = lse.masked_fill(hit, float("nan"))
        return out, lse


def _work(plan: _Plan) -> int:
    """The (query, key) pairs the plan's kernel calls compute, masked or not."""
    return sum(p.rows.numel() * p.keep.shape[-2] * p.keep.shape[-1] for p in plan.pieces)


def _nan_keys(key: Tensor, value: Tensor) -> Tensor | None:
    """Which keys hold a NaN in their key or value: bool ``(B, H, Tk)``, or None when none
    does. Finite sums prove there is none (a NaN anywhere makes its sum NaN) in one read and no
    temporary; otherwise the keys are checked a slab of at most :data:`GATHER_BYTES` at a time."""
    if bool(torch.isfinite(key.sum()) & torch.isfinite(value.sum())):
        return None
    flags = torch.empty(key.shape[:-1], dtype=torch.bool, device=key.device)
    row_bytes = (
        key[..., :1, :].numel() * key.element_size() + value[..., :1, :].numel() * value.element_size()
    )
    rows = max(1, GATHER_BYTES // row_bytes)
    for a in range(0, key.shape[-2], rows):
        ks, vs = key[..., a : a + rows, :], value[..., a : a + rows, :]
        torch.logical_or(
            torch.isnan(ks).any(dim=-1), torch.isnan(vs).any(dim=-1), out=flags[..., a : a + rows]
        )
    return flags if bool(flags.any()) else None


def _rows_attending(plan: _Plan, keys: Tensor) -> Tensor:
    """Which query rows the pattern lets attend any of ``keys`` (bool ``(B, H, Tk)``):
    bool ``(B, H, Tq)``. Only the marked key positions are evaluated."""
    dev = keys.device
    idx = keys.flatten(0, -2).any(dim=0).nonzero().flatten()  # key positions marked somewhere
    bsz, heads = keys.shape[0], keys.shape[1]
    if plan.per_batch:
        b, h = (
            torch.arange(bsz, device=dev).view(-1, 1, 1, 1),
            torch.arange(heads, device=dev).view(1, -1, 1, 1),
        )
    else:
        b = h = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=dev)
    fn = plan.pattern.mask_mod(plan.q_len, plan.kv_len)
    q_idx = torch.arange(plan.q_len, device=dev).view(1, 1, -1, 1)
    allowed = fn(b, h, q_idx, idx.view(1, 1, 1, -1))  # (B|1, H|1, Tq, n)
    return (allowed & keys[..., idx].unsqueeze(-2)).any(dim=-1)


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class _Piece:
    """One fused-kernel call: ``n`` query blocks against ``S`` keys each."""

    rows: Tensor  # long (n,): query-block ids
    span: slice | None  # the same ids as a slice when they are consecutive
    # long (n, C): gathered key-block ids per query block (n_kb = the zero block); (C,): blocks
    # shared by all the query blocks; None: the band
    idx: Tensor | None
    # (first block, block step) when every row's idx is one consecutive run starting at
    # first + row * step and inside the keys: the keys are then a view, not a gather
    run: tuple[int, int] | None
    # In the kernel's order; with a leading B (and H instead of 1) when the pattern depends on
    # the batch or head:
    keep: Tensor  # bool (n, 1, bq, S) | (B, n, H, bq, S)
    row_any: Tensor  # bool (n, 1, bq) | (B, n, H, bq): the row has a key in this piece
    dead: Tensor | None  # bool (n, 1, S, 1) | (B, n, H, S, 1): real keys no row may attend
    # every pair of every tile is allowed: the kernel runs with no mask (none is built)
    open: bool = False
    _additive: dict = field(default_factory=dict, compare=False)

    def part(self, a: int, b: int, per_batch: bool) -> _Piece:
        """The piece restricted to its rows ``a:b`` (views, no copies)."""
        if a == 0 and b >= self.rows.numel():
            return self
        cut = (slice(None), slice(a, b)) if per_batch else (slice(a, b),)
        if self.span is not None:
            span = slice(self.span.start + a, self.span.start + min(b, self.rows.numel()))
        else:  # rows cut at the end of a run of consecutive blocks are a span themselves
            span = _as_range(self.rows[a:b].tolist())
        part = _Piece(
            rows=self.rows[a:b],
            span=span,
            idx=self.idx if self.idx is None or self.idx.dim() == 1 else self.idx[a:b],
            run=None if self.run is None else (self.run[0] + a * self.run[1], self.run[1]),
            keep=self.keep[cut],
            row_any=self.row_any[cut],
            dead=None if self.dead is None else self.dead[cut],
            open=self.open,
        )
        part._additive.update({dt: m[cut] for dt, m in self._additive.items()})
        return part

    def additive(self, dtype: torch.dtype) -> Tensor:
        """The mask as 0 / -inf in ``dtype`` (same shape as ``keep``), built once per dtype.
        When every row holds the same mask (a sliding window's band) it is built for one row
        and broadcast over the others."""
        if dtype not in self._additive:
            keep = self.keep
            first = keep.narrow(keep.dim() - 4, 0, 1)  # the rows are dim 0, or 1 after B
            if bool((keep == first).all()):
                keep = first
            zeros = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
            self._additive[dtype] = zeros.masked_fill_(~keep, float("-inf")).expand(self.keep.shape)
        return self._additive[dtype]


@dataclass(frozen=True)
class _Plan:
    q_block: int
    kv_block: int
    n_qb: int
    n_kb: int
    step: int  # key blocks per query block (q_block // kv_block)
    lo: int  # band: query block i sees key blocks i*step+lo .. i*step+lo+width-1 (views of the keys)
    width: int  # 0: no band
    per_batch: bool
    pieces: list[_Piece]
    pattern: object = field(compare=False)  # the Mask it was planned for
    q_len: int = 0
    kv_len: int = 0


def _run(idx: Tensor | None, n_kb: int, tk: int, bk: int) -> tuple[int, int] | None:
    """(first, step) when idx (n, C) rows are consecutive blocks first + j*step + (0..C-1),
    all whole blocks inside the keys; else None."""
    if idx is None or idx.dim() != 2 or idx.numel() == 0:
        return None
    n, c = idx.shape
    first = int(idx[0, 0])
    step = int(idx[1, 0] - idx[0, 0]) if n > 1 else 0
    expected = first + step * torch.arange(n).view(-1, 1) + torch.arange(c).view(1, -1)
    if step < 0 or not torch.equal(idx.cpu(), expected) or (int(expected.max()) + 1) * bk > tk:
        return None
    return first, step


def _join_groups(groups: list[list[int]], counts: list[int]) -> list[list[int]]:
    """Groups of query blocks (ids into ``counts``, each block's number of gathered tiles),
    largest count first, a group joining the one before it while the joined group's padding
    (its rows' tiles short of its largest count, filled with the masked zero block) stays
    under :data:`PAD_SHARE` of its real tiles. Each group's rows come out sorted."""
    joined: list[list[int]] = []
    for members in sorted(groups, key=lambda g: -max(counts[i] for i in g)):
        if joined:
            merged = joined[-1] + members
            top = max(counts[i] for i in merged)
            real = sum(counts[i] for i in merged)
            if len(merged) * top - real <= PAD_SHARE * real:
                joined[-1] = merged
                continue
        joined.append(members)
    return [sorted(g) for g in joined]


def _as_range(ids: list[int]) -> slice | None:
    return slice(ids[0], ids[-1] + 1) if ids and ids == list(range(ids[0], ids[-1] + 1)) else None


class _Planner:
    """Builds a :class:`_Plan`: the band of key blocks most query blocks share (key views, no
    gather), the columns most query blocks also use (global tokens: gathered once), and the
    remaining tiles gathered per group of query blocks."""

    def __init__(self, pattern, problem: tuple, layout, bq: int, bk: int) -> None:
        self.pattern = pattern
        self.tq, self.tk, self.b, self.h, self.dev = problem  # lengths, batch, heads, device
        self.bq, self.bk = bq, bk
        self.any_ = layout.any.cpu()  # (nQB, nKB)
        self.n_qb, self.n_kb = self.any_.shape
        self.step = bq // bk if bq % bk == 0 else 0
        self.per_batch = pattern.depends_on_batch_head
        self.fn = pattern.mask_mod(self.tq, self.tk)
        self.lo, self.width, self.in_band = self._band()

    def _band(self) -> tuple[int, int, Tensor]:
        """The band: offsets (key block - query block * step) that most query blocks use, and
        which tiles lie in it (only for query blocks whose whole span lies inside the keys, so
        views need no padded copy; the few at the edges gather their tiles like the extras)."""
        any_, step, n_qb, n_kb = self.any_, self.step, self.n_qb, self.n_kb
        rows_all, cols_all = torch.arange(n_qb), torch.arange(n_kb)
        lo, width = 0, 0
        nonempty = any_.any(dim=1)
        if step and bool(nonempty.any()):
            offsets = cols_all.view(1, -1) - rows_all.view(-1, 1) * step  # (nQB, nKB)
            used = torch.zeros(n_kb + n_qb * step + 1, dtype=torch.long)
            base = n_qb * step
            used.index_add_(0, (offsets[any_] + base), torch.ones(int(any_.sum()), dtype=torch.long))
            common = torch.nonzero(used >= 0.5 * float(nonempty.sum())).flatten() - base
            if common.numel():
                lo, width = int(common.min()), int(common.max() - common.min() + 1)
        in_band = torch.zeros_like(any_)
        if width:
            off = cols_all.view(1, -1) - rows_all.view(-1, 1) * step
            in_band = (off >= lo) & (off < lo + width)
            start = (rows_all * step + lo) * self.bk
            inside = (start >= 0) & (start + width * self.bk <= self.tk)
            in_band &= inside.view(-1, 1)
        return lo, width, in_band

    def _evaluate(self, q_pos: Tensor, kv_pos: Tensor) -> tuple[Tensor, Tensor]:
        """keep (n, 1, bq, S) | (B, n, H, bq, S) and the real-key flag (n, 1, 1, S), for query
        positions (n, bq) and key positions (n, S)."""
        tq, tk, dev, b, h = self.tq, self.tk, self.dev, self.b, self.h
        q4, kv4 = q_pos.view(q_pos.shape[0], 1, -1, 1), kv_pos.view(kv_pos.shape[0], 1, 1, -1)
        real = (kv4 >= 0) & (kv4 < tk)
        valid = (q4 < tq) & real
        qc, kc = q4.clamp(0, tq - 1), kv4.clamp(0, tk - 1)
        if self.per_batch:
            bb = torch.arange(b, device=dev).view(b, 1, 1, 1, 1)
            hh = torch.arange(h, device=dev).view(1, 1, h, 1, 1)
            keep = self.fn(bb, hh, qc.unsqueeze(0), kc.unsqueeze(0)) & valid
        else:
            zero = torch.zeros((), dtype=torch.long, device=dev)
            keep = self.fn(zero, zero, qc, kc) & valid
        return keep, real

    def _piece(self, rows: list[int], idx: Tensor | None, tile_ok: Tensor | None = None):
        """idx: None (band), (n, C) per-row key blocks, or (C,) blocks shared by the rows;
        tile_ok (n, C): which of those tiles this piece owns (the others belong to another)."""
        dev, bq, bk, n_kb = self.dev, self.bq, self.bk, self.n_kb
        r = torch.tensor(rows, device=dev)
        n = len(rows)
        q_pos = (r * bq).view(-1, 1) + torch.arange(bq, device=dev).view(1, bq)  # (n, bq)
        if idx is None:
            starts = (r * self.step + self.lo) * bk
            kv_pos = starts.view(-1, 1) + torch.arange(self.width * bk, device=dev).view(1, -1)  # (n, S)
        else:
            blocks = idx.expand(n, -1)  # (n, C)
            kv_pos = (blocks * bk).view(n, -1, 1) + torch.arange(bk, device=dev).view(1, 1, bk)
            kv_pos = kv_pos.reshape(n, -1)
            kv_pos = torch.where(kv_pos >= n_kb * bk, -1, kv_pos)  # the zero block: no key
        keep, real = self._evaluate(q_pos, kv_pos)
        if tile_ok is not None:  # tiles another piece owns: masked here (but still real keys)
            owned = tile_ok.to(dev).repeat_interleave(bk, dim=1).view(n, 1, 1, -1)
            keep = keep & owned
        fields = dict(
            rows=r, span=_as_range(rows), idx=idx, run=_run(idx, n_kb, self.tk, bk), keep=keep,
            row_any=keep.any(dim=-1),
        )  # fmt: skip
        return fields, kv_pos, keep.any(dim=-2), real.squeeze(-2)  # attended (n, 1, S) | (B, n, H, S)

    def _where(self, kv_pos: Tensor) -> tuple:
        """Index of each (piece position) into the reach table: (n, 1, S), or per (b, h)."""
        pos = torch.where((kv_pos >= 0) & (kv_pos < self.tk), kv_pos, self.tk).unsqueeze(-2)  # tk: no key
        if not self.per_batch:
            return (pos,)
        bb = torch.arange(self.b, device=self.dev).view(self.b, 1, 1, 1)
        hh = torch.arange(self.h, device=self.dev).view(1, 1, self.h, 1)
        return bb, hh, pos.unsqueeze(0)  # broadcast to (B, n, H, S)

    def _finish(self, raw: list) -> list[_Piece]:
        """Mark the dead keys of each piece: real keys that no query of the whole pattern may
        attend (NaN placed there must not leak through 0 * NaN). Keys attended elsewhere hold
        real values and need no zeroing (and no copy)."""
        shape = (self.b, self.h, self.tk + 1) if self.per_batch else (self.tk + 1,)
        reach = torch.zeros(shape, dtype=torch.bool, device=self.dev)
        for _, kv_pos, attended, _ in raw:
            idx = torch.broadcast_tensors(*self._where(kv_pos), attended)[:-1]
            reach[tuple(i[attended.expand_as(i)] for i in idx)] = True
        pieces = []
        for fields, kv_pos, attended, real in raw:
            unreachable = ~reach[self._where(kv_pos)]  # (n, 1, S) | (B, n, H, S)
            dead = (~attended & real & unreachable).unsqueeze(-1)  # (n, 1, S, 1) | (B, n, H, S, 1)
            open_ = bool(fields["keep"].all())  # then no key is dead either
            pieces.append(_Piece(**fields, dead=dead if bool(dead.any()) else None, open=open_))
        return pieces

    def _extra_pieces(self, extras: Tensor) -> list:
        """The tiles outside the band: shared columns (global tokens: key blocks that are extras
        of most query blocks, gathered once and broadcast), then per-row gathers grouped by how
        many tiles a row has."""
        pieces = []
        n_rows = int(extras.any(dim=1).sum())
        shared = torch.nonzero(extras.sum(dim=0) >= max(2, 0.5 * n_rows)).flatten()
        if shared.numel():
            owners = torch.nonzero(extras[:, shared].any(dim=1)).flatten().tolist()
            pieces.append(self._piece(owners, shared.to(self.dev), tile_ok=extras[owners][:, shared]))
            extras = extras.clone()
            extras[:, shared] = False
        counts = extras.sum(dim=1)
        distinct = len(set(counts.tolist()) - {0})
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(counts.tolist()):
            if c:
                groups.setdefault(c if distinct <= 16 else (c - 1).bit_length(), []).append(i)
        # groups whose tiles are consecutive key blocks stay apart: their keys are views
        runs = [g for g in groups.values() if _run(self._gather_idx(g, extras), self.n_kb, self.tk, self.bk)]
        others = [g for g in groups.values() if g not in runs]
        cap = max(1, GATHER_BYTES // (self.b * self.bq * self.bk * 4))  # bound one gather's rows x blocks
        for members in runs + _join_groups(others, counts.tolist()):
            per_piece = max(1, cap // int(counts[members].max()))
            for start in range(0, len(members), per_piece):
                rows = members[start : start + per_piece]
                pieces.append(self._piece(rows, self._gather_idx(rows, extras).to(self.dev)))
        return pieces

    def _gather_idx(self, rows: list[int], extras: Tensor) -> Tensor:
        """The key blocks ``(n, C)`` of query blocks ``rows`` in ``extras``, C the largest
        count among them, the shorter rows padded with the zero block (``nKB``)."""
        cols = [torch.nonzero(extras[i]).flatten() for i in rows]
        idx = torch.full((len(rows), max(c.numel() for c in cols)), self.n_kb, dtype=torch.long)
        for j, c in enumerate(cols):
            idx[j, : c.numel()] = c
        return idx

    def plan(self) -> _Plan:
        pieces = []
        if self.width:
            band_rows = torch.nonzero((self.any_ & self.in_band).any(dim=1)).flatten().tolist()
            if band_rows:  # one consecutive run: the views need no gather
                pieces.append(self._piece(list(range(band_rows[0], band_rows[-1] + 1)), None))
        pieces += self._extra_pieces(self.any_ & ~self.in_band)
        width = self.width if any(fields["idx"] is None for fields, *_ in pieces) else 0
        return _Plan(
            self.bq, self.bk, self.n_qb, self.n_kb, self.step, self.lo, width, self.per_batch,
            self._finish(pieces), self.pattern, self.tq, self.tk,
        )  # fmt: skip


# ----------------------------------------------------------------------------- the kernel calls


def _blocks(t: Tensor, block: int, n_blocks: int) -> Tensor:
    """(H, T, D) -> (H, n_blocks, block, D), zero-padded."""
    h, n, d = t.shape
    if n_blocks * block != n:
        t = F.pad(t, (0, 0, 0, n_blocks * block - n))
    return t.view(h, n_blocks, block, d)


class _KeyRows:
    """A sample's keys ``(H, Tk, D)`` as rows of ``bk`` keys, ``(H, nKB + 1, bk * D)`` (the last
    row the zero block of the padding slots), read by block index without copying the keys: the
    whole blocks are a view, the ragged last block (zero-padded) and the zero block live in a
    small ``(H, 1 | 2, bk * D)`` tensor. Gathers land in one workspace, reused by the next
    gather (fresh large buffers cost page faults on every call): a gather's result is valid
    until the next one."""

    def __init__(self, t: Tensor, bk: int, n_kb: int) -> None:
        h, tk, d = t.shape
        self.full = tk // bk  # whole blocks
        self.shape = (h, n_kb + 1, bk * d)
        self.whole = t[:, : self.full * bk].reshape(h, self.full, bk * d)  # a view of contiguous keys
        tail = tk - self.full * bk
        self.extra = t.new_zeros((h, 2 if tail else 1, bk * d))  # [ragged block,] zero block
        if tail:
            self.extra[:, 0, : tail * d] = t[:, self.full * bk :].reshape(h, tail * d)
        self._work = t.new_empty(0)

    def _workspace(self, m: int) -> Tensor:
        """``(H, m, bk * D)`` of the workspace, grown when a gather needs more."""
        h, _, row = self.shape
        if self._work.numel() < h * m * row:
            self._work = self.whole.new_empty(h * m * row)
        return self._work[: h * m * row].view(h, m, row)

    def select(self, idx: Tensor, *, keep: bool = False) -> Tensor:
        """Rows ``idx`` (m,), block ids in ``0 .. nKB`` (nKB: the zero block): ``(H, m, bk * D)``,
        in the workspace (valid until the next call), or with ``keep`` in a tensor of its own."""
        got = (
            self.whole.new_empty((self.shape[0], idx.numel(), self.shape[2]))
            if keep
            else self._workspace(idx.numel())
        )
        if self.full == 0:
            return torch.index_select(self.extra, 1, idx, out=got)
        safe = idx.clamp(max=self.full - 1)
        if self.whole.is_contiguous():
            torch.index_select(self.whole, 1, safe, out=got)
        else:  # index_select would first copy keys that are not contiguous (a ragged Tk)
            got.copy_(self.whole[:, safe])
        over = idx >= self.full
        if bool(over.any()):  # the zero block filled in place; the ragged block copied
            zero = idx == self.shape[1] - 1
            got.index_fill_(1, torch.nonzero(zero).flatten(), 0.0)
            if self.extra.shape[1] == 2:  # a ragged last block
                got[:, over & ~zero] = self.extra[:, :1]
        return got


class _Sample:
    """The views and gathers of one batch sample ``(H, T, D)`` for the plan's pieces."""

    def __init__(self, plan: _Plan, k: Tensor, v: Tensor) -> None:
        self.plan = plan
        self.k, self.v = k, v  # (H, Tk, D): the band's spans are views of these
        self.gathered = any(p.idx is not None for p in plan.pieces)
        self._shared: dict[int, tuple[Tensor, Tensor]] = {}  # shared blocks by their index tensor
        if self.gathered:
            self.k_rows = _KeyRows(k, plan.kv_block, plan.n_kb)
            self.v_rows = _KeyRows(v, plan.kv_block, plan.n_kb)

    def keys(self, p: _Piece, b: int) -> tuple[Tensor, Tensor]:
        """(n, H, S, D) keys and values of piece ``p`` (zeros where no row may attend)."""
        plan, bk = self.plan, self.plan.kv_block
        if p.idx is None:
            first = int(p.rows[0])
            offset = (first * plan.step + plan.lo) * bk
            ks = _spans(self.k, offset, p.rows.numel(), plan.q_block, plan.width * bk)
            vs = _spans(self.v, offset, p.rows.numel(), plan.q_block, plan.width * bk)
            if p.dead is not None:  # out of place: the views overlap
                dead = p.dead[b] if plan.per_batch else p.dead
                ks, vs = ks.masked_fill(dead, 0), vs.masked_fill(dead, 0)
            return ks, vs
        h = self.k.shape[0]
        n = p.rows.numel()
        if p.idx.dim() == 1:  # shared blocks: gathered once a sample, broadcast over the query blocks
            c = p.idx.numel()
            if p.idx.data_ptr() not in self._shared:  # the parts of a piece share its idx
                self._shared[p.idx.data_ptr()] = (
                    self.k_rows.select(p.idx, keep=True).view(h, c * bk, -1),
                    self.v_rows.select(p.idx, keep=True).view(h, c * bk, -1),
                )
            ks, vs = (t.expand(n, h, c * bk, -1) for t in self._shared[p.idx.data_ptr()])
            if p.dead is not None:  # out of place: the rows share one copy
                dead = p.dead[b] if plan.per_batch else p.dead
                ks, vs = ks.masked_fill(dead, 0), vs.masked_fill(dead, 0)
            return ks, vs
        c = p.idx.shape[1]
        if p.run is not None:  # consecutive blocks: overlapping views, no gather
            first, step = p.run
            ks = _spans(self.k, first * bk, n, step * bk, c * bk)
            vs = _spans(self.v, first * bk, n, step * bk, c * bk)
            if p.dead is not None:
                dead = p.dead[b] if plan.per_batch else p.dead
                ks, vs = ks.masked_fill(dead, 0), vs.masked_fill(dead, 0)
            return ks, vs
        flat = p.idx.flatten()
        ks = self.k_rows.select(flat).view(h, n, c * bk, -1).transpose(0, 1)
        vs = self.v_rows.select(flat).view(h, n, c * bk, -1).transpose(0, 1)
        if p.dead is not None:  # in place: fresh gathers
            dead = p.dead[b] if plan.per_batch else p.dead
            ks.masked_fill_(dead, 0)
            vs.masked_fill_(dead, 0)
        return ks, vs


class _RowBlocks:
    """A sample's rows ``(H, T, X)`` seen as blocks ``(nB, H, block, X)`` without copying them:
    the whole blocks are a view; a ragged last block is read zero-padded and written back cut.
    The forward reads its queries and merges into its output and log-sum-exp through these."""

    def __init__(self, t: Tensor, block: int) -> None:
        self.t, self.block = t, block
        self.full = t.shape[1] // block  # whole blocks
        self.tail = t.shape[1] - self.full * block  # rows of the ragged last block
        self.whole = t[:, : self.full * block].unflatten(1, (self.full, block)).transpose(0, 1)

    def _tail_block(self) -> Tensor:
        """The ragged last block, zero-padded: (1, H, block, X)."""
        h, _, x = self.t.shape
        blk = self.t.new_zeros((1, h, self.block, x))
        blk[0, :, : self.tail] = self.t[:, self.full * self.block :]
        return blk

    def read(self, p: _Piece) -> Tensor:
        """The blocks of piece ``p``'s rows: (n, H, block, X); a view when they are whole and
        consecutive."""
        if p.span is not None and p.span.stop <= self.full:
            return self.whole[p.span]
        if p.span is not None:  # consecutive, ending with the ragged block
            return torch.cat([self.whole[p.span.start : self.full], self._tail_block()])
        if self.full == 0:  # the only block is the ragged one
            return self._tail_block().expand(p.rows.numel(), -1, -1, -1).clone()
        got = self.whole.index_select(0, p.rows.clamp(max=self.full - 1))
        last = p.rows == self.full
        if self.tail and bool(last.any()):
            got[last] = self._tail_block()
        return got

    def write(self, p: _Piece, src: Tensor) -> None:
        """Write ``src`` (n, H, block, X) as the blocks of piece ``p``'s rows (a view returned by
        :meth:`read` and updated in place is already there)."""
        if p.span is not None:
            a, c = p.span.start, min(p.span.stop, self.full)
            dst = self.whole[a:c]
            if c > a and not (dst.data_ptr() == src.data_ptr() and dst.stride() == src.stride()):
                dst.copy_(src[: c - a])
            if p.span.stop > self.full:
                self.t[:, self.full * self.block :] = src[-1, :, : self.tail]
            return
        whole = p.rows < self.full
        if bool(whole.all()):
            self.whole.index_copy_(0, p.rows, src)
            return
        self.whole.index_copy_(0, p.rows[whole], src[whole])
        if self.tail:
            self.t[:, self.full * self.block :] = src[~whole][0, :, : self.tail]


def _spans(t: Tensor, offset: int, n: int, stride_rows: int, span: int) -> Tensor:
    """Overlapping windows of ``t`` (H, T', D): (n, H, span, D), window i starting at row
    ``offset + i * stride_rows``. A view: nothing is copied."""
    h, _, d = t.shape
    s_h, s_t, s_d = t.stride()
    return t.as_strided(
        (n, h, span, d), (stride_rows * s_t, s_h, s_t, s_d), t.storage_offset() + offset * s_t
    )


def _flash(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """The fused kernel's (out, lse); it needs one head size, so the smaller side is
    zero-padded (zeros change neither the scores nor the output)."""
    d, dv = q.shape[-1], v.shape[-1]
    if d < dv:
        q, k = F.pad(q, (0, dv - d)), F.pad(k, (0, dv - d))
    elif dv < d:
        v = F.pad(v, (0, d - dv))
    out, lse = _FLASH(q, k, v, 0.0, False, attn_mask=mask, scale=scale)
    return out[..., :dv], lse


def _flash_backward(do, q, k, v, out, lse, mask, scale) -> tuple[Tensor, Tensor, Tensor]:
    """The fused kernel's backward for one piece, given the *merged* output and lse."""
    d, dv = q.shape[-1], v.shape[-1]
    if d < dv:
        q, k = F.pad(q, (0, dv - d)), F.pad(k, (0, dv - d))
    elif dv < d:
        v, do, out = (F.pad(t, (0, d - dv)) for t in (v, do, out))
    gq, gk, gv = _FLASH_BACKWARD(do, q, k, v, out, lse, 0.0, False, attn_mask=mask, scale=scale)
    return gq[..., :d], gk[..., :d], gv[..., :dv]


def _rows(t: Tensor, p: _Piece) -> Tensor:
    """Rows of the piece from a (nQB, ...) tensor."""
    return t[p.span] if p.span is not None else t.index_select(0, p.rows)


def _mask(p: _Piece, dtype: torch.dtype, b: int, per_batch: bool) -> Tensor | None:
    """The kernel's additive mask of piece ``p`` (sample ``b``); None when the piece is open."""
    if p.open:
        return None
    m = p.additive(dtype)
    return m[b] if per_batch else m


def _parts(plan: _Plan, rows, dtype: torch.dtype) -> list[tuple[bool, _Piece]]:
    """The plan's pieces cut into parts of at most ``rows(piece)`` query blocks, each flagged
    when it belongs to the first piece (whose rows are written, not merged). The parts' masks
    are views of their piece's, built once per ``dtype`` and kept in the plan."""
    for whole in plan.pieces:
        if not whole.open:
            whole.additive(dtype)
    return [
        (i == 0, whole.part(a, c, plan.per_batch))
        for i, whole in enumerate(plan.pieces)
        for a, c in _cuts(whole, max(1, rows(whole)))
    ]


def _cuts(p: _Piece, n: int) -> list[tuple[int, int]]:
    """Row ranges ``(a, c)`` of piece ``p``, at most ``n`` rows each. A piece whose query blocks
    are a few runs of consecutive blocks (on average at least :data:`RUN_ROWS`) is also cut
    where a run ends, so that each part's rows are a span: its queries, output and log-sum-exp
    are then views, read and merged in place, not gathered and copied back."""
    count = p.rows.numel()
    bounds = [0, count]
    if p.span is None and count > 1:
        ids = p.rows.cpu()
        ends = (torch.nonzero(ids[1:] != ids[:-1] + 1).flatten() + 1).tolist()
        if (len(ends) + 1) * RUN_ROWS <= count:
            bounds = [0, *ends, count]
    return [(a, min(a + n, end)) for start, end in itertools.pairwise(bounds) for a in range(start, end, n)]


def _forward_rows(plan: _Plan, h: int, width: int, itemsize: int):
    """Query blocks per forward kernel call: the part's outputs stay under
    ``_BlockSparseAttention.forward_bytes`` and, where its keys and values are gathered (not
    views), those under :data:`GATHER_BYTES`."""
    out_row = h * plan.q_block * width * itemsize
    key_block = 2 * h * plan.kv_block * width * itemsize

    def rows(p: _Piece) -> int:
        n = _BlockSparseAttention.forward_bytes // out_row
        if p.idx is not None and p.idx.dim() == 2 and p.run is None:
            n = min(n, GATHER_BYTES // (key_block * p.idx.shape[1]))
        return n

    return rows


def _clear_unwritten(out: Tensor, lse: Tensor, plan: _Plan) -> None:
    """Set the rows the first piece does not write to no keys yet: output 0, log-sum-exp
    -inf (the first piece writes its rows whole; the others merge into what is there)."""
    written = torch.zeros(plan.n_qb + 1, dtype=torch.bool)
    if plan.pieces:  # a pattern allowing nothing has none
        written[plan.pieces[0].rows.cpu()] = True
    edges = torch.nonzero(written[1:] != written[:-1]).flatten().add(1).tolist()
    starts = ([0] if not bool(written[0]) else []) + [e for e in edges if not bool(written[e])]
    for a in starts:
        c = next((e for e in edges if e > a), plan.n_qb)
        out[:, :, a * plan.q_block : c * plan.q_block] = 0.0
        lse[:, :, a * plan.q_block : c * plan.q_block] = float("-inf")


class _BlockSparseAttention(torch.autograd.Function):
    backward_rows = 16  # query blocks per backward kernel call, at most
    backward_bytes = 8 << 20  # one backward kernel call's key and value gradients stay under this
    forward_bytes = 8 << 20  # one forward kernel call's output stays under this

    @staticmethod
    def forward(ctx, q, k, v, plan: _Plan, scale: float, backend: BlockSparseBackend):
        bsz, h, tq, _ = q.shape
        cdt = compute_dtype(q)
        # The pieces merge straight into the output's layout; the kernel's outputs are one
        # part's rows at a time.
        out = q.new_empty((bsz, h, tq, v.shape[-1]), dtype=cdt)  # (B, H, Tq, Dv)
        lse = q.new_empty((bsz, h, tq), dtype=cdt)  # (B, H, Tq)
        _clear_unwritten(out, lse, plan)
        parts = _parts(plan, _forward_rows(plan, h, max(q.shape[-1], v.shape[-1]), q.element_size()), q.dtype)
        for b in range(bsz):
            sample = _Sample(plan, k[b], v[b])
            qb = _RowBlocks(q[b], plan.q_block)  # (nQB, H, bq, D) blocks
            ob, lb = _RowBlocks(out[b], plan.q_block), _RowBlocks(lse[b].unsqueeze(-1), plan.q_block)
            for first, p in parts:
                ks, vs = sample.keys(p, b)
                o, l_p = _flash(qb.read(p), ks, vs, _mask(p, q.dtype, b, plan.per_batch), scale)
                l_p = l_p.to(cdt)
                if not p.open:  # a row with no key in the piece: the kernel says 0 there
                    row_any = p.row_any[b] if plan.per_batch else p.row_any  # (n, 1|H, bq)
                    l_p = l_p.masked_fill(~row_any, float("-inf"))
                _merge(ob, lb, p, o.to(cdt), l_p.unsqueeze(-1), first=first)
        out = out.to(v.dtype)
        ctx.plan, ctx.scale, ctx.backend = plan, scale, backend
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, _d_lse):
        q, k, v, out, lse = ctx.saved_tensors
        plan = ctx.backend.backward_plan(ctx.plan, q)
        return (*_backward(plan, ctx.scale, q, k, v, out, lse, d_out), None, None, None)


def _backward(plan: _Plan, scale: float, q, k, v, out, lse, d_out) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)`` of :class:`_BlockSparseAttention`'s forward. The gradients accumulate
    in their own memory when the lengths are whole blocks and the compute dtype is theirs (no
    second copy); one part's kernel gradients stay under ``_BlockSparseAttention.backward_bytes``."""
    bq = plan.q_block
    bsz, h, tq, d = q.shape
    cdt = compute_dtype(q)
    dq = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.zeros(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.zeros(v.shape, dtype=v.dtype, device=v.device)
    d_out = d_out.to(q.dtype)
    parts = [p for _, p in _parts(plan, _backward_rows(h, max(d, v.shape[-1]), q.element_size()), q.dtype)]
    for b in range(bsz):
        sample = _Sample(plan, k[b], v[b])
        q5, do5, out5 = (
            _blocks(t[b], bq, plan.n_qb).transpose(0, 1) for t in (q, d_out, out)
        )  # (nQB, H, bq, D)
        lse_b = lse[b].masked_fill(lse[b] == float("-inf"), float("inf"))  # exp(s - lse) = 0
        lse5 = _blocks(lse_b.unsqueeze(-1), bq, plan.n_qb).squeeze(-1).transpose(0, 1)  # (nQB, H, bq)
        direct = tq == plan.n_qb * bq and dq.dtype == cdt
        dq5 = dq[b].view(h, plan.n_qb, bq, d).transpose(0, 1) if direct else q.new_zeros(q5.shape, dtype=cdt)
        dkv = _KeyGradients(plan, dk[b], dv[b], cdt)
        for p in parts:
            ks, vs = sample.keys(p, b)
            gq, gk, gv = _flash_backward(
                _rows(do5, p).contiguous(), _rows(q5, p), ks, vs, _rows(out5, p).contiguous(),
                _rows(lse5, p).contiguous(), _mask(p, q.dtype, b, plan.per_batch), scale,
            )  # fmt: skip
            if p.span is not None:
                dq5[p.span].add_(gq.to(cdt))
            else:
                dq5.index_add_(0, p.rows, gq.to(cdt))
            dkv.add(p, gk, gv)
        if not direct:
            dq[b] = dq5.transpose(0, 1).reshape(h, plan.n_qb * bq, d)[:, :tq]
        dkv.finish()
    return dq, dk, dv


def _backward_rows(h: int, width: int, itemsize: int):
    """Query blocks per backward kernel call: at most ``_BlockSparseAttention.backward_rows``,
    and the part's key and value gradients ``2 (n, H, S, D)`` under ``backward_bytes``."""

    def rows(p: _Piece) -> int:
        per_row = 2 * h * p.keep.shape[-1] * width * itemsize
        return min(_BlockSparseAttention.backward_rows, _BlockSparseAttention.backward_bytes // per_row)

    return rows


class _KeyGradients:
    """The key and value gradients of one batch sample, added back the way
    :meth:`_Sample.keys` took the keys, into one buffer per tensor seen as blocks of ``bk``
    keys: the band's views by block, the gathers by key-block row ``(H, nKB, bk * D)``. The
    zero block of the padding slots is sent to block 0: its probabilities are 0, so it adds
    exact zeros. When the keys are whole blocks and ``dtype`` is theirs, the buffers are
    ``dk`` and ``dv`` themselves; else zero-padded ``dtype`` buffers, copied in by :meth:`finish`."""

    def __init__(self, plan: _Plan, dk: Tensor, dv: Tensor, dtype: torch.dtype) -> None:
        self.plan, self.dk, self.dv = plan, dk, dv  # (H, Tk, D), (H, Tk, Dv): the results
        padded = plan.n_kb * plan.kv_block  # the keys zero-padded to whole blocks
        self.direct = padded == dk.shape[1] and dk.dtype == dtype and dv.dtype == dtype
        if self.direct:
            self.gk, self.gv = dk, dv
        else:
            self.gk = dk.new_zeros((dk.shape[0], padded, dk.shape[2]), dtype=dtype)
            self.gv = dv.new_zeros((dv.shape[0], padded, dv.shape[2]), dtype=dtype)

    def add(self, p: _Piece, gk: Tensor, gv: Tensor) -> None:
        """Add piece ``p``'s kernel gradients ``gk (n, H, S, D)`` and ``gv (n, H, S, Dv)``."""
        plan, n = self.plan, p.rows.numel()
        h, bk = self.gk.shape[0], plan.kv_block
        for g, buf in ((gk, self.gk), (gv, self.gv)):
            g = g.to(buf.dtype)
            if p.idx is None:  # band views: block w of span i is block i*step+lo+w
                blocks = buf.view(h, plan.n_kb, bk, -1)
                g5 = g.reshape(n, h, plan.width, bk, -1)
                if p.span is not None:  # consecutive rows: each offset w adds one strided slice
                    a, s = p.span.start * plan.step + plan.lo, plan.step
                    for w in range(plan.width):
                        blocks[:, a + w : a + w + (n - 1) * s + 1 : s].add_(g5[:, :, w].transpose(0, 1))
                    continue
                first = p.rows * plan.step + plan.lo
                for w in range(plan.width):
                    blocks.index_add_(1, first + w, g5[:, :, w].transpose(0, 1))
            elif p.idx.dim() == 1:  # shared blocks: summed over the query blocks first
                buf.view(h, plan.n_kb, -1).index_add_(1, p.idx, g.sum(0).reshape(h, p.idx.numel(), -1))
            else:
                flat = p.idx.flatten()
                flat = flat.masked_fill(flat == plan.n_kb, 0)  # the zero block: exact zeros
                rows = g.transpose(0, 1).reshape(h, flat.numel(), -1)
                buf.view(h, plan.n_kb, -1).index_add_(1, flat, rows)

    def finish(self) -> None:
        """Copy the padded buffers into ``dk`` and ``dv`` (cut to ``Tk``, cast to their dtype)."""
        if not self.direct:
            tk = self.dk.shape[1]
            self.dk.copy_(self.gk[:, :tk])
            self.dv.copy_(self.gv[:, :tk])


def _merge(out: _RowBlocks, lse: _RowBlocks, p: _Piece, o: Tensor, l_p: Tensor, *, first: bool) -> None:
    """Fold one piece's ``o (n, H, bq, Dv)`` and ``l_p (n, H, bq, 1)`` into the running output
    and log-sum-exp of its rows (in place); the first piece is simply written (pieces hold
    distinct tiles, so no row is seen twice by it)."""
    if first:
        out.write(p, o)
        lse.write(p, l_p)
        return
    # out' = out + (o - out) * w, w = exp(l_p - lse') = sigmoid(l_p - lse), lse' = logaddexp(lse, l_p);
    # a row with no key yet on either side gives NaN there, and keeps its 0: w = 0
    old = lse.read(p)
    weight = torch.sub(l_p, old).sigmoid_().nan_to_num_(0.0)
    out.write(p, out.read(p).lerp_(o, weight))
    lse.write(p, torch.logaddexp(old, l_p, out=old))


# ----------------------------------------------------------------------------- under torch.compile
#
# Planning reads the pattern's tables (data-dependent sizes, ``int(tensor)``) and the kernel
# calls follow the plan in Python: neither can be traced. Inside a graph being traced the call
# is one opaque operator, ``qkv::blocksparse``, whose plan is found on the host from a token:
# an int the graph holds as a constant, made once per pattern, lengths, batch, heads and device
# (the graph is guarded on the pattern's identity, so another pattern traces again).

_TRACED: dict[tuple, int] = {}  # (backend, pattern, lengths, batch, heads, device) ids -> token
_TOKENS: list[tuple] = []  # token -> (backend, pattern, q_len, kv_len, b, h, device), kept alive


@torch.compiler.assume_constant_result
def any_tiles(backend: BlockSparseBackend, pattern, q_len: int, kv_len: int) -> int:
    """How many ``q_block x kv_block`` tiles of ``pattern`` at ``(Tq, Tk)`` may hold an allowed
    pair (a host constant inside a traced graph)."""
    try:
        layout = pattern.block_layout(q_len, kv_len, backend.q_block, backend.kv_block)
    except AttributeError as err:  # an object made inside the graph holds none of its state yet
        raise ValueError(
            f"mask: the pattern {type(pattern).__name__} was made inside the function torch.compile "
            "traces, and blocksparse plans it on the host; make it once outside (a module attribute, "
            "a global or an argument)"
        ) from err
    return int(layout.any.sum())


@torch.compiler.assume_constant_result
def traced_plan(backend: BlockSparseBackend, pattern, q_len: int, kv_len: int, b: int, h: int, device) -> int:
    """The token of ``backend``'s plan for this problem (a host constant inside a traced
    graph); the plan itself stays in the backend's cache, rebuilt there if dropped."""
    any_tiles(backend, pattern, q_len, kv_len)  # a pattern made inside the graph: a clear error
    key = (id(backend), id(pattern), q_len, kv_len, b, h, str(device))
    with backend._lock:
        if key not in _TRACED:
            _TRACED[key] = len(_TOKENS)
            _TOKENS.append((backend, pattern, q_len, kv_len, b, h, device))
        return _TRACED[key]


def _plan_of(token: int) -> tuple[BlockSparseBackend, _Plan]:
    backend, pattern, *problem = _TOKENS[token]
    return backend, backend.plan_for(pattern, *problem)


@torch.library.custom_op("qkv::blocksparse", mutates_args=())
def _traced_forward(
    query: Tensor, key: Tensor, value: Tensor, token: int, scale: float
) -> tuple[Tensor, Tensor]:
    """``(out, lse)`` of the plan behind ``token``: :meth:`BlockSparseBackend.attend`."""
    backend, plan = _plan_of(token)
    with torch.no_grad():
        return backend.attend(plan, query, key, value, scale)


@_traced_forward.register_fake
def _(query, key, value, token, scale):
    b, h, tq, _ = query.shape
    out = value.new_empty((b, h, tq, value.shape[-1]))
    return out, query.new_empty((b, h, tq), dtype=compute_dtype(query))


@torch.library.custom_op("qkv::blocksparse_backward", mutates_args=())
def _traced_backward(
    d_out: Tensor,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    out: Tensor,
    lse: Tensor,
    token: int,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)`` of :func:`_traced_forward`, as the eager call's masked fills give
    them: keys holding NaN get no gradient, and the rows the NaN rule filled pass none back."""
    backend, plan = _plan_of(token)
    keys_nan = torch.isnan(key).any(dim=-1) | torch.isnan(value).any(dim=-1)  # (B, H, Tk)
    nan_keys = keys_nan.unsqueeze(-1)
    key, value = key.masked_fill(nan_keys, 0.0), value.masked_fill(nan_keys, 0.0)
    filled = _rows_attending(plan, keys_nan).unsqueeze(-1)  # the rows the NaN rule filled
    d_out, out = d_out.masked_fill(filled, 0.0), out.masked_fill(filled, 0.0)
    lse = lse.masked_fill(filled.squeeze(-1), float("inf"))  # exp(s - lse) = 0 on those rows
    dq, dk, dv = _backward(backend.backward_plan(plan, query), scale, query, key, value, out, lse, d_out)
    return dq, dk.masked_fill(nan_keys, 0.0), dv.masked_fill(nan_keys, 0.0)


@_traced_backward.register_fake
def _(d_out, query, key, value, out, lse, token, scale):
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


def _setup_context(ctx, inputs, output) -> None:
    query, key, value, ctx.token, ctx.scale = inputs
    ctx.save_for_backward(query, key, value, *output)
    ctx.mark_non_differentiable(output[1])


def _traced_grad(ctx, d_out, _d_lse):
    query, key, value, out, lse = ctx.saved_tensors
    dq, dk, dv = torch.ops.qkv.blocksparse_backward(d_out, query, key, value, out, lse, ctx.token, ctx.scale)
    return dq, dk, dv, None, None


_traced_forward.register_autograd(_traced_grad, setup_context=_setup_context)
