"""Greedy and beam-search captioning that always returns a caption, with each word's attention.

Both work on a captioner with the step interface of :mod:`qkv.models.captioner`::

    memory = model.encode(images)                        # dict of batch-first tensors
    state = model.init_state(memory)                     # dict of batch-first tensors
    logits, state, attn = model.step(prev, state, memory)   # (B,) -> (B, V), ..., (B, N)

and its ``config`` (``start_id``, ``end_id``, ``pad_id``, ``max_words``). Neither ever emits
``<pad>`` or ``<start>``.

**A caption always comes back.** A caption may hold ``max_words`` words, after which only
``<end>`` may come (and a caption holds at least one word); when the model gives ``<end>`` no probability at all there, the best
hypothesis at that cap is returned (``stop = "limit"``), never nothing
(the best-known Show, Attend and Tell tutorial, sgrvinod's, returns no caption when no beam
ends).

**Beam search** keeps ``K`` hypotheses per image in a flat ``(B*K)`` batch, reorders the memory
and state with ``index_select(0, ...)``, and ranks by the raw log-probability (captions are a
few words; no length normalization). An image's search ends when its best live hypothesis
scores no better than its best ended one: log-probabilities only decrease as words are added,
so no live hypothesis can overtake it (the stopping bound of :mod:`qkv.translation.decode`
with ``alpha = 0``). Beam search is never worse than greedy: it runs greedy alongside and
returns the better of the two by :func:`rank` (a beam can prune the greedy path).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["CaptionHypothesis", "beam_search", "greedy", "greedy_from_memory", "rank"]


@dataclass
class CaptionHypothesis:
    """One caption: word ids (without ``<start>``/``<end>``), its total log-probability
    (``<end>`` included when it ended), the attention of each word over the patches
    ``(len(tokens), N)``, and ``stop``: ``"end"`` or ``"limit"`` (``max_words`` words, no ``<end>``)."""

    tokens: list[int]
    score: float
    attention: Tensor
    stop: str = "end"


def rank(h: CaptionHypothesis) -> tuple[bool, float]:
    """How hypotheses compare: one that ended beats one cut at the cap, then the log-probability."""
    return h.stop == "end", h.score


def _check_limit(model: nn.Module, max_words: int | None) -> int:
    limit = model.config.max_words if max_words is None else max_words
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"max_words: expected None or an int >= 1, got {max_words!r}")
    return limit


def _log_probs(model: nn.Module, logits: Tensor, t: int, limit: int) -> Tensor:
    """``(R, V)`` float64 log-probabilities at step ``t``: ``<pad>`` and ``<start>`` never
    come, ``<end>`` not first (a caption holds a word), and only ``<end>`` at the cap (after
    ``limit`` words)."""
    cap = t == limit
    logp = torch.log_softmax(logits.double(), dim=-1)
    cfg = model.config
    banned = (
        torch.ones(logp.shape[1], dtype=torch.bool) if cap else torch.zeros(logp.shape[1], dtype=torch.bool)
    )
    banned[[cfg.pad_id, cfg.start_id]] = True
    banned[cfg.end_id] = t == 0
    return logp.masked_fill(banned.to(logp.device), float("-inf"))


@torch.no_grad()
def greedy(model: nn.Module, images: Tensor, *, max_words: int | None = None) -> list[CaptionHypothesis]:
    """The most probable word at every step, until ``<end>`` or ``max_words`` words (default the
    model's ``config.max_words``)."""
    return greedy_from_memory(model, model.encode(images), max_words=max_words)


@torch.no_grad()
def greedy_from_memory(
    model: nn.Module, memory: dict[str, Tensor], *, max_words: int | None = None
) -> list[CaptionHypothesis]:
    """:func:`greedy` from the memory ``model.encode(...)`` gave (batch-first tensors, one of
    them ``"features"``): what a model whose ``encode`` takes more than images decodes with."""
    limit = _check_limit(model, max_words)
    end = model.config.end_id
    state = model.init_state(memory)
    bsz, device = memory["features"].shape[0], memory["features"].device
    prev = torch.full((bsz,), model.config.start_id, dtype=torch.long, device=device)
    words, logps, atts = [], [], []
    done = torch.zeros(bsz, dtype=torch.bool, device=device)
    for t in range(limit + 1):  # room for max_words words and <end>
        logits, state, attn = model.step(prev, state, memory)
        logp = _log_probs(model, logits, t, limit)
        prev = logp.argmax(-1)
        words.append(prev)
        logps.append(logp.gather(1, prev[:, None])[:, 0])
        atts.append(attn)
        done = done | (prev == end)
        if bool(done.all()):
            break
    ids, lp, att = (
        torch.stack(words, 1).tolist(),
        torch.stack(logps, 1),
        torch.stack(atts, 1),
    )  # (B, steps, N)
    out = []
    for b in range(bsz):
        seq = ids[b]  # at the cap an impossible <end> leaves <pad>: cut at max_words
        n, stop = (seq.index(end), "end") if end in seq else (min(len(seq), limit), "limit")
        score = float(lp[b, : n + (stop == "end")].sum())
        out.append(CaptionHypothesis(seq[:n], score, att[b, :n].float(), stop))
    return out


@torch.no_grad()
def beam_search(
    model: nn.Module, images: Tensor, *, beam: int = 3, max_words: int | None = None
) -> list[CaptionHypothesis]:
    """The best caption of each image by beam search (see the module docstring); ``beam=1`` is
    greedy.

    Raises:
        ValueError: ``beam`` or ``max_words`` not an int >= 1.
    """
    if not isinstance(beam, int) or isinstance(beam, bool) or beam < 1:
        raise ValueError(f"beam: expected an int >= 1, got {beam!r}")
    limit = _check_limit(model, max_words)
    greedy_out = greedy(model, images, max_words=limit)
    if beam == 1:
        return greedy_out
    bsz, dev = images.shape[0], images.device
    memory = model.encode(images)
    memory = {k: v.repeat_interleave(beam, 0) for k, v in memory.items()}  # (B*K, ...)
    state = model.init_state(memory)
    prev = torch.full((bsz * beam,), model.config.start_id, dtype=torch.long, device=dev)
    scores = torch.full((bsz, beam), float("-inf"), dtype=torch.float64, device=dev)
    scores[:, 0] = 0.0  # the K copies are identical: only the first is live at the start
    words = torch.zeros(bsz * beam, 0, dtype=torch.long, device=dev)
    atts = torch.zeros(bsz * beam, 0, memory["features"].shape[1], device=dev)
    finished: list[list[CaptionHypothesis]] = [[] for _ in range(bsz)]
    for t in range(limit + 1):
        logits, state, attn = model.step(prev, state, memory)
        logp = _log_probs(model, logits, t, limit)
        if t == limit:  # the cap: the live hypotheses may only end; they stay as they are
            _advance(model, scores, logp, words, atts, finished, beam)
            break
        scores, origin, token = _advance(model, scores, logp, words, atts, finished, beam)
        flat = (torch.arange(bsz, device=dev)[:, None] * beam + origin).view(-1)  # (B*K,)
        words = torch.cat([words[flat], token.view(-1, 1)], 1)
        atts = torch.cat([atts[flat], attn[flat][:, None].float()], 1)
        state = {k: v.index_select(0, flat) for k, v in state.items()}
        prev = token.view(-1)
        if all(_settled(finished[b], scores[b]) for b in range(bsz)):
            break
    out = []
    for b in range(bsz):
        pool = finished[b] or [_best_live(scores[b], words, atts, b, beam)]
        out.append(max([*pool, greedy_out[b]], key=rank))
    return out


def _advance(model, scores: Tensor, logp: Tensor, words: Tensor, atts: Tensor, finished: list, beam: int):
    """One beam step: each image's best ``2K`` candidates; those ending with ``<end>`` join
    ``finished``, the best ``K`` others live on. Returns their scores, origin beams and words ``(B, K)``."""
    bsz, vocab = scores.shape[0], logp.shape[1]
    cand = (scores.view(-1, 1) + logp).view(bsz, beam * vocab)  # (B, K*V)
    top, idx = cand.topk(min(2 * beam, cand.shape[1]), dim=1)  # at most K end: K live remain
    new_scores = torch.full_like(scores, float("-inf"))
    origin = torch.zeros(bsz, beam, dtype=torch.long, device=scores.device)
    token = torch.full((bsz, beam), model.config.pad_id, dtype=torch.long, device=scores.device)
    for b, (row_s, row_i) in enumerate(zip(top.tolist(), idx.tolist())):
        k = 0
        for s, i in zip(row_s, row_i):
            if s == float("-inf") or k == beam:
                break
            o, tok = divmod(i, vocab)
            flat = b * beam + o
            if tok == model.config.end_id:
                finished[b].append(CaptionHypothesis(words[flat].tolist(), s, atts[flat], "end"))
                continue
            new_scores[b, k], origin[b, k], token[b, k] = s, o, tok
            k += 1
    return new_scores, origin, token


def _settled(finished: list[CaptionHypothesis], live: Tensor) -> bool:
    """Nothing is live, or the best live log-probability cannot beat the best ended one."""
    top = float(live.max())
    return top == float("-inf") or (bool(finished) and top <= max(h.score for h in finished))


def _best_live(scores: Tensor, words: Tensor, atts: Tensor, b: int, beam: int) -> CaptionHypothesis:
    k = int(scores.argmax())
    flat = b * beam + k
    return CaptionHypothesis(words[flat].tolist(), float(scores[k]), atts[flat], "limit")
