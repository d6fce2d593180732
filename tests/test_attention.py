"""qkv.attention: every score and backend against the float64 golden, torch's SDPA, masks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import qkv
from qkv.backends import BACKENDS
from qkv.functional.normalize import masked_softmax

from helpers import GRAD_FACTOR, assert_error_ratio, naive_attention

SCORES = ["dot", "scaled_dot", "general", "additive", "gaussian", "cosine"]


def score_params(name: str, d: int, dtype=torch.float64, requires_grad=False):
    g = torch.Generator().manual_seed(1)
    if name == "general":
        p = {"weight": torch.randn(d, d, generator=g, dtype=dtype) / math.sqrt(d)}
    elif name == "additive":
        p = {
            "w_query": torch.randn(6, d, generator=g, dtype=dtype) / math.sqrt(d),
            "w_key": torch.randn(6, d, generator=g, dtype=dtype) / math.sqrt(d),
            "v": torch.randn(6, generator=g, dtype=dtype),
        }
    elif name == "gaussian":
        p = {"sigma": 1.7}
    elif name == "cosine":
        p = {"temperature": 0.3}
    else:
        p = {}
    if requires_grad:
        p = {k: (t.requires_grad_() if isinstance(t, torch.Tensor) else t) for k, t in p.items()}
    return p


def mask_cases(b, h, tq, tk):
    """name -> bool mask (True = attend); includes a fully masked row."""
    g = torch.Generator().manual_seed(2)
    rand = torch.rand(b, h, tq, tk, generator=g) > 0.4
    rand[0, 0, 1] = False  # a fully masked row
    lens = torch.tensor([tk - 2, 0][:b])  # sample 1 has no keys at all
    return {
        "none": None,
        "causal": qkv.masks.causal("bottom_right").materialize(tq, tk),
        "padding": qkv.masks.from_lengths(lens, tk),
        "random": rand,
    }


def qkv_inputs(b=2, h=3, tq=5, tk=7, d=8, dv=6, dtype=torch.float64, requires_grad=False):
    q = torch.randn(b, h, tq, d, dtype=dtype)
    k = torch.randn(b, h, tk, d, dtype=dtype)
    v = torch.randn(b, h, tk, dv, dtype=dtype)
    if requires_grad:
        for t in (q, k, v):
            t.requires_grad_()
    return q, k, v


def grads(out, inputs, seed=3):
    g = torch.Generator().manual_seed(seed)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad(out, inputs, go, allow_unused=True)


# ----------------------------------------------------------------------------- the worked example


def test_seed000_example():
    """Seed 000: h1=[1,2], h2=[3,4], s0=[0.5,0.5], dot score."""
    h = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    s0 = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    r = qkv.attention(s0, h, h, score="dot", need_weights=True)
    a1 = 1 / (1 + math.exp(2.0))  # exp(1.5) / (exp(1.5) + exp(3.5))
    assert r.weights[0].tolist() == pytest.approx([a1, 1 - a1], abs=1e-15)
    assert r.out[0].tolist() == pytest.approx([a1 * 1 + (1 - a1) * 3, a1 * 2 + (1 - a1) * 4], abs=1e-14)
    assert r.out[0].tolist() == pytest.approx([2.7616, 3.7616], abs=1e-4)
    assert r.lse.item() == pytest.approx(math.log(math.exp(1.5) + math.exp(3.5)), abs=1e-14)


# ----------------------------------------------------------------------------- reference vs golden


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("mask_name", ["none", "causal", "padding", "random"])
def test_reference_equals_golden_float64(score, mask_name):
    q, k, v = qkv_inputs()
    mask = mask_cases(2, 3, 5, 7)[mask_name]
    p = score_params(score, 8)
    r = qkv.attention(q, k, v, score=score, mask=mask, backend="reference", need_weights=True, score_kwargs=p)
    out, w = naive_attention(q, k, v, score=score, mask=mask, **p)
    torch.testing.assert_close(r.out, out, rtol=0, atol=1e-12)
    torch.testing.assert_close(r.weights, w, rtol=0, atol=1e-12)
    assert r.backend == "reference"


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("mask_name", ["none", "causal", "random"])
def test_reference_float32_error_ratio(request, score, mask_name):
    """fp32 reference (impl) vs fp64 golden, against a plain fp32 eager softmax(QK)V."""
    q64, k64, v64 = qkv_inputs(requires_grad=True)
    mask = mask_cases(2, 3, 5, 7)[mask_name]
    p64 = score_params(score, 8)
    golden, _ = naive_attention(q64, k64, v64, score=score, mask=mask, **p64)
    q, k, v = (t.detach().float().requires_grad_() for t in (q64, k64, v64))
    p32 = {n: (t.float() if isinstance(t, torch.Tensor) else t) for n, t in p64.items()}
    impl = qkv.attention(q, k, v, score=score, mask=mask, backend="reference", score_kwargs=p32).out
    # eager: the plain textbook formula in fp32 with torch.softmax (NaN rows zeroed)
    logits = qkv.functional.scores.SCORES[score][0](q, k, **p32)
    if score == "scaled_dot":
        logits = logits / math.sqrt(8)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    eager = torch.nan_to_num(torch.softmax(logits, -1)) @ v
    assert_error_ratio(request, impl, golden, eager)
    for gi, gg, ge in zip(grads(impl, (q, k, v)), grads(golden, (q64, k64, v64)), grads(eager, (q, k, v))):
        assert_error_ratio(request, gi, gg, ge, factor=GRAD_FACTOR, what="grad")


# ----------------------------------------------------------------------------- SDPA parity


def _sdpa_case(dtype, mask_kind, scale=None, score="scaled_dot", with_bias=False):
    b, h, tq, tk, d = 2, 4, 9, 11, 16
    gold_dtype = torch.float64 if dtype == torch.float32 else torch.float32
    q, k, v = (t.to(gold_dtype) for t in qkv_inputs(b, h, tq, tk, d, d, torch.float64))
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(b, 1, tq, tk) > 0.3
        mask[1, 0, 2] = False
    elif mask_kind == "causal":
        mask = qkv.masks.causal("top_left")
    elif mask_kind == "padding":
        mask = qkv.masks.key_padding(torch.tensor([[False] * 8 + [True] * 3, [False] * 11]))
    bias = torch.randn(1, h, tq, tk, dtype=gold_dtype) if with_bias else None
    return q, k, v, dict(mask=mask, bias=bias, scale=scale, score=score)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("mask_kind", "scale", "score", "with_bias"),
    [
        ("none", None, "scaled_dot", False),
        ("bool", None, "scaled_dot", False),
        ("causal", None, "scaled_dot", False),
        ("padding", 0.3, "scaled_dot", False),
        ("none", None, "dot", False),
        ("bool", None, "scaled_dot", True),
    ],
)
def test_sdpa_backend_error_ratio(request, dtype, mask_kind, scale, score, with_bias):
    qg, kg, vg, kw = _sdpa_case(dtype, mask_kind, scale, score, with_bias)
    gold = qkv.attention(qg, kg, vg, backend="reference", **kw).out
    q, k, v = (t.to(dtype).requires_grad_() for t in (qg, kg, vg))
    kw_dt = dict(kw, bias=None if kw["bias"] is None else kw["bias"].to(dtype))
    impl = qkv.attention(q, k, v, backend="sdpa", **kw_dt)
    assert impl.backend == "sdpa"
    eager = qkv.attention(q, k, v, backend="reference", **kw_dt).out
    assert_error_ratio(request, impl.out, gold, eager, dtype=dtype)
    qg, kg, vg = (t.detach().requires_grad_() for t in (qg, kg, vg))
    gold = qkv.attention(qg, kg, vg, backend="reference", **kw).out
    for gi, gg, ge in zip(grads(impl.out, (q, k, v)), grads(gold, (qg, kg, vg)), grads(eager, (q, k, v))):
        assert_error_ratio(request, gi, gg, ge, factor=GRAD_FACTOR, what="grad", dtype=dtype)


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_matches_torch_sdpa_is_causal_and_masks(backend):
    q, k, v = qkv_inputs(2, 2, 6, 6, 8, 8, torch.float64)
    ours = qkv.attention(q, k, v, mask=qkv.masks.causal(), backend=backend).out
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    # bottom-right alignment with Tq < Tk (decoding with a cache) against an explicit mask
    q2 = q[:, :, :2]
    explicit = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    ours = qkv.attention(q2, k, v, mask=qkv.masks.causal("bottom_right"), backend=backend).out
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q2, k, v, attn_mask=explicit))
    bias = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    ours = qkv.attention(q, k, v, bias=bias, scale=0.7, backend=backend).out
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.7))


def test_auto_chooses_and_names_backend():
    q, k, v = qkv_inputs(dtype=torch.float32)
    assert qkv.attention(q, k, v).backend == "sdpa"
    # asking for weights never changes the kernel: they come from an exact second pass
    assert qkv.attention(q, k, v, need_weights=True).backend == "sdpa"
    assert qkv.attention(q, k, v, score="gaussian").backend == "reference"
    rep = qkv.dispatch_report(q, k, v, score="cosine")
    assert rep.chosen == "reference"
    assert any("cosine" in r for r in rep.reasons["sdpa"])
    assert "sdpa" in str(rep) and "reference" in str(rep)


def test_auto_runs_a_long_causal_pattern_as_is_causal(monkeypatch):
    """Above the dense-mask size auto builds from a pattern, a plain causal pattern still runs
    on SDPA (as is_causal: no mask is built), equal to torch's; another pattern does not."""
    monkeypatch.setattr(BACKENDS["sdpa"], "auto_max_dense_mask", 16 * 16 - 1)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(3))
    out = qkv.attention(q, k, v, mask=qkv.masks.causal())
    assert out.backend == "sdpa"
    torch.testing.assert_close(
        out.out, F.scaled_dot_product_attention(q, k, v, is_causal=True), rtol=0, atol=1e-6
    )
    rep = qkv.dispatch_report(q, k, v, mask=qkv.masks.sliding_window(3))
    assert rep.chosen != "sdpa"
    assert any("dense mask would take" in r for r in rep.reasons["sdpa"])


def test_explicit_backend_never_falls_back():
    q, k, v = qkv_inputs(dtype=torch.float32)
    with pytest.raises(qkv.BackendNotSupportedError, match=r"'sdpa'.*gaussian"):
        qkv.attention(q, k, v, score="gaussian", need_weights=True, backend="sdpa")
    with pytest.raises(
        ValueError, match=r"backend: unknown name 'flash'; valid names: auto, reference, sdpa"
    ):
        qkv.attention(q, k, v, backend="flash")


# ----------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize(
    ("score", "backend"), [(s, "reference") for s in SCORES] + [("dot", "sdpa"), ("scaled_dot", "sdpa")]
)
def test_gradcheck(score, backend):
    q, k, v = qkv_inputs(1, 2, 3, 4, 3, 2, requires_grad=True)
    mask = torch.ones(1, 2, 3, 4, dtype=torch.bool)
    mask[0, 0, 1] = False  # fully masked row: gradient must be 0, not NaN
    mask[0, 1, :, 3] = False
    p = score_params(score, 3, requires_grad=True)
    tensors = [t for t in p.values() if isinstance(t, torch.Tensor)]
    names = [n for n, t in p.items() if isinstance(t, torch.Tensor)]

    def fn(q, k, v, *ts):
        kw = dict(p, **dict(zip(names, ts)))
        return qkv.attention(q, k, v, score=score, mask=mask, backend=backend, score_kwargs=kw).out

    assert torch.autograd.gradcheck(fn, (q, k, v, *tensors))


def test_gradcheck_bias_and_masked_softmax():
    q, k, v = qkv_inputs(1, 1, 3, 4, 2, 2, requires_grad=True)
    bias = torch.randn(1, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b: qkv.attention(q, k, v, bias=b).out, (bias,))
    logits = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    m = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda x: masked_softmax(x, m)[0], (logits,))


# ----------------------------------------------------------------------------- masking rules


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_fully_masked_rows_are_zero_with_zero_grads(backend, dtype):
    q, k, v = (t.to(dtype).requires_grad_() for t in qkv_inputs(2, 2, 4, 5, 8, 8))
    mask = torch.ones(2, 2, 4, 5, dtype=torch.bool)
    mask[0, 1, 2] = False
    mask[1] = False  # a whole sample masked
    r = qkv.attention(q, k, v, mask=mask, backend=backend, need_weights=backend == "reference")
    assert not torch.isnan(r.out).any()
    assert torch.equal(r.out[0, 1, 2], torch.zeros(8, dtype=dtype))
    assert torch.equal(r.out[1], torch.zeros_like(r.out[1]))
    if r.weights is not None:
        assert torch.equal(r.weights[0, 1, 2], torch.zeros(5, dtype=dtype))
        torch.testing.assert_close(r.weights[0, 0].float().sum(-1), torch.ones(4), atol=1e-2, rtol=0)
    gq, gk, gv = torch.autograd.grad(r.out.float().square().sum(), (q, k, v))
    for g in (gq, gk, gv):
        assert torch.isfinite(g).all()
    assert torch.equal(gq[0, 1, 2], torch.zeros(8, dtype=dtype))
    assert torch.equal(gq[1], torch.zeros_like(gq[1]))
    assert torch.equal(gk[1], torch.zeros_like(gk[1]))
    assert torch.equal(gv[1], torch.zeros_like(gv[1]))


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), float("-inf"), 1e30])
def test_garbage_in_masked_keys_changes_nothing(backend, garbage):
    q, k, v = qkv_inputs(2, 2, 4, 6, 8, 8, dtype=torch.float32)
    lens = torch.tensor([4, 6])
    mask = qkv.masks.from_lengths(lens, 6) & qkv.masks.causal("bottom_right")
    bias = torch.randn(1, 2, 4, 6)

    def run(k, v, bias):
        k, v, qq = k.clone().requires_grad_(), v.clone().requires_grad_(), q.clone().requires_grad_()
        r = qkv.attention(qq, k, v, mask=mask, bias=bias, backend=backend)
        g = torch.autograd.grad(r.out.sum(), (qq, k, v))
        return r.out, g

    out_clean, g_clean = run(k, v, bias)
    k2, v2, b2 = k.clone(), v.clone(), bias.clone()
    k2[0, :, 4:] = garbage
    v2[0, :, 4:] = garbage
    b2[:, :, 0, 5] = garbage  # bias at a masked (causal) position
    out_dirty, g_dirty = run(k2, v2, b2)
    assert torch.equal(out_clean, out_dirty)
    for a, b in zip(g_clean, g_dirty):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_all_true_mask_equals_no_mask_and_one_key_returns_its_value(backend):
    q, k, v = qkv_inputs(2, 2, 4, 6, 8, 5, dtype=torch.float32)
    full = torch.ones(4, 6, dtype=torch.bool)
    a = qkv.attention(q, k, v, mask=full, backend=backend).out
    b = qkv.attention(q, k, v, backend=backend).out
    torch.testing.assert_close(a, b, rtol=0, atol=2e-7)
    one = torch.zeros(4, 6, dtype=torch.bool)
    one[:, 3] = True
    r = qkv.attention(q, k, v, mask=one, backend=backend).out
    assert torch.equal(r, v[:, :, 3:4].expand_as(r))


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_batch_isolation(backend):
    q, k, v = qkv_inputs(3, 2, 4, 6, 8, 8, dtype=torch.float32)
    base = qkv.attention(q, k, v, backend=backend).out
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    q2[1] += 5
    k2[1] = torch.randn_like(k2[1])
    v2[1] = float("nan")
    other = qkv.attention(q2, k2, v2, backend=backend).out
    assert torch.equal(base[0], other[0]) and torch.equal(base[2], other[2])


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_bitwise_repeatable(backend):
    q, k, v = qkv_inputs(2, 4, 33, 47, 16, 16, dtype=torch.float32)
    mask = torch.rand(2, 1, 33, 47) > 0.5
    first = qkv.attention(q, k, v, mask=mask, backend=backend).out
    for _ in range(50):
        assert torch.equal(qkv.attention(q, k, v, mask=mask, backend=backend).out, first)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_half_precision_large_logits(request, dtype, backend):
    """Logits around 1e4 overflow exp() unless the softmax is shifted and kept in float32."""
    q = torch.full((1, 1, 3, 4), 10.0)
    k = torch.linspace(0.9, 1.0, 5 * 4).reshape(1, 1, 5, 4) * 25
    v = torch.randn(1, 1, 5, 4)
    gold = qkv.attention(q, k, v, score="dot", backend="reference").out
    out = qkv.attention(q.to(dtype), k.to(dtype), v.to(dtype), score="dot", backend=backend)
    assert torch.isfinite(out.out).all()
    eager = qkv.attention(q.to(dtype), k.to(dtype), v.to(dtype), score="dot", backend="reference").out
    assert_error_ratio(request, out.out, gold, eager, dtype=dtype)


def test_dropout_only_in_training():
    q, k, v = qkv_inputs(dtype=torch.float32)
    base = qkv.attention(q, k, v, backend="reference").out
    assert torch.equal(qkv.attention(q, k, v, dropout_p=0.5, backend="reference").out, base)
    for backend in ("reference", "sdpa"):
        dropped = qkv.attention(q, k, v, dropout_p=0.5, training=True, backend=backend).out
        assert not torch.allclose(dropped, base)


def test_empty_sequences():
    q, k, v = qkv_inputs(2, 2, 3, 0, 4, 5, dtype=torch.float32, requires_grad=True)
    r = qkv.attention(q, k, v, need_weights=True)
    assert r.out.shape == (2, 2, 3, 5) and torch.equal(r.out, torch.zeros_like(r.out))
    assert r.weights.shape == (2, 2, 3, 0)
    assert torch.isneginf(r.lse).all()
    (gq,) = torch.autograd.grad(r.out.sum(), (q,))
    assert torch.equal(gq, torch.zeros_like(gq))
    q0 = torch.randn(2, 2, 0, 4)
    assert qkv.attention(q0, k.detach()[:, :, :0], v.detach()[:, :, :0]).out.shape == (2, 2, 0, 5)


def test_three_d_and_two_d_layouts():
    q, k, v = torch.randn(3, 4, 8), torch.randn(3, 6, 8), torch.randn(3, 6, 5)
    lens = torch.tensor([6, 2, 0])
    r3 = qkv.attention(q, k, v, mask=qkv.masks.from_lengths(lens, 6), need_weights=True)
    assert r3.out.shape == (3, 4, 5) and r3.weights.shape == (3, 4, 6) and r3.lse.shape == (3, 4)
    r4 = qkv.attention(q[:, None], k[:, None], v[:, None], mask=qkv.masks.from_lengths(lens, 6))
    torch.testing.assert_close(r3.out, r4.out[:, 0])
    m3 = torch.rand(3, 4, 6) > 0.5  # (B, Tq, Tk) fits the 3-D layout
    torch.testing.assert_close(
        qkv.attention(q, k, v, mask=m3).out,
        qkv.attention(q[:, None], k[:, None], v[:, None], mask=m3[:, None]).out[:, 0],
    )
    r2 = qkv.attention(q[0], k[0], v[0], mask=qkv.masks.causal("top_left"), need_weights=True)
    assert r2.out.shape == (4, 5) and r2.weights.shape == (4, 6)
    assert torch.equal(r2.weights.triu(1), torch.zeros(4, 6))


def test_leading_batch_dims_and_noncontiguous():
    q = torch.randn(2, 3, 4, 5, 8)
    k = torch.randn(2, 3, 4, 8, 7).transpose(-1, -2)  # non-contiguous (..., 7, 8)
    v = torch.randn(2, 3, 4, 6, 7).transpose(-1, -2)  # non-contiguous (..., 7, 6)
    ref = qkv.attention(q, k, v, backend="reference").out
    fast = qkv.attention(q, k, v).out
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(ref, qkv.attention(q, k.contiguous(), v, backend="reference").out)


def test_output_unpacks_like_torch():
    q, k, v = qkv_inputs(dtype=torch.float32)
    out, w = qkv.attention(q, k, v, need_weights=True)
    assert out.shape == (2, 3, 5, 6) and w.shape == (2, 3, 5, 7)


def test_custom_callable_score():
    q, k, v = qkv_inputs()
    r = qkv.attention(q, k, v, score=lambda a, b: -(a.unsqueeze(-2) - b.unsqueeze(-3)).abs().sum(-1))
    logits = -torch.cdist(q, k, p=1)
    torch.testing.assert_close(r.out, torch.softmax(logits, -1) @ v)
    assert r.backend == "reference"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_backends_match_golden(request, dtype):
    """The same rule on a GPU: SDPA's CUDA kernels and the reference, forward and backward."""
    q64, k64, v64 = qkv_inputs(2, 4, 33, 47, 64, 64, torch.float64)
    mask = qkv.masks.causal("bottom_right")
    gold = qkv.attention(q64, k64, v64, mask=mask, backend="reference").out
    q, k, v = (t.to("cuda", dtype).requires_grad_() for t in (q64, k64, v64))
    eager = qkv.attention(q, k, v, mask=mask, backend="reference").out
    for backend in ("reference", "sdpa"):
        r = qkv.attention(q, k, v, mask=mask, backend=backend)
        assert r.out.device.type == "cuda"
        assert_error_ratio(request, r.out.cpu(), gold, eager.cpu(), dtype=dtype)
