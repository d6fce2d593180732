"""The ``blocksparse`` backend: compute only the key blocks a sparse pattern touches.

Equal to the reference backend within tolerance, for ``dot``/``scaled_dot`` scores with a
:class:`qkv.masks.Mask` pattern (sliding window, Longformer, BigBird, ...). Memory is
``O(T x window)``, never ``O(T^2)``: no ``Tq x Tk`` tensor is built. Shapes::

    query (B, H, Tq, D), key (B, H, Tk, D), value (B, H, Tk, Dv) -> out (B, H, Tq, Dv)

How: the pattern's block layout lists, for each query block, the key blocks it may attend.
Query blocks are grouped by how many key blocks they need (so one global row does not pad every
other row to the full length); each group gathers its key/value blocks into a contiguous span
``(blocks, C * kv_block, D)`` and runs PyTorch's fused SDPA kernel on ``(blocks, q_block, span)``
with the in-block mask evaluated from the pattern's ``mask_mod``. Every query row sees all its
keys in one softmax, so the result is exact, and the backward comes from SDPA and the gathers.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .._types import AttentionOutput
from .base import AttentionInputs

__all__ = ["BlockSparseBackend"]


def _pad_blocks(t: Tensor, block: int, extra: int = 0) -> Tensor:
    """(B, H, T, D) -> (B, H, nB + extra, block, D), zero-padded to whole blocks (plus
    ``extra`` all-zero blocks)."""
    b, h, n, d = t.shape
    n_blocks = math.ceil(n / block) + extra
    if n_blocks * block != n:
        t = F.pad(t, (0, 0, 0, n_blocks * block - n))
    return t.view(b, h, n_blocks, block, d)


class BlockSparseBackend:
    """Block-sparse attention for patterns (see the module docstring).

    Args:
        q_block, kv_block: tile sizes (64 matches the fused kernel's sweet spot on CPU).
        max_gather_bytes: bound on the gathered key+value span of one group chunk (forward
            memory stays near this, plus the output).
        auto_max_density: ``auto`` prefers SDPA on the dense mask above this fraction of tiles.
    """

    name = "blocksparse"

    def __init__(
        self,
        q_block: int = 64,
        kv_block: int = 64,
        max_gather_bytes: int = 64 << 20,
        auto_max_density: float = 0.5,
    ) -> None:
        self.q_block, self.kv_block = q_block, kv_block
        self.max_gather_bytes, self.auto_max_density = max_gather_bytes, auto_max_density
        self.cache_size = 8
        self._plans: OrderedDict = OrderedDict()

    def supports(self, inputs: AttentionInputs) -> list[str]:
        reasons = []
        if inputs.pattern is None:
            reasons.append("no mask pattern (blocksparse needs a qkv.masks.Mask such as sliding_window)")
        if inputs.score not in ("dot", "scaled_dot"):
            reasons.append(f"score {inputs.score!r}: blocksparse runs dot/scaled_dot (use chunked)")
        if inputs.bias is not None:
            reasons.append("bias: blocksparse does not gather biases (use chunked)")
        if inputs.query.dim() != 4:
            reasons.append(f"layout: expected 4-D (B, H, T, D) inputs, got {inputs.query.dim()}-D")
        if inputs.q_len == 0 or inputs.kv_len == 0:
            reasons.append("an empty sequence (Tq = 0 or Tk = 0)")
        return reasons

    def auto_skip(self, inputs: AttentionInputs) -> list[str]:
        if inputs.q_len < 2 * self.q_block or inputs.kv_len < 2 * self.kv_block:
            return ["short sequences: the dense kernels are faster"]
        density = self.layout(inputs).density()
        if density > self.auto_max_density:
            return [f"dense pattern ({density:.0%} of tiles): SDPA is faster"]
        return []

    def layout(self, inputs: AttentionInputs):
        return inputs.pattern.block_layout(inputs.q_len, inputs.kv_len, self.q_block, self.kv_block)

    def plan(self, inputs: AttentionInputs) -> list[_Chunk]:
        """The gather plan of these inputs (cached per pattern, lengths, shapes and device)."""
        q, v, pattern = inputs.query, inputs.value, inputs.pattern
        b, h, _, d = q.shape
        key = (id(pattern), inputs.q_len, inputs.kv_len, b, h, d, v.shape[-1], q.element_size(), q.device)
        hit = self._plans.get(key)
        if hit is not None and hit[0] is pattern:
            self._plans.move_to_end(key)
            return hit[1]
        chunks = self._make_plan(inputs)
        self._plans[key] = (pattern, chunks)
        while len(self._plans) > self.cache_size:
            self._plans.popitem(last=False)
        return chunks

    def _make_plan(self, inputs: AttentionInputs) -> list[_Chunk] | _Band:
        q, pattern = inputs.query, inputs.pattern
        bq, bk, tq, tk = self.q_block, self.kv_block, inputs.q_len, inputs.kv_len
        b, h, _, d = q.shape
        dv = inputs.value.shape[-1]
        dev = q.device
        layout = self.layout(inputs)
        band = self._band(inputs, layout)
        if band is not None:
            return band
        counts = layout.kv_counts()  # (nQB,)
        kv_index = layout.kv_indices().to(dev)  # (nQB, maxC), -1 padded
        full = layout.all
        mask_fn = pattern.mask_mod(tq, tk)
        per_bh = pattern.depends_on_batch_head
        # Group query blocks by their number of key blocks (or by ceil(log2) of it when there
        # are many different counts): spans are then padded little or not at all.
        distinct = len(set(counts.tolist()) - {0})
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(counts.tolist()):
            if c:
                groups.setdefault(c if distinct <= 16 else (c - 1).bit_length(), []).append(i)
        n_kb = layout.shape[1]  # padding slots point at block n_kb: an all-zero block
        span_bytes = b * h * bk * (d + dv) * q.element_size()
        chunks = []
        for members in groups.values():
            width = int(counts[members].max())
            size = max(1, self.max_gather_bytes // (span_bytes * width))
            for start in range(0, len(members), size):
                part = members[start : start + size]
                rows = torch.tensor(part, device=dev)
                idx = kv_index[rows, :width]  # (n, C), -1 = padding slot
                slot_ok = idx >= 0
                idx = torch.where(slot_ok, idx, n_kb)
                n = len(part)
                q_pos = (rows * bq).view(n, 1, 1) + torch.arange(bq, device=dev).view(1, bq, 1)
                kv_pos = (idx * bk).view(n, width, 1) + torch.arange(bk, device=dev).view(1, 1, bk)
                kv_pos = kv_pos.view(n, 1, width * bk)
                valid = (q_pos < tq) & (kv_pos < tk)  # padding slots start at n_kb * bk >= Tk
                in_range = kv_pos < tk  # the rest is zero padding: nothing can leak from it
                blocks_full = full[rows.cpu().unsqueeze(1), idx.clamp_max(n_kb - 1).cpu()]
                is_full = bool(blocks_full.all()) and bool(valid.all())
                keep = dead = None
                if not is_full:
                    q_pos, kv_pos = q_pos.clamp_max(tq - 1), kv_pos.clamp_max(tk - 1)  # real positions only
                    if per_bh:  # (B, H, n, bq, S)
                        b_idx = torch.arange(b, device=dev).view(b, 1, 1, 1, 1)
                        h_idx = torch.arange(h, device=dev).view(1, h, 1, 1, 1)
                        keep = mask_fn(b_idx, h_idx, q_pos, kv_pos) & valid
                    else:  # (n, bq, S), shared by batch and heads
                        zero = torch.zeros((), dtype=torch.long, device=dev)
                        keep = mask_fn(zero, zero, q_pos, kv_pos) & valid
                    # keys no row may attend, among the real ones: NaN placed there must not leak
                    dead = (~keep.any(dim=-2, keepdim=True) & in_range).transpose(-1, -2)  # (..., n, S, 1)
                    dead = dead if bool(dead.any()) else None
                chunks.append(_Chunk(rows, _as_range(part), idx, keep, dead))
        return chunks

    def _band(self, inputs: AttentionInputs, layout) -> _Band | None:
        """A plan without gathers when every query block attends one run of consecutive key
        blocks that slides with it (sliding windows, causal local): the spans are then
        overlapping strided views of the (padded) keys."""
        bq, bk, tq, tk = self.q_block, self.kv_block, inputs.q_len, inputs.kv_len
        if bq % bk or inputs.pattern.depends_on_batch_head:
            return None
        step = bq // bk  # key blocks per query block
        any_ = layout.any
        n_qb, n_kb = any_.shape
        has = any_.any(dim=1)
        if not bool(has.any()):
            return None
        cols = torch.arange(n_kb).expand(n_qb, n_kb)
        first = torch.where(any_, cols, n_kb).amin(dim=1)
        last = torch.where(any_, cols, -1).amax(dim=1)
        shift = torch.arange(n_qb) * step
        lo = int((first - shift)[has].min())
        hi = int((last - shift)[has].max())
        width = hi - lo + 1
        if width * n_qb > 1.25 * float(any_.sum()) + n_qb:  # too much waste: gather instead
            return None
        dev = inputs.query.device
        pad_left = max(0, -lo) * bk
        end = pad_left + ((n_qb - 1) * step + lo + width) * bk  # end of the last span, padded coords
        pad_right = max(0, end - pad_left - tk)
        q_pos = torch.arange(n_qb * bq, device=dev).view(n_qb, bq, 1)
        starts = (torch.arange(n_qb, device=dev) * step + lo) * bk  # first key of each span
        kv_pos = starts.view(n_qb, 1, 1) + torch.arange(width * bk, device=dev).view(1, 1, -1)
        valid = (q_pos < tq) & (kv_pos >= 0) & (kv_pos < tk)
        zero = torch.zeros((), dtype=torch.long, device=dev)
        fn = inputs.pattern.mask_mod(tq, tk)
        keep = fn(zero, zero, q_pos.clamp_max(tq - 1), kv_pos.clamp(0, tk - 1)) & valid  # (nQB, bq, S)
        in_range = (kv_pos >= 0) & (kv_pos < tk)  # padding positions are zeros already
        dead = (~keep.any(dim=-2, keepdim=True) & in_range).transpose(-1, -2)  # (nQB, S, 1)
        return _Band(pad_left, pad_right, width, keep, dead if bool(dead.any()) else None)

    def _run_band(self, inputs: AttentionInputs, band: _Band) -> Tensor:
        q, k, v = inputs.query, inputs.key, inputs.value
        bq, bk, tq = self.q_block, self.kv_block, inputs.q_len
        b, h = q.shape[:2]
        n_qb = band.keep.shape[0]
        span = band.width * bk
        q5 = _pad_blocks(q, bq)  # (B, H, nQB, bq, D)
        kp = F.pad(k, (0, 0, band.pad_left, band.pad_right))  # (B, H, Tk + pads, D)
        vp = F.pad(v, (0, 0, band.pad_left, band.pad_right))
        mask = band.additive(q.dtype)  # (nQB, 1, bq, S): 0 / -inf, built once per dtype
        dropout = inputs.dropout_p if inputs.dropout_active else 0.0
        outs = []
        for i in range(b):  # one strided view per sample: spans overlap in memory, no copy
            ks = _spans(kp[i], n_qb, bq, span)  # (nQB, H, S, D)
            vs = _spans(vp[i], n_qb, bq, span)
            if band.dead is not None:  # keys no row of a block may attend: NaN must not leak
                dead = band.dead.unsqueeze(1)  # (nQB, 1, S, 1)
                ks, vs = ks.masked_fill(dead, 0), vs.masked_fill(dead, 0)
            outs.append(
                F.scaled_dot_product_attention(
                    q5[i].transpose(0, 1), ks, vs, attn_mask=mask, dropout_p=dropout, scale=inputs.scale
                )  # (nQB, H, bq, Dv)
            )
        out = outs[0].unsqueeze(0) if b == 1 else torch.stack(outs)  # (B, nQB, H, bq, Dv)
        return out.transpose(1, 2).reshape(b, h, n_qb * bq, -1)[:, :, :tq]

    def _n_kb(self, inputs: AttentionInputs) -> int:
        return math.ceil(inputs.kv_len / self.kv_block)

    def run(self, inputs: AttentionInputs) -> AttentionOutput:
        plan = self.plan(inputs)
        if isinstance(plan, _Band):
            return AttentionOutput(
                out=self._run_band(inputs, plan), weights=None, lse=None, backend=self.name
            )
        q, k, v = inputs.query, inputs.key, inputs.value
        bq, bk, tq = self.q_block, self.kv_block, inputs.q_len
        b, h, _, d = q.shape
        dv = v.shape[-1]
        q5 = _pad_blocks(q, bq)  # (B, H, nQB, bq, D)
        # (B*H, nKB + 1, bk*D): key/value blocks as rows, plus one zero block for padding slots
        extra = int(any(bool((c.idx == c.idx.new_tensor(self._n_kb(inputs))).any()) for c in plan))
        k_rows = _pad_blocks(k, bk, extra=extra).view(b * h, -1, bk * d)
        v_rows = _pad_blocks(v, bk, extra=extra).view(b * h, -1, bk * dv)
        n_qb = q5.shape[2]
        dropout = inputs.dropout_p if inputs.dropout_active else 0.0
        rows_done, outs = [], []
        for c in plan:
            n, width = c.idx.shape
            qg = q5[:, :, c.span] if c.span is not None else q5[:, :, c.rows]  # (B, H, n, bq, D)
            flat = c.idx.flatten()
            kg = k_rows.index_select(1, flat).view(b, h, n, width * bk, d)  # (B, H, n, S, D)
            vg = v_rows.index_select(1, flat).view(b, h, n, width * bk, dv)
            if c.dead is not None:  # NaN/inf in keys no row may attend must not leak
                kg.masked_fill_(c.dead, 0)  # in place: kg, vg are fresh gathers, not views
                vg.masked_fill_(c.dead, 0)
            # the fused kernel wants 4-D (batch, heads, L, E): fold (B, n) -> batch
            out = F.scaled_dot_product_attention(
                _fold(qg), _fold(kg), _fold(vg),
                attn_mask=None if c.keep is None else _fold_mask(c.keep, b),
                dropout_p=dropout,
                scale=inputs.scale,
            )  # fmt: skip
            outs.append(out.view(b, n, h, bq, dv))
            rows_done.append(c.rows)
        out = torch.cat(outs, dim=1) if outs else q.new_zeros((b, 0, h, bq, dv))  # (B, N, H, bq, Dv)
        rows = torch.cat(rows_done) if rows_done else torch.zeros(0, dtype=torch.long, device=q.device)
        if rows.numel() != n_qb or not torch.equal(rows, torch.arange(n_qb, device=rows.device)):
            out = q.new_zeros((b, n_qb, h, bq, dv), dtype=v.dtype).index_copy(1, rows, out)
        out = out.transpose(1, 2).reshape(b, h, n_qb * bq, dv)[:, :, :tq]  # (B, H, Tq, Dv)
        return AttentionOutput(out=out, weights=None, lse=None, backend=self.name)


@dataclass(frozen=True)
class _Chunk:
    """One SDPA call: ``n`` query blocks and their ``C`` key blocks each."""

    rows: Tensor  # long (n,): query-block ids
    span: slice | None  # the same ids as a slice when contiguous (no gather copy)
    idx: Tensor  # long (n, C): key-block ids (padding slots point at block 0, masked)
    keep: Tensor | None  # bool (n, bq, S) or (B, H, n, bq, S); None = every pair allowed
    dead: Tensor | None  # bool (..., n, S, 1): keys no row of the block may attend


@dataclass(frozen=True)
class _Band:
    """A banded plan: query block i attends keys ``[i*bq - pad_left, ... + width*kv_block)``
    of the keys padded by ``pad_left``/``pad_right`` zeros."""

    pad_left: int
    pad_right: int
    width: int  # key blocks per span
    keep: Tensor  # bool (nQB, bq, S)
    dead: Tensor | None  # bool (nQB, S, 1)
    _additive: dict = field(default_factory=dict, compare=False)

    def additive(self, dtype: torch.dtype) -> Tensor:
        """The mask as an additive float (nQB, 1, bq, S) in ``dtype``: the fused kernel would
        otherwise convert the bool mask on every call."""
        if dtype not in self._additive:
            zeros = torch.zeros(self.keep.shape, dtype=dtype, device=self.keep.device)
            self._additive[dtype] = zeros.masked_fill_(~self.keep, float("-inf")).unsqueeze(1)
        return self._additive[dtype]


def _spans(t: Tensor, n: int, step: int, span: int) -> Tensor:
    """(H, T', D) -> overlapping windows (n, H, span, D): window i starts at row i * step."""
    h, _, d = t.shape
    s_h, s_t, s_d = t.stride()
    return t.as_strided((n, h, span, d), (step * s_t, s_h, s_t, s_d), t.storage_offset())


def _as_range(ids: list[int]) -> slice | None:
    return slice(ids[0], ids[-1] + 1) if ids == list(range(ids[0], ids[-1] + 1)) else None


def _fold(t: Tensor) -> Tensor:
    """(B, H, n, L, E) -> (B*n, H, L, E); a strided view when B == 1 (no copy)."""
    b, h, n, length, e = t.shape
    if b == 1:
        return t[0].transpose(0, 1)
    return t.transpose(1, 2).reshape(b * n, h, length, e)


def _fold_mask(keep: Tensor, b: int) -> Tensor:
    """(n, bq, S) -> (n|B*n, 1, bq, S); (B, H, n, bq, S) -> (B*n, H, bq, S)."""
    if keep.dim() == 5:
        return _fold(keep)
    keep = keep.unsqueeze(1)
    return keep if b == 1 else keep.repeat(b, 1, 1, 1)
