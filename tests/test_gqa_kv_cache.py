"""Grouped-query attention and KV caches of qkv.modules.MultiHeadAttention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import qkv
from qkv.modules import (
    ALiBi,
    KVCache,
    MultiHeadAttention,
    RotaryEmbedding,
    SlidingWindowKVCache,
    StaticKVCache,
    T5RelativeBias,
)

from helpers import assert_error_ratio

F64 = torch.float64
E, H = 16, 4


def _gqa(kv_heads: int, *, seed: int = 0, dtype=F64, **kw) -> MultiHeadAttention:
    torch.manual_seed(seed)
    m = MultiHeadAttention(embed_dim=E, num_heads=H, num_kv_heads=kv_heads, **kw).to(dtype)
    with torch.no_grad():  # non-zero biases so that they are tested
        for p in (m.q_proj, m.k_proj, m.v_proj, m.out_proj):
            p.bias.normal_()
    return m


def _as_mha(m: MultiHeadAttention) -> MultiHeadAttention:
    """Plain multi-head attention whose key/value heads are m's, each repeated G times."""
    g = m.num_heads // m.num_kv_heads
    dh = m.head_dim
    full = MultiHeadAttention(embed_dim=E, num_heads=H, rotary=m.rotary is not None).to(
        m.out_proj.weight.dtype
    )
    with torch.no_grad():
        for name in ("q_proj", "out_proj"):
            getattr(full, name).load_state_dict(getattr(m, name).state_dict())
        for name in ("k_proj", "v_proj"):
            src, dst = getattr(m, name), getattr(full, name)
            w = src.weight.view(m.num_kv_heads, dh, -1).repeat_interleave(g, dim=0).reshape(H * dh, -1)
            dst.weight.copy_(w)
            dst.bias.copy_(src.bias.view(m.num_kv_heads, dh).repeat_interleave(g, dim=0).reshape(-1))
    return full


# ----------------------------------------------------------------------------- GQA


@pytest.mark.parametrize("kv_heads", [2, 1])
@pytest.mark.parametrize(
    "masking", ["none", "causal_pattern", "tensor", "per_head_tensor", "padding", "alibi", "t5", "rope"]
)
def test_gqa_equals_mha_with_repeated_kv_heads(kv_heads, masking):
    m = _gqa(kv_heads, rotary=masking == "rope")
    full = _as_mha(m)
    x = torch.randn(3, 6, E, dtype=F64, requires_grad=True)
    kw = {}
    if masking == "causal_pattern":
        kw["mask"] = qkv.masks.causal()
    elif masking == "tensor":
        kw["mask"] = torch.rand(3, 1, 6, 6) < 0.7
    elif masking == "per_head_tensor":
        kw["mask"] = torch.rand(1, H, 6, 6) < 0.7
    elif masking == "padding":
        kpm = torch.zeros(3, 6, dtype=torch.bool)
        kpm[1, 4:] = True
        kw["key_padding_mask"] = kpm
    elif masking == "alibi":
        kw["bias"] = ALiBi(H).double()
        kw["mask"] = qkv.masks.causal()
    elif masking == "t5":
        kw["bias"] = T5RelativeBias(H, num_buckets=8, max_distance=16).double()
    a = m(x, need_weights=True, **kw)
    b = full(x, need_weights=True, **kw)
    torch.testing.assert_close(a.out, b.out, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.weights, b.weights, rtol=0, atol=1e-12)
    assert a.weights.shape == (3, H, 6, 6)
    if a.lse is not None and b.lse is not None:
        torch.testing.assert_close(a.lse, b.lse, rtol=0, atol=1e-12)
    ga = torch.autograd.grad(a.out.sum(), x)[0]
    gb = torch.autograd.grad(b.out.sum(), x)[0]
    torch.testing.assert_close(ga, gb, rtol=0, atol=1e-11)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("causal", [False, True])
def test_gqa_matches_torch_sdpa_enable_gqa(kv_heads, causal):
    m = _gqa(kv_heads)
    x = torch.randn(2, 5, E, dtype=F64)
    mem = torch.randn(2, 7, E, dtype=F64)
    key = x if causal else mem
    q = m.q_proj(x).view(2, 5, H, 4).transpose(1, 2)  # (B, H, Tq, Dh)
    k = m.k_proj(key).view(2, -1, kv_heads, 4).transpose(1, 2)  # (B, Hkv, Tk, Dh)
    v = m.v_proj(key).view(2, -1, kv_heads, 4).transpose(1, 2)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    ref = m.out_proj(ref.transpose(1, 2).reshape(2, 5, E))
    got = m(x, key, mask=qkv.masks.causal() if causal else None).out
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    assert m.k_proj.out_features == m.v_proj.out_features == kv_heads * 4


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_gqa_float32_error_ratio(request, backend):
    m64 = _gqa(2)
    m32 = _gqa(2, dtype=torch.float32)
    m32.load_state_dict({n: t.float() for n, t in m64.state_dict().items()})
    m32.backend = backend
    x = torch.randn(2, 9, E, dtype=F64)
    mask = torch.rand(2, 1, 9, 9) < 0.8
    golden = m64(x, mask=mask).out
    eager = _as_mha(m32)(x.float(), mask=mask).out
    res = m32(x.float(), mask=mask)
    assert res.backend == backend
    assert_error_ratio(request, res.out, golden, eager, dtype=torch.float32)


def test_multi_query_attention_and_forward_hooks_see_weights():
    m = _gqa(1)
    assert m.k_proj.weight.shape == (4, E) and "num_kv_heads=1" in repr(m)
    seen = []
    handle = m.register_forward_hook(lambda mod, args, out: seen.append(out))
    x = torch.randn(2, 5, E, dtype=F64)
    res = m(x, need_weights=True)
    handle.remove()
    assert seen[0] is res and res.weights.shape == (2, H, 5, 5)
    torch.testing.assert_close(res.weights.sum(-1), torch.ones(2, H, 5, dtype=F64))
    # every head attends the one shared key/value head: same values, different weights
    torch.testing.assert_close(res.out, _as_mha(m)(x).out, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- KV cache


def _decode(m, x, cache, chunks, kpm=None, **kw):
    """Run x (B, T, E) through m in chunks of the given sizes with a cache."""
    outs, t = [], 0
    for n in chunks:
        pad = None if kpm is None else kpm[:, t : t + n]
        outs.append(m(x[:, t : t + n], cache=cache, key_padding_mask=pad, **kw).out)
        t += n
    return torch.cat(outs, dim=1)


def _full_causal(m, x, kpm=None, **kw):
    return m(x, mask=qkv.masks.causal(), key_padding_mask=kpm, **kw).out


CACHES = {"grow": KVCache, "prealloc": lambda: KVCache(max_len=12)}


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("kind", list(CACHES))
def test_cache_equals_full_recompute_float64(kv_heads, rope, kind):
    m = _gqa(kv_heads, rotary=rope)
    x = torch.randn(3, 10, E, dtype=F64)
    want = _full_causal(m, x)
    with torch.no_grad():
        got = _decode(m, x, CACHES[kind](), [3, 1, 1, 2, 1, 1, 1])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_cache_with_padding_equals_full_recompute(kv_heads):
    """Right-padded prompts of different lengths, then decoding: padded keys stay masked."""
    m = _gqa(kv_heads, rotary=True)
    x = torch.randn(3, 9, E, dtype=F64)
    kpm = torch.zeros(3, 9, dtype=torch.bool)
    kpm[0, 2:4] = True  # sample 0: prompt of 2 tokens padded to 4
    kpm[2, 3] = True  # sample 2: prompt of 3 padded to 4
    want = _full_causal(m, x, kpm)
    for cache in (KVCache(), KVCache(max_len=9)):
        with torch.no_grad():
            got = _decode(m, x, cache, [4, 1, 1, 1, 1, 1], kpm=kpm)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        assert cache.length == cache.offset == 9


@pytest.mark.parametrize("bias_kind", ["alibi", "t5"])
def test_cache_with_position_bias_modules(bias_kind):
    m = _gqa(2)
    bias = (ALiBi(H) if bias_kind == "alibi" else T5RelativeBias(H, bidirectional=False)).double()
    x = torch.randn(2, 8, E, dtype=F64)
    want = _full_causal(m, x, bias=bias)
    with torch.no_grad():
        got = _decode(m, x, KVCache(), [2, 1, 3, 1, 1], bias=bias)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_cache_float32_error_ratio(request):
    m64 = _gqa(2, rotary=True)
    m32 = _gqa(2, dtype=torch.float32, rotary=True)
    m32.load_state_dict({n: t.float() for n, t in m64.state_dict().items()})
    x = torch.randn(2, 12, E, dtype=F64)
    golden = _full_causal(m64, x)
    eager = _full_causal(m32, x.float())
    with torch.no_grad():
        got = _decode(m32, x.float(), KVCache(), [4] + [1] * 8)
    assert_error_ratio(request, got, golden, eager, dtype=torch.float32)


def test_cache_weights_and_gradients():
    m = _gqa(2, rotary=True)
    x = torch.randn(2, 5, E, dtype=F64, requires_grad=True)
    full = m(x, mask=qkv.masks.causal(), need_weights=True)
    cache = KVCache()
    m(x[:, :4], cache=cache)
    last = m(x[:, 4:], cache=cache, need_weights=True)
    assert last.weights.shape == (2, H, 1, 5)
    torch.testing.assert_close(last.weights, full.weights[:, :, 4:], rtol=0, atol=1e-12)
    # the growing cache keeps the graph: gradients equal the full pass's
    g_full = torch.autograd.grad(full.out[:, 4:].sum(), x)[0]
    g_inc = torch.autograd.grad(last.out.sum(), x)[0]
    torch.testing.assert_close(g_inc, g_full, rtol=0, atol=1e-11)


# ----------------------------------------------------------------------------- sliding window


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("chunks", [[1] * 11, [6, 1, 1, 3]])
def test_sliding_window_cache_equals_masked_full_recompute(kv_heads, rope, chunks):
    w = 4
    m = _gqa(kv_heads, rotary=rope)
    x = torch.randn(2, 11, E, dtype=F64)
    want = m(x, mask=qkv.masks.causal() & qkv.masks.sliding_window(w - 1)).out
    cache = SlidingWindowKVCache(w)
    got = _decode(m, x, cache, chunks)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert cache.offset == 11 and cache.length == w
    assert cache.positions().tolist() == [7, 8, 9, 10]


def test_sliding_window_memory_stays_w_and_padding_is_kept():
    w = 3
    m = _gqa(2)
    x = torch.randn(2, 10, E, dtype=F64)
    kpm = torch.zeros(2, 10, dtype=torch.bool)
    kpm[1, 5] = True
    want = m(x, mask=qkv.masks.sliding_window(w - 1, 0), key_padding_mask=kpm).out
    cache = SlidingWindowKVCache(w)
    outs = []
    with torch.no_grad():
        for t in range(10):
            outs.append(m(x[:, t : t + 1], cache=cache, key_padding_mask=kpm[:, t : t + 1]).out)
            assert cache.length == min(t + 1, w)
            per_step = 2 * m.num_kv_heads * m.head_dim * x.element_size()  # B * Hkv * Dh values
            assert cache.key.untyped_storage().nbytes() <= w * per_step
            assert cache.value.untyped_storage().nbytes() <= w * per_step
    torch.testing.assert_close(torch.cat(outs, 1), want, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- static (cross-attention)


@pytest.mark.parametrize("kv_heads", [4, 1])
def test_static_cache_cross_attention(kv_heads):
    m = _gqa(kv_heads)
    x = torch.randn(2, 5, E, dtype=F64)
    memory = torch.randn(2, 7, E, dtype=F64)
    kpm = torch.zeros(2, 7, dtype=torch.bool)
    kpm[0, 5:] = True
    want = m(x, memory, key_padding_mask=kpm).out
    calls = []
    hook = m.k_proj.register_forward_hook(lambda *a: calls.append(1))
    cache = StaticKVCache()
    outs = [m(x[:, :1], memory, cache=cache, key_padding_mask=kpm).out]
    outs += [m(x[:, t : t + 1], cache=cache).out for t in range(1, 5)]
    hook.remove()
    assert len(calls) == 1 and cache.length == 7  # the memory was projected once
    torch.testing.assert_close(torch.cat(outs, 1), want, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"num_kv_heads: expected a divisor of num_heads=4 .*got 3"):
        MultiHeadAttention(embed_dim=16, num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="num_kv_heads: expected a positive int, got 0"):
        MultiHeadAttention(embed_dim=16, num_heads=4, num_kv_heads=0)
    with pytest.raises(ValueError, match="rotary: expected a RotaryEmbedding over the head dim Dh=4"):
        MultiHeadAttention(embed_dim=16, num_heads=4, rotary=RotaryEmbedding(8))
    with pytest.raises(TypeError, match="rotary: expected a RotaryEmbedding, True or None, got str"):
        MultiHeadAttention(embed_dim=16, num_heads=4, rotary="rope")
    with pytest.raises(ValueError, match=r"num_kv_heads: torch\.nn\.MultiheadAttention has no grouped"):
        MultiHeadAttention(embed_dim=16, num_heads=4, num_kv_heads=2).to_torch()
    m = _gqa(2)
    x = torch.randn(2, 3, E, dtype=F64)
    with pytest.raises(TypeError, match="cache: expected a KVCache"):
        m(x, cache={})
    with pytest.raises(ValueError, match="mask: with a cache pass extra masks as bool tensors"):
        m(x, cache=KVCache(), mask=qkv.masks.causal())
    with pytest.raises(ValueError, match="key: with a KVCache the keys are the new tokens, expected Tq=3"):
        m(x, torch.randn(2, 4, E, dtype=F64), cache=KVCache())
    with pytest.raises(ValueError, match=r"key_padding_mask: expected shape \(B, Tq\) = \(2, 3\)"):
        m(x, cache=KVCache(), key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="bias: expected a float tensor or a position-bias module"):
        m(x, bias="alibi")
    with pytest.raises(ValueError, match=r"bias: expected a shape broadcastable to \(\.\.\., H, Tq, Tk\)"):
        m(x, bias=torch.zeros(1, 3, 3, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"bias: a 3-D bias \(3, 3, 3\) could be per sample or per head"):
        m(x, bias=torch.zeros(3, 3, 3, dtype=F64))
    with pytest.raises(TypeError, match="bias: expected a float tensor"):
        m(x, bias=torch.zeros(3, 3, dtype=torch.bool))
    # a bad mask or bias leaves the cache as it was
    cache = SlidingWindowKVCache(2)
    with pytest.raises(
        ValueError, match=r"mask: expected a shape broadcastable to \(B, H, Tq, Tk\) = \(2, 4, 3, 3\)"
    ):
        m(x, cache=cache, mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"bias: expected a shape broadcastable"):
        m(x, cache=cache, bias=torch.zeros(1, 4, 3, 4, dtype=F64))
    assert cache.length == cache.offset == 0
    cache = KVCache(max_len=4)
    with torch.no_grad():
        m(x, cache=cache)
        with pytest.raises(
            ValueError, match="max_len: the cache holds 3 steps and 2 more would exceed max_len=4"
        ):
            m(x[:, :2], cache=cache)
        with pytest.raises(ValueError, match="call reset"):
            m(x[:1, :1], cache=cache)
    x_grad = x.clone().requires_grad_()
    with pytest.raises(RuntimeError, match=r"decode under torch\.no_grad"):
        m(x_grad, cache=KVCache(max_len=4))
    with pytest.raises(ValueError, match="key: the first call with an empty StaticKVCache"):
        m(x, cache=StaticKVCache())
    with pytest.raises(ValueError, match="rotary: not defined for cross-attention"):
        _gqa(2, rotary=True)(x, x, cache=StaticKVCache())
    with pytest.raises(ValueError, match="bias: a position-bias module needs self-attention positions"):
        m(x, x, cache=StaticKVCache(), bias=ALiBi(H))
    with pytest.raises(ValueError, match="max_len: expected a positive int"):
        KVCache(max_len=0)
    with pytest.raises(ValueError, match="window: expected a positive int, got -1"):
        SlidingWindowKVCache(-1)
