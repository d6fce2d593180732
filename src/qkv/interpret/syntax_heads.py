"""Which attention heads find syntactic heads (Clark et al. 2019, section 4.2).

For every word that is not the root, every layer x head, the two predictions of its head word
of :mod:`qkv.interpret.syntax_predict` (direction 0: the word it attends to most; 1: the word
that attends to it most) are right or wrong (:func:`head_table`).

Per relation (:func:`relation_results`): the accuracy of each (direction, layer, head), the best
one, and the best fixed-offset baseline (always predict the word at offset ``k`` from the
dependent; the best ``k`` is the relation's most frequent offset, so the baseline is an upper
bound of every fixed offset); a sentence-level bootstrap gives 95% percentile intervals of the
best head's accuracy and of its gain over the baseline, reproducible by seed (the head is chosen
once on all the data, then resampled).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .syntax_encode import EncodedSentence

__all__ = ["HeadTable", "RelationResult", "head_table", "relation_results"]


@dataclass(frozen=True)
class HeadTable:
    """Every non-root word of the analysed sentences, flattened.

    Attributes:
        sentence: ``(N,)`` the word's sentence (0-based among the analysed sentences).
        relation: ``(N,)`` its relation (object array of str).
        offset: ``(N,)`` its head's position minus its own.
        correct: ``(2, K, N)`` bool, whether each direction x map predicts its head.
    """

    sentence: np.ndarray
    relation: np.ndarray
    offset: np.ndarray
    correct: np.ndarray


def head_table(encoded: Sequence[EncodedSentence]) -> HeadTable:
    """The :class:`HeadTable` of encoded sentences."""
    sent, rel, off, correct = [], [], [], []
    for s, e in enumerate(encoded):
        heads = torch.tensor(e.sentence.heads)
        keep = heads >= 0
        correct.append((e.predictions == heads)[:, :, keep].numpy())
        positions = torch.arange(len(heads))
        off.append((heads - positions)[keep].numpy())
        rel.extend(r for r, h in zip(e.sentence.relations, e.sentence.heads) if h >= 0)
        sent.append(np.full(int(keep.sum()), s))
    return HeadTable(
        sentence=np.concatenate(sent) if sent else np.zeros(0, int),
        relation=np.array(rel, dtype=object),
        offset=np.concatenate(off) if off else np.zeros(0, int),
        correct=np.concatenate(correct, -1) if correct else np.zeros((2, 0, 0), bool),
    )


@dataclass(frozen=True)
class RelationResult:
    """One relation's best head against its best fixed offset (fractions in [0, 1]).

    Attributes:
        n: dependents with this relation.
        accuracy: ``(2, L, H)`` accuracy of every direction x layer x head.
        best: ``(direction, layer, head)`` of the best (0-based).
        best_accuracy, baseline_offset, baseline_accuracy: the best head's accuracy, the best
            offset and its accuracy.
        ci, gain_ci: 95% bootstrap intervals of ``best_accuracy`` and of
            ``best_accuracy - baseline_accuracy``.
    """

    n: int
    accuracy: np.ndarray
    best: tuple[int, int, int]
    best_accuracy: float
    baseline_offset: int
    baseline_accuracy: float
    ci: tuple[float, float]
    gain_ci: tuple[float, float]


def relation_results(
    table: HeadTable,
    num_layers: int,
    num_heads: int,
    *,
    relations: Sequence[str] | None = None,
    min_count: int = 1,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, RelationResult]:
    """Per relation (sorted by name), the :class:`RelationResult`.

    Args:
        table: :func:`head_table`.
        relations: the relations to report (default: every relation of the table with at least
            ``min_count`` dependents).
        bootstrap: resamples of the sentences; seed: the generator's seed (same seed, same
            intervals).

    Raises:
        ValueError: a requested relation absent from the data (the present ones are listed);
            ``bootstrap`` or ``min_count`` not a positive int.
    """
    for name, value in (("bootstrap", bootstrap), ("min_count", min_count)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    present = sorted(set(table.relation.tolist()))
    if relations is None:
        counts = {r: int((table.relation == r).sum()) for r in present}
        chosen = [r for r in present if counts[r] >= min_count]
    else:
        missing = [r for r in relations if r not in present]
        if missing:
            raise ValueError(
                f"relations: {', '.join(map(repr, missing))} not in the data; present: {', '.join(present)}"
            )
        chosen = sorted(set(relations))
    rng = np.random.default_rng(seed)
    return {r: _relation(table, r, num_layers, num_heads, bootstrap, rng) for r in chosen}


def _relation(table: HeadTable, rel: str, layers: int, heads: int, draws: int, rng) -> RelationResult:
    mask = table.relation == rel
    correct = table.correct[:, :, mask]  # (2, K, n)
    accuracy = correct.mean(-1).reshape(2, layers, heads)
    d, layer, head = (int(x) for x in np.unravel_index(int(accuracy.argmax()), accuracy.shape))
    offsets, counts = np.unique(table.offset[mask], return_counts=True)
    base = int(offsets[counts.argmax()])
    hit = correct[d, layer * heads + head].astype(float)
    base_hit = (table.offset[mask] == base).astype(float)
    ci, gain_ci = _bootstrap(table.sentence[mask], hit, base_hit, draws, rng)
    return RelationResult(
        n=int(mask.sum()),
        accuracy=accuracy,
        best=(d, layer, head),
        best_accuracy=float(hit.mean()),
        baseline_offset=base,
        baseline_accuracy=float(base_hit.mean()),
        ci=ci,
        gain_ci=gain_ci,
    )


def _bootstrap(sentence: np.ndarray, hit: np.ndarray, base_hit: np.ndarray, draws: int, rng):
    """Sentence-level percentile intervals of ``mean(hit)`` and ``mean(hit - base_hit)``."""
    _, s = np.unique(sentence, return_inverse=True)
    n_s = np.bincount(s).astype(float)
    hit_s, base_s = np.bincount(s, weights=hit), np.bincount(s, weights=base_hit)
    weights = rng.multinomial(len(n_s), np.full(len(n_s), 1.0 / len(n_s)), size=draws).astype(float)
    total = weights @ n_s
    acc, gain = (weights @ hit_s) / total, (weights @ (hit_s - base_s)) / total
    lo, hi = np.percentile(acc, [2.5, 97.5])
    glo, ghi = np.percentile(gain, [2.5, 97.5])
    return (float(lo), float(hi)), (float(glo), float(ghi))
