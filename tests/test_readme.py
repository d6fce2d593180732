"""Every example of the README and the documentation runs, and prints what the page says.

The pages: README.md, CONTRIBUTING.md and docs/**/*.md (the reference pages generated from the
code are checked in tests/test_docs_build.py). The conventions are in tests/docs_examples.py:

- python blocks run, and their stdout must equal their ``#>`` lines (``...`` = any text);
- every ``qkv`` command of a bash or console block parses with the real parser (command,
  subcommand, options, the config keys of ``--table.key=value`` overrides), the cheap ones run
  (help, ``explain``, ``demo --examples``, ``viz --model minilm``) and, in a console block,
  print what the page shows; a console command that cannot be compared says so on its line;
- ``make`` targets, scripts run with ``python`` and ``pip install`` extras exist.
"""

from __future__ import annotations

import re
import tomllib

import pytest

from docs_examples import (
    CONSOLE,
    NOT_COMPARED,
    PYTHON,
    ROOT,
    SHELL,
    blocks,
    commands,
    difference,
    expected_output,
    matches,
    pages,
    qkv_args,
    run_python,
    run_qkv,
    runs,
    shows_error,
)

PAGES = pages()
BLOCKS = [b for p in PAGES for b in blocks(p)]
PYTHON_BLOCKS = [b for b in BLOCKS if b.lang in PYTHON]
COMMANDS = [c for b in BLOCKS if b.lang in SHELL | CONSOLE for c in commands(b)]
QKV_COMMANDS = [c for c in COMMANDS if qkv_args(c.argv) is not None]
OTHER_COMMANDS = [c for c in COMMANDS if qkv_args(c.argv) is None]
README = ROOT / "README.md"


def test_pages_have_examples():
    assert len(PAGES) >= 15
    assert len(PYTHON_BLOCKS) >= 40
    assert sum(runs(qkv_args(c.argv)) for c in QKV_COMMANDS) >= 10
    assert any(b.path == README for b in PYTHON_BLOCKS)


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.name)
def test_python_example(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here
    got = run_python(block)
    want = expected_output(block.lines)
    if not want:
        assert not got, f"{block.name} prints but shows no output: write it as `#> ` lines under the print"
        return
    assert matches(want, got), f"{block.name}: the output differs from the page\n{difference(want, got)}"


def _check_parses(args: list[str]) -> None:
    """The command, its subcommand and options exist (parsed by the parser `qkv` runs)."""
    from qkv.application.run_config import parse_override
    from qkv.cli import main as cli
    from qkv.cli.overrides import split_overrides

    command = next((a for a in args if not a.startswith("-")), None)
    if command == "train":
        args, overrides = split_overrides(args)
        defaults, model_keys = _train_tables(args)
        for text in overrides:
            path, _ = parse_override(text)
            table, key = path[0], path[1]
            assert table in defaults, f"{text}: no table [{table}]"
            valid = model_keys if table == "model" else set(defaults[table])
            assert key in valid, f"{text}: no key {key!r} in [{table}]"
        for a in args:
            if a.endswith(".toml"):
                assert (ROOT / a).is_file(), f"no config file {a}"
    join = getattr(cli, "_join_negative_values", lambda a: a)  # `--query -1,2` as `qkv` reads it
    parsed = cli.build_parser().parse_args(join(args))
    assert getattr(parsed, "handler", None) is not None, f"qkv {' '.join(args)}: no command"


def _train_tables(args: list[str]) -> tuple[dict, set[str]]:
    """The default tables and the valid ``[model]`` keys of the application a ``qkv train``
    command trains (translation, vision for an image preset or data set, crossmodal for clip and
    the captioners)."""
    from qkv.cli.application import of_train_args

    value = {o: args[i + 1] for i, o in enumerate(args[:-1]) if o in ("--model", "--data")}
    app = of_train_args(value.get("--model"), {}, value.get("--data"))
    if app == "crossmodal":
        from qkv.crossmodal.config import MODEL_KINDS, model_keys
        from qkv.crossmodal.config import RunConfig as CrossModalRunConfig

        return CrossModalRunConfig().to_dict(), set().union(*map(model_keys, MODEL_KINDS))
    if app == "speech":
        from qkv.models.builders import SPEECH_KINDS, speech_config_keys
        from qkv.speech.config import RunConfig as SpeechRunConfig

        return SpeechRunConfig().to_dict(), set().union(*map(speech_config_keys, SPEECH_KINDS))
    if app == "vision":
        from qkv.models.builders import IMAGE_KINDS, image_config_keys
        from qkv.vision.config import RunConfig as VisionRunConfig

        return VisionRunConfig().to_dict(), set().union(*map(image_config_keys, IMAGE_KINDS))
    from qkv.models.builders import MODEL_KINDS, config_keys
    from qkv.translation.config import RunConfig

    return RunConfig().to_dict(), set().union(*map(config_keys, MODEL_KINDS))


@pytest.mark.parametrize("cmd", QKV_COMMANDS, ids=lambda c: c.name)
def test_qkv_command(cmd, tmp_path, monkeypatch):
    args = qkv_args(cmd.argv)
    shown = cmd.output is not None and any(line.strip() for line in cmd.output)
    if not runs(args):
        _check_parses(args)
        assert not shown or NOT_COMPARED.search(cmd.comment), (
            f"{cmd.name}: `{cmd.line}` does not run in the tests, so its output cannot be compared: "
            "say why on its line, e.g. `# depends on the trained model`"
        )
        return
    if not {"-h", "--help", "--version"} & set(args):
        _check_parses(args)
    monkeypatch.chdir(tmp_path)  # viz writes its files in the current folder
    code, out, err = run_qkv(args)
    if shows_error(cmd.output):  # a documented mistake: exit code 2 and the message shown
        assert code == 2, f"`{cmd.line}` exited with {code}, expected the error the page shows"
        out = err
    else:
        assert code == 0, f"`{cmd.line}` exited with {code}: {err}"
    assert out.strip()
    if shown and not NOT_COMPARED.search(cmd.comment):
        want = "\n".join(cmd.output)
        assert matches(want, out), f"{cmd.name}: `{cmd.line}` prints\n{difference(want, out)}"


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {m.group(1) for m in re.finditer(r"^([\w.-]+):", text, flags=re.M)}


def _extras() -> set[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return set(tomllib.load(f)["project"]["optional-dependencies"])


@pytest.mark.parametrize("cmd", OTHER_COMMANDS, ids=lambda c: c.name)
def test_other_command(cmd):
    """What else the pages tell a user to type exists: make targets, scripts, extras."""
    argv = cmd.argv
    program = argv[0].rsplit("/", 1)[-1]
    if program == "make":
        missing = {a for a in argv[1:] if not a.startswith("-") and "=" not in a} - _make_targets()
        assert not missing, f"{cmd.name}: no make target {sorted(missing)}"
    elif program.startswith("python") and len(argv) > 1 and argv[1].endswith(".py"):
        assert (ROOT / argv[1]).is_file(), f"{cmd.name}: no script {argv[1]}"
    elif program == "pip" or argv[1:3] == ["-m", "pip"]:
        for arg in argv:
            m = re.fullmatch(r"(?:qkv|\.|-e \.)\[([\w,-]+)\]", arg)
            if m:
                assert set(m.group(1).split(",")) <= _extras(), f"{cmd.name}: unknown extra in {arg}"


def test_readme_is_a_front_door():
    """The README stays short and leads into the documentation."""
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert re.search(r"\]\(docs/getting-started\.md\)", text)


@pytest.mark.parametrize("name", ["README.md", "CONTRIBUTING.md"])
def test_root_page_links_exist(name):
    """Read in the repository, the links of the README and CONTRIBUTING.md lead to files that
    exist (mkdocs --strict checks them again on the site, where they are pages too)."""
    text = (ROOT / name).read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local
    for link in local:
        assert (ROOT / link).exists(), f"{name} links to {link}, which does not exist in the repository"
