"""qkv.scaled_dot_product_attention against torch's F.scaled_dot_product_attention, and
grouped-query shapes in qkv.attention on every backend."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import qkv

from helpers import assert_error_ratio

F64 = torch.float64


def _inputs(q_shape, kv_shape, *, dv=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*q_shape, generator=g, dtype=F64)
    k = torch.randn(*kv_shape, generator=g, dtype=F64)
    v = torch.randn(*kv_shape[:-1], dv or kv_shape[-1], generator=g, dtype=F64)
    return q, k, v


def _masks(kind: str, lq: int, s: int):
    g = torch.Generator().manual_seed(1)
    if kind == "none":
        return None
    if kind == "bool_2d":
        m = torch.rand(lq, s, generator=g) > 0.3
        m[:, 0] = True
        return m
    if kind == "bool_per_head_3d":  # torch broadcasts (H, L, S) from the right: per head
        m = torch.rand(4, lq, s, generator=g) > 0.3
        m[..., 0] = True
        return m
    if kind == "float_bias":
        return torch.randn(1, 4, lq, s, generator=g, dtype=F64)
    if kind == "float_neg_inf":
        m = torch.randn(2, 1, lq, s, generator=g, dtype=F64)
        m[..., 1::3] = float("-inf")
        return m
    raise AssertionError(kind)


CASES = [
    # (q shape, kv shape, mask kind, is_causal, scale, enable_gqa)
    ((2, 4, 5, 8), (2, 4, 5, 8), "none", False, None, False),
    ((2, 4, 5, 8), (2, 4, 7, 8), "bool_2d", False, None, False),
    ((2, 4, 5, 8), (2, 4, 7, 8), "bool_per_head_3d", False, 0.3, False),
    ((2, 4, 5, 8), (2, 4, 7, 8), "float_bias", False, None, False),
    ((2, 4, 5, 8), (2, 4, 7, 8), "float_neg_inf", False, None, False),
    ((2, 4, 6, 8), (2, 4, 6, 8), "none", True, None, False),
    ((2, 4, 3, 8), (2, 4, 6, 8), "none", True, None, False),  # top-left with L < S
    ((2, 4, 5, 8), (2, 2, 7, 8), "none", False, None, True),
    ((2, 4, 5, 8), (2, 1, 7, 8), "float_bias", False, None, True),
    ((2, 4, 6, 8), (2, 2, 6, 8), "none", True, None, True),
    ((2, 4, 5, 8), (2, 1, 7, 8), "none", False, None, False),  # a head dim of 1 broadcasts
    ((2, 3, 4, 5, 8), (2, 3, 4, 5, 8), "bool_2d", False, None, False),  # 5-D
    ((3, 5, 8), (3, 7, 8), "bool_2d", False, None, False),  # 3-D
]


@pytest.mark.parametrize(("q_shape", "kv_shape", "mask_kind", "is_causal", "scale", "gqa"), CASES)
def test_equals_torch_sdpa_out_and_grads(request, q_shape, kv_shape, mask_kind, is_causal, scale, gqa):
    q, k, v = _inputs(q_shape, kv_shape, dv=6)
    mask = _masks(mask_kind, q_shape[-2], kv_shape[-2])
    kw = dict(attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=gqa)

    def run(fn, dtype):
        ins = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        m = kw["attn_mask"]
        args = dict(kw, attn_mask=None if m is None or m.dtype == torch.bool else m.to(dtype))
        if m is not None and m.dtype == torch.bool:
            args["attn_mask"] = m
        out = fn(*ins, **args)
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.shape[-1], dtype=dtype)).sum(), ins)
        return out, grads

    golden, golden_grads = run(F.scaled_dot_product_attention, F64)
    eager, eager_grads = run(F.scaled_dot_product_attention, torch.float32)
    ours64, ours64_grads = run(qkv.scaled_dot_product_attention, F64)
    ours, ours_grads = run(qkv.scaled_dot_product_attention, torch.float32)
    assert ours.shape == golden.shape
    torch.testing.assert_close(ours64, golden, atol=1e-12, rtol=1e-12)
    for a, b in zip(ours64_grads, golden_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    assert_error_ratio(request, ours, golden, eager)
    for name, a, b, e in zip("qkv", ours_grads, golden_grads, eager_grads, strict=True):
        assert_error_ratio(request, a, b, e, what=f"grad {name}")


def test_dropout_is_applied_whenever_p_is_positive_and_keeps_the_expectation():
    q, k, v = (t.float() for t in _inputs((1, 1, 3, 4), (1, 1, 5, 4)))
    plain = qkv.scaled_dot_product_attention(q, k, v)
    torch.manual_seed(0)
    runs = torch.stack([qkv.scaled_dot_product_attention(q, k, v, dropout_p=0.5) for _ in range(4000)])
    assert not torch.equal(runs[0], plain)  # no training flag needed, as in torch
    assert not torch.equal(runs[0], runs[1])
    torch.testing.assert_close(runs.mean(0), plain, atol=0.08, rtol=0)  # E[dropout(w)] = w


def test_bad_input_names_the_argument():
    q, k, v = _inputs((2, 4, 5, 8), (2, 4, 5, 8))
    with pytest.raises(TypeError, match=r"attn_mask: expected a bool or float tensor, got torch.int64"):
        qkv.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="attn_mask: expected at most 4 dims"):
        qkv.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(1, 1, 1, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="key: with enable_gqa=True expected key/value heads"):
        qkv.scaled_dot_product_attention(q, k[:, :3], v[:, :3], enable_gqa=True)
    with pytest.raises(ValueError, match="do not broadcast"):
        qkv.scaled_dot_product_attention(q, k[:, :2], v[:, :2])
    with pytest.raises(ValueError, match="attn_mask: expected None when is_causal=True"):
        qkv.scaled_dot_product_attention(
            q, k, v, attn_mask=torch.ones(5, 5, dtype=torch.bool), is_causal=True
        )
    with pytest.raises(TypeError, match="is_causal: expected a bool"):
        qkv.scaled_dot_product_attention(q, k, v, is_causal="yes")
    with pytest.raises(TypeError, match=r"key: expected a torch.Tensor"):
        qkv.scaled_dot_product_attention(q, [1.0], v)


# ----------------------------------------------------------------------------- GQA in qkv.attention

BACKEND_MASKS = [
    ("reference", "tensor"),
    ("sdpa", "tensor"),
    ("chunked", "tensor"),
    ("chunked", "causal"),
    ("sdpa", "causal"),
    ("blocksparse", "window"),
    ("reference", "bias"),
]


@pytest.mark.parametrize(("backend", "masking"), BACKEND_MASKS)
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_query_shapes_on_every_backend_equal_repeated_heads(backend, masking, kv_heads):
    q, k, v = _inputs((2, 4, 6, 8), (2, kv_heads, 6, 8), dv=5)
    g = 4 // kv_heads
    kw: dict = {}
    if masking == "tensor":
        m = torch.rand(2, 4, 6, 6, generator=torch.Generator().manual_seed(2)) > 0.4
        m[..., 0] = True
        kw["mask"] = m
    elif masking == "causal":
        kw["mask"] = qkv.masks.causal()
    elif masking == "window":
        kw["mask"] = qkv.masks.sliding_window(2)
    elif masking == "bias":
        kw["bias"] = torch.randn(1, 4, 6, 6, dtype=F64)
    ours = qkv.attention(q, k, v, backend=backend, need_weights=True, **kw)
    ref = qkv.attention(
        q, k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1), backend="reference",
        need_weights=True, **kw,
    )  # fmt: skip
    assert ours.backend == backend
    torch.testing.assert_close(ours.out, ref.out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ours.weights, ref.weights, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ours.lse, ref.lse, atol=1e-12, rtol=1e-12)


def test_grouped_query_weights_for_selects_query_heads():
    q, k, v = _inputs((1, 4, 5, 8), (1, 2, 5, 8))
    full = qkv.attention(q, k, v, need_weights=True)
    some = qkv.attention(q, k, v, weights_for=([3, 0], slice(1, 3)))
    torch.testing.assert_close(some.weights, full.weights[:, [3, 0], 1:3], atol=1e-12, rtol=1e-12)


def test_grouped_query_errors_name_the_argument():
    q, k, v = _inputs((1, 4, 5, 8), (1, 3, 5, 8))
    with pytest.raises(
        ValueError, match=r"key: expected a number of key/value heads .* divides query's 4 heads"
    ):
        qkv.attention(q, k, v)
    with pytest.raises(ValueError, match=r"value: expected 3 heads"):
        qkv.attention(q, k, v[:, :1])
    q, k, v = _inputs((1, 4, 5, 8), (1, 2, 5, 8))
    with pytest.raises(ValueError, match=r"mask: expected a shape broadcastable to \(\.\.\., H, Tq, Tk\)"):
        qkv.attention(q, k, v, mask=torch.ones(1, 2, 5, 5, dtype=torch.bool))
