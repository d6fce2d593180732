"""Words <-> wordpieces, and word-level attention from wordpiece attention (Clark et al. 2019).

A treebank sentence is given to the tokenizer as its words joined by single spaces
(:func:`sentence_text`); the tokenizer's character offsets then say which word each piece
belongs to (:func:`align_pieces`): a piece belongs to the word whose span its span overlaps.
Pieces with an empty span (``[CLS]``, ``[SEP]``, padding) belong to no word.

Word-level attention (:func:`word_attention`), for pieces ``P_i`` of word ``i``, wordpiece
attention ``A`` (rows: queries):

- as keys, a word's pieces are **summed**; as queries, they are **averaged**:
  ``W[i, j] = mean_{p in P_i} sum_{q in P_j} A[p, q]``;
- ``[CLS]`` and ``[SEP]`` are removed, rows and columns: each remaining row lost the attention
  its pieces paid to them, so each row is divided by its sum and again sums to 1
  (``W[i, j] / sum_j' W[i, j']``). Attention a word pays itself stays in ``W[i, i]``.

Clark et al. sum and average the same way ("mean" mode) and drop ``[CLS]``/``[SEP]`` rows and
columns before taking argmaxes (which the renormalisation leaves unchanged); the renormalised
rows are what the probes read as features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["align_pieces", "pooled_attention", "sentence_text", "word_attention", "word_pooling"]


def sentence_text(words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """The text a sentence is tokenized from (its words joined by single spaces) and each
    word's ``(start, end)`` character span in it."""
    spans, start = [], 0
    for w in words:
        spans.append((start, start + len(w)))
        start += len(w) + 1
    return " ".join(words), spans


def align_pieces(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """For each piece, the index of the word its character span overlaps, or ``-1`` for a
    piece with an empty span (special tokens, padding).

    Args:
        offsets: the pieces' ``(start, end)`` spans in the text (the tokenizer's offsets).
        spans: the words' spans (:func:`sentence_text`).

    Raises:
        ValueError: a word that no piece covers (the text was truncated, or the tokenizer
            dropped the word): the message names the first such word.
    """
    starts = [s for s, _ in spans]
    owner = []
    for start, end in offsets:
        if end <= start:
            owner.append(-1)
            continue
        w = _word_at(starts, start)
        while w + 1 < len(spans) and spans[w][1] <= start:
            w += 1
        owner.append(w)
    covered = set(owner)
    missing = [i for i in range(len(spans)) if i not in covered]
    if missing:
        raise ValueError(f"offsets: no piece covers word {missing[0]} (of {len(spans)} words)")
    return owner


def _word_at(starts: Sequence[int], position: int) -> int:
    """The last word starting at or before ``position`` (binary search)."""
    lo, hi = 0, len(starts) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if starts[mid] <= position:
            lo = mid
        else:
            hi = mid - 1
    return lo


def word_pooling(owner: Sequence[int], n_words: int) -> tuple[Tensor, Tensor]:
    """``(mean, total)``: ``(n_words, T)`` matrices that average (queries) and sum (keys) each
    word's pieces; columns of pieces that belong to no word are zero."""
    t = len(owner)
    total = torch.zeros(n_words, t)
    for p, w in enumerate(owner):
        if w >= 0:
            total[w, p] = 1.0
    mean = total / total.sum(1, keepdim=True).clamp_min(1.0)
    return mean, total


def word_attention(attention: Tensor, owner: Sequence[int], n_words: int) -> Tensor:
    """Word-level attention ``(..., n_words, n_words)`` from wordpiece attention ``(..., T, T)``
    (the module docstring says how): rows are queries, each sums to 1.

    Raises:
        ValueError: ``attention`` not ``(..., T, T)`` with ``T = len(owner)``.
    """
    t = len(owner)
    if attention.dim() < 2 or attention.shape[-2:] != (t, t):
        raise ValueError(f"attention: expected shape (..., {t}, {t}), got {tuple(attention.shape)}")
    mean, total = word_pooling(owner, n_words)
    return pooled_attention(attention, mean.to(attention), total.to(attention))


def pooled_attention(attention: Tensor, mean: Tensor, total: Tensor) -> Tensor:
    """``mean @ attention @ total^T`` with rows renormalised to sum to 1 (rows that are all zero,
    such as padding words, stay zero). ``mean``/``total``: ``(..., n, T)`` from
    :func:`word_pooling`, broadcast against ``attention`` ``(..., T, T)``."""
    w = mean @ attention @ total.transpose(-1, -2)
    return w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
