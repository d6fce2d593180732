"""qkv.AttentionPooling: the article's layer against a loop-written float64 hand computation,
its forms, masks, gradients, the softmax-only-at-inference trap, and a tiny learning test."""

from __future__ import annotations

import math

import pytest
import torch

import qkv
from qkv.examples.adding import adding_problem, compare_pooling


def hand_pooling(x, mask, q_weight, k_weight, bias, *, heads=1, scale=1.0, softmax=True):
    """``out_b = sum_t w_bt x_bt + b`` with ``w_bt = mean over real queries i of a_bit`` and
    ``a_bit = softmax_t(scale * q_i . k_t)`` over the real positions (raw scores when
    ``softmax`` is False), head by head on slices of the features; written with loops."""
    B, T, U = x.shape
    d, dk = U // heads, q_weight.shape[1] // heads
    out = torch.zeros(B, U, dtype=torch.float64)
    weights = torch.zeros(B, heads, T, dtype=torch.float64)
    for b in range(B):
        real = [t for t in range(T) if mask is None or bool(mask[b, t])]
        if not real:
            continue
        for h in range(heads):
            for i in real:
                q = sum(x[b, i, e] * q_weight[e, h * dk : (h + 1) * dk] for e in range(U))
                s = {}
                for t in real:
                    k = sum(x[b, t, e] * k_weight[e, h * dk : (h + 1) * dk] for e in range(U))
                    s[t] = scale * float((q * k).sum())
                if softmax:
                    top = max(s.values())
                    z = sum(math.exp(v - top) for v in s.values())
                    s = {t: math.exp(v - top) / z for t, v in s.items()}
                for t in real:
                    weights[b, h, t] += s[t] / len(real)
            for t in real:
                out[b, h * d : (h + 1) * d] += weights[b, h, t] * x[b, t, h * d : (h + 1) * d]
        out[b] += bias
    return out, weights


def _inputs(B=3, T=6, U=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, U, generator=g, dtype=dtype)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 4:] = False
    return x, mask


def _module(form="shared", U=4, dtype=torch.float64, **kw):
    torch.manual_seed(1)
    m = qkv.AttentionPooling(U, form=form, **kw).to(dtype)
    with torch.no_grad():
        m.bias.copy_(torch.randn(U))
        if form != "query":
            m.w.mul_(10)  # scores of order 1, so the softmax is not near uniform
    return m


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("form", ["shared", "separate"])
def test_forms_equal_the_hand_computation(form, heads):
    x, mask = _inputs()
    m = _module(form, num_heads=heads)
    k_weight = m.w if form == "shared" else m.w_key
    golden, w_golden = hand_pooling(x, mask, m.w.detach(), k_weight.detach(), m.bias.detach(), heads=heads,
                                    scale=m.scale)  # fmt: skip
    res = m(x, mask=mask, need_weights=True)
    torch.testing.assert_close(res.out, golden, rtol=0, atol=1e-12)
    torch.testing.assert_close(res.weights, w_golden[:, 0] if heads == 1 else w_golden, rtol=0, atol=1e-12)


def test_shared_is_the_article_formula_in_float32_under_the_error_ratio_rule():
    x64, mask = _inputs(B=4, T=9, U=6, seed=3)
    m = _module("shared", U=6)
    params = (m.w.detach(), m.w.detach(), m.bias.detach())
    golden, _ = hand_pooling(x64, mask, *params)
    eager, _ = hand_pooling(x64.float().double(), mask, *(p.float().double() for p in params))
    impl = m.float()(x64.float(), mask=mask).out.double()
    floor = 1e-6 * golden.abs().max()
    assert (impl - golden).abs().max() <= 2 * (eager - golden).abs().max() + floor


def test_query_form_is_yang_word_attention():
    x, mask = _inputs()
    m = _module("query", hidden_dim=6)
    u = torch.tanh(m.w_key(x))  # (B, T, A): u_t = tanh(W h_t + b)
    logits = (u @ m.query[0]).masked_fill(~mask, float("-inf"))  # (B, T): u_t . u_w
    alpha = logits.softmax(-1)
    res = m(x, mask=mask, need_weights=True)
    torch.testing.assert_close(res.weights, alpha, rtol=0, atol=1e-12)
    torch.testing.assert_close(res.out, (alpha[..., None] * x).sum(1) + m.bias, rtol=0, atol=1e-12)


@pytest.mark.parametrize("form", ["shared", "separate", "query"])
@pytest.mark.parametrize("heads", [1, 2])
def test_weights_sum_to_one_and_give_the_output(form, heads):
    x, mask = _inputs()
    m = _module(form, num_heads=heads)
    res = m(x, mask=mask, need_weights=True)
    w = res.weights if heads > 1 else res.weights[:, None]  # (B, H, T)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, heads, dtype=torch.float64), rtol=0, atol=1e-12)
    per_head = torch.einsum("bht,bthd->bhd", w, x.view(3, 6, heads, -1)).reshape(3, 4)
    torch.testing.assert_close(res.out, per_head + m.bias, rtol=0, atol=1e-12)


@pytest.mark.parametrize("form", ["shared", "separate", "query"])
def test_padding_gets_no_weight_and_garbage_there_changes_nothing(form):
    x, mask = _inputs()
    m = _module(form)
    clean = m(x, mask=mask, need_weights=True)
    assert torch.equal(clean.weights[1, 4:], torch.zeros(2, dtype=torch.float64))
    for garbage in (float("nan"), float("inf"), 1e30):
        dirty = x.clone()
        dirty[1, 4:] = garbage
        res = m(dirty, mask=mask, need_weights=True)
        assert torch.equal(res.out, clean.out) and torch.equal(res.weights, clean.weights)
    # the padded sample equals its unpadded prefix alone
    torch.testing.assert_close(m(x[1:2, :4]).out, clean.out[1:2], rtol=0, atol=1e-12)


def test_a_fully_padded_row_gives_zeros_and_zero_gradients():
    x, mask = _inputs()
    mask[2] = False
    x.requires_grad_(True)
    m = _module("shared")
    res = m(x, mask=mask, need_weights=True)
    assert torch.equal(res.out[2], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(res.weights[2], torch.zeros(6, dtype=torch.float64))
    res.out.sum().backward()
    assert torch.equal(x.grad[2], torch.zeros(6, 4, dtype=torch.float64))
    assert torch.isfinite(m.w.grad).all()


@pytest.mark.parametrize(("form", "heads"), [("shared", 1), ("separate", 2), ("query", 2)])
def test_gradcheck_float64(form, heads):
    x, mask = _inputs(B=2, T=4)
    m = _module(form, num_heads=heads)
    m.softmax_in_training = form != "shared"  # the trap's raw path too
    x.requires_grad_(True)
    params = [p for p in m.parameters()]

    def f(x, *ps):
        return m(x, mask=mask).out

    assert torch.autograd.gradcheck(f, (x, *params))


def test_backends_agree():
    x, mask = _inputs(dtype=torch.float32)
    m = _module("shared", dtype=torch.float32)
    ref = m(x, mask=mask, need_weights=True, backend="reference")
    fast = m(x, mask=mask, need_weights=True, backend="sdpa")
    assert (ref.backend, fast.backend) == ("reference", "sdpa")
    torch.testing.assert_close(fast.out, ref.out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.weights, ref.weights, rtol=1e-5, atol=1e-6)


def test_the_trap_changes_training_mode_outputs_only():
    x, mask = _inputs()
    fixed, trap = _module("shared"), _module("shared", softmax_in_training=False)
    trap.load_state_dict(fixed.state_dict())
    fixed.eval(), trap.eval()
    assert torch.equal(trap(x, mask=mask).out, fixed(x, mask=mask).out)
    fixed.train(), trap.train()
    assert torch.equal(fixed(x, mask=mask).out, fixed.eval()(x, mask=mask).out)
    raw = trap(x, mask=mask, need_weights=True)
    golden, w_raw = hand_pooling(x, mask, trap.w.detach(), trap.w.detach(), trap.bias.detach(), softmax=False)
    torch.testing.assert_close(raw.out, golden, rtol=0, atol=1e-12)
    torch.testing.assert_close(raw.weights, w_raw[:, 0], rtol=0, atol=1e-12)
    assert (raw.out - fixed(x, mask=mask).out).abs().max() > 0.1


def test_attention_pooling_solves_the_adding_problem_and_mean_pooling_cannot():
    c = compare_pooling(length=30, steps=200, units=8, seed=0, test_size=200, models=("fixed", "mean"))
    fixed, mean = c.run("fixed"), c.run("mean")
    assert fixed.mse_inference < 0.01 and fixed.marked_mass > 0.9
    assert mean.mse_inference > 0.5 * c.baseline_mse


def test_adding_problem_marks_two_positions_and_sums_them():
    b = adding_problem(50, 7, generator=torch.Generator().manual_seed(0))
    assert b.x.shape == (50, 7, 2) and torch.equal(b.marked.sum(-1), torch.full((50,), 2))
    torch.testing.assert_close(b.y[:, 0], (b.x[..., 0] * b.x[..., 1]).sum(-1))
    with pytest.raises(ValueError, match="length: expected an int >= 2"):
        adding_problem(5, 1, generator=torch.Generator())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"units": 0}, ValueError, "units: expected a positive int"),
        ({"units": 4, "form": "bahdanau"}, ValueError, "form: expected one of shared, separate, query"),
        ({"units": 6, "num_heads": 4}, ValueError, "units: expected a multiple of num_heads=4, got 6"),
        ({"units": 4, "hidden_dim": 3}, ValueError, "hidden_dim: only used with form='query'"),
        ({"units": 4, "form": "query", "num_heads": 2, "hidden_dim": 3}, ValueError, "hidden_dim: expected a multiple"),
        ({"units": 4, "scale": -1.0}, ValueError, "scale: expected a finite number > 0"),
        ({"units": 4, "softmax_in_training": "no"}, TypeError, "softmax_in_training: expected a bool"),
    ],
)  # fmt: skip
def test_bad_construction_names_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        qkv.AttentionPooling(**kwargs)


def test_bad_inputs_name_the_argument():
    m = qkv.AttentionPooling(4)
    with pytest.raises(
        ValueError, match=r"x: expected a float tensor \(B, T, units=4\), got shape \(2, 3, 5\)"
    ):
        m(torch.randn(2, 3, 5))
    with pytest.raises(TypeError, match=r"x: expected a torch\.Tensor, got list"):
        m([[1.0]])
    with pytest.raises(
        ValueError, match=r"mask: expected a bool tensor \(B, T\) = \(2, 3\).*got torch.int64"
    ):
        m(torch.randn(2, 3, 4), mask=torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"mask: .*got torch.bool \(2, 4\)"):
        m(torch.randn(2, 3, 4), mask=torch.ones(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("heads", [1, 2])
def test_capture_records_the_pooling_weights_and_changes_nothing(heads):
    x, mask = _inputs(dtype=torch.float32)
    model = torch.nn.Sequential()
    model.pool = _module("shared", num_heads=heads, dtype=torch.float32)
    plain = model.pool(x, mask=mask)
    with qkv.capture(model) as maps:
        res = model.pool(x, mask=mask)
    assert torch.equal(res.out, plain.out) and res.weights is None
    (recorded,) = maps["pool"]
    expected = model.pool(x, mask=mask, need_weights=True).weights
    expected = expected[:, None] if heads == 1 else expected
    assert recorded.shape == (3, heads, 1, 6) and maps.kind("pool") == "encoder"
    assert torch.equal(recorded[:, :, 0], expected)


@pytest.mark.parametrize("form", ["shared", "separate", "query"])
def test_empty_and_one_token_sequences(form):
    m = _module(form, num_heads=2)
    res = m(torch.randn(2, 0, 4, dtype=torch.float64), need_weights=True)
    assert torch.equal(res.out, torch.zeros(2, 4, dtype=torch.float64)) and res.weights.shape == (2, 2, 0)
    x = torch.randn(2, 1, 4, dtype=torch.float64)
    res = m(x, need_weights=True)  # one token: all the weight on it
    assert torch.equal(res.weights, torch.ones(2, 2, 1, dtype=torch.float64))
    torch.testing.assert_close(res.out, x[:, 0] + m.bias, rtol=0, atol=1e-12)
