"""qkv.api.weights_first: the output computed from the exact weights (weights @ V), one pass
where every weight is kept, equal to the loop-written golden under the error-ratio rule."""

import pytest
import torch

import qkv
from qkv.api.weights_first import BACKEND, attention_from_weights, weights_first_applies

from helpers import assert_error_ratio, naive_attention


def _inputs(b=2, h=3, tq=7, tk=9, d=5, kv_heads=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, tq, d, generator=g)
    k = torch.randn(b, kv_heads or h, tk, d, generator=g)
    v = torch.randn(b, kv_heads or h, tk, d + 1, generator=g)
    return q, k, v


def _padding(b=2, tk=9):
    keep = torch.ones(b, 1, 1, tk, dtype=torch.bool)
    keep[1, ..., 5:] = False
    return keep


@pytest.mark.parametrize("case", ["plain", "padding", "causal_bool", "bias", "empty_row", "long_rows", "gqa"])
def test_equals_the_golden_under_the_error_ratio_rule(request, case):
    tk = 1100 if case == "long_rows" else 9  # past one key block of the weights pass
    q, k, v = _inputs(tk=tk, kv_heads=1 if case == "gqa" else None)
    mask = bias = None
    if case in ("padding", "gqa"):
        mask = _padding(tk=tk)
    elif case == "causal_bool":
        mask = torch.ones(7, tk, dtype=torch.bool).tril(tk - 7)
    elif case == "bias":
        bias = torch.randn(1, 3, 7, tk)
    elif case == "empty_row":
        mask = torch.ones(2, 3, 7, tk, dtype=torch.bool)
        mask[0, 1, 2] = False  # row 2 of head 1 attends nothing
    res = attention_from_weights(q, k, v, mask=mask, bias=bias)
    k_full, v_full = (t.expand(2, 3, *t.shape[2:]) for t in (k, v))  # grouped: the one key head
    golden = naive_attention(*(t.double() for t in (q, k_full, v_full)), mask=mask,
                             bias=None if bias is None else bias.double())  # fmt: skip
    eager = naive_attention(q, k_full, v_full, mask=mask, bias=bias)
    assert res.backend == BACKEND
    assert_error_ratio(request, res.out, golden[0], eager[0])
    assert_error_ratio(request, res.weights, golden[1], eager[1], what="weights")
    if case == "empty_row":
        assert not res.out[0, 1, 2].any() and not res.weights[0, 1, 2].any()
    assert (res.lse is None) == (tk <= 1024)


def test_weights_are_bitwise_those_of_need_weights():
    q, k, v = _inputs()
    mask = _padding()
    ours = attention_from_weights(q, k, v, mask=mask)
    asked = qkv.attention(q, k, v, mask=mask, need_weights=True)
    assert torch.equal(ours.weights, asked.weights)
    torch.testing.assert_close(ours.out, asked.out, rtol=0, atol=1e-6)


def test_garbage_in_keys_no_row_attends_changes_nothing():
    q, k, v = _inputs()
    mask = _padding()
    clean = attention_from_weights(q, k, v, mask=mask)
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 5:], v2[1, :, 5:] = float("nan"), float("inf")
    dirty = attention_from_weights(q, k2, v2, mask=mask)
    assert torch.equal(clean.out, dirty.out) and torch.equal(clean.weights, dirty.weights)


def test_applies_only_to_plain_calls_without_a_gradient():
    q, k, v = _inputs()
    assert weights_first_applies(q, k, v, None, False) and weights_first_applies(q, k, v, _padding(), False)
    assert not weights_first_applies(q, k, v, None, True)  # dropout in training
    assert not weights_first_applies(q, k, v, qkv.masks.sliding_window(2), False)  # a pattern
    q.requires_grad_()
    assert not weights_first_applies(q, k, v, None, False)
    with torch.no_grad():
        assert weights_first_applies(q, k, v, None, False)
    with pytest.raises(
        ValueError, match=r"attention_from_weights: query, key and value must not require a gradient"
    ):
        attention_from_weights(q, k, v)
