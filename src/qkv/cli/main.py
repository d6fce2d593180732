"""``qkv``: the command-line entry point (``qkv = "qkv.cli.main:main"``).

    qkv --version
    qkv explain [...]     every step of an attention computation (see ``qkv explain --help``)
    qkv train             train a translation model (dotted ``--table.key=value`` overrides)
    qkv translate         translate sentences with a trained model
    qkv evaluate          score a trained model
    qkv viz               attention of MiniLM or a trained model as an offline HTML viewer / figure
    qkv analyze syntax    which attention heads of a BERT find syntactic heads (a CoNLL-U treebank)
    qkv demo              train attention translators on built-in data, write a report
    qkv demo --examples   the three worked examples of the source articles, one after the other

Each command is its own module, ``cli/<command>.py``, with ``add_parser(subparsers)`` (which sets
the ``handler``) and ``run(args)``; this module only builds the parser from them and runs one.
The benchmark suites are not commands: ``python -m benchmarks.<suite>`` or ``make bench``.

:func:`main` returns the exit code instead of exiting; user errors print
``qkv: error: <message>`` on stderr and return 2, never a traceback. A reader that goes away
(``qkv explain | head -2``) ends the command quietly with exit code 141 (128 + SIGPIPE, what a
shell reports for ``yes | head``), as a Unix filter does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Sequence

from . import CommandError
from . import analyze as analyze_cmd
from . import caption as caption_cmd
from . import demo as demo_cmd
from . import evaluate as evaluate_cmd
from . import explain as explain_cmd
from . import match as match_cmd
from . import train as train_cmd
from . import transcribe as transcribe_cmd
from . import translate as translate_cmd
from . import viz as viz_cmd
from .overrides import split_overrides

__all__ = ["COMMANDS", "build_parser", "main"]

#: The command modules, in the order ``qkv --help`` lists them.
COMMANDS = (
    explain_cmd, train_cmd, translate_cmd, evaluate_cmd, match_cmd, caption_cmd, transcribe_cmd, viz_cmd,
    analyze_cmd, demo_cmd,
)  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so :func:`main` can return the code."""

    def error(self, message: str):  # type: ignore[override]
        raise CommandError(message, usage=self.format_usage())


def _version() -> str:
    from .. import __version__

    return f"qkv {__version__}"


def build_parser() -> argparse.ArgumentParser:
    """The ``qkv`` parser: one subcommand per module of :data:`COMMANDS`."""
    parser = _Parser(
        prog="qkv",
        description="qkv: every classic attention mechanism behind one Query-Key-Value interface.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
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
    overrides: list[str] = []
    command_at = next((i for i, a in enumerate(args_list) if not a.startswith("-")), None)
    if command_at is not None and args_list[command_at] == "train":
        # --table.key=value overrides go to the config, not to argparse.
        rest, overrides = split_overrides(args_list[command_at + 1 :])
        args_list = [*args_list[: command_at + 1], *rest]
    try:
        args = parser.parse_args(_join_negative_values(args_list))
        if overrides:
            args.overrides = overrides
        if getattr(args, "handler", None) is None:
            names = [c.__name__.rsplit(".", 1)[-1] for c in COMMANDS]
            raise CommandError(
                f"a command is required: {', '.join(names[:-1])} or {names[-1]}",
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
