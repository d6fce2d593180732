"""Attention weights on demand: exact weights for chosen heads and query rows, computed in a
second pass over key blocks, so a model on a fast backend never has to run on the slow path to
be visualized.

    weights[..., h, i, j] = exp(score(q_i, k_j) * scale + bias_ij - lse_i)    (0 where masked)

Rows of at most ``kv_block`` keys are one block: their weights are a softmax of that block's
logits (the row maximum subtracted), as accurate as the reference backend's. Longer rows take
the row's log-sum-exp ``lse`` from the backend when it returns one (chunked, sdpa's fused CPU
kernel) or from a first online pass over the key blocks, for the chosen rows only; a
dot-product score's weights are then written into the result itself (one matrix product that
subtracts ``lse``, one in-place ``exp``: no other buffer of the result's size), other scores'
a key block at a time. Shapes::

    query (..., H, Tq, D), key (..., H, Tk, D) -> weights (..., H', Tq', Tk)

with ``H' = len(heads)`` and ``Tq' = len(rows)`` (all of them by default). Equal to the
reference backend's weights within tolerance; fully masked rows are zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import AttentionInputs
from .online_softmax import OnlineSoftmax, block_logits, compute_dtype

__all__ = ["as_index", "attention_weights", "softmax_in_place", "weights_and_lse"]

Selection = int | Sequence[int] | slice | Tensor | None


def as_index(sel: Selection, size: int, name: str, device) -> Tensor | None:
    """A long index tensor for a selection of heads or rows (None = all), validated."""
    if sel is None:
        return None
    if isinstance(sel, slice):
        idx = torch.arange(size, device=device)[sel]
    elif isinstance(sel, int):
        idx = torch.tensor([sel], device=device)
    else:
        idx = torch.as_tensor(sel, device=device).flatten()
        if idx.is_floating_point() or idx.dtype == torch.bool:
            raise TypeError(f"weights_for: {name} must be integers, got dtype {idx.dtype}")
        idx = idx.long()
    if idx.numel() and (int(idx.min()) < -size or int(idx.max()) >= size):
        raise ValueError(f"weights_for: {name} must lie in [0, {size}), got {idx.tolist()}")
    return idx % size if size else idx


def _logits(inputs: AttentionInputs, q: Tensor, k: Tensor, k0: int, k1: int, rows, heads) -> Tensor:
    """Masked logits of the selected rows/heads against keys ``k0:k1`` in the compute dtype."""
    bias = inputs.bias_block(0, inputs.q_len, k0, k1, rows=rows, heads=heads)
    keep = inputs.mask_block(0, inputs.q_len, k0, k1, rows=rows, heads=heads)
    return block_logits(inputs, inputs.score_fn, q, k, bias, keep)[1]


def _one_block(
    inputs: AttentionInputs,
    q: Tensor,
    k: Tensor,
    rows: Tensor,
    heads: Tensor | None,
    lse: Tensor | None,
    want_lse: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Weights and log-sum-exp of rows whose keys are one block: the masked logits built in
    one tensor (scale, bias and mask applied in place) and normalized in place, a slab of rows
    at a time (:func:`_softmax_rows_`). Rows with no key left (masked out, or every logit
    ``-inf`` through a bias) are zeros, their ``lse`` ``-inf``. Without ``lse`` given and with
    ``want_lse=False``, the log-sum-exp is not computed (None)."""
    raw = inputs.score_fn(q, k)  # (..., H', Tq', Tk)
    s = raw.to(compute_dtype(q))
    if s is raw and not inputs.score.dot_like:
        s = s.clone()  # a callable score's tensor is not ours to overwrite
    if inputs.scale != 1.0:
        s.mul_(inputs.scale)
    bias = inputs.bias_block(0, inputs.q_len, 0, inputs.kv_len, rows=rows, heads=heads)
    keep = inputs.mask_block(0, inputs.q_len, 0, inputs.kv_len, rows=rows, heads=heads)
    shape = torch.broadcast_shapes(s.shape, *(t.shape for t in (bias, keep) if t is not None))
    if shape != s.shape or not s.is_contiguous():
        s = s.expand(shape).contiguous()  # a broadcast bias or mask widens the logits
    if bias is not None:
        s.add_(bias)
    if keep is not None:
        s.masked_fill_(~keep, float("-inf"))
    # Rows with no key: masked out entirely (known from the mask), or, with a bias, every
    # logit -inf (found per slab: only a bias can close a row the mask leaves open).
    row_lse = _softmax_rows_(s, want_lse=lse is None and want_lse, find_closed=bias is not None)
    if keep is not None:
        empty = ~keep.any(dim=-1, keepdim=True)
        s.masked_fill_(empty, 0.0)
        row_lse = None if row_lse is None else row_lse.masked_fill(empty.squeeze(-1), float("-inf"))
    return s.to(q.dtype), lse if lse is not None else row_lse


# Elements of one slab of rows normalized at once where torch refuses an in-place softmax: small
# enough that the softmax's own result stays in cache and is never a fresh large allocation
# (which costs a page fault per 4 KiB).
_SLAB = 1 << 18
_IN_PLACE = True  # torch's softmax kernel writes into its own input (checked on first use)


def softmax_in_place(s: Tensor) -> None:
    """``s = torch.softmax(s, -1)`` in place, bitwise: torch's kernel with its input as its
    output (one parallel region, no allocation; each row is read before it is written). Where
    a torch refuses that aliasing, a slab of rows at a time through a cached result.

    One call, not a loop of slabs: with several threads every op is a parallel region whose
    threads must all be scheduled, and on a loaded machine a slab loop's hundred regions per
    call cost more than the softmax itself."""
    global _IN_PLACE
    if _IN_PLACE:
        try:
            torch.ops.aten._softmax.out(s, -1, False, out=s)
            return
        except RuntimeError:  # an overlap check: normalize slab by slab from now on
            _IN_PLACE = False
    flat = s.view(-1, s.shape[-1])  # (rows, Tk): s is contiguous
    step = max(1, _SLAB // s.shape[-1])
    for r0 in range(0, flat.shape[0], step):
        rows = flat[r0 : r0 + step]
        rows.copy_(torch.softmax(rows, dim=-1))


def _softmax_rows_(s: Tensor, *, want_lse: bool, find_closed: bool) -> Tensor | None:
    """Softmax over the last dim of the contiguous ``s``, in place (bitwise
    ``torch.softmax(s, -1)``, :func:`softmax_in_place`); with ``find_closed`` a row whose logits are
    all ``-inf`` is given zeros (softmax's NaN there means "no key"; a NaN logit elsewhere
    still gives NaN); the rows' log-sum-exp ``(...)`` when ``want_lse`` (``-inf`` for such a
    row)."""
    if s.numel() == 0:
        return s.new_empty(s.shape[:-1]) if want_lse else None
    top = torch.logsumexp(s, dim=-1) if want_lse else s.amax(dim=-1) if find_closed else None  # (...)
    softmax_in_place(s)
    if find_closed:
        s.masked_fill_((top == float("-inf")).unsqueeze(-1), 0.0)
    return top if want_lse else None


@torch.no_grad()
def attention_weights(
    inputs: AttentionInputs,
    *,
    heads: Selection = None,
    rows: Selection = None,
    lse: Tensor | None = None,
    kv_block: int = 1024,
) -> Tensor:
    """Exact attention weights of ``inputs`` for the chosen ``heads`` (dim -3) and query
    ``rows`` (dim -2), one key block at a time (memory: the result plus one block).

    The weights are not differentiable (they are for inspection); the attention output is.
    """
    return weights_and_lse(inputs, heads=heads, rows=rows, lse=lse, kv_block=kv_block)[0]


@torch.no_grad()
def weights_and_lse(
    inputs: AttentionInputs,
    *,
    heads: Selection = None,
    rows: Selection = None,
    lse: Tensor | None = None,
    kv_block: int = 1024,
    want_lse: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """:func:`attention_weights` and the log-sum-exp ``(..., H', Tq')`` of the selected rows
    (the given ``lse``, or the one the first pass computed). With ``want_lse=False`` rows whose
    keys are one block skip it and give None (longer rows need it for their weights)."""
    q, k = inputs.query, inputs.key
    dev = q.device
    h_idx = as_index(heads, q.shape[-3], "heads", dev)
    r_idx = as_index(rows, inputs.q_len, "rows", dev)
    rows_all = torch.arange(inputs.q_len, device=dev) if r_idx is None else r_idx
    if h_idx is not None:
        q, k = q.index_select(-3, h_idx), k.index_select(-3, h_idx)
        lse = None if lse is None else lse.index_select(-2, h_idx)
    if r_idx is not None:
        q = q.index_select(-2, r_idx)
        lse = None if lse is None else lse.index_select(-1, r_idx)
    tk = inputs.kv_len
    cdt = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    blocks = [(k0, min(k0 + kv_block, tk)) for k0 in range(0, tk, kv_block)]
    if len(blocks) == 1:  # one key block: a softmax of its logits, as accurate as the reference's
        return _one_block(inputs, q, k, rows_all, h_idx, lse, want_lse)
    if lse is None:  # first pass: the online log-sum-exp of the selected rows
        running = OnlineSoftmax(q.shape[:-1], cdt, dev)
        for k0, k1 in blocks:
            running.update(_logits(inputs, q, k[..., k0:k1, :], k0, k1, rows_all, h_idx))
        lse = running.lse()
    lse_safe = lse.to(cdt).masked_fill(lse == float("-inf"), float("inf")).unsqueeze(-1)
    if inputs.score.dot_like and cdt == q.dtype and q.shape[:-2] == k.shape[:-2]:
        return _dot_weights(inputs, q, k, blocks, rows_all, h_idx, lse_safe), lse
    out = q.new_empty((*q.shape[:-1], tk), dtype=q.dtype)
    for k0, k1 in blocks:
        s = _logits(inputs, q, k[..., k0:k1, :], k0, k1, rows_all, h_idx)
        out[..., k0:k1] = torch.exp(s - lse_safe).to(q.dtype)
    return out, lse


def _dot_weights(
    inputs: AttentionInputs, q: Tensor, k: Tensor, blocks: list[tuple[int, int]], rows: Tensor,
    heads: Tensor | None, lse_safe: Tensor,
) -> Tensor:  # fmt: skip
    """The weights of a dot-product score in the result itself, no other buffer: one
    ``baddbmm`` writes ``q k^T * scale - lse`` (the scale and the log-sum-exp applied inside
    the matrix product), the bias and the mask are applied in place a key block at a time,
    and one in-place ``exp`` ends it. ``q (..., H', Tq', D)`` and ``k (..., H', Tk, D)`` share
    their leading dims and the compute dtype; ``lse_safe (..., H', Tq', 1)`` is ``+inf`` in
    rows with no key (their weights come out 0)."""
    tq, tk = q.shape[-2], k.shape[-2]
    out = q.new_empty((*q.shape[:-1], tk))
    flat = out.view(-1, tq, tk)
    neg_lse = lse_safe.neg().reshape(-1, tq, 1).expand(flat.shape)
    q3, k3 = q.reshape(-1, tq, q.shape[-1]), k.reshape(-1, tk, k.shape[-1])
    torch.baddbmm(neg_lse, q3, k3.transpose(1, 2), alpha=inputs.scale, out=flat)
    for k0, k1 in blocks:
        bias = inputs.bias_block(0, inputs.q_len, k0, k1, rows=rows, heads=heads)
        keep = inputs.mask_block(0, inputs.q_len, k0, k1, rows=rows, heads=heads)
        if bias is not None:
            out[..., k0:k1].add_(bias.to(out.dtype))
        if keep is not None:
            out[..., k0:k1].masked_fill_(~keep, float("-inf"))
    return out.exp_()
