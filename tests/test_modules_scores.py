"""qkv.modules score modules: formulas, gradcheck through qkv.attention, init, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

import qkv
from qkv.modules import AdditiveScore, CosineScore, GaussianScore, GeneralScore

F64 = torch.float64


def _qk(b=2, tq=3, tk=4, dq=5, dk=5):
    return torch.randn(b, tq, dq, dtype=F64), torch.randn(b, tk, dk, dtype=F64)


def test_general_score_formula():
    s = GeneralScore(query_dim=5, key_dim=3).double()
    q, k = _qk(dk=3)
    expected = torch.einsum("bqd,de,bke->bqk", q, s.weight, k)
    torch.testing.assert_close(s(q, k), expected, rtol=0, atol=1e-12)
    assert s.weight.shape == (5, 3)


def test_additive_score_formula_with_loops():
    s = AdditiveScore(query_dim=4, key_dim=3, hidden_dim=6).double()
    q, k = _qk(b=1, tq=2, tk=3, dq=4, dk=3)
    wq, wk, v = s.w_query.weight, s.w_key.weight, s.v
    assert wq.shape == (6, 4) and wk.shape == (6, 3) and v.shape == (6,)
    assert s.w_query.bias is None and s.w_key.bias is None
    expected = torch.empty(1, 2, 3, dtype=F64)
    for i in range(2):
        for j in range(3):
            expected[0, i, j] = v @ torch.tanh(wq @ q[0, i] + wk @ k[0, j])
    torch.testing.assert_close(s(q, k), expected, rtol=0, atol=1e-12)


def test_additive_score_from_projected_keys_equals_the_score_and_its_gradients():
    """``W_k k`` made once (``project_keys``) then ``from_projected_keys``: the same logits and
    the same gradients as the score on the keys, float64."""
    torch.manual_seed(0)
    s = AdditiveScore(query_dim=4, key_dim=3, hidden_dim=6).double()
    q, k = _qk(b=2, tq=2, tk=5, dq=4, dk=3)
    k.requires_grad_(True)
    whole = s(q, k)
    grads = torch.autograd.grad(whole.sin().sum(), (k, s.w_key.weight, s.w_query.weight, s.v))
    split = s.from_projected_keys(q, s.project_keys(k))
    assert s.project_keys(k).shape == (2, 5, 6)
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-12)
    again = torch.autograd.grad(split.sin().sum(), (k, s.w_key.weight, s.w_query.weight, s.v))
    for a, b in zip(again, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("learnable", [False, True])
def test_gaussian_score_formula(learnable):
    s = GaussianScore(sigma=0.7, learnable=learnable).double()
    q, k = _qk()
    expected = -((q[:, :, None] - k[:, None]) ** 2).sum(-1) / (2 * 0.7**2)
    # A learnable sigma is a float32 parameter log(0.7) before .double(): float32 accuracy.
    tol = 1e-6 if learnable else 1e-12
    torch.testing.assert_close(s(q, k), expected, rtol=tol, atol=tol)
    assert float(torch.as_tensor(s.sigma, dtype=F64).detach()) == pytest.approx(0.7, rel=tol)
    assert ("log_sigma" in dict(s.named_parameters())) == learnable


@pytest.mark.parametrize("learnable", [False, True])
def test_cosine_score_formula(learnable):
    s = CosineScore(temperature=0.25, learnable=learnable).double()
    q, k = _qk()
    q[0, 0] = 0.0  # a zero vector scores 0
    expected = torch.zeros(2, 3, 4, dtype=F64)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                qn, kn = q[b, i].norm(), k[b, j].norm()
                if qn > 0:
                    expected[b, i, j] = (q[b, i] @ k[b, j]) / (qn * kn) / 0.25
    tol = 1e-6 if learnable else 1e-12  # learnable: a float32 log-parameter before .double()
    torch.testing.assert_close(s(q, k), expected, rtol=tol, atol=tol)


def test_score_module_in_attention_matches_named_score():
    s = GeneralScore(query_dim=5, key_dim=5).double()
    q, k = _qk()
    v = torch.randn(2, 4, 3, dtype=F64)
    a = qkv.attention(q, k, v, score=s, need_weights=True)
    b = qkv.attention(q, k, v, score="general", score_kwargs={"weight": s.weight.detach()}, need_weights=True)
    torch.testing.assert_close(a.out, b.out, rtol=0, atol=1e-13)
    torch.testing.assert_close(a.weights, b.weights, rtol=0, atol=1e-13)


def _gradcheck_module(module, q, k, v, mask):
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in module.named_parameters()]

    def f(q, k, v, *ps):
        score = lambda a, b: functional_call(module, dict(zip(names, ps, strict=True)), (a, b))  # noqa: E731
        res = qkv.attention(q, k, v, score=score, mask=mask, need_weights=True)
        return res.out, res.weights

    inputs = tuple(t.requires_grad_(True) for t in (q, k, v)) + tuple(params)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: GeneralScore(query_dim=3, key_dim=2),
        lambda: AdditiveScore(query_dim=3, key_dim=2, hidden_dim=4),
        lambda: GaussianScore(sigma=1.3, learnable=True),
        lambda: GaussianScore(sigma=1.3),
        lambda: CosineScore(temperature=0.5, learnable=True),
    ],
    ids=["general", "additive", "gaussian_learnable", "gaussian", "cosine_learnable"],
)
def test_gradcheck_through_attention(make):
    module = make().double()
    dk = getattr(module, "key_dim", 3)
    q = torch.randn(2, 3, 3, dtype=F64)
    k = torch.randn(2, 4, dk, dtype=F64)
    v = torch.randn(2, 4, 2, dtype=F64)
    mask = torch.tensor([[True, True, False, True], [False, False, False, False]])[:, None, :]  # (B, 1, Tk)
    _gradcheck_module(module, q, k, v, mask)


def test_gradcheck_masked_rows_have_zero_gradient():
    s = AdditiveScore(query_dim=2, key_dim=2, hidden_dim=3).double()
    q, k = _qk(b=2, tq=2, tk=3, dq=2, dk=2)
    v = torch.randn(2, 3, 2, dtype=F64)
    q.requires_grad_(True)
    mask = torch.ones(2, 1, 3, dtype=torch.bool)
    mask[1] = False
    out = qkv.attention(q, k, v, score=s, mask=mask).out
    out.sum().backward()
    assert torch.equal(out[1], torch.zeros(2, 2, dtype=F64))
    assert torch.equal(q.grad[1], torch.zeros(2, 2, dtype=F64))
    assert q.grad[0].abs().sum() > 0


def test_init_like_torch():
    torch.manual_seed(0)
    g = GeneralScore(query_dim=40, key_dim=60)
    bound = math.sqrt(6 / 100)
    assert 0.9 * bound < g.weight.abs().max() <= bound
    a = AdditiveScore(query_dim=16, key_dim=64, hidden_dim=25)
    assert 0.9 / 4 < a.w_query.weight.abs().max() <= 1 / 4  # nn.Linear: U(-1/sqrt(in), 1/sqrt(in))
    assert 0.9 / 8 < a.w_key.weight.abs().max() <= 1 / 8
    assert 0.8 / 5 < a.v.abs().max() <= 1 / 5


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: GeneralScore(query_dim=0, key_dim=2), r"query_dim: expected a positive int, got 0"),
        (lambda: GeneralScore(query_dim=2, key_dim=2.5), r"key_dim: expected a positive int, got 2.5"),
        (
            lambda: AdditiveScore(query_dim=2, key_dim=2, hidden_dim=-3),
            r"hidden_dim: expected a positive int",
        ),
        (lambda: GaussianScore(sigma=0.0), r"sigma: expected a finite number > 0, got 0.0"),
        (lambda: GaussianScore(sigma=float("nan")), r"sigma: expected a finite number > 0"),
        (lambda: CosineScore(temperature=-1), r"temperature: expected a finite number > 0, got -1"),
    ],
)
def test_constructor_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_general_score_wrong_key_dim_raises():
    s = GeneralScore(query_dim=3, key_dim=2)
    with pytest.raises(ValueError, match=r"weight must have shape \(Dq, Dk\) = \(3, 4\), got \(3, 2\)"):
        s(torch.randn(1, 2, 3), torch.randn(1, 2, 4))
