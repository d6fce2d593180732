"""One treebank sentence in the viewer (qkv.interpret.syntax_page, qkv.viz._arcs): on the project's
sample with a synthetic attention whose map (layer 1, head 2) points each word at its gold head,
the page's arcs are the gold tree, its relations those of the sentence with their counts, and
each relation's best head is that map at 100%; the arc and best-head checks name what is wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from qkv.interpret.syntax import SyntaxReport
from qkv.interpret.syntax_encode import EncodedSentence
from qkv.interpret.syntax_heads import head_table, relation_results
from qkv.interpret.syntax_page import sentence_view
from qkv.interpret.syntax_predict import head_predictions
from qkv.interpret.treebank import read_conllu
from qkv.viz import render_html

pytest.importorskip("conllu")

SAMPLE = Path(__file__).parent / "data" / "syntax_sample.conllu"
LAYERS, HEADS, LAYER, HEAD = 2, 3, 1, 2
DATA_RE = re.compile(r'<script type="application/json" id="qkv-data">(.*?)</script>', re.S)


def _pointing(sentence, seed: int) -> torch.Tensor:
    """Random word attention (L * H, n, n), except map (LAYER, HEAD): one-hot on each word's gold
    head (the root on itself)."""
    n = len(sentence)
    att = torch.rand(LAYERS * HEADS, n, n, generator=torch.Generator().manual_seed(seed)).softmax(-1)
    target = torch.tensor([h if h >= 0 else i for i, h in enumerate(sentence.heads)])
    att[LAYER * HEADS + HEAD] = torch.nn.functional.one_hot(target, n).float()
    return att


@pytest.fixture(scope="module")
def encoded_and_report():
    sample = read_conllu(SAMPLE)
    encoded = [
        EncodedSentence(s, a, torch.zeros(len(s), 4), head_predictions(a))
        for s, a in ((s, _pointing(s, i)) for i, s in enumerate(sample))
    ]
    relations = relation_results(head_table(encoded), LAYERS, HEADS, bootstrap=50)
    report = SyntaxReport(
        sentences=len(sample),
        words=sum(map(len, sample)),
        skipped_too_long=0,
        skipped_unaligned=0,
        num_layers=LAYERS,
        num_heads=HEADS,
        relations=relations,
        probe=None,
        seconds=0.0,
    )
    return encoded, report


def payload_of(page: str) -> dict:
    return json.loads(DATA_RE.search(page).group(1))


def test_view_of_a_sentence_is_its_gold_tree_and_the_pointing_head(encoded_and_report):
    encoded, report = encoded_and_report
    view = sentence_view(encoded[0], report)  # The cat sat on the mat .
    assert view.words == ("The", "cat", "sat", "on", "the", "mat", ".")
    assert view.arcs == (
        (1, 0, "det"),
        (2, 1, "nsubj"),
        (-1, 2, "root"),
        (5, 3, "case"),
        (5, 4, "det"),
        (2, 5, "obl"),
        (2, 6, "punct"),
    )
    assert view.title == "sample-01: The cat sat on the mat ."
    assert view.attention.shape == (LAYERS, HEADS, 7, 7)
    torch.testing.assert_close(view.attention[LAYER, HEAD], encoded[0].attention[LAYER * HEADS + HEAD])
    # every relation the report measured (the root is not a dependent), best first = RelationResult.best
    assert set(view.best_heads) == {"det", "nsubj", "case", "obl", "punct"}
    for rel, marked in view.best_heads.items():
        assert len(marked) == 3, rel
        layer, head, d, _ = marked[0]
        assert (d, layer, head) == report.relations[rel].best, rel
        assert [m[3] for m in marked] == sorted((m[3] for m in marked), reverse=True), rel
        for layer, head, d, acc in marked:
            assert acc == report.relations[rel].accuracy[d, layer, head], rel
    assert view.best_heads["det"][0] == (LAYER, HEAD, 0, 1.0)
    assert len(sentence_view(encoded[0], report, top=1).best_heads["det"]) == 1


def test_page_payload_carries_arcs_relations_and_best_heads(encoded_and_report):
    encoded, report = encoded_and_report
    view = sentence_view(encoded[0], report, top=2)
    page = render_html(view.attention, list(view.words), arcs=view.arcs, best_heads=view.best_heads)
    p = payload_of(page)
    assert p["arcs"][:2] == [{"head": 1, "dep": 0, "rel": "det"}, {"head": 2, "dep": 1, "rel": "nsubj"}]
    assert len(p["arcs"]) == 7
    assert [(r["name"], r["count"]) for r in p["relations"]] == [
        ("case", 1),
        ("det", 2),
        ("nsubj", 1),
        ("obl", 1),
        ("punct", 1),
        ("root", 1),
    ]
    det = next(r for r in p["relations"] if r["name"] == "det")
    assert det["heads"][0] == {"layer": LAYER, "head": HEAD, "direction": 0, "accuracy": 1.0}
    assert len(det["heads"]) == 2
    assert next(r for r in p["relations"] if r["name"] == "root")["heads"] == []
    assert "arcs" not in payload_of(render_html(view.attention, list(view.words)))  # no tree, no arcs


def test_view_checks_its_inputs(encoded_and_report):
    encoded, report = encoded_and_report
    with pytest.raises(ValueError, match="top: expected a positive int, got 0"):
        sentence_view(encoded[0], report, top=0)
    wrong = EncodedSentence(encoded[0].sentence, encoded[0].attention[:4], None, None)
    with pytest.raises(
        ValueError, match=r"encoded: expected attention of shape \(6, 7, 7\).*got \(4, 7, 7\)"
    ):
        sentence_view(wrong, report)


W = torch.softmax(torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(0)), -1)
ARCS = [(1, 0, "det"), (-1, 1, "root"), (1, 2, "punct")]


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"arcs": [(3, 0, "det")]}, ValueError, r"arcs\[0\] head: expected an int in \[-1, 3\), got 3"),
        ({"arcs": [(1, 1, "det")]}, ValueError, r"arcs\[0\]: a word cannot be its own head"),
        ({"arcs": [(1, 0)]}, ValueError, r"arcs\[0\]: expected \(head, dependent, relation\)"),
        ({"arcs": "det"}, TypeError, "arcs: expected a sequence"),
        (
            {"arcs": ARCS, "best_heads": {"nsubj": [(0, 0, 0, 0.5)]}},
            ValueError,
            "relation 'nsubj' labels no arc; present: det, punct, root",
        ),
        (
            {"arcs": ARCS, "best_heads": {"det": [(2, 0, 0, 0.5)]}},
            ValueError,
            r"best_heads\['det'\]\[0\] layer: expected an int in \[0, 2\)",
        ),
        (
            {"arcs": ARCS, "best_heads": {"det": [(0, 3, 0, 0.5)]}},
            ValueError,
            r"head: expected an int in \[0, 3\)",
        ),
        (
            {"arcs": ARCS, "best_heads": {"det": [(0, 0, 2, 0.5)]}},
            ValueError,
            r"direction: expected an int in \[0, 2\)",
        ),
        (
            {"arcs": ARCS, "best_heads": {"det": [(0, 0, 0, 1.5)]}},
            ValueError,
            r"accuracy in \[0, 1\] or None, got 1.5",
        ),
        ({"arcs": ARCS, "best_heads": [("det", 0)]}, TypeError, "best_heads: expected a mapping"),
        ({"best_heads": {"det": [(0, 0, 0, 0.5)]}}, ValueError, "best_heads: given without arcs"),
    ],
)
def test_bad_arcs_and_best_heads_are_named(kwargs, error, needle):
    with pytest.raises(error, match=needle):
        render_html(W, ["the", "cat", "."], **kwargs)


def test_arcs_need_encoder_attention():
    cross = {"cross": torch.softmax(torch.randn(1, 1, 2, 3), -1)}
    tokens = {"source": ["a", "b", "c"], "target": ["x", "y"]}
    with pytest.raises(ValueError, match=r"arcs: expected encoder self-attention .* got only cross"):
        render_html(cross, tokens, arcs=ARCS)
