"""The benchmark suites run as ``python -m benchmarks.<suite>`` from the repository's root (what
``make bench`` does): each imports its sibling ``common`` relatively and has ``main(argv)``, and
``--help`` prints its options and exits 0. Nothing is timed here."""

from __future__ import annotations

import ast
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
        "hf_patterns", "ring_attention", "models",
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


def _qkv_imports(path: Path) -> list[tuple[int, str, str]]:
    """Every ``from qkv... import name`` in a suite, at module level or inside a function."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] == "qkv"
        ):
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, alias.name, "") for alias in node.names if alias.name.split(".")[0] == "qkv"
            ]
    return found


@pytest.mark.parametrize("suite", SUITES)
def test_every_qkv_name_a_suite_imports_exists(suite):
    """Suites import qkv inside functions too (extras load lazily): a name that moved would only
    fail hours into a benchmark run, so every one is resolved here, without running anything."""
    missing = []
    for line, module, name in _qkv_imports(REPO / "benchmarks" / f"{suite}.py"):
        try:
            imported = importlib.import_module(module)
        except ImportError as err:
            missing.append(f"line {line}: {module} ({err})")
            continue
        if name and not hasattr(imported, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"line {line}: {module}.{name}")
    assert not missing, f"benchmarks/{suite}.py imports names qkv does not have: {missing}"


def test_the_import_check_sees_function_level_imports(tmp_path):
    suite = tmp_path / "suite.py"
    suite.write_text(
        "import qkv\n\ndef main():\n    from qkv.application.run import torch_threads, nowhere\n"
    )
    assert _qkv_imports(suite) == [
        (1, "qkv", ""), (4, "qkv.application.run", "torch_threads"), (4, "qkv.application.run", "nowhere"),
    ]  # fmt: skip
