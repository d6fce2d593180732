"""``qkv train``, ``qkv translate``, ``qkv evaluate``: thin shells over :mod:`qkv.translation`.

qkv train [CONFIG.toml] [--data CORPUS|FILE.tsv] [--model NAME] [--out DIR] [--resume] [--table.key=value ...]
qkv train [CONFIG.toml] [--model NAME] [--table.key=value ...] --show-config
qkv translate --checkpoint DIR [--beam K] [--alpha A] [--heatmap FILE.png] "sentence" ...
qkv evaluate --checkpoint DIR [--data FILE.tsv] [--split test] [--beam K] [--json]

Warnings of the library (malformed TSV lines, doubtful inputs and outputs of a translation)
are printed as ``warning: <message>`` on stderr, without Python's file and line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import re
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import CommandError, error_message

__all__ = ["OVERRIDE", "add_parsers"]

#: A dotted config override such as ``--train.lr=1e-3``; a bare ``--data.reverse`` means ``=true``.
OVERRIDE = re.compile(r"^--[A-Za-z_]+\.[A-Za-z_.]+(=|$)")

_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, ImportError, KeyError)


def add_parsers(sub) -> None:
    from ..translation.config import MODEL_PRESETS, TranslationTrainConfig

    t = TranslationTrainConfig()

    tr = sub.add_parser(
        "train",
        help="train a translation model (seq2seq with attention or Transformer)",
        description=(
            "Train on a built-in corpus or a TSV file of sentence pairs. Settings come from the defaults, "
            "a model preset (--model), an optional TOML file, then --table.key=value overrides, "
            "e.g. --train.epochs=5 --model.hidden_dim=64. "
            "Stopping loses nothing: Ctrl-C (SIGINT) or SIGTERM finishes the step under way, saves a "
            "checkpoint and exits with 130 or 143 (a second signal stops at once); --resume then continues "
            "exactly (bitwise on the same machine). A run killed outright (SIGKILL, a crash, a power cut) "
            f"loses at most about {t.save_every_minutes:g} minutes of training: besides the end of every epoch, a checkpoint "
            f"is saved every {t.save_every_minutes:g} minutes (--train.save_every_minutes; "
            "--train.save_every_steps=N for every N steps), and the newest "
            f"{t.keep_last} are kept (--train.keep_last). Training runs on {t.threads} torch thread "
            "by default (--train.threads=N): more gains little on these models and collapses next to "
            "another busy process."
        ),
    )
    tr.add_argument("config", nargs="?", help="a TOML config file (see configs/)")
    tr.add_argument(
        "--data", help="a built-in corpus name (numbers, numbers-de, dates-fr, ...) or a .tsv file"
    )
    tr.add_argument("--model", choices=list(MODEL_PRESETS), help="model preset")
    tr.add_argument("--out", default=None, help="run directory for checkpoints (default runs/<model>)")
    tr.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out exactly where it stopped, from its newest intact checkpoint "
        "(a damaged newer one is reported, moved aside and skipped), with the run's own config; overrides "
        "may change only how long it runs and how it saves (--train.epochs, max_steps, patience, "
        "save_every_minutes, save_every_steps, keep_last)",
    )
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.add_argument(
        "--show-config",
        action="store_true",
        help="print the settings this command would train with (every key and its value, as TOML) and exit",
    )
    tr.epilog = _config_epilog()
    tr.formatter_class = _HelpFormatter
    tr.set_defaults(handler=_train, overrides=[])

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
        description=(
            "Decodes a split of the run's corpus (or of --data FILE.tsv, read as in training, --data.reverse "
            "included) from the sentences as written, exactly as qkv translate does, and scores the text "
            "output against the references as written: sacrebleu's standard BLEU (cased, 13a tokenization) "
            "and chrF, each with the signature that says how it was computed; exact match; for a model "
            "trained on normalized text, 'BLEU normalized' (output and reference in the training form: a "
            "diagnostic, not comparable with published numbers); AER on built-in corpora. BLEU and chrF are "
            "rounded to 2 decimals, fractions to 4."
        ),
    )
    ev.add_argument("--checkpoint", required=True, help="a run directory of qkv train")
    ev.add_argument("--data", help="evaluate on this TSV file instead of the run's corpus")
    ev.add_argument("--split", default="test", help="train, valid, test or test_long (default test)")
    ev.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    ev.add_argument("--alpha", type=float, default=1.0, help="length normalization exponent of beam search")
    ev.add_argument("--limit", type=int, default=0, help="evaluate only the first N examples")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.set_defaults(handler=_evaluate)


@contextlib.contextmanager
def _warnings_as_messages() -> Iterator[None]:
    """Show warnings as ``warning: <message>`` lines on stderr (no file, line or source line);
    qkv's own (data and translation warnings) every time they occur."""
    from ..translation.data import DataWarning
    from ..translation.translator import TranslationWarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        ours = issubclass(category, (DataWarning, TranslationWarning))
        print(f"warning: {message}" + ("" if ours else f" ({category.__name__})"), file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", DataWarning)
        warnings.simplefilter("always", TranslationWarning)
        warnings.showwarning = show
        yield


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"config value {value!r}: not representable in TOML")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help layout, without line breaks at hyphens (``configs/tsv-example.toml``
    stays whole)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        text = " ".join(text.split())
        return textwrap.fill(
            text, width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
        )

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def _config_epilog() -> str:
    from ..translation.config import DataConfig, TranslationTrainConfig

    def table(name: str) -> str:
        values = dataclasses.asdict(DataConfig() if name == "data" else TranslationTrainConfig())
        return ", ".join(f"{k}={_toml_value(v)}" for k, v in values.items())

    return (
        f"Config keys and their defaults. [data]: {table('data')}. [train]: {table('train')}. "
        "[model]: the fields of the preset's model (seq2seq: attention, rnn, embed_dim, hidden_dim, ...; "
        "transformer: d_model, num_heads, ff_dim, encoder_layers, ...). "
        "`qkv train [CONFIG] [--model NAME] [--table.key=value ...] --show-config` prints every key with the "
        "value it would train with, as TOML. A TSV file with any model: "
        "qkv train configs/tsv-example.toml --data pairs.tsv --model transformer "
        "(configs/tsv-transformer.toml: a larger Transformer). --data.reverse translates from the second "
        "column to the first."
    )


def _override(text: str) -> str:
    """A bare ``--table.key`` (a switch such as ``--data.reverse``) means ``--table.key=true``."""
    return text if "=" in text else f"{text}=true"


def _train(args: argparse.Namespace) -> int:
    from ..train.config import load_toml
    from ..translation.config import resolve
    from ..translation.training import train

    try:
        file_cfg = load_toml(args.config) if args.config else {}
        overrides = [_override(o) for o in args.overrides]
        if args.data:
            overrides.insert(0, f"--data.corpus={json.dumps(args.data)}")
        cfg = resolve(file_cfg, preset=args.model, overrides=overrides)
        name = args.model or cfg.model.get("attention", cfg.model.get("kind"))
        out = Path(args.out or Path("runs") / str(name))
        if args.resume:
            cfg = _resumed_config(out, args, overrides)
        if args.show_config:
            print(cfg.to_toml(), end="")
            return 0
        with _warnings_as_messages():
            result = train(cfg, out, resume=args.resume, progress=not args.quiet, announce=True)
    except _USER_ERRORS as e:
        raise CommandError(error_message(e)) from None
    last = result.history[-1] if result.history else {}
    status = "interrupted" if result.interrupted else ("stopped early" if result.stopped_early else "done")
    best_text = best_loss_text(result)
    print(
        f"{status}: step {result.step}, best valid loss {best_text}"
        + (f", valid exact match {last['valid_exact_match']:.3f}" if "valid_exact_match" in last else "")
        + f", {result.seconds:.1f} s; checkpoints in {out}"
    )
    return result.exit_code  # 0, or 130 / 143 after SIGINT / SIGTERM


def _resumed_config(out: Path, args: argparse.Namespace, overrides: list[str]):
    """The config a ``--resume`` continues with: the run's own, with the overrides it allows
    (announced); a config file or ``--model`` cannot change a run under way."""
    from ..train.checkpoint import find_latest, load_checkpoint
    from ..translation.config import model_preset, resume_config

    if args.config:
        raise ValueError(f"--resume: the run in {str(out)!r} keeps its own config; drop {args.config!r} (overrides may change --train.epochs and the other keys of --help)")  # fmt: skip
    if find_latest(out) is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {str(out)!r}")
    run_config = load_checkpoint(out, verify=False).config
    if args.model and model_preset(run_config["model"]) != args.model:
        raise ValueError(f"--resume: the run in {str(out)!r} trains {model_preset(run_config['model'])!r}, not --model {args.model!r}")  # fmt: skip
    cfg, applied = resume_config(run_config, overrides)
    if applied and not args.show_config:
        print(f"resuming with {', '.join(applied)}", file=sys.stderr)
    return cfg


def _load(path: str):
    from ..translation.translator import Translator

    try:
        return Translator.load(path)
    except _USER_ERRORS as e:
        raise CommandError(f"--checkpoint: {error_message(e)}") from None


def _translate(args: argparse.Namespace) -> int:
    tr = _load(args.checkpoint)
    try:
        with _warnings_as_messages():
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


#: Decimals of the metrics ``qkv evaluate`` reports: scores in [0, 100] get 2, fractions 4.
_DECIMALS = {"bleu": 2, "chrf": 2, "bleu_normalized": 2, "exact_match": 4, "aer": 4}


def rounded_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` as reported: BLEU and chrF to 2 decimals, fractions to 4 (sacrebleu's
    100.00000000000004 is 100.0); counts and signatures as they are."""
    return {
        k: round(v, _DECIMALS[k]) if k in _DECIMALS and isinstance(v, float) else v
        for k, v in metrics.items()
    }


def _evaluate(args: argparse.Namespace) -> int:
    tr = _load(args.checkpoint)
    try:
        with _warnings_as_messages():
            if args.data:
                from ..translation.data import load_tsv

                d = tr.config["data"]
                corpus = load_tsv(
                    args.data,
                    lowercase=d["lowercase"],
                    split_punct=d["split_punct"],
                    reverse=bool(d.get("reverse", False)),
                    valid_frac=0.0,
                    test_frac=0.0,
                )
                examples = corpus["train"] if args.split == "test" else corpus[args.split]
            else:
                from ..translation.config import DataConfig
                from ..translation.training import load_corpus

                examples = load_corpus(DataConfig(**tr.config["data"]))[args.split]
            if args.limit:
                examples = examples[: args.limit]
            metrics = rounded_metrics(tr.evaluate(examples, beam=args.beam, alpha=args.alpha))
    except _USER_ERRORS as e:
        raise CommandError(error_message(e)) from None
    if args.json:
        print(json.dumps({"model": tr.describe(), "parameters": tr.num_parameters, **metrics}, indent=2))
        return 0
    print(f"model: {tr.describe()}")
    print(f"{args.split}: {metrics['n']} examples, beam {args.beam}")
    print(f"  exact match      {metrics['exact_match']:.4f}")
    print(f"  BLEU             {metrics['bleu']:.2f}  (sacrebleu {metrics['bleu_signature']})")
    print(f"  chrF             {metrics['chrf']:.2f}  (sacrebleu {metrics['chrf_signature']})")
    if "bleu_normalized" in metrics:
        print(
            f"  BLEU normalized  {metrics['bleu_normalized']:.2f}  (output and reference in the training form, "
            "lowercased/split as in training; not comparable with published BLEU)"
        )
    if "aer" in metrics:
        print(f"  AER              {metrics['aer']:.4f}")
    stops = metrics.get("stops", {})
    if stops.get("repetition") or stops.get("limit"):
        print(
            f"  cut outputs      {stops.get('repetition', 0)} stopped repeating a fragment, "
            f"{stops.get('limit', 0)} reached the length limit"
        )
    return 0


def best_loss_text(result) -> str:
    """The best validation loss of a training result as the summary line prints it."""
    best = result.best_valid_loss
    if math.isfinite(best):
        return f"{best:.4f}"
    # no epoch ended yet (a run stopped in its first epoch), or an empty validation split
    return "n/a (no epoch finished yet)" if not result.history else "n/a (no validation data)"
