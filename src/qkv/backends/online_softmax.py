"""The online softmax (Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022): a row's
softmax over keys seen one block at a time, without keeping the row.

For each block of logits ``s (..., rows, bk)`` (``-inf`` where masked)::

    m'  = max(m, rowmax(s));  p = exp(s - m')
    l   = l * exp(m - m') + rowsum(p)              the running sum of exp(s - m)
    acc = acc * exp(m - m') + p @ v_blk            the running weighted sum (when values are given)

and at the end ``lse = m + log(l)``, ``out = acc / l``. Rows that saw no allowed key keep
``l = 0``: their ``lse`` is ``-inf`` and their output 0. Used by the chunked backend (with
values) and by the weights' first pass (log-sum-exp only), both fed by :func:`block_logits`
(one block's masked logits in :func:`compute_dtype`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .base import AttentionInputs

__all__ = ["OnlineSoftmax", "block_logits", "compute_dtype"]


def compute_dtype(t: Tensor) -> torch.dtype:
    """The dtype the running statistics are kept in: float32 for half inputs, else their own."""
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def block_logits(
    inputs: AttentionInputs,
    score_fn: Callable,
    qb: Tensor,
    kb: Tensor,
    bias: Tensor | None,
    keep: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """``(raw, logits)`` of one block: ``raw = score(qb, kb)`` (autograd-connected to its
    inputs) and ``logits = raw * scale + bias`` in :func:`compute_dtype`, ``-inf`` where
    ``keep`` is False: the ``s`` an :meth:`OnlineSoftmax.update` takes."""
    raw = score_fn(qb, kb)  # (..., bq, bk)
    s = raw.to(compute_dtype(qb))
    if inputs.scale != 1.0:
        s = s * inputs.scale
    if bias is not None:
        s = s + bias.to(s.dtype)
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    return raw, s


class OnlineSoftmax:
    """Running max, sum and (optionally) weighted values of rows ``rows_shape``, in ``dtype``.

    Args:
        rows_shape: ``(..., rows)``.
        value_dim: ``Dv`` to accumulate ``softmax @ v`` too; None for the log-sum-exp only.
        acc: a zeroed ``(..., rows, Dv)`` tensor of ``dtype`` to accumulate ``softmax @ v`` in,
            in place (e.g. a view of the output, so the rows need no buffer of their own);
            None: a new one when ``value_dim`` is given.
    """

    def __init__(
        self,
        rows_shape: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device,
        value_dim: int | None = None,
        *,
        acc: Tensor | None = None,
    ) -> None:
        self.m = torch.full(rows_shape, float("-inf"), dtype=dtype, device=device)
        self.l = torch.zeros(rows_shape, dtype=dtype, device=device)
        if acc is None and value_dim is not None:
            acc = torch.zeros((*rows_shape, value_dim), dtype=dtype, device=device)
        self.acc = acc

    def update(self, s: Tensor, value: Tensor | None = None) -> None:
        """Take one block of logits ``s (..., rows, bk)`` (and its values ``(..., bk, Dv)``)."""
        m_new = torch.maximum(self.m, s.amax(-1))
        m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0)  # a row with nothing yet: no shift
        p = torch.exp(s - m_safe.unsqueeze(-1))  # (..., rows, bk)
        corr = torch.exp(self.m - m_safe)
        self.l = self.l * corr + p.sum(-1)
        if self.acc is not None:  # in place: acc * corr + p @ v, the same roundings
            self.acc.mul_(corr.unsqueeze(-1)).add_((p.to(value.dtype) @ value).to(self.acc.dtype))
        self.m = m_new

    def lse(self) -> Tensor:
        """``(..., rows)``: the log-sum-exp of every row, ``-inf`` where nothing was allowed."""
        m_safe = self.m.masked_fill(self.m == float("-inf"), 0.0)
        return (m_safe + torch.log(self.l)).masked_fill(self.l == 0, float("-inf"))

    def out(self, dtype: torch.dtype) -> Tensor:
        """``(..., rows, Dv)``: ``softmax @ v`` of every row, 0 where nothing was allowed; the
        accumulator is divided in place (call once, at the end)."""
        return self.acc.div_(self.l.masked_fill(self.l == 0, 1.0).unsqueeze(-1)).to(dtype)
