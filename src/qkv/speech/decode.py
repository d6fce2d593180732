"""Greedy and beam-search decoding of a speech recognizer's step interface
(:class:`qkv.models.las.LAS`: ``encode`` -> ``init_state`` -> ``step``).

Both always return a transcript: a hypothesis that never emits <eos> stops after ``max_len``
tokens (``stop = "limit"``). Beam search ranks by the total log-probability (no length
normalisation) and holds greedy's hypothesis among its candidates, so its result is never less
probable than greedy's. Its search ends when the best live hypothesis is already less probable
than the best finished one: log-probabilities only fall as tokens are added, so no live one
could still win.

Joint CTC/attention decoding (Watanabe et al. 2017, "Hybrid CTC/Attention Architecture for
End-to-End Speech Recognition", eq. 43): with ``ctc_weight`` lambda > 0, on a model with a CTC
head over its encoder states (``model.ctc``: :class:`qkv.models.speech_transformer.SpeechTransformer`
trained with ``ctc_weight``), beam search ranks by

    lambda log P_ctc + (1 - lambda) log P_att

where ``log P_att`` is the attention decoder's total as above and ``log P_ctc`` the CTC
prefix score of a live hypothesis (:class:`qkv.speech.ctc_prefix.CTCPrefixScorer`: every
alignment whose collapse starts with its tokens), or, once it has emitted <eos>, the CTC
probability of exactly its tokens. Both terms only fall as tokens are added (and ending
scores at most the prefix), so the same stopping rule stays exact. Greedy's hypothesis (still
chosen by the attention alone) is held among the candidates with its joint score, so the
result is never below greedy's *in the joint score*; under the attention alone it may be less
probable than greedy's. ``ctc_weight=0`` is the attention-only search, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .ctc_prefix import CTCPrefixScorer, PrefixState

__all__ = ["Hypothesis", "beam_search", "greedy"]

BLANK, SOS, EOS = 0, 1, 2  # BLANK: <pad>, the CTC blank of the models


@dataclass
class Hypothesis:
    """One transcript: token ids (no <sos>/<eos>), its score (the total log-probability; with
    joint CTC/attention decoding the joint score of the module docstring), the attention of each
    emitted token over the listener states ``(steps, S)`` (the last row: when <eos> came), and
    why it stopped (``"eos"`` or ``"limit"``)."""

    tokens: list[int]
    score: float
    attention: Tensor
    stop: str = "eos"


def _check(max_len: int, beam: int = 1) -> None:
    for name, value in (("max_len", max_len), ("beam", beam)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value!r}")


@torch.no_grad()
def greedy(model: nn.Module, features: Tensor, lengths: Tensor, *, max_len: int = 32) -> list[Hypothesis]:
    """The most probable token at every step, batched, until <eos> or ``max_len`` tokens."""
    _check(max_len)
    memory = model.encode(features, lengths)
    state = model.init_state(memory)
    b = features.shape[0]
    prev = torch.full((b,), SOS, dtype=torch.long)
    done = torch.zeros(b, dtype=torch.bool)
    tokens, logps, attns = [], [], []
    for _ in range(max_len):
        logits, state, att = model.step(prev, state, memory)
        logp = torch.log_softmax(logits.double(), dim=-1)
        prev = logp.argmax(-1)
        logps.append(torch.where(done, 0.0, logp.gather(1, prev[:, None]).squeeze(1)))
        tokens.append(prev)
        attns.append(att)
        done = done | (prev == EOS)
        if bool(done.all()):
            break
    ids, logp_steps, att_steps = torch.stack(tokens, 1).tolist(), torch.stack(logps, 1), torch.stack(attns, 1)
    out = []
    for i in range(b):
        n = ids[i].index(EOS) if EOS in ids[i] else len(ids[i])
        stop = "eos" if n < len(ids[i]) else "limit"
        steps = n + (stop == "eos")
        att = att_steps[i, :steps, : int(memory["lengths"][i])]
        out.append(Hypothesis(ids[i][:n], float(logp_steps[i, :steps].sum()), att, stop))
    return out


@torch.no_grad()
def beam_search(
    model: nn.Module, features: Tensor, lengths: Tensor, *, beam: int = 4, max_len: int = 32,
    ctc_weight: float = 0.0,
) -> list[Hypothesis]:  # fmt: skip
    """The most probable transcript ``beam`` hypotheses wide, one utterance at a time; never
    less probable than :func:`greedy`'s. With ``ctc_weight`` lambda in (0, 1] the ranking is the
    joint CTC/attention score (see the module docstring for what is then guaranteed).

    Raises:
        ValueError: ``beam`` or ``max_len`` not an int >= 1; ``ctc_weight`` outside [0, 1], or
            above 0 for a model without a CTC head.
    """
    _check(max_len, beam)
    _check_ctc_weight(model, ctc_weight)
    firsts = greedy(model, features, lengths, max_len=max_len)
    return [_beam_one(model, features[i : i + 1, : int(lengths[i])], lengths[i : i + 1], beam, max_len, firsts[i],
                      ctc_weight)
            for i in range(features.shape[0])]  # fmt: skip


def _check_ctc_weight(model: nn.Module, ctc_weight: float) -> None:
    if (
        isinstance(ctc_weight, bool)
        or not isinstance(ctc_weight, (int, float))
        or not 0.0 <= ctc_weight <= 1.0
    ):
        raise ValueError(f"ctc_weight: expected a float in [0, 1], got {ctc_weight!r}")
    if ctc_weight and getattr(model, "ctc", None) is None:
        raise ValueError(
            f"ctc_weight: {type(model).__name__} has no CTC head (a speech-transformer trained with "
            f"[model] ctc_weight > 0 has one); expected ctc_weight=0, got {ctc_weight!r}"
        )


class _Joint:
    """The CTC half of the joint score of one utterance: its prefix scorer and the forward
    variables of the live hypotheses."""

    def __init__(self, model: nn.Module, memory: dict[str, Tensor], weight: float) -> None:
        s = int(memory["lengths"][0])
        log_probs = torch.log_softmax(model.ctc(memory["states"][0, :s]).double(), dim=-1)  # (S, V)
        self.scorer, self.weight = CTCPrefixScorer(log_probs, blank=BLANK, eos=EOS), weight
        self.state: PrefixState = self.scorer.initial()

    def scores(self, att_scores: Tensor) -> Tensor:
        """The joint scores ``(K, V)`` of every extension, given their attention totals."""
        self.ext = self.scorer.extend(self.state)
        return self.weight * self.ext.scores + (1 - self.weight) * att_scores

    def keep(self, origins: list[int], tokens: list[int]) -> None:
        self.state = self.scorer.select(self.ext, torch.tensor(origins), torch.tensor(tokens))

    def rescored(self, h: Hypothesis) -> Hypothesis:
        """Greedy's hypothesis with its joint score."""
        ctc = self.scorer.score(h.tokens, complete=h.stop == "eos")
        return Hypothesis(h.tokens, self.weight * ctc + (1 - self.weight) * h.score, h.attention, h.stop)


def _beam_one(
    model: nn.Module, features: Tensor, lengths: Tensor, beam: int, max_len: int, first: Hypothesis,
    ctc_weight: float,
) -> Hypothesis:  # fmt: skip
    memory = model.encode(features, lengths)
    s = int(memory["lengths"][0])
    state = model.init_state(memory)
    joint = _Joint(model, memory, ctc_weight) if ctc_weight else None
    # live hypotheses: (score, attention log-probability, tokens, attention rows)
    live: list[tuple[float, float, list[int], list[Tensor]]] = [(0.0, 0.0, [], [])]
    finished = [first if joint is None else joint.rescored(first)]
    prev = torch.tensor([SOS])
    for _ in range(max_len):
        k = len(live)
        mem = {n: v.expand(k, *v.shape[1:]) for n, v in memory.items()}
        logits, state, att = model.step(prev, state, mem)
        logp = torch.log_softmax(logits.double(), dim=-1)  # (k, V)
        att_scores = torch.tensor([h[1] for h in live], dtype=torch.float64)[:, None] + logp
        scores = att_scores if joint is None else joint.scores(att_scores)
        top, idx = scores.view(-1).topk(min(2 * beam, scores.numel()))
        keep, origins, tokens = [], [], []
        for score, flat in zip(top.tolist(), idx.tolist(), strict=True):
            o, tok = divmod(flat, logp.shape[1])
            rows = [*live[o][3], att[o, :s]]
            if tok == EOS:
                finished.append(Hypothesis(live[o][2], score, torch.stack(rows), "eos"))
            elif len(keep) < beam:
                keep.append((score, float(att_scores[o, tok]), [*live[o][2], tok], rows))
                origins.append(o)
                tokens.append(tok)
        best_done = max(h.score for h in finished)
        if not keep or keep[0][0] <= best_done:
            break
        live = keep
        state = {n: v.index_select(0, torch.tensor(origins)) for n, v in state.items()}
        prev = torch.tensor(tokens)
        if joint is not None:
            joint.keep(origins, tokens)
    else:  # max_len reached: the live hypotheses end here
        finished += [Hypothesis(t, sc, torch.stack(rows), "limit") for sc, _, t, rows in live]
    return max(finished, key=lambda h: h.score)
