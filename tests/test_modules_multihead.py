"""qkv.modules.MultiHeadAttention: parity with torch.nn.MultiheadAttention, masks, dropout, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import qkv
from qkv.modules import MultiHeadAttention

from helpers import assert_error_ratio

E, H = 8, 2


def _torch_mha(dtype=torch.float64, **kw) -> nn.MultiheadAttention:
    m = nn.MultiheadAttention(E, H, batch_first=True, dtype=dtype, **kw)
    if m.in_proj_bias is not None:  # torch zero-inits biases: give them values so they are tested
        with torch.no_grad():
            m.in_proj_bias.normal_()
            m.out_proj.bias.normal_()
    return m


def _inputs(b=3, tq=4, tk=5, kdim=E, vdim=E, dtype=torch.float64, self_attn=False):
    q = torch.randn(b, tq, E, dtype=dtype, requires_grad=True)
    if self_attn:
        return q, None, None
    k = torch.randn(b, tk, kdim, dtype=dtype, requires_grad=True)
    v = torch.randn(b, tk, vdim, dtype=dtype, requires_grad=True)
    return q, k, v


def _torch_param_grads(m: nn.MultiheadAttention) -> dict[str, torch.Tensor]:
    if m._qkv_same_embed_dim:
        gq, gk, gv = m.in_proj_weight.grad.split(E)
    else:
        gq, gk, gv = m.q_proj_weight.grad, m.k_proj_weight.grad, m.v_proj_weight.grad
    grads = {
        "q_proj.weight": gq,
        "k_proj.weight": gk,
        "v_proj.weight": gv,
        "out_proj.weight": m.out_proj.weight.grad,
    }
    if m.in_proj_bias is not None:
        bq, bk, bv = m.in_proj_bias.grad.split(E)
        grads |= {
            "q_proj.bias": bq,
            "k_proj.bias": bk,
            "v_proj.bias": bv,
            "out_proj.bias": m.out_proj.bias.grad,
        }
    return grads


def _clone(ts):
    return [None if t is None else t.detach().clone().requires_grad_(True) for t in ts]


CASES = {
    "self": dict(kw={}, inp={"self_attn": True}),
    "cross": dict(kw={}, inp={"tk": 6}),
    "kdim_vdim": dict(kw={"kdim": 5, "vdim": 3}, inp={"kdim": 5, "vdim": 3}),
    "no_bias": dict(kw={"bias": False}, inp={}),
    "no_bias_kdim": dict(kw={"bias": False, "kdim": 4, "vdim": 6}, inp={"kdim": 4, "vdim": 6}),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("masks", ["none", "key_padding", "attn_mask", "both"])
@pytest.mark.parametrize("weights", ["none", "per_head", "averaged"])
def test_parity_with_torch_float64(case, masks, weights):
    spec = CASES[case]
    tm = _torch_mha(**spec["kw"])
    qm = MultiHeadAttention.from_torch(tm)
    q, k, v = _inputs(**spec["inp"])
    tk = q.shape[1] if k is None else k.shape[1]
    kpm = am = None
    if masks in ("key_padding", "both"):
        kpm = torch.zeros(q.shape[0], tk, dtype=torch.bool)
        kpm[0, -2:] = True  # padding at the end of sample 0
        kpm[2, 1] = True
    if masks in ("attn_mask", "both"):
        am = torch.rand(q.shape[1], tk) < 0.3  # torch: True = NOT allowed
        am[:, 0] = False  # every query keeps key 0, so no row is fully masked (torch gives NaN)
    need = weights != "none"
    avg = weights == "averaged"

    tq_, tk_, tv_ = _clone((q, k, v))
    qq, qk, qv = _clone((q, k, v))
    t_args = (tq_, tq_, tq_) if k is None else (tq_, tk_, tv_)
    t_out, t_w = tm(*t_args, key_padding_mask=kpm, attn_mask=am, need_weights=need, average_attn_weights=avg)
    res = qm(qq, qk, qv, mask=None if am is None else ~am, key_padding_mask=kpm, need_weights=need,
             average_weights=avg)  # fmt: skip

    torch.testing.assert_close(res.out, t_out, rtol=0, atol=1e-12)
    if need:
        assert res.weights.shape == t_w.shape == ((3, 4, tk) if avg else (3, H, 4, tk))
        torch.testing.assert_close(res.weights, t_w, rtol=0, atol=1e-12)
    else:
        assert res.weights is None

    g = torch.randn_like(t_out)
    (t_out * g).sum().backward()
    (res.out * g).sum().backward()
    if k is None:
        torch.testing.assert_close(qq.grad, tq_.grad, rtol=0, atol=1e-11)
    else:
        for ours, theirs in ((qq, tq_), (qk, tk_), (qv, tv_)):
            torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=1e-11)
    t_grads = _torch_param_grads(tm)
    q_grads = {n: p.grad for n, p in qm.named_parameters()}
    assert set(q_grads) == set(t_grads)
    for name, grad in t_grads.items():
        torch.testing.assert_close(q_grads[name], grad, rtol=0, atol=1e-11, msg=name)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_parity_float32_error_ratio(request, backend):
    """float32 under the error-ratio rule: golden = torch in float64, eager = torch in float32."""
    tm64 = _torch_mha(dtype=torch.float64, kdim=6, vdim=4)
    tm32 = _torch_mha(dtype=torch.float32, kdim=6, vdim=4)
    tm32.load_state_dict({n: t.float() for n, t in tm64.state_dict().items()})
    qm = MultiHeadAttention.from_torch(tm32, backend=backend)
    q, k, v = _inputs(b=2, tq=7, tk=9, kdim=6, vdim=4, dtype=torch.float64)
    kpm = torch.zeros(2, 9, dtype=torch.bool)
    kpm[1, 5:] = True
    golden, _ = tm64(q, k, v, key_padding_mask=kpm, need_weights=False)
    eager, _ = tm32(q.float(), k.float(), v.float(), key_padding_mask=kpm, need_weights=False)
    q32, k32, v32 = (t.detach().float().requires_grad_(True) for t in (q, k, v))
    res = qm(q32, k32, v32, key_padding_mask=kpm)
    assert res.backend == backend
    assert_error_ratio(request, res.out, golden, eager, dtype=torch.float32)
    # Backward: input grads against torch float64 / float32.
    g = torch.randn(golden.shape, dtype=torch.float64)
    (golden * g).sum().backward()
    e_in = [t.detach().float().requires_grad_(True) for t in (q, k, v)]
    eager2, _ = tm32(*e_in, key_padding_mask=kpm, need_weights=False)
    (eager2 * g.float()).sum().backward()
    (res.out * g.float()).sum().backward()
    for ours, gold, eag, name in zip((q32, k32, v32), (q, k, v), e_in, "qkv", strict=True):
        assert_error_ratio(request, ours.grad, gold.grad, eag.grad, factor=3.0, what=f"grad {name}")


def test_to_torch_roundtrip_packed_and_separate():
    for kw in ({}, {"kdim": 3, "vdim": 5}, {"bias": False}):
        qm = MultiHeadAttention(embed_dim=E, num_heads=H, **kw).double()
        with torch.no_grad():
            for p in qm.parameters():
                p.normal_()
        tm = qm.to_torch()
        assert tm.batch_first
        assert tm._qkv_same_embed_dim == (not kw.get("kdim"))
        q = torch.randn(2, 3, E, dtype=torch.float64)
        k = torch.randn(2, 4, kw.get("kdim", E), dtype=torch.float64)
        v = torch.randn(2, 4, kw.get("vdim", E), dtype=torch.float64)
        t_out, t_w = tm(q, k, v, average_attn_weights=False)
        res = qm(q, k, v, need_weights=True)
        torch.testing.assert_close(res.out, t_out, rtol=0, atol=1e-12)
        torch.testing.assert_close(res.weights, t_w, rtol=0, atol=1e-12)
        back = MultiHeadAttention.from_torch(tm)
        for (n1, p1), (n2, p2) in zip(qm.named_parameters(), back.named_parameters(), strict=True):
            assert n1 == n2
            assert torch.equal(p1, p2), n1


def test_mask_object_and_causal_matches_torch():
    tm = _torch_mha()
    qm = MultiHeadAttention.from_torch(tm)
    x = torch.randn(2, 5, E, dtype=torch.float64)
    causal_torch = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)  # True = not allowed
    t_out, _ = tm(x, x, x, attn_mask=causal_torch)
    res = qm(x, mask=qkv.masks.causal())
    torch.testing.assert_close(res.out, t_out, rtol=0, atol=1e-12)
    kpm = torch.tensor([[False] * 5, [False, False, False, True, True]])
    t_out2, _ = tm(x, x, x, attn_mask=causal_torch, key_padding_mask=kpm)
    res2 = qm(x, mask=qkv.masks.causal(), key_padding_mask=kpm, need_weights=True)
    torch.testing.assert_close(res2.out, t_out2, rtol=0, atol=1e-12)
    assert torch.all(res2.weights[1, :, :, 3:] == 0)


def test_eval_mode_and_per_head_mask():
    """A (B, H, Tq, Tk) mask: each head sees its own pattern; equals torch's (B*H, Tq, Tk) mask."""
    tm = _torch_mha(dropout=0.4).eval()
    qm = MultiHeadAttention.from_torch(tm)
    assert not qm.training
    x = torch.randn(3, 4, E, dtype=torch.float64)
    allowed = torch.rand(3, H, 4, 4) < 0.6
    allowed[..., 0] = True
    t_out, t_w = tm(x, x, x, attn_mask=~allowed.reshape(3 * H, 4, 4), average_attn_weights=False)
    res = qm(x, mask=allowed, need_weights=True)
    torch.testing.assert_close(res.out, t_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(res.weights, t_w, rtol=0, atol=1e-12)
    assert torch.all(res.weights[~allowed] == 0)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "auto"])
def test_fully_padded_sample_is_safe(backend):
    qm = MultiHeadAttention(embed_dim=E, num_heads=H, backend=backend).double()
    with torch.no_grad():
        qm.out_proj.bias.normal_()
    q, k, v = _inputs(b=2, tq=3, tk=4)
    kpm = torch.zeros(2, 4, dtype=torch.bool)
    kpm[1] = True  # sample 1: every key is padding
    need = backend == "reference"
    res = qm(q, k, v, key_padding_mask=kpm, need_weights=need)
    assert not torch.isnan(res.out).any()
    # The attention vector of sample 1 is 0, so its output is exactly out_proj.bias.
    assert torch.equal(res.out[1], qm.out_proj.bias.expand(3, E))
    if need:
        assert torch.equal(res.weights[1], torch.zeros(H, 3, 4, dtype=torch.float64))
        torch.testing.assert_close(res.weights[0].sum(-1), torch.ones(H, 3, dtype=torch.float64))
    res.out.pow(2).sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
        assert torch.equal(t.grad[1], torch.zeros_like(t.grad[1]))  # nothing flows into sample 1
        assert t.grad[0].abs().sum() > 0
    for name, p in qm.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def test_dropout_off_in_eval_on_in_train():
    qm = MultiHeadAttention(embed_dim=E, num_heads=H, dropout=0.5)
    ref = MultiHeadAttention(embed_dim=E, num_heads=H, dropout=0.0)
    ref.load_state_dict(qm.state_dict())
    x = torch.randn(2, 6, E)
    qm.eval()
    a, b = qm(x).out, qm(x).out
    assert torch.equal(a, b)
    assert torch.equal(a, ref.eval()(x).out)
    qm.train()
    c, d = qm(x).out, qm(x).out
    assert not torch.equal(c, d)
    assert not torch.equal(c, a)
    # Weights are those of the distribution (before dropout): rows still sum to 1.
    w = qm(x, need_weights=True).weights
    torch.testing.assert_close(w.sum(-1), torch.ones(2, H, 6))


def test_weights_not_stored_and_lse_returned():
    qm = MultiHeadAttention(embed_dim=E, num_heads=H, backend="reference")
    x = torch.randn(2, 3, E)
    res = qm(x, need_weights=True)
    assert res.lse.shape == (2, H, 3)
    assert res.backend == "reference"
    assert not any(
        isinstance(val, torch.Tensor) and val.shape == res.weights.shape for val in vars(qm).values()
    )
    avg = qm(x, need_weights=True, average_weights=True).weights
    torch.testing.assert_close(avg, res.weights.mean(1))


def test_init_matches_torch_statistics():
    qm = MultiHeadAttention(embed_dim=64, num_heads=4)
    bound = math.sqrt(6 / (64 + 64))  # xavier uniform per (E, E) projection
    for proj in (qm.q_proj, qm.k_proj, qm.v_proj):
        assert proj.weight.abs().max() <= bound
        assert proj.weight.abs().max() > 0.9 * bound
        assert torch.equal(proj.bias, torch.zeros(64))
    assert torch.equal(qm.out_proj.bias, torch.zeros(64))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"embed_dim": 10, "num_heads": 3}, r"embed_dim: expected a multiple of num_heads=3, got 10"),
        ({"embed_dim": 0, "num_heads": 1}, r"embed_dim: expected a positive int, got 0"),
        ({"embed_dim": 8, "num_heads": 0}, r"num_heads: expected a positive int"),
        ({"embed_dim": 8, "num_heads": 2, "kdim": -1}, r"kdim: expected a positive int, got -1"),
        (
            {"embed_dim": 8, "num_heads": 2, "dropout": 1.0},
            r"dropout: expected a number in \[0, 1\), got 1.0",
        ),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiHeadAttention(**kwargs)


def test_constructor_takes_dims_positionally_and_the_rest_by_keyword():
    m = MultiHeadAttention(8, 2)
    assert (m.embed_dim, m.num_heads, m.head_dim) == (8, 2, 4)
    with pytest.raises(TypeError):
        MultiHeadAttention(8, 2, 4)  # kdim is keyword-only


def test_torch_convention_is_refused_with_the_adapter_named():
    """torch's arguments are qkv.TorchMultiheadAttention's: refused, never reinterpreted."""
    m = MultiHeadAttention(E, H)
    x = torch.randn(2, 3, E)
    for kwargs in ({"attn_mask": torch.zeros(3, 3, dtype=torch.bool)}, {"is_causal": True},
                   {"average_attn_weights": False}):  # fmt: skip
        with pytest.raises(
            TypeError,
            match=rf"{next(iter(kwargs))}: torch.nn.MultiheadAttention's argument.*qkv.TorchMultiheadAttention",
        ):
            m(x, x, x, **kwargs)
    with pytest.raises(TypeError, match=r"got 5 positional arguments.*qkv.TorchMultiheadAttention"):
        m(x, x, x, None, False)  # torch's positional key_padding_mask, need_weights
    with pytest.raises(TypeError, match=r"forward: got an unexpected keyword argument 'need_weight'"):
        m(x, need_weight=True)
    # the qkv call returns an AttentionOutput, never torch's pair
    res = m(x, need_weights=True)
    assert isinstance(res, qkv.AttentionOutput)
    assert res.weights.shape == (2, H, 3, 3)


def test_forward_errors():
    qm = MultiHeadAttention(embed_dim=E, num_heads=H, kdim=4, vdim=3)
    q, k, v = torch.randn(2, 3, E), torch.randn(2, 5, 4), torch.randn(2, 5, 3)
    with pytest.raises(
        ValueError, match=r"query: expected shape \(B, T, E=8\) \(batch first\), got \(3, 8\)"
    ):
        qm(q[0], k, v)
    with pytest.raises(ValueError, match=r"query: expected shape \(B, T, E=8\).*got \(2, 3, 7\)"):
        qm(q[..., :7], k, v)
    with pytest.raises(ValueError, match=r"key: expected shape \(B, T, kdim=4\).*got \(2, 5, 3\)"):
        qm(q, v, v)
    with pytest.raises(ValueError, match=r"value: expected shape \(B, T, vdim=3\).*got \(2, 5, 4\)"):
        qm(q, k, k)
    with pytest.raises(ValueError, match=r"key/value: expected batch size B=2"):
        qm(q, k[:1], v[:1])
    with pytest.raises(ValueError, match=r"value: expected Tk=5 rows"):
        qm(q, k, v[:, :4])
    with pytest.raises(ValueError, match=r"key_padding_mask: expected shape \(B, Tk\) = \(2, 5\)"):
        qm(q, k, v, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"key_padding_mask: expected dtype torch.bool \(True = padding"):
        qm(q, k, v, key_padding_mask=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(TypeError, match=r"key_padding_mask: expected dtype torch.bool \(True = padding"):
        qm(q, k, v, key_padding_mask=torch.zeros(2, 5))  # torch's float padding: the adapter's
    with pytest.raises(TypeError, match=r"mask: expected dtype torch.bool"):
        qm(q, k, v, mask=torch.zeros(3, 5))
    with pytest.raises(
        ValueError,
        match=r"mask: shape \(4, 5\) is not broadcastable to the scores' shape \(\.\.\., H, Tq, Tk\) = \(2, 2, 3, 5\)",
    ):
        qm(q, k, v, mask=torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"average_weights: True needs need_weights=True"):
        qm(q, k, v, average_weights=True)


def test_from_torch_errors():
    with pytest.raises(ValueError, match=r"m: add_bias_kv=True is not supported"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(E, H, add_bias_kv=True, batch_first=True))
    with pytest.raises(ValueError, match=r"m: add_zero_attn=True is not supported"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(E, H, add_zero_attn=True, batch_first=True))
    with pytest.raises(TypeError, match=r"m: expected a torch.nn.MultiheadAttention, got Linear"):
        MultiHeadAttention.from_torch(nn.Linear(2, 2))
