"""The chunked backend (online softmax, custom backward) equals the reference for every score."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv.backends import BACKENDS
from test_attention import SCORES, score_params

from helpers import GRAD_FACTOR, assert_error_ratio, assert_garbage_changes_nothing, naive_attention


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks much smaller than the sequences, and sizes that do not divide them."""
    monkeypatch.setattr(BACKENDS["chunked"], "q_block", 8)
    monkeypatch.setattr(BACKENDS["chunked"], "kv_block", 16)


def masks_for(kind, b, tq, tk):
    if kind == "none":
        return None
    if kind == "tensor":
        m = torch.rand(b, 1, tq, tk) > 0.4
        m[0, 0, 5] = False  # a row with nothing to attend
        return m
    if kind == "causal":
        return qkv.masks.causal("bottom_right")
    lens = torch.tensor([tk - 9, 0][:b])  # sample 1 has no keys at all
    return qkv.masks.causal("top_left") & qkv.masks.from_lengths(lens, tk)


def _inputs(b=2, h=3, tq=37, tk=45, d=8, dv=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(7)
    return [torch.randn(s, generator=g, dtype=dtype) for s in ((b, h, tq, d), (b, h, tk, d), (b, h, tk, dv))]


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("mask_kind", ["none", "tensor", "causal", "padded_causal"])
def test_chunked_float32_error_ratio(request, score, mask_kind):
    q64, k64, v64 = (t.requires_grad_() for t in _inputs())
    mask = masks_for(mask_kind, 2, 37, 45)
    bias64 = torch.randn(1, 3, 37, 45, dtype=torch.float64) if score == "dot" else None
    p64 = score_params(score, 8)
    dense = qkv.masks.materialize(mask, 37, 45) if mask is not None else None
    golden, _ = naive_attention(q64, k64, v64, score=score, mask=dense, bias=bias64, **p64)
    q, k, v = (t.detach().float().requires_grad_() for t in (q64, k64, v64))
    p32 = {n: (t.float() if isinstance(t, torch.Tensor) else t) for n, t in p64.items()}
    bias = None if bias64 is None else bias64.float()
    kw = dict(score=score, mask=mask, bias=bias, score_kwargs=p32)
    impl = qkv.attention(q, k, v, backend="chunked", **kw)
    assert impl.backend == "chunked"
    eager = qkv.attention(q, k, v, backend="reference", **kw)
    assert_error_ratio(request, impl.out, golden, eager.out)
    finite = torch.isfinite(eager.lse)
    assert torch.equal(torch.isfinite(impl.lse), finite)
    torch.testing.assert_close(impl.lse[finite], eager.lse[finite], rtol=0, atol=1e-5)
    go = torch.randn(golden.shape, dtype=torch.float64)
    gg = torch.autograd.grad(golden, (q64, k64, v64), go)
    gi = torch.autograd.grad(impl.out, (q, k, v), go.float())
    ge = torch.autograd.grad(eager.out, (q, k, v), go.float())
    for a, b, c in zip(gi, gg, ge):
        assert_error_ratio(request, a, b, c, factor=GRAD_FACTOR, what="grad")


@pytest.mark.parametrize("score", SCORES)
def test_chunked_gradcheck_with_parameters_and_bias(score):
    q, k, v = (t.requires_grad_() for t in _inputs(1, 2, 11, 19, 3, 2))
    p = score_params(score, 3, requires_grad=True)
    names = [n for n, t in p.items() if isinstance(t, torch.Tensor)]
    bias = torch.randn(1, 2, 11, 19, dtype=torch.float64, requires_grad=True)
    mask = qkv.masks.causal("bottom_right") & (torch.rand(1, 1, 1, 19) > 0.3)

    def fn(q, k, v, bias, *ts):
        kw = dict(p, **dict(zip(names, ts)))
        return qkv.attention(
            q, k, v, score=score, score_kwargs=kw, mask=mask, bias=bias, backend="chunked"
        ).out

    assert torch.autograd.gradcheck(fn, (q, k, v, bias, *[p[n] for n in names]))


def test_chunked_module_score_gets_parameter_gradients():
    q, k, v = (t.float() for t in _inputs(2, 1, 20, 33, 6, 4))
    for module in (
        qkv.AdditiveScore(query_dim=6, key_dim=6, hidden_dim=7),
        qkv.GeneralScore(query_dim=6, key_dim=6),
    ):
        ours = qkv.attention(q, k, v, score=module, backend="chunked")
        ref = qkv.attention(q, k, v, score=module, backend="reference")
        torch.testing.assert_close(ours.out, ref.out, rtol=0, atol=1e-5)
        g_ours = torch.autograd.grad(ours.out.sum(), list(module.parameters()))
        g_ref = torch.autograd.grad(ref.out.sum(), list(module.parameters()))
        for a, b in zip(g_ours, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_chunked_refuses_closure_scores_with_grad():
    q, k, v = (t.float().requires_grad_() for t in _inputs(1, 1, 4, 5, 2, 2))
    w = torch.randn(2, 2, requires_grad=True)
    with pytest.raises(qkv.BackendNotSupportedError, match=r"not an nn\.Module"):
        qkv.attention(q, k, v, score=lambda a, b: a @ w @ b.transpose(-1, -2), backend="chunked")
    with torch.no_grad():  # no gradients needed: fine
        r = qkv.attention(q, k, v, score=lambda a, b: a @ w @ b.transpose(-1, -2), backend="chunked")
    assert r.backend == "chunked"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_chunked_half_precision(request, dtype):
    q64, k64, v64 = _inputs(1, 2, 40, 50, 16, 16)
    gold = qkv.attention(q64.float(), k64.float(), v64.float(), mask=qkv.masks.causal("top_left")).out
    q, k, v = (t.to(dtype) for t in (q64, k64, v64))
    impl = qkv.attention(q, k, v, mask=qkv.masks.causal("top_left"), backend="chunked")
    eager = qkv.attention(q, k, v, mask=qkv.masks.causal("top_left"), backend="reference")
    assert impl.out.dtype == dtype
    assert impl.lse.dtype == torch.float32
    assert_error_ratio(request, impl.out, gold, eager.out, dtype=dtype)


@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), 1e30])
def test_chunked_garbage_in_masked_keys(garbage):
    q, k, v = (t.float() for t in _inputs(2, 2, 20, 40, 8, 8))
    mask = qkv.masks.from_lengths(torch.tensor([30, 40]), 40)
    assert_garbage_changes_nothing(
        q, k, v, where=(0, slice(None), slice(30, None)), garbage=garbage, mask=mask, backend="chunked"
    )


def test_chunked_edge_sizes():
    for tq, tk in [(1, 1), (1, 17), (17, 1), (0, 5), (5, 0), (16, 16), (33, 64)]:
        q, k, v = (t.float() for t in _inputs(1, 2, tq, tk, 4, 3))
        ours = qkv.attention(q, k, v, backend="chunked", need_weights=False)
        ref = qkv.attention(q, k, v, backend="reference")
        assert ours.out.shape == (1, 2, tq, 3)
        torch.testing.assert_close(ours.out, ref.out, rtol=0, atol=1e-6)


def test_chunked_skips_blocks_a_pattern_never_touches(monkeypatch):
    """With a causal pattern the upper-triangle key blocks are never scored."""
    calls = []
    q, k, v = (t.float() for t in _inputs(1, 1, 64, 64, 4, 4))

    def counting_dot(a, b):
        calls.append((a.shape[-2], b.shape[-2]))
        return a @ b.transpose(-2, -1)

    with torch.no_grad():
        qkv.attention(q, k, v, score=counting_dot, mask=qkv.masks.causal(), backend="chunked")
    # 8 query blocks of 8 rows, key blocks of 16: query block i touches key blocks 0..i//2
    assert len(calls) == sum(i // 2 + 1 for i in range(8))


def test_auto_uses_chunked_only_for_large_problems():
    q, k, v = _inputs(1, 1, 8, 8, 4, 4)
    assert qkv.attention(q, k, v, score="gaussian").backend == "reference"
    rep = qkv.dispatch_report(q, k, v, score="gaussian")
    assert any("small problem" in r for r in rep.reasons["chunked"])
    big = torch.randn(1, 1, 2048, 4), torch.randn(1, 1, 2048, 4), torch.randn(1, 1, 2048, 4)
    with torch.no_grad():
        assert qkv.attention(*big, score="gaussian").backend == "chunked"
