"""A trained translation model loaded from a checkpoint: translate, align and evaluate.

    >>> tr = Translator.load("runs/demo/bahdanau")            # doctest: +SKIP
    >>> r = tr.translate(["4 2 0 7"], beam=4)[0]
    >>> r.text, r.alignment_text()

Evaluation (``qkv evaluate``) decodes a split and scores it: BLEU and chrF (sacrebleu),
exact match, and for built-in corpora the alignment error rate (AER) of the model's attention
against the gold alignment, read from the teacher-forced attention on the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import batches, encode_pairs, tokenizer_from_dict
from ..models.builders import build_model
from ..train.checkpoint import find_latest, load_checkpoint
from .decode import beam_search, decode_limit, greedy
from .metrics import aer as aer_fn
from .metrics import alignment_from_weights, bleu, chrf, exact_match

__all__ = ["Translation", "Translator", "decode_examples"]


def _norm(text: str) -> str:
    return " ".join(text.split())


def _encode_sources(texts: list[str], src_tok) -> tuple[Tensor, Tensor]:
    ids = [src_tok.encode(t) or [src_tok.UNK] for t in texts]
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    src = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)  # PAD = 0
    for i, x in enumerate(ids):
        src[i, : len(x)] = torch.tensor(x, dtype=torch.long)
    return src, lengths


def decode_examples(
    model: nn.Module, examples, src_tok, tgt_tok, *, beam: int = 1, alpha: float = 1.0, batch_size: int = 64,
    max_len: int = 64,
) -> list[str]:  # fmt: skip
    """Translate ``examples`` (anything with ``.source``) in batches -> normalized strings."""
    return [
        t.text
        for t in _translate(
            model, [e.source for e in examples], src_tok, tgt_tok, beam, alpha, batch_size, max_len
        )
    ]


@dataclass
class Translation:
    """One translation: the text, the source and output tokens, and the attention of each output
    token (and of <eos>, the last row) over the source tokens, ``(len(target) + 1, len(source))``."""

    source: str
    text: str
    source_tokens: list[str]
    target_tokens: list[str]
    score: float
    attention: Tensor | None

    def alignment(self) -> list[tuple[int, int]]:
        """Argmax alignment: for each output token, the source token it attends to most."""
        if self.attention is None:
            return []
        rows = self.attention[: len(self.target_tokens)]
        return [(int(r.argmax()), j) for j, r in enumerate(rows)]

    def alignment_text(self) -> str:
        """A text picture of the alignment: each output token, its weights as shades, and the
        source token it attends to most."""
        if self.attention is None:
            return "(this model has no attention: the decoder reads one fixed context vector)"
        shades = " .:-=+*#%@"
        width = max((len(s) for s in self.target_tokens), default=1)
        lines = ["source: " + " ".join(f"{i}:{s}" for i, s in enumerate(self.source_tokens))]
        for j, tok in enumerate(self.target_tokens):
            row = self.attention[j]
            bar = "".join(shades[min(9, int(float(w) * 10))] for w in row)
            k = int(row.argmax())
            lines.append(f"{tok:>{width}} |{bar}| -> {self.source_tokens[k]} ({float(row[k]):.2f})")
        return "\n".join(lines)


def _translate(model, texts, src_tok, tgt_tok, beam, alpha, batch_size, max_len) -> list[Translation]:
    model.eval()
    out: list[Translation] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        src, lengths = _encode_sources(chunk, src_tok)
        if beam == 1:
            hyps = greedy(model, src, lengths, max_len=max_len)
        else:
            hyps = beam_search(model, src, lengths, beam=beam, alpha=alpha, max_len=max_len)
        for text, h in zip(chunk, hyps):
            out.append(
                Translation(
                    source=text,
                    text=_norm(tgt_tok.decode(h.tokens)),
                    source_tokens=src_tok.tokens(text) or ["<unk>"],
                    target_tokens=[tgt_tok.id_to_token(i) for i in h.tokens],
                    score=h.score,
                    attention=h.attention,
                )
            )
    return out


class Translator:
    """A model and its tokenizers, loaded from a run directory (its ``best/`` checkpoint when
    there is one, else the latest)."""

    def __init__(
        self, model: nn.Module, src_tok, tgt_tok, config: dict[str, Any], *, path: Path | None = None
    ):
        self.model, self.src_tok, self.tgt_tok, self.config, self.path = model, src_tok, tgt_tok, config, path

    @classmethod
    def load(cls, checkpoint: str | Path, *, best: bool = True) -> Translator:
        path = Path(checkpoint)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint: no such directory {str(path)!r}")
        if best and find_latest(path / "best") is not None:
            path = path / "best"
        ck = load_checkpoint(path)
        src_tok = tokenizer_from_dict(ck.vocab["source"])
        tgt_tok = tokenizer_from_dict(ck.vocab["target"])
        model = build_model(ck.config["model"], src_vocab=len(src_tok), tgt_vocab=len(tgt_tok))
        ck.restore(model, rng=False)
        model.eval()
        return cls(model, src_tok, tgt_tok, ck.config, path=path)

    def max_len(self, texts: list[str] | None = None) -> int:
        """The decoding limit for ``texts``: :func:`~qkv.translation.decode.decode_limit` from the
        sources (``max_decode_len`` when the run set it, else 3 x the longest source + 10)."""
        sources = [len(self.src_tok.encode(t)) for t in texts or []]
        return decode_limit(self.config["train"].get("max_decode_len"), sources=sources)

    def translate(
        self, sentences: list[str] | str, *, beam: int = 1, alpha: float = 1.0, batch_size: int = 64,
        max_len: int | None = None,
    ) -> list[Translation]:  # fmt: skip
        """Translate sentences (greedy for ``beam=1``, else beam search)."""
        texts = [sentences] if isinstance(sentences, str) else list(sentences)
        if not texts:
            raise ValueError("sentences: expected at least one sentence")
        if max_len is None:
            max_len = self.max_len(texts)
        return _translate(self.model, texts, self.src_tok, self.tgt_tok, beam, alpha, batch_size, max_len)

    @torch.no_grad()
    def forced_attention(self, examples) -> list[Tensor | None]:
        """Teacher-forced attention on the references: ``(len(target tokens), len(source tokens))``
        per example (the row of <eos> dropped), the mean over the last layer's heads for a
        Transformer. None for attention-free models."""
        pairs = encode_pairs(list(examples), self.src_tok, self.tgt_tok)
        out: list[Tensor | None] = [None] * len(pairs)
        self.model.eval()
        for b in batches(pairs, batch_size=64, shuffle=False, seed=0):
            _, maps = self.model(b.src, b.src_lengths, b.tgt_in, need_weights=True)
            if not maps.cross:
                continue
            w = maps.cross[-1].mean(dim=1)  # (B, H, T, S) -> (B, T, S)
            tgt_len = (b.tgt_out != 0).sum(1) - 1  # without <eos>
            for row, idx in enumerate(b.index.tolist()):
                out[idx] = w[row, : int(tgt_len[row]), : int(b.src_lengths[row])].clone()
        return out

    def evaluate(
        self, examples, *, beam: int = 1, alpha: float = 1.0, batch_size: int = 64, aer: bool = True
    ) -> dict[str, Any]:
        """Metrics on ``examples``: ``exact_match`` (fraction), ``bleu``, ``chrf``, ``n``, and
        ``aer`` when the examples carry a gold alignment, the tokenizer is word level and the
        model has attention."""
        examples = list(examples)
        if not examples:
            raise ValueError("examples: nothing to evaluate (empty split)")
        hyps = [
            t.text
            for t in self.translate(
                [e.source for e in examples], beam=beam, alpha=alpha, batch_size=batch_size
            )
        ]
        refs = [_norm(e.target) for e in examples]
        metrics: dict[str, Any] = {
            "n": len(examples),
            "exact_match": exact_match(hyps, refs),
            "bleu": bleu(hyps, refs),
            "chrf": chrf(hyps, refs),
        }
        gold = [e.alignment for e in examples]
        word_level = self.config["data"].get("tokenizer") == "word"
        if aer and word_level and all(g is not None for g in gold):
            weights = self.forced_attention(examples)
            if all(w is not None for w in weights):
                pred = [alignment_from_weights(w) for w in weights]
                metrics["aer"] = aer_fn(pred, [set(map(tuple, g)) for g in gold])
        return metrics
