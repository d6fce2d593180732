"""qkv.models.captioner and qkv.crossmodal.decode: attention shapes and sums, the doubly
stochastic penalty and supervised attention by hand, teacher forcing, beam search that always returns a caption, beam
never worse than greedy and its scores equal to the teacher-forced log-probability, bad input."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from qkv.crossmodal.decode import beam_search, greedy, rank
from qkv.models.builders import CAPTION_PRESETS, build_caption_model
from qkv.models.captioner import caption_targets, doubly_stochastic_penalty, supervised_attention_loss

FACTS = dict(
    vocab_size=9, image_size=8, image_width=32, channels=1, max_words=5, pad_id=0, start_id=2, end_id=3
)
TINY = {
    "captioner": {"kind": "captioner", "dim": 16, "encoder_depth": 1, "encoder_heads": 2, "encoder_mlp_dim": 16,
                  "embed_dim": 8, "hidden_dim": 16, "attention_dim": 8},
    "captioner-transformer": {"kind": "captioner-transformer", "dim": 16, "encoder_depth": 1, "encoder_heads": 2,
                              "encoder_mlp_dim": 16, "decoder_depth": 2, "decoder_heads": 2, "decoder_mlp_dim": 16},
}  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    """Small models run fastest on one thread, above all on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(kind: str, seed: int = 0, **facts):
    torch.manual_seed(seed)
    model = build_caption_model(TINY[kind], **{**FACTS, **facts}).eval()
    # Larger output weights: sharper, more varied word distributions (beam and greedy differ).
    torch.nn.init.normal_(model.out.weight, std=1.5)
    return model


@pytest.mark.parametrize("kind", list(TINY))
def test_attention_shapes_and_every_step_sums_to_one(kind):
    model = tiny(kind)
    images, words = torch.rand(3, 1, 8, 32), torch.tensor([[5, 6, 0], [7, 0, 0], [8, 4, 5]])
    inputs, _ = caption_targets(words, pad_id=0, start_id=2, end_id=3)
    logits, attention = model(images, inputs)
    assert logits.shape == (3, 4, 9) and attention.shape == (3, 4, 16)  # 2 x 8 patches of 4 x 4
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 4))
    assert bool((attention >= 0).all())
    for h in greedy(model, images) + beam_search(model, images, beam=3):
        assert h.attention.shape == (len(h.tokens), 16)
        torch.testing.assert_close(h.attention.sum(-1), torch.ones(len(h.tokens)))


def test_presets_build_for_the_strips():
    for kind, table in CAPTION_PRESETS.items():
        model = build_caption_model(table, **FACTS)
        assert model.grid == (1, 4) and model.patch_size == 8, kind  # one patch per digit slot


def test_teacher_forcing_inputs_and_targets():
    inputs, targets = caption_targets(torch.tensor([[5, 6, 0], [7, 0, 0]]), pad_id=0, start_id=2, end_id=3)
    assert inputs.tolist() == [[2, 5, 6, 0], [2, 7, 0, 0]]
    assert targets.tolist() == [[5, 6, 3, 0], [7, 3, 0, 0]]


def test_doubly_stochastic_penalty_by_hand():
    # one caption, 3 steps (the last is padding), 2 patches
    attention = torch.tensor([[[0.75, 0.25], [0.5, 0.5], [0.0, 1.0]]], dtype=torch.float64)
    steps = torch.tensor([[True, True, False]])
    # sums over the 2 real steps: 1.25 and 0.75 -> (1 - 1.25)^2 + (1 - 0.75)^2 = 0.125
    assert doubly_stochastic_penalty(attention, steps).tolist() == [0.125]
    # all 3 steps: 1.25 and 1.75 -> 0.0625 + 0.5625
    assert doubly_stochastic_penalty(attention).tolist() == [0.625]
    model = tiny("captioner")
    images, words = torch.rand(2, 1, 8, 32), torch.tensor([[5, 6], [7, 0]])
    inputs, targets = caption_targets(words, pad_id=0, start_id=2, end_id=3)
    logits, att = model(images, inputs)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0)
    weighted = build_caption_model({**TINY["captioner"], "stochastic_weight": 0.5}, **FACTS).eval()
    weighted.load_state_dict(model.state_dict())
    expected = ce + 0.5 * doubly_stochastic_penalty(att, targets != 0).mean()
    torch.testing.assert_close(weighted.loss(images, words), expected)


def test_supervised_attention_loss_by_hand():
    # two captions of 2 words and <end>'s step, 4 patches; caption 0's second word has no gold
    attention = torch.tensor([[[0.5, 0.25, 0.125, 0.125], [0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]],
                              [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5], [1.0, 0.0, 0.0, 0.0]]],
                             dtype=torch.float64)  # fmt: skip
    gold = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
                         [[0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 1.0, 0.0]]], dtype=torch.float64)  # fmt: skip
    # three supervised words: -log 0.5; -(0.5 log 1 + 0.5 log 0) with log 0 clamped at log(tiny); -log 0.5
    clamped = -0.5 * torch.log(torch.tensor(torch.finfo(torch.float64).tiny, dtype=torch.float64))
    expected = (2 * torch.log(torch.tensor(2.0, dtype=torch.float64)) + clamped) / 3
    torch.testing.assert_close(supervised_attention_loss(attention, gold), expected)
    assert float(supervised_attention_loss(attention, torch.zeros_like(gold))) == 0.0  # nothing supervised
    with pytest.raises(
        ValueError,
        match=r"gold: expected \(B, T <= 3, N\) fitting the attention \(2, 3, 4\), got \(2, 2, 5\)",
    ):
        supervised_attention_loss(attention, torch.zeros(2, 2, 5))


@pytest.mark.parametrize("kind", ["captioner", "captioner-transformer"])
def test_the_loss_adds_mu_times_the_supervised_attention_of_the_decoders_own_attention(kind):
    # given gold, mu times the term on the attention the captioner reports (nothing without gold);
    # the Transformer's is its last layer's cross-attention averaged over heads
    model = tiny(kind)
    images, words = torch.rand(2, 1, 8, 32), torch.tensor([[5, 6], [7, 0]])
    gold = torch.zeros(2, 2, 16)
    gold[0, 0, :2], gold[0, 1, 5], gold[1, 0, 15] = 0.5, 1.0, 1.0
    inputs, _ = caption_targets(words, pad_id=0, start_id=2, end_id=3)
    _, att = model(images, inputs)
    if kind == "captioner-transformer":
        _, maps = model.decode(inputs, model.encode(images)["features"])
        torch.testing.assert_close(att, maps.cross[-1].mean(1))
    supervised = build_caption_model({**TINY[kind], "attention_supervision": 0.25}, **FACTS).eval()
    supervised.load_state_dict(model.state_dict())
    expected = model.loss(images, words) + 0.25 * supervised_attention_loss(att, gold)
    torch.testing.assert_close(supervised.loss(images, words, gold), expected)
    torch.testing.assert_close(supervised.loss(images, words), model.loss(images, words))
    assert float(supervised.loss(images, words, gold) - model.loss(images, words)) > 0.1  # the term counts
    # and trains the attention: its gradient reaches the supervised attention's query projection
    _, att = supervised(images, inputs)
    query = (
        supervised.attention.score.w_query if kind == "captioner" else supervised.blocks[-1].cross_attn.q_proj
    )
    (grad,) = torch.autograd.grad(supervised_attention_loss(att, gold), query.weight)
    assert float(grad.abs().max()) > 1e-4
    with pytest.raises(ValueError, match="attention_supervision: expected a finite number >= 0, got -1"):
        build_caption_model({**TINY[kind], "attention_supervision": -1}, **FACTS)


class NeverEnds(torch.nn.Module):
    """A captioner stub whose ``<end>`` has probability 0 (or ``end_logit``): word 4 is likeliest,
    word 5 next; attention peaks on patch ``t`` at step ``t``."""

    def __init__(self, end_logit: float = float("-inf")):
        super().__init__()
        self.config = SimpleNamespace(pad_id=0, start_id=2, end_id=3, max_words=4)
        self.end_logit = end_logit

    def encode(self, images):
        return {"features": torch.zeros(images.shape[0], 6, 2)}

    def init_state(self, memory):
        return {"t": torch.zeros(memory["features"].shape[0], dtype=torch.long)}

    def step(self, prev, state, memory):
        logits = torch.tensor([0.0, 0.0, 0.0, self.end_logit, 3.0, 2.0]).expand(len(prev), 6).clone()
        attention = torch.nn.functional.one_hot(state["t"], 6).float()
        return logits, {"t": state["t"] + 1}, attention


@pytest.mark.parametrize("beam", [1, 2, 4])
def test_a_caption_comes_back_when_end_never_comes(beam):
    out = beam_search(NeverEnds(), torch.zeros(2, 1, 8, 32), beam=beam)
    assert len(out) == 2
    for h in out:
        assert h.stop == "limit" and h.tokens == [4, 4, 4, 4]  # max_words words, the likeliest
        p4 = 3.0 - torch.tensor([0.0, 0.0, 0.0, 3.0, 2.0], dtype=torch.float64).logsumexp(0)  # log p(word 4)
        assert h.score == pytest.approx(4 * float(p4))
        assert h.attention.argmax(-1).tolist() == [0, 1, 2, 3]
    # An <end> of tiny probability: forced at the cap, the caption still has max_words words.
    forced = beam_search(NeverEnds(end_logit=-20.0), torch.zeros(1, 1, 8, 32), beam=beam)[0]
    assert forced.stop == "end" and forced.tokens == [4, 4, 4, 4]


@pytest.mark.parametrize("kind", list(TINY))
def test_beam_never_worse_than_greedy_and_scores_are_the_teacher_forced_log_probability(kind):
    images = torch.rand(6, 1, 8, 32, generator=torch.Generator().manual_seed(1))
    better = 0
    for seed in range(4):
        model = tiny(kind, seed)
        g, b = greedy(model, images), beam_search(model, images, beam=4)
        assert [h.tokens for h in beam_search(model, images, beam=1)] == [h.tokens for h in g]
        for hg, hb in zip(g, b):
            assert rank(hb) >= rank(hg)
            better += rank(hb) > rank(hg)
        ended = [(i, h) for i, h in enumerate(b) if h.stop == "end"]
        words = torch.zeros(len(ended), 5, dtype=torch.long)
        for r, (_, h) in enumerate(ended):
            words[r, : len(h.tokens)] = torch.tensor(h.tokens)
        inputs, targets = caption_targets(words, pad_id=0, start_id=2, end_id=3)
        logits, _ = model(images[[i for i, _ in ended]], inputs)
        logp = torch.log_softmax(logits.double(), -1).gather(2, targets[..., None])[..., 0]
        expected = logp.masked_fill(targets == 0, 0.0).sum(1)
        torch.testing.assert_close(torch.tensor([h.score for _, h in ended], dtype=torch.float64), expected,
                                   atol=1e-5, rtol=1e-5)  # fmt: skip
    assert better > 0  # the beam does find better captions than greedy on these models


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(2, 3, 8, 32), "1 channel"),
        (torch.rand(2, 1, 8, 28), "8x32 pixels"),
        (torch.rand(1, 8, 32), "float tensor"),
        (torch.zeros(2, 1, 8, 32, dtype=torch.long), "float tensor"),
    ],
)
def test_bad_images(images, message):
    with pytest.raises(ValueError, match=rf"images: expected.*{message}"):
        greedy(tiny("captioner"), images)


def test_bad_captions_and_arguments():
    with pytest.raises(ValueError, match="words: expected every caption to hold a word"):
        tiny("captioner").loss(torch.rand(2, 1, 8, 32), torch.tensor([[5, 6], [0, 0]]))
    with pytest.raises(ValueError, match="words: expected int64"):
        caption_targets(torch.ones(2, 2), pad_id=0, start_id=2, end_id=3)
    with pytest.raises(ValueError, match="beam: expected an int >= 1, got 0"):
        beam_search(tiny("captioner"), torch.rand(1, 1, 8, 32), beam=0)
    with pytest.raises(ValueError, match="pad_id, start_id, end_id: expected three different ids"):
        build_caption_model(TINY["captioner"], **{**FACTS, "end_id": 2})
    with pytest.raises(ValueError, match="unknown key"):
        build_caption_model({**TINY["captioner"], "decoder_depth": 2}, **FACTS)
