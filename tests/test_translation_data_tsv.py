"""qkv.translation.data.load_tsv: malformed lines reported with line numbers, errors name the path, normalization."""

from __future__ import annotations

import json
import os
import re
import unicodedata
import warnings

import pytest

from qkv.translation.data import load_tsv, normalize_text


def write(tmp_path, text: str | bytes, name: str = "pairs.tsv"):
    p = tmp_path / name
    if isinstance(text, str):
        p.write_text(text, encoding="utf-8")
    else:
        p.write_bytes(text)
    return p


GOOD = [f"sentence {i}\tphrase {i}\tCC-BY 2.0 (France) Attribution: tatoeba.org #{i}" for i in range(40)]


def test_malformed_lines_are_skipped_and_reported_with_line_numbers(tmp_path):
    lines = [
        "Hi.\tSalut.",  # 1
        "no tab here",  # 2
        "Run!\tCours !\tattribution",  # 3
        "\tonly a target",  # 4
        "only a source\t",  # 5
        "   ",  # 6 blank: skipped silently
        "Who?\tQui ?",  # 7
        "x\t\u00a0\u202f",  # 8 the target is only Unicode spaces
    ]
    p = write(tmp_path, "\n".join(lines) + "\n")
    with pytest.warns(
        UserWarning, match=r"skipped 4 malformed line\(s\) of '.*pairs.tsv'.*: line 2, 4, 5, 8$"
    ):
        c = load_tsv(p, valid_frac=0.0, test_frac=0.0)
    assert [(e.source, e.target) for e in c["train"]] == [
        ("Hi.", "Salut."),
        ("Run!", "Cours !"),
        ("Who?", "Qui ?"),
    ]
    assert c.meta["malformed"] == 4 and c.meta["malformed_lines"] == [2, 4, 5, 8]
    assert c.meta["blank"] == 1 and c.meta["lines"] == 8
    assert all(e.alignment is None for e in c["train"])
    json.dumps(c.meta)


def test_many_malformed_lines_name_the_first_ten_and_count_the_rest(tmp_path):
    lines = [*GOOD[:5], *(f"bad line {i}" for i in range(25))]
    p = write(tmp_path, "\n".join(lines))
    with pytest.warns(UserWarning, match="skipped 25 malformed") as rec:
        c = load_tsv(p)
    msg = str(rec[0].message)
    assert "skipped 25 malformed" in msg and "line 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 and 15 more" in msg
    assert c.meta["malformed"] == 25 and c.meta["malformed_lines"][:3] == [6, 7, 8]


def test_clean_file_gives_no_warning_bom_and_crlf(tmp_path):
    p = write(tmp_path, b"\xef\xbb\xbf" + "\r\n".join(GOOD).encode("utf-8") + b"\r\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = load_tsv(p)
    every = [e for k in ("train", "valid", "test") for e in c[k]]
    assert len(every) == 40 and c.meta["malformed"] == 0
    assert min(every, key=lambda e: int(e.source.split()[1])).source == "sentence 0"  # no BOM left
    assert all("\r" not in e.target for e in every)


def test_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such file: '.*missing\.tsv'"):
        load_tsv(tmp_path / "missing.tsv")
    with pytest.raises(OSError, match=f"cannot read '{re.escape(str(tmp_path))}'"):
        load_tsv(tmp_path)  # a directory
    with pytest.raises(ValueError, match=r"'.*empty\.tsv' is empty"):
        load_tsv(write(tmp_path, "", "empty.tsv"))
    with pytest.raises(ValueError, match=r"'.*blank\.tsv' is empty"):
        load_tsv(write(tmp_path, "\n  \n\n", "blank.tsv"))
    bad = "\n".join(["a\tb", "c\td", "caf\udce9\tx"]).encode("utf-8", "surrogateescape")  # latin-1 byte
    with pytest.raises(
        ValueError, match=r"'.*latin.tsv' line 3 is not valid UTF-8 \(byte 0xe9 at column 4\)"
    ):
        load_tsv(write(tmp_path, bad, "latin.tsv"))
    with (
        pytest.warns(UserWarning, match="skipped 2 malformed"),
        pytest.raises(ValueError, match=r"'.*junk\.tsv' has no usable pair"),
    ):
        load_tsv(write(tmp_path, "junk\nmore junk\n", "junk.tsv"))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    p = write(tmp_path, "a\tb\n")
    p.chmod(0)
    try:
        with pytest.raises(OSError, match=f"cannot read '{re.escape(str(p))}'"):
            load_tsv(p)
    finally:
        p.chmod(0o644)


def test_normalization_examples():
    assert normalize_text("Hello!", lowercase=True, split_punct=True) == "hello !"
    assert normalize_text("Bonjour\u202f!\u00a0Ça va\t?", split_punct=True) == "Bonjour ! Ça va ?"
    assert normalize_text("«Oui», dit-il.", split_punct=True) == "« Oui » , dit-il ."
    assert normalize_text("I don't know, it's 3.14 or 1,000.", split_punct=True) == (
        "I don't know , it's 3.14 or 1,000 ."
    )
    assert normalize_text("Qu'est-ce que c'est?", split_punct=True) == "Qu'est-ce que c'est ?"
    assert normalize_text("  a \u2009 b\u3000c  ") == "a b c"
    decomposed = "cafe\u0301"
    assert normalize_text(decomposed) == "café" and unicodedata.is_normalized(
        "NFC", normalize_text(decomposed)
    )
    assert normalize_text("A  B", normalize_spaces=False) == "A  B"
    assert normalize_text("ÉTÉ", lowercase=True) == "été"


def test_loader_applies_normalization_and_max_len(tmp_path):
    lines = ["Hello!\tBonjour\u202f!", "How are you?\tComment ça va ?", "One two three four five six\tx"]
    p = write(tmp_path, "\n".join(lines))
    c = load_tsv(p, lowercase=True, split_punct=True, max_len=4, valid_frac=0.0, test_frac=0.0)
    assert [(e.source, e.target) for e in c["train"]] == [
        ("hello !", "bonjour !"),
        ("how are you ?", "comment ça va ?"),
    ]
    assert c.meta["too_long"] == 1
    r = load_tsv(p, reverse=True, valid_frac=0.0, test_frac=0.0)
    assert r["train"][0].source == "Bonjour !" and r["train"][0].target == "Hello!"
    with pytest.raises(ValueError, match="max_len: expected None or an int >= 1, got 0"):
        load_tsv(p, max_len=0)


def test_split_is_seeded_and_keeps_a_source_in_one_split(tmp_path):
    lines = []
    for i in range(60):
        lines += [f"source {i}\ttranslation {i}a", f"source {i}\ttranslation {i}b"]
    lines += ["source 0\ttranslation 0a"]  # an exact duplicate is dropped
    p = write(tmp_path, "\n".join(lines))
    a = load_tsv(p, valid_frac=0.1, test_frac=0.2, seed=1)
    assert a == load_tsv(p, valid_frac=0.1, test_frac=0.2, seed=1)
    assert a["test"] != load_tsv(p, valid_frac=0.1, test_frac=0.2, seed=2)["test"]
    assert a.meta["duplicates"] == 1
    sources = {k: {e.source for e in a[k]} for k in ("train", "valid", "test")}
    assert (len(sources["valid"]), len(sources["test"]), len(sources["train"])) == (6, 12, 42)
    assert not sources["train"] & sources["test"] and not sources["train"] & sources["valid"]
    assert all(len(a[k]) == 2 * len(sources[k]) for k in sources)  # both translations together
    assert set(a["test_long"]) <= set(a["test"])
