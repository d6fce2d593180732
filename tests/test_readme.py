"""The README is the front door: every Python example in it runs, every `qkv explain` line works."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from qkv.cli.main import main

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
CLI_LINES = [
    line.split("#")[0].strip()
    for block in re.findall(r"```bash\n(.*?)```", TEXT, flags=re.S)
    for line in block.splitlines()
    if line.startswith("qkv explain")
]


def test_readme_has_examples():
    assert len(PYTHON_BLOCKS) >= 6
    assert len(CLI_LINES) >= 5


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_example_runs(index, capsys):
    exec(compile(PYTHON_BLOCKS[index], f"README.md[python block {index}]", "exec"), {})
    out = capsys.readouterr().out
    # printed values shown in the README comments must match what the code prints
    for expected in re.findall(r"print\(.*?\)\s+# (tensor\(\[\[.*?\]\]\))", PYTHON_BLOCKS[index]):
        assert expected in out


@pytest.mark.parametrize("line", CLI_LINES)
def test_cli_example_runs(line, capsys):
    assert main(shlex.split(line)[1:]) == 0
    assert capsys.readouterr().out.strip()
