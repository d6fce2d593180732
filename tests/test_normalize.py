"""Normalizers: sparsemax, entmax, top-k softmax, and ``qkv.attention(normalize=...)``.

The ``entmax`` package is the oracle for sparsemax and 1.5-entmax (forward and backward) on
rows where it is defined; it has no masks, so masked rows are checked against their own
contract (zeros, zero gradients, no NaN).
"""

from __future__ import annotations

import math

import entmax
import pytest
import torch

import qkv
from qkv.backends import BackendNotSupportedError
from qkv.functional import entmax15, entmax_bisect, masked_softmax, sparsemax, topk_softmax
from qkv.functional.normalize import NORMALIZERS, gumbel_softmax_weights, hard_argmax

from helpers import assert_error_ratio, assert_garbage_changes_nothing, naive_score

SPARSE = {"sparsemax": (sparsemax, entmax.sparsemax), "entmax15": (entmax15, entmax.entmax15)}


def _rows(dtype=torch.float64, n=64, tk=9, seed=0) -> torch.Tensor:
    """Random rows at several scales, with ties (inside and at the support's edge) and large
    magnitudes."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, tk, generator=g, dtype=torch.float64)
    z[: n // 4] *= 10.0
    z[n // 4 : n // 2] *= 0.1
    z[n // 2 : n // 2 + 4] = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, -1.0, 2.0, 2.0, 0.5])
    z[n // 2 + 4, :] = 3.0  # a row of equal logits
    z[n // 2 + 5 : n // 2 + 9] *= 1e4  # large magnitudes
    z[n // 2 + 9] = torch.tensor([1e4, 1e4, 1e4 - 0.5, 1e4 - 0.5, 0.0, -1e4, 1e4 - 3, 7.0, 1e4 - 1])
    return z.to(dtype)


# ----------------------------------------------------------------------------- known values


def test_sparsemax_by_hand():
    # sorted 1, 0.5, -1: k=1: 1 + 1 > 1; k=2: 1 + 2 * 0.5 > 1.5; k=3: 1 - 3 > 0.5 fails.
    # support {1, 0.5}, tau = (1.5 - 1) / 2 = 0.25 -> [0.75, 0.25, 0].
    w = sparsemax(torch.tensor([1.0, 0.5, -1.0], dtype=torch.float64))
    assert torch.equal(w, torch.tensor([0.75, 0.25, 0.0], dtype=torch.float64))
    assert torch.equal(sparsemax(torch.tensor([3.0, 0.0])), torch.tensor([1.0, 0.0]))
    assert torch.equal(sparsemax(torch.tensor([2.0, 2.0, 2.0, 2.0])), torch.full((4,), 0.25))


def test_entmax15_by_hand():
    # x = z / 2 = [0.5, 0.25, -0.5]; support {0.5, 0.25}: (0.5 - t)^2 + (0.25 - t)^2 = 1.
    # With mean 0.375 and deviations +-0.125: 2 (0.375 - t)^2 + 2 * 0.125^2 = 1
    # -> t = 0.375 - sqrt(1/2 - 0.125^2) = -0.321; -0.5 < t, so the third entry is 0.
    t = 0.375 - math.sqrt(0.5 - 0.125**2)
    want = torch.tensor([(0.5 - t) ** 2, (0.25 - t) ** 2, 0.0], dtype=torch.float64)
    w = entmax15(torch.tensor([1.0, 0.5, -1.0], dtype=torch.float64))
    torch.testing.assert_close(w, want, rtol=0, atol=1e-15)
    assert w[2] == 0


# ----------------------------------------------------------------------------- oracle parity


@pytest.mark.parametrize("name", sorted(SPARSE))
@pytest.mark.parametrize("dim", [-1, 0])
def test_equals_entmax_package_float64(name, dim):
    mine, oracle = SPARSE[name]
    z = _rows()
    z = z if dim == -1 else z.T.contiguous()
    z.requires_grad_()
    g = torch.randn(z.shape, dtype=torch.float64)
    w, w_ref = mine(z, dim=dim), oracle(z, dim=dim)
    torch.testing.assert_close(w, w_ref, rtol=0, atol=1e-12)
    assert torch.equal(w == 0, w_ref == 0)  # the same support, exact zeros
    (dz,) = torch.autograd.grad(w, z, g)
    (dz_ref,) = torch.autograd.grad(w_ref, z, g)
    torch.testing.assert_close(dz, dz_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SPARSE))
def test_float32_error_ratio_against_entmax(request, name):
    mine, oracle = SPARSE[name]
    z64 = _rows(n=48, seed=1)
    z32 = z64.float().requires_grad_()
    z_golden = z32.detach().double().requires_grad_()  # the float32 inputs, exactly
    golden = oracle(z_golden, dim=-1)
    eager = oracle(z32, dim=-1)
    impl = mine(z32)
    assert impl.dtype == torch.float32
    assert_error_ratio(request, impl, golden, eager)
    g = torch.randn(z32.shape)
    (d_golden,) = torch.autograd.grad(golden, z_golden, g.double())
    (d_eager,) = torch.autograd.grad(eager, z32, g)
    (d_impl,) = torch.autograd.grad(impl, z32, g)
    assert_error_ratio(request, d_impl, d_golden, d_eager, factor=3.0, what="grad")


@pytest.mark.parametrize("name", sorted(SPARSE))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_computes_in_float32(request, name, dtype):
    mine, oracle = SPARSE[name]
    zh = (torch.randn(32, 11) * 3).to(dtype)
    zh[0] = 2e4 if dtype == torch.float16 else 1e30  # large equal logits: no overflow
    impl = mine(zh)
    assert impl.dtype == dtype
    golden = oracle(zh.float(), dim=-1)
    eager = oracle(zh, dim=-1)
    assert_error_ratio(request, impl, golden, eager)
    assert torch.equal(impl[0].float(), torch.full((11,), 1 / 11).to(dtype).float())


# ----------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("name", sorted(SPARSE))
def test_rows_sum_to_one_with_exact_zeros(name):
    mine, _ = SPARSE[name]
    z = torch.randn(200, 16) * 4
    w = mine(z)
    torch.testing.assert_close(w.sum(-1), torch.ones(200), rtol=0, atol=2e-6)
    assert (w >= 0).all()
    # Entries well below the row maximum (1 for sparsemax, 2 for 1.5-entmax) are exactly 0.
    gap = 1.0 if name == "sparsemax" else 2.0
    far = z <= z.amax(-1, keepdim=True) - gap
    assert far.any() and torch.equal(w[far], torch.zeros(int(far.sum())))
    assert 0.2 < float((w == 0).float().mean()) < 0.95  # sparse, not one-hot


@pytest.mark.parametrize(
    "fn",
    [sparsemax, entmax15, lambda z, m: entmax_bisect(z, 1.3, m), lambda z, m: topk_softmax(z, 2, m)],
    ids=["sparsemax", "entmax15", "entmax_bisect", "topk"],
)
def test_masks_zero_rows_and_garbage(fn):
    z = torch.randn(3, 4, 6, dtype=torch.float64)
    mask = torch.rand(3, 4, 6) > 0.4
    mask[1, 2] = False  # a fully masked row
    mask[..., 0] |= torch.arange(4) != 2  # every other row keeps something
    garbage = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30], dtype=z.dtype).repeat(18)
    dirty = torch.where(mask, z, garbage.view(3, 4, 6))
    out = {}
    for name, zz in (("clean", z), ("dirty", dirty)):
        leaf = zz.clone().requires_grad_()
        w = fn(leaf, mask)
        (grad,) = torch.autograd.grad((w * torch.arange(6.0, dtype=w.dtype)).sum(), leaf)
        out[name] = (w, grad)
    w, grad = out["clean"]
    assert torch.equal(w, out["dirty"][0]) and torch.equal(grad, out["dirty"][1])
    assert not torch.isnan(w).any() and not torch.isnan(grad).any()
    assert torch.equal(w[~mask], torch.zeros(int((~mask).sum()), dtype=w.dtype))
    assert torch.equal(grad[~mask], torch.zeros(int((~mask).sum()), dtype=w.dtype))
    assert torch.equal(w[1, 2], torch.zeros(6, dtype=w.dtype))
    rows = mask.any(-1)
    torch.testing.assert_close(w.sum(-1)[rows], torch.ones(int(rows.sum()), dtype=w.dtype))


@pytest.mark.parametrize("name", sorted(SPARSE))
def test_mask_equals_dropping_the_entries(name):
    mine, oracle = SPARSE[name]
    z = torch.randn(5, 8, dtype=torch.float64)
    keep = torch.tensor([True, False, True, True, False, True, False, True])
    w = mine(z, keep)  # mask broadcast over rows
    torch.testing.assert_close(w[:, keep], oracle(z[:, keep], dim=-1), rtol=0, atol=1e-14)


def test_gradcheck_float64():
    z = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(4, 7) > 0.3
    mask[2] = False
    assert torch.autograd.gradcheck(lambda t: sparsemax(t, mask), (z,))
    assert torch.autograd.gradcheck(lambda t: entmax15(t, mask), (z,))
    assert torch.autograd.gradcheck(lambda t: entmax_bisect(t, 1.25, mask), (z,))
    assert torch.autograd.gradcheck(lambda t: topk_softmax(t, 3, mask), (z,))
    zero = torch.zeros(2, 0, dtype=torch.float64, requires_grad=True)  # no keys at all
    assert sparsemax(zero).shape == (2, 0) and entmax15(zero).shape == (2, 0)


def test_entmax_bisect_interpolates():
    z = _rows(n=32, seed=3)[:16]
    torch.testing.assert_close(entmax_bisect(z, 1.5), entmax15(z), rtol=0, atol=1e-10)
    torch.testing.assert_close(entmax_bisect(z, 2.0), sparsemax(z), rtol=0, atol=1e-10)
    soft = masked_softmax(z)[0]
    near_one = entmax_bisect(z, 1.001)
    assert float((near_one - soft).abs().max()) < 0.02
    torch.testing.assert_close(near_one.sum(-1), torch.ones(16, dtype=z.dtype))


# ----------------------------------------------------------------------------- top-k


def test_topk_k_at_least_tk_is_softmax():
    z = torch.randn(3, 5, 7)
    mask = torch.rand(3, 5, 7) > 0.3
    for k in (7, 8, 100):
        assert torch.equal(topk_softmax(z, k), masked_softmax(z)[0])
        assert torch.equal(topk_softmax(z, k, mask), masked_softmax(z, mask)[0])


def test_topk_keeps_the_largest_and_breaks_ties_to_lower_index():
    z = torch.tensor([[0.0, 2.0, 1.0, 2.0, 2.0, -1.0]])
    w = topk_softmax(z, 2)
    want = torch.zeros(1, 6)
    want[0, [1, 3]] = 0.5
    assert torch.equal(w, want)
    w3 = topk_softmax(torch.tensor([[5.0, 1.0, 4.0, 3.0]]), 2, torch.tensor([False, True, True, True]))
    e = torch.tensor([4.0, 3.0]).softmax(-1)
    torch.testing.assert_close(w3, torch.tensor([[0.0, 0.0, e[0], e[1]]]), rtol=0, atol=0)
    # the same choice on every run (50 repetitions, ties everywhere)
    zt = torch.randint(0, 3, (16, 32)).float()
    first = topk_softmax(zt, 5)
    assert all(torch.equal(topk_softmax(zt, 5), first) for _ in range(50))
    assert torch.equal((first > 0).sum(-1), torch.full((16,), 5))


# ----------------------------------------------------------------------------- errors


def test_bad_arguments_are_named():
    z = torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"k: expected an int >= 1, got 0"):
        topk_softmax(z, 0)
    with pytest.raises(ValueError, match="alpha: expected a finite number > 1"):
        entmax_bisect(z, 1.0)
    with pytest.raises(ValueError, match="n_iter"):
        entmax_bisect(z, 1.5, n_iter=0)
    with pytest.raises(TypeError, match="mask: expected a bool tensor"):
        sparsemax(z, torch.ones(2, 4))
    with pytest.raises(ValueError, match="mask: shape"):
        entmax15(z, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="logits: expected a floating-point tensor"):
        sparsemax(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="dim: expected an int"):
        sparsemax(z, dim=2)
    with pytest.raises(ValueError, match="tau: expected a finite number > 0"):
        gumbel_softmax_weights(z, tau=0.0)
    with pytest.raises(TypeError, match=r"generator: expected a torch\.Generator"):
        gumbel_softmax_weights(z, generator=0)


# ----------------------------------------------------------------------------- qkv.attention


def _naive_sparse_attention(q, k, v, mask, bias, normalize):
    """float64 golden: loops for the logits, the entmax package on the allowed keys."""
    oracle = SPARSE[normalize][1]
    b, h, tq, tk = *q.shape[:2], q.shape[2], k.shape[2]
    out = torch.zeros(b, h, tq, v.shape[-1], dtype=q.dtype)
    weights = torch.zeros(b, h, tq, tk, dtype=q.dtype)
    m = mask.expand(b, h, tq, tk)
    for i in range(b):
        for j in range(h):
            logits = naive_score("dot", q[i, j], k[i, j]) / math.sqrt(q.shape[-1]) + bias[i, j]
            for r in range(tq):
                allowed = m[i, j, r]
                if allowed.any():
                    w = torch.zeros(tk, dtype=q.dtype)
                    w[allowed] = oracle(logits[r][allowed], dim=-1)
                    weights[i, j, r] = w
                    out[i, j, r] = w @ v[i, j]
    return out, weights


@pytest.mark.parametrize("normalize", sorted(SPARSE))
def test_attention_equals_naive_float64_and_error_ratio(request, normalize):
    b, h, tq, tk, d = 2, 2, 5, 6, 4
    q64, k64, v64 = (torch.randn(b, h, t, d, dtype=torch.float64) for t in (tq, tk, tk))
    mask = torch.rand(b, 1, tq, tk) > 0.3
    mask[0, 0, 1] = False  # a fully masked row
    bias = torch.randn(b, h, tq, tk, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (q64, k64, v64)]
    golden, golden_w = _naive_sparse_attention(*leaves, mask, bias, normalize)
    r = qkv.attention(q64, k64, v64, mask=mask, bias=bias, normalize=normalize, need_weights=True)
    assert r.backend == "reference" and r.lse is None
    torch.testing.assert_close(r.out, golden, rtol=0, atol=1e-12)
    torch.testing.assert_close(r.weights, golden_w, rtol=0, atol=1e-12)
    assert torch.equal(r.weights[0, :, 1], torch.zeros(h, tk, dtype=torch.float64))

    # float32 against the float64 golden, relative to the same math composed in float32
    g = torch.randn(b, h, tq, d, dtype=torch.float64)
    d_golden = torch.autograd.grad(golden, leaves, g)
    l32 = [t.float().requires_grad_() for t in (q64, k64, v64)]
    eager, _ = _naive_sparse_attention(*l32, mask, bias.float(), normalize)
    d_eager = torch.autograd.grad(eager, l32, g.float())
    i32 = [t.float().requires_grad_() for t in (q64, k64, v64)]
    impl = qkv.attention(*i32, mask=mask, bias=bias.float(), normalize=normalize).out
    d_impl = torch.autograd.grad(impl, i32, g.float())
    assert_error_ratio(request, impl, golden, eager)
    for name, a, gold, e in zip("qkv", d_impl, d_golden, d_eager):
        assert_error_ratio(request, a, gold, e, factor=3.0, what=f"d{name}")


def test_attention_gradcheck_sparse():
    q, k, v = (torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])

    def run(normalize):
        return lambda q, k, v: qkv.attention(q, k, v, mask=mask, normalize=normalize).out

    assert torch.autograd.gradcheck(run("sparsemax"), (q, k, v))
    assert torch.autograd.gradcheck(run("entmax15"), (q, k, v))


@pytest.mark.parametrize("backend", ["sdpa", "chunked", "blocksparse", "flex"])
def test_fast_backends_refuse_non_softmax(backend):
    q = k = v = torch.randn(1, 2, 4, 8)
    with pytest.raises(BackendNotSupportedError, match=r"normalize 'sparsemax'.*softmax weights only"):
        qkv.attention(q, k, v, normalize="sparsemax", backend=backend, mask=qkv.masks.causal())
    report = qkv.dispatch_report(q, k, v, normalize="entmax15")
    assert report.chosen == "reference"
    assert any("normalize 'entmax15'" in why for why in report.reasons[backend])
    custom = qkv.dispatch_report(q, k, v, normalize=lambda logits, mask: logits.softmax(-1))
    assert any("custom normalize callable" in why for why in custom.reasons[backend])


def test_attention_normalizer_names_and_callables():
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 6)
    mask = qkv.masks.causal("bottom_right")
    soft = qkv.attention(q, k, v, mask=mask, need_weights=True)
    topk = qkv.attention(q, k, v, mask=mask, normalize="topk", normalize_kwargs={"k": 7}, need_weights=True)
    torch.testing.assert_close(topk.out, soft.out)
    assert topk.lse is None and soft.lse is not None

    r2 = qkv.attention(q, k, v, mask=mask, normalize="topk", normalize_kwargs={"k": 2}, need_weights=True)
    assert torch.equal((r2.weights > 0).sum(-1), torch.full((2, 3, 5), 2))

    sparse = qkv.attention(q, k, v, normalize="sparsemax", need_weights=True)
    custom = qkv.attention(q, k, v, normalize=lambda logits, m: sparsemax(logits, m), need_weights=True)
    assert torch.equal(sparse.out, custom.out) and custom.backend == "reference"
    torch.testing.assert_close(sparse.out, sparse.weights @ v)
    part = qkv.attention(q, k, v, normalize="sparsemax", weights_for=(1, [0, 4]))
    assert torch.equal(part.weights, sparse.weights[:, 1:2, [0, 4]])

    hard = qkv.attention(q, k, v, normalize="hard", need_weights=True)
    idx = (q @ k.transpose(-1, -2)).argmax(-1)  # (2, 3, 5)
    assert torch.equal(hard.out, torch.gather(v, -2, idx[..., None].expand(-1, -1, -1, 6)))
    bis = qkv.attention(q, k, v, normalize="entmax_bisect", normalize_kwargs={"alpha": 1.5})
    torch.testing.assert_close(bis.out, qkv.attention(q, k, v, normalize="entmax15").out, rtol=0, atol=1e-5)

    gen = [torch.Generator().manual_seed(7) for _ in range(2)]
    gum = [qkv.attention(q, k, v, normalize="gumbel", normalize_kwargs={"generator": g}).out for g in gen]
    assert torch.equal(gum[0], gum[1])

    # 2-D and 3-D layouts
    r2d = qkv.attention(q[0, 0], k[0, 0], v[0, 0], normalize="entmax15", need_weights=True)
    torch.testing.assert_close(r2d.out, qkv.attention(q, k, v, normalize="entmax15").out[0, 0])
    assert r2d.weights.shape == (5, 7) and r2d.lse is None


def test_attention_half_sparsemax(request):
    q, k, v = (torch.randn(2, 2, 5, 8) for _ in range(3))
    golden = qkv.attention(q, k, v, normalize="sparsemax").out
    eager_w = entmax.sparsemax((q.half() @ k.half().transpose(-1, -2)) / math.sqrt(8), dim=-1)
    eager = eager_w @ v.half()
    impl = qkv.attention(q.half(), k.half(), v.half(), normalize="sparsemax").out
    assert impl.dtype == torch.float16
    assert_error_ratio(request, impl, golden, eager)


def test_attention_garbage_in_masked_keys_changes_nothing():
    q, k, v = (torch.randn(1, 2, 4, 8) for _ in range(3))
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    mask[..., 2] = False
    for normalize in ("sparsemax", "entmax15"):
        assert_garbage_changes_nothing(
            q, k, v, where=(0, slice(None), 2), garbage=float("nan"), mask=mask, normalize=normalize
        )


def test_attention_normalize_errors():
    q = k = v = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match=r"normalize: unknown normalizer 'soft'; valid names: softmax, "):
        qkv.attention(q, k, v, normalize="soft")
    with pytest.raises(ValueError, match=r"normalize 'topk' needs parameters \['k'\]"):
        qkv.attention(q, k, v, normalize="topk")
    with pytest.raises(ValueError, match=r"normalize_kwargs\['k'\]: expected an int >= 1, got 0"):
        qkv.attention(q, k, v, normalize="topk", normalize_kwargs={"k": 0})
    with pytest.raises(ValueError, match=r"normalize_kwargs\['alpha'\]"):
        qkv.attention(q, k, v, normalize="entmax_bisect", normalize_kwargs={"alpha": 0.5})
    with pytest.raises(
        ValueError, match=r"normalize_kwargs: \['k'\] are not parameters of normalize 'sparsemax'"
    ):
        qkv.attention(q, k, v, normalize="sparsemax", normalize_kwargs={"k": 2})
    with pytest.raises(ValueError, match="normalize_kwargs: only valid with a named normalizer"):
        qkv.attention(q, k, v, normalize=sparsemax, normalize_kwargs={"k": 2})
    with pytest.raises(ValueError, match=r"normalize 'custom': expected weights of the logits' shape"):
        qkv.attention(q, k, v, normalize=lambda logits, mask: logits[..., 0])
    assert set(NORMALIZERS) >= {"softmax", "sparsemax", "entmax15", "topk", "gumbel", "hard"}
    assert torch.equal(hard_argmax(torch.tensor([[1.0, 3.0, 3.0]])), torch.tensor([[0.0, 1.0, 0.0]]))
