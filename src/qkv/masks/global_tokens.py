"""Global tokens: a few positions that see everything and are seen by everything."""

from __future__ import annotations

import torch
from torch import Tensor

from .core import Mask, block_bounds

__all__ = ["global_tokens"]


class _GlobalTokens(Mask):
    depends_on_batch_head = False

    def __init__(self, indices: Tensor, *, strict: bool = True, name: str | None = None) -> None:
        self.indices = indices  # 1-D long, unique, sorted, >= 0
        self.strict = strict  # False: indices beyond the lengths are dropped (BigBird's prefix)
        shown = self.indices.tolist() if self.indices.numel() <= 8 else f"{self.indices.numel()} indices"
        self.name = name or f"global_tokens({shown})"

    def _table(self, q_len: int, kv_len: int, device) -> Tensor:
        """bool ``(max(Tq, Tk),)``: is position ``p`` global."""
        n = max(q_len, kv_len)
        idx = self.indices
        if self.strict and idx.numel() and int(idx[-1]) >= n:
            raise ValueError(
                f"global_tokens: indices must be < max(Tq, Tk) = {n} at (Tq, Tk) = ({q_len}, {kv_len}), "
                f"got {int(idx[-1])}"
            )
        idx = idx[idx < n].to(device)
        table = torch.zeros(n, dtype=torch.bool, device=device)
        table[idx] = True
        return table

    def mask_mod(self, q_len, kv_len):
        # Built (and validated) now, not inside fn: compilers that trace fn (FlexAttention)
        # cannot read tensor values; moving the table to another device is traceable.
        base = self._table(q_len, kv_len, "cpu")
        cache: dict = {base.device: base}

        def fn(b, h, q, kv):
            if q.device not in cache:
                cache[q.device] = base.to(q.device)
            table = cache[q.device]
            return table[q] | table[kv]

        return fn

    def _layout(self, q_len, kv_len, q_block, kv_block, device):
        def per_block(length: int, block: int) -> tuple[Tensor, Tensor]:
            first, last = block_bounds(length, block, device)
            idx = self.indices.to(device)
            idx = idx[idx < length]  # unique
            count = torch.bincount(idx // block, minlength=first.numel())  # global positions per block
            return count > 0, count == last - first + 1  # some / every real position is global

        self._table(q_len, kv_len, "cpu")  # same validation as materialize
        q_some, q_every = per_block(q_len, q_block)
        k_some, k_every = per_block(kv_len, kv_block)
        # a pair (i, j) is allowed iff i or j is global: exact for any and for all
        return q_some[:, None] | k_some[None, :], q_every[:, None] | k_every[None, :]


def _as_indices(owner: str, indices) -> Tensor:
    if isinstance(indices, Tensor):
        if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
            raise TypeError(f"{owner}: indices must be integers, got a tensor of dtype {indices.dtype}")
        if indices.dim() != 1:
            raise ValueError(f"{owner}: indices must be 1-D, got shape {tuple(indices.shape)}")
        idx = indices.detach().to("cpu", torch.long)
    else:
        try:
            values = list(indices)
        except TypeError:
            raise TypeError(
                f"{owner}: indices must be a list, tuple, range or 1-D integer tensor, got {type(indices).__name__}"
            ) from None
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{owner}: indices must be ints, got {v!r}")
        idx = torch.tensor(values, dtype=torch.long)
    if idx.numel() and int(idx.min()) < 0:
        raise ValueError(f"{owner}: indices must be >= 0, got {int(idx.min())}")
    return torch.unique(idx)  # sorted, unique


def global_tokens(indices) -> Mask:
    """Global attention: positions in ``indices`` attend to every key and every query attends
    to them: ``(i, j)`` is allowed when ``i in G`` or ``j in G``.

    Longformer's global attention (Beltagy et al., 2020; e.g. ``[CLS]`` or question tokens) and
    BigBird's global tokens (Zaheer et al., 2020). ``global_tokens([0, 3])`` at ``Tq = Tk = 5``::

        x x x x x
        x . . x .
        x . . x .
        x x x x x
        x . . x .

    Args:
        indices: list, tuple, range or 1-D integer tensor of positions (duplicates are fine).
            An index must be ``< max(Tq, Tk)`` at materialize time (an index ``>= Tq`` only has
            a global column, one ``>= Tk`` only a global row).

    Raises:
        TypeError / ValueError: non-integer or negative indices; out of range at materialize.
    """
    return _GlobalTokens(_as_indices("global_tokens", indices))
