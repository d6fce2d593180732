"""Hard attention: Gumbel straight-through, argmax, sampling, REINFORCE and its baseline."""

from __future__ import annotations

import math

import pytest
import torch

from qkv.functional import gumbel_softmax_weights, hard_argmax, sample_hard, topk_softmax
from qkv.modules.hard import HardAttention, HardAttentionOutput, ReinforceBaseline, reinforce_loss

N_SAMPLES = 20000


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- Gumbel


def test_gumbel_straight_through_forward_one_hot_backward_soft():
    z = torch.randn(3, 4, 6, dtype=torch.float64)
    mask = torch.rand(3, 4, 6) > 0.3
    mask[0, 1] = False  # a fully masked row
    mask[..., 5] |= torch.arange(4) != 1
    g = torch.randn(3, 4, 6, dtype=torch.float64)
    hard_in, soft_in = z.clone().requires_grad_(), z.clone().requires_grad_()
    hard = gumbel_softmax_weights(hard_in, tau=0.7, mask=mask, generator=_gen(3))
    soft = gumbel_softmax_weights(soft_in, tau=0.7, mask=mask, hard=False, generator=_gen(3))
    # forward: exactly the one-hot argmax of the soft sample (no hard - soft + soft rounding)
    want = torch.nn.functional.one_hot(soft.argmax(-1), 6).to(soft.dtype) * mask.any(-1, keepdim=True)
    assert torch.equal(hard, want)
    assert torch.equal(hard[0, 1], torch.zeros(6, dtype=hard.dtype))
    assert bool(((hard == 0) | (hard == 1)).all())
    assert torch.equal(hard[~mask], torch.zeros(int((~mask).sum()), dtype=hard.dtype))
    # backward: exactly the gradient of the soft relaxation
    (d_hard,) = torch.autograd.grad(hard, hard_in, g)
    (d_soft,) = torch.autograd.grad(soft, soft_in, g)
    assert torch.equal(d_hard, d_soft)
    assert not torch.isnan(d_hard).any() and float(d_hard.abs().sum()) > 0
    assert torch.equal(d_hard[~mask], torch.zeros(int((~mask).sum()), dtype=g.dtype))


def test_gumbel_soft_gradcheck():
    z = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([True, True, False, True, True])

    def fn(t):  # the same noise on every call
        return gumbel_softmax_weights(t, tau=0.5, hard=False, mask=mask, generator=_gen(1))

    assert torch.autograd.gradcheck(fn, (z,))


def _assert_frequencies_match(one_hot: torch.Tensor, p: torch.Tensor) -> None:
    """Empirical key frequencies equal ``p`` within 4 binomial standard errors each."""
    n = one_hot.shape[0]
    freq = one_hot.double().mean(0)
    se = (p * (1 - p) / n).sqrt()
    assert bool(((freq - p).abs() <= 4 * se + 1e-12).all()), (freq, p, se)


def test_gumbel_max_and_sample_hard_draw_from_softmax():
    z = torch.tensor([1.0, 0.0, -0.5, 2.0, -9.0], dtype=torch.float64)
    mask = torch.tensor([True, True, True, True, False])
    p = torch.softmax(z.masked_fill(~mask, -math.inf), -1)
    rows = z.expand(N_SAMPLES, 5)
    _assert_frequencies_match(gumbel_softmax_weights(rows, mask=mask, generator=_gen(0)), p)
    one_hot, _, _ = sample_hard(rows, mask, generator=_gen(1))
    _assert_frequencies_match(one_hot, p)
    assert float(one_hot[:, 4].sum()) == 0  # the masked key is never drawn


# ----------------------------------------------------------------------------- argmax and sampling


def test_hard_argmax():
    z = torch.tensor([[1.0, 3.0, 3.0, 0.0], [5.0, 1.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True, True], [False, True, True, True], [False] * 4])
    w = hard_argmax(z, mask)
    assert torch.equal(w, torch.tensor([[0.0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]))  # ties: lower index
    assert not w.requires_grad
    assert torch.equal(hard_argmax(z.detach().T, dim=0), hard_argmax(z.detach()).T)


def test_sample_hard_log_prob_entropy_and_masks():
    z = torch.randn(6, 5, dtype=torch.float64)
    mask = torch.rand(6, 5) > 0.3
    mask[:, 0] = True
    mask[2] = False  # a fully masked row
    dirty = torch.where(mask, z, torch.tensor(float("nan"), dtype=z.dtype)).requires_grad_()
    one_hot, log_prob, entropy = sample_hard(dirty, mask, generator=_gen(2))
    (d_lp, d_ent) = (torch.autograd.grad(t.sum(), dirty, retain_graph=True)[0] for t in (log_prob, entropy))
    log_p = torch.log_softmax(z.masked_fill(~mask, -math.inf), -1)
    rows = mask.any(-1)
    idx = one_hot.argmax(-1)
    assert torch.equal(one_hot.sum(-1), rows.to(z.dtype))
    assert bool(mask[rows, idx[rows]].all())  # only allowed keys are drawn
    torch.testing.assert_close(log_prob[rows], log_p[rows, idx[rows]], rtol=0, atol=1e-14)
    ent = torch.distributions.Categorical(logits=z[rows].masked_fill(~mask[rows], -math.inf)).entropy()
    torch.testing.assert_close(entropy[rows], ent, rtol=0, atol=1e-14)
    # d log p_s / dz = onehot_s - p on allowed keys, 0 elsewhere; the empty row gives 0, no NaN
    p = log_p.exp().nan_to_num(0.0)
    torch.testing.assert_close(d_lp, (one_hot - p) * rows[:, None], rtol=0, atol=1e-14)
    assert log_prob[2] == 0 and entropy[2] == 0
    for grad in (d_lp, d_ent):
        assert not torch.isnan(grad).any()
        assert torch.equal(grad[~mask], torch.zeros(int((~mask).sum()), dtype=z.dtype))


# ----------------------------------------------------------------------------- REINFORCE

THETA = torch.tensor([0.3, -0.2, 1.0, -1.0], dtype=torch.float64)
REWARD = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64) + 10.0  # the offset makes variance


def _exact_gradient() -> torch.Tensor:
    """d E_{s ~ softmax(theta)}[r_s] / d theta = p * (r - p . r)."""
    p = torch.softmax(THETA, -1)
    return p * (REWARD - p @ REWARD)


def _estimates(baseline, seed: int) -> torch.Tensor:
    """Per-sample score-function estimates ``(r_s - b) d log p_s / d theta``, (N, 4), one
    vectorized backward of :func:`reinforce_loss` (each row is its own leaf)."""
    logits = THETA.repeat(N_SAMPLES, 1).requires_grad_()
    one_hot, log_prob, _ = sample_hard(logits, generator=_gen(seed))
    reward = one_hot @ REWARD
    loss = reinforce_loss(reward, log_prob, baseline)
    (grad,) = torch.autograd.grad(loss, logits)
    return -grad * N_SAMPLES  # the loss is the negated batch mean


def test_reinforce_estimator_is_unbiased_and_the_baseline_cuts_variance(record_property):
    exact = _exact_gradient()
    tracker = ReinforceBaseline(decay=0.9)
    warm = torch.Generator().manual_seed(5)
    for _ in range(50):  # rewards from earlier batches only: independent of the current samples
        p = torch.softmax(THETA, -1)
        draws = torch.multinomial(p, 64, replacement=True, generator=warm)
        baseline = tracker(REWARD[draws])
    assert abs(float(baseline) - float(torch.softmax(THETA, -1) @ REWARD)) < 0.3

    variances, tolerances = {}, {}
    for name, b in (("none", None), ("moving_average", baseline)):
        est = _estimates(b, seed=11)
        mean, se = est.mean(0), est.std(0) / math.sqrt(N_SAMPLES)
        # unbiased: within 4 standard errors of the exact gradient in every component
        assert bool(((mean - exact).abs() <= 4 * se).all()), (name, mean, exact, se)
        variances[name] = float(est.var(0).sum())
        tolerances[name] = float(4 * se.max()) / float(exact.abs().max())
    ratio = variances["moving_average"] / variances["none"]
    record_property("baseline_variance_ratio", ratio)
    assert ratio < 0.05, variances  # measured: 0.005 (reward offset 10, spread 1..4)
    # The tolerance is tight enough to matter: a fraction of the gradient's largest component
    # (measured: 0.49 without a baseline, 0.03 with it).
    assert tolerances["none"] < 0.6 and tolerances["moving_average"] < 0.1, tolerances


def test_reinforce_through_hard_attention_is_unbiased():
    d = 3
    keys = torch.randn(4, d, dtype=torch.float64)
    q0 = torch.randn(d, dtype=torch.float64)
    attn = HardAttention(mode="reinforce", score="dot", query_dim=d).double().train()
    query = q0.repeat(N_SAMPLES, 1).requires_grad_()  # (N, D): one decoder step per row
    values = torch.eye(4, dtype=torch.float64).expand(N_SAMPLES, 4, 4)  # out = e_s
    res = attn(query, keys.expand(N_SAMPLES, 4, d), values, generator=_gen(4))
    assert isinstance(res, HardAttentionOutput) and res.log_prob.shape == (N_SAMPLES,)
    reward = res.out @ REWARD  # (N,)
    (grad,) = torch.autograd.grad(reinforce_loss(reward, res.log_prob), query)
    est = -grad * N_SAMPLES
    p = torch.softmax(keys @ q0, -1)
    exact = (p * (REWARD - p @ REWARD)) @ keys  # d E[r_s] / d q = sum_j p_j (r_j - p.r) k_j
    se = est.std(0) / math.sqrt(N_SAMPLES)
    assert bool(((est.mean(0) - exact).abs() <= 4 * se).all()), (est.mean(0), exact, se)


def test_reinforce_loss_formula_and_errors():
    log_prob = torch.tensor([[-0.5, -1.0], [-2.0, -0.1]], requires_grad=True)
    entropy = torch.tensor([[0.3, 0.2], [0.1, 0.4]], requires_grad=True)
    reward = torch.tensor([1.0, 3.0], requires_grad=True)
    loss = reinforce_loss(reward, log_prob, 2.0, entropy, 0.5)
    # -(mean[(1 - 2)(-1.5), (3 - 2)(-2.1)]) - 0.5 mean[0.5, 0.5] = -(1.5 - 2.1) / 2 - 0.25
    torch.testing.assert_close(loss, torch.tensor(0.3 - 0.25))
    d_lp, d_ent, d_r = torch.autograd.grad(loss, (log_prob, entropy, reward), allow_unused=True)
    torch.testing.assert_close(d_lp, torch.tensor([[0.5, 0.5], [-0.5, -0.5]]))
    torch.testing.assert_close(d_ent, torch.full((2, 2), -0.25))
    assert d_r is None  # the advantage is detached
    per_choice = reinforce_loss(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), log_prob)
    torch.testing.assert_close(per_choice, torch.tensor(-(1.0 * -0.5 + 2.0 * -0.1) / 4))  # mean of 4
    with pytest.raises(ValueError, match="reward: expected shape"):
        reinforce_loss(torch.ones(3), log_prob)
    with pytest.raises(ValueError, match="entropy: required"):
        reinforce_loss(reward, log_prob, entropy_weight=0.1)
    with pytest.raises(ValueError, match="entropy_weight"):
        reinforce_loss(reward, log_prob, entropy=entropy, entropy_weight=-1.0)
    with pytest.raises(TypeError, match="log_prob: expected a float tensor"):
        reinforce_loss(reward, [0.0, 1.0])


def test_reinforce_baseline_moving_average():
    b = ReinforceBaseline(decay=0.75)
    assert float(b(torch.tensor([2.0, 4.0]))) == 0.0  # nothing seen yet
    assert float(b(torch.tensor([10.0]))) == 3.0  # the first batch's mean
    assert float(b.value) == 0.75 * 3.0 + 0.25 * 10.0
    b.eval()
    before = b.value.clone()
    assert float(b(torch.tensor([100.0]))) == float(before)
    assert torch.equal(b.value, before) and int(b.steps) == 2
    assert set(b.state_dict()) == {"value", "steps"}
    with pytest.raises(ValueError, match=r"decay: expected a number in \[0, 1\), got 1.0"):
        ReinforceBaseline(decay=1.0)


def test_reinforce_learns_to_attend_to_the_best_key():
    torch.manual_seed(0)
    keys = torch.randn(1, 4, 5)
    query = torch.randn(1, 1, 5)
    attn = HardAttention(mode="reinforce", score="general", query_dim=5)
    baseline = ReinforceBaseline(decay=0.9)
    opt = torch.optim.Adam(attn.parameters(), lr=0.05)
    values = torch.eye(4).expand(64, 4, 4)
    gen = _gen(0)
    for _ in range(80):
        res = attn(query.expand(64, 1, 5), keys.expand(64, 4, 5), values, generator=gen)
        reward = res.out[:, 0] @ REWARD.float()  # (64,)
        loss = reinforce_loss(reward, res.log_prob, baseline(reward), res.entropy, 0.01)
        opt.zero_grad()
        loss.backward()
        opt.step()
    attn.eval()
    res = attn(query, keys, torch.eye(4)[None], need_weights=True)
    assert torch.equal(res.weights, torch.tensor([[[0.0, 0.0, 0.0, 1.0]]]))  # reward 14: the best
    assert res.log_prob is None


# ----------------------------------------------------------------------------- the module


def test_hard_attention_modes():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 6)
    lens = torch.tensor([5, 2])
    for mode in ("reinforce", "gumbel", "argmax"):
        attn = HardAttention(mode=mode, score="general", query_dim=4)
        logits = attn.score(q, k).masked_fill(torch.arange(5) >= lens[:, None, None], -math.inf)
        attn.eval()
        res = attn(q, k, v, valid_lens=lens, need_weights=True)
        assert torch.equal(res.weights, hard_argmax(logits))
        torch.testing.assert_close(res.out, res.weights @ v)
        attn.train()
        res = attn(q, k, v, valid_lens=lens, need_weights=True, generator=_gen(0))
        assert bool(((res.weights == 0) | (res.weights == 1)).all())
        assert torch.equal(res.weights.sum(-1), torch.ones(2, 3))
        assert float(res.weights[1, :, 2:].detach().sum()) == 0  # never beyond the valid length
        if mode == "argmax":  # no gradient through the choice: nothing to differentiate here
            assert not res.out.requires_grad
        else:
            (res.out.sum() + (0 if res.log_prob is None else res.log_prob.sum())).backward()
            assert float(attn.score.weight.grad.abs().sum()) > 0
        assert (res.log_prob is not None) == (mode == "reinforce")
    topk = HardAttention(mode="topk", score="additive", query_dim=4, key_dim=4, hidden_dim=3, k=2)
    res = topk(q, k, v, need_weights=True)
    assert torch.equal(res.weights, topk_softmax(topk.score(q, k), 2))


def test_hard_attention_one_step_and_empty_rows():
    attn = HardAttention(mode="reinforce", score="dot", query_dim=4).train()
    q, k = torch.randn(3, 4), torch.randn(3, 5, 4)
    res = attn(q, k, valid_lens=torch.tensor([5, 0, 1]), need_weights=True, generator=_gen(0))
    assert res.out.shape == (3, 4) and res.weights.shape == (3, 5) and res.log_prob.shape == (3,)
    assert torch.equal(res.out[1], torch.zeros(4)) and res.log_prob[1] == 0 and res.entropy[1] == 0
    assert torch.equal(res.out[2], k[2, 0]) and res.log_prob[2] == 0  # one key: log 1
    out, weights = res
    assert out is res.out and weights is res.weights


def test_hard_attention_constructor_errors():
    with pytest.raises(ValueError, match="mode: expected one of reinforce, gumbel, argmax, topk"):
        HardAttention(mode="soft", query_dim=4)
    with pytest.raises(ValueError, match="score: expected one of dot, general, additive"):
        HardAttention(score="concat", query_dim=4)
    with pytest.raises(ValueError, match="k: required by mode='topk'"):
        HardAttention(mode="topk", query_dim=4)
    with pytest.raises(ValueError, match="k: required by mode='topk' and only used there"):
        HardAttention(mode="argmax", query_dim=4, k=2)
    with pytest.raises(ValueError, match="tau: only used by mode='gumbel'"):
        HardAttention(mode="reinforce", query_dim=4, tau=0.5)
    with pytest.raises(ValueError, match="hidden_dim: only used by score='additive'"):
        HardAttention(score="general", query_dim=4, hidden_dim=8)
    with pytest.raises(ValueError, match="key_dim: score='dot' needs key_dim == query_dim"):
        HardAttention(score="dot", query_dim=4, key_dim=3)
    with pytest.raises(ValueError, match="query_dim: expected a positive int"):
        HardAttention(query_dim=0)
    with pytest.raises(ValueError, match="keys: expected feature dim 4"):
        HardAttention(query_dim=4)(torch.randn(1, 2, 4), torch.randn(1, 3, 5))
