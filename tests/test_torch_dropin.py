"""qkv.MultiHeadAttention inside torch's own Transformer layers.

Each torch layer is built, copied, and its attention swapped for ``MultiHeadAttention.from_torch``;
outputs and gradients of the swapped copy (float32) must equal the original layer's under the
error-ratio rule (golden: the original in float64; eager: the original in float32).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import qkv

from helpers import assert_error_ratio

# torch's layers warn about their own fast paths and mask types; not what is tested here
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:torch")

E, H, B = 16, 4, 3
S, T = 7, 5  # source and target lengths


def swap_attention(model: nn.Module) -> nn.Module:
    """Replace every nn.MultiheadAttention of ``model`` (in place) by qkv's copy of it."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(module, name, qkv.MultiHeadAttention.from_torch(child))
    return model


def _layout(x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    return x if batch_first else x.transpose(0, 1).contiguous()


def _padding(length: int, valid: list[int]) -> torch.Tensor:
    """(B, length) bool, True = padding (torch's convention)."""
    return torch.arange(length)[None, :] >= torch.tensor(valid)[:, None]


def _causal_bool(n: int) -> torch.Tensor:
    return torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)  # True = not allowed


def _build(kind: str, batch_first: bool, norm_first: bool) -> nn.Module:
    kw = dict(dim_feedforward=32, dropout=0.0, batch_first=batch_first, norm_first=norm_first)
    if kind == "encoder":
        return nn.TransformerEncoderLayer(E, H, **kw)
    if kind == "decoder":
        return nn.TransformerDecoderLayer(E, H, **kw)
    return nn.Transformer(E, H, num_encoder_layers=2, num_decoder_layers=2, **kw)


def _inputs(kind: str, masks: str, batch_first: bool, dtype: torch.dtype):
    """Positional inputs and keyword masks of one call, in the layer's layout."""
    g = torch.Generator().manual_seed(0)
    src = torch.randn(B, S, E, generator=g, dtype=torch.float64)
    tgt = torch.randn(B, T, E, generator=g, dtype=torch.float64)
    src_pad, tgt_pad = _padding(S, [S, 4, 2]), _padding(T, [T, 3, T])
    float_mask = torch.randn(S, S, generator=g, dtype=torch.float64)
    args = [_layout(src, batch_first).to(dtype)]
    if kind == "decoder":
        args = [_layout(tgt, batch_first).to(dtype), _layout(src, batch_first).to(dtype)]
    elif kind == "transformer":
        args = [_layout(src, batch_first).to(dtype), _layout(tgt, batch_first).to(dtype)]
    kw: dict = {}
    if kind == "encoder":
        if masks == "padding":
            kw = {"src_key_padding_mask": src_pad}
        elif masks == "float":
            float_pad = torch.zeros(src_pad.shape, dtype=dtype).masked_fill(src_pad, float("-inf"))
            kw = {"src_mask": float_mask.to(dtype), "src_key_padding_mask": float_pad}
        else:  # causal
            kw = {"src_mask": _causal_bool(S), "is_causal": True, "src_key_padding_mask": src_pad}
    elif kind == "decoder":
        if masks == "padding":
            kw = {"tgt_key_padding_mask": tgt_pad, "memory_key_padding_mask": src_pad}
        elif masks == "float":
            kw = {"memory_mask": torch.randn(T, S, generator=g, dtype=torch.float64).to(dtype)}
        else:
            kw = {"tgt_mask": _causal_bool(T), "tgt_is_causal": True, "memory_key_padding_mask": src_pad}
    else:
        causal = nn.Transformer.generate_square_subsequent_mask(T, dtype=dtype)  # float, -inf above
        kw = {"tgt_mask": causal, "src_key_padding_mask": src_pad, "memory_key_padding_mask": src_pad}
        if masks == "causal":
            kw["tgt_is_causal"] = True
        elif masks == "float":
            kw["src_mask"] = float_mask.to(dtype)
    return args, kw


def _param_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameter gradients by name, torch's packed in_proj split as qkv's q/k/v projections."""
    grads = {}
    for name, p in model.named_parameters():
        prefix, _, leaf = name.rpartition(".")
        if leaf in ("in_proj_weight", "in_proj_bias"):
            kind = "weight" if leaf == "in_proj_weight" else "bias"
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), p.grad.chunk(3), strict=True):
                grads[f"{prefix}.{proj}.{kind}"] = part
        else:
            grads[name] = p.grad
    return grads


def _run(model: nn.Module, args, kw, grad_out: torch.Tensor | None):
    args = [a.detach().clone().requires_grad_(grad_out is not None) for a in args]
    out = model(*args, **kw)
    if grad_out is None:
        return out, {}
    (out * grad_out.to(out.dtype)).sum().backward()
    grads = {f"input {i}": a.grad for i, a in enumerate(args)}
    return out, grads | _param_grads(model)


@pytest.mark.parametrize("kind", ["encoder", "decoder", "transformer"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("masks", ["padding", "float", "causal"])
def test_swapped_layer_equals_torch(request, kind, mode, batch_first, norm_first, masks):
    torch.manual_seed(0)
    torch_layer = _build(kind, batch_first, norm_first).train(mode == "train")
    golden_layer = copy.deepcopy(torch_layer).double()
    ours = swap_attention(copy.deepcopy(torch_layer))
    assert not any(isinstance(m, nn.MultiheadAttention) for m in ours.modules())

    args32, kw32 = _inputs(kind, masks, batch_first, torch.float32)
    args64, kw64 = _inputs(kind, masks, batch_first, torch.float64)
    g = torch.Generator().manual_seed(1)
    out_len = T if kind != "encoder" else S
    grad_out = _layout(torch.randn(B, out_len, E, generator=g, dtype=torch.float64), batch_first)

    golden, golden_grads = _run(golden_layer, args64, kw64, grad_out)
    eager, eager_grads = _run(torch_layer, args32, kw32, grad_out)
    impl, impl_grads = _run(ours, args32, kw32, grad_out)
    assert impl.shape == golden.shape
    assert_error_ratio(request, impl, golden, eager)
    assert impl_grads.keys() == golden_grads.keys()
    for name, gi in impl_grads.items():
        assert_error_ratio(
            request, gi, golden_grads[name], eager_grads[name], factor=3.0, what=f"grad {name}"
        )


@pytest.mark.parametrize("kind", ["encoder", "transformer"])
def test_swapped_layer_in_inference_mode(request, kind):
    """Eval under no_grad: torch's layers take their fused (nested-tensor) fast path, ours not."""
    torch.manual_seed(0)
    layer = _build(kind, True, False).eval()
    model = nn.TransformerEncoder(layer, num_layers=2) if kind == "encoder" else layer
    golden_model = copy.deepcopy(model).double()
    ours = swap_attention(copy.deepcopy(model))
    args32, kw32 = _inputs("encoder" if kind == "encoder" else "transformer", "padding", True, torch.float32)
    args64, kw64 = _inputs("encoder" if kind == "encoder" else "transformer", "padding", True, torch.float64)
    with torch.no_grad():
        golden = golden_model(*args64, **kw64)
        eager = model(*args32, **kw32)
        impl = ours(*args32, **kw32)
    assert not impl.is_nested
    assert_error_ratio(request, impl, golden, eager)


def test_torch_call_convention_and_weights():
    torch.manual_seed(0)
    tm = nn.MultiheadAttention(E, H, batch_first=False).double()
    qm = qkv.MultiHeadAttention.from_torch(tm)
    assert (qm.batch_first, qm.embed_dim, qm.num_heads, qm.head_dim) == (False, E, H, E // H)
    assert (qm.kdim, qm.vdim, qm.dropout) == (E, E, 0.0)
    x = torch.randn(S, B, E, dtype=torch.float64)  # (T, B, E)
    per_sample = torch.rand(B * H, S, S) < 0.3  # True = not allowed, row b * H + h
    per_sample[..., 0] = False
    for kwargs in (
        {"attn_mask": per_sample},
        {"attn_mask": per_sample, "average_attn_weights": False},
        {"key_padding_mask": _padding(S, [S, 3, 5]), "attn_mask": torch.zeros(S, S, dtype=torch.float64)},
    ):
        t_out, t_w = tm(x, x, x, **kwargs)
        res = qm(x, x, x, **kwargs)
        assert isinstance(res, tuple)
        assert len(res) == 2
        torch.testing.assert_close(res[0], t_out, rtol=0, atol=1e-12)
        torch.testing.assert_close(res[1], t_w, rtol=0, atol=1e-12)
    # positional arguments in torch's order: key_padding_mask, need_weights, attn_mask
    out, w = qm(x, x, x, None, False, per_sample)
    assert w is None
    torch.testing.assert_close(out, tm(x, x, x, None, False, per_sample)[0], rtol=0, atol=1e-12)
    # unbatched (T, E)
    out1, w1 = qm(x[:, 0], x[:, 0], x[:, 0], attn_mask=per_sample[:H])
    t1, tw1 = tm(x[:, 0], x[:, 0], x[:, 0], attn_mask=per_sample[:H])
    torch.testing.assert_close(out1, t1, rtol=0, atol=1e-12)
    torch.testing.assert_close(w1, tw1, rtol=0, atol=1e-12)


def test_constructor_device_dtype_and_repr():
    qm = qkv.MultiHeadAttention(
        embed_dim=E, num_heads=H, device="cpu", dtype=torch.float64, batch_first=False
    )
    assert all(p.dtype == torch.float64 for p in qm.parameters())
    assert "batch_first=False" in repr(qm)
    with pytest.raises(TypeError, match="batch_first: expected a bool, got str"):
        qkv.MultiHeadAttention(embed_dim=E, num_heads=H, batch_first="yes")


def test_conventions_do_not_mix():
    qm = qkv.MultiHeadAttention(embed_dim=E, num_heads=H)
    x = torch.randn(B, S, E)
    keep = torch.ones(S, S, dtype=torch.bool)
    with pytest.raises(ValueError, match="mask/attn_mask: pass one, not both"):
        qm(x, mask=keep, attn_mask=~keep)
    with pytest.raises(ValueError, match="is_causal: True says attn_mask is the causal mask, but it is not"):
        qm(x, x, x, attn_mask=torch.zeros(S, S, dtype=torch.bool), is_causal=True)
    with pytest.raises(
        ValueError, match=r"attn_mask: expected shape \(Tq, Tk\) = \(7, 7\) or \(B \* num_heads"
    ):
        qm(x, x, x, attn_mask=torch.zeros(B, S, S, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"attn_mask: expected dtype torch.bool or a float dtype \(torch's"):
        qm(x, x, x, attn_mask=torch.zeros(S, S, dtype=torch.long))
    with pytest.raises(
        TypeError, match=r"key_padding_mask: expected dtype torch.bool or a float dtype \(bool True = padding"
    ):
        qm(x, key_padding_mask=torch.zeros(B, S, dtype=torch.int32))


def test_is_causal_alone_is_the_causal_mask():
    torch.manual_seed(0)
    qm = qkv.MultiHeadAttention(embed_dim=E, num_heads=H).double()
    x = torch.randn(B, S, E, dtype=torch.float64)
    out, _ = qm(x, x, x, is_causal=True, need_weights=False)
    ref = qm(x, mask=qkv.masks.causal()).out
    assert torch.equal(out, ref)


def test_compile_equals_eager_and_export_runs():
    """torch.compile (inductor, one graph) equals eager; torch.export gives the same program."""
    torch.manual_seed(0)
    layer = swap_attention(_build("encoder", True, False).eval())
    x = torch.randn(B, S, E)
    pad = _padding(S, [S, 4, 2])
    with torch.no_grad():
        eager = layer(x, src_key_padding_mask=pad)
        compiled = torch.compile(layer, fullgraph=True)(x, src_key_padding_mask=pad)
        exported = torch.export.export(layer, (x,), {"src_key_padding_mask": pad}).module()
        from_export = exported(x, src_key_padding_mask=pad)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_export, eager, rtol=0, atol=1e-6)


def test_capture_inside_torch_layers():
    """qkv.capture records per-head maps from the swapped layers without changing the output."""
    torch.manual_seed(0)
    layer = _build("encoder", True, False).eval().double()
    encoder = swap_attention(
        nn.TransformerEncoder(copy.deepcopy(layer), num_layers=2, enable_nested_tensor=False)
    )
    x = torch.randn(B, S, E, dtype=torch.float64)
    pad = _padding(S, [S, 4, 2])
    with torch.no_grad():
        plain = encoder(x, src_key_padding_mask=pad)
        with qkv.capture(encoder) as maps:
            captured = encoder(x, src_key_padding_mask=pad)
        # torch's own weights for the first layer: its input is x
        first = encoder.layers[0].self_attn.to_torch()
        _, torch_w = first(x, x, x, key_padding_mask=pad, average_attn_weights=False)
    assert torch.equal(captured, plain)
    names = list(maps)
    assert len(names) == 2
    got = maps[names[0]][0]
    assert got.shape == (B, H, S, S)
    torch.testing.assert_close(got, torch_w, rtol=0, atol=1e-12)
