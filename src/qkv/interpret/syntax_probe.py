"""Clark et al.'s (2019, section 6) attention probes: predict each word's head from every head's
attention, in both directions, and score the predicted trees (UAS) on held-out sentences.

For dependent ``i`` and candidate head ``j != i`` of one sentence, with ``A[k, i, j]`` the
word-level attention of map ``k`` (:mod:`qkv.interpret.word_attention`), ``K = layers x heads``:

- **attention only**: ``s(i, j) = sum_k w_k A[k, i, j] + u_k A[k, j, i]``;
- **attention + embeddings** (their "Attn + GloVe", here the model's own input embeddings
  ``v``, standardised on the training words): the weights depend on both words,
  ``s(i, j) = sum_k (w_k + P_k v_i + Q_k v_j) A[k, i, j] + (u_k + P'_k v_i + Q'_k v_j) A[k, j, i]``.

``p(head = j | i) = softmax_j s(i, j)``, trained by cross-entropy (Adam, minibatches of sentences
of similar length, seeded) on the training sentences; a word's prediction is its argmax. The root
word of each sentence (its head is no word) is neither trained on nor scored: UAS is over the
other words. Baselines on the same words: the best fixed offset (the most frequent offset of the
training words) and right-branching (every word's head is the next word).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .syntax_encode import EncodedSentence

__all__ = ["ProbeResult", "attention_probe"]


@dataclass(frozen=True)
class ProbeResult:
    """UAS of the probes and baselines on the held-out sentences (fractions).

    Attributes:
        uas: the attention + embeddings probe; attention_only_uas: the attention-only probe.
        baseline_uas, baseline_offset: the best fixed offset (chosen on the training words).
        right_branching_uas: every word's head is the next word.
        train_sentences, test_sentences, test_words: the split (words: scored words).
    """

    uas: float
    attention_only_uas: float
    baseline_uas: float
    baseline_offset: int
    right_branching_uas: float
    train_sentences: int
    test_sentences: int
    test_words: int


@dataclass
class _Bucket:
    features: Tensor  # (B, n, n, 2K): [A[k, i, j] for k] + [A[k, j, i] for k]
    embeddings: Tensor  # (B, n, D)
    heads: Tensor  # (B, n), -100 where no loss (root, padding)
    candidates: Tensor  # (B, n, n) bool: j is a word of the sentence and j != i


def _buckets(sentences: Sequence[EncodedSentence], size: int) -> list[_Bucket]:
    order = sorted(sentences, key=lambda e: len(e.sentence))
    out = []
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        n = max(len(e.sentence) for e in chunk)
        k, d = chunk[0].attention.shape[0], chunk[0].embeddings.shape[-1]
        att, emb = torch.zeros(len(chunk), k, n, n), torch.zeros(len(chunk), n, d)
        heads = torch.full((len(chunk), n), -100, dtype=torch.long)
        cand = torch.zeros(len(chunk), n, n, dtype=torch.bool)
        for b, e in enumerate(chunk):
            m = len(e.sentence)
            att[b, :, :m, :m], emb[b, :m] = e.attention, e.embeddings
            h = torch.tensor(e.sentence.heads)
            heads[b, :m] = torch.where(h >= 0, h, -100)
            cand[b, :m, :m] = ~torch.eye(m, dtype=torch.bool)
        features = torch.cat([att.permute(0, 2, 3, 1), att.permute(0, 3, 2, 1)], -1).contiguous()
        out.append(_Bucket(features, emb, heads, cand))
    return out


class _Probe(nn.Module):
    def __init__(self, maps: int, dim: int, with_embeddings: bool) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, maps))
        self.p = nn.Linear(dim, 2 * maps, bias=False) if with_embeddings else None
        self.q = nn.Linear(dim, 2 * maps, bias=False) if with_embeddings else None
        if with_embeddings:
            nn.init.zeros_(self.p.weight)
            nn.init.zeros_(self.q.weight)

    def forward(self, bucket: _Bucket, mean: Tensor, std: Tensor) -> Tensor:
        f = bucket.features  # (B, n, n, 2K)
        if self.p is None:
            scores = f @ self.w.reshape(-1)
        else:
            v = (bucket.embeddings - mean) / std
            p = self.p(v) + self.w.reshape(-1)  # (B, n, 2K): dependent i's weights
            q = self.q(v).unflatten(-1, (2, -1)).flip(-2).flatten(-2)  # candidate j's, halves swapped
            # sum_c f[i, j, c] q[j, c] = sum_c f[j, i, c'] q'[j, c'] (f[j, i] is f[i, j], halves swapped)
            scores = (f @ p[..., None]).squeeze(-1) + (f @ q[..., None]).squeeze(-1).transpose(-1, -2)
        return scores.masked_fill(~bucket.candidates, float("-inf"))


def _train(probe: _Probe, buckets: list[_Bucket], stats, epochs: int, lr: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    for _ in range(epochs):
        for i in torch.randperm(len(buckets), generator=generator).tolist():
            b = buckets[i]
            scores = probe(b, *stats)
            loss = nn.functional.cross_entropy(
                scores.flatten(0, 1).masked_fill(b.heads.flatten()[:, None] < 0, 0.0),
                b.heads.flatten(),
                ignore_index=-100,
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


@torch.no_grad()
def _uas(probe: _Probe, buckets: list[_Bucket], stats) -> float:
    hit = total = 0
    for b in buckets:
        pred = probe(b, *stats).argmax(-1)
        scored = b.heads >= 0
        hit += int((pred == b.heads)[scored].sum())
        total += int(scored.sum())
    return hit / max(total, 1)


def _offsets(buckets: list[_Bucket]) -> Tensor:
    return torch.cat([(b.heads - torch.arange(b.heads.shape[1]))[b.heads >= 0] for b in buckets])


def attention_probe(
    sentences: Sequence[EncodedSentence],
    *,
    held_out: float = 0.2,
    seed: int = 0,
    epochs: int = 4,
    lr: float = 0.02,
    batch_sentences: int = 64,
) -> ProbeResult:
    """Train both probes on a seeded ``1 - held_out`` share of ``sentences`` and score them and
    the baselines on the rest (module docstring).

    Raises:
        ValueError: ``held_out`` not in (0, 1); fewer than 2 sentences in either part.
    """
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out: expected a fraction in (0, 1), got {held_out!r}")
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = round(len(sentences) * held_out)
    test = [sentences[i] for i in order[:n_test]]
    train = [sentences[i] for i in order[n_test:]]
    if len(test) < 2 or len(train) < 2:
        raise ValueError(
            f"sentences: expected enough for both parts of a held_out={held_out} split, got {len(sentences)}"
        )
    train_b, test_b = _buckets(train, batch_sentences), _buckets(test, batch_sentences)
    emb = torch.cat([e.embeddings for e in train])
    stats = (emb.mean(0), emb.std(0).clamp_min(1e-6))
    maps, dim = train[0].attention.shape[0], train[0].embeddings.shape[-1]
    uas = {}
    for with_embeddings in (False, True):
        probe = _Probe(maps, dim, with_embeddings)
        _train(probe, train_b, stats, epochs, lr, seed)
        uas[with_embeddings] = _uas(probe, test_b, stats)
    values, counts = _offsets(train_b).unique(return_counts=True)
    best = int(values[counts.argmax()])
    test_offsets = _offsets(test_b)
    return ProbeResult(
        uas=uas[True],
        attention_only_uas=uas[False],
        baseline_uas=float((test_offsets == best).float().mean()),
        baseline_offset=best,
        right_branching_uas=float((test_offsets == 1).float().mean()),
        train_sentences=len(train),
        test_sentences=len(test),
        test_words=len(test_offsets),
    )
