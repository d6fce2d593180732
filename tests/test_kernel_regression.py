"""Nadaraya-Watson kernel regression as attention: functional and module."""

from __future__ import annotations

import math

import pytest
import torch

from qkv.api.kernel_regression import nadaraya_watson
from qkv.modules import NadarayaWatson

F64 = torch.float64


def brute_force(xq, xt, yt, kernel, h):
    """Weights and predictions with explicit loops over (query, training point)."""
    xq2 = xq[:, None] if xq.dim() == 1 else xq
    xt2 = xt[:, None] if xt.dim() == 1 else xt
    nq, n = xq2.shape[0], xt2.shape[0]
    k = torch.zeros(nq, n, dtype=F64)
    for i in range(nq):
        for j in range(n):
            u = math.sqrt(float(((xq2[i] - xt2[j]) ** 2).sum())) / h
            if kernel == "gaussian":
                k[i, j] = math.exp(-(u**2) / 2)
            elif kernel == "boxcar":
                k[i, j] = 1.0 if u <= 1 else 0.0
            else:
                k[i, j] = 1 - u**2 if u < 1 else 0.0
    total = k.sum(1, keepdim=True)
    w = torch.where(total > 0, k / torch.where(total > 0, total, 1.0), 0.0)
    return w, w @ yt


@pytest.mark.parametrize(
    ("kernel", "h"), [("gaussian", 1.0), ("gaussian", 0.3), ("boxcar", 1.5), ("epanechnikov", 2.0)]
)
def test_d2l_seed_example(kernel, h):
    out = nadaraya_watson(torch.tensor([57.0]), torch.tensor([56.0, 58.0]), torch.tensor([43.0, 48.0]),
                          kernel=kernel, bandwidth=h, need_weights=True)  # fmt: skip
    assert out.out.shape == (1,)
    assert float(out.out[0]) == pytest.approx(45.5, abs=1e-5)
    torch.testing.assert_close(out.weights, torch.tensor([[0.5, 0.5]]))


def test_module_seed_example():
    nw = NadarayaWatson(kernel="gaussian")
    assert nw.fit(torch.tensor([56.0, 58.0]), torch.tensor([43.0, 48.0])) == []
    res = nw(torch.tensor([57.0]), need_weights=True)
    assert float(res.out[0]) == pytest.approx(45.5, abs=1e-5)
    assert res.weights.shape == (1, 2)


def test_gaussian_huge_bandwidth_is_mean():
    x, y = torch.rand(30, dtype=F64) * 5, torch.randn(30, dtype=F64)
    res = nadaraya_watson(torch.linspace(-1, 6, 7, dtype=F64), x, y, bandwidth=1e6)
    torch.testing.assert_close(res.out, y.mean().expand(7), rtol=0, atol=1e-9)


@pytest.mark.parametrize("kernel", ["gaussian", "boxcar", "epanechnikov"])
@pytest.mark.parametrize("dims", ["1d", "2d"])
def test_kernels_equal_brute_force(kernel, dims):
    if dims == "1d":
        xt, yt, xq = torch.rand(25, dtype=F64) * 4, torch.randn(25, dtype=F64), torch.rand(9, dtype=F64) * 4
    else:
        xt, yt, xq = (
            torch.rand(25, 2, dtype=F64) * 4,
            torch.randn(25, 3, dtype=F64),
            torch.rand(9, 2, dtype=F64) * 4,
        )
    h = 0.8
    w, pred = brute_force(xq, xt, yt, kernel, h)
    res = nadaraya_watson(xq, xt, yt, kernel=kernel, bandwidth=h, need_weights=True)
    assert res.out.shape == pred.shape
    torch.testing.assert_close(res.weights, w, rtol=0, atol=1e-13)
    torch.testing.assert_close(res.out, pred, rtol=0, atol=1e-12)


def test_boxcar_is_average_of_neighbours():
    xt = torch.tensor([0.0, 0.5, 1.0, 2.0, 3.5], dtype=F64)
    yt = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0], dtype=F64)
    res = nadaraya_watson(torch.tensor([0.9, 3.0], dtype=F64), xt, yt, kernel="boxcar", bandwidth=0.5)
    # 0.9: neighbours 0.5, 1.0 (|u| <= 1) -> (2 + 4) / 2; 3.0: neighbour 3.5 (on the edge) -> 16.
    torch.testing.assert_close(res.out, torch.tensor([3.0, 16.0], dtype=F64), rtol=0, atol=1e-15)


def test_epanechnikov_weights_proportional_to_one_minus_u2():
    xt = torch.tensor([0.0, 1.0, 1.5, 3.0], dtype=F64)
    res = nadaraya_watson(torch.tensor([1.0], dtype=F64), xt, torch.zeros(4, dtype=F64), kernel="epanechnikov",
                          bandwidth=2.0, need_weights=True)  # fmt: skip
    k = torch.tensor([1 - 0.25, 1.0, 1 - 0.0625, 0.0], dtype=F64)  # u = 0.5, 0, 0.25, 1 (edge: excluded)
    torch.testing.assert_close(res.weights[0], k / k.sum(), rtol=0, atol=1e-15)


@pytest.mark.parametrize("kernel", ["boxcar", "epanechnikov"])
def test_no_neighbour_query_gives_zero_and_finite_grads(kernel):
    xt = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    yt = torch.tensor([5.0, 6.0, 7.0], dtype=F64, requires_grad=True)
    h = torch.tensor(1.0, dtype=F64, requires_grad=True)
    xq = torch.tensor(
        [10.0, 1.0, 0.5], dtype=F64, requires_grad=True
    )  # 10: nobody; 1.0: keys 0 and 2 on the edge
    res = nadaraya_watson(xq, xt, yt, kernel=kernel, bandwidth=h, need_weights=True)
    assert not torch.isnan(res.out).any() and not torch.isnan(res.weights).any()
    assert float(res.out[0].detach()) == 0.0
    assert torch.equal(res.weights[0], torch.zeros(3, dtype=F64))
    assert res.lse[0] == -math.inf
    res.out.sum().backward()
    assert torch.equal(yt.grad, res.weights.detach().sum(0))  # d out / d y_i = sum_q w_qi
    if kernel == "boxcar":  # equal logits: the prediction does not depend on x_query or h smoothly
        assert h.grad is None and xq.grad is None
    else:
        assert torch.isfinite(h.grad).all() and torch.isfinite(xq.grad).all()
        assert float(xq.grad[0]) == 0.0
        assert float(xq.grad[2]) != 0.0


@pytest.mark.parametrize(("kernel", "h0"), [("gaussian", 0.7), ("epanechnikov", 1.5)])
def test_gradcheck_bandwidth_and_inputs(kernel, h0):
    xt, yt, xq = torch.rand(8, dtype=F64), torch.randn(8, dtype=F64), torch.rand(3, dtype=F64)

    def f(xq, yt, h):
        return nadaraya_watson(xq, xt, yt, kernel=kernel, bandwidth=h).out

    h = torch.tensor(h0, dtype=F64)
    assert torch.autograd.gradcheck(f, tuple(t.requires_grad_(True) for t in (xq, yt, h)))


def test_mask_and_multioutput():
    xt, yt = torch.rand(6, 2, dtype=F64), torch.randn(6, 3, dtype=F64)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[:, 0] = False
    xq = torch.rand(4, 2, dtype=F64)
    res = nadaraya_watson(xq, xt, yt, mask=mask, bandwidth=0.5, need_weights=True)
    w, pred = brute_force(xq, xt[1:], yt[1:], "gaussian", 0.5)
    torch.testing.assert_close(res.weights[:, 1:], w, rtol=0, atol=1e-14)
    assert torch.equal(res.weights[:, 0], torch.zeros(4, dtype=F64))
    torch.testing.assert_close(res.out, pred, rtol=0, atol=1e-13)


def _noisy_sin(n=40):
    g = torch.Generator().manual_seed(1)
    x = torch.sort(torch.rand(n, generator=g, dtype=F64) * 5).values
    y = 2 * torch.sin(x) + x**0.8 + 0.5 * torch.randn(n, generator=g, dtype=F64)
    return x, y


@pytest.mark.parametrize("kernel", ["gaussian", "epanechnikov"])
def test_learnable_fit_reduces_leave_one_out_loss(kernel):
    x, y = _noisy_sin()
    nw = NadarayaWatson(kernel=kernel, bandwidth=3.0, learnable=True)
    seen = []
    history = nw.fit(x, y, epochs=60, lr=0.1, progress=lambda e, loss: seen.append((e, loss)))
    assert len(history) == 60
    assert seen == list(enumerate(history))
    final = float(nw.loo_loss().detach())
    assert final < 0.7 * history[0], (history[0], final)
    h = float(nw.bandwidth.detach())
    assert 0 < h < 3.0
    # The trained model predicts the clean function better than the untrained one.
    xs = torch.linspace(0.5, 4.5, 50, dtype=F64)
    clean = 2 * torch.sin(xs) + xs**0.8
    before = NadarayaWatson(kernel=kernel, bandwidth=3.0)
    before.fit(x, y)
    err_after = (nw(xs).out.detach() - clean).pow(2).mean()
    err_before = (before(xs).out - clean).pow(2).mean()
    assert err_after < err_before


def test_fit_stores_buffers_and_state_dict():
    x, y = _noisy_sin(10)
    nw = NadarayaWatson(bandwidth=0.5)
    nw.fit(x, y)
    assert torch.equal(nw.x_train, x) and torch.equal(nw.y_train, y)
    assert set(nw.state_dict()) == {"x_train", "y_train"}
    nw2 = NadarayaWatson(kernel="gaussian", bandwidth=0.5, learnable=True)
    nw2.fit(x, y, epochs=0)
    assert set(nw2.state_dict()) == {"log_bandwidth", "x_train", "y_train"}
    torch.testing.assert_close(nw2(x).out.detach(), nw(x).out, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- errors


def test_functional_errors():
    x, y = torch.rand(5), torch.rand(5)
    with pytest.raises(
        ValueError, match=r"kernel: expected one of gaussian, boxcar, epanechnikov, got 'tricube'"
    ):
        nadaraya_watson(x, x, y, kernel="tricube")
    with pytest.raises(ValueError, match=r"bandwidth: expected a finite number > 0, got 0"):
        nadaraya_watson(x, x, y, bandwidth=0)
    with pytest.raises(ValueError, match=r"bandwidth: expected a finite value > 0, got -1.0"):
        nadaraya_watson(x, x, y, bandwidth=torch.tensor(-1.0))
    with pytest.raises(ValueError, match=r"y_train: expected N=5 rows"):
        nadaraya_watson(x, x, y[:4])
    with pytest.raises(ValueError, match=r"x_query: expected feature dim D=1"):
        nadaraya_watson(torch.rand(3, 2), x, y)
    with pytest.raises(ValueError, match=r"x_train: expected shape \(N,\) or \(N, D\), got \(5, 1, 1\)"):
        nadaraya_watson(x, x[:, None, None], y)
    with pytest.raises(
        TypeError, match=r"y_train: expected dtype torch.float32 like x_query, got torch.float64"
    ):
        nadaraya_watson(x, x, y.double())
    with pytest.raises(TypeError, match=r"x_query: expected a floating-point tensor"):
        nadaraya_watson(torch.arange(3), x, y)
    with pytest.raises(ValueError, match=r"mask: expected shape \(Nq, N\) = \(5, 5\), got \(5, 4\)"):
        nadaraya_watson(x, x, y, mask=torch.ones(5, 4, dtype=torch.bool))


def test_module_errors():
    with pytest.raises(ValueError, match=r"kernel: expected one of"):
        NadarayaWatson(kernel="cosine")
    with pytest.raises(ValueError, match=r"bandwidth: expected a finite number > 0"):
        NadarayaWatson(bandwidth=-2.0)
    with pytest.raises(ValueError, match=r"learnable: the boxcar kernel"):
        NadarayaWatson(kernel="boxcar", learnable=True)
    with pytest.raises(RuntimeError, match=r"call fit\(x, y\) first"):
        NadarayaWatson()(torch.rand(3))
    nw = NadarayaWatson(learnable=True)
    with pytest.raises(ValueError, match=r"epochs: expected an int >= 0, got -1"):
        nw.fit(torch.rand(3), torch.rand(3), epochs=-1)
    with pytest.raises(ValueError, match=r"lr: expected a finite number > 0, got 0"):
        nw.fit(torch.rand(3), torch.rand(3), lr=0)
    with pytest.raises(ValueError, match=r"y_train: expected N=3 rows"):
        nw.fit(torch.rand(3), torch.rand(4))
    assert nw.x_train is None  # nothing stored on a failed fit
