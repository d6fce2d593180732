"""BigBird's random attention: each query block sees a few key blocks drawn at random."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_int
from .core import Mask, block_bounds

__all__ = ["random_blocks"]


class _RandomBlocks(Mask):
    depends_on_batch_head = False

    def __init__(self, num: int, block: int, seed: int) -> None:
        self.num, self.block, self.seed = num, block, seed
        self.name = f"random_blocks(num={num}, block={block}, seed={seed})"
        self._tables: dict[tuple[int, int], Tensor] = {}

    def table(self, q_len: int, kv_len: int) -> Tensor:
        """bool ``(ceil(Tq / block), ceil(Tk / block))`` on CPU: which key blocks each query block
        sees. A pure function of ``(seed, Tq, Tk, num, block)``: a CPU ``torch.Generator`` seeded
        with ``seed`` draws one row of uniform keys per query block; the ``min(num, nKB)``
        smallest are the chosen key blocks (sampling without replacement)."""
        key = (q_len, kv_len)
        if key in self._tables:
            return self._tables[key]
        table = _draw(self.seed, self.num, self.block, q_len, kv_len)
        if not torch.compiler.is_compiling():  # a traced graph holds its table as a constant
            self._tables[key] = table
        return table

    def mask_mod(self, q_len, kv_len):
        base, block, cache = self.table(q_len, kv_len), self.block, {}

        def fn(b, h, q, kv):
            if q.device not in cache:
                cache[q.device] = base.to(q.device)
            qb = torch.div(q, block, rounding_mode="floor")
            kb = torch.div(kv, block, rounding_mode="floor")
            return cache[q.device][qb, kb]

        return fn

    def _layout(self, q_len, kv_len, q_block, kv_block, device):
        # A layout tile covers the pattern-block rectangle [q_first // block, q_last // block] x
        # (same for kv), and each pattern-block pair of it holds a real pair of the tile: the tile
        # is `any` iff the rectangle holds a chosen block, `all` iff every block of it is chosen.
        # Counted with a 2-D prefix sum (exact for any block sizes).
        table = self.table(q_len, kv_len).to(device)
        csum = torch.zeros(table.shape[0] + 1, table.shape[1] + 1, dtype=torch.long, device=device)
        csum[1:, 1:] = table.long().cumsum(0).cumsum(1)
        qf, ql = block_bounds(q_len, q_block, device)
        kf, kl = block_bounds(kv_len, kv_block, device)
        r0, r1 = (qf // self.block)[:, None], (ql // self.block + 1)[:, None]  # (nQB, 1)
        c0, c1 = (kf // self.block)[None, :], (kl // self.block + 1)[None, :]  # (1, nKB)
        inside = csum[r1, c1] - csum[r0, c1] - csum[r1, c0] + csum[r0, c0]  # chosen in rectangle
        area = (r1 - r0) * (c1 - c0)
        return inside > 0, inside == area


@torch.compiler.assume_constant_result
def _draw(seed: int, num: int, block: int, q_len: int, kv_len: int) -> Tensor:
    """:meth:`_RandomBlocks.table`, drawn on the host: inside a graph torch.compile traces (a
    generator cannot be traced) it is a constant of the graph."""
    n_qb, n_kb = -(-q_len // block), -(-kv_len // block)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    keys = torch.rand(n_qb, n_kb, generator=gen, dtype=torch.float64)  # (nqb, nkb)
    chosen = keys.argsort(dim=1, stable=True)[:, : min(num, n_kb)]  # (nqb, num)
    return torch.zeros(n_qb, n_kb, dtype=torch.bool).scatter_(1, chosen, True)


def random_blocks(num: int, block: int, seed: int = 0) -> Mask:
    """BigBird's random attention (Zaheer et al., 2020, "Big Bird: Transformers for Longer
    Sequences"): every query block of ``block`` positions attends ``num`` key blocks chosen
    uniformly without replacement (capped at the number of key blocks).

    Deterministic: the choice is a pure function of ``(seed, Tq, Tk, num, block)`` drawn by a
    CPU ``torch.Generator`` seeded with ``seed``, the same across runs, processes and machines
    (for a given torch version's generator). ``random_blocks(num=1, block=2, seed=0)`` at
    ``Tq = Tk = 6``::

        . . . . x x
        . . . . x x
        . . x x . .
        . . x x . .
        x x . . . .
        x x . . . .

    Raises:
        TypeError / ValueError: ``num`` < 0, ``block`` < 1, or a non-int ``seed``.
    """
    check_int("random_blocks: num", num, 0)
    check_int("random_blocks: block", block, 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"random_blocks: seed must be an int, got {seed!r}")
    return _RandomBlocks(num, block, seed)
