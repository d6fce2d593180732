"""Dynamic routing between capsules: squash, parity with a float64 loop, coupling invariants,
gradcheck, and a small learning task (scikit-learn's 8x8 digits)."""

from __future__ import annotations

import math

import pytest
import torch

from qkv.functional.routing import capsule_predictions, dynamic_routing, margin_loss, squash
from qkv.modules.routing import CapsuleRouting

F64 = torch.float64


@pytest.fixture
def one_thread():
    """Loops of tiny ops (gradcheck, small training runs) are fastest on one thread, and do not
    stall when other processes keep the cores busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def naive_routing(u_hat, iterations):
    """Procedure 1 of Sabour et al., sample by sample and capsule by capsule."""
    bsz, n_in, n_out, d = u_hat.shape
    out = torch.zeros(bsz, n_out, d, dtype=u_hat.dtype)
    coupling = torch.zeros(bsz, n_in, n_out, dtype=u_hat.dtype)
    for b in range(bsz):
        logits = [[0.0] * n_out for _ in range(n_in)]
        for it in range(iterations):
            c = []
            for i in range(n_in):
                e = [math.exp(x) for x in logits[i]]
                c.append([x / sum(e) for x in e])
            v = []
            for j in range(n_out):
                s = sum(c[i][j] * u_hat[b, i, j] for i in range(n_in))
                n = float(s.norm())
                v.append(n * n / (1 + n * n) * s / n)
            if it + 1 < iterations:
                for i in range(n_in):
                    for j in range(n_out):
                        logits[i][j] += float(u_hat[b, i, j] @ v[j])
        out[b] = torch.stack(v)
        coupling[b] = torch.tensor(c, dtype=u_hat.dtype)
    return out, coupling


# ----------------------------------------------------------------------------- squash


def test_squash_keeps_direction_and_maps_length():
    s = torch.randn(50, 7, dtype=F64) * torch.logspace(-3, 3, 50, dtype=F64)[:, None]
    v = squash(s)
    n = s.norm(dim=-1)
    torch.testing.assert_close(v.norm(dim=-1), n**2 / (1 + n**2), rtol=1e-12, atol=1e-15)
    assert bool((v.norm(dim=-1) < 1).all())
    cos = (v * s).sum(-1) / (v.norm(dim=-1) * n)
    torch.testing.assert_close(cos, torch.ones(50, dtype=F64), rtol=0, atol=1e-12)
    assert float(squash(torch.tensor([3.0, 4.0])).norm()) == pytest.approx(25 / 26)


def test_squash_of_zero_is_zero_with_finite_gradient():
    s = torch.zeros(2, 3, requires_grad=True)
    v = squash(s)
    assert torch.equal(v, torch.zeros(2, 3))
    v.sum().backward()
    assert torch.isfinite(s.grad).all()


def test_squash_gradcheck():
    s = torch.randn(4, 5, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(squash, (s,))


# ----------------------------------------------------------------------------- routing


@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
def test_equals_float64_loop(iterations):
    u_hat = torch.randn(2, 6, 4, 3, dtype=F64)
    res = dynamic_routing(u_hat, iterations=iterations)
    out, coupling = naive_routing(u_hat, iterations)
    torch.testing.assert_close(res.out, out, rtol=0, atol=1e-14)
    torch.testing.assert_close(res.weights, coupling, rtol=0, atol=1e-14)
    assert res.backend == "routing"


def test_coupling_rows_sum_to_one_over_outputs():
    res = dynamic_routing(torch.randn(3, 8, 5, 4) * 3, iterations=4)
    c = res.weights  # (B, Ni, No)
    assert c.shape == (3, 8, 5) and bool((c >= 0).all())
    torch.testing.assert_close(c.sum(-1), torch.ones(3, 8))
    assert bool((res.out.norm(dim=-1) < 1).all())


def test_one_iteration_is_uniform_coupling():
    u_hat = torch.randn(2, 6, 4, 3, dtype=F64)
    res = dynamic_routing(u_hat, iterations=1)
    torch.testing.assert_close(res.weights, torch.full((2, 6, 4), 0.25, dtype=F64), rtol=0, atol=0)
    torch.testing.assert_close(res.out, squash(u_hat.sum(1) / 4), rtol=0, atol=1e-15)


def test_routing_follows_agreement():
    """Inputs that all predict the same vector for output 0 (and smaller scattered vectors for
    the others) route more and more of themselves to output 0."""
    g = torch.Generator().manual_seed(0)
    u_hat = torch.randn(1, 10, 3, 4, generator=g, dtype=F64) * 0.5
    u_hat[:, :, 0] = torch.tensor([1.0, 0.5, -0.5, 0.2], dtype=F64)
    share = [float(dynamic_routing(u_hat, iterations=r).weights[..., 0].mean()) for r in (1, 2, 3, 5)]
    assert share[0] == pytest.approx(1 / 3)
    assert share == sorted(share) and share[-1] > 0.9  # 0.33, 0.55, 0.75, 0.95


def test_gradcheck(one_thread):
    u_hat = torch.randn(2, 4, 3, 2, dtype=F64, requires_grad=True)

    def fn(u_hat):
        res = dynamic_routing(u_hat, iterations=3)
        return res.out, res.weights

    assert torch.autograd.gradcheck(fn, (u_hat,))
    layer = CapsuleRouting(in_capsules=3, in_dim=2, out_capsules=2, out_dim=2).double()
    u = torch.randn(2, 3, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u: layer(u).out, (u,))


def test_module_predictions_and_routing():
    layer = CapsuleRouting(in_capsules=5, in_dim=3, out_capsules=4, out_dim=2, iterations=3).double()
    u = torch.randn(2, 5, 3, dtype=F64)
    u_hat = torch.zeros(2, 5, 4, 2, dtype=F64)
    w = layer.weight.detach()
    for b in range(2):
        for i in range(5):
            for j in range(4):
                u_hat[b, i, j] = w[i, j] @ u[b, i]
    torch.testing.assert_close(capsule_predictions(u, w), u_hat, rtol=0, atol=1e-15)
    out, coupling = naive_routing(u_hat, 3)
    res = layer(u)
    torch.testing.assert_close(res.out, out, rtol=0, atol=1e-14)
    torch.testing.assert_close(res.weights, coupling, rtol=0, atol=1e-14)


def test_margin_loss():
    lengths = torch.tensor([[0.95, 0.05, 0.3], [0.5, 0.8, 0.0]])
    target = torch.tensor([0, 2])
    # sample 0: present 0.95 >= 0.9: 0; absent 0.05 <= 0.1: 0, 0.3: 0.5 * 0.2^2 = 0.02
    # sample 1: present 0.0: 0.81; absent 0.5: 0.5 * 0.16 = 0.08, 0.8: 0.5 * 0.49 = 0.245
    assert float(margin_loss(lengths, target)) == pytest.approx((0.02 + 0.81 + 0.08 + 0.245) / 2)


def test_learns_digits(one_thread):
    """8x8 digits (10 classes, chance 0.1): linear primary capsules -> routing to 10 class
    capsules, margin loss. Test accuracy must exceed 0.9, and the trained routing must send each
    input capsule's weight mostly to the predicted class (uniform coupling would be 0.1)."""
    load_digits = pytest.importorskip("sklearn.datasets").load_digits
    torch.manual_seed(0)
    x_np, y_np = load_digits(return_X_y=True)
    x = torch.tensor(x_np, dtype=torch.float32) / 16  # (1797, 64)
    y = torch.tensor(y_np)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    train, test = perm[:1200], perm[1200:]
    primary = torch.nn.Linear(64, 8 * 8)
    caps = CapsuleRouting(in_capsules=8, in_dim=8, out_capsules=10, out_dim=8, iterations=3)
    opt = torch.optim.Adam([*primary.parameters(), *caps.parameters()], lr=0.01)

    def forward(xb):
        u = squash(primary(xb).view(-1, 8, 8))  # (B, 8 capsules, 8)
        return caps(u)

    for _ in range(8):
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(order), 100):
            idx = order[i : i + 100]
            loss = margin_loss(forward(x[idx]).out.norm(dim=-1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        res = forward(x[test])
    pred = res.out.norm(dim=-1).argmax(-1)
    accuracy = float((pred == y[test]).float().mean())
    assert accuracy > 0.9, accuracy
    to_winner = float(res.weights[torch.arange(len(pred)), :, pred].mean())
    assert to_winner > 0.2, to_winner


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"u_hat: expected shape \(B, Ni, No, Do\)"):
        dynamic_routing(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="u_hat"):
        dynamic_routing(torch.ones(2, 3, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="iterations: expected an int >= 1, got 0"):
        dynamic_routing(torch.randn(2, 3, 4, 5), iterations=0)
    with pytest.raises(ValueError, match="weight: expected shape"):
        capsule_predictions(torch.randn(2, 3, 4), torch.randn(3, 2, 5, 3))
    with pytest.raises(ValueError, match="iterations"):
        CapsuleRouting(in_capsules=3, in_dim=2, out_capsules=2, out_dim=2, iterations=0)
    layer = CapsuleRouting(in_capsules=3, in_dim=2, out_capsules=2, out_dim=2)
    with pytest.raises(ValueError, match=r"u: expected shape \(B, Ni=3, Di=2\)"):
        layer(torch.randn(2, 4, 2))
    with pytest.raises(ValueError, match="target"):
        margin_loss(torch.rand(2, 3), torch.tensor([0, 1, 2]))
