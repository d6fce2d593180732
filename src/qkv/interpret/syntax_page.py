"""One treebank sentence in the offline viewer: the model's word-level attention of every layer and
head, the sentence's gold dependency arcs, and the heads a
:class:`~qkv.interpret.syntax.SyntaxReport` found best for each of its relations.

    report = analyze_syntax(model, tokenizer, sentences)
    save_syntax_page("tree.html", model, tokenizer, sentences[0], report)

The page is :func:`qkv.viz.save_html`'s viewer with ``arcs`` and ``best_heads``: the arcs above
the head view; choosing a relation highlights its arcs and opens its best head.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from ..viz import save_html
from .syntax import SyntaxReport
from .syntax_encode import EncodedSentence, encode_treebank
from .treebank import Sentence

__all__ = ["SentenceView", "save_syntax_page", "sentence_view"]


@dataclass(frozen=True)
class SentenceView:
    """What the viewer draws for one sentence.

    Attributes:
        words: the sentence's words (the viewer's tokens).
        attention: ``(L, H, n, n)`` word-level attention, rows (queries) summing to 1
            (:mod:`qkv.interpret.word_attention`).
        arcs: ``(head, dependent, relation)`` of every word, 0-based, ``head = -1`` for the root.
        best_heads: ``{relation: ((layer, head, direction, accuracy), ...)}``, the report's
            ``top`` best of each relation of the sentence it measured, best first (the first is
            :attr:`RelationResult.best`); direction 0: dependent -> head, 1: head -> dependent.
        title: ``"<sent_id>: <words>"``.
    """

    words: tuple[str, ...]
    attention: Tensor
    arcs: tuple[tuple[int, int, str], ...]
    best_heads: dict[str, tuple[tuple[int, int, int, float], ...]]
    title: str


def sentence_view(encoded: EncodedSentence, report: SyntaxReport, *, top: int = 3) -> SentenceView:
    """The :class:`SentenceView` of an encoded sentence with ``report``'s best heads.

    Raises:
        ValueError: ``top`` not a positive int; the sentence's attention not of the report's
            ``L * H`` maps.
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top: expected a positive int, got {top!r}")
    s = encoded.sentence
    maps, n = report.num_layers * report.num_heads, len(s)
    if tuple(encoded.attention.shape) != (maps, n, n):
        raise ValueError(
            f"encoded: expected attention of shape ({maps}, {n}, {n}) (the report's layers x heads), "
            f"got {tuple(encoded.attention.shape)}"
        )
    best = {}
    for rel in sorted(set(s.relations)):
        result = report.relations.get(rel)
        if result is None:
            continue
        acc = result.accuracy  # (2, L, H)
        order = np.argsort(-acc.reshape(-1), kind="stable")[:top]  # ties: the first, as argmax
        best[rel] = tuple(
            (int(layer), int(head), int(d), float(acc[d, layer, head]))
            for d, layer, head in zip(*np.unravel_index(order, acc.shape))
        )
    return SentenceView(
        words=s.words,
        attention=encoded.attention.reshape(report.num_layers, report.num_heads, n, n),
        arcs=tuple(zip(s.heads, range(n), s.relations)),
        best_heads=best,
        title=f"{s.sent_id}: {' '.join(s.words)}",
    )


def save_syntax_page(
    path: str | Path, model, tokenizer, sentence: Sentence, report: SyntaxReport, *, top: int = 3
) -> Path:
    """Encode ``sentence`` with ``model`` and write its viewer page (:func:`sentence_view`) to
    ``path`` (``.html``); returns the path.

    Args:
        model, tokenizer: the model ``report`` was measured on (``qkv.interop.load_bert``).
        sentence: a treebank sentence (:func:`qkv.interpret.treebank.read_conllu`), read with the
            same ``keep_subtypes`` as the report's.
        top: best heads marked per relation.

    Raises:
        ValueError: ``path`` not ``.html``/``.htm``; the sentence has more pieces than the model
            takes, or a word the tokenizer gives no piece.
    """
    encoded = encode_treebank(model, tokenizer, [sentence])
    if not encoded.sentences:
        why = (
            f"more than the model's {encoded.max_length} pieces"
            if encoded.too_long
            else "a word the tokenizer gives no piece"
        )
        raise ValueError(f"sentence: {sentence.sent_id} cannot be shown: it has {why}")
    view = sentence_view(encoded.sentences[0], report, top=top)
    return save_html(
        path, view.attention, list(view.words), title=view.title, arcs=view.arcs, best_heads=view.best_heads
    )
