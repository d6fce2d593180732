"""The numbers corpus: a number written in one language, translated into another.

``numbers_corpus(source="digits", target="en")`` pairs ``"1 2 3 4"`` with ``"one thousand two
hundred and thirty four"``, with the gold alignment of :func:`qkv.number_words.number_alignment`
(the wording, the morphemes and the links are :mod:`qkv.number_words`', shared with the other
applications that write numbers).

Splits
------
Numbers are drawn without replacement: the number of digits uniformly, then the value
uniformly among the numbers with that many digits that are left, so every magnitude is
represented (the small pools run out first). Valid and test numbers never occur in train.
With ``long_from=None`` the splits cover all lengths and ``test_long`` is the subset of test
with the longest sources (:func:`qkv.translation.data.corpus.long_threshold`); with ``long_from=K`` train,
valid and test only have sources shorter than ``K`` tokens and ``test_long`` holds held-out
numbers whose source has ``K`` tokens or more (extrapolation to longer inputs).
"""

from __future__ import annotations

from collections.abc import Iterator

from ...number_words import MAX_VALUE, NUMBER_LANGUAGES, check_language, num2words_version, paired_tokens
from ._rng import RangeDraws, SeededRandom
from .corpus import Corpus, Example, _SplitPlan, generated_splits

__all__ = ["numbers_corpus"]


def _stream(max_value: int, rng: SeededRandom) -> Iterator[int]:
    """Distinct numbers in ``[0, max_value]``: the digit count uniform among the pools left."""
    pools = []
    for d in range(1, len(str(max_value)) + 1):
        lo = 0 if d == 1 else 10 ** (d - 1)
        pools.append(RangeDraws(lo, min(10**d - 1, max_value)))
    while pools:
        i = rng.below(len(pools))
        x = pools[i].draw(rng)
        if pools[i].left == 0:
            pools.pop(i)
        yield x


def numbers_corpus(
    *,
    source: str = "digits",
    target: str = "en",
    size: int = 20_000,
    max_value: int = 999_999,
    seed: int = 0,
    long_from: int | None = None,
    long_size: int | None = None,
    valid_frac: float = 0.05,
    test_frac: float = 0.05,
    long_quantile: float = 0.75,
    name: str | None = None,
) -> Corpus:
    """Numbers written in ``source`` paired with the same numbers in ``target``, with gold alignment.

    Args:
        source, target: languages from :data:`NUMBER_LANGUAGES` (``"digits"``, ``"en"``,
            ``"fr"``, ``"de"``, ``"es"``, ``"pt"``, ``"it"``, ``"nl"``), different from each other.
        size: examples in train + valid + test (distinct numbers).
        max_value: the largest number drawn (numbers are in ``[0, max_value]``, at most
            999 999 999).
        seed: the same seed gives the same corpus on every machine.
        long_from: ``None``: ``test_long`` is the longest part of test (``long_quantile``).
            ``K``: train/valid/test only hold sources of fewer than ``K`` tokens and
            ``test_long`` holds ``long_size`` other numbers whose source has ``K`` or more.
        long_size: size of ``test_long`` when ``long_from`` is set (default: the test size).
        valid_frac, test_frac: fractions of ``size`` held out for valid and test.
        long_quantile: with ``long_from=None``, ``test_long`` keeps at most the longest
            ``1 - long_quantile`` of test (see :func:`qkv.translation.data.corpus.long_threshold`).
        name: the corpus name (default ``"numbers-<source>-<target>"``).

    Returns:
        A :class:`Corpus`; ``meta`` records the arguments, the split sizes,
        ``long_threshold`` (source tokens from which an example is long) and the num2words
        version.

    Raises:
        ValueError: unknown languages, ``source == target``, sizes that do not fit in
            ``[0, max_value]``, a ``long_from`` no number reaches.
        ImportError: num2words is missing (``pip install 'qkv[train]'``).
    """
    for arg, lang in (("source", source), ("target", target)):
        if lang not in NUMBER_LANGUAGES:
            raise ValueError(f"{arg}: expected one of {', '.join(NUMBER_LANGUAGES)}, got {lang!r}")
    if source == target:
        raise ValueError(f"target: expected a language other than the source, got {target!r} twice")
    if isinstance(max_value, bool) or not isinstance(max_value, int) or not 9 <= max_value <= MAX_VALUE:
        raise ValueError(f"max_value: expected an int in [9, {MAX_VALUE}], got {max_value!r}")
    plan = _SplitPlan.make(
        size=size,
        valid_frac=valid_frac,
        test_frac=test_frac,
        long_from=long_from,
        long_size=long_size,
        long_quantile=long_quantile,
    )
    if source == "digits" and plan.long_from is not None and plan.long_from > len(str(max_value)):
        raise ValueError(
            f"long_from={plan.long_from}: expected at most {len(str(max_value))} source tokens, the "
            f"digits of max_value={max_value}"
        )
    if plan.needed > max_value + 1:
        raise ValueError(
            f"size: expected at most {max_value + 1} numbers in [0, {max_value}], asked for {plan.needed}"
        )
    check_language(source, "source")
    check_language(target, "target")

    def make(n: int) -> Example:
        s_tok, t_tok, links = paired_tokens(n, source, target)
        return Example(" ".join(s_tok), " ".join(t_tok), links)

    splits, threshold = generated_splits(
        _stream(max_value, SeededRandom(seed, "numbers", max_value)),
        make,
        plan,
        source_length=lambda n: len(paired_tokens(n, source, source)[0]),
        what=f"the numbers in [0, {max_value}]",
    )
    meta = {
        "generator": "numbers",
        "source": source,
        "target": target,
        "size": size,
        "max_value": max_value,
        "seed": seed,
        "valid_frac": valid_frac,
        "test_frac": test_frac,
        "long_from": long_from,
        "long_size": plan.long_size if long_from is not None else None,
        "long_quantile": long_quantile if long_from is None else None,
        "long_threshold": threshold,
        "sizes": {k: len(v) for k, v in splits.items()},
        "num2words_version": num2words_version(),
    }
    return Corpus(name=name or f"numbers-{source}-{target}", splits=splits, meta=meta)
