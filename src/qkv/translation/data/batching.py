"""Encoded pairs -> padded batches, in an order that is a pure function of ``(seed, epoch)``.

Shape legend: ``B`` batch, ``S`` longest source in the batch, ``T`` longest target + 1.

Resuming mid-epoch: the batches of an epoch depend only on ``(pairs, batch_size, shuffle,
seed, epoch, sort_within, drop_last)``, never on global random state, so a run that stopped
after ``k`` batches of epoch ``e`` resumes with ``batches(..., epoch=e, start=k)`` and sees
exactly the batches it would have seen (``start`` skips without building tensors).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..._checks import check_int
from ._rng import SeededRandom
from .corpus import Example
from .tokenize import Tokenizer

__all__ = ["Batch", "EncodedPair", "batches", "collate", "encode_pairs", "num_batches", "plan_batches"]

PAD, SOS, EOS = Tokenizer.PAD, Tokenizer.SOS, Tokenizer.EOS


class EncodedPair(NamedTuple):
    """Token ids of one example, without special tokens."""

    src: list[int]
    tgt: list[int]


def encode_pairs(examples: Sequence[Example], src_tok: Tokenizer, tgt_tok: Tokenizer) -> list[EncodedPair]:
    """``EncodedPair(src_tok.encode(e.source), tgt_tok.encode(e.target))`` for each example.

    Raises:
        ValueError: an example whose source encodes to no token (names its position).
    """
    out = []
    for i, e in enumerate(examples):
        src = src_tok.encode(e.source)
        if not src:
            raise ValueError(f"examples[{i}]: expected a source with at least one token, got {e.source!r}")
        out.append(EncodedPair(src, tgt_tok.encode(e.target)))
    return out


@dataclass(frozen=True)
class Batch:
    """A padded batch for teacher forcing.

    Attributes:
        src: ``(B, S)`` long, each source followed by PAD.
        src_lengths: ``(B,)`` long, source lengths (PAD excluded).
        tgt_in: ``(B, T)`` long, ``SOS + target`` then PAD (the decoder's input).
        tgt_out: ``(B, T)`` long, ``target + EOS`` then PAD (what the decoder predicts);
            ``tgt_out[:, t]`` is the token after ``tgt_in[:, t]``.
        tgt_lengths: ``(B,)`` long, ``len(target) + 1``.
        index: ``(B,)`` long, the positions of the examples in ``pairs``.
    """

    src: Tensor
    src_lengths: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    tgt_lengths: Tensor
    index: Tensor

    @property
    def size(self) -> int:
        """``B``."""
        return self.src.shape[0]

    @property
    def num_tokens(self) -> int:
        """Target tokens predicted (EOS included, PAD excluded)."""
        return int(self.tgt_lengths.sum())

    def src_mask(self) -> Tensor:
        """``(B, S)`` bool, True on real source tokens (True = may attend, qkv's convention)."""
        return torch.arange(self.src.shape[1], device=self.src.device) < self.src_lengths[:, None]

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on ``device``."""
        return Batch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def collate(pairs: Sequence[EncodedPair], indices: Sequence[int]) -> Batch:
    """The :class:`Batch` of ``pairs[i] for i in indices`` (see :class:`Batch` for the layout).

    Raises:
        ValueError: no index, an index out of range.
    """
    if not indices:
        raise ValueError("indices: expected at least one index, got none")
    n = len(pairs)
    chosen = []
    for i in indices:
        if not 0 <= i < n:
            raise ValueError(f"indices: expected positions in [0, {n}), got {i}")
        chosen.append(pairs[i])
    s_len = max(len(p[0]) for p in chosen)
    t_len = max(len(p[1]) for p in chosen) + 1
    src = [list(s) + [PAD] * (s_len - len(s)) for s, _ in chosen]
    tgt_in = [[SOS, *t] + [PAD] * (t_len - 1 - len(t)) for _, t in chosen]
    tgt_out = [[*t, EOS] + [PAD] * (t_len - 1 - len(t)) for _, t in chosen]
    return Batch(
        src=torch.tensor(src, dtype=torch.long),  # (B, S)
        src_lengths=torch.tensor([len(s) for s, _ in chosen], dtype=torch.long),  # (B,)
        tgt_in=torch.tensor(tgt_in, dtype=torch.long),  # (B, T)
        tgt_out=torch.tensor(tgt_out, dtype=torch.long),  # (B, T)
        tgt_lengths=torch.tensor([len(t) + 1 for _, t in chosen], dtype=torch.long),  # (B,)
        index=torch.tensor(list(indices), dtype=torch.long),  # (B,)
    )


def num_batches(n_pairs: int, batch_size: int, *, drop_last: bool = False) -> int:
    """How many batches an epoch has (the same with or without shuffling and bucketing)."""
    check_int("batch_size", batch_size, 1)
    return n_pairs // batch_size if drop_last else -(-n_pairs // batch_size)


def plan_batches(
    pairs: Sequence[EncodedPair],
    *,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    sort_within: int | None = None,
    drop_last: bool = False,
) -> list[list[int]]:
    """The positions in ``pairs`` of each batch of one epoch (what :func:`batches` collates).

    1. ``shuffle``: the positions are shuffled with a generator seeded by ``(seed, epoch)``
       only, so the plan is the same on every run and machine.
    2. ``sort_within=k`` (bucketing): consecutive pools of ``k * batch_size`` positions are
       sorted by (source length, target length), stably, and cut into batches, so a batch
       holds examples of similar length (less padding); with ``shuffle`` the batch order is
       then shuffled too. ``None``: batches are consecutive slices.
    3. ``drop_last``: batches smaller than ``batch_size`` are dropped (at most one exists).

    Raises:
        ValueError: ``batch_size < 1``, ``sort_within < 1``, ``epoch < 0``.
    """
    check_int("batch_size", batch_size, 1)
    check_int("epoch", epoch, 0)
    if sort_within is not None:
        check_int("sort_within", sort_within, 1)
    order = list(range(len(pairs)))
    rng = SeededRandom(seed, "batches", epoch)
    if shuffle:
        rng.shuffle(order)
    if sort_within is None:
        plan = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    else:
        pool = sort_within * batch_size
        plan = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start : start + pool], key=lambda i: (len(pairs[i][0]), len(pairs[i][1])))
            plan += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
        if shuffle:
            rng.shuffle(plan)
    if drop_last:
        plan = [b for b in plan if len(b) == batch_size]
    return plan


def batches(
    pairs: Sequence[EncodedPair],
    *,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    sort_within: int | None = None,
    drop_last: bool = False,
    start: int = 0,
) -> Iterator[Batch]:
    """The batches of one epoch: :func:`plan_batches` then :func:`collate`, from batch ``start``.

    A pure function of its arguments: to resume after ``k`` batches of epoch ``e``, call it
    with ``epoch=e, start=k`` (the same as skipping the first ``k`` batches, without building
    them).

    Raises:
        ValueError: as :func:`plan_batches`; ``start < 0``.
    """
    check_int("start", start, 0)
    plan = plan_batches(
        pairs,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        epoch=epoch,
        sort_within=sort_within,
        drop_last=drop_last,
    )
    return (collate(pairs, indices) for indices in plan[start:])
