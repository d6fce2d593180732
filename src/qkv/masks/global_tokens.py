"""Global tokens: a few positions that see everything and are seen by everything."""

from __future__ import annotations

import torch
from torch import Tensor

from .core import Mask, block_bounds

__all__ = ["global_tokens"]


class _GlobalTokens(Mask):
    depends_on_batch_head = False

    def __init__(self, indices: tuple[int, ...], *, strict: bool = True, name: str | None = None) -> None:
        # unique, sorted, >= 0; ints, not a tensor: every table below is built from constants,
        # so torch.compile traces them without reading a tensor's values
        self.indices = indices
        self.strict = strict  # False: indices beyond the lengths are dropped (BigBird's prefix)
        shown = list(indices) if len(indices) <= 8 else f"{len(indices)} indices"
        self.name = name or f"global_tokens({shown})"

    def _within(self, q_len: int, kv_len: int) -> list[int]:
        """The indices below ``max(Tq, Tk)`` (all of them when strict, else an error)."""
        n = max(q_len, kv_len)
        if self.strict and self.indices and self.indices[-1] >= n:
            raise ValueError(
                f"global_tokens: indices must be < max(Tq, Tk) = {n} at (Tq, Tk) = ({q_len}, {kv_len}), "
                f"got {self.indices[-1]}"
            )
        return [i for i in self.indices if i < n]

    def _table(self, q_len: int, kv_len: int, device) -> Tensor:
        """bool ``(max(Tq, Tk),)``: is position ``p`` global."""
        table = torch.zeros(max(q_len, kv_len), dtype=torch.bool, device=device)
        within = self._within(q_len, kv_len)
        if within:
            table[torch.tensor(within, device=device)] = True
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
            counts = [0] * first.numel()  # global positions per block
            for i in within:
                if i < length:
                    counts[i // block] += 1
            count = torch.tensor(counts, device=device)
            return count > 0, count == last - first + 1  # some / every real position is global

        within = self._within(q_len, kv_len)  # same validation as materialize
        q_some, q_every = per_block(q_len, q_block)
        k_some, k_every = per_block(kv_len, kv_block)
        # a pair (i, j) is allowed iff i or j is global: exact for any and for all
        return q_some[:, None] | k_some[None, :], q_every[:, None] | k_every[None, :]


def _as_indices(owner: str, indices) -> tuple[int, ...]:
    """The positions as sorted, unique, non-negative ints."""
    if isinstance(indices, Tensor):
        if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
            raise TypeError(f"{owner}: indices must be integers, got a tensor of dtype {indices.dtype}")
        if indices.dim() != 1:
            raise ValueError(f"{owner}: indices must be 1-D, got shape {tuple(indices.shape)}")
        values = indices.detach().to("cpu", torch.long).tolist()
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
    if values and min(values) < 0:
        raise ValueError(f"{owner}: indices must be >= 0, got {min(values)}")
    return tuple(sorted(set(values)))


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
