"""``qkv train``, ``qkv translate``, ``qkv evaluate``: thin shells over :mod:`qkv.translation`.

qkv train [CONFIG.toml] [--data CORPUS|FILE.tsv] [--model NAME] [--out DIR] [--resume] [--table.key=value ...]
qkv translate --checkpoint DIR [--beam K] [--alpha A] [--heatmap FILE.png] "sentence" ...
qkv evaluate --checkpoint DIR [--data FILE.tsv] [--split test] [--beam K] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from . import CommandError

__all__ = ["OVERRIDE", "add_parsers"]

#: A dotted config override such as ``--train.lr=1e-3``.
OVERRIDE = re.compile(r"^--[A-Za-z_]+\.[A-Za-z_.]+=")

_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, ImportError, KeyError)


def add_parsers(sub) -> None:
    from ..train.config import MODEL_PRESETS

    tr = sub.add_parser(
        "train",
        help="train a translation model (seq2seq with attention or Transformer)",
        description=(
            "Train on a built-in corpus or a TSV file of sentence pairs. Settings come from the defaults, "
            "a model preset (--model), an optional TOML file, then --table.key=value overrides, "
            "e.g. --train.epochs=5 --model.hidden_dim=64."
        ),
    )
    tr.add_argument("config", nargs="?", help="a TOML config file (see configs/)")
    tr.add_argument(
        "--data", help="a built-in corpus name (numbers, numbers-de, dates-fr, ...) or a .tsv file"
    )
    tr.add_argument("--model", choices=list(MODEL_PRESETS), help="model preset")
    tr.add_argument("--out", default=None, help="run directory for checkpoints (default runs/<model>)")
    tr.add_argument(
        "--resume", action="store_true", help="continue the run in --out exactly where it stopped"
    )
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(handler=_train, overrides=[])

    tl = sub.add_parser(
        "translate",
        help="translate sentences with a trained model and show the alignment",
        description="Greedy decoding, or beam search with --beam K (length-normalized with --alpha).",
    )
    tl.add_argument("sentences", nargs="+", help="source sentences")
    tl.add_argument("--checkpoint", required=True, help="a run directory of qkv train")
    tl.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    tl.add_argument("--alpha", type=float, default=1.0, help="length normalization exponent of beam search")
    tl.add_argument(
        "--heatmap", help="write the attention of the first sentence as an image (.png/.svg/.pdf)"
    )
    tl.add_argument("--no-alignment", action="store_true", help="print only the translations")
    tl.add_argument("--json", action="store_true", help="machine-readable output")
    tl.set_defaults(handler=_translate)

    ev = sub.add_parser(
        "evaluate",
        help="score a trained model: BLEU, chrF, exact match, alignment error rate",
        description="Decodes a split of the run's corpus (or of --data FILE.tsv) and scores it with sacrebleu.",
    )
    ev.add_argument("--checkpoint", required=True, help="a run directory of qkv train")
    ev.add_argument("--data", help="evaluate on this TSV file instead of the run's corpus")
    ev.add_argument("--split", default="test", help="train, valid, test or test_long (default test)")
    ev.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    ev.add_argument("--alpha", type=float, default=1.0, help="length normalization exponent of beam search")
    ev.add_argument("--limit", type=int, default=0, help="evaluate only the first N examples")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.set_defaults(handler=_evaluate)


def _train(args: argparse.Namespace) -> int:
    from ..train.config import load_config, resolve
    from ..translation.training import train

    try:
        file_cfg = load_config(args.config) if args.config else {}
        overrides = list(args.overrides)
        if args.data:
            overrides.insert(0, f"--data.corpus={json.dumps(args.data)}")
        cfg = resolve(file_cfg, preset=args.model, overrides=overrides)
        name = args.model or cfg["model"].get("attention", cfg["model"].get("kind"))
        out = Path(args.out or Path("runs") / str(name))
        result = train(cfg, out, resume=args.resume, progress=not args.quiet)
    except _USER_ERRORS as e:
        raise CommandError(str(e).strip("'\"")) from None
    last = result.history[-1] if result.history else {}
    status = "interrupted" if result.interrupted else ("stopped early" if result.stopped_early else "done")
    print(
        f"{status}: step {result.step}, best valid loss {result.best_valid_loss:.4f}"
        + (f", valid exact match {last['valid_exact_match']:.3f}" if "valid_exact_match" in last else "")
        + f", {result.seconds:.1f} s; checkpoints in {out}"
    )
    return 130 if result.interrupted else 0


def _load(path: str):
    from ..translation.translator import Translator

    try:
        return Translator.load(path)
    except _USER_ERRORS as e:
        raise CommandError(f"--checkpoint: {str(e).strip(chr(39))}") from None


def _translate(args: argparse.Namespace) -> int:
    tr = _load(args.checkpoint)
    try:
        results = tr.translate(args.sentences, beam=args.beam, alpha=args.alpha)
    except ValueError as e:
        raise CommandError(str(e)) from None
    if args.json:
        doc = [
            {"source": r.source, "translation": r.text, "score": r.score, "alignment": r.alignment()}
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


def _evaluate(args: argparse.Namespace) -> int:
    tr = _load(args.checkpoint)
    try:
        if args.data:
            from ..data import load_tsv

            d = tr.config["data"]
            corpus = load_tsv(
                args.data,
                lowercase=d["lowercase"],
                split_punct=d["split_punct"],
                valid_frac=0.0,
                test_frac=0.0,
            )
            examples = corpus["train"] if args.split == "test" else corpus[args.split]
        else:
            from ..translation.training import load_corpus

            examples = load_corpus(tr.config["data"])[args.split]
        if args.limit:
            examples = examples[: args.limit]
        metrics = tr.evaluate(examples, beam=args.beam, alpha=args.alpha)
    except _USER_ERRORS as e:
        raise CommandError(str(e).strip("'\"")) from None
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{args.split}: {metrics['n']} examples, beam {args.beam}")
        print(f"  exact match  {metrics['exact_match']:.4f}")
        print(f"  BLEU         {metrics['bleu']:.2f}")
        print(f"  chrF         {metrics['chrf']:.2f}")
        if "aer" in metrics:
            print(f"  AER          {metrics['aer']:.4f}")
    return 0
