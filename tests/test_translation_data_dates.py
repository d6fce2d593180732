"""qkv.translation.data dates corpus: babel round trip, gold alignment by hand, splits, determinism."""

from __future__ import annotations

import datetime as dt
import json

import pytest

bdates = pytest.importorskip("babel.dates")

from qkv.translation.data import date_example, dates_corpus  # noqa: E402


def _iso(e) -> dt.date:
    return dt.date.fromisoformat(e.target.replace(" ", ""))


def test_hand_written_examples():
    e = date_example(dt.date(2024, 3, 15), locale="fr")
    assert e.source == "1 5 mars 2 0 2 4"
    assert e.target == "2 0 2 4 - 0 3 - 1 5"
    # day digits -> ISO day, month name -> both month characters, year digit by digit
    assert e.alignment == ((0, 8), (1, 9), (2, 5), (2, 6), (3, 0), (4, 1), (5, 2), (6, 3))

    e = date_example(dt.date(2024, 3, 5), locale="de")
    assert e.source == "5 . März 2 0 2 4"
    # a one-digit day gives the ISO padding zero too; the dot stays unaligned
    assert e.alignment == ((0, 8), (0, 9), (2, 5), (2, 6), (3, 0), (4, 1), (5, 2), (6, 3))

    e = date_example(dt.date(1987, 1, 28), locale="es", fmt="full")
    assert e.source == "miércoles , 2 8 de enero de 1 9 8 7"
    assert {i for i, _ in e.alignment} == {2, 3, 5, 7, 8, 9, 10}  # no weekday, comma or "de"

    e = date_example(dt.date(2024, 3, 15), locale="en")
    assert e.source == "March 1 5 , 2 0 2 4"
    links = e.alignment
    assert any((i1 - i2) * (j1 - j2) < 0 for i1, j1 in links for i2, j2 in links)  # month-day swap


@pytest.mark.parametrize("locale", ["fr", "de", "es", "en", "it", "pt", "nl"])
@pytest.mark.parametrize("fmt", ["long", "full"])
def test_source_is_babels_text(locale, fmt):
    c = dates_corpus(locale=locale, size=60, formats=(fmt,), seed=1)
    for e in c["train"]:
        d = _iso(e)
        written = bdates.format_date(d, fmt, locale=locale)
        assert e.source.replace(" ", "") == "".join(written.split())
        # a digit is linked to the ISO digit it becomes (or to a padding zero), a word to the
        # month; every ISO digit is linked, no dash is
        src, tgt = e.source.split(), e.target.split()
        for i, j in e.alignment:
            assert tgt[j] in (src[i], "0") if src[i].isdigit() else j in (5, 6)
        assert {j for _, j in e.alignment} == {0, 1, 2, 3, 5, 6, 8, 9}


def test_deterministic_disjoint_and_within_range():
    a = dates_corpus(locale="de", size=600, seed=3, start="1990-01-01", end="2010-12-31")
    assert a == dates_corpus(locale="de", size=600, seed=3, start="1990-01-01", end="2010-12-31")
    assert (
        a["train"]
        != dates_corpus(locale="de", size=600, seed=4, start="1990-01-01", end="2010-12-31")["train"]
    )
    days = {k: {_iso(e) for e in a[k]} for k in ("train", "valid", "test")}
    assert sum(map(len, days.values())) == 600
    assert not days["train"] & days["test"] and not days["train"] & days["valid"]
    everything = set().union(*days.values())
    assert min(everything) >= dt.date(1990, 1, 1) and max(everything) <= dt.date(2010, 12, 31)
    json.dumps(a.meta)
    assert a.meta["patterns"] == {"long": "d. MMMM y"}


def test_long_splits():
    c = dates_corpus(locale="de", size=800, formats=("long", "full"), seed=0)
    t = c.meta["long_threshold"]
    assert c["test_long"] == [e for e in c["test"] if len(e.source.split()) >= t]
    assert c["test_long"]
    c = dates_corpus(locale="fr", size=300, long_from=7, seed=0)
    assert all(len(e.source.split()) < 7 for k in ("train", "valid", "test") for e in c[k])
    assert all(len(e.source.split()) >= 7 for e in c["test_long"])
    assert not {_iso(e) for e in c["test_long"]} & {_iso(e) for e in c["train"]}


def test_bad_arguments():
    with pytest.raises(ValueError, match="locale: expected a locale babel knows"):
        dates_corpus(locale="xx_YY")
    with pytest.raises(ValueError, match="formats: expected"):
        dates_corpus(formats=("longest",))
    with pytest.raises(ValueError, match="end: expected a date on or after start"):
        dates_corpus(start="2000-01-01", end="1999-01-01")
    with pytest.raises(ValueError, match="size: expected at most 31 dates"):
        dates_corpus(size=40, start="2000-01-01", end="2000-01-31")
    with pytest.raises(ValueError, match=r"start: expected a datetime\.date or an ISO date"):
        dates_corpus(start="yesterday")
