"""``qkv train``: train a translation model or an image classifier (a thin shell over
:func:`qkv.translation.training.train` and :func:`qkv.vision.training.train`).

qkv train [CONFIG.toml] [--data CORPUS|FILE.tsv] [--model NAME] [--out DIR] [--resume] [--table.key=value ...]
qkv train --model vit --data digits|fashion-mnist|located-digits|DIR [--out DIR] [--table.key=value ...]
qkv train [CONFIG.toml] [--model NAME] [--table.key=value ...] --show-config
qkv train ... --nproc N        (N data-parallel processes; torchrun --nproc_per_node N -m qkv train ... alike)

The application comes from :func:`qkv.cli.application.of_train_args` (the preset, the config
file's ``[model]``, or an image ``--data``).

The ``--table.key=value`` overrides are taken out of the arguments by :mod:`qkv.cli.overrides`
before argparse runs; :func:`run` finds them in ``args.overrides``. Warnings of the library
(malformed TSV lines) are printed as ``warning: <message>`` on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

from . import USER_ERRORS, CommandError, application, error_message, warnings_as_messages

__all__ = ["add_parser", "best_loss_text", "run"]


def add_parser(sub) -> None:
    from ..translation.config import MODEL_PRESETS, TranslationTrainConfig

    t = TranslationTrainConfig()

    tr = sub.add_parser(
        "train",
        help="train a translation model (seq2seq with attention or Transformer) or an image classifier (ViT)",
        description=(
            "Train on a built-in corpus or a TSV file of sentence pairs, or (--model vit) on images: "
            "scikit-learn's digits, Fashion-MNIST, located-digits or a folder with one subfolder per class. "
            "Settings come from the defaults, "
            "a model preset (--model), an optional TOML file, then --table.key=value overrides "
            "(--table.key value is the same; a bare --table.key is a switch: =true), "
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
        "--data",
        help="a built-in corpus name (numbers, numbers-de, dates-fr, ...) or a .tsv file; with a ViT: "
        "digits, fashion-mnist, located-digits or a folder of class subfolders; with clip, a captioner or grounded: "
        "digit-strips, digit-strips-fr, digit-strips-de or digit-strips-digits; with las: spoken-numbers",
    )
    tr.add_argument(
        "--model",
        choices=[
            *MODEL_PRESETS,
            *application.VISION_PRESETS,
            *application.CROSSMODAL_PRESETS,
            *application.SPEECH_PRESETS,
        ],
        help="model preset",
    )
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
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train data-parallel in N processes on this machine, started by torchrun's elastic agent "
        "(the same as torchrun --standalone --nproc_per_node N -m qkv train ...): each takes "
        "--train.batch_size examples of every step (a step of N x batch_size), rank 0 prints and "
        "writes the checkpoints; a run resumes with the N it was trained with. Several machines: "
        "torchrun --nnodes (see the data-parallel guide)",
    )
    tr.add_argument(
        "--show-config",
        action="store_true",
        help="print the settings this command would train with (every key and its value, as TOML) and exit",
    )
    tr.epilog = _config_epilog()
    tr.formatter_class = _HelpFormatter
    tr.set_defaults(handler=run, overrides=[])


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
        "transformer: d_model, num_heads, ff_dim, encoder_layers, ...; vit: patch_size, dim, depth, heads, "
        "mlp_dim, pool, positions, ...). With --model vit the [data] and [train] tables are the image "
        "classifier's: qkv train --model vit --data digits --show-config lists them. "
        "`qkv train [CONFIG] [--model NAME] [--table.key=value ...] --show-config` prints every key with the "
        "value it would train with, as TOML. A TSV file with any model: "
        "qkv train configs/tsv-example.toml --data pairs.tsv --model transformer "
        "(configs/tsv-transformer.toml: a larger Transformer). --data.reverse translates from the second "
        "column to the first."
    )


def run(args: argparse.Namespace) -> int:
    """Train with the resolved config (or print it: ``--show-config``); the exit code is 0, or 130 /
    143 after SIGINT / SIGTERM."""
    from ..application.run_config import load_toml
    from ..translation.config import resolve
    from ..translation.training import train

    if args.nproc != 1 and not args.show_config:
        return _launch(args)
    try:
        file_cfg = load_toml(args.config) if args.config else {}
        app = application.of_train_args(args.model, file_cfg, args.data)
        if args.resume and args.out and args.model is None and not file_cfg:
            app = application.of_checkpoint(args.out)  # the run's own application
        if app in ("vision", "crossmodal", "speech"):
            return _run_application(args, file_cfg, app)
        overrides = list(args.overrides)
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
        with warnings_as_messages():
            result = train(cfg, out, resume=args.resume, progress=not args.quiet, announce=True)
    except USER_ERRORS as e:
        raise CommandError(error_message(e)) from None
    last = result.history[-1] if result.history else {}
    status = "interrupted" if result.interrupted else ("stopped early" if result.stopped_early else "done")
    best_text = best_loss_text(result)
    if os.environ.get("RANK", "0") != "0":  # one of torchrun's processes: rank 0 reports
        return result.exit_code
    print(
        f"{status}: step {result.step}, best valid loss {best_text}"
        + (f", valid exact match {last['valid_exact_match']:.3f}" if "valid_exact_match" in last else "")
        + f", {result.seconds:.1f} s; checkpoints in {out}"
    )
    return result.exit_code  # 0, or 130 / 143 after SIGINT / SIGTERM


def _run_application(args: argparse.Namespace, file_cfg: dict[str, Any], app: str) -> int:
    """``qkv train`` of an image classifier (:func:`qkv.vision.training.train`), an image-text
    matcher or captioner (:func:`qkv.crossmodal.training.train`) or a speech recognizer
    (:func:`qkv.speech.training.train`), then one summary line."""
    if app == "vision":
        from ..vision.config import resolve, resume_config
        from ..vision.training import train

        default, metric = "vit", ("valid_accuracy", "valid accuracy")
    elif app == "crossmodal":
        from ..crossmodal.config import resolve, resume_config
        from ..crossmodal.training import train

        default, metric = "clip", ("valid_i2t_r1", "valid image->text R@1")
    else:
        from ..speech.config import resolve, resume_config
        from ..speech.training import train

        default, metric = "las", ("valid_wer", "valid WER")
    overrides = list(args.overrides)
    if args.data:
        overrides.insert(0, f"--data.dataset={json.dumps(args.data)}")
    cfg = resolve(file_cfg, preset=args.model, overrides=overrides)
    if cfg.model.get("kind", "").startswith("captioner") or cfg.model.get("kind") == "grounded":
        metric = ("valid_exact_match", "valid exact match")
    out = Path(args.out or Path("runs") / (args.model or default))
    if args.resume:
        if args.config:
            raise ValueError(f"--resume: the run in {str(out)!r} keeps its own config; drop {args.config!r}")
        from ..train.checkpoint import load_checkpoint

        cfg, applied = resume_config(load_checkpoint(out, verify=False).config, overrides)
        if applied and not args.show_config:
            print(f"resuming with {', '.join(applied)}", file=sys.stderr)
    if args.show_config:
        print(cfg.to_toml(), end="")
        return 0
    with warnings_as_messages():
        result = train(cfg, out, resume=args.resume, progress=not args.quiet, announce=True)
    if os.environ.get("RANK", "0") != "0":  # one of torchrun's processes: rank 0 reports
        return result.exit_code
    last = result.history[-1] if result.history else {}
    status = "interrupted" if result.interrupted else ("stopped early" if result.stopped_early else "done")
    accuracy = f", {metric[1]} {last[metric[0]]:.4f}" if metric[0] in last else ""
    print(f"{status}: step {result.step}, best valid loss {best_loss_text(result)}{accuracy}, "
          f"{result.seconds:.1f} s; checkpoints in {out}")  # fmt: skip
    return result.exit_code


def _launch(args: argparse.Namespace) -> int:
    """``--nproc N``: this command without ``--nproc`` in N processes (:func:`qkv.parallel.launch`)."""
    from ..parallel.launch import launch

    if args.nproc < 1:
        raise CommandError(f"--nproc: expected an int >= 1, got {args.nproc}")
    if "WORLD_SIZE" in os.environ:
        raise CommandError("--nproc: this process is already one of torchrun's; drop --nproc")
    _check_data_parallel(args)
    argv = ["train", *([args.config] if args.config else [])]
    for option in ("data", "model", "out"):
        if getattr(args, option) is not None:
            argv += [f"--{option}", getattr(args, option)]
    argv += [f"--{flag}" for flag in ("resume", "quiet") if getattr(args, flag)]
    return launch([*argv, *args.overrides], nproc=args.nproc)


def _check_data_parallel(args: argparse.Namespace) -> None:
    """Refuse ``--nproc`` for the models whose training does not split across processes
    (before any process starts): the cross-modal kinds but the matcher."""
    from ..application.run_config import load_toml

    try:
        file_cfg = load_toml(args.config) if args.config else {}
        app = application.of_train_args(args.model, file_cfg, args.data)
        if args.resume and args.out and args.model is None and not file_cfg:
            app = application.of_checkpoint(args.out)
        if app != "crossmodal":
            return
        from ..crossmodal.config import resolve
        from ..crossmodal.training import DATA_PARALLEL_KINDS

        overrides = [o for o in args.overrides if o.startswith("--model.")]
        kind = resolve(file_cfg, preset=args.model, overrides=overrides).model.get("kind", "clip")
    except USER_ERRORS as e:
        raise CommandError(error_message(e)) from None
    if kind not in DATA_PARALLEL_KINDS:
        raise CommandError(f"--nproc: model kind {kind!r} trains in one process only (data-parallel: "
                           f"{', '.join(sorted(DATA_PARALLEL_KINDS))}, the translation models, the ViT); drop --nproc")  # fmt: skip


def _resumed_config(out: Path, args: argparse.Namespace, overrides: list[str]):
    """The config a ``--resume`` continues with: the run's own, with the overrides it allows
    (announced); a config file or ``--model`` cannot change a run under way."""
    from ..train.checkpoint import list_checkpoints, load_checkpoint
    from ..translation.config import model_preset, resume_config

    if args.config:
        raise ValueError(f"--resume: the run in {str(out)!r} keeps its own config; drop {args.config!r} (overrides may change --train.epochs and the other keys of --help)")  # fmt: skip
    if not list_checkpoints(out):
        raise FileNotFoundError(f"--resume: no checkpoint in {str(out)!r}")
    run_config = load_checkpoint(out, verify=False).config
    if args.model and model_preset(run_config["model"]) != args.model:
        raise ValueError(f"--resume: the run in {str(out)!r} trains {model_preset(run_config['model'])!r}, not --model {args.model!r}")  # fmt: skip
    cfg, applied = resume_config(run_config, overrides)
    if applied and not args.show_config:
        print(f"resuming with {', '.join(applied)}", file=sys.stderr)
    return cfg


def best_loss_text(result) -> str:
    """The best validation loss of a training result as the summary line prints it."""
    best = result.best_valid_loss
    if math.isfinite(best):
        return f"{best:.4f}"
    # no epoch ended yet (a run stopped in its first epoch), or an empty validation split
    return "n/a (no epoch finished yet)" if not result.history else "n/a (no validation data)"
