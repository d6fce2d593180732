"""Beam search's stopping rule: a sentence ends only when no live hypothesis can still end with a
better length-normalized score than the best finished one, so beam search never returns a
hypothesis the model scores below greedy's."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qkv.translation.decode import EOS, SOS, beam_search, best_possible, greedy

A, B, C = 3, 4, 5


class Bigram(nn.Module):
    """A hand-built decoder: the next token's log-probabilities depend on the previous token only
    (``table[prev]``); the source is ignored. The step interface of :mod:`qkv.models.seq2seq`."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.logp = torch.log(table / table.sum(-1, keepdim=True))

    def encode(self, src, src_lengths):
        return {"src": src}

    def init_state(self, memory):
        return {"t": torch.zeros(memory["src"].shape[0], 1)}

    def step(self, prev, state, memory):
        return self.logp[prev], state, None


def trap(vocab: int = 6) -> Bigram:
    """Greedy reads ``a c <eos>`` (log p = log .5 + log .9 + log .99 = -0.80); two poor endings
    come first: ``<eos>`` at once (log .3) and ``b <eos>`` (log .2 + log .9). A beam of two that
    stops once two hypotheses have ended returns ``b`` (-1.71 / 2 = -0.86 normalized), though
    the live ``a c`` still ends at -0.80 / 3 = -0.27."""
    t = torch.full((vocab, vocab), 1e-9)
    t[SOS, A], t[SOS, EOS], t[SOS, B] = 0.5, 0.3, 0.2
    t[A, C], t[A, EOS] = 0.9, 0.1
    t[B, EOS], t[B, C] = 0.9, 0.1
    t[C, EOS], t[C, A] = 0.99, 0.01
    t[EOS, EOS] = 1.0
    return Bigram(t)


def normalized(hyp, alpha: float) -> float:
    return hyp.score / (len(hyp.tokens) + 1) ** alpha


SRC, LENGTHS = torch.ones(1, 3, dtype=torch.long), torch.tensor([3])


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
@pytest.mark.parametrize("beam", [2, 3, 4])
def test_an_early_ending_never_displaces_a_better_live_hypothesis(beam, alpha):
    m = trap()
    g = greedy(m, SRC, LENGTHS, max_len=10)[0]
    assert g.tokens == [A, C]
    assert g.score == pytest.approx(math.log(0.5 * 0.9 * 0.99), abs=1e-6)
    b = beam_search(m, SRC, LENGTHS, beam=beam, alpha=alpha, max_len=10)[0]
    assert b.tokens == [A, C]
    assert b.score == pytest.approx(g.score, abs=1e-6)


def random_bigram(seed: int, vocab: int = 8) -> Bigram:
    """Peaked random transitions (a trained decoder's shape): one likely next token per token."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(vocab, vocab, generator=g, dtype=torch.float64) ** 4
    t[:, 0] = 1e-12  # <pad> is never emitted
    t[:, SOS] = 1e-12
    return Bigram(t)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_search_never_scores_below_greedy(alpha):
    """Over 20 peaked bigram decoders and beams of 2 and 4: beam search's hypothesis scores (by
    the normalization it uses) at least greedy's, whenever greedy ended with <eos>."""
    compared = 0
    for seed in range(20):
        m = random_bigram(seed)
        g = greedy(m, SRC, LENGTHS, max_len=12)[0]
        if g.stop != "eos":
            continue
        for beam in (2, 4):
            b = beam_search(m, SRC, LENGTHS, beam=beam, alpha=alpha, max_len=12)[0]
            assert normalized(b, alpha) >= normalized(g, alpha) - 1e-6, (seed, beam)  # greedy sums float32
            compared += 1
    assert compared >= 20


def test_best_possible_is_an_upper_bound_of_every_ending():
    """For a live log p of -2 and endings of at most 10 tokens: raw scores only fall as tokens are
    added and a longer ending divides by more, so the bound is -2 / 10 ** alpha; the length the
    hypothesis has now is not a bound (-2 / 3 < -2 / 10)."""
    assert best_possible(-2.0, 0.0, 10) == -2.0
    assert best_possible(-2.0, 1.0, 10) == pytest.approx(-0.2)
    assert best_possible(-2.0, 0.5, 10) == pytest.approx(-2.0 / math.sqrt(10))
    for alpha in (0.0, 0.5, 1.0, 2.0):
        bound = best_possible(-2.0, alpha, 10)
        for n in range(3, 11):  # every length the hypothesis can end with
            for extra in (0.0, 0.1, 3.0):  # log p can only fall
                assert (-2.0 - extra) / n**alpha <= bound + 1e-12
