"""AdditiveAttention, DotProductAttention, LuongAttention: d2l shapes, float64 formulas, masks."""

from __future__ import annotations

import math

import pytest
import torch

from qkv.modules import AdditiveAttention, DotProductAttention, LuongAttention

F64 = torch.float64


def softmax_rows_with_lengths(logits, valid_lens):
    """Explicit per-row masked softmax: (B, Tq, Tk) logits, lens (B,) or (B, Tq); empty rows -> 0."""
    b, tq, tk = logits.shape
    w = torch.zeros_like(logits)
    for i in range(b):
        for j in range(tq):
            n = (
                tk
                if valid_lens is None
                else int(valid_lens[i] if valid_lens.dim() == 1 else valid_lens[i, j])
            )
            if n == 0:
                continue
            e = torch.exp(logits[i, j, :n] - logits[i, j, :n].max())
            w[i, j, :n] = e / e.sum()
    return w


def test_additive_d2l_example_shapes_and_formula():
    # d2l 11.3: queries (2, 1, 20), keys (2, 10, 2), values (2, 10, 4), valid_lens [2, 6]
    att = AdditiveAttention(query_dim=20, key_dim=2, hidden_dim=8).double().eval()
    queries = torch.normal(0, 1, (2, 1, 20), dtype=F64)
    keys = torch.normal(0, 1, (2, 10, 2), dtype=F64)
    values = torch.arange(40, dtype=F64).reshape(1, 10, 4).repeat(2, 1, 1)
    valid_lens = torch.tensor([2, 6])
    res = att(queries, keys, values, valid_lens=valid_lens, need_weights=True)
    assert res.out.shape == (2, 1, 4)
    assert res.weights.shape == (2, 1, 10)
    s = att.score
    feats = torch.tanh(
        torch.einsum("ad,bqd->bqa", s.w_query.weight, queries)[:, :, None]
        + torch.einsum("ad,bkd->bka", s.w_key.weight, keys)[:, None]
    )  # (B, Tq, Tk, A)
    logits = torch.einsum("bqka,a->bqk", feats, s.v)
    w = softmax_rows_with_lengths(logits, valid_lens)
    torch.testing.assert_close(res.weights, w, rtol=0, atol=1e-14)
    torch.testing.assert_close(res.out, w @ values, rtol=0, atol=1e-12)
    assert torch.equal(res.weights[0, :, 2:], torch.zeros(1, 8, dtype=F64))
    assert torch.equal(res.weights[1, :, 6:], torch.zeros(1, 4, dtype=F64))


def test_additive_per_query_lengths_and_zero_length_row():
    att = AdditiveAttention(query_dim=3, key_dim=4, hidden_dim=5).double()
    q, k, v = (
        torch.randn(2, 3, 3, dtype=F64),
        torch.randn(2, 5, 4, dtype=F64),
        torch.randn(2, 5, 2, dtype=F64),
    )
    q.requires_grad_(True)
    lens = torch.tensor([[1, 3, 5], [0, 2, 4]])
    res = att(q, k, v, valid_lens=lens, need_weights=True)
    logits = att.score(q, k)
    w = softmax_rows_with_lengths(logits, lens)
    torch.testing.assert_close(res.weights, w, rtol=0, atol=1e-14)
    torch.testing.assert_close(res.out, w @ v, rtol=0, atol=1e-12)
    # valid_len = 0: qkv gives output 0 and weights 0 (d2l would give the mean of all values).
    assert torch.equal(res.out[1, 0], torch.zeros(2, dtype=F64))
    assert torch.equal(res.weights[1, 0], torch.zeros(5, dtype=F64))
    res.out.sum().backward()
    assert torch.equal(q.grad[1, 0], torch.zeros(3, dtype=F64))
    assert torch.isfinite(q.grad).all()


def test_additive_dropout_train_vs_eval():
    att = AdditiveAttention(query_dim=4, key_dim=4, hidden_dim=4, dropout=0.5)
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 6, 4), torch.randn(2, 6, 3)
    att.eval()
    assert torch.equal(att(q, k, v).out, att(q, k, v).out)
    att.train()
    assert not torch.equal(att(q, k, v).out, att(q, k, v).out)


@pytest.mark.parametrize("scaled", [True, False])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_dot_product_formula(scaled, backend):
    att = DotProductAttention(scaled=scaled, backend=backend)
    q, k, v = (
        torch.randn(2, 3, 4, dtype=F64),
        torch.randn(2, 5, 4, dtype=F64),
        torch.randn(2, 5, 6, dtype=F64),
    )
    lens = torch.tensor([0, 3])
    res = att(q, k, v, valid_lens=lens)
    logits = torch.einsum("bqd,bkd->bqk", q, k) / (math.sqrt(4) if scaled else 1.0)
    w = softmax_rows_with_lengths(logits, lens)
    assert res.out.shape == (2, 3, 6)
    torch.testing.assert_close(res.out, w @ v, rtol=0, atol=1e-12)
    assert torch.equal(res.out[0], torch.zeros(3, 6, dtype=F64))
    if backend == "auto":
        assert res.backend == "sdpa"


def test_dot_product_d2l_shapes_with_weights():
    # d2l 11.3: queries (2, 1, 2), keys (2, 10, 2), values (2, 10, 4)
    att = DotProductAttention(dropout=0.5).eval()
    queries, keys = torch.normal(0, 1, (2, 1, 2)), torch.normal(0, 1, (2, 10, 2))
    values = torch.arange(40.0).reshape(1, 10, 4).repeat(2, 1, 1)
    res = att(queries, keys, values, valid_lens=torch.tensor([2, 6]), need_weights=True)
    assert res.out.shape == (2, 1, 4)
    assert res.weights.shape == (2, 1, 10)
    torch.testing.assert_close(res.weights.sum(-1), torch.ones(2, 1))
    assert torch.all(res.weights[0, 0, 2:] == 0)
    assert torch.all(res.weights[1, 0, 6:] == 0)


def _luong_logits(att, q, k):
    if att.score_name == "dot":
        return torch.einsum("bqd,bkd->bqk", q, k)
    if att.score_name == "general":
        return torch.einsum("bqd,de,bke->bqk", q, att.score.weight, k)
    # concat: v^T tanh(W [h_t; h_s]) with W = [W_q, W_k], written with the concatenation.
    w = torch.cat([att.score.w_query.weight, att.score.w_key.weight], dim=1)  # (A, Dq + Dk)
    b, tq, tk = q.shape[0], q.shape[1], k.shape[1]
    out = torch.empty(b, tq, tk, dtype=q.dtype)
    for i in range(b):
        for t in range(tq):
            for s in range(tk):
                out[i, t, s] = att.score.v @ torch.tanh(w @ torch.cat([q[i, t], k[i, s]]))
    return out


@pytest.mark.parametrize(
    ("score", "kw"),
    [("dot", {}), ("general", {"key_dim": 3}), ("concat", {"key_dim": 3, "hidden_dim": 7})],
)
def test_luong_scores_formula(score, kw):
    dq = 4
    dk = kw.get("key_dim", dq)
    att = LuongAttention(score=score, query_dim=dq, **kw).double()
    q, k = torch.randn(2, 3, dq, dtype=F64), torch.randn(2, 5, dk, dtype=F64)
    lens = torch.tensor([5, 2])
    res = att(q, k, valid_lens=lens, need_weights=True)
    w = softmax_rows_with_lengths(_luong_logits(att, q, k), lens)
    torch.testing.assert_close(res.weights, w, rtol=0, atol=1e-13)
    torch.testing.assert_close(res.out, w @ k, rtol=0, atol=1e-12)  # values default to keys
    # One decoder step: (B, Dq) query -> (B, Dv) context, (B, Tk) weights.
    step = att(q[:, 1], k, valid_lens=lens, need_weights=True)
    assert step.out.shape == (2, dk) and step.weights.shape == (2, 5)
    torch.testing.assert_close(step.out, res.out[:, 1], rtol=0, atol=1e-13)
    torch.testing.assert_close(step.weights, res.weights[:, 1], rtol=0, atol=1e-14)


def test_luong_values_and_mask_combine_with_lengths():
    att = LuongAttention(score="general", query_dim=3).double()
    q, k, v = (
        torch.randn(1, 2, 3, dtype=F64),
        torch.randn(1, 4, 3, dtype=F64),
        torch.randn(1, 4, 5, dtype=F64),
    )
    mask = torch.tensor([[True, False, True, True], [False, False, False, True]])[None]  # (B, Tq, Tk)
    res = att(q, k, v, valid_lens=torch.tensor([3]), mask=mask, need_weights=True)
    allowed = mask & (torch.arange(4) < 3)
    logits = torch.einsum("bqd,de,bke->bqk", q, att.score.weight, k).masked_fill(~allowed, -math.inf)
    w = torch.softmax(logits, -1).nan_to_num(0.0)  # query 1: nothing allowed -> zeros
    torch.testing.assert_close(res.weights, w, rtol=0, atol=1e-14)
    torch.testing.assert_close(res.out, w @ v, rtol=0, atol=1e-12)
    assert torch.equal(res.out[0, 1], torch.zeros(5, dtype=F64))


# ----------------------------------------------------------------------------- errors


def test_luong_constructor_errors():
    with pytest.raises(ValueError, match=r"score: expected one of dot, general, concat, got 'bilinear'"):
        LuongAttention(score="bilinear", query_dim=3)
    with pytest.raises(ValueError, match=r"key_dim: score='dot' needs key_dim == query_dim=3, got 4"):
        LuongAttention(score="dot", query_dim=3, key_dim=4)
    with pytest.raises(ValueError, match=r"hidden_dim: only used by score='concat'"):
        LuongAttention(score="general", query_dim=3, hidden_dim=4)
    with pytest.raises(ValueError, match=r"query_dim: expected a positive int"):
        LuongAttention(score="dot", query_dim=0)


def test_d2l_forward_errors():
    att = AdditiveAttention(query_dim=3, key_dim=4, hidden_dim=5)
    q, k, v = torch.randn(2, 3, 3), torch.randn(2, 5, 4), torch.randn(2, 5, 2)
    with pytest.raises(ValueError, match=r"queries: expected feature dim 3, got shape \(2, 3, 4\)"):
        att(torch.randn(2, 3, 4), k, v)
    with pytest.raises(ValueError, match=r"keys: expected shape \(B, T, D\), got \(5, 4\)"):
        att(q, k[0], v)
    with pytest.raises(ValueError, match=r"values: expected Tk=5 rows"):
        att(q, k, v[:, :3])
    with pytest.raises(ValueError, match=r"keys/values: expected batch size B=2"):
        att(q, k[:1], v[:1])
    with pytest.raises(
        ValueError, match=r"valid_lens: expected shape \(B,\) = \(2,\) or \(B, Tq\) = \(2, 3\), got \(3,\)"
    ):
        att(q, k, v, valid_lens=torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match=r"from_lengths: valid_lens must be an integer tensor"):
        att(q, k, v, valid_lens=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"dropout: expected a number in \[0, 1\)"):
        AdditiveAttention(query_dim=3, key_dim=4, hidden_dim=5, dropout=-0.1)
    with pytest.raises(ValueError, match=r"keys: expected feature dim 3"):
        DotProductAttention()(q, k, v)
    with pytest.raises(ValueError, match=r"queries: expected feature dim 4, got shape \(2, 3, 3\)"):
        LuongAttention(score="general", query_dim=4, key_dim=4)(q, k)


@pytest.mark.parametrize(
    "make", [lambda: AdditiveAttention(query_dim=4, key_dim=4, hidden_dim=8), DotProductAttention]
)
def test_valid_lens_is_keyword_only(make):
    att = make()
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 6)
    with pytest.raises(TypeError, match="positional argument"):
        att(q, k, v, torch.tensor([2, 5]))
