"""qkv.TorchMultiheadAttention, the drop-in for torch.nn.MultiheadAttention: alone over the
combinations of its arguments, and inside torch's own Transformer layers.

Each torch module is built, copied, and its attention swapped for
``TorchMultiheadAttention.from_torch``; outputs, weights and gradients of the copy (float32) must
equal the original's under the error-ratio rule (golden: the original in float64; eager: the
original in float32).
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
            if type(child) is nn.MultiheadAttention:
                setattr(module, name, qkv.TorchMultiheadAttention.from_torch(child))
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
    """Parameter gradients by name (the drop-in keeps torch's parameter names)."""
    return {name: p.grad for name, p in model.named_parameters()}


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
    swapped = [m for m in ours.modules() if isinstance(m, nn.MultiheadAttention)]
    assert swapped
    assert all(isinstance(m, qkv.TorchMultiheadAttention) for m in swapped)

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
@pytest.mark.parametrize("hooked", [False, True])
def test_swapped_layer_in_inference_mode(request, kind, hooked):
    """Eval under no_grad. Without hooks torch's layers may take their fused fast path (it reads
    the drop-in's in_proj_weight); capture's hooks turn it off, and the encoder still hands the
    layers nested tensors (its check passed at construction): the drop-in runs on them."""
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
        if hooked:
            with qkv.capture(ours) as maps:
                impl = ours(*args32, **kw32)
            assert len(maps) == (2 if kind == "encoder" else 6)
        else:
            impl = ours(*args32, **kw32)
    assert not impl.is_nested
    assert_error_ratio(request, impl, golden, eager)


# One call of the drop-in per entry: torch's arguments in every combination that means
# something different (masks bool/float, per sample and head, padding, the causal hint,
# weights per head or averaged or none, unbatched inputs).
CALLS = (
    "plain", "no_weights", "per_head", "pad_bool", "pad_float", "mask_bool", "mask_float_per_head",
    "both_bool", "both_float", "causal_hint", "unbatched", "unbatched_per_head_mask",
)  # fmt: skip


def _call(call: str, batch_first: bool, kdim: int, vdim: int, dtype: torch.dtype):
    """``(query, key, value), kwargs`` of one call, the same numbers for every dtype."""
    g = torch.Generator().manual_seed(2)
    f64 = torch.float64
    q, k, v = (torch.randn(B, n, d, generator=g, dtype=f64) for n, d in ((T, E), (S, kdim), (S, vdim)))
    pad = _padding(S, [S, 4, 2])
    hide = (torch.rand(B * H, T, S, generator=g) < 0.3) & (torch.arange(S) > 0)  # key 0 always visible
    mask_f = torch.randn(B * H, T, S, generator=g, dtype=f64).masked_fill(hide, float("-inf"))
    kw = {
        "plain": {},
        "no_weights": {"need_weights": False},
        "per_head": {"average_attn_weights": False},
        "pad_bool": {"key_padding_mask": pad},
        "pad_float": {"key_padding_mask": torch.zeros(B, S, dtype=f64).masked_fill(pad, float("-inf"))},
        "mask_bool": {"attn_mask": hide[0]},
        "mask_float_per_head": {"attn_mask": mask_f, "average_attn_weights": False},
        "both_bool": {"attn_mask": hide[0], "key_padding_mask": pad},
        "both_float": {
            "attn_mask": mask_f[0],
            "key_padding_mask": torch.zeros(B, S, dtype=f64).masked_fill(pad, float("-inf")),
        },
        "causal_hint": {"attn_mask": _causal_bool(T), "is_causal": True},
        "unbatched": {"key_padding_mask": pad[1], "attn_mask": hide[0]},
        "unbatched_per_head_mask": {"attn_mask": mask_f[:H], "average_attn_weights": False},
    }[call]
    if call == "causal_hint":  # Tq == Tk
        k, v = k[:, :T], v[:, :T]
    if call.startswith("unbatched"):
        q, k, v = q[1], k[1], v[1]
    elif not batch_first:
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    kw = {
        n: (t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t)
        for n, t in kw.items()
    }
    return tuple(t.to(dtype) for t in (q, k, v)), kw


def _mha_run(m: nn.Module, qkv_in, kw, grad_out: torch.Tensor):
    qkv_in = [t.detach().clone().requires_grad_() for t in qkv_in]
    out, w = m(*qkv_in, **kw)
    (out * grad_out.to(out.dtype)).sum().backward()
    grads = {f"input {i}": t.grad for i, t in enumerate(qkv_in)} | _param_grads(m)
    m.zero_grad()
    return out, w, grads


# Constructor arguments (batch_first, kdim/vdim, bias, add_bias_kv, add_zero_attn, train mode):
# the 8 rows of the L8 orthogonal array, so every pair of values of every two arguments is
# tried, plus all-off and all-on.
_L8 = ((0, 0, 0, 0, 0, 0), (0, 0, 1, 1, 1, 1), (0, 1, 0, 1, 0, 1), (0, 1, 1, 0, 1, 0),
       (1, 0, 0, 1, 1, 0), (1, 0, 1, 0, 0, 1), (1, 1, 0, 0, 1, 1), (1, 1, 1, 1, 0, 0),
       (1, 1, 1, 1, 1, 1))  # fmt: skip
CONSTRUCTORS = [tuple(bool(x) for x in row) for row in _L8]


@pytest.mark.parametrize(
    ("batch_first", "kvdim", "bias", "add_bias_kv", "add_zero_attn", "train"), CONSTRUCTORS
)
def test_drop_in_equals_torch(request, batch_first, kvdim, bias, add_bias_kv, add_zero_attn, train):
    """TorchMultiheadAttention == nn.MultiheadAttention (same state_dict) over its constructor
    arguments x every call in CALLS: outputs, weights (or None) and all gradients."""
    torch.manual_seed(0)
    kdim, vdim = (6, 10) if kvdim else (E, E)
    tm = nn.MultiheadAttention(
        E, H, bias=bias, add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn,
        kdim=kdim, vdim=vdim, batch_first=batch_first,
    ).train(train)  # fmt: skip
    golden_m = copy.deepcopy(tm).double()
    ours = qkv.TorchMultiheadAttention.from_torch(tm)
    assert ours.state_dict().keys() == tm.state_dict().keys()
    for call in CALLS:
        in32, kw32 = _call(call, batch_first, kdim, vdim, torch.float32)
        in64, kw64 = _call(call, batch_first, kdim, vdim, torch.float64)
        q_len = in64[0].shape[-2] if call.startswith("unbatched") or batch_first else in64[0].shape[0]
        out_shape = (q_len, E) if call.startswith("unbatched") else tuple(in64[0].shape)
        grad_out = torch.randn(out_shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        golden, golden_w, golden_grads = _mha_run(golden_m, in64, kw64, grad_out)
        eager, eager_w, eager_grads = _mha_run(tm, in32, kw32, grad_out)
        impl, impl_w, impl_grads = _mha_run(ours, in32, kw32, grad_out)
        assert impl.shape == golden.shape, call
        assert_error_ratio(request, impl, golden, eager, what=f"{call}: out")
        if golden_w is None:
            assert impl_w is None, call
        else:
            assert impl_w.shape == golden_w.shape, call
            assert_error_ratio(request, impl_w, golden_w, eager_w, what=f"{call}: weights")
        assert impl_grads.keys() == golden_grads.keys()
        for name, gi in impl_grads.items():
            assert_error_ratio(
                request, gi, golden_grads[name], eager_grads[name], factor=3.0, what=f"{call}: grad {name}"
            )


def test_state_dict_loads_both_ways_and_conversions_keep_everything():
    torch.manual_seed(0)
    tm = nn.MultiheadAttention(E, H, add_bias_kv=True, kdim=6, vdim=10, batch_first=True)
    ours = qkv.TorchMultiheadAttention(E, H, add_bias_kv=True, kdim=6, vdim=10, batch_first=True)
    ours.load_state_dict(tm.state_dict())  # torch's layout in
    back = nn.MultiheadAttention(E, H, add_bias_kv=True, kdim=6, vdim=10, batch_first=True)
    back.load_state_dict(ours.state_dict())  # and out
    assert all(
        torch.equal(a, b) for a, b in zip(back.state_dict().values(), tm.state_dict().values(), strict=True)
    )
    packed = qkv.TorchMultiheadAttention(E, H)
    assert sorted(packed.state_dict()) == [
        "in_proj_bias",
        "in_proj_weight",
        "out_proj.bias",
        "out_proj.weight",
    ]
    assert (packed._qkv_same_embed_dim, packed.batch_first, packed.dropout) == (True, False, 0.0)
    conv = qkv.TorchMultiheadAttention.from_torch(tm.eval(), backend="reference")
    assert (conv.backend, conv.training, conv.kdim, conv.vdim, conv.bias_k.shape) == (
        "reference",
        False,
        6,
        10,
        (1, 1, E),
    )
    again = conv.to_torch()
    assert type(again) is nn.MultiheadAttention
    assert not again.training
    assert all(
        torch.equal(a, b) for a, b in zip(again.state_dict().values(), tm.state_dict().values(), strict=True)
    )
    with pytest.raises(TypeError, match=r"m: expected a torch\.nn\.MultiheadAttention, got Linear"):
        qkv.TorchMultiheadAttention.from_torch(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="backend: expected a name"):
        qkv.TorchMultiheadAttention(E, H, backend=1)


def test_new_user_calls_behave_like_torch():
    """What a torch user types first: positional constructor, ``out, w = mha(x, x, x)``,
    ``mha(x, x, x)[0]``, and the module inside nn.TransformerEncoderLayer(E, H)."""
    torch.manual_seed(0)
    ours = qkv.TorchMultiheadAttention(E, H).double()
    tm = ours.to_torch()
    x = torch.randn(S, B, E, dtype=torch.float64)  # torch's default layout (T, B, E)
    out, w = ours(x, x, x)
    t_out, t_w = tm(x, x, x)
    assert w.shape == (B, S, S)  # head-averaged by default
    torch.testing.assert_close(out, t_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(w, t_w, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours(x, x, x)[0], t_out, rtol=0, atol=1e-12)
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=32, dropout=0.0).double()
    want = layer(x)
    layer.self_attn = qkv.TorchMultiheadAttention.from_torch(layer.self_attn)
    torch.testing.assert_close(layer(x), want, rtol=0, atol=1e-12)


def test_errors_name_the_argument():
    m = qkv.TorchMultiheadAttention(E, H, batch_first=True)
    x = torch.randn(B, S, E)
    with pytest.raises(ValueError, match="is_causal: True says attn_mask is the causal mask, but it is not"):
        m(x, x, x, attn_mask=torch.zeros(S, S, dtype=torch.bool), is_causal=True)
    with pytest.raises(
        ValueError, match=r"attn_mask: expected shape \(Tq, Tk\) = \(7, 7\) or \(B \* num_heads"
    ):
        m(x, x, x, attn_mask=torch.zeros(B, S, S, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"attn_mask: expected dtype torch.bool or a float dtype \(torch's"):
        m(x, x, x, attn_mask=torch.zeros(S, S, dtype=torch.long))
    with pytest.raises(
        TypeError, match=r"key_padding_mask: expected dtype torch.bool or a float dtype \(bool True = padding"
    ):
        m(x, x, x, key_padding_mask=torch.zeros(B, S, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"query: expected embed_dim=16 features"):
        m(x[..., :5], x, x)
    with pytest.raises(ValueError, match="query/key/value: expected all 3-D"):
        m(x[0], x, x)
    with pytest.raises(TypeError, match=r"key: expected a torch\.Tensor, got NoneType"):
        m(x, None, x)


def test_is_causal_alone_is_the_causal_mask():
    torch.manual_seed(0)
    m = qkv.TorchMultiheadAttention(E, H, batch_first=True).double()
    x = torch.randn(B, S, E, dtype=torch.float64)
    out, _ = m(x, x, x, is_causal=True, need_weights=False)
    ref, _ = m(x, x, x, attn_mask=_causal_bool(S), need_weights=False)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


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
    """qkv.capture records per-head maps from the swapped layers without changing the output
    (with gradients on, so that torch's fused inference path, which capture's hooks turn off,
    is not taken without capture either)."""
    torch.manual_seed(0)
    layer = _build("encoder", True, False).eval().double()
    encoder = swap_attention(
        nn.TransformerEncoder(copy.deepcopy(layer), num_layers=2, enable_nested_tensor=False)
    )
    x = torch.randn(B, S, E, dtype=torch.float64)
    pad = _padding(S, [S, 4, 2])
    plain = encoder(x, src_key_padding_mask=pad)
    with qkv.capture(encoder) as maps:
        captured = encoder(x, src_key_padding_mask=pad)
    with torch.no_grad():
        # torch's own weights for the first layer: its input is x
        first = encoder.layers[0].self_attn.to_torch()
        assert type(first) is nn.MultiheadAttention
        _, torch_w = first(x, x, x, key_padding_mask=pad, average_attn_weights=False)
    assert torch.equal(captured, plain)
    names = list(maps)
    assert len(names) == 2
    got = maps[names[0]][0]
    assert got.shape == (B, H, S, S)
    torch.testing.assert_close(got, torch_w, rtol=0, atol=1e-12)
