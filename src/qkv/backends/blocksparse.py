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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .._types import AttentionOutput
from .base import AttentionInputs

__all__ = ["BlockSparseBackend"]


def _pad_blocks(t: Tensor, block: int) -> Tensor:
    """(B, H, T, D) -> (B, H, nB, block, D), zero-padded to a whole number of blocks."""
    b, h, n, d = t.shape
    n_blocks = math.ceil(n / block)
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

    def _make_plan(self, inputs: AttentionInputs) -> list[_Chunk]:
        q, pattern = inputs.query, inputs.pattern
        bq, bk, tq, tk = self.q_block, self.kv_block, inputs.q_len, inputs.kv_len
        b, h, _, d = q.shape
        dv = inputs.value.shape[-1]
        dev = q.device
        layout = self.layout(inputs)
        counts = layout.kv_counts()  # (nQB,)
        kv_index = layout.kv_indices().to(dev)  # (nQB, maxC), -1 padded
        full = layout.all
        mask_fn = pattern.mask_mod(tq, tk)
        per_bh = pattern.depends_on_batch_head
        # Group query blocks by ceil(log2(count)): similar spans pad little.
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(counts.tolist()):
            if c:
                groups.setdefault((c - 1).bit_length(), []).append(i)
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
                idx = idx.clamp_min(0)
                n = len(part)
                q_pos = (rows * bq).view(n, 1, 1) + torch.arange(bq, device=dev).view(1, bq, 1)
                kv_pos = (idx * bk).view(n, width, 1) + torch.arange(bk, device=dev).view(1, 1, bk)
                kv_pos = kv_pos.view(n, 1, width * bk)
                valid = (q_pos < tq) & (kv_pos < tk) & slot_ok.repeat_interleave(bk, dim=1).view(n, 1, -1)
                is_full = bool(full[rows.cpu().unsqueeze(1), idx.cpu()][slot_ok.cpu()].all()) and bool(
                    valid.all()
                )
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
                    dead = ~keep.any(dim=-2).unsqueeze(-1)  # (..., n, S, 1): keys no row may attend
                    dead = dead if bool(dead.any()) else None
                chunks.append(_Chunk(rows, _as_range(part), idx, keep, dead))
        return chunks

    def run(self, inputs: AttentionInputs) -> AttentionOutput:
        q, k, v = inputs.query, inputs.key, inputs.value
        bq, bk, tq = self.q_block, self.kv_block, inputs.q_len
        b, h, _, d = q.shape
        dv = v.shape[-1]
        q5 = _pad_blocks(q, bq)  # (B, H, nQB, bq, D)
        k5, v5 = _pad_blocks(k, bk), _pad_blocks(v, bk)  # (B, H, nKB, bk, D)
        n_qb = q5.shape[2]
        dropout = inputs.dropout_p if inputs.dropout_active else 0.0
        rows_done, outs = [], []
        for c in self.plan(inputs):
            n, width = c.idx.shape
            qg = q5[:, :, c.span] if c.span is not None else q5[:, :, c.rows]  # (B, H, n, bq, D)
            kg = k5[:, :, c.idx].reshape(b, h, n, width * bk, d)  # (B, H, n, S, D)
            vg = v5[:, :, c.idx].reshape(b, h, n, width * bk, dv)
            if c.dead is not None:  # NaN/inf in keys no row may attend must not leak
                kg, vg = kg.masked_fill(c.dead, 0), vg.masked_fill(c.dead, 0)
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
