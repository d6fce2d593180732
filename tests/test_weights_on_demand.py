"""Weights on demand: exact weights from any backend, for chosen heads and rows."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv import masks
from qkv.api.prepare import prepare


def _inputs(t=50):
    g = torch.Generator().manual_seed(5)
    return [torch.randn(2, 4, t, 8, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("backend", ["sdpa", "chunked", "blocksparse", "reference"])
@pytest.mark.parametrize("mask_kind", ["none", "window", "padded"])
def test_weights_equal_reference(backend, mask_kind):
    q, k, v = _inputs()
    mask = {
        "none": None,
        "window": masks.sliding_window(4),
        "padded": masks.causal() & masks.from_lengths(torch.tensor([30, 0]), 50),
    }[mask_kind]
    if backend == "blocksparse" and mask is None:
        pytest.skip("blocksparse needs a pattern")
    ref = qkv.attention(q, k, v, mask=mask, backend="reference", need_weights=True)
    r = qkv.attention(q, k, v, mask=mask, backend=backend, need_weights=True)
    assert r.backend == backend
    torch.testing.assert_close(r.weights, ref.weights, rtol=0, atol=1e-12)
    torch.testing.assert_close(r.out, ref.out, rtol=0, atol=1e-12)
    sel = qkv.attention(q, k, v, mask=mask, backend=backend, weights_for=([1, 3], slice(10, 20)))
    torch.testing.assert_close(sel.weights, ref.weights[:, [1, 3], 10:20], rtol=0, atol=1e-12)


def test_weights_with_score_bias_and_half():
    q, k, v = (t.float() for t in _inputs())
    bias = torch.randn(1, 4, 50, 50)
    ref = qkv.attention(q, k, v, score="gaussian", bias=bias, backend="reference", need_weights=True)
    r = qkv.attention(q, k, v, score="gaussian", bias=bias, backend="chunked", weights_for=(2, None))
    torch.testing.assert_close(r.weights, ref.weights[:, 2:3], rtol=0, atol=1e-6)
    qh, kh, vh = (t.bfloat16() for t in (q, k, v))
    w = qkv.attention(qh, kh, vh, backend="sdpa", need_weights=True).weights
    assert w.dtype == torch.bfloat16
    torch.testing.assert_close(w.float().sum(-1), torch.ones(2, 4, 50), rtol=0, atol=2e-2)


def test_auto_keeps_fast_path_for_large_problems():
    q, k, v = (torch.randn(1, 2, 2048, 16) for _ in range(3))
    with torch.no_grad():
        r = qkv.attention(q, k, v, need_weights=True)
    assert r.backend == "sdpa"
    assert r.weights.shape == (1, 2, 2048, 2048)
    torch.testing.assert_close(r.weights.sum(-1), torch.ones(1, 2, 2048))
    small = qkv.attention(q[:, :, :8], k[:, :, :8], v[:, :, :8], need_weights=True)
    assert small.backend == qkv.attention(q[:, :, :8], k[:, :, :8], v[:, :, :8]).backend == "sdpa"


def test_weights_for_layouts_and_errors():
    q, k, v = torch.randn(3, 6, 8), torch.randn(3, 7, 8), torch.randn(3, 7, 5)
    r = qkv.attention(q, k, v, weights_for=(None, [0, 5]), backend="sdpa")
    ref = qkv.attention(q, k, v, need_weights=True, backend="reference")
    torch.testing.assert_close(r.weights, ref.weights[:, [0, 5]])
    with pytest.raises(ValueError, match=r"weights_for: rows must lie in \[0, 6\)"):
        qkv.attention(q, k, v, weights_for=(None, [6]))
    with pytest.raises(TypeError, match=r"weights_for: expected a pair \(heads, rows\)"):
        qkv.attention(q, k, v, weights_for=[1])


def test_weights_do_not_change_outputs_bitwise():
    q, k, v = (torch.randn(1, 2, 64, 8) for _ in range(3))
    for backend in ("sdpa", "chunked", "blocksparse"):
        mask = masks.sliding_window(3) if backend == "blocksparse" else None
        a = qkv.attention(q, k, v, mask=mask, backend=backend).out
        b = qkv.attention(q, k, v, mask=mask, backend=backend, need_weights=True).out
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["auto", "sdpa", "chunked"])
def test_weights_are_as_accurate_as_the_reference_with_large_logits(request, backend):
    """Logits of magnitude ~50 (a log-sum-exp of that size carries float32 rounding of ~1e-5):
    the weights still follow the error-ratio rule against the float32 reference."""
    from helpers import assert_error_ratio

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 64, 32, generator=g) * 3 for _ in range(3))
    mask = torch.ones(2, 1, 64, 64, dtype=torch.bool)
    mask[1, ..., 40:] = False
    golden = qkv.attention(
        q.double(), k.double(), v.double(), mask=mask, need_weights=True, backend="reference"
    )
    eager = qkv.attention(q, k, v, mask=mask, need_weights=True, backend="reference")
    ours = qkv.attention(q, k, v, mask=mask, need_weights=True, backend=backend)
    assert_error_ratio(request, ours.weights, golden.weights, eager.weights, what="weights")


def test_one_block_weights_and_lse_do_not_depend_on_the_slab(monkeypatch):
    """The one-block pass normalizes its logits in place (torch's kernel writing into its input,
    or slab by slab where torch refuses that): the weights (with a broadcast bias, a padding
    mask and a row with no key) and the log-sum-exp are bitwise the same either way and for any
    slab size, and equal the reference's."""
    from qkv.backends import attention_weights

    q, k, v = _inputs(t=24)
    bias = torch.randn(1, 4, 1, 24, dtype=torch.float64)
    mask = torch.ones(2, 1, 24, 24, dtype=torch.bool)
    mask[1, :, :, 15:] = False
    mask[0, :, 3] = False  # query 3 of sample 0 has no key
    ref = qkv.attention(q, k, v, mask=mask, bias=bias, backend="reference", need_weights=True)
    inputs, _ = prepare(q, k, v, mask=mask, bias=bias, need_weights=True)
    runs = [attention_weights.weights_and_lse(inputs)]  # in place, one call; no lse given: computed
    monkeypatch.setattr(attention_weights, "_IN_PLACE", False)  # a torch refusing the aliasing
    for slab in (1 << 18, 24, 7 * 24):  # one slab; one row per slab; slabs across heads
        monkeypatch.setattr(attention_weights, "_SLAB", slab)
        runs.append(attention_weights.weights_and_lse(inputs))
    for w, lse in runs:
        assert torch.equal(w, runs[0][0]) and torch.equal(lse, runs[0][1])
    w, lse = runs[0]
    torch.testing.assert_close(w, ref.weights, rtol=0, atol=1e-12)
    assert torch.equal(w[0, :, 3], torch.zeros(4, 24, dtype=torch.float64))
    torch.testing.assert_close(w.sum(-1)[1], torch.ones(4, 24, dtype=torch.float64))
    logits = (q @ k.transpose(-2, -1) * 8**-0.5 + bias).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(logits, dim=-1), rtol=0, atol=1e-12)
    assert bool((lse[0, :, 3] == float("-inf")).all())


@pytest.mark.parametrize("lse_given", [False, True])
def test_a_row_whose_bias_closes_every_key_has_zero_weights(lse_given):
    """A bias of -inf over every key a row may attend (an adaptive span's log-mask, say) leaves
    the row no key: zeros, as on the reference, never softmax's NaN; a NaN logit still gives NaN."""
    from qkv.backends import attention_weights

    q, k, v = _inputs(t=6)
    bias = torch.zeros(2, 4, 6, 6, dtype=torch.float64)
    bias[0, 1, 2] = float("-inf")  # row 2 of head 1: no key left
    ref = qkv.attention(q, k, v, bias=bias, backend="reference", need_weights=True)
    inputs, _ = prepare(q, k, v, bias=bias, need_weights=True)
    w, lse = attention_weights.weights_and_lse(inputs, lse=ref.lse if lse_given else None)
    assert torch.equal(w[0, 1, 2], torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(w, ref.weights, rtol=0, atol=1e-12)
    assert float(lse[0, 1, 2]) == float("-inf")
    q[1, 0, 4, 0] = float("nan")
    inputs, _ = prepare(q, k, v, bias=bias, need_weights=True)
    w, _ = attention_weights.weights_and_lse(inputs)
    assert bool(w[1, 0, 4].isnan().all()) and not bool(w[0].isnan().any())


@pytest.mark.parametrize("score", ["scaled_dot", "gaussian"])
@pytest.mark.parametrize("lse_given", [False, True])
def test_rows_longer_than_a_key_block_follow_the_error_ratio_rule(request, score, lse_given):
    """Rows of several key blocks (``kv_block`` < Tk): a dot score is computed in the result
    itself (one ``baddbmm`` with the log-sum-exp, bias and mask in place, one ``exp``), other
    scores block by block. Chosen heads and rows, a bias, a padding mask, a row with no key and
    NaN in the hidden keys: the weights follow the error-ratio rule against float64, the row
    with no key is zeros, and the garbage changes nothing."""
    from qkv.backends import attention_weights

    from helpers import assert_error_ratio

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, 40, 8, generator=g) * 2 for _ in range(3))
    bias = torch.randn(1, 4, 40, 40, generator=g)
    mask = torch.ones(2, 1, 40, 40, dtype=torch.bool)
    mask[1, :, :, 29:] = False
    mask[0, :, 5] = False  # query 5 of sample 0 has no key
    heads, rows = [3, 1], [0, 5, 17, 39]

    def weights(q, k, kv_block):
        kw = dict(score=score, mask=mask, bias=bias.to(q.dtype), need_weights=True)
        ref = qkv.attention(q, k, v.to(q.dtype), backend="reference", **kw)
        inputs, _ = prepare(q, k, v.to(q.dtype), **kw)
        lse = ref.lse if lse_given else None
        w, _ = attention_weights.weights_and_lse(inputs, heads=heads, rows=rows, lse=lse, kv_block=kv_block)
        return w, ref.weights[:, heads][:, :, rows]

    ours, eager = weights(q, k, kv_block=16)  # blocks 16, 16, 8
    golden = weights(q.double(), k.double(), kv_block=40)[1]
    assert_error_ratio(request, ours, golden, eager, what="weights")
    assert torch.equal(ours[0, :, 1], torch.zeros(2, 40))  # row 5 of sample 0
    k_dirty = k.clone()
    k_dirty[1, :, 29:] = float("nan")
    assert torch.equal(weights(q, k_dirty, kv_block=16)[0][1], ours[1])
