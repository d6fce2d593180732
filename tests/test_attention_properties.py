"""Hypothesis sweep: odd shapes, broadcast masks, non-contiguous inputs, empty and masked rows.

Every backend that can run the drawn case is held to the float64 golden under the error-ratio
rule, forward and backward.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qkv

from helpers import GRAD_FACTOR, assert_error_ratio, naive_attention


@st.composite
def cases(draw):
    b = draw(st.integers(1, 3))
    h = draw(st.integers(1, 3))
    tq = draw(st.integers(0, 9))
    tk = draw(st.integers(0, 9))
    d = draw(st.integers(1, 7))
    dv = draw(st.integers(1, 5))
    score = draw(st.sampled_from(["dot", "scaled_dot", "gaussian", "cosine"]))
    mask_shape = draw(
        st.sampled_from(["none", "full", "b1", "1h", "row", "key"])
    )  # broadcast patterns: (B,H,Tq,Tk), (B,1,..), (1,H,..), (Tq,Tk), (B,1,1,Tk)
    noncontig = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return b, h, tq, tk, d, dv, score, mask_shape, noncontig, seed


def make_mask(kind, b, h, tq, tk, g):
    shapes = {
        "full": (b, h, tq, tk),
        "b1": (b, 1, tq, tk),
        "1h": (1, h, tq, tk),
        "row": (tq, tk),
        "key": (b, 1, 1, tk),
    }
    if kind == "none":
        return None
    return torch.rand(shapes[kind], generator=g) > 0.35  # fully masked rows happen often


def maybe_noncontig(t, yes):
    if not yes:
        return t
    # same values, transposed storage
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_every_backend_matches_golden(request, case):
    b, h, tq, tk, d, dv, score, mask_kind, noncontig, seed = case
    g = torch.Generator().manual_seed(seed)
    q64 = torch.randn(b, h, tq, d, generator=g, dtype=torch.float64)
    k64 = torch.randn(b, h, tk, d, generator=g, dtype=torch.float64)
    v64 = torch.randn(b, h, tk, dv, generator=g, dtype=torch.float64)
    mask = make_mask(mask_kind, b, h, tq, tk, g)
    q64, k64, v64 = (maybe_noncontig(t, noncontig).requires_grad_() for t in (q64, k64, v64))
    golden, _ = naive_attention(q64, k64, v64, score=score, mask=mask)
    go = torch.randn(golden.shape, generator=g, dtype=torch.float64)
    if golden.requires_grad:
        gold_grads = torch.autograd.grad(golden, (q64, k64, v64), go, allow_unused=True)
    else:  # empty sequences: nothing depends on the inputs
        gold_grads = tuple(torch.zeros_like(t) for t in (q64, k64, v64))

    q, k, v = (t.detach().float().requires_grad_() for t in (q64, k64, v64))
    eager = qkv.attention(q, k, v, score=score, mask=mask, backend="reference")
    eager_grads = torch.autograd.grad(eager.out, (q, k, v), go.float(), allow_unused=True)
    for backend in ("reference", "sdpa", "auto"):
        if qkv.dispatch_report(q, k, v, score=score, mask=mask, backend=backend).chosen is None:
            continue
        r = qkv.attention(q, k, v, score=score, mask=mask, backend=backend)
        assert r.out.shape == (b, h, tq, dv)
        assert_error_ratio(request, r.out, golden, eager.out, what=f"{backend} out")
        impl_grads = torch.autograd.grad(r.out, (q, k, v), go.float(), allow_unused=True)
        for gi, gg, ge in zip(impl_grads, gold_grads, eager_grads):
            if gg is None:
                continue
            assert_error_ratio(request, gi, gg, ge, factor=GRAD_FACTOR, what=f"{backend} grad")


@settings(max_examples=40, deadline=None)
@given(
    tq=st.integers(1, 6),
    tk=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_weights_are_distributions_on_allowed_keys(tq, tk, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (
        torch.randn(2, tq, 4, generator=g),
        torch.randn(2, tk, 4, generator=g),
        torch.randn(2, tk, 3, generator=g),
    )
    mask = torch.rand(2, tq, tk, generator=g) > 0.5
    r = qkv.attention(q, k, v, mask=mask, need_weights=True)
    assert torch.equal(r.weights[~mask], torch.zeros_like(r.weights[~mask]))
    sums = r.weights.sum(-1)
    has_key = mask.any(-1)
    torch.testing.assert_close(sums[has_key], torch.ones_like(sums[has_key]))
    assert torch.equal(sums[~has_key], torch.zeros_like(sums[~has_key]))
    assert (r.weights >= 0).all()
