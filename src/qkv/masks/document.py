"""Document masking for packed sequences: tokens attend only within their own document."""

from __future__ import annotations

import torch
from torch import Tensor

from .core import Mask, block_bounds, reduce_dense

__all__ = ["document"]


class _Document(Mask):
    def __init__(self, seq_ids: Tensor) -> None:
        self.seq_ids = seq_ids  # (B, T) long, B >= 1
        self.sorted = bool((seq_ids[:, 1:] >= seq_ids[:, :-1]).all())
        batch = "" if seq_ids.shape[0] == 1 else f"B={seq_ids.shape[0]}, "
        self.name = f"document({batch}T={seq_ids.shape[1]})"

    @property
    def depends_on_batch_head(self) -> bool:
        return self.seq_ids.shape[0] > 1

    @property
    def batch_head_shape(self) -> tuple[int, int]:
        return self.seq_ids.shape[0], 1

    def _check(self, q_len: int, kv_len: int) -> None:
        t = self.seq_ids.shape[1]
        if q_len != t or kv_len != t:
            raise ValueError(
                f"document: seq_ids has length T={t} but (Tq, Tk) = ({q_len}, {kv_len}); "
                "document masks are for self-attention with Tq == Tk == T"
            )

    def mask_mod(self, q_len, kv_len):
        self._check(q_len, kv_len)
        cache: dict = {}

        def fn(b, h, q, kv):
            if q.device not in cache:
                cache[q.device] = self.seq_ids.to(q.device)
            ids = cache[q.device]
            bb = b if ids.shape[0] > 1 else torch.zeros_like(b)
            return ids[bb, q] == ids[bb, kv]

        return fn

    def materialize(self, q_len, kv_len, *, device=None):
        self._check(q_len, kv_len)
        ids = self.seq_ids.to(device)
        return (ids[:, :, None] == ids[:, None, :])[:, None]  # (B, 1, T, T)

    def _layout(self, q_len, kv_len, q_block, kv_block, device):
        self._check(q_len, kv_len)
        if not self.sorted:
            return reduce_dense(
                self.materialize(q_len, kv_len, device=device), q_len, kv_len, q_block, kv_block
            )
        # Non-decreasing ids: a block holds the ids [ids[first], ids[last]] (a contiguous run of
        # the sorted sequence). Two blocks share an id iff their ranges overlap (both are runs of
        # one sorted sequence), and every pair is allowed iff both hold one and the same id.
        ids = self.seq_ids.to(device)
        qf, ql = block_bounds(q_len, q_block, device)
        kf, kl = block_bounds(kv_len, kv_block, device)
        q_lo, q_hi = ids[:, qf][:, :, None], ids[:, ql][:, :, None]  # (B, nQB, 1)
        k_lo, k_hi = ids[:, kf][:, None, :], ids[:, kl][:, None, :]  # (B, 1, nKB)
        any_ = (q_lo <= k_hi) & (k_lo <= q_hi)  # (B, nQB, nKB)
        all_ = (q_lo == q_hi) & (k_lo == k_hi) & (q_lo == k_lo)
        return any_.any(dim=0), all_.all(dim=0)  # union / intersection over the batch


def document(seq_ids) -> Mask:
    """Packed sequences: query ``i`` sees key ``j`` when ``seq_ids[i] == seq_ids[j]``.

    Several documents packed into one row of length ``T`` must not attend across documents
    (the "document masking" of packed pre-training, e.g. Llama 3; FlexAttention's
    ``document_mask``). Combine with :func:`causal` for packed decoders.
    ``document([0, 0, 1, 1, 1])``::

        x x . . .
        x x . . .
        . . x x x
        . . x x x
        . . x x x

    Args:
        seq_ids: integer ``(T,)`` or ``(B, T)``: the document of each position. Self-attention
            only (``Tq == Tk == T``, checked at materialize time). Non-decreasing ids get an
            analytic block layout; other ids fall back to a dense reduction.

    Raises:
        TypeError / ValueError: non-integer ids, wrong number of dims, lengths that differ from T.
    """
    if not isinstance(seq_ids, Tensor):
        seq_ids = torch.as_tensor(seq_ids)
    if seq_ids.dtype == torch.bool or seq_ids.is_floating_point() or seq_ids.is_complex():
        raise TypeError(f"document: seq_ids must be an integer tensor, got dtype {seq_ids.dtype}")
    if seq_ids.dim() not in (1, 2):
        raise ValueError(f"document: seq_ids must be (T,) or (B, T), got shape {tuple(seq_ids.shape)}")
    ids = seq_ids.detach().long()
    if ids.dim() == 1:
        ids = ids[None]
    if ids.shape[0] == 0:
        raise ValueError(
            f"document: seq_ids must have a batch of at least 1, got shape {tuple(seq_ids.shape)}"
        )
    return _Document(ids)
