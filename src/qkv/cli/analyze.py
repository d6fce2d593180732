"""``qkv analyze syntax``: which attention heads of a BERT find syntactic heads, on a dependency
treebank (a thin shell over :func:`qkv.interpret.syntax.analyze_syntax`).

    qkv analyze syntax --model minilm --conllu en_ewt-ud-dev.conllu
    qkv analyze syntax --model minilm --conllu dev.conllu --json --png heads.png --sentences 500
    qkv analyze syntax --model minilm --conllu dev.conllu --html tree.html --sentence 3

``--model``: ``minilm`` or a local Hugging Face BERT directory (:mod:`qkv.cli.encoder`).
A progress bar on stderr; the table (or ``--json``) on stdout. ``--html``: the offline viewer of
one sentence (``--sentence``, 1-based) with its gold arcs and each relation's best heads
(:func:`qkv.interpret.syntax_page.save_syntax_page`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import USER_ERRORS, CommandError, error_message
from .encoder import load_encoder

__all__ = ["ANALYSES", "add_parser", "run"]

#: What ``qkv analyze`` measures.
ANALYSES = ("syntax",)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help="measure what a pretrained encoder's attention knows: syntax heads on a dependency treebank",
        description=(
            "syntax: for every relation of a CoNLL-U treebank (UD labels, subtypes folded), the layer x "
            "head whose most attended word is each dependent's head (or, the other direction, whose "
            "most attending word is), against the best fixed-offset baseline, with sentence-bootstrap "
            "95%% intervals; and Clark et al.'s (2019) attention probes (attention only; attention + the "
            "model's input embeddings), UAS on 20%% held-out sentences. Sentences longer than the "
            "model's maximum are skipped and counted."
        ),
    )
    p.add_argument("analysis", choices=ANALYSES, help="what to measure")
    p.add_argument(
        "--model",
        required=True,
        metavar="NAME",
        help="'minilm' (all-MiniLM-L6-v2) or a local Hugging Face BERT directory",
    )
    p.add_argument("--conllu", required=True, metavar="FILE", help="a CoNLL-U treebank (UTF-8)")
    p.add_argument("--sentences", type=int, default=None, metavar="N", help="read only the first N sentences")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--png", metavar="FILE", help="also draw the heads x relations accuracy figure (.png)")
    p.add_argument(
        "--min-count",
        type=int,
        default=1,
        metavar="N",
        help="report relations with at least N dependents (default 1)",
    )
    p.add_argument(
        "--html",
        metavar="FILE",
        help="also write the offline viewer (.html) of one sentence: its gold arcs over the head view, "
        "each relation's best heads marked",
    )
    p.add_argument(
        "--sentence",
        type=int,
        default=None,
        metavar="N",
        help="the sentence --html shows: the N-th of the file (default 1)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the probes (default 0)")
    p.add_argument(
        "--keep-subtypes", action="store_true", help="keep nmod:poss instead of folding it to nmod"
    )
    p.set_defaults(handler=run)


def _check(args: argparse.Namespace) -> None:
    if args.sentences is not None and args.sentences <= 0:
        raise CommandError(f"--sentences: expected a positive number, got {args.sentences}")
    if args.min_count <= 0:
        raise CommandError(f"--min-count: expected a positive number, got {args.min_count}")
    if args.png is not None and Path(args.png).suffix.lower() != ".png":
        raise CommandError(f"--png: expected a .png file name, got {args.png!r}")
    if args.html is not None and Path(args.html).suffix.lower() not in (".html", ".htm"):
        raise CommandError(f"--html: expected a .html file name, got {args.html!r}")
    if args.sentence is not None and args.html is None:
        raise CommandError(
            f"--sentence: chooses the sentence of --html, got --sentence {args.sentence} without --html"
        )
    args.sentence = 1 if args.sentence is None else args.sentence
    if args.sentence <= 0:
        raise CommandError(f"--sentence: expected a positive number, got {args.sentence}")
    if args.sentences is not None and args.html is not None and args.sentence > args.sentences:
        raise CommandError(
            f"--sentence: expected at most --sentences ({args.sentences}), got {args.sentence}"
        )
    if not Path(args.conllu).is_file():
        raise CommandError(f"--conllu: expected a CoNLL-U file, got {args.conllu!r} (no such file)")


def run(args: argparse.Namespace) -> int:
    """Read the treebank, load the model, analyse, print; user errors as ``CommandError``."""
    from ..interpret.syntax import analyze_syntax, syntax_figure
    from ..interpret.treebank import read_conllu
    from ..train.progress import progress_bar

    _check(args)
    try:
        sentences = read_conllu(args.conllu, keep_subtypes=args.keep_subtypes, limit=args.sentences)
    except USER_ERRORS as e:
        raise CommandError(f"--conllu: {error_message(e)}") from None
    model, tokenizer, shown = load_encoder(args.model)
    try:
        bar = progress_bar(len(sentences), desc=f"{shown} attention", unit="sentence", every=500)
        with bar:
            report = analyze_syntax(
                model, tokenizer, sentences, min_count=args.min_count, seed=args.seed, progress=bar.update
            )
        if args.png:
            syntax_figure(report, args.png, min_count=args.min_count)
        if args.html:
            _page(args, model, tokenizer, sentences, report)
    except USER_ERRORS as e:
        raise CommandError(error_message(e)) from None
    print(json.dumps(report.to_json(), indent=2) if args.json else _table(report, shown))
    return 0


def _page(args: argparse.Namespace, model, tokenizer, sentences, report) -> None:
    from ..interpret.syntax_page import save_syntax_page

    if args.sentence > len(sentences):
        raise CommandError(f"--sentence: the file has {len(sentences)} sentences, got {args.sentence}")
    sentence = sentences[args.sentence - 1]
    path = save_syntax_page(args.html, model, tokenizer, sentence, report)
    print(f"wrote {path} (sentence {sentence.sent_id})", file=sys.stderr)


def _table(report, shown: str) -> str:
    lines = [
        f"{shown}: {report.sentences} sentences, {report.words} words "
        f"({report.skipped_too_long} longer than the model's maximum skipped) in {report.seconds:.1f} s",
        "",
        "relation       n   best head (layer-head, 1-based)   accuracy [95% CI]      best offset",
    ]
    for name, r in sorted(report.relations.items(), key=lambda kv: -kv[1].n):
        d, layer, head = r.best
        arrow = "dep->head" if d == 0 else "head->dep"
        lines.append(
            f"{name:<12} {r.n:>5}   {layer + 1}-{head + 1} {arrow:<24} {r.best_accuracy:.3f} "
            f"[{r.ci[0]:.3f}, {r.ci[1]:.3f}]   {r.baseline_offset:+d}: {r.baseline_accuracy:.3f}"
        )
    if report.probe is not None:
        p = report.probe
        lines += [
            "",
            f"probe UAS on {p.test_sentences} held-out sentences ({p.test_words} words): "
            f"attention + embeddings {p.uas:.3f}, attention only {p.attention_only_uas:.3f}, "
            f"best offset ({p.baseline_offset:+d}) {p.baseline_uas:.3f}, right-branching {p.right_branching_uas:.3f}",
        ]
    return "\n".join(lines)
