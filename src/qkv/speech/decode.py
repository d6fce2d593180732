"""Greedy and beam-search decoding of a speech recognizer's step interface
(:class:`qkv.models.las.LAS`: ``encode`` -> ``init_state`` -> ``step``).

Both always return a transcript: a hypothesis that never emits <eos> stops after ``max_len``
tokens (``stop = "limit"``). Beam search ranks by the total log-probability (no length
normalisation) and holds greedy's hypothesis among its candidates, so its result is never less
probable than greedy's. Its search ends when the best live hypothesis is already less probable
than the best finished one: log-probabilities only fall as tokens are added, so no live one
could still win.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Hypothesis", "beam_search", "greedy"]

SOS, EOS = 1, 2


@dataclass
class Hypothesis:
    """One transcript: token ids (no <sos>/<eos>), total log-probability, the attention of each
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
    model: nn.Module, features: Tensor, lengths: Tensor, *, beam: int = 4, max_len: int = 32
) -> list[Hypothesis]:
    """The most probable transcript ``beam`` hypotheses wide, one utterance at a time; never
    less probable than :func:`greedy`'s (see the module docstring)."""
    _check(max_len, beam)
    firsts = greedy(model, features, lengths, max_len=max_len)
    return [_beam_one(model, features[i : i + 1, : int(lengths[i])], lengths[i : i + 1], beam, max_len, firsts[i])
            for i in range(features.shape[0])]  # fmt: skip


def _beam_one(
    model: nn.Module, features: Tensor, lengths: Tensor, beam: int, max_len: int, first: Hypothesis
) -> Hypothesis:
    memory = model.encode(features, lengths)
    s = int(memory["lengths"][0])
    state = model.init_state(memory)
    live: list[tuple[float, list[int], list[Tensor]]] = [(0.0, [], [])]  # (log p, tokens, attention rows)
    finished = [first]
    prev = torch.tensor([SOS])
    for _ in range(max_len):
        k = len(live)
        mem = {n: v.expand(k, *v.shape[1:]) for n, v in memory.items()}
        logits, state, att = model.step(prev, state, mem)
        logp = torch.log_softmax(logits.double(), dim=-1)  # (k, V)
        scores = torch.tensor([h[0] for h in live], dtype=torch.float64)[:, None] + logp
        top, idx = scores.view(-1).topk(min(2 * beam, scores.numel()))
        keep, origins = [], []
        for score, flat in zip(top.tolist(), idx.tolist(), strict=True):
            o, tok = divmod(flat, logp.shape[1])
            rows = [*live[o][2], att[o, :s]]
            if tok == EOS:
                finished.append(Hypothesis(live[o][1], score, torch.stack(rows), "eos"))
            elif len(keep) < beam:
                keep.append((score, [*live[o][1], tok], rows))
                origins.append(o)
        best_done = max(h.score for h in finished)
        if not keep or keep[0][0] <= best_done:
            break
        live = keep
        state = {n: v.index_select(0, torch.tensor(origins)) for n, v in state.items()}
        prev = torch.tensor([h[1][-1] for h in live])
    else:  # max_len reached: the live hypotheses end here
        finished += [Hypothesis(t, sc, torch.stack(rows), "limit") for sc, t, rows in live]
    return max(finished, key=lambda h: h.score)
