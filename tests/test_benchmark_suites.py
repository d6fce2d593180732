"""The benchmark suites run as ``python -m benchmarks.<suite>`` from the repository's root (what
``make bench`` does): each imports its sibling ``common`` relatively and has ``main(argv)``, and
``--help`` prints its options and exits 0. Nothing is timed here."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SUITES = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py") if p.stem != "common")


def test_every_suite_is_listed():
    assert {
        "attention_dense", "attention_long", "vision_explain", "vision_fashion", "hf_capture", "syntax_heads",
        "hf_patterns", "ring_attention",
    } <= set(SUITES)  # fmt: skip


@pytest.fixture
def benchmarks_package(monkeypatch):
    """``benchmarks`` importable as ``python -m`` from the root sees it; forgotten afterwards."""
    monkeypatch.syspath_prepend(str(REPO))
    yield
    for name in [n for n in sys.modules if n == "benchmarks" or n.startswith("benchmarks.")]:
        del sys.modules[name]


@pytest.mark.parametrize("suite", SUITES)
def test_suite_help_as_a_package_module(suite, benchmarks_package, capsys):
    module = importlib.import_module(f"benchmarks.{suite}")
    with pytest.raises(SystemExit) as stop:
        module.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and "-h, --help" in out


def test_python_dash_m_runs_a_suite():
    """The command ``make bench`` runs, in a fresh interpreter (one suite: each costs a torch import)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.attention_dense", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: attention_dense.py [-h] [--quick]")
