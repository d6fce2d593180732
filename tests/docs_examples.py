"""The examples of the README and the documentation pages: find them, run them, compare outputs.

Conventions of the pages (CONTRIBUTING.md says the same for writers):

- A ```` ```python ```` block runs as it is, in a fresh namespace. What it prints is written
  under the print as ``#> `` lines; the block's whole stdout must equal its ``#>`` lines, in
  order. ``...`` in an output line stands for any text (doctest's ELLIPSIS): use it, with a
  ``# machine-dependent`` note on the print, for times, sizes and memory.
- A ```` ```bash ```` block holds commands, a ```` ```console ```` block ``$ command`` lines each
  followed by its output. Every ``qkv`` command must parse with the real parser; the cheap ones
  run (see :func:`runs`), and in a console block their output is compared. A console command
  whose output cannot be compared (it needs a trained model, or it times something) says so in
  a comment on its line, e.g. ``# depends on the trained model``.

``python tests/docs_examples.py --update FILE.md ...`` rewrites the ``#>`` lines of the python
blocks (lines with ``...`` that still match are kept) and the outputs of the console commands
that run, after a change that is meant to change them. Review the diff.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")
PYTHON = {"python", "py"}
SHELL = {"bash", "sh", "shell"}
CONSOLE = {"console"}
# A comment that marks a console transcript whose output is not compared.
NOT_COMPARED = re.compile(r"depends on|machine-dependent|not compared", re.I)


def pages() -> list[Path]:
    """The README, CONTRIBUTING.md and every page under docs/ (the hooks' folder aside)."""
    docs = sorted(
        p for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.relative_to(ROOT / "docs").parts
    )
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *docs]


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    lines: list[str]  # the body, its indentation removed
    indent: str = ""

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file (also those indented inside list items)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = m["indent"], m["fence"]
        info = m["info"].strip()
        lang = info.split()[0].lower() if info else ""
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not re.fullmatch(
            rf"[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*", lines[j]
        ):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        out.append(Block(path, i + 1, lang, body, indent))
        i = j + 1
    return out


# ---------------------------------------------------------------------------------------------
# Outputs


def expected_output(lines: list[str]) -> str:
    """The ``#>`` lines of a python block, as the text they stand for."""
    out = []
    for line in lines:
        s = line.strip()
        if s.startswith("#>"):
            out.append(s[3:] if s.startswith("#> ") else s[2:])
    return "".join(f"{line}\n" for line in out)


def _normalized(text: str) -> str:
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return "".join(f"{line}\n" for line in lines)


_CHECKER = doctest.OutputChecker()


def matches(want: str, got: str) -> bool:
    """``got`` equals ``want`` up to trailing spaces, ``...`` matching any text."""
    return _CHECKER.check_output(_normalized(want), _normalized(got), doctest.ELLIPSIS)


def difference(want: str, got: str) -> str:
    example = doctest.Example("", _normalized(want))
    return _CHECKER.output_difference(example, _normalized(got), doctest.ELLIPSIS)


def run_python(block: Block) -> str:
    """Run a python block in a fresh namespace; its stdout."""
    code = compile(block.text, block.name, "exec")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(code, {"__name__": "__docs__"})
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Commands


def split_comment(line: str) -> tuple[str, str]:
    """``cmd "a # b"  # note`` -> (``cmd "a # b"``, ``note``): a ``#`` outside quotes that starts
    a word begins the comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


@dataclass
class Command:
    block: Block
    line: str  # the command as written (no prompt, no comment)
    comment: str
    output: list[str] | None = None  # console blocks: the lines shown under the command
    at: int = 0  # index of the command's line in the block

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.line)

    @property
    def name(self) -> str:
        return f"{self.block.name}+{self.at}"


def commands(block: Block) -> list[Command]:
    """The commands of a bash or console block (continuation lines joined)."""
    out: list[Command] = []
    if block.lang in SHELL:
        pending = ""
        for i, raw in enumerate(block.lines):
            line = raw.strip()
            if line.startswith("$ "):
                line = line[2:]
            if not pending and (not line or line.startswith("#")):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            cmd, comment = split_comment(pending + line)
            pending = ""
            out.append(Command(block, cmd, comment, None, i))
    elif block.lang in CONSOLE:
        for i, raw in enumerate(block.lines):
            if raw.startswith("$ "):
                cmd, comment = split_comment(raw[2:])
                out.append(Command(block, cmd, comment, [], i))
            elif out:
                out[-1].output.append(raw)
    return out


def qkv_args(argv: list[str]) -> list[str] | None:
    """The arguments of a ``qkv`` command line, or None for another program."""
    if argv and Path(argv[0]).name == "qkv":
        return argv[1:]
    if len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1:3] == ["-m", "qkv"]:
        return argv[3:]
    return None


def runs(args: list[str]) -> bool:
    """Whether a documented ``qkv`` command is cheap enough to run in the tests: help, version,
    ``explain``, ``demo --examples`` and ``viz`` on the MiniLM that ships as a package."""
    if {"-h", "--help", "--version"} & set(args):
        return True
    command = next((a for a in args if not a.startswith("-")), None)
    if command == "explain":
        return True
    if command == "demo":
        return "--examples" in args
    if command == "viz":  # MiniLM ships as a package; an unknown model fails before loading anything
        model = args[args.index("--model") + 1 : args.index("--model") + 2] if "--model" in args else []
        return bool(model) and not Path(model[0]).is_dir()
    return False


def shows_error(output: list[str] | None) -> bool:
    """A console transcript of a command that fails: its output is ``qkv: error: ...``."""
    return bool(output) and any(line.startswith("qkv: error:") for line in output)


def run_qkv(args: list[str]) -> tuple[int, str, str]:
    from qkv.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------------------------------
# --update


@dataclass
class _Recorder:
    filename: str
    by_line: dict[int, list[str]] = field(default_factory=dict)

    def print(self, *args, **kwargs) -> None:
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename != self.filename:
            frame = frame.f_back
        buffer = io.StringIO()
        kwargs.pop("file", None)
        print(*args, file=buffer, **kwargs)
        if frame is not None:
            self.by_line.setdefault(frame.f_lineno, []).append(buffer.getvalue())
        sys.stdout.write(buffer.getvalue())


def updated_python(block: Block) -> list[str]:
    """The block's lines with the ``#>`` lines under each print rewritten from a real run."""
    import ast
    import builtins

    tree = ast.parse(block.text)
    prints = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
    ]
    recorder = _Recorder(block.name)
    code = compile(block.text, block.name, "exec")
    with contextlib.redirect_stdout(io.StringIO()):
        exec(code, {"__name__": "__docs__", "__builtins__": {**vars(builtins), "print": recorder.print}})
    outputs: dict[int, str] = {}  # end line (1-based) of a print call -> what it printed
    for node in prints:
        texts = [
            t for line, ts in recorder.by_line.items() if node.lineno <= line <= node.end_lineno for t in ts
        ]
        outputs[node.end_lineno] = "".join(texts)
    lines = block.lines
    new: list[str] = []
    i = 0
    while i < len(lines):
        new.append(lines[i])
        i += 1
        if i not in outputs:  # line i (1-based) does not end a print call
            continue
        got, indent = outputs[i], re.match(r"\s*", lines[i - 1]).group(0)
        old = []
        while i < len(lines) and lines[i].strip().startswith("#>"):
            old.append(lines[i])
            i += 1
        want = expected_output(old)
        if want and matches(want, got):
            new += old  # still true: keep it, `...` included
        else:
            new += [f"{indent}#> {line}".rstrip() for line in _normalized(got).splitlines()]
    return new


def updated_console(block: Block) -> list[str]:
    lines = list(block.lines)
    for cmd in reversed(commands(block)):
        args = qkv_args(cmd.argv)
        if args is None or not runs(args) or NOT_COMPARED.search(cmd.comment):
            continue
        _, out, err = run_qkv(args)
        if shows_error(cmd.output):
            out = err
        if cmd.output is not None and matches("\n".join(cmd.output), out):
            continue
        end = cmd.at + 1 + len(cmd.output or [])
        lines[cmd.at + 1 : end] = _normalized(out).splitlines()
    return lines


def update(path: Path) -> int:
    import torch

    text = path.read_text(encoding="utf-8").splitlines()
    changed = 0
    for block in reversed(blocks(path)):
        torch.manual_seed(0)  # as tests/conftest.py does before each test
        try:
            if block.lang in PYTHON:
                new = updated_python(block)
            elif block.lang in CONSOLE:
                new = updated_console(block)
            else:
                continue
        except Exception as e:
            print(f"{block.name}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        if new != block.lines:
            changed += 1
            text[block.line : block.line + len(block.lines)] = [
                (block.indent + line) if line else "" for line in new
            ]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return changed


@contextlib.contextmanager
def _in_tmp_dir() -> Iterator[None]:
    import os
    import tempfile

    old = os.getcwd()
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        try:
            yield
        finally:
            os.chdir(old)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "--update":
        sys.exit("usage: python tests/docs_examples.py --update FILE.md [FILE.md ...]")
    for name in sys.argv[2:]:
        path = Path(name).resolve()
        with _in_tmp_dir():
            n = update(path)
        print(f"{name}: {n} block(s) updated")
