"""The monotonic share counts the words' attention rows, never the <eos> row."""

import torch

from qkv.models.las import LASConfig
from qkv.speech.data import SpokenSet
from qkv.speech.recognizer import Recognizer, Transcript, is_monotonic
from qkv.speech.vocabulary import WordVocabulary


class _Scripted:
    """A step model that writes words 3, 4, 5 attending states 1, 2, 3, then <eos> attending
    ``eos_state``: its words step forward whatever the <eos> step listens to."""

    config = LASConfig(n_mels=4, vocab_size=6)

    def __init__(self, eos_state: int) -> None:
        self.eos_state = eos_state

    def eval(self):
        return self

    def encode(self, features, lengths):
        return {"states": features, "lengths": lengths}

    def init_state(self, memory):
        return {"t": torch.zeros(memory["states"].shape[0], dtype=torch.long)}

    def step(self, prev, state, memory):
        b, s = memory["states"].shape[:2]
        t = int(state["t"][0])
        logits = torch.full((b, 6), -30.0)
        logits[:, 3 + t if t < 3 else 2] = 5.0
        att = torch.full((b, s), 0.1 / (s - 1))
        att[:, t + 1 if t < 3 else self.eos_state] = 0.9
        return logits, {"t": state["t"] + 1}, att


def _share(eos_state: int) -> float:
    rec = Recognizer(_Scripted(eos_state), WordVocabulary(["one", "two", "three"]), {}, {"n_mels": 4})
    spoken = SpokenSet([torch.zeros(6, 4)] * 3, ["one two three"] * 3, ["v"] * 3)
    scores = rec.evaluate(spoken)
    assert scores["wer"] == 0.0
    return scores["monotonic"]


def test_the_eos_row_never_counts():
    # words at states 1, 2, 3: monotonic whether <eos> then listens at the end or at the start
    assert _share(eos_state=5) == 1.0
    assert _share(eos_state=0) == 1.0


def test_word_attention_drops_only_the_eos_row():
    att = torch.eye(4)[[2, 3, 1]]  # two words stepping forward, then <eos> at state 1
    ended = Transcript("a b", att, 6, 0.0, "eos")
    assert torch.equal(ended.word_attention, att[:2])
    assert is_monotonic(ended.word_attention) and not is_monotonic(ended.attention)
    cut = Transcript("a b c", att, 6, 0.0, "limit")  # no <eos> came: every row is a word's
    assert torch.equal(cut.word_attention, att)
    assert not is_monotonic(cut.word_attention)
