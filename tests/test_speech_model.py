"""Listen, Attend and Spell and its decoding: a tiny recognizer learns three words, beam search is
never less probable than greedy and always returns a transcript, bad input is refused."""

import pytest
import torch
from torch import nn

from qkv.application.run import torch_threads
from qkv.models.builders import build_speech_model
from qkv.models.las import LASConfig
from qkv.speech.decode import beam_search, greedy
from qkv.speech.training import pad_features
from qkv.speech.vocabulary import WordVocabulary
from spoken_toys import WORDS, word_utterances

TINY = {"kind": "las", "frame_stack": 2, "listener_dim": 16, "listener_layers": 2, "speller_dim": 32,
        "embed_dim": 8, "attention_dim": 16, "dropout": 0.0}  # fmt: skip


def test_a_tiny_recognizer_learns_three_words_within_300_steps():
    with torch_threads(1):  # a tiny model: more threads only wait for each other
        _learn_three_words()


def _learn_three_words():
    torch.manual_seed(0)
    vocab = WordVocabulary(WORDS)
    model = build_speech_model({**TINY, "attention": "location"}, n_mels=8, vocab_size=len(vocab))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(300):
        feats, texts = word_utterances(16, seed=step)
        x, lengths = pad_features(feats)
        tgt_in, tgt_out = vocab.encode(texts)
        loss = nn.functional.cross_entropy(
            model(x, lengths, tgt_in).flatten(0, 1), tgt_out.flatten(), ignore_index=0
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    feats, texts = word_utterances(50, seed=10_000)
    x, lengths = pad_features(feats)
    hyps = [vocab.decode(h.tokens) for h in greedy(model, x, lengths, max_len=8)]
    assert sum(h == t for h, t in zip(hyps, texts, strict=True)) >= 48
    # its attention is monotonic: each word's peak state comes after the previous word's
    h = greedy(model, x[:1], lengths[:1], max_len=8)[0]
    peaks = h.attention.argmax(-1).tolist()[: len(h.tokens)]
    assert peaks == sorted(peaks)


class _NeverEnds(nn.Module):
    """A step model whose <eos> (id 2) is never likely: token 3 at log p ~ -0.01 each step."""

    config = LASConfig(n_mels=4, vocab_size=5)

    def encode(self, features, lengths):
        return {"states": features, "lengths": lengths}

    def init_state(self, memory):
        return {"t": torch.zeros(memory["states"].shape[0])}

    def step(self, prev, state, memory):
        b, s = memory["states"].shape[:2]
        logits = torch.tensor([-30.0, -30.0, -30.0, 5.0, 0.0]).expand(b, 5)
        return logits, {"t": state["t"] + 1}, torch.full((b, s), 1.0 / s)


def test_beam_returns_a_transcript_when_end_never_comes():
    x, lengths = torch.zeros(2, 7, 4), torch.tensor([7, 5])
    for hyps in (
        greedy(_NeverEnds(), x, lengths, max_len=6),
        beam_search(_NeverEnds(), x, lengths, beam=3, max_len=6),
    ):
        assert [h.stop for h in hyps] == ["limit", "limit"]
        assert [h.tokens for h in hyps] == [[3] * 6, [3] * 6]
        assert [tuple(h.attention.shape) for h in hyps] == [(6, 7), (6, 5)]


def test_beam_is_never_less_probable_than_greedy():
    torch.manual_seed(1)
    model = build_speech_model(TINY, n_mels=8, vocab_size=6).eval()
    x, lengths = pad_features([torch.randn(n, 8) for n in (9, 14, 20, 6, 11, 17)])
    g = greedy(model, x, lengths, max_len=10)
    b = beam_search(model, x, lengths, beam=4, max_len=10)
    for hg, hb in zip(g, b, strict=True):
        assert hb.score >= hg.score - 1e-9
        assert hb.attention.shape[0] == len(hb.tokens) + (hb.stop == "eos")
    one = beam_search(model, x, lengths, beam=1, max_len=10)
    assert [h.tokens for h in one] == [h.tokens for h in g]


def test_padding_never_changes_an_utterance():
    torch.manual_seed(2)
    model = build_speech_model(TINY, n_mels=8, vocab_size=6).eval()
    a, b = torch.randn(12, 8), torch.randn(21, 8)
    x, lengths = pad_features([a, b])
    alone = model(a[None], torch.tensor([12]), torch.tensor([[1, 3, 4]]))
    batched = model(x, lengths, torch.tensor([[1, 3, 4], [1, 4, 4]]))
    torch.testing.assert_close(batched[0], alone[0], atol=1e-6, rtol=1e-5)
    # the training loss is the mean cross-entropy per real target token
    tgt_out = torch.tensor([[3, 4, 2], [4, 2, 0]])
    ce = nn.functional.cross_entropy(batched.flatten(0, 1), tgt_out.flatten(), ignore_index=0)
    torch.testing.assert_close(model.loss(x, lengths, torch.tensor([[1, 3, 4], [1, 4, 4]]), tgt_out), ce)


def test_bad_input_is_refused_by_name():
    model = build_speech_model(TINY, n_mels=8, vocab_size=6)
    with pytest.raises(ValueError, match=r"features: expected \(B, T, 8\)"):
        model.encode(torch.zeros(2, 5, 7), torch.tensor([5, 5]))
    with pytest.raises(ValueError, match=r"lengths: expected values in \[1, 5\]"):
        model.encode(torch.zeros(2, 5, 8), torch.tensor([5, 0]))
    with pytest.raises(ValueError, match=r"LASConfig\.attention: expected one of additive, location"):
        LASConfig(n_mels=8, vocab_size=6, attention="dot")
    with pytest.raises(ValueError, match="unknown key"):
        build_speech_model({"kind": "las", "heads": 2}, n_mels=8, vocab_size=6)
    with pytest.raises(ValueError, match="beam: expected an int >= 1"):
        beam_search(model, torch.zeros(1, 5, 8), torch.tensor([5]), beam=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        WordVocabulary(WORDS).encode(["one four"])
