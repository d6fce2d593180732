"""The dates corpus: a date as a locale writes it, translated to ISO 8601.

``dates_corpus(locale="fr")`` pairs ``"1 5 mars 2 0 2 4"`` (babel's ``format_date(d,
"long", locale="fr")``, "15 mars 2024", tokenized) with ``"2 0 2 4 - 0 3 - 1 5"``. Digits are
single tokens on both sides, so a model can copy them; words and punctuation are tokens of their
own (``"15. März 2024"`` -> ``"1 5 . März 2 0 2 4"``). Needs babel (``pip install 'qkv[train]'``).

Gold alignment: each digit of the day, month and year is linked to the ISO character it
becomes (right-aligned; a single-digit day or month is also linked to the ISO padding zero
before it), and a month name to both ISO month characters. Weekdays, connectives ("de") and
punctuation stay unaligned, and so do the ISO dashes::

            2 0 2 4 - 0 3 - 1 5
    1       . . . . . . . . x .
    5       . . . . . . . . . x
    mars    . . . . . x x . . .
    2 0 2 4 (diagonal onto 2 0 2 4)
"""

from __future__ import annotations

import datetime as dt
import functools
import unicodedata
from collections.abc import Iterator, Sequence

from ._rng import RangeDraws, SeededRandom
from .corpus import Corpus, Example, _SplitPlan, generated_splits

__all__ = ["date_example", "dates_corpus"]

_EXTRA = "pip install 'qkv[train]'"
_FORMATS = ("short", "medium", "long", "full")
# ISO character positions of each part in "YYYY-MM-DD"
_ISO = {"y": range(0, 4), "M": range(5, 7), "d": range(8, 10)}
# pattern letters whose value depends only on one part of the date (the cache key)
_KEY = {"d": "day", "M": "month", "L": "month", "y": "year", "E": "weekday", "c": "weekday", "e": "weekday"}
_JOINERS = "'’-"  # kept inside a word: "sexta-feira", "d'avril"


def _require_babel():
    try:
        import babel.dates
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"the dates corpus needs babel: {_EXTRA}") from e
    return babel.dates


def _pattern_parts(pattern: str) -> list[tuple[bool, str]]:
    """A CLDR date pattern as ``(is_field, text)`` parts: ``"d 'de' MMMM"`` -> d, " de ", MMMM.

    Letters are fields (a run of one letter is one field); text in single quotes is literal,
    ``''`` is a literal quote.
    """
    parts: list[tuple[bool, str]] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "'":
            if pattern.startswith("''", i):
                parts.append((False, "'"))
                i += 2
                continue
            j, text = i + 1, []
            while j < n:
                if pattern.startswith("''", j):
                    text.append("'")
                    j += 2
                elif pattern[j] == "'":
                    break
                else:
                    text.append(pattern[j])
                    j += 1
            parts.append((False, "".join(text)))
            i = j + 1
        elif c.isascii() and c.isalpha():
            j = i
            while j < n and pattern[j] == c:
                j += 1
            parts.append((True, pattern[i:j]))
            i = j
        else:
            parts.append((False, c))
            i += 1
    merged: list[tuple[bool, str]] = []  # consecutive literals as one text
    for part in parts:
        if merged and not part[0] and not merged[-1][0]:
            merged[-1] = (False, merged[-1][1] + part[1])
        else:
            merged.append(part)
    return merged


def _tokens(text: str) -> list[str]:
    """Digits one by one, words (letters and their combining marks), each other symbol alone.

    Invisible format characters (right-to-left marks...) and spaces are dropped.
    """
    out: list[str] = []
    word: list[str] = []
    for i, c in enumerate(text):
        cat = unicodedata.category(c)
        if cat[0] in "LM" or (
            c in _JOINERS and word and i + 1 < len(text) and unicodedata.category(text[i + 1])[0] == "L"
        ):
            word.append(c)
            continue
        if word:
            out.append("".join(word))
            word = []
        if c.isspace() or cat == "Cf":
            continue
        out.append(c)
    if word:
        out.append("".join(word))
    return out


class _Writer:
    """Formats dates of one locale and format field by field, caching each field's value."""

    def __init__(self, locale: str, fmt: str) -> None:
        bdates = _require_babel()
        self.locale, self.fmt = locale, fmt
        self.pattern = bdates.get_date_format(fmt, locale=locale).pattern
        self.parts = _pattern_parts(self.pattern)
        self._format = bdates.format_date
        self._cache: dict[tuple[str, object], str] = {}

    def field(self, d: dt.date, field: str) -> str:
        kind = _KEY.get(field[0])
        key: object = d if kind is None else (d.weekday() if kind == "weekday" else getattr(d, kind))
        value = self._cache.get((field, key))
        if value is None:
            value = self._cache[(field, key)] = self._format(d, format=field, locale=self.locale)
        return value

    def example(self, d: dt.date) -> Example:
        src: list[str] = []
        links: list[tuple[int, int]] = []
        written = []
        for is_field, text in self.parts:
            value = self.field(d, text) if is_field else text
            written.append(value)
            toks = _tokens(value)
            part = text[0] if is_field else None
            if part == "L":
                part = "M"
            iso = _ISO.get(part) if part is not None else None
            if iso is not None:
                first = len(src)
                if all(t.isdigit() for t in toks):  # numeric field: right-aligned digit by digit
                    width = len(iso)
                    shift = width - len(toks)
                    for k in range(len(toks)):
                        links.append((first + k, iso[shift + k]))
                    if toks and shift > 0 and not (part == "y" and len(text) == 2):
                        links += [(first, iso[k]) for k in range(shift)]  # the padding zeros
                else:  # a month name: each of its words gives the whole month
                    words = [k for k, t in enumerate(toks) if any(c.isalnum() for c in t)]
                    links += [(first + k, j) for k in words for j in iso]
            src += toks
        full = self._format(d, format=self.fmt, locale=self.locale)
        if "".join(written) != full:
            raise RuntimeError(
                f"dates: babel writes {d.isoformat()} as {full!r} in {self.locale!r} {self.fmt!r} but its "
                f"fields give {''.join(written)!r}"
            )
        target = " ".join(f"{d.year:04d}-{d.month:02d}-{d.day:02d}")
        return Example(" ".join(src), target, tuple(sorted(set(links))))


@functools.lru_cache(maxsize=64)
def _writer(locale: str, fmt: str) -> _Writer:
    return _Writer(locale, fmt)


def _check_locale(locale: object) -> str:
    _require_babel()
    from babel import Locale, UnknownLocaleError

    if not isinstance(locale, str):
        raise TypeError(f"locale: expected a str such as 'fr', got {type(locale).__name__}")
    try:
        Locale.parse(locale)
    except (UnknownLocaleError, ValueError) as e:
        raise ValueError(
            f"locale: expected a locale babel knows ('fr', 'de_AT'...), got {locale!r} ({e})"
        ) from None
    return locale


def date_example(d: dt.date, *, locale: str = "fr", fmt: str = "long") -> Example:
    """One example of the dates corpus: ``d`` written by ``locale`` -> ISO characters.

    >>> date_example(dt.date(2024, 3, 15), locale="de").source
    '1 5 . März 2 0 2 4'

    Raises:
        ValueError: an unknown locale or format.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"fmt: expected one of {', '.join(_FORMATS)}, got {fmt!r}")
    return _writer(_check_locale(locale), fmt).example(d)


def _as_date(name: str, value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"{name}: expected a datetime.date or an ISO date 'YYYY-MM-DD', got {value!r}")


def _date_range(start: object, end: object) -> tuple[dt.date, dt.date]:
    """``(first, last)`` of the corpus's ``start`` and ``end``, or a ValueError naming the one
    that is not a date (or ``end`` before ``start``)."""
    first, last = _as_date("start", start), _as_date("end", end)
    if last < first:
        raise ValueError(
            f"end: expected a date on or after start {first.isoformat()}, got {last.isoformat()}"
        )
    return first, last


def _check_formats(formats: object) -> tuple[str, ...]:
    """``formats`` (one name or a sequence of them) as a non-empty tuple of babel formats."""
    if isinstance(formats, str):
        formats = (formats,)
    formats = tuple(formats)
    if not formats or any(f not in _FORMATS for f in formats):
        raise ValueError(f"formats: expected a non-empty sequence of {', '.join(_FORMATS)}, got {formats!r}")
    return formats


def _days(first: dt.date, last: dt.date, rng: SeededRandom) -> Iterator[dt.date]:
    pool = RangeDraws(first.toordinal(), last.toordinal())
    while pool.left:
        yield dt.date.fromordinal(pool.draw(rng))


def _written_days(
    first: dt.date, last: dt.date, writers: list[_Writer], rng: SeededRandom
) -> Iterator[tuple[dt.date, _Writer]]:
    """Every day of ``[first, last]`` in a random order (without replacement), each with a
    writer drawn uniformly (no draw for a single writer): the corpus's items, from one ``rng``."""
    for d in _days(first, last, rng):
        yield d, writers[rng.below(len(writers))] if len(writers) > 1 else writers[0]


def dates_corpus(
    *,
    locale: str = "fr",
    size: int = 20_000,
    seed: int = 0,
    start: dt.date | str = "1900-01-01",
    end: dt.date | str = "2099-12-31",
    formats: Sequence[str] = ("long",),
    long_from: int | None = None,
    long_size: int | None = None,
    valid_frac: float = 0.05,
    test_frac: float = 0.05,
    long_quantile: float = 0.75,
    name: str | None = None,
) -> Corpus:
    """Dates written by ``locale`` (babel's ``format_date``) paired with ISO ``"Y Y Y Y - M M - D D"``.

    Args:
        locale: a babel locale (``"fr"``, ``"de"``, ``"es"``, ``"en"``, ``"pt_BR"``...).
        size: examples in train + valid + test (distinct dates).
        seed: the same seed gives the same corpus on every machine.
        start, end: the dates are drawn uniformly without replacement from ``[start, end]``.
        formats: babel formats (``"long"``, ``"full"``, ``"medium"``, ``"short"``); each date
            gets one of them uniformly at random. ``("long", "full")`` adds weekdays and
            varies the lengths more.
        long_from, long_size, valid_frac, test_frac, long_quantile: the splits, as in
            :func:`qkv.translation.data.numbers_corpus`.
        name: the corpus name (default ``"dates-<locale>"``).

    Returns:
        A :class:`Corpus`; ``meta`` records the arguments, sizes, ``long_threshold`` and the
        babel version.

    Raises:
        ValueError: unknown locale or format, ``end`` before ``start``, years outside
            1..9999, more dates asked than ``[start, end]`` holds.
        ImportError: babel is missing (``pip install 'qkv[train]'``).
    """
    _check_locale(locale)
    first, last = _date_range(start, end)
    formats = _check_formats(formats)
    plan = _SplitPlan.make(
        size=size,
        valid_frac=valid_frac,
        test_frac=test_frac,
        long_from=long_from,
        long_size=long_size,
        long_quantile=long_quantile,
    )
    ndays = last.toordinal() - first.toordinal() + 1
    if plan.needed > ndays:
        raise ValueError(
            f"size: expected at most {ndays} dates from {first.isoformat()} to {last.isoformat()}, "
            f"asked for {plan.needed}"
        )
    writers = [_writer(locale, f) for f in formats]
    rng = SeededRandom(seed, "dates", locale, first.isoformat(), last.isoformat(), *formats)

    def make(item: tuple[dt.date, _Writer]) -> Example:
        d, writer = item
        return writer.example(d)

    splits, threshold = generated_splits(
        _written_days(first, last, writers, rng),
        make,
        plan,
        source_length=lambda item: len(make(item).source.split()),
        what=f"the dates from {first.isoformat()} to {last.isoformat()}",
    )
    import babel

    meta = {
        "generator": "dates",
        "locale": locale,
        "formats": list(formats),
        "patterns": {w.fmt: w.pattern for w in writers},
        "start": first.isoformat(),
        "end": last.isoformat(),
        "size": size,
        "seed": seed,
        "valid_frac": valid_frac,
        "test_frac": test_frac,
        "long_from": long_from,
        "long_size": plan.long_size if long_from is not None else None,
        "long_quantile": long_quantile if long_from is None else None,
        "long_threshold": threshold,
        "sizes": {k: len(v) for k, v in splits.items()},
        "babel_version": babel.__version__,
    }
    return Corpus(name=name or f"dates-{locale}", splits=splits, meta=meta)
