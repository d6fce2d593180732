"""A trained translation model loaded from a checkpoint: translate, align and evaluate.

    >>> tr = Translator.load("runs/demo/bahdanau")            # doctest: +SKIP
    >>> r = tr.translate(["4 2 0 7"], beam=4)[0]
    >>> r.text, r.alignment_text()

What a model reads and writes is text in its training form. :meth:`Translator.translate`
applies the training steps stored in the checkpoint (a :class:`~qkv.translation.data.TextFormat`): the
normalization of the training text (``"Is Tom ill?"`` -> ``"is tom ill ?"`` for a model trained
with ``lowercase`` and ``split_punct``), then the tokenizer; the output is made text again
(``"Tom est-il malade ?"``: punctuation reattached, case restored). ``qkv translate`` and
``qkv evaluate`` go through the same method.

Inputs a model cannot translate well get a :class:`TranslationWarning` (and an entry in
``Translation.warnings``): an empty input (nothing is decoded; the translation is empty),
an input whose words are mostly unknown to the model, an input longer than any training
source, an output stopped because it repeated a fragment (see
:mod:`qkv.translation.decode`). An input longer than the model can read at all (a
Transformer's ``max_len`` positions) is a ``ValueError`` that names the limit and the remedy.

Evaluation (``qkv evaluate``) decodes a split and scores it (:mod:`qkv.translation.metrics`):
sacrebleu's standard BLEU (cased, its 13a tokenization) and chrF of the text output against
the references as written, their signatures, exact match, ``bleu_normalized`` (BLEU of the
output and the references both in the training form, lowercased and split when training
did so: how well the model does before detokenization, not comparable with published
numbers), and for built-in corpora the alignment error rate (AER) of the model's attention
against the gold alignment, read from the teacher-forced attention on the reference.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..application.run import load_trained
from ..models.builders import build_model
from .data import BUILTIN_CORPORA, TextFormat, batches, encode_pairs, tokenizer_from_dict
from .decode import Hypothesis, beam_search, decode_limit, greedy
from .metrics import aer as aer_fn
from .metrics import alignment_from_weights, bleu_signed, corpus_scores, exact_match

__all__ = ["Translation", "TranslationWarning", "Translator", "decode_examples", "text_format_of"]

_SHOWN_UNKNOWN = 5  # unknown words named in a warning


class TranslationWarning(UserWarning):
    """An input a model cannot translate well, or an output cut short (see the module docstring).

    The ``qkv`` command prints these as ``warning: <message>`` on stderr.
    """


def _norm(text: str) -> str:
    return " ".join(text.split())


def text_format_of(config: dict[str, Any]) -> TextFormat:
    """The text format of a run from its ``[data]`` table alone (checkpoints written before
    formats were stored): the TSV normalization options, nothing learned; identity for
    built-in corpora (their text is used as generated)."""
    d = config.get("data", {})
    if str(d.get("corpus", "")) in BUILTIN_CORPORA:
        return TextFormat()
    return TextFormat(lowercase=bool(d.get("lowercase")), split_punct=bool(d.get("split_punct")))


def _encode_sources(ids: list[list[int]]) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    src = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)  # PAD = 0
    for i, x in enumerate(ids):
        src[i, : len(x)] = torch.tensor(x, dtype=torch.long)
    return src, lengths


def _decode(model, ids, *, beam, alpha, batch_size, max_len, max_repeats=None) -> list[Hypothesis]:
    """Decode encoded sources (each at least one token) in batches."""
    model.eval()
    out: list[Hypothesis] = []
    for start in range(0, len(ids), batch_size):
        src, lengths = _encode_sources(ids[start : start + batch_size])
        if beam == 1:
            out += greedy(model, src, lengths, max_len=max_len, max_repeats=max_repeats)
        else:
            out += beam_search(
                model, src, lengths, beam=beam, alpha=alpha, max_len=max_len, max_repeats=max_repeats
            )
    return out


def decode_examples(
    model: nn.Module, examples, src_tok, tgt_tok, *, beam: int = 1, alpha: float = 1.0, batch_size: int = 64,
    max_len: int = 64,
) -> list[str]:  # fmt: skip
    """Translate ``examples`` (anything with ``.source``, already in the training form) in
    batches -> outputs in the training form, white space normalized (validation's exact match)."""
    ids = [src_tok.encode(e.source) or [src_tok.UNK] for e in examples]
    hyps = _decode(model, ids, beam=beam, alpha=alpha, batch_size=batch_size, max_len=max_len)
    return [_norm(tgt_tok.decode(h.tokens)) for h in hyps]


@dataclass
class Translation:
    """One translation: the text, the source and output tokens, and the attention of each output
    token (and of <eos>, the last row) over the source tokens, ``(len(target) + 1, len(source))``.

    Attributes:
        source: the input as given.
        text: the translation as text (detokenized, case restored: see :class:`~qkv.translation.data.TextFormat`).
        source_tokens, target_tokens: the model's tokens of the normalized input and of its output.
        score: the log-probability of the output.
        attention: see above; None for attention-free models and empty inputs.
        normalized: the output as the model wrote it, in the training form (``"tom est malade ?"``).
        warnings: what makes this translation doubtful (each also a :class:`TranslationWarning`).
        stop: why decoding ended: ``"eos"``, ``"limit"``, ``"repetition"`` (see
            :mod:`qkv.translation.decode`), ``"empty"`` (an empty input: nothing decoded).
        unknown_words: words of the normalized input never seen in training.
    """

    source: str
    text: str
    source_tokens: list[str]
    target_tokens: list[str]
    score: float
    attention: Tensor | None
    normalized: str = ""
    warnings: list[str] = field(default_factory=list)
    stop: str = "eos"
    unknown_words: list[str] = field(default_factory=list)

    def alignment(self) -> list[tuple[int, int]]:
        """Argmax alignment: for each output token, the source token it attends to most."""
        if self.attention is None:
            return []
        rows = self.attention[: len(self.target_tokens)]
        return [(int(r.argmax()), j) for j, r in enumerate(rows)]

    def alignment_text(self) -> str:
        """A text picture of the alignment: each output token, its weights as shades, and the
        source token it attends to most."""
        if not self.source_tokens:
            return "(empty input: nothing was translated)"
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


def _quoted(text: str, width: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[: width - 3] + "...")


class Translator:
    """A model, its tokenizers and its training's text steps, loaded from a run directory (its
    ``best/`` checkpoint when there is one, else the latest).

    Args:
        text: the :class:`~qkv.translation.data.TextFormat` of training (default: :func:`text_format_of`
            the config).
        inference: facts about the training data that guard decoding, as ``qkv train``
            stores them: ``max_repeats`` (the repetition rule of :mod:`qkv.translation.decode`),
            ``longest_source`` (source tokens), ``source_words`` (the words of the training
            sources, most frequent first) and ``source_words_complete``.
    """

    def __init__(
        self, model: nn.Module, src_tok, tgt_tok, config: dict[str, Any], *, path: Path | None = None,
        text: TextFormat | None = None, inference: dict[str, Any] | None = None,
    ):  # fmt: skip
        self.model, self.src_tok, self.tgt_tok, self.config, self.path = model, src_tok, tgt_tok, config, path
        self.text_format = text if text is not None else text_format_of(config)
        self.inference = dict(inference or {})
        words = self.inference.get("source_words")
        self._known = set(words) if words and self.inference.get("source_words_complete", True) else None

    @classmethod
    def load(cls, checkpoint: str | Path, *, best: bool = True) -> Translator:
        ck = load_trained(checkpoint, best=best)
        src_tok = tokenizer_from_dict(ck.vocab["source"])
        tgt_tok = tokenizer_from_dict(ck.vocab["target"])
        model = build_model(ck.config["model"], src_vocab=len(src_tok), tgt_vocab=len(tgt_tok))
        ck.restore(model, rng=False)
        model.eval()
        text = TextFormat.from_dict(ck.vocab["text"]) if "text" in ck.vocab else None
        return cls(
            model, src_tok, tgt_tok, ck.config, path=ck.path, text=text, inference=ck.vocab.get("inference")
        )

    @property
    def num_parameters(self) -> int:
        """The model's parameters (a tensor shared by two layers counted once)."""
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> str:
        """``"seq2seq (bahdanau attention), 1,234,567 parameters"``."""
        m = self.config.get("model", {})
        kind = m.get("kind", "seq2seq")
        name = f"seq2seq ({m.get('attention', 'bahdanau')} attention)" if kind == "seq2seq" else kind
        return f"{name}, {self.num_parameters:,} parameters"

    def input_limit(self) -> int | None:
        """The most tokens the model can read or write, or None (no fixed limit): a Transformer
        with sinusoidal or learned positions has ``max_len`` of them."""
        cfg = getattr(self.model, "config", None)
        if getattr(cfg, "positional", None) in ("sinusoidal", "learned"):
            return int(cfg.max_len)
        return None

    def max_len(self, texts: list[str] | None = None) -> int:
        """The decoding limit for ``texts``: :func:`~qkv.translation.decode.decode_limit` from the
        normalized sources (``max_decode_len`` when the run set it, else 3 x the longest source
        + 10), and never more than :meth:`input_limit`."""
        sources = [len(self.src_tok.encode(self.text_format.normalize(t))) for t in texts or []]
        return self._limit(sources)

    def _limit(self, sources: list[int]) -> int:
        limit = decode_limit(self.inference.get("max_decode_len"), sources=sources)
        cap = self.input_limit()
        return limit if cap is None else min(limit, cap)

    def _unknown(self, words: list[str]) -> list[str]:
        unk = self.src_tok.UNK
        return [
            w
            for w in words
            if unk in self.src_tok.encode(w) or (self._known is not None and w not in self._known)
        ]

    def translate(
        self, sentences: list[str] | str, *, beam: int = 1, alpha: float = 1.0, batch_size: int = 64,
        max_len: int | None = None,
    ) -> list[Translation]:  # fmt: skip
        """Translate sentences (greedy for ``beam=1``, else beam search), as written: each is
        normalized as the training text was, and each output is made text again.

        Warns:
            TranslationWarning: an empty input, mostly unknown words, an input longer than any
                training source, an output cut by the repetition rule or the decoding limit.

        Raises:
            ValueError: no sentence, or one longer than the model can read (the message names
                the limit and how to split the text).
        """
        texts = [sentences] if isinstance(sentences, str) else list(sentences)
        if not texts:
            raise ValueError("sentences: expected at least one sentence")
        results = self._translate(texts, beam=beam, alpha=alpha, batch_size=batch_size, max_len=max_len)
        for i, r in enumerate(results):
            for w in r.warnings:
                warnings.warn(f"input {i + 1} {_quoted(r.source)}: {w}", TranslationWarning, stacklevel=2)
        return results

    def _translate(self, texts, *, beam, alpha, batch_size, max_len) -> list[Translation]:
        """Normalize, encode, decode and describe ``texts`` (see :meth:`translate`)."""
        fmt = self.text_format
        norm = [fmt.normalize(t) for t in texts]
        ids = self._encode(texts, norm)
        cap = self.input_limit()
        todo = [i for i, x in enumerate(ids) if x]
        if max_len is None:
            max_len = self._limit([len(ids[i]) for i in todo])
        elif cap is not None:
            max_len = min(max_len, cap)
        decoded = _decode(
            self.model, [ids[i] for i in todo], beam=beam, alpha=alpha, batch_size=batch_size, max_len=max_len,
            max_repeats=self.inference.get("max_repeats"),
        )  # fmt: skip
        hyps = dict(zip(todo, decoded))
        out = []
        for i, text in enumerate(texts):
            h = hyps.get(i)
            if h is None:
                out.append(
                    Translation(text, "", [], [], 0.0, None, stop="empty",
                                warnings=["empty input (after normalization): nothing to translate"])
                )  # fmt: skip
                continue
            words = norm[i].split()
            unknown = self._unknown(words)
            notes = self._notes(words, unknown, len(ids[i]), h.stop, max_len)
            normalized = _norm(self.tgt_tok.decode(h.tokens))
            out.append(
                Translation(
                    source=text,
                    text=fmt.detokenize(normalized),
                    source_tokens=self.src_tok.tokens(norm[i]),
                    target_tokens=[self.tgt_tok.id_to_token(t) for t in h.tokens],
                    score=h.score,
                    attention=h.attention,
                    normalized=normalized,
                    warnings=notes,
                    stop=h.stop,
                    unknown_words=unknown,
                )
            )
        return out

    def _encode(self, texts: list[str], norm: list[str]) -> list[list[int]]:
        """The source ids of the normalized ``norm``; ValueError naming the input that is longer
        than the model reads."""
        ids = [self.src_tok.encode(n) for n in norm]
        cap = self.input_limit()
        for i, x in enumerate(ids):
            if cap is not None and len(x) > cap:
                raise ValueError(
                    f"input {i + 1} {_quoted(texts[i])} is {len(x)} source tokens long; this model reads at "
                    f"most {cap} (the Transformer's max_len). Split the text into sentences and translate "
                    'them one by one (qkv translate takes several: qkv translate --checkpoint DIR "First '
                    'sentence." "Second sentence."), or train with a larger --model.max_len'
                )
        return ids

    def _notes(self, words: list[str], unknown: list[str], n_ids: int, stop: str, max_len: int) -> list[str]:
        """The warnings of one translation: mostly unknown words, an input longer than any training
        sentence, an output cut by the repetition stop or the decoding limit."""
        notes = []
        longest = self.inference.get("longest_source")
        if 2 * len(unknown) > len(words):
            shown = ", ".join(unknown[:_SHOWN_UNKNOWN]) + (", ..." if len(unknown) > _SHOWN_UNKNOWN else "")
            notes.append(
                f"{len(unknown)} of {len(words)} words were never seen in training ({shown}): "
                "expect a wrong translation"
            )
        if longest and n_ids > longest:
            notes.append(
                f"{n_ids} source tokens, longer than any training sentence ({longest}): "
                "translations degrade beyond the training lengths; split long text into sentences"
            )
        if stop == "repetition":
            notes.append(
                f"the output started repeating a fragment ({self.inference.get('max_repeats')} times in "
                "a row, more than any training sentence does): decoding stopped and the copies were dropped"
            )
        elif stop == "limit":
            notes.append(
                f"the output reached the decoding limit ({max_len} tokens) without ending: cut there"
            )
        return notes

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
        """Metrics on ``examples``, translated from their sources as written
        (``Example.source_text``) exactly as :meth:`translate` would, against their targets as
        written (``Example.target_text``).

        Returns:
            ``n``; ``bleu`` and ``chrf`` (sacrebleu's standard scores of the text output:
            cased, 13a tokenization) with ``bleu_signature`` and ``chrf_signature``;
            ``exact_match`` (fraction of outputs equal to their reference, white space
            normalized); ``bleu_normalized`` and its signature when training normalized the
            text (lowercase or split_punct): BLEU of the output and the reference both in the
            training form, ``tok:none``; ``stops``: how many outputs were cut by the repetition
            rule or the decoding limit; ``aer`` when the examples carry a gold alignment, the
            tokenizer is word level and the model has attention.
        """
        examples = list(examples)
        if not examples:
            raise ValueError("examples: nothing to evaluate (empty split)")
        results = self._translate(
            [e.source_text for e in examples], beam=beam, alpha=alpha, batch_size=batch_size, max_len=None
        )
        hyps = [r.text for r in results]
        refs = [e.target_text for e in examples]
        metrics: dict[str, Any] = {"n": len(examples), "exact_match": exact_match(hyps, refs)}
        metrics.update(corpus_scores(hyps, refs))
        fmt = self.text_format
        if fmt.lowercase or fmt.split_punct:
            normalized = [r.normalized for r in results]
            targets = [fmt.normalize(e.target) for e in examples]
            score, signature = bleu_signed(normalized, targets, tokenize="none")
            metrics["bleu_normalized"], metrics["bleu_normalized_signature"] = score, signature
        metrics["stops"] = {k: sum(r.stop == k for r in results) for k in ("repetition", "limit", "empty")}
        gold = [e.alignment for e in examples]
        word_level = self.config["data"].get("tokenizer") == "word"
        if aer and word_level and all(g is not None for g in gold):
            weights = self.forced_attention(examples)
            if all(w is not None for w in weights):
                pred = [alignment_from_weights(w) for w in weights]
                metrics["aer"] = aer_fn(pred, [set(map(tuple, g)) for g in gold])
        return metrics
