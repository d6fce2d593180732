"""qkv.translation.data numbers corpus: num2words round trip, gold alignments by hand, splits, determinism."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

num2words = pytest.importorskip("num2words").num2words

from qkv.number_words import NUMBER_LANGUAGES, number_alignment, number_tokens  # noqa: E402
from qkv.translation.data import builtin, numbers_corpus  # noqa: E402

WORD_LANGS = [lang for lang in NUMBER_LANGUAGES if lang != "digits"]
COMPOUND = {"de", "it", "nl"}


def _value(digits: str) -> int:
    return int(digits.replace(" ", ""))


def _regroup(tokens: list[str], words: list[str]) -> None:
    """Assert that the tokens are the words, each split into consecutive pieces."""
    i = 0
    for w in words:
        acc = ""
        while acc != w:
            assert i < len(tokens) and len(acc) < len(w), (tokens, words)
            acc += tokens[i]
            i += 1
    assert i == len(tokens), (tokens, words)


def _sample_numbers() -> list[int]:
    rng = random.Random(1234)
    return [
        *range(0, 1001),
        *(rng.randrange(10**6) for _ in range(400)),
        *(rng.randrange(10**9) for _ in range(60)),
    ]


@pytest.mark.parametrize("lang", WORD_LANGS)
def test_tokens_are_num2words_output(lang):
    for n in _sample_numbers():
        words = num2words(n, lang=lang).lower().replace("-", " ").replace(",", " ").split()
        tokens = number_tokens(n, lang)
        if lang in COMPOUND:
            _regroup(tokens, words)
        else:
            assert tokens == words, n


def test_german_compounds_are_split_consistently():
    assert number_tokens(34, "de") == ["vier", "und", "dreißig"]
    assert number_tokens(200_000, "de") == ["zwei", "hundert", "tausend"]
    assert number_tokens(1234, "de") == ["ein", "tausend", "zwei", "hundert", "vier", "und", "dreißig"]
    assert number_tokens(17, "de") == ["siebzehn"]  # teens stay one token, like "seventeen"
    assert number_tokens(91, "fr") == ["quatre", "vingt", "onze"]
    assert number_tokens(1234, "digits") == ["1", "2", "3", "4"]


def test_hand_written_alignments():
    # digits "1 2 3 4" <-> "one thousand two hundred and thirty four"
    assert number_alignment(1234, "digits", "en") == ((0, 0), (0, 1), (1, 2), (1, 3), (2, 5), (3, 6))
    # thirty four <-> vier und dreißig: a crossing
    assert number_alignment(34, "en", "de") == ((0, 2), (1, 0))
    assert number_alignment(34, "digits", "de") == ((0, 2), (1, 0))
    # scale words link to the digits they scale, and to each other across languages
    assert number_alignment(34_000, "en", "de") == ((0, 2), (1, 0), (2, 3))
    assert number_alignment(200_000, "digits", "en") == ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2))
    # one word, two roles: "cent" / "doscientos" give the digit and the hundred
    assert number_alignment(100, "en", "fr") == ((0, 0), (1, 0))
    assert number_alignment(200, "digits", "es") == ((0, 0),)
    # quatre vingt onze: one English word to three French ones
    assert number_alignment(91, "en", "fr") == ((0, 0), (0, 1), (0, 2), (1, 2))
    assert number_alignment(80, "digits", "fr") == ((0, 0), (0, 1))
    # connectives stay unaligned
    links = number_alignment(101, "digits", "en")  # one hundred and one
    assert all(j != 2 for _, j in links)


def _crosses(links) -> bool:
    return any((i1 - i2) * (j1 - j2) < 0 for i1, j1 in links for i2, j2 in links)


@pytest.mark.parametrize("lang", WORD_LANGS)
def test_alignment_covers_every_nonzero_digit_and_word(lang):
    for n in _sample_numbers()[::7]:
        links = number_alignment(n, "digits", lang)
        digits, words = number_tokens(n, "digits"), number_tokens(n, lang)
        aligned_digits = {i for i, _ in links}
        aligned_words = {j for _, j in links}
        assert {i for i, d in enumerate(digits) if d != "0" or n == 0} <= aligned_digits, n
        connectives = {"and", "und", "et", "y", "e", "en", "ën"}
        assert {j for j, w in enumerate(words) if w not in connectives} == aligned_words, n


def test_word_to_word_alignment_is_non_monotonic_in_german():
    c = numbers_corpus(source="en", target="de", size=400, seed=3)
    crossing = sum(_crosses(e.alignment) for e in c["train"])
    assert crossing / len(c["train"]) > 0.5
    # English value words follow the digits' order (scale words cover several digits, so
    # they are left out of this check)
    c = numbers_corpus(source="digits", target="en", size=400, seed=3)
    scales = {"hundred", "thousand", "million"}
    for e in c["train"]:
        words = e.target.split()
        assert not _crosses([(i, j) for i, j in e.alignment if words[j] not in scales]), e


def test_generation_is_deterministic_and_seeded():
    a = numbers_corpus(target="de", size=500, seed=7)
    b = numbers_corpus(target="de", size=500, seed=7)
    assert a == b
    assert numbers_corpus(target="de", size=500, seed=8)["train"] != a["train"]
    # the draws depend only on the seed (SHA-256 + Mersenne Twister bits): pinned here so any
    # change of the sampling shows up as a failure
    first = [_value(e.source) for e in numbers_corpus(size=20, seed=0)["train"][:5]]
    assert first == PINNED_SEED0


PINNED_SEED0 = [4, 370, 60_439, 48, 29_394]


def _fingerprint(c) -> str:
    rows = [[e.source, e.target, e.alignment] for k in c.splits for e in c.splits[k]]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def test_same_corpus_in_a_fresh_process_with_another_hash_seed():
    code = (
        "import hashlib, json, qkv.translation.data as d\n"
        "c = d.builtin('numbers-en-de', size=300, seed=5)\n"
        "rows = [[e.source, e.target, e.alignment] for k in c.splits for e in c.splits[k]]\n"
        "print(hashlib.sha256(json.dumps(rows).encode()).hexdigest())\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    hash_seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": src}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == _fingerprint(builtin("numbers-en-de", size=300, seed=5))


def test_splits_are_disjoint_by_number():
    c = numbers_corpus(size=3000, seed=1)
    sets = {k: {_value(e.source) for e in c[k]} for k in ("train", "valid", "test")}
    assert sum(map(len, sets.values())) == 3000  # distinct numbers, no repeats inside a split
    assert not sets["train"] & sets["valid"]
    assert not sets["train"] & sets["test"]
    assert not sets["valid"] & sets["test"]
    assert c.sizes() == {**c.meta["sizes"]}
    assert (len(c["train"]), len(c["valid"]), len(c["test"])) == (2700, 150, 150)
    json.dumps(c.meta)


def test_magnitudes_are_sampled_evenly():
    c = numbers_corpus(size=2000, seed=2)
    numbers = [_value(e.source) for k in ("train", "valid", "test") for e in c[k]]
    by_digits: dict[int, int] = {}
    for n in numbers:
        by_digits[len(str(n))] = by_digits.get(len(str(n)), 0) + 1
    assert by_digits[1] == 10 and by_digits[2] == 90  # the small pools are used up
    expected = (2000 - 100) / 4
    for d in (3, 4, 5, 6):
        assert 0.8 * expected < by_digits[d] < 1.2 * expected, by_digits
    assert max(numbers) <= 999_999


def test_test_long_is_the_longest_part_of_test():
    c = numbers_corpus(source="en", target="fr", size=2000, seed=4)
    t = c.meta["long_threshold"]
    lengths = [len(e.source.split()) for e in c["test"]]
    assert all(len(e.source.split()) >= t for e in c["test_long"])
    assert [e for e in c["test"] if len(e.source.split()) >= t] == c["test_long"]
    assert 0 < len(c["test_long"]) <= 0.25 * len(c["test"])
    # the threshold is the smallest one that keeps at most a quarter
    assert sum(n >= t - 1 for n in lengths) > 0.25 * len(lengths)


def test_long_from_holds_out_longer_sources():
    c = numbers_corpus(source="digits", target="de", size=1000, long_from=5, long_size=120, seed=0)
    for split in ("train", "valid", "test"):
        assert all(len(e.source.split()) < 5 for e in c[split])
    assert len(c["test_long"]) == 120
    assert all(len(e.source.split()) >= 5 for e in c["test_long"])
    held = {_value(e.source) for e in c["test_long"]}
    seen = {_value(e.source) for k in ("train", "valid", "test") for e in c[k]}
    assert not held & seen
    assert c.meta["long_threshold"] == 5 and c.meta["long_from"] == 5
    # words as the source: the length counts words
    c = numbers_corpus(source="en", target="digits", size=300, long_from=8, seed=0)
    assert (
        max(len(e.source.split()) for e in c["train"])
        < 8
        <= min(len(e.source.split()) for e in c["test_long"])
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"source: expected one of digits, en, .*got 'xx'"):
        numbers_corpus(source="xx")
    with pytest.raises(ValueError, match="target: expected a language other than the source"):
        numbers_corpus(source="en", target="en")
    with pytest.raises(ValueError, match="size: expected at most 100 numbers"):
        numbers_corpus(size=101, max_value=99)
    with pytest.raises(ValueError, match="long_from=7"):
        numbers_corpus(size=100, long_from=7)  # no number below a million has 7 digits
    with pytest.raises(ValueError, match=r"valid_frac: expected a float in \[0, 1\)"):
        numbers_corpus(size=100, valid_frac=1.5)
    with pytest.raises(ValueError, match="max_value"):
        numbers_corpus(max_value=10**9)
    with pytest.raises(ValueError, match="n: expected an int in"):
        number_tokens(-1, "en")
    with pytest.raises(ValueError, match="language: expected one of"):
        number_tokens(5, "klingon")


def test_small_strata_are_split_in_proportion_not_held_out_whole():
    """The ten one-digit numbers come early in the stream: most must reach train."""
    c = numbers_corpus(target="de", size=6000, max_value=999_999_999, seed=0)
    by_len = {}
    for split in ("train", "valid", "test"):
        for e in c[split]:
            by_len.setdefault(len(e.source.split()), {}).setdefault(split, 0)
            by_len[len(e.source.split())][split] += 1
    for n in range(1, 10):
        counts = by_len[n]
        total = sum(counts.values())
        assert counts.get("train", 0) >= 0.75 * total, (n, counts)
