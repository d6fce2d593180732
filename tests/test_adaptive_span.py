"""Adaptive attention span: the soft mask, parity with a float64 loop, cropping, gradients,
padding, the module."""

from __future__ import annotations

import math

import pytest
import torch

import qkv
from qkv.api import adaptive_span as span_mod
from qkv.api.adaptive_span import (
    adaptive_span_attention,
    soft_span_mask,
    span_penalty,
    span_window,
)
from qkv.modules.adaptive_span import AdaptiveSpanAttention

from helpers import assert_error_ratio, naive_attention

F64 = torch.float64


@pytest.fixture
def one_thread():
    """Loops of tiny ops (gradcheck, small training runs) are fastest on one thread, and do not
    stall when other processes keep the cores busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def naive_span(q, k, v, z, ramp, *, causal, key_mask=None):
    """a_ij = m(x_ij) exp(s_ij) / sum_l m(x_il) exp(s_il), row by row (the paper's equation)."""
    bsz, heads, t, d = q.shape
    out = torch.zeros(bsz, heads, t, v.shape[-1], dtype=q.dtype)
    weights = torch.zeros(bsz, heads, t, t, dtype=q.dtype)
    for b in range(bsz):
        for h in range(heads):
            for i in range(t):
                m = torch.zeros(t, dtype=q.dtype)
                for j in range(t):
                    x = i - j if causal else abs(i - j)
                    if x < 0 or (key_mask is not None and not key_mask[b, j]):
                        continue
                    m[j] = min(max((ramp + float(z[h]) - x) / ramp, 0.0), 1.0)
                if not bool((m > 0).any()):
                    continue
                s = (k[b, h] @ q[b, h, i]) / math.sqrt(d)
                s_max = s[m > 0].max()
                e = m * torch.exp(torch.where(m > 0, s - s_max, torch.zeros_like(s)))
                weights[b, h, i] = e / e.sum()
                out[b, h, i] = weights[b, h, i] @ v[b, h]
    return out, weights


def rand_qkv(bsz, heads, t, d, dtype=F64, dv=None):
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(bsz, heads, t, d, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(bsz, heads, t, dv or d, generator=g, dtype=dtype)
    return q, k, v


# ----------------------------------------------------------------------------- the mask


def test_soft_mask_drawn_values():
    x = torch.arange(6.0)
    # z = 1, R = 2: 1 up to distance 1, then 0.5 at 2, 0 from z + R = 3 on
    assert soft_span_mask(x, 1.0, 2.0).tolist() == [1.0, 1.0, 0.5, 0.0, 0.0, 0.0]
    m = soft_span_mask(x, torch.tensor([[0.0], [2.5]]), 4.0)  # two heads
    torch.testing.assert_close(m[0], torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0, 0.0]))
    torch.testing.assert_close(m[1], torch.tensor([1.0, 1.0, 1.0, 0.875, 0.625, 0.375]))


@pytest.mark.parametrize(("z", "ramp", "window"), [(0.0, 32, 31), (0.5, 2, 2), (3.2, 1, 4), (4.0, 1, 4)])
def test_window_is_last_distance_with_nonzero_mask(z, ramp, window):
    assert span_window(torch.tensor([0.0, z]), ramp) == window
    assert float(soft_span_mask(torch.tensor(float(window)), z, ramp)) > 0
    assert float(soft_span_mask(torch.tensor(float(window + 1)), z, ramp)) == 0


def test_span_penalty_is_coefficient_times_mean_span():
    z = torch.tensor([2.0, 6.0], requires_grad=True)
    loss = span_penalty(z, 0.5)
    assert float(loss.detach()) == 2.0
    loss.backward()
    assert z.grad.tolist() == [0.25, 0.25]


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("crop", "block"), [(True, 1), (True, 3), (True, 64), (False, 64)])
def test_equals_float64_loop(causal, crop, block, padded):
    q, k, v = rand_qkv(2, 3, 11, 4, dv=5)
    z = torch.tensor([0.0, 1.7, 3.4], dtype=F64)
    key_mask = None
    if padded:
        key_mask = torch.ones(2, 11, dtype=torch.bool)
        key_mask[1, 7:] = False
    golden, w_golden = naive_span(q, k, v, z, 2.0, causal=causal, key_mask=key_mask)
    res = adaptive_span_attention(
        q, k, v, z, ramp=2.0, causal=causal, key_mask=key_mask, crop=crop, block_size=block, need_weights=True
    )
    torch.testing.assert_close(res.out, golden, rtol=0, atol=1e-13)
    torch.testing.assert_close(res.weights, w_golden, rtol=0, atol=1e-14)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "chunked"])
@pytest.mark.parametrize("crop", [True, False])
def test_backends_agree(backend, crop):
    q, k, v = rand_qkv(2, 2, 40, 4)
    z = torch.tensor([2.5, 6.0], dtype=F64)
    key_mask = torch.ones(2, 40, dtype=torch.bool)
    key_mask[0, 30:] = False
    for causal in (True, False):
        golden, _ = naive_span(q, k, v, z, 3.0, causal=causal, key_mask=key_mask)
        for km in (key_mask, None):
            if km is None:
                golden, _ = naive_span(q, k, v, z, 3.0, causal=causal)
            res = adaptive_span_attention(
                q, k, v, z, ramp=3.0, causal=causal, key_mask=km, crop=crop, block_size=8, backend=backend
            )
            assert res.backend == backend
            torch.testing.assert_close(res.out, golden, rtol=0, atol=1e-13)


@pytest.mark.parametrize("causal", [True, False])
def test_float32_error_ratio(request, causal):
    q, k, v = rand_qkv(1, 2, 40, 8, dtype=torch.float32)
    z = torch.tensor([3.3, 9.6])
    golden, _ = naive_span(*(t.double() for t in (q, k, v)), z, 4.0, causal=causal)
    eager, _ = naive_span(q, k, v, z, 4.0, causal=causal)
    for crop in (True, False):
        impl = adaptive_span_attention(q, k, v, z, ramp=4.0, causal=causal, crop=crop, block_size=8)
        assert_error_ratio(request, impl.out, golden, eager, what=f"out (crop={crop})")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("z", [12.0, 1000.0])
def test_span_covering_the_sequence_is_plain_attention(causal, z):
    # z >= T - 1: m(x) = 1 for every distance in the sequence, so the weights are softmax(s).
    q, k, v = rand_qkv(2, 2, 13, 4)
    span = torch.full((2,), z, dtype=F64)
    res = adaptive_span_attention(q, k, v, span, ramp=3.0, causal=causal, need_weights=True)
    mask = torch.ones(13, 13, dtype=torch.bool).tril() if causal else None
    golden, w = naive_attention(q, k, v, mask=mask)
    torch.testing.assert_close(res.out, golden, rtol=0, atol=1e-13)
    torch.testing.assert_close(res.weights, w, rtol=0, atol=1e-14)
    plain = qkv.attention(q, k, v, mask=qkv.masks.causal() if causal else None)
    torch.testing.assert_close(res.out, plain.out, rtol=0, atol=1e-13)


def test_zero_span_with_tiny_ramp_attends_only_itself():
    q, k, v = rand_qkv(1, 2, 9, 3)
    res = adaptive_span_attention(q, k, v, torch.zeros(2, dtype=F64), ramp=0.5, need_weights=True)
    torch.testing.assert_close(res.out, v, rtol=0, atol=0)
    torch.testing.assert_close(res.weights, torch.eye(9, dtype=F64).expand(1, 2, 9, 9), rtol=0, atol=0)


@pytest.mark.parametrize("t", [0, 1, 2])
def test_tiny_lengths(t):
    q, k, v = rand_qkv(2, 2, t, 3)
    z = torch.tensor([0.5, 1.5], dtype=F64)
    for causal in (True, False):
        res = adaptive_span_attention(q, k, v, z, ramp=1.0, causal=causal, block_size=1, need_weights=True)
        golden, w = naive_span(q, k, v, z, 1.0, causal=causal)
        assert res.out.shape == (2, 2, t, 3) and res.weights.shape == (2, 2, t, t)
        torch.testing.assert_close(res.out, golden, rtol=0, atol=1e-14)
        torch.testing.assert_close(res.weights, w, rtol=0, atol=1e-15)


# ----------------------------------------------------------------------------- cropping


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("block", [2, 5, 16])
def test_cropped_equals_uncropped_forward_and_backward(causal, block):
    q, k, v = rand_qkv(2, 3, 37, 4)
    z0 = torch.tensor([0.3, 2.6, 5.2], dtype=F64)
    key_mask = torch.rand(2, 37, generator=torch.Generator().manual_seed(3)) > 0.2

    def run(crop):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, z0)]
        res = adaptive_span_attention(*leaves, ramp=2.5, causal=causal, key_mask=key_mask, crop=crop,
                                      block_size=block, need_weights=True)  # fmt: skip
        (res.out * torch.linspace(-1, 1, 4, dtype=F64)).sum().backward()
        return res, [t.grad for t in leaves]

    (cropped, g_crop), (dense, g_dense) = run(True), run(False)
    torch.testing.assert_close(cropped.out, dense.out, rtol=0, atol=1e-13)
    torch.testing.assert_close(cropped.weights, dense.weights, rtol=0, atol=1e-14)
    torch.testing.assert_close(cropped.lse, dense.lse, rtol=0, atol=1e-13)
    for a, b in zip(g_crop, g_dense, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert float(g_crop[3].abs().sum()) > 0  # the span gets a gradient


def test_cropping_scores_only_the_window(monkeypatch):
    """The keys handed to qkv.attention are strips of block + window, not the sequence."""
    seen = []
    real = span_mod.attention

    def spy(q, k, v, **kw):
        seen.append((tuple(q.shape), tuple(k.shape)))
        return real(q, k, v, **kw)

    monkeypatch.setattr(span_mod, "attention", spy)
    q, k, v = rand_qkv(1, 2, 256, 4, dtype=torch.float32)
    z = torch.tensor([10.0, 20.0])  # window ceil(20 + 4) - 1 = 23
    for causal, strip, interior in ((True, 16 + 23, 14), (False, 16 + 2 * 23, 12)):
        seen.clear()
        adaptive_span_attention(q, k, v, z, ramp=4.0, block_size=16, causal=causal)
        # every query once; no call sees more keys per query than block + window(s)
        assert sum(qs[0] * qs[2] for qs, _ in seen) == 256
        assert max(ks[2] for _, ks in seen) <= strip
        assert ((interior, 2, 16, 4), (interior, 2, strip, 4)) in seen  # the strips
        assert sum(qs[0] * qs[2] * ks[2] for qs, ks in seen) < 256 * 256 / 3
    seen.clear()
    adaptive_span_attention(q, k, v, z, ramp=4.0, crop=False)
    assert seen == [((1, 2, 256, 4), (1, 2, 256, 4))]
    seen.clear()
    adaptive_span_attention(q, k, v, torch.tensor([300.0, 0.0]), ramp=4.0, block_size=16)
    assert seen[0][1][-2] == 256  # a span past T: cropping cannot save, the dense path runs


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("crop", [True, False])
def test_gradcheck(causal, crop, one_thread):
    q, k, v = (t.requires_grad_() for t in rand_qkv(1, 2, 7, 2))
    z = torch.tensor([0.4, 1.3], dtype=F64, requires_grad=True)  # window ceil(1.3 + 1.5) - 1 = 2
    key_mask = torch.tensor([[True, True, False, True, True, True, True]])

    def fn(q, k, v, z):
        res = adaptive_span_attention(
            q, k, v, z, ramp=1.5, causal=causal, key_mask=key_mask, crop=crop, block_size=2, need_weights=True
        )
        return res.out, res.weights

    assert torch.autograd.gradcheck(fn, (q, k, v, z))


def test_span_gradient_has_the_right_sign():
    """A key on the ramp (distance 5, z = 3, R = 4: m = 0.5) holds the target: a longer span
    lowers the loss (dL/dz < 0). When the near key holds the target, shrinking helps (> 0)."""
    t, d = 6, 2
    q = torch.zeros(1, 1, t, d, dtype=F64)
    k = torch.zeros(1, 1, t, d, dtype=F64)
    q[..., -1, 0] = 1.0
    k[..., 0, 0] = 1.5  # the last query prefers key 0, at distance 5
    v = torch.zeros(1, 1, t, 1, dtype=F64)
    v[..., 0, 0] = 1.0
    for target, sign in ((1.0, -1.0), (0.0, 1.0)):
        z = torch.tensor([3.0], dtype=F64, requires_grad=True)
        out = adaptive_span_attention(q, k, v, z, ramp=4.0).out
        ((out[..., -1, 0] - target) ** 2).sum().backward()
        assert float(z.grad) * sign > 1e-3


# ----------------------------------------------------------------------------- padding


@pytest.mark.parametrize("crop", [True, False])
def test_padded_keys_change_nothing(crop):
    q, k, v = rand_qkv(2, 2, 20, 3)
    z = torch.tensor([2.0, 6.5], dtype=F64)
    key_mask = torch.ones(2, 20, dtype=torch.bool)
    key_mask[0, 15:] = False
    key_mask[1, 3] = False

    def run(k, v):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = adaptive_span_attention(*leaves, z, ramp=2.0, key_mask=key_mask, crop=crop, block_size=4).out
        return out, torch.autograd.grad(out.sum(), leaves)

    clean_out, clean_grads = run(k, v)
    k2, v2 = k.clone(), v.clone()
    for garbage, where in ((float("nan"), (0, slice(None), slice(15, None))), (1e30, (1, slice(None), 3))):
        k2[where] = garbage
        v2[where] = garbage
    dirty_out, dirty_grads = run(k2, v2)
    assert torch.equal(clean_out, dirty_out)
    for a, b in zip(clean_grads, dirty_grads, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("crop", [True, False])
def test_rows_with_nothing_to_attend_are_zero(crop):
    q, k, v = (t.requires_grad_() for t in rand_qkv(2, 2, 12, 3))
    z = torch.tensor([0.0, 4.0], dtype=F64, requires_grad=True)  # windows 1 and 5
    key_mask = torch.ones(2, 12, dtype=torch.bool)
    key_mask[0] = False  # no key at all
    key_mask[1, 4:9] = False  # query 8: keys 4..8 are padding; head 1 still reaches key 3
    res = adaptive_span_attention(q, k, v, z, ramp=2.0, key_mask=key_mask, crop=crop, block_size=4,
                                  need_weights=True)  # fmt: skip
    assert not torch.isnan(res.out).any()
    assert torch.equal(res.out[0], torch.zeros_like(res.out[0]))
    assert torch.equal(res.weights[0], torch.zeros_like(res.weights[0]))
    assert torch.equal(res.out[1, 0, 8], torch.zeros(3, dtype=F64))
    assert float(res.weights[1, 1, 8].detach().sum()) == pytest.approx(1.0)
    assert float(res.weights[1, 1, 8, 3].detach()) == pytest.approx(1.0)
    res.out.sum().backward()
    for t in (q, k, v, z):
        assert torch.isfinite(t.grad).all()


# ----------------------------------------------------------------------------- module


def _to_mha(m: AdaptiveSpanAttention) -> qkv.MultiHeadAttention:
    mha = qkv.MultiHeadAttention(embed_dim=m.embed_dim, num_heads=m.num_heads).double()
    mha.load_state_dict({k: v for k, v in m.state_dict().items() if k != "span_fraction"})
    return mha


@pytest.mark.parametrize("causal", [True, False])
def test_module_with_full_span_equals_multihead_attention(causal):
    m = AdaptiveSpanAttention(
        embed_dim=8, num_heads=2, max_span=16, ramp=2, init_span=16, causal=causal
    ).double()
    x = torch.randn(2, 10, 8, dtype=F64)
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[1, 7:] = True
    res = m(x, key_padding_mask=pad, need_weights=True)
    ref = _to_mha(m)(x, key_padding_mask=pad, mask=qkv.masks.causal() if causal else None, need_weights=True)
    torch.testing.assert_close(res.out, ref.out, rtol=0, atol=1e-13)
    torch.testing.assert_close(res.weights, ref.weights, rtol=0, atol=1e-14)


def test_module_matches_functional_and_trains_its_span():
    m = AdaptiveSpanAttention(embed_dim=8, num_heads=2, max_span=20, ramp=4, init_span=5.0).double()
    assert m.span.tolist() == [5.0, 5.0]
    assert m.window == 8
    x = torch.randn(1, 30, 8, dtype=F64)
    res = m(x)
    q, k, v = (p(x).view(1, 30, 2, 4).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    golden, _ = naive_span(q, k, v, m.span.detach(), 4.0, causal=True)
    torch.testing.assert_close(
        res.out, m.out_proj(golden.transpose(1, 2).reshape(1, 30, 8)), rtol=0, atol=1e-12
    )

    (res.out.sum() + m.span_penalty(0.1)).backward()
    assert m.span_fraction.grad is not None and bool((m.span_fraction.grad != 0).all())
    with torch.no_grad():
        m.span_fraction.add_(torch.tensor([-1.0, 2.0], dtype=F64))
    m.clamp_span_()
    assert m.span_fraction.tolist() == [0.0, 1.0]


def test_module_penalty_alone_shrinks_spans():
    m = AdaptiveSpanAttention(embed_dim=4, num_heads=2, max_span=64, ramp=8, init_span=32)
    opt = torch.optim.SGD([m.span_fraction], lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        m.span_penalty(1.0).backward()
        opt.step()
        m.clamp_span_()
    torch.testing.assert_close(m.span, torch.full((2,), 32.0 - 3 * 1e-3 * 64 * 64 / 2))  # dz/dfraction = 64


def test_module_dropout_only_in_training():
    m = AdaptiveSpanAttention(embed_dim=8, num_heads=2, max_span=8, ramp=2, init_span=4, dropout=0.5)
    x = torch.randn(2, 12, 8)
    m.eval()
    assert torch.equal(m(x).out, m(x).out)
    m.train()
    assert not torch.equal(m(x).out, m(x).out)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_named():
    q, k, v = rand_qkv(1, 2, 5, 3)
    z = torch.ones(2, dtype=F64)
    with pytest.raises(ValueError, match="ramp"):
        adaptive_span_attention(q, k, v, z, ramp=0)
    with pytest.raises(ValueError, match="span: expected finite values >= 0"):
        adaptive_span_attention(q, k, v, -z, ramp=1)
    with pytest.raises(ValueError, match=r"span: expected shape \(H,\)"):
        adaptive_span_attention(q, k, v, torch.ones(3, dtype=F64), ramp=1)
    with pytest.raises(TypeError, match="span"):
        adaptive_span_attention(q, k, v, 1.0, ramp=1)
    with pytest.raises(ValueError, match="key: expected shape"):
        adaptive_span_attention(q, k[..., :4, :], v, z, ramp=1)
    with pytest.raises(ValueError, match="query: expected shape"):
        adaptive_span_attention(q[0], k, v, z, ramp=1)
    with pytest.raises(ValueError, match=r"key_mask: expected shape \(B, T\)"):
        adaptive_span_attention(q, k, v, z, ramp=1, key_mask=torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="key_mask"):
        adaptive_span_attention(q, k, v, z, ramp=1, key_mask=torch.ones(1, 5))
    with pytest.raises(ValueError, match="block_size"):
        adaptive_span_attention(q, k, v, z, ramp=1, block_size=0)
    with pytest.raises(ValueError, match="init_span"):
        AdaptiveSpanAttention(embed_dim=4, num_heads=2, max_span=8, init_span=9)
    with pytest.raises(ValueError, match="max_span"):
        AdaptiveSpanAttention(embed_dim=4, num_heads=2, max_span=0)
    with pytest.raises(ValueError, match="embed_dim"):
        AdaptiveSpanAttention(embed_dim=5, num_heads=2, max_span=8)
    m = AdaptiveSpanAttention(embed_dim=4, num_heads=2, max_span=8)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, T, E=4\)"):
        m(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="key_padding_mask"):
        m(torch.randn(2, 3, 4), key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
