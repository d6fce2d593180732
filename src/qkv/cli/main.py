"""``qkv``: the command-line entry point (``qkv = "qkv.cli.main:main"``).

    qkv --version
    qkv explain [...]     every step of an attention computation (see ``qkv explain --help``)
    qkv train / translate / evaluate   translation models (see ``qkv train --help``)
    qkv viz               attention of MiniLM or a trained model as an offline HTML viewer / figure
    qkv demo              train attention translators on built-in data, write a report
    qkv demo --examples   the three worked examples of the source articles, one after the other
    qkv bench [SUITE] [ARGS...]   main(ARGS) of ./benchmarks/attention_<SUITE>.py (dense by default; long)

:func:`main` returns the exit code instead of exiting; user errors print
``qkv: error: <message>`` on stderr and return 2, never a traceback. A reader that goes away
(``qkv explain | head -2``) ends the command quietly with exit code 141 (128 + SIGPIPE, what a
shell reports for ``yes | head``), as a Unix filter does.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

from . import CommandError, error_message
from . import explain as explain_cmd
from . import translate as translate_cmd
from . import viz as viz_cmd

__all__ = ["BENCH_SCRIPT", "build_parser", "main"]

BENCH_SUITES = ("dense", "long")
BENCH_SCRIPT = Path("benchmarks") / "attention_dense.py"


def _bench_script(args: list[str]) -> tuple[Path, list[str]]:
    """``[SUITE] ARGS...`` -> the suite's script and the arguments left for it."""
    if args and args[0] in BENCH_SUITES:
        return Path("benchmarks") / f"attention_{args[0]}.py", args[1:]
    return BENCH_SCRIPT, args


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so :func:`main` can return the code."""

    def error(self, message: str):  # type: ignore[override]
        raise CommandError(message, usage=self.format_usage())


def _version() -> str:
    from .. import __version__

    return f"qkv {__version__}"


DEMO_OUT = "runs/demo"


def _demo(args: argparse.Namespace) -> int:
    if args.examples:
        unused = [o for o, v in (("--out", args.out), ("--fresh", args.fresh), ("--quick", args.quick)) if v]
        if unused:
            raise CommandError(f"{'/'.join(unused)}: not used with --examples (it trains nothing)")
        return _examples(args)
    if args.precision is not None:
        raise CommandError("--precision: only used with --examples (the report's numbers are fixed)")
    from ..translation.demo import run_demo

    try:
        report = run_demo(args.out or DEMO_OUT, fresh=args.fresh, quick=args.quick)
    except (ValueError, ImportError, FileExistsError) as e:
        raise CommandError(error_message(e)) from None
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False))
    return 0


def _examples(args: argparse.Namespace) -> int:
    from .. import explain as ex

    examples = [
        ("seq2seq", "1/3  Seq2Seq with attention (article 000): one decoder step", ex.explain_seq2seq()),
        ("self_attention", "2/3  Self-attention (article 004), step by step", ex.explain_self_attention()),
        (
            "kernel_regression",
            "3/3  Kernel regression (article 001): attention before deep learning",
            ex.explain_kernel_regression(),
        ),
    ]
    if args.json:
        doc = {name: e.to_dict() for name, _, e in examples}
        print(json.dumps(doc, indent=2, allow_nan=False))
        return 0
    for i, (_, heading, e) in enumerate(examples):
        if i:
            print()
        bar = "#" * (len(heading) + 4)
        print(f"{bar}\n# {heading} #\n{bar}\n")
        print(e.to_text(precision=4 if args.precision is None else args.precision))
    return 0


# The package `qkv bench` imports benchmarks/ as (the directory is not a package installed with
# qkv): each suite then imports its siblings relatively, and nothing is added to sys.path.
_BENCH_PACKAGE = "_qkv_benchmarks"


@contextlib.contextmanager
def _benchmark_suite(script: Path) -> Iterator[ModuleType]:
    """Import ``script`` (``benchmarks/<suite>.py``) as ``_qkv_benchmarks.<suite>``, a module of a
    package whose directory is ``script``'s; afterwards the package and its modules are removed
    from ``sys.modules`` (another checkout's benchmarks may be run next)."""
    spec = importlib.machinery.ModuleSpec(_BENCH_PACKAGE, None, is_package=True)
    spec.submodule_search_locations = [str(script.parent)]
    sys.modules[_BENCH_PACKAGE] = importlib.util.module_from_spec(spec)
    importlib.invalidate_caches()  # the directory may have changed since the last import from it
    try:
        yield importlib.import_module(f"{_BENCH_PACKAGE}.{script.stem}")
    finally:
        for name in [n for n in sys.modules if n == _BENCH_PACKAGE or n.startswith(_BENCH_PACKAGE + ".")]:
            del sys.modules[name]


def _bench(args: argparse.Namespace) -> int:
    """Run a benchmark suite's ``main(argv)`` with the remaining arguments (``sys.argv`` and
    ``sys.path`` stay as they are)."""
    relative, rest = _bench_script(args.args)
    script = Path.cwd() / relative
    if not script.is_file():
        raise CommandError(
            f"{relative.as_posix()} not found in {Path.cwd()}: run `qkv bench` from the root of a "
            "qkv checkout"
        )
    try:
        with _benchmark_suite(script) as suite:
            entry = getattr(suite, "main", None)
            if not callable(entry):
                raise CommandError(f"{relative.as_posix()}: expected a function main(argv) to run")
            return _exit_code(entry(list(rest)))
    except SystemExit as e:  # argparse (--help, bad arguments) and sys.exit() inside the suite
        return _exit_code(e.code)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="qkv",
        description="qkv: every classic attention mechanism behind one Query-Key-Value interface.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    explain_cmd.add_parser(sub)
    translate_cmd.add_parsers(sub)
    viz_cmd.add_parser(sub)
    demo = sub.add_parser(
        "demo",
        help="train three translators (no attention, Bahdanau, Transformer) and write a report; "
        "--examples: print the worked examples",
        description=(
            "Trains three translators on the built-in numbers-de corpus (numbers written as digits -> "
            "German number words): none, the seq2seq baseline that reads one fixed context vector; "
            "bahdanau, seq2seq with additive attention; transformer, a small Transformer. Evaluates each "
            "on the held-out test set and on its longest inputs, and writes into --out: metrics.json, "
            "heatmaps/*.png (where the attention models look on long inputs) and report.html (one offline "
            "page: the scores, the heatmaps and each model's translations, wrong ones marked). A few "
            "minutes on 2 cores; a finished model is reused on the next run (--fresh retrains it). "
            "With --examples: nothing is trained; the three worked examples of the source articles "
            "(Seq2Seq, self-attention, kernel regression) are printed step by step."
        ),
        epilog="Examples: qkv demo;  qkv demo --quick --out /tmp/demo;  qkv demo --examples --precision 2",
    )
    demo.add_argument(
        "--examples",
        action="store_true",
        help="print the three worked examples step by step (trains nothing)",
    )
    demo.add_argument("--out", default=None, metavar="DIR", help=f"output directory (default {DEMO_OUT})")
    demo.add_argument("--fresh", action="store_true", help="retrain even when a finished model is there")
    demo.add_argument(
        "--quick",
        action="store_true",
        help="a much smaller run (600 pairs, one epoch, seconds): a smoke test, its scores mean nothing",
    )
    explain_cmd.add_output_options(
        demo,
        precision_help="with --examples: decimals shown (default 4)",
        json_help="print the metrics (what metrics.json holds) on stdout when done; with --examples: "
        "the three examples as one JSON object",
        precision_default=None,
    )
    demo.set_defaults(handler=_demo)
    bench = sub.add_parser(
        "bench",
        usage="qkv bench [-h] [SUITE] [ARGS ...]",
        help="run a benchmark suite of a qkv checkout: dense (default) or long",
        description=(
            "Runs a benchmark suite of a qkv checkout (from the checkout's root; the suites are not "
            "installed with qkv). SUITE: dense (the default; benchmarks/attention_dense.py): dense "
            "scaled-dot attention, qkv.attention against PyTorch SDPA; long (benchmarks/attention_long.py): "
            "qkv's backends on long sparse patterns (window, Longformer, BigBird) against SDPA, "
            "FlexAttention and local-attention. Every argument after SUITE goes to the suite's script, "
            "options included: `qkv bench SUITE --help` lists them. Results are written under "
            "benchmarks/results."
        ),
        epilog="Examples: qkv bench --quick;  qkv bench long --sizes 1024,4096;  qkv bench long --help",
    )
    bench.add_argument(
        "args",
        nargs="*",
        metavar="SUITE ARGS",
        help=f"a suite ({', '.join(BENCH_SUITES)}; default {BENCH_SUITES[0]}), then arguments for its script",
    )
    bench.set_defaults(handler=_bench)
    return parser


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message") convention
    return 1


_NUMBER_LIST = re.compile(r"^-[\d.]")


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--query -1,2`` -> ``--query=-1,2``: argparse would take ``-1,2`` for an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in explain_cmd.VECTOR_OPTIONS and i + 1 < len(argv) and _NUMBER_LIST.match(argv[i + 1]):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``qkv`` command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    try:
        code = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
    except BrokenPipeError:
        # The reader went away (`qkv explain | head -2`): stop quietly. stdout is pointed at
        # /dev/null so that the interpreter's flush at exit cannot raise (and print) again.
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no real file descriptor
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return 141  # 128 + SIGPIPE
    return code


def _run(argv: Sequence[str] | None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Everything after `bench` belongs to the benchmark script, options included (argparse's
    # REMAINDER would reject a leading "--size").
    bench_args: list[str] | None = None
    command_at = next((i for i, a in enumerate(args_list) if not a.startswith("-")), None)
    if command_at is not None and args_list[command_at] == "bench":
        args_list, bench_args = args_list[: command_at + 1], args_list[command_at + 1 :]
        if bench_args[:1] in (["-h"], ["--help"]):  # `qkv bench --help`: this command's help
            args_list, bench_args = [*args_list, "--help"], None
    overrides: list[str] = []
    if command_at is not None and args_list[command_at] == "train":
        # --table.key=value overrides go to the config, not to argparse.
        overrides = [a for a in args_list[command_at + 1 :] if translate_cmd.OVERRIDE.match(a)]
        args_list = [a for a in args_list if a not in overrides]
    try:
        args = parser.parse_args(_join_negative_values(args_list))
        if bench_args is not None:
            args.args = bench_args
        if overrides:
            args.overrides = overrides
        if getattr(args, "handler", None) is None:
            raise CommandError(
                "a command is required: explain, train, translate, evaluate, viz, demo or bench",
                usage=parser.format_usage(),
            )
        return args.handler(args)
    except CommandError as e:
        if e.usage:
            sys.stderr.write(e.usage)
        print(f"qkv: error: {e.message}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help and --version exit through argparse
        return _exit_code(e.code)


if __name__ == "__main__":
    sys.exit(main())
