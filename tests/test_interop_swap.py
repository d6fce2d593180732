"""qkv.interop.swap_attention: nn.MultiheadAttention inside any model replaced by
qkv.TorchMultiheadAttention; outputs equal, weights shared or copied, capture works after."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import qkv
from qkv.interop import swap_attention

from helpers import assert_error_ratio

F64 = torch.float64


def _encoder(batch_first: bool, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=batch_first)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).to(dtype)


def _transformer(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Transformer(32, 4, 2, 2, 64, dropout=0.0, batch_first=True).to(dtype)


class _Custom(nn.MultiheadAttention):
    def forward(self, *args, **kwargs):  # its own behaviour: qkv cannot know it
        return super().forward(*args, **kwargs)


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.MultiheadAttention(16, 2, batch_first=True)
        self.blocks = nn.ModuleList([nn.MultiheadAttention(16, 4, kdim=8, vdim=12, batch_first=True)])
        self.custom = _Custom(16, 2, batch_first=True)


@pytest.mark.parametrize("batch_first", [True, False])
def test_swapped_encoder_equals_torch_under_the_error_ratio_rule(request, batch_first):
    x = torch.randn(3, 7, 32, dtype=F64) if batch_first else torch.randn(7, 3, 32, dtype=F64)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 5:] = True
    golden = _encoder(batch_first, F64).eval()(x, src_key_padding_mask=pad)
    eager = _encoder(batch_first).eval()(x.float(), src_key_padding_mask=pad)
    model = _encoder(batch_first).eval()
    report = swap_attention(model)
    assert report.swapped == ("layers.0.self_attn", "layers.1.self_attn")
    assert all(isinstance(layer.self_attn, qkv.TorchMultiheadAttention) for layer in model.layers)
    ours = model(x.float(), src_key_padding_mask=pad)
    assert_error_ratio(request, ours, golden, eager)


def test_swapped_transformer_equals_torch_forward_and_backward(request):
    src, tgt = torch.randn(2, 6, 32, dtype=F64), torch.randn(2, 5, 32, dtype=F64)
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(5, dtype=F64)

    def run(model, dtype):
        s, t = src.to(dtype).requires_grad_(), tgt.to(dtype)
        out = model(s, t, tgt_mask=tgt_mask.to(dtype))
        (grad,) = torch.autograd.grad((out * out).sum(), s)
        return out, grad

    golden, golden_grad = run(_transformer(F64), F64)
    eager, eager_grad = run(_transformer(), torch.float32)
    model = _transformer()
    report = swap_attention(model)
    assert len(report.swapped) == 6  # 2 encoder self, 2 decoder self, 2 cross
    ours, ours_grad = run(model, torch.float32)
    assert_error_ratio(request, ours, golden, eager)
    assert_error_ratio(request, ours_grad, golden_grad, eager_grad, what="grad")


def test_shared_weights_are_the_same_parameters_and_keep_training():
    model = _encoder(True)
    before = {n: p for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # built before the swap
    swap_attention(model)
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    assert all(after[n] is before[n] for n in before)
    w0 = model.layers[0].self_attn.in_proj_weight.detach().clone()
    model(torch.randn(2, 5, 32)).sum().backward()
    opt.step()
    assert not torch.equal(model.layers[0].self_attn.in_proj_weight, w0)


def test_copied_weights_leave_the_original_untouched():
    original = _encoder(True)
    state = copy.deepcopy(original.state_dict())
    model = copy.deepcopy(original)
    swap_attention(model, share_weights=False)
    assert model.layers[0].self_attn.in_proj_weight is not original.layers[0].self_attn.in_proj_weight
    with torch.no_grad():
        model.layers[0].self_attn.in_proj_weight.add_(1.0)
    torch.testing.assert_close(original.state_dict(), state, rtol=0, atol=0)
    assert model.state_dict().keys() == state.keys()  # torch's keys, loadable both ways


def test_report_lists_what_was_left_and_why_and_swapping_twice_is_harmless():
    model = _Mixed()
    report = swap_attention(model)
    assert report.swapped == ("a", "blocks.0")
    assert report.left == {"custom": "_Custom subclasses nn.MultiheadAttention with its own forward"}
    assert isinstance(model.blocks[0], qkv.TorchMultiheadAttention) and model.blocks[0].kdim == 8
    assert "left    custom: _Custom subclasses" in str(report)
    again = swap_attention(model)
    assert again.swapped == ()
    assert again.left["a"] == "already qkv.TorchMultiheadAttention"
    with pytest.raises(ValueError, match="model: cannot swap custom: _Custom subclasses"):
        swap_attention(_Mixed(), strict=True)


def test_capture_after_swap_records_every_layer_in_eval_without_grad():
    model = _encoder(True).eval()
    x = torch.randn(2, 6, 32)
    with torch.no_grad():
        plain = model(x)
    with pytest.raises(ValueError, match=r"qkv\.interop\.swap_attention\(model\)"), qkv.capture(model):
        pass
    swap_attention(model)
    with torch.no_grad(), qkv.capture(model) as maps:
        out = model(x)
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    stacked = maps.stack()
    assert stacked.shape == (2, 2, 4, 6, 6)
    torch.testing.assert_close(stacked.sum(-1), torch.ones(2, 2, 4, 6))


def test_bad_arguments_name_themselves():
    with pytest.raises(TypeError, match=r"model: expected a torch.nn.Module, got str"):
        swap_attention("model")
    with pytest.raises(TypeError, match="share_weights: expected a bool"):
        swap_attention(nn.Linear(2, 2), share_weights="yes")
