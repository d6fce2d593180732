"""LightConv and DynamicConv: parity with a float64 loop, causality, the banded weights,
padding, gradcheck, the modules."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv.functional.dynamic_conv import banded_weights, conv_padding, dynamic_conv, light_conv
from qkv.modules.dynamic_conv import DynamicConv, LightConv

F64 = torch.float64


@pytest.fixture
def one_thread():
    """Loops of tiny ops (gradcheck, small training runs) are fastest on one thread, and do not
    stall when other processes keep the cores busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def naive_conv(x, kernel, *, causal, key_mask=None):
    """out[b, t, c] = sum_k kernel[b, t, h(c), k] x[b, t + k - P, c]; kernel (B, T, H, K) already
    normalized; positions outside [0, T) or padded count as zero. Also the weights A[b, h, t, s]."""
    bsz, t_len, e = x.shape
    heads, k = kernel.shape[2], kernel.shape[3]
    left = k - 1 if causal else (k - 1) // 2
    out = torch.zeros_like(x)
    weights = torch.zeros(bsz, heads, t_len, t_len, dtype=x.dtype)
    for b in range(bsz):
        for t in range(t_len):
            for j in range(k):
                s = t + j - left
                if not 0 <= s < t_len or (key_mask is not None and not key_mask[b, s]):
                    continue
                for c in range(e):
                    h = c // (e // heads)
                    out[b, t, c] += kernel[b, t, h, j] * x[b, s, c]
                for h in range(heads):
                    weights[b, h, t, s] = kernel[b, t, h, j]
    return out, weights


def per_head(weights, x):
    """Apply banded weights (B, H, T, T) to x (B, T, E) head by head."""
    bsz, t, e = x.shape
    heads = weights.shape[1]
    xh = x.view(bsz, t, heads, e // heads).transpose(1, 2)  # (B, H, T, C)
    return (weights @ xh).transpose(1, 2).reshape(bsz, t, e)


def test_padding_rule():
    assert conv_padding(3, True) == (2, 0)
    assert conv_padding(3, False) == (1, 1)
    assert conv_padding(4, False) == (1, 2)  # even K: one more tap on the right
    assert conv_padding(1, False) == (0, 0)
    with pytest.raises(ValueError, match="kernel_size: expected an int >= 1, got 0"):
        conv_padding(0, True)


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("k", [1, 3, 4, 9])
@pytest.mark.parametrize("kind", ["light", "dynamic-unfold", "dynamic-band"])
def test_equals_float64_loop(kind, k, causal):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(2, 7, 6, generator=g, dtype=F64)  # T=7 < K=9 too
    key_mask = torch.ones(2, 7, dtype=torch.bool)
    key_mask[1, 5:] = False
    key_mask[0, 2] = False
    if kind == "light":
        w = torch.randn(3, k, generator=g, dtype=F64)
        res = light_conv(x, w, causal=causal, key_mask=key_mask, need_weights=True)
        kernel = torch.softmax(w, -1).expand(2, 7, 3, k)
    else:
        w = torch.randn(2, 7, 3, k, generator=g, dtype=F64)
        method = kind.removeprefix("dynamic-")
        res = dynamic_conv(x, w, causal=causal, key_mask=key_mask, need_weights=True, method=method)
        kernel = torch.softmax(w, -1)
    golden, w_golden = naive_conv(x, kernel, causal=causal, key_mask=key_mask)
    torch.testing.assert_close(res.out, golden, rtol=0, atol=1e-14)
    torch.testing.assert_close(res.weights, w_golden, rtol=0, atol=0)
    torch.testing.assert_close(per_head(res.weights, x), res.out, rtol=0, atol=1e-14)
    assert res.backend == f"{kind.split('-')[0]}_conv"


def test_unnormalized_kernel_is_used_as_is():
    x = torch.randn(1, 5, 2, dtype=F64)
    w = torch.tensor([[0.0, 0.0, 1.0]], dtype=F64)  # causal: the current step only
    torch.testing.assert_close(light_conv(x, w, normalize=False).out, x, rtol=0, atol=0)
    w = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)  # two steps back
    out = light_conv(x, w, normalize=False).out
    torch.testing.assert_close(out[:, 2:], x[:, :-2], rtol=0, atol=0)
    assert torch.equal(out[:, :2], torch.zeros(1, 2, 2, dtype=F64))


def test_float32_matches_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 50, 16, generator=g)
    w = torch.randn(2, 50, 4, 5, generator=g)
    for causal in (True, False):
        golden = dynamic_conv(x.double(), w.double(), causal=causal).out
        for method in ("unfold", "band"):
            out = dynamic_conv(x, w, causal=causal, method=method).out
            torch.testing.assert_close(out, golden.float(), rtol=0, atol=2e-6)
        lw = w[0, 0].contiguous()
        golden = light_conv(x.double(), lw.double(), causal=causal).out
        torch.testing.assert_close(light_conv(x, lw, causal=causal).out, golden.float(), rtol=0, atol=2e-6)


# ----------------------------------------------------------------------------- weights, causality


@pytest.mark.parametrize("causal", [True, False])
def test_weight_rows_sum_to_one_over_the_valid_window(causal):
    g = torch.Generator().manual_seed(0)
    t, k = 12, 5
    x = torch.randn(1, t, 4, generator=g, dtype=F64)
    w = torch.randn(1, t, 2, k, generator=g, dtype=F64)
    weights = dynamic_conv(x, w, causal=causal, need_weights=True).weights  # (1, 2, T, T)
    left, right = conv_padding(k, causal)
    kernel = torch.softmax(w, -1)
    for i in range(t):
        inside = [j for j in range(k) if 0 <= i + j - left < t]  # taps landing in the sequence
        expected = kernel[0, i, :, inside].sum(-1)  # (H,)
        torch.testing.assert_close(weights[0, :, i].sum(-1), expected, rtol=0, atol=1e-15)
        if left <= i < t - right:  # the whole window inside: a distribution
            torch.testing.assert_close(weights[0, :, i].sum(-1), torch.ones(2, dtype=F64), rtol=0, atol=1e-15)
        nz = weights[0, :, i].nonzero()[:, 1]
        assert nz.min() >= i - left and nz.max() <= i + right  # the band


@pytest.mark.parametrize("kind", ["light", "dynamic"])
def test_causal_output_ignores_the_future(kind):
    torch.manual_seed(0)
    layer = (LightConv if kind == "light" else DynamicConv)(embed_dim=8, kernel_size=4, num_heads=2).double()
    x = torch.randn(2, 10, 8, dtype=F64)
    for t in (0, 4, 9):
        x2 = x.clone()
        x2[:, t + 1 :] = torch.randn_like(x2[:, t + 1 :]) * 100
        a, b = layer(x).out, layer(x2).out
        assert torch.equal(a[:, : t + 1], b[:, : t + 1])
        if t < 9:
            assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_centered_output_sees_exactly_its_window():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 11, 4, generator=g, dtype=F64)
    w = torch.randn(1, 11, 2, 4, generator=g, dtype=F64)
    left, right = conv_padding(4, False)  # (1, 2)
    base = dynamic_conv(x, w, causal=False).out
    x2 = x.clone()
    x2[:, 5] += 1.0  # reaches outputs 5 - right .. 5 + left
    changed = (dynamic_conv(x2, w, causal=False).out != base).any(-1)[0]
    assert changed.nonzero().flatten().tolist() == list(range(5 - right, 5 + left + 1))


# ----------------------------------------------------------------------------- padding, gradients


@pytest.mark.parametrize("kind", ["light", "dynamic"])
def test_padded_positions_never_leak(kind):
    torch.manual_seed(0)
    layer = (LightConv if kind == "light" else DynamicConv)(
        embed_dim=8, kernel_size=3, num_heads=2, causal=False
    )
    x = torch.randn(2, 9, 8)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[0, 6:] = True
    pad[1, 3] = True

    def run(x):
        xx = x.clone().requires_grad_()
        res = layer(xx, key_padding_mask=pad, need_weights=True)
        (grad,) = torch.autograd.grad(res.out[~pad].sum(), xx)
        return res, grad

    clean, g_clean = run(x)
    x2 = x.clone()
    x2[pad] = 1e4  # garbage in the padded steps
    dirty, g_dirty = run(x2)
    assert torch.equal(clean.out[~pad], dirty.out[~pad])
    assert torch.equal(g_clean, g_dirty)
    assert torch.equal(g_clean[pad], torch.zeros_like(g_clean[pad]))
    assert torch.equal(clean.weights[0, :, :, 6:], torch.zeros(2, 9, 3))  # padded columns
    x3 = x.clone()
    x3[pad] = float("nan")
    assert torch.equal(layer(x3, key_padding_mask=pad).out[~pad], clean.out[~pad])


@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck(causal, one_thread):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 4, generator=g, dtype=F64, requires_grad=True)
    key_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    lw = torch.randn(2, 3, generator=g, dtype=F64, requires_grad=True)
    dw = torch.randn(2, 5, 2, 3, generator=g, dtype=F64, requires_grad=True)

    def light(x, w):
        r = light_conv(x, w, causal=causal, key_mask=key_mask, need_weights=True)
        return r.out, r.weights

    def dynamic(x, w, method):
        r = dynamic_conv(x, w, causal=causal, key_mask=key_mask, need_weights=True, method=method)
        return r.out, r.weights

    assert torch.autograd.gradcheck(light, (x, lw))
    for method in ("unfold", "band"):
        assert torch.autograd.gradcheck(lambda x, w, m=method: dynamic(x, w, m), (x, dw))


# ----------------------------------------------------------------------------- modules


@pytest.mark.parametrize("kind", ["light", "dynamic"])
def test_module_is_glu_conv_projection(kind):
    torch.manual_seed(0)
    cls = LightConv if kind == "light" else DynamicConv
    layer = cls(embed_dim=6, kernel_size=3, num_heads=3, causal=True).double()
    x = torch.randn(2, 7, 6, dtype=F64)
    h = torch.nn.functional.glu(layer.in_proj(x), dim=-1)
    h1, h2 = layer.in_proj(x).chunk(2, dim=-1)
    torch.testing.assert_close(h, h1 * torch.sigmoid(h2), rtol=0, atol=0)
    kernel = (
        torch.softmax(layer.weight, -1).expand(2, 7, 3, 3)
        if kind == "light"
        else torch.softmax(layer.weight_proj(h).view(2, 7, 3, 3), -1)
    )
    golden, w = naive_conv(h, kernel, causal=True)
    res = layer(x, need_weights=True)
    torch.testing.assert_close(res.out, layer.out_proj(golden), rtol=0, atol=1e-14)
    torch.testing.assert_close(res.weights, w, rtol=0, atol=1e-15)


def test_replaces_self_attention_in_a_layer():
    """Same call, same return type as qkv.MultiHeadAttention's self-attention."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 8)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    for layer in (
        qkv.MultiHeadAttention(embed_dim=8, num_heads=2),
        LightConv(embed_dim=8, kernel_size=3, num_heads=2),
        DynamicConv(embed_dim=8, kernel_size=3, num_heads=2),
    ):
        res = layer(x, key_padding_mask=pad, need_weights=True)
        assert isinstance(res, qkv.AttentionOutput)
        assert res.out.shape == (2, 6, 8) and res.weights.shape == (2, 2, 6, 6)
        rows = res.weights[0, :, 2:].sum(-1)  # causal kernels: full windows from step K-1 on
        if not isinstance(layer, qkv.MultiHeadAttention):
            torch.testing.assert_close(rows, torch.ones_like(rows))


@pytest.mark.parametrize("cls", [LightConv, DynamicConv])
def test_weight_dropout_only_in_training(cls):
    torch.manual_seed(0)
    layer = cls(embed_dim=8, kernel_size=5, num_heads=2, weight_dropout=0.5)
    x = torch.randn(2, 10, 8)
    layer.eval()
    assert torch.equal(layer(x).out, layer(x).out)
    layer.train()
    assert not torch.equal(layer(x).out, layer(x).out)
    kernel = torch.zeros(2, 5)  # softmax: 1/5 per tap
    a, b = (light_conv(x, kernel, weight_dropout=0.5, training=True, need_weights=True) for _ in range(2))
    assert not torch.equal(a.out, b.out)
    assert torch.equal(a.weights, b.weights)  # the weights are the kernel before DropConnect
    torch.testing.assert_close(a.weights[0, :, 4:].sum(-1), torch.ones(2, 6))
    # DropConnect: each output is the sum over taps of 0 or (1/5) / (1 - p) = 0.4 times the input
    x1 = torch.ones(1, 10, 4)
    out = light_conv(x1, kernel, weight_dropout=0.5, training=True).out[0, 4:]  # full windows
    assert set((out / 0.4).round().unique().tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}
    torch.testing.assert_close(out / 0.4, (out / 0.4).round())


def test_bad_input_is_named():
    x = torch.randn(2, 5, 6)
    with pytest.raises(ValueError, match=r"weight: expected shape \(H, K\)"):
        light_conv(x, torch.randn(3))
    with pytest.raises(ValueError, match="weight: expected H dividing E=6"):
        light_conv(x, torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"weight: expected shape \(B, T, H, K\)"):
        dynamic_conv(x, torch.randn(2, 4, 3, 3))
    with pytest.raises(TypeError, match=r"weight: expected dtype torch\.float32"):
        light_conv(x, torch.randn(3, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"x: expected shape \(B, T, E\)"):
        light_conv(x[0], torch.randn(3, 3))
    with pytest.raises(TypeError, match="x: expected a floating-point"):
        light_conv(x.long(), torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"key_mask: expected shape \(B, T\)"):
        light_conv(x, torch.randn(3, 3), key_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="key_mask"):
        light_conv(x, torch.randn(3, 3), key_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="weight_dropout"):
        light_conv(x, torch.randn(3, 3), weight_dropout=1.0)
    with pytest.raises(ValueError, match="method: expected 'auto', 'unfold' or 'band', got 'fft'"):
        dynamic_conv(x, torch.randn(2, 5, 3, 3), method="fft")
    with pytest.raises(ValueError, match="embed_dim: expected a multiple of num_heads=4"):
        LightConv(embed_dim=6, kernel_size=3, num_heads=4)
    with pytest.raises(ValueError, match="kernel_size"):
        DynamicConv(embed_dim=6, kernel_size=0, num_heads=3)
    with pytest.raises(ValueError, match="weight_dropout"):
        LightConv(embed_dim=6, kernel_size=3, num_heads=3, weight_dropout=-0.1)
    layer = DynamicConv(embed_dim=6, kernel_size=3, num_heads=3)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, T, E=6\)"):
        layer(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="key_padding_mask"):
        layer(x, key_padding_mask=torch.zeros(2, 6, dtype=torch.bool))
    assert banded_weights(torch.ones(1, 3, 1, 1), causal=True).tolist() == [[torch.eye(3).tolist()]]
