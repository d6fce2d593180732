"""``qkv bench`` calls a suite's ``main(argv)``: the suite imports its siblings in benchmarks/
(as the real suites import ``common``), and ``sys.argv``, ``sys.path`` and ``sys.modules`` are
left as they were."""

from __future__ import annotations

import sys
from pathlib import Path

import qkv.cli.main as cli_main

REPO = Path(__file__).resolve().parent.parent

SUITE = """
if __package__:
    from .common import greeting
else:
    from common import greeting


def main(argv):
    print(greeting(), argv)
    return 4 if "--fail" in argv else 0
"""


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = cli_main.main(["bench", *argv])
    return code, capsys.readouterr().out


def test_bench_calls_main_with_the_arguments_and_changes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "common.py").write_text("def greeting():\n    return 'hello from common'\n")
    (tmp_path / "benchmarks" / "attention_long.py").write_text(SUITE)
    before = sys.argv[:], sys.path[:], set(sys.modules)
    code, out = _run(capsys, "long", "--quick", "--sizes", "64")
    assert code == 0
    assert "hello from common ['--quick', '--sizes', '64']" in out
    assert _run(capsys, "long", "--fail") == (4, "hello from common ['--fail']\n")
    assert (sys.argv[:], sys.path[:], set(sys.modules)) == before


def test_bench_without_main_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "attention_dense.py").write_text("print('imported')\n")
    code = cli_main.main(["bench"])
    captured = capsys.readouterr()
    assert code == 2
    assert "qkv: error: benchmarks/attention_dense.py: expected a function main(argv)" in captured.err


def test_bench_runs_the_repository_suites(capsys, monkeypatch):
    """The real suites load without sys.path changes (``--help``: their argparse exits 0)."""
    monkeypatch.chdir(REPO)
    path = sys.path[:]
    for suite, name in ((("dense",), "attention_dense.py"), (("long",), "attention_long.py")):
        code, out = _run(capsys, *suite, "--help")
        assert code == 0
        assert out.startswith(f"usage: {name} [-h] [--quick]")
    assert sys.path == path
