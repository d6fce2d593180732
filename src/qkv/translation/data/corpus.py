"""Parallel examples, corpora and their splits.

An :class:`Example` is one sentence pair, both sides whitespace-tokenized strings, with an
optional gold word alignment. A :class:`Corpus` holds four splits:

    train       training examples
    valid       held-out examples for model selection (disjoint from train)
    test        held-out examples for the final score (disjoint from train and valid)
    test_long   held-out examples with the longest sources (length generalization)

How ``test_long`` is chosen depends on the generator (see :func:`long_threshold` and the
``long_from`` argument of :func:`qkv.translation.data.numbers_corpus`); ``meta["long_threshold"]`` records
the source length (in tokens) from which an example counts as long.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..._checks import check_int

__all__ = ["SPLITS", "Corpus", "Example", "generated_splits", "long_threshold", "split_counts"]

SPLITS = ("train", "valid", "test", "test_long")


@dataclass(frozen=True)
class Example:
    """One sentence pair.

    Attributes:
        source: the source sentence, tokens separated by single spaces for built-in corpora.
        target: the target sentence.
        alignment: gold alignment links ``(i, j)``: source token ``i`` and target token ``j``
            (indices into ``source.split()`` and ``target.split()``) express the same thing;
            sorted, no duplicates. ``None`` where no gold alignment is known (TSV data).
        raw_source, raw_target: the sentences as written, before normalization (TSV data:
            what a user would type, and the text a translation is scored against); ``None``
            when ``source``/``target`` are the text itself (built-in corpora). See
            :attr:`source_text` and :attr:`target_text`.

    Raises:
        TypeError: a side that is not a str.
        ValueError: an alignment link outside the token ranges.
    """

    source: str
    target: str
    alignment: tuple[tuple[int, int], ...] | None = None
    raw_source: str | None = None
    raw_target: str | None = None

    def __post_init__(self) -> None:
        for name in ("source", "target", "raw_source", "raw_target"):
            value = getattr(self, name)
            if not isinstance(value, str) and not (name.startswith("raw_") and value is None):
                raise TypeError(f"Example.{name}: expected a str, got {type(value).__name__}")
        if self.alignment is not None:
            s, t = len(self.source.split()), len(self.target.split())
            for link in self.alignment:
                i, j = link
                if not (0 <= i < s and 0 <= j < t):
                    raise ValueError(
                        f"Example.alignment: link {link} outside the {s} source x {t} target tokens "
                        f"of {self.source!r} -> {self.target!r}"
                    )

    @property
    def source_text(self) -> str:
        """The source as written: ``raw_source``, else ``source``."""
        return self.source if self.raw_source is None else self.raw_source

    @property
    def target_text(self) -> str:
        """The target as written (the reference of BLEU and chrF): ``raw_target``, else ``target``."""
        return self.target if self.raw_target is None else self.raw_target

    @property
    def source_tokens(self) -> list[str]:
        """``source.split()``: the tokens the alignment indexes."""
        return self.source.split()

    @property
    def target_tokens(self) -> list[str]:
        """``target.split()``: the tokens the alignment indexes."""
        return self.target.split()

    def alignment_matrix(self) -> Tensor:
        """The gold alignment as a bool matrix ``(T, S)``: ``[j, i]`` is True for link ``(i, j)``.

        Rows are target tokens and columns source tokens, the layout of a decoder's cross
        attention weights (``Tq`` = target, ``Tk`` = source), so the two can be compared cell
        by cell.

        Raises:
            ValueError: the example has no gold alignment.
        """
        if self.alignment is None:
            raise ValueError("alignment_matrix: this example has no gold alignment (alignment is None)")
        m = torch.zeros(len(self.target.split()), len(self.source.split()), dtype=torch.bool)
        for i, j in self.alignment:
            m[j, i] = True
        return m


@dataclass(frozen=True)
class Corpus:
    """A named parallel corpus: ``splits[name]`` is a list of :class:`Example`.

    Attributes:
        name: the corpus name (``"numbers-de"``, a TSV file's stem...).
        splits: ``{"train": [...], "valid": [...], "test": [...], "test_long": [...]}``.
        meta: JSON-serializable facts: how it was generated or read, the split sizes, the seed,
            ``long_threshold``...

    ``corpus["train"]`` is ``corpus.splits["train"]``; an unknown split name raises a
    ``KeyError`` that lists the valid ones.
    """

    name: str
    splits: dict[str, list[Example]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(
                f"Corpus.splits: expected the keys {', '.join(SPLITS)}, missing {', '.join(missing)}"
            )

    def __getitem__(self, split: str) -> list[Example]:
        try:
            return self.splits[split]
        except KeyError:
            raise KeyError(
                f"corpus {self.name!r} has no split {split!r}; valid splits: {', '.join(self.splits)}"
            ) from None

    def sizes(self) -> dict[str, int]:
        """The number of examples of each split."""
        return {k: len(v) for k, v in self.splits.items()}

    def texts(self, split: str, side: str) -> list[str]:
        """The ``side`` (``"source"`` or ``"target"``) sentences of a split, e.g. to build a tokenizer.

        Build tokenizers on ``texts("train", ...)`` only: valid and test words must stay unseen.

        Raises:
            ValueError: a side other than ``"source"`` or ``"target"``.
            KeyError: an unknown split.
        """
        if side not in ("source", "target"):
            raise ValueError(f"side: expected 'source' or 'target', got {side!r}")
        return [getattr(e, side) for e in self[split]]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes().items())
        return f"Corpus(name={self.name!r}, {sizes})"


def long_threshold(lengths: Sequence[int], quantile: float) -> int:
    """The source length from which an example counts as long, for a ``long_quantile``.

    The smallest length ``t`` such that the examples with ``length >= t`` are at most a
    ``1 - quantile`` fraction of all (ties are never split, so the fraction may be smaller);
    when even the longest length alone is more frequent than that, ``t`` is the longest length,
    so ``test_long`` is never empty. ``quantile=0.75`` keeps at most the longest quarter.

    Raises:
        ValueError: empty ``lengths`` or a quantile outside ``[0, 1)``.
    """
    if not 0.0 <= quantile < 1.0:
        raise ValueError(f"long_quantile: expected a float in [0, 1), got {quantile}")
    if not lengths:
        raise ValueError("lengths: expected at least one length, got none")
    budget = (1.0 - quantile) * len(lengths)
    counts: dict[int, int] = {}
    for n in lengths:
        counts[n] = counts.get(n, 0) + 1
    at_least = 0
    best = max(counts)
    for t in sorted(counts, reverse=True):  # longest first; at_least = #(length >= t)
        at_least += counts[t]
        if at_least > budget + 1e-9:
            break
        best = t
    return best


def _check_frac(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: expected a float in [0, 1), got {value!r}")
    return float(value)


def split_counts(size: int, valid_frac: float, test_frac: float) -> tuple[int, int, int]:
    """``(train, valid, test)`` sizes for ``size`` examples: ``round(size * frac)`` held out each.

    Raises:
        ValueError: fractions outside ``[0, 1)`` or leaving no training example.
    """
    valid_frac = _check_frac("valid_frac", valid_frac)
    test_frac = _check_frac("test_frac", test_frac)
    n_valid, n_test = round(size * valid_frac), round(size * test_frac)
    n_train = size - n_valid - n_test
    if n_train < 1:
        raise ValueError(
            f"valid_frac + test_frac: expected to leave training examples out of {size}, "
            f"got {valid_frac} + {test_frac}"
        )
    return n_train, n_valid, n_test


@dataclass(frozen=True)
class _SplitPlan:
    """The split arguments shared by the generated corpora, checked."""

    size: int
    n_valid: int
    n_test: int
    long_from: int | None
    long_size: int
    long_quantile: float

    @classmethod
    def make(
        cls,
        *,
        size: object,
        valid_frac: object,
        test_frac: object,
        long_from: object,
        long_size: object,
        long_quantile: object,
    ) -> _SplitPlan:
        size = check_int("size", size, 1)
        _, n_valid, n_test = split_counts(size, valid_frac, test_frac)  # type: ignore[arg-type]
        if long_from is not None:
            long_from = check_int("long_from", long_from, 2)
        long_size = max(n_test, 1) if long_size is None else check_int("long_size", long_size, 1)
        quantile = _check_frac("long_quantile", long_quantile)
        return cls(size, n_valid, n_test, long_from, long_size, quantile)  # type: ignore[arg-type]

    @property
    def needed(self) -> int:
        """How many distinct items the splits take at least."""
        return self.size + (self.long_size if self.long_from is not None else 0)


def generated_splits(
    items: Iterator[Any],
    make: Callable[[Any], Example],
    plan: _SplitPlan,
    *,
    source_length: Callable[[Any], int],
    what: str,
) -> tuple[dict[str, list[Example]], int | None]:
    """Fill the four splits from a stream of distinct items in random order.

    ``long_from=None``: the first ``size`` items are dealt to test, valid and train evenly
    along the stream (so a small stratum that the stream exhausts early, such as the ten
    one-digit numbers, is split in proportion rather than held out whole), and
    ``test_long`` is the part of test at or above :func:`long_threshold`. ``long_from=K``:
    items whose source has fewer than ``K`` tokens are dealt the same way; ``long_size``
    others with ``K`` or more fill ``test_long``. Returns the splits and the threshold.

    Raises:
        ValueError: the stream runs out before the splits are full (``what`` names the pool).
    """
    long_examples: list[Example] = []
    if plan.long_from is None:
        chosen = [make(x) for x, _ in zip(items, range(plan.size))]
        if len(chosen) < plan.size:
            raise ValueError(f"size: expected at most {len(chosen)} examples from {what}, got {plan.size}")
    else:
        chosen = []
        for x in items:
            if len(chosen) >= plan.size and len(long_examples) >= plan.long_size:
                break
            n = source_length(x)
            if n < plan.long_from and len(chosen) < plan.size:
                chosen.append(make(x))
            elif n >= plan.long_from and len(long_examples) < plan.long_size:
                long_examples.append(make(x))
        if len(chosen) < plan.size or len(long_examples) < plan.long_size:
            raise ValueError(
                f"long_from={plan.long_from}: {what} give {len(chosen)} examples whose source is shorter "
                f"than {plan.long_from} tokens (size={plan.size} asked) and {len(long_examples)} with "
                f"{plan.long_from} or more (long_size={plan.long_size} asked)"
            )
    test, valid, train = _interleave(chosen, plan.n_test, plan.n_valid)
    threshold: int | None = plan.long_from
    if plan.long_from is None and test:
        threshold = long_threshold([len(e.source.split()) for e in test], plan.long_quantile)
        long_examples = [e for e in test if len(e.source.split()) >= threshold]
    return {"train": train, "valid": valid, "test": test, "test_long": long_examples}, threshold


def _interleave(items: list[Example], n_test: int, n_valid: int) -> tuple[list, list, list]:
    """Deal ``items`` (in stream order) to exactly ``n_test`` test and ``n_valid`` valid
    examples spread evenly along the stream; the rest is train."""
    size = len(items)
    test, rest = [], []
    for i, e in enumerate(items):
        (test if (i + 1) * n_test // size > i * n_test // size else rest).append(e)
    valid, train = [], []
    for j, e in enumerate(rest):
        (valid if (j + 1) * n_valid // len(rest) > j * n_valid // len(rest) else train).append(e)
    return test, valid, train
