"""One rule for NaN on every backend: it propagates as in eager PyTorch, except from masked-out
positions (those never change the result)."""

from __future__ import annotations

import pytest
import torch

import qkv

BACKENDS = ["reference", "sdpa", "chunked", "blocksparse", "flex", "auto"]


def _masks():
    return {
        "none": None,
        "causal": qkv.masks.causal(),
        "window": qkv.masks.sliding_window(3),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask_name", ["none", "causal", "window"])
@pytest.mark.parametrize("t", [1, 4, 64, 300])
def test_nan_in_a_query_row_gives_a_nan_row(backend, mask_name, t):
    mask = _masks()[mask_name]
    if backend == "blocksparse" and mask is None:
        pytest.skip("blocksparse runs patterns only")
    g = torch.Generator().manual_seed(t)
    q, k, v = (torch.randn(2, 2, t, 8, generator=g) for _ in range(3))
    row = t // 2
    q[1, 0, row, 3] = float("nan")
    out = qkv.attention(q, k, v, mask=mask, backend=backend).out
    assert torch.isnan(out[1, 0, row]).all(), f"{backend}: the NaN row became {out[1, 0, row]}"
    nan_rows = torch.isnan(out).any(dim=-1)
    assert int(nan_rows.sum()) == 1, f"{backend}: NaN leaked into {int(nan_rows.sum()) - 1} other rows"


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_an_attended_key_reaches_exactly_the_rows_that_attend_it(backend):
    t = 16
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, t, 8, generator=g) for _ in range(3))
    k[0, 0, 5, 0] = float("nan")
    out = qkv.attention(q, k, v, mask=qkv.masks.causal(), backend=backend).out
    nan_rows = torch.isnan(out[0, 0]).any(dim=-1)
    expected = torch.arange(t) >= 5  # causal: rows 5.. attend key 5
    assert torch.equal(nan_rows, expected)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "chunked", "auto"])
def test_nan_query_row_with_no_key_stays_zero(backend):
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    q[0, 0, 1, 0] = float("nan")
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False  # row 1 attends nothing: its output is 0 whatever its query holds
    out = qkv.attention(q, k, v, mask=mask, backend=backend).out
    assert torch.equal(out[0, 0, 1], torch.zeros(4))
    assert not torch.isnan(out).any()


@pytest.mark.parametrize("where", ["query", "key"])
def test_zero_feature_dim_is_a_clear_error(where):
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    if where == "query":
        q, k = q[..., :0], k[..., :0]
    else:
        k = k[..., :0]
    with pytest.raises(ValueError, match=rf"{where}: expected a feature dim D >= 1"):
        qkv.attention(q, k, v)


def _padded(t: int = 12, seed: int = 0):
    """``q, k, v (3, 2, t, 8)`` and a key-padding mask ``(3, 1, 1, t)``: sample 0 attends every
    key, sample 1 the first ``t - 5``, sample 2 none."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(3, 2, t, 8, generator=g) for _ in range(3))
    mask = qkv.masks.from_lengths(torch.tensor([t, t - 5, 0]), t)
    return q, k, v, mask


@pytest.mark.parametrize("backend", ["reference", "sdpa", "chunked", "auto"])
@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), float("-inf"), 1e30])
@pytest.mark.parametrize("need_weights", [False, True])
def test_garbage_in_padding_changes_nothing_without_autograd(backend, garbage, need_weights):
    """Inference (no graph): sdpa looks for garbage in the output instead of the keys; the
    result is still bitwise the clean one, the row with no key 0, never NaN."""
    q, k, v, mask = _padded()
    with torch.no_grad():
        clean = qkv.attention(q, k, v, mask=mask, backend=backend, need_weights=need_weights)
        k2, v2 = k.clone(), v.clone()
        k2[1, :, -5:], v2[1, :, -5:] = garbage, garbage
        k2[2], v2[2] = garbage, garbage  # sample 2 attends nothing
        dirty = qkv.attention(q, k2, v2, mask=mask, backend=backend, need_weights=need_weights)
    assert torch.equal(clean.out, dirty.out)
    assert torch.equal(dirty.out[2], torch.zeros_like(dirty.out[2]))
    if need_weights:
        assert torch.equal(clean.weights, dirty.weights)
        assert torch.equal(dirty.weights[2], torch.zeros_like(dirty.weights[2]))


@pytest.mark.parametrize("backend", ["reference", "sdpa", "auto"])
def test_nan_query_row_with_padding_without_autograd(backend):
    """A NaN query row that attends a key is NaN, one that attends none is 0; no other row changes."""
    q, k, v, mask = _padded()
    with torch.no_grad():
        clean = qkv.attention(q, k, v, mask=mask, backend=backend).out
        q[1, 0, 4, 2] = float("nan")
        q[2, 1, 3, 0] = float("nan")  # sample 2 has no key
        out = qkv.attention(q, k, v, mask=mask, backend=backend).out
    nan_rows = torch.isnan(out).any(dim=-1)
    expected = torch.zeros_like(nan_rows)
    expected[1, 0, 4] = True
    assert torch.equal(nan_rows, expected)
    assert torch.isnan(out[1, 0, 4]).all()
    assert torch.equal(out[~expected], clean[~expected])


@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), 1e30])
def test_garbage_when_value_is_key_changes_nothing(garbage):
    """The d2l-shaped 3-D call with ``value is key`` (one tensor, zeroed once): output and
    gradients bitwise the clean ones, garbage's own gradient 0."""
    g = torch.Generator().manual_seed(1)
    q, mem = torch.randn(4, 1, 6, generator=g), torch.randn(4, 5, 6, generator=g)
    lens = torch.tensor([5, 3, 1, 2])
    mask = (torch.arange(5) < lens[:, None])[:, None, :]  # (B, 1, Tk)

    def run(mem):
        qq, mm = q.clone().requires_grad_(), mem.clone().requires_grad_()
        r = qkv.attention(qq, mm, mm, mask=mask, score="dot", backend="reference")
        return r.out, torch.autograd.grad(r.out.square().sum(), (qq, mm))

    clean_out, clean_grads = run(mem)
    dirty = mem.clone()
    dirty[1, 3:] = garbage
    out, grads = run(dirty)
    assert torch.equal(out, clean_out)
    for a, b in zip(grads, clean_grads, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(grads[1][1, 3:], torch.zeros(2, 6))
