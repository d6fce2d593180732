"""What a BERT's attention heads know of syntax, measured on a dependency treebank (Clark,
Khandelwal, Levy and Manning 2019, "What Does BERT Look At?").

    from qkv.interop import load_bert
    from qkv.interpret.syntax import analyze_syntax
    from qkv.interpret.treebank import read_conllu

    model, tokenizer = load_bert("minilm")
    report = analyze_syntax(model, tokenizer, read_conllu("en_ewt-ud-dev.conllu"))
    report.relations["det"].best_accuracy, report.probe.uas, report.to_json()

The pieces, one per module: :mod:`~qkv.interpret.treebank` (CoNLL-U),
:mod:`~qkv.interpret.word_attention` (words <-> pieces, word-level attention, ``[CLS]``/``[SEP]``
removed), :mod:`~qkv.interpret.syntax_encode` (the forward passes),
:mod:`~qkv.interpret.syntax_heads` (per relation and head, baselines, bootstrap) and
:mod:`~qkv.interpret.syntax_probe` (the attention probes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .syntax_encode import encode_treebank
from .syntax_heads import RelationResult, head_table, relation_results
from .syntax_probe import ProbeResult, attention_probe
from .treebank import Sentence

__all__ = ["SyntaxReport", "analyze_syntax", "syntax_figure"]


@dataclass(frozen=True)
class SyntaxReport:
    """The analysis of one model on one treebank.

    Attributes:
        sentences: sentences analysed; words: their words; skipped_too_long: sentences longer
            than the tokenizer's ``max_length`` pieces (skipped); skipped_unaligned: sentences
            with a word the tokenizer gives no piece (skipped).
        num_layers, num_heads: the model's shape.
        relations: per relation, its :class:`~qkv.interpret.syntax_heads.RelationResult`.
        probe: the attention probes (``None`` when not run).
        seconds: wall time of the whole analysis.
    """

    sentences: int
    words: int
    skipped_too_long: int
    skipped_unaligned: int
    num_layers: int
    num_heads: int
    relations: dict[str, RelationResult]
    probe: ProbeResult | None
    seconds: float

    def to_json(self) -> dict:
        """``{"sentences", "words", "seconds", "relations": {rel: {"n", "best_head": [layer,
        head], "accuracy", "baseline_offset", "baseline_accuracy", "ci": [low, high]}}, "probe":
        {"uas", "attention_only_uas", "baseline_uas"}}``: fractions to 4 decimals, layers and
        heads 0-based, ``probe`` ``null`` when not run."""
        relations = {
            name: {
                "n": r.n,
                "best_head": [r.best[1], r.best[2]],
                "accuracy": round(r.best_accuracy, 4),
                "baseline_offset": r.baseline_offset,
                "baseline_accuracy": round(r.baseline_accuracy, 4),
                "ci": [round(r.ci[0], 4), round(r.ci[1], 4)],
            }
            for name, r in self.relations.items()
        }
        probe = None
        if self.probe is not None:
            p = self.probe
            probe = {
                "uas": round(p.uas, 4),
                "attention_only_uas": round(p.attention_only_uas, 4),
                "baseline_uas": round(p.baseline_uas, 4),
            }
        return {
            "sentences": self.sentences,
            "words": self.words,
            "seconds": round(self.seconds, 2),
            "relations": relations,
            "probe": probe,
        }


def analyze_syntax(
    model,
    tokenizer,
    sentences: Sequence[Sentence],
    *,
    relations: Sequence[str] | None = None,
    min_count: int = 1,
    probe: bool = True,
    bootstrap: int = 1000,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> SyntaxReport:
    """Clark et al.'s head analysis and attention probes of ``model`` on ``sentences``.

    Args:
        model, tokenizer: a :class:`qkv.models.BertModel` and its tokenizer
            (``qkv.interop.load_bert``).
        sentences: treebank sentences (:func:`qkv.interpret.treebank.read_conllu`).
        relations: relations to report (default: all with ``min_count`` dependents or more).
        probe: also train and score the attention probes (held-out 20% of the sentences;
            skipped, ``report.probe`` ``None``, with fewer than 10 sentences).
        bootstrap, seed: resamples of the confidence intervals and the seed of everything
            random (bootstrap, probe split and training): same seed, same report.
        progress: called with the number of sentences just encoded.

    Raises:
        ValueError: no sentence fits the model; a requested relation absent from the data.
        TypeError: ``model`` is not a qkv BERT.
    """
    start = time.perf_counter()
    encoded = encode_treebank(model, tokenizer, sentences, progress=progress)
    if not encoded.sentences:
        raise ValueError(
            f"sentences: expected at least one sentence within the model's {encoded.max_length} pieces, "
            f"got {len(sentences)} ({encoded.too_long} too long, {encoded.unaligned} unaligned)"
        )
    table = head_table(encoded.sentences)
    results = relation_results(
        table,
        encoded.num_layers,
        encoded.num_heads,
        relations=relations,
        min_count=min_count,
        bootstrap=bootstrap,
        seed=seed,
    )
    probed = attention_probe(encoded.sentences, seed=seed) if probe and len(encoded.sentences) >= 10 else None
    return SyntaxReport(
        sentences=len(encoded.sentences),
        words=sum(len(e.sentence) for e in encoded.sentences),
        skipped_too_long=encoded.too_long,
        skipped_unaligned=encoded.unaligned,
        num_layers=encoded.num_layers,
        num_heads=encoded.num_heads,
        relations=results,
        probe=probed,
        seconds=time.perf_counter() - start,
    )


def syntax_figure(report: SyntaxReport, path: str | Path | None = None, *, min_count: int = 1):
    """A heads x relations heatmap (matplotlib figure): for each relation with ``min_count``
    dependents or more, each layer-head's accuracy, the better of its two directions; rows
    ``"layer-head"`` 1-based as in Clark et al.'s figures. Saved to ``path`` if given.

    Raises:
        ValueError: no relation with ``min_count`` dependents.
        ImportError: matplotlib is missing (``pip install 'qkv[viz]'``).
    """
    import numpy as np

    from ..viz import heatmap

    names = [r for r, res in report.relations.items() if res.n >= min_count]
    if not names:
        raise ValueError(f"report: expected a relation with at least {min_count} dependents, got none")
    acc = np.stack([report.relations[r].accuracy.max(0).reshape(-1) for r in names], 1)
    rows = [
        f"{layer + 1}-{head + 1}" for layer in range(report.num_layers) for head in range(report.num_heads)
    ]
    return heatmap(
        acc, rows, names, title="accuracy of each head, per relation", vmin=0.0, vmax=1.0, path=path
    )
