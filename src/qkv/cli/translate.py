"""``qkv translate``: translate sentences with a trained model and show the alignment (a thin
shell over :meth:`qkv.translation.translator.Translator.translate`).

qkv translate --checkpoint DIR [--beam K] [--alpha A] [--heatmap FILE.png] "sentence" ...

Warnings of the library (doubtful inputs and outputs of a translation) are printed as
``warning: <message>`` on stderr, without Python's file and line.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import CommandError, warnings_as_messages
from .checkpoint import add_checkpoint_options, load_translator

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    tl = sub.add_parser(
        "translate",
        help="translate sentences with a trained model and show the alignment",
        description=(
            "Greedy decoding, or beam search with --beam K (length-normalized with --alpha). Each sentence is "
            "normalized as the training text was (the checkpoint stores how: lowercase, punctuation split off, "
            "spaces) and the output is printed as text again (punctuation reattached as in the training "
            "targets, case restored). Warnings on stderr: an empty sentence (nothing is translated), mostly "
            "unknown words, a sentence longer than any training sentence, an output cut because it repeated "
            "a fragment more times in a row than any training sentence does. A sentence longer than a "
            "Transformer can read is an error: pass long text as one sentence per argument."
        ),
    )
    tl.add_argument("sentences", nargs="+", help="source sentences")
    add_checkpoint_options(tl)
    tl.add_argument(
        "--heatmap", help="write the attention of the first sentence as an image (.png/.svg/.pdf)"
    )
    tl.add_argument("--no-alignment", action="store_true", help="print only the translations")
    tl.add_argument("--json", action="store_true", help="machine-readable output")
    tl.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    tr = load_translator(args.checkpoint)
    try:
        with warnings_as_messages():
            results = tr.translate(args.sentences, beam=args.beam, alpha=args.alpha)
    except ValueError as e:
        raise CommandError(str(e)) from None
    if args.json:
        doc = [
            {
                "source": r.source,
                "translation": r.text,
                "normalized": r.normalized,
                "score": r.score,
                "stop": r.stop,
                "unknown_words": r.unknown_words,
                "warnings": r.warnings,
                "alignment": r.alignment(),
            }
            for r in results
        ]
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    else:
        for r in results:
            print(r.text)
            if not args.no_alignment:
                print(r.alignment_text())
                print()
    if args.heatmap:
        first = results[0]
        if not first.source_tokens:
            raise CommandError("--heatmap: the first sentence is empty: nothing to draw")
        if first.attention is None:
            raise CommandError("--heatmap: this model has no attention to draw")
        try:
            from ..viz import alignment

            alignment(
                first.attention[: len(first.target_tokens)],
                first.source_tokens,
                first.target_tokens,
                path=args.heatmap,
            )
        except (ValueError, ImportError) as e:
            raise CommandError(f"--heatmap: {e}") from None
        print(f"heatmap written to {args.heatmap}", file=sys.stderr)
    return 0
