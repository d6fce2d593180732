"""qkv.explain: the numbers of the article examples, every score, the JSON form, the cross-check."""

from __future__ import annotations

import json
import math

import pytest
import torch

import qkv.explain as ex
from qkv.explain import (
    SCORE_NAMES,
    explain,
    explain_kernel_regression,
    explain_self_attention,
    explain_seq2seq,
    format_table,
)

F64 = torch.float64


def softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [x / sum(e) for x in e]


# ----------------------------------------------------------------------------- seq2seq (article 000)


def test_seq2seq_default_matches_the_article_numbers():
    e = explain_seq2seq()
    h1, h2, s0 = [1.0, 2.0], [3.0, 4.0], [0.5, 0.5]
    scores = [sum(a * b for a, b in zip(s0, h)) for h in (h1, h2)]
    assert scores == [1.5, 3.5]
    w = [math.exp(1.5) / (math.exp(1.5) + math.exp(3.5)), math.exp(3.5) / (math.exp(1.5) + math.exp(3.5))]
    c = [w[0] * h1[d] + w[1] * h2[d] for d in range(2)]

    assert e.scores.tolist() == scores
    assert e.scaled_scores.tolist() == scores  # dot: scale 1
    assert e.weights.tolist() == pytest.approx(w, abs=1e-12)
    assert e.output.tolist() == pytest.approx(c, abs=1e-12)
    # the rounded numbers the article's example leads to
    assert e.weights.tolist() == pytest.approx([0.1192, 0.8808], abs=1e-4)
    assert e.output.tolist() == pytest.approx([2.7616, 3.7616], abs=1e-4)
    assert e.example == "seq2seq"
    assert e.score == "dot"
    assert e.backend == "reference"
    assert e.max_abs_diff <= 1e-12


def test_seq2seq_output_equals_qkv_attention():
    e = explain_seq2seq()
    q = torch.tensor([[0.5, 0.5]], dtype=F64)
    k = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64)
    r = __import__("qkv").attention(q, k, k, score="dot", backend="reference", need_weights=True)
    torch.testing.assert_close(e.output, r.out[0], rtol=0, atol=1e-15)
    torch.testing.assert_close(e.weights, r.weights[0], rtol=0, atol=1e-15)


def test_steps_are_named_in_order_with_formulas():
    e = explain_seq2seq()
    names = [s.name for s in e.steps]
    assert names == ["query", "keys", "scores", "scaled_scores", "weights", "output"]
    assert all(s.formula for s in e.steps)
    assert torch.equal(e.step("weights").value, e.weights)
    with pytest.raises(KeyError, match="no step named"):
        e.step("nope")


def test_text_layout_shows_formulas_and_numbers():
    text = explain_seq2seq().to_text()
    for needle in ("s0", "h1", "h2", "1.5000", "3.5000", "0.1192", "0.8808", "2.7616", "3.7616", "softmax"):
        assert needle in text
    assert "Step 6." in text
    assert "Check: qkv.attention" in text
    short = explain_seq2seq().to_text(precision=2)
    assert "0.12" in short
    assert "0.1192" not in short


def test_separate_values_and_matrix_query():
    e = explain([[0.5, 0.5], [1.0, 0.0]], [[1, 2], [3, 4]], [[10.0], [20.0]], score="dot")
    assert e.weights.shape == (2, 2)
    assert e.output.shape == (2, 1)
    for i, q in enumerate(([0.5, 0.5], [1.0, 0.0])):
        w = softmax([q[0] * 1 + q[1] * 2, q[0] * 3 + q[1] * 4])
        assert e.weights[i].tolist() == pytest.approx(w, abs=1e-12)
        assert e.output[i, 0].item() == pytest.approx(10 * w[0] + 20 * w[1], abs=1e-12)
    assert [s.name for s in e.steps][:3] == ["query", "keys", "values"]


# ----------------------------------------------------------------------------- every score


def _expected_scores(e) -> list[float]:
    q = e.inputs["query"].tolist()
    keys = e.inputs["keys"].tolist()
    p = e.parameters
    out = []
    for k in keys:
        dot = sum(a * b for a, b in zip(q, k))
        if e.score in ("dot", "scaled_dot"):
            s = dot
        elif e.score == "general":
            W = p["weight"].tolist()
            s = sum(q[i] * W[i][j] * k[j] for i in range(len(q)) for j in range(len(k)))
        elif e.score == "additive":
            wq, wk, v = p["w_query"].tolist(), p["w_key"].tolist(), p["v"].tolist()
            s = sum(
                v[a]
                * math.tanh(
                    sum(wq[a][i] * q[i] for i in range(len(q))) + sum(wk[a][j] * k[j] for j in range(len(k)))
                )
                for a in range(len(v))
            )
        elif e.score == "gaussian":
            s = -sum((a - b) ** 2 for a, b in zip(q, k)) / (2 * p["sigma"] ** 2)
        else:  # cosine
            nq, nk = math.sqrt(sum(a * a for a in q)), math.sqrt(sum(b * b for b in k))
            s = dot / (nq * nk) / p["temperature"]
        out.append(s)
    return out


@pytest.mark.parametrize("score", SCORE_NAMES)
def test_every_score_is_explained_and_checked(score):
    e = explain_seq2seq(score=score, sigma=2.0, temperature=0.5)
    raw = _expected_scores(e)
    assert e.scores.tolist() == pytest.approx(raw, abs=1e-12)
    scale = 1 / math.sqrt(2) if score == "scaled_dot" else 1.0
    assert e.scale == pytest.approx(scale)
    w = softmax([s * scale for s in raw])
    assert e.weights.tolist() == pytest.approx(w, abs=1e-12)
    assert float(e.weights.sum()) == pytest.approx(1.0, abs=1e-12)
    keys = e.inputs["keys"].tolist()
    ctx = [sum(w[j] * keys[j][d] for j in range(2)) for d in range(2)]
    assert e.output.tolist() == pytest.approx(ctx, abs=1e-12)
    json.loads(json.dumps(e.to_dict()))


def test_learned_score_parameters_are_seeded_and_shown():
    a, b, c = (explain_seq2seq(score="general", seed=s) for s in (0, 0, 1))
    torch.testing.assert_close(a.parameters["weight"], b.parameters["weight"])
    assert not torch.equal(a.parameters["weight"], c.parameters["weight"])
    assert a.parameters["weight"].shape == (2, 2)
    assert "W" in [s.name for s in a.steps]
    add = explain_seq2seq(score="additive", hidden=5)
    assert add.parameters["w_query"].shape == (5, 2)
    assert add.parameters["w_key"].shape == (5, 2)
    assert add.parameters["v"].shape == (5,)
    assert {"W_q", "W_k", "v"} <= {s.name for s in add.steps}
    # the printed (one-decimal) parameters are exactly the ones used
    w = a.parameters["weight"]
    torch.testing.assert_close(w, torch.round(w, decimals=1), rtol=0, atol=0)


def test_explicit_scale_overrides_the_default():
    e = explain_seq2seq(score="dot", scale=0.5)
    assert e.scaled_scores.tolist() == [0.75, 1.75]
    assert e.weights.tolist() == pytest.approx(softmax([0.75, 1.75]), abs=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"score": "nope"}, "score: unknown score"),
        ({"keys": [[1, 2, 3]]}, "keys: score 'dot' needs"),
        ({"values": [[1.0], [2.0], [3.0]]}, "values: expected 2 rows"),
        ({"score": "gaussian", "sigma": 0.0}, "sigma"),
        ({"score": "cosine", "temperature": -1.0}, "temperature"),
        ({"score": "additive", "hidden": 0}, "hidden"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        explain_seq2seq(**kwargs)


def test_a_library_mismatch_is_caught_by_the_cross_check(monkeypatch):
    real = ex.attention

    def wrong(*args, **kwargs):
        r = real(*args, **kwargs)
        return type(r)(out=r.out + 1e-3, weights=r.weights, lse=r.lse, backend=r.backend)

    monkeypatch.setattr(ex, "attention", wrong)
    with pytest.raises(RuntimeError, match=r"differ from qkv\.attention"):
        explain_seq2seq()


# ----------------------------------------------------------------------------- kernel regression (001)


def test_kernel_regression_waist_57_gives_45_5():
    e = explain_kernel_regression()
    assert e.weights.tolist() == [0.5, 0.5]
    assert e.output.tolist() == [45.5]
    assert e.example == "kernel_regression"
    assert e.score == "gaussian"


@pytest.mark.parametrize("sigma", [1.0, 2.0, 0.5])
def test_kernel_regression_off_center_query_is_analytic(sigma):
    e = explain_kernel_regression(56.5, sigma=sigma)
    s = [-(0.5**2) / (2 * sigma**2), -(1.5**2) / (2 * sigma**2)]
    w = softmax(s)
    assert e.scores.tolist() == pytest.approx(s, abs=1e-12)
    assert e.weights.tolist() == pytest.approx(w, abs=1e-12)
    assert e.output.item() == pytest.approx(43 * w[0] + 48 * w[1], abs=1e-12)
    if sigma == 1.0:  # 1 / (1 + e^-1) on the nearer waist
        assert e.output.item() == pytest.approx(43 / (1 + math.exp(-1)) + 48 / (1 + math.exp(1)), abs=1e-12)
        assert e.output.item() == pytest.approx(44.3447, abs=1e-4)


def test_kernel_regression_several_queries_and_bad_input():
    e = explain_kernel_regression([56.0, 57.0, 58.0], keys=[56, 58, 60], values=[43, 48, 50])
    assert e.weights.shape == (3, 3)
    assert e.output.shape == (3,)
    assert e.step("differences").value.tolist()[1] == [1.0, -1.0, -3.0]
    with pytest.raises(ValueError, match="values: expected 2 numbers"):
        explain_kernel_regression(57, values=[1, 2, 3])
    with pytest.raises(ValueError, match="sigma"):
        explain_kernel_regression(57, sigma=0)
    with pytest.raises(ValueError, match="keys: expected plain numbers"):
        explain_kernel_regression(57, keys=[[56, 1], [58, 1]])


# ----------------------------------------------------------------------------- self-attention (004)


def test_self_attention_equals_a_hand_computation():
    e = explain_self_attention()
    X = e.step("x").value
    Wq, Wk, Wv = (e.step(n).value for n in ("W_q", "W_k", "W_v"))
    assert X.shape == (3, 4)
    assert Wq.shape == Wk.shape == Wv.shape == (4, 4)
    # integer-valued so the walk-through is readable
    for t in (X, Wq, Wk, Wv):
        assert torch.equal(t, t.round())
    Q, K, V = X @ Wq, X @ Wk, X @ Wv
    scores = Q @ K.T
    A = torch.softmax(scores / math.sqrt(4), dim=-1)
    Z = A @ V
    torch.testing.assert_close(e.step("query").value, Q, rtol=0, atol=0)
    torch.testing.assert_close(e.step("keys").value, K, rtol=0, atol=0)
    torch.testing.assert_close(e.step("values").value, V, rtol=0, atol=0)
    torch.testing.assert_close(e.scores, scores, rtol=0, atol=1e-12)
    torch.testing.assert_close(e.scaled_scores, scores / 2, rtol=0, atol=1e-12)
    torch.testing.assert_close(e.weights, A, rtol=0, atol=1e-12)
    torch.testing.assert_close(e.output, Z, rtol=0, atol=1e-12)
    torch.testing.assert_close(e.weights.sum(-1), torch.ones(3, dtype=F64))
    names = [s.name for s in e.steps]
    assert names == [
        "x",
        "W_q",
        "W_k",
        "W_v",
        "query",
        "keys",
        "values",
        "scores",
        "scaled_scores",
        "weights",
        "output",
    ]
    assert e.scale == 0.5


def test_self_attention_options():
    e = explain_self_attention(tokens=["I", "love", "cats", "!"], d_model=3, d_k=2, seed=5)
    assert e.weights.shape == (4, 4)
    assert e.output.shape == (4, 2)
    assert e.tokens == ("I", "love", "cats", "!")
    assert e.scale == pytest.approx(1 / math.sqrt(2))
    assert "love" in e.to_text()
    assert not torch.equal(explain_self_attention(seed=1).output, explain_self_attention(seed=0).output)
    X = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    given = explain_self_attention(X)
    torch.testing.assert_close(given.step("x").value, X)
    with pytest.raises(ValueError, match="tokens: expected 3 labels"):
        explain_self_attention(torch.ones(3, 2), tokens=["a"])


# ----------------------------------------------------------------------------- JSON and formatting


@pytest.mark.parametrize("make", [explain_seq2seq, explain_self_attention, explain_kernel_regression])
def test_json_has_the_results_and_the_steps(make):
    d = json.loads(json.dumps(make().to_dict(), allow_nan=False))
    for key in ("scores", "scaled_scores", "weights", "output", "steps", "inputs", "score", "check"):
        assert key in d
    for key in ("scores", "weights", "output"):
        flat = torch.tensor(d[key]).flatten().tolist()
        assert all(isinstance(x, float) for x in flat)
    assert {"query", "keys", "values"} <= set(d["inputs"])
    assert all({"name", "formula", "value"} <= set(s) for s in d["steps"])
    assert d["check"]["ok"] is True
    assert [s["name"] for s in d["steps"]][-1] == "output"


def test_json_seq2seq_values_are_plain_lists():
    d = explain_seq2seq().to_dict()
    assert d["scores"] == [1.5, 3.5]
    assert d["weights"] == pytest.approx([0.1192, 0.8808], abs=1e-4)
    assert d["output"] == pytest.approx([2.7616, 3.7616], abs=1e-4)
    assert d["inputs"] == {
        "query": [0.5, 0.5],
        "keys": [[1.0, 2.0], [3.0, 4.0]],
        "values": [[1.0, 2.0], [3.0, 4.0]],
    }


def test_format_table_labels_alignment_and_negative_zero():
    lines = format_table(torch.tensor([[1.0, -0.00001], [-12.5, 2.0]]), ["a", "bb"], ["c1", "c2"], 2)
    # one width for every column, so a matrix reads as a matrix
    assert lines == ["        c1      c2", "a     1.00    0.00", "bb  -12.50    2.00"]
    assert format_table(torch.tensor(45.5)) == ["45.5000"]
    assert format_table(torch.tensor([1.0, 2.0]), None, ["x", "y"], 1) == ["  x    y", "1.0  2.0"]
    with pytest.raises(ValueError, match="at most 2 dims"):
        format_table(torch.zeros(1, 1, 1))


def test_every_score_carries_its_explain_text():
    from qkv.functional.scores import SPECS

    assert tuple(SPECS) == SCORE_NAMES
    for name, spec in SPECS.items():
        assert spec.formula.startswith("e_ij = ") and spec.source, name
        assert {p.name for p in spec.shown} <= set(spec.required + spec.optional), name


def test_a_new_score_is_explained_from_its_spec_alone(monkeypatch):
    """A score added as one ScoreSpec (here ``e_ij = w * q_i . k_j``) is explained with its
    formula, source and seeded parameter, and its numbers equal the hand computation."""
    from qkv.functional import scores

    def weighted(query, key, w):
        return w * (query @ key.transpose(-2, -1))

    spec = scores.ScoreSpec(
        "weighted_dot", weighted, required=("w",), dot_like=False, same_dim=True,
        formula="e_ij = w q_i . k_j", source="a test score",
        shown=(scores.ScoreParameter("w", "w", ("A",)),),
    )  # fmt: skip
    monkeypatch.setitem(scores.SPECS, "weighted_dot", spec)
    e = explain([0.5, 0.5], [[1.0, 2.0], [3.0, 4.0]], score="weighted_dot", hidden=1, seed=3)
    w = e.step("w").value
    assert e.step("scores").formula == "e_ij = w q_i . k_j"
    assert e.step("scores").title == "Scores: a test score"
    expected = [float(w[0]) * 1.5, float(w[0]) * 3.5]
    assert e.scores.tolist() == pytest.approx(expected, abs=1e-12)
    assert e.weights.tolist() == pytest.approx(softmax(expected), abs=1e-12)
