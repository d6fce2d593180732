"""Greedy and beam-search decoding for qkv's translation models.

Both work on any model with the step interface of :mod:`qkv.models.seq2seq`::

    memory = model.encode(src, src_lengths)          # dict of batch-first tensors
    state = model.init_state(memory)                 # dict of batch-first tensors
    logits, state, attn = model.step(prev, state, memory)   # (B,) -> (B, V), ..., (B, S) or None

Beam search keeps ``K`` hypotheses per sentence in a flat ``(B*K)`` batch and reorders the
memory and state with ``index_select(0, ...)``. Finished hypotheses are ranked by
``log p / length ** alpha`` (``alpha = 0`` is the raw log-probability; Wu et al. 2016 use a
similar length normalization). A sentence's search ends when no live hypothesis can still end
better than the best finished one (:func:`best_possible`). With ``beam=1`` and ``alpha=0`` it
returns exactly greedy's tokens (with ``alpha > 0`` a longer ending may score better once
normalized, and a beam of one goes on to find it).

How many tokens either may emit is :func:`decode_limit`, the one decoding-length rule of
validation during training, :class:`~qkv.translation.translator.Translator` and ``qkv evaluate``.

**Degenerate repetition.** A model that meets words it never saw often loops on a fragment
(``"tom tom tom ..."``, ``"est-ce que est-ce que ..."``) up to the limit. With
``max_repeats=k`` both decoders stop a sentence as soon as its output ends with the same
fragment of 1 to :data:`REPEAT_SPAN` tokens ``k`` times in a row, and drop the ``k - 1`` extra
copies (``Hypothesis.stop == "repetition"``). :class:`~qkv.translation.translator.Translator`
takes ``k`` from the training targets (:func:`longest_repeat`): one more than the most times
any fragment repeats back to back in a training target, and at least 3, so an output never
repeats more than the data ever did.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "REPEAT_SPAN",
    "Hypothesis",
    "beam_search",
    "best_possible",
    "decode_limit",
    "greedy",
    "longest_repeat",
    "repeat_cut",
]

SOS, EOS = 1, 2

#: The longest fragment (in tokens) the repetition rule looks for.
REPEAT_SPAN = 8


def repeat_cut(tokens: list[int], max_repeats: int, *, span: int = REPEAT_SPAN) -> int | None:
    """Where to cut ``tokens`` when they end with one fragment (1 to ``span`` tokens) repeated
    ``max_repeats`` times in a row: the length that keeps one copy; None when they do not.

    >>> repeat_cut([7, 5, 6, 5, 6, 5, 6], 3)
    3
    """
    n_tok = len(tokens)
    for n in range(1, span + 1):
        if n * max_repeats > n_tok:
            break
        tail = tokens[n_tok - n :]
        if all(tokens[n_tok - (i + 1) * n : n_tok - i * n] == tail for i in range(1, max_repeats)):
            return n_tok - (max_repeats - 1) * n
    return None


def longest_repeat(sequences: Iterable[list[int]], *, span: int = REPEAT_SPAN) -> int:
    """The most times any fragment of 1 to ``span`` tokens repeats back to back in one of
    ``sequences`` (1 when nothing repeats; 0 for no tokens at all)."""
    best = 0
    for seq in sequences:
        if seq:
            best = max(best, 1)
        for n in range(1, min(span, len(seq) // 2) + 1):
            run = 0  # positions i with seq[i] == seq[i - n], in a row
            for i in range(n, len(seq)):
                run = run + 1 if seq[i] == seq[i - n] else 0
                if run >= n:
                    best = max(best, run // n + 1)
    return best


def _check_repeats(max_repeats: int | None) -> None:
    if max_repeats is not None and (
        not isinstance(max_repeats, int) or isinstance(max_repeats, bool) or max_repeats < 2
    ):
        raise ValueError(f"max_repeats: expected None or an int >= 2, got {max_repeats!r}")


def decode_limit(
    max_decode_len: int | None,
    *,
    references: Iterable[int] | None = None,
    sources: Iterable[int] = (),
) -> int:
    """The most tokens decoding may emit (``max_len`` of :func:`greedy` and :func:`beam_search`).

    The rule, for every decoding qkv does:

    1. ``max_decode_len`` (the ``[train]`` setting) when it is set (> 0);
    2. else, when the references are known, ``2 * R + 10``, ``R`` the length of the longest
       reference in target tokens (characters for ``char``, pieces for ``bpe``; 10 without
       references): a correct output always fits and a runaway one stops early. Validation
       during training decodes this way, to bound its cost;
    3. else ``3 * S + 10``, ``S`` the length of the longest source in source tokens (16 without
       sources): the factor 3 leaves room for targets longer than their sources.
       :class:`~qkv.translation.translator.Translator` (``qkv translate``, ``qkv evaluate``)
       decodes this way: what a model translates, and how it is evaluated, never depends on
       the reference.

    Args:
        max_decode_len: the explicit limit, or 0 / None.
        references: the reference lengths in target tokens, when known.
        sources: the source lengths in source tokens.
    """
    limit = int(max_decode_len or 0)
    if limit > 0:
        return limit
    if references is not None:
        return 2 * max(references, default=10) + 10
    return 3 * max(sources, default=16) + 10


@dataclass
class Hypothesis:
    """One decoded sentence: token ids (without <sos>/<eos>), total log-probability, and the
    attention of each output token over the source ``(len(tokens) + 1, S)`` (the last row is
    the attention when <eos> was emitted), or None for attention-free models. ``stop`` says
    why it ended: ``"eos"``, ``"limit"`` (``max_len`` tokens without <eos>) or
    ``"repetition"`` (see ``max_repeats``; ``score`` is then the log-probability of the tokens
    kept)."""

    tokens: list[int]
    score: float
    attention: Tensor | None
    stop: str = "eos"


def _select(tree: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
    return {k: v.index_select(0, index) for k, v in tree.items()}


@torch.no_grad()
def greedy(
    model: nn.Module, src: Tensor, src_lengths: Tensor, *, max_len: int = 64, max_repeats: int | None = None
) -> list[Hypothesis]:
    """Batched greedy decoding: the most probable token at every step, until <eos>, ``max_len``
    tokens, or (``max_repeats``) a fragment repeated that many times in a row (see the module
    docstring)."""
    _check_max_len(max_len)
    _check_repeats(max_repeats)
    memory = model.encode(src, src_lengths)
    state = model.init_state(memory)
    bsz = src.shape[0]
    prev = torch.full((bsz,), SOS, dtype=torch.long, device=src.device)
    done = torch.zeros(bsz, dtype=torch.bool, device=src.device)
    tokens, step_logp, attns = [], [], []
    seqs: list[list[int]] = [[] for _ in range(bsz)]
    cut: list[int | None] = [None] * bsz  # tokens kept by the repetition rule
    for _ in range(max_len):
        logits, state, attn = model.step(prev, state, memory)
        logp = torch.log_softmax(logits.float(), dim=-1)
        prev = logp.argmax(-1)
        step_logp.append(torch.where(done, 0.0, logp.gather(1, prev.unsqueeze(1)).squeeze(1)).double().cpu())
        tokens.append(prev)
        attns.append(attn)
        done = done | (prev == EOS)
        if max_repeats is not None:
            live = (~done).tolist()
            for b, tok in enumerate(prev.tolist()):
                if live[b]:
                    seqs[b].append(tok)
                    cut[b] = repeat_cut(seqs[b], max_repeats)
                    if cut[b] is not None:
                        done[b] = True
        if bool(done.all()):
            break
    out = []
    ids = torch.stack(tokens, dim=1).tolist()  # (B, steps)
    logps = torch.stack(step_logp, dim=1)  # (B, steps)
    for b in range(bsz):
        seq = ids[b]
        if cut[b] is not None:
            n, stop = cut[b], "repetition"
        elif EOS in seq:
            n, stop = seq.index(EOS), "eos"
        else:
            n, stop = len(seq), "limit"
        score = float(logps[b, : n + (stop == "eos")].sum())
        att = None
        if attns[0] is not None:
            att = torch.stack([a[b] for a in attns[: min(n + 1, len(attns))]])  # (n+1, S)
            att = att[:, : int(src_lengths[b])]
        out.append(Hypothesis(tokens=seq[:n], score=score, attention=att, stop=stop))
    return out


@torch.no_grad()
def beam_search(
    model: nn.Module,
    src: Tensor,
    src_lengths: Tensor,
    *,
    beam: int = 4,
    max_len: int = 64,
    alpha: float = 1.0,
    max_repeats: int | None = None,
) -> list[Hypothesis]:
    """Beam search with length normalization ``score / len ** alpha``; one best hypothesis per
    sentence. ``beam=1, alpha=0`` gives greedy's tokens. A sentence's search ends when no live hypothesis
    can still end better than the best finished one (:func:`best_possible`), not when ``beam``
    hypotheses have ended: an early ending of low probability never displaces a better, longer one. With ``max_repeats``, a candidate that would end
    with a fragment repeated that many times in a row ends instead, as if <eos> came, with the
    extra copies dropped (see the module docstring)."""
    if not isinstance(beam, int) or isinstance(beam, bool) or beam < 1:
        raise ValueError(f"beam: expected an int >= 1, got {beam!r}")
    if not isinstance(alpha, (int, float)) or alpha < 0:
        raise ValueError(f"alpha: expected a number >= 0, got {alpha!r}")
    _check_max_len(max_len)
    _check_repeats(max_repeats)
    bsz, dev = src.shape[0], src.device
    memory = model.encode(src, src_lengths)
    expand = torch.arange(bsz, device=dev).repeat_interleave(beam)  # (B*K,)
    memory = _select(memory, expand)
    state = model.init_state(memory)
    prev = torch.full((bsz * beam,), SOS, dtype=torch.long, device=dev)
    # Only the first copy of each sentence is live at the start (the K copies are identical).
    scores = torch.full((bsz, beam), float("-inf"), dtype=torch.float64, device=dev)
    scores[:, 0] = 0.0
    history = torch.zeros(bsz * beam, 0, dtype=torch.long, device=dev)
    running = torch.zeros(bsz * beam, 0, dtype=torch.float64, device=dev)  # score after each token
    att_hist: list[Tensor] = []  # per step (B*K, S), reordered with the beams
    # per sentence: (normalized score, tokens, attention, raw score, stop)
    finished: list[list[tuple[float, list[int], Tensor | None, float, str]]] = [[] for _ in range(bsz)]
    settled = [False] * bsz
    for _ in range(max_len):
        logits, state, attn = model.step(prev, state, memory)
        logp = torch.log_softmax(logits.double(), dim=-1)  # (B*K, V)
        vocab = logp.shape[-1]
        cand = (scores.view(-1, 1) + logp).view(bsz, beam * vocab)  # (B, K*V)
        top, idx = cand.topk(min(2 * beam, cand.shape[1]), dim=1)  # room for finished ones
        origin, token = idx // vocab, idx % vocab  # (B, 2K)
        new_scores = torch.full((bsz, beam), float("-inf"), dtype=torch.float64, device=dev)
        new_origin = torch.zeros(bsz, beam, dtype=torch.long, device=dev)
        new_token = torch.full((bsz, beam), EOS, dtype=torch.long, device=dev)
        top_l, origin_l, token_l = top.tolist(), origin.tolist(), token.tolist()
        for b in range(bsz):
            if settled[b]:
                continue
            step = (history, running, att_hist, attn, int(src_lengths[b]))
            cands = zip(top_l[b], origin_l[b], token_l[b])
            for k, (score, o, tok) in enumerate(
                _split(cands, b, beam, step, alpha, max_repeats, finished[b])
            ):
                new_scores[b, k], new_origin[b, k], new_token[b, k] = score, o, tok
        flat_origin = (torch.arange(bsz, device=dev).unsqueeze(1) * beam + new_origin).view(-1)
        history = torch.cat([history.index_select(0, flat_origin), new_token.view(-1, 1)], dim=1)
        if max_repeats is not None:
            running = torch.cat([running.index_select(0, flat_origin), new_scores.view(-1, 1)], dim=1)
        if attn is not None:
            att_hist = [a.index_select(0, flat_origin) for a in att_hist] + [
                attn.index_select(0, flat_origin)
            ]
        state = _select(state, flat_origin)
        scores, prev = new_scores, new_token.view(-1)
        # Stop a sentence once no live hypothesis can end better than its best finished one.
        settled = [settled[b] or _settled(finished[b], new_scores[b], alpha, max_len) for b in range(bsz)]
        if all(settled):
            break
    return [_best(b, finished[b], scores, history, att_hist, src_lengths, beam, alpha) for b in range(bsz)]


def _split(cands, b: int, beam: int, step, alpha: float, max_repeats, finished: list) -> list:
    """Sentence ``b``'s candidates ``(score, origin beam, token)``, best first: those that end
    (<eos>, or the repetition rule) go to ``finished``; the first ``beam`` others are returned."""
    history, running, att_hist, attn, src_len = step
    live: list = []
    for score, o, tok in cands:
        if score == float("-inf") or len(live) == beam:
            break
        flat = b * beam + o
        if tok == EOS:
            seq = history[flat].tolist()
            att = _gather_attention(att_hist, attn, flat, src_len)
            finished.append((score / (len(seq) + 1) ** alpha, seq, att, score, "eos"))
            continue
        cut = None if max_repeats is None else repeat_cut([*history[flat].tolist(), tok], max_repeats)
        if cut is not None:
            seq = history[flat].tolist()[:cut]
            raw = float(running[flat, cut - 1])
            att = _gather_attention(att_hist, attn, flat, src_len)
            att = None if att is None else att[: cut + 1]
            finished.append((raw / (cut + 1) ** alpha, seq, att, raw, "repetition"))
            continue
        live.append((score, o, tok))
    return live


def _best(b: int, pool, scores, history, att_hist, src_lengths, beam: int, alpha: float) -> Hypothesis:
    """Sentence ``b``'s best finished hypothesis, or its best live one when nothing ended with
    <eos> within ``max_len`` (``stop = "limit"``)."""
    if not pool:
        k = int(scores[b].argmax())
        flat = b * beam + k
        seq = history[flat].tolist()
        att = _gather_attention(att_hist, None, flat, int(src_lengths[b]))
        raw = float(scores[b, k])
        pool = [(raw / max(len(seq), 1) ** alpha, seq, att, raw, "limit")]
    _, seq, att, raw, stop = max(pool, key=lambda p: p[0])
    return Hypothesis(tokens=seq, score=raw, attention=att, stop=stop)


def best_possible(raw: float, alpha: float, longest: int) -> float:
    """An upper bound of the normalized score ``log p / length ** alpha`` of every hypothesis a
    live one (log-probability ``raw`` so far) can still end as, when an ended hypothesis has at
    most ``longest`` tokens, <eos> included.

    Log-probabilities only decrease as tokens are added (``raw' <= raw <= 0``) and the length
    ``n`` is at most ``longest``; for ``alpha > 0``, ``raw' / n ** alpha <= raw / n ** alpha <=
    raw / longest ** alpha`` (a negative number divided by more is larger). The length at which
    the live hypothesis stands now is not a bound: a longer ending divides by more.
    """
    return raw if alpha == 0 else raw / longest**alpha


def _settled(finished, live: Tensor, alpha: float, max_len: int) -> bool:
    """A sentence is done when nothing is live, or when no live hypothesis can end with a better
    normalized score than the best finished one (:func:`best_possible` of the best live
    log-probability, ``max_len`` tokens and <eos> at most). Beam search returns one hypothesis,
    so the best finished one is the one a live hypothesis would have to displace.

    Not bounded: an ending by the repetition rule (``max_repeats``), which drops copies and can
    end shorter than the live hypothesis is now; it is a stop for a looping model, not a
    competitor the search must wait for.
    """
    top = float(live.max())
    if top == float("-inf"):
        return True
    return bool(finished) and best_possible(top, alpha, max_len) <= max(f[0] for f in finished)


def _gather_attention(hist: list[Tensor], last: Tensor | None, flat: int, src_len: int) -> Tensor | None:
    rows = [a[flat] for a in hist]
    if last is not None:
        rows.append(last[flat])
    if not rows:
        return None
    return torch.stack(rows)[:, :src_len]


def _check_max_len(max_len: int) -> None:
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
        raise ValueError(f"max_len: expected an int >= 1, got {max_len!r}")
