"""The strip attention of a learned adaptive span: its hand-written backward against autograd
(gradcheck in float64), and adaptive span through it against the path it replaces (qkv.attention
on the strips with a differentiable bias), forward and backward."""

from __future__ import annotations

import pytest
import torch

from qkv.api.adaptive_span import adaptive_span_attention
from qkv.api.span_strips import span_strips

from helpers import GRAD_FACTOR, assert_error_ratio

F64 = torch.float64


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rand(*shape, dtype=F64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def run(q, k, v, z, g, **kwargs):
    """(out, [dq, dk, dv, dz]) of ``sum(out * g)``; the span takes a gradient."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, z)]
    res = adaptive_span_attention(*leaves, **kwargs)
    (res.out * g).sum().backward()
    return res, [t.grad for t in leaves]


# ----------------------------------------------------------------------------- the Function


@pytest.mark.parametrize("dv", [1, 3, 5])
@pytest.mark.parametrize("shared", [True, False])
def test_gradcheck_strips(shared, dv, one_thread):
    """q and the padded keys and values (the bias a constant: shared by the blocks, or one per
    block with -inf on masked keys and a row with no key at all), value dims below, equal to
    and above the query's."""
    n, heads, block, d, strip = 3, 2, 2, 3, 4
    width = (n - 1) * block + strip
    q, kp, vp = (
        rand(n, heads, block, d, seed=1),
        rand(heads, width, d, seed=2),
        rand(heads, width, dv, seed=3),
    )
    bias = rand(1 if shared else n, heads, block, strip, seed=4)
    if not shared:
        bias[0, 1, 0] = float("-inf")  # a row with no key
        bias[2, 0, :, 3] = float("-inf")
    leaves = [t.requires_grad_() for t in (q, kp, vp)]

    def fn(q, kp, vp):
        return span_strips(q, kp, vp, bias, first=0, strip=strip, scale=0.7)[0]

    assert torch.autograd.gradcheck(fn, leaves)
    if not shared:  # the row with no key: output 0, no NaN
        assert torch.equal(fn(q, kp, vp)[0, 1, 0], torch.zeros(dv, dtype=F64))


@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck_through_adaptive_span(causal, one_thread):
    q, k, v = (rand(1, 2, 7, 2, seed=s).requires_grad_() for s in (1, 2, 3))
    z = torch.tensor([0.4, 1.3], dtype=F64, requires_grad=True)
    key_mask = torch.tensor([[True, True, False, True, True, True, True]])

    def fn(q, k, v, z):
        res = adaptive_span_attention(q, k, v, z, ramp=1.5, causal=causal, key_mask=key_mask, block_size=2)
        assert res.backend == "sdpa"  # the strips ran, not the reference on a differentiable bias
        return res.out

    assert torch.autograd.gradcheck(fn, (q, k, v, z))


# ----------------------------------------------------------------------------- parity


SPANS = [[0.0, 1.7, 5.2], [0.3, 2.6, 30.0], [0.0, 0.0, 0.0]]


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("block", [1, 3, 8])
@pytest.mark.parametrize("spans", SPANS)
def test_equals_attention_on_a_differentiable_bias(spans, block, causal, padded):
    """float64 <= 1e-12 against the same strips through qkv.attention (reference backend, whose
    backward autograd writes), outputs and the gradients of q, k, v and the span."""
    q, k, v = rand(2, 3, 37, 4, seed=1), rand(2, 3, 37, 4, seed=2), rand(2, 3, 37, 5, seed=3)
    g = rand(2, 3, 37, 5, seed=4)
    key_mask = (rand(2, 37, seed=5) > -0.8) if padded else None
    kw = dict(ramp=2.5, causal=causal, key_mask=key_mask, block_size=block)
    z = torch.tensor(spans, dtype=F64)
    new, g_new = run(q, k, v, z, g, **kw)
    old, g_old = run(q, k, v, z, g, backend="reference", **kw)
    assert old.backend == "reference"
    assert new.backend == "sdpa" or max(spans) > 20  # a window past the sequence: the dense path
    torch.testing.assert_close(new.out, old.out, rtol=0, atol=1e-12)
    for name, a, b in zip("qkvz", g_new, g_old, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize("causal", [True, False])
def test_spans_covering_the_sequence(causal):
    """A window past the sequence runs the dense path (no strips); just short of it, the strips
    run and still equal the dense computation, gradients included."""
    q, k, v, g = (rand(1, 2, 20, 4, seed=s) for s in range(4))
    for spans in ([25.0, 40.0], [17.0, 3.0]):
        z = torch.tensor(spans, dtype=F64)
        new, g_new = run(q, k, v, z, g, ramp=2.0, causal=causal, block_size=4)
        dense, g_dense = run(q, k, v, z, g, ramp=2.0, causal=causal, crop=False)
        torch.testing.assert_close(new.out, dense.out, rtol=0, atol=1e-12)
        for a, b in zip(g_new, g_dense, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
def test_float32_error_ratio(request, causal):
    """float32 against the float64 golden, relative to the path it replaces in float32."""
    q, k, v, g = (rand(1, 2, 96, 8, dtype=torch.float32, seed=s) for s in range(4))
    z = torch.tensor([3.3, 20.6])
    kw = dict(ramp=4.0, causal=causal, block_size=16)
    golden, g_golden = run(*(t.double() for t in (q, k, v, z, g)), **kw, backend="reference")
    eager, g_eager = run(q, k, v, z, g, **kw, backend="reference")
    impl, g_impl = run(q, k, v, z, g, **kw)
    assert impl.backend == "sdpa"
    assert_error_ratio(request, impl.out, golden.out, eager.out, what="out")
    for name, a, b, c in zip("qkvz", g_impl, g_golden, g_eager, strict=True):
        assert_error_ratio(request, a, b, c, factor=GRAD_FACTOR, what=f"d{name}")


# ----------------------------------------------------------------------------- which path


def test_padded_keys_change_nothing():
    q, k, v, g = (rand(2, 2, 20, 3, seed=s) for s in range(4))
    z = torch.tensor([2.0, 6.5], dtype=F64)
    key_mask = torch.ones(2, 20, dtype=torch.bool)
    key_mask[0, 15:] = False
    key_mask[1, 3] = False
    clean, g_clean = run(q, k, v, z, g, ramp=2.0, key_mask=key_mask, block_size=4)
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 15:], v2[0, :, 15:] = float("nan"), float("nan")
    k2[1, :, 3], v2[1, :, 3] = 1e30, 1e30
    dirty, g_dirty = run(q, k2, v2, z, g, ramp=2.0, key_mask=key_mask, block_size=4)
    assert torch.equal(clean.out, dirty.out)
    for a, b in zip(g_clean, g_dirty, strict=True):
        assert torch.equal(a, b)


def test_strips_run_only_for_a_learned_span_without_weights_or_dropout():
    q, k, v = (rand(1, 2, 24, 4, seed=s) for s in range(3))
    z = torch.tensor([2.0, 5.0], dtype=F64)
    kw = dict(ramp=2.0, block_size=4)
    assert adaptive_span_attention(q, k, v, z.requires_grad_(), **kw).backend == "sdpa"
    assert adaptive_span_attention(q, k, v, z, backend="chunked", **kw).backend == "chunked"
    assert adaptive_span_attention(q, k, v, z, need_weights=True, **kw).backend != "sdpa"
    dropped = adaptive_span_attention(q, k, v, z, dropout_p=0.5, training=True, **kw)
    assert dropped.backend != "sdpa"
    with torch.no_grad():
        assert adaptive_span_attention(q, k, v, z, **kw).backend == "sdpa"


# ----------------------------------------------------------------------------- the span's gradient


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("causal", [True, False])
def test_span_gradient_equals_autograd_through_the_formula(causal, padded):
    """The span's gradient from the ramp's band alone (several query tiles, integer spans whose
    ramp starts exactly on a key, a span of 0) equals autograd through the paper's formula
    written densely, ``softmax(s + log m_z) v``, in float64."""
    from qkv.api import span_ramp
    from qkv.api.adaptive_span import soft_span_mask

    t = 2 * span_ramp.TILE + 22
    q, k, v, g = (rand(2, 3, t, 4, seed=s) for s in range(4))
    key_mask = (rand(2, t, seed=5) > -1.0) if padded else None
    z = torch.tensor([0.0, 9.0, 23.4], dtype=F64)
    _, grads = run(q, k, v, z, g, ramp=5.0, causal=causal, key_mask=key_mask, block_size=8)

    zz = z.clone().requires_grad_()
    pos = torch.arange(t)
    x = (pos[:, None] - pos[None, :]).to(F64)  # query i - key j
    m = soft_span_mask(x if causal else x.abs(), zz.view(-1, 1, 1), 5.0)  # (H, T, T)
    allowed = (m > 0) & ((x >= 0) if causal else True)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    logits = (q @ k.transpose(-2, -1)) * 4**-0.5 + torch.log(torch.where(allowed, m, torch.ones_like(m)))
    out = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1) @ v
    (dz,) = torch.autograd.grad((out * g).sum(), zz)
    assert float(dz.abs().min()) > 1e-6  # every head's span moves
    torch.testing.assert_close(grads[3], dz, rtol=0, atol=1e-12)


def test_ramp_offsets_are_the_band_autograd_sees():
    """Distances z <= x < z + R (inclusive at m = 1, exclusive at m = 0), within the sequence."""
    from qkv.api.span_ramp import ramp_offsets

    def offsets(z, causal=True, t=100):
        return ramp_offsets(torch.tensor(z, dtype=F64), 4.0, causal, t)

    assert offsets(10.0) == [(-13, -10)]
    assert offsets(10.5) == [(-14, -11)]
    assert offsets(10.0, causal=False) == [(-13, -10), (10, 13)]
    assert offsets(0.0, causal=False) == [(-3, 3)]
    assert offsets(98.0) == [(-99, -98)]  # the sequence ends before the ramp does
    assert offsets(99.5) == []


def test_span_gradient_does_not_depend_on_the_sample_chunks(monkeypatch):
    """The band sums take a few samples at a time: one sample at a time gives the same."""
    from qkv.api import span_ramp

    q, k, v, g = (rand(3, 2, 90, 4, seed=s) for s in range(4))
    z = torch.tensor([4.0, 11.5], dtype=F64)
    key_mask = rand(3, 90, seed=7) > -1.0
    _, whole = run(q, k, v, z, g, ramp=3.0, causal=False, key_mask=key_mask, block_size=8)
    monkeypatch.setattr(span_ramp, "CHUNK_ELEMENTS", 1)
    _, one = run(q, k, v, z, g, ramp=3.0, causal=False, key_mask=key_mask, block_size=8)
    for a, b in zip(whole, one, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
