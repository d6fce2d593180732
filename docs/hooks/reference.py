"""MkDocs hook: the pages that are generated from the code, so that they cannot drift from it.

- ``reference/cli.md``: the help of every ``qkv`` command, from the argparse parser that
  ``qkv`` itself runs (:func:`qkv.cli.main.build_parser`).
- ``reference/config.md``: the configuration keys of ``qkv train`` with their types and
  defaults, from the table dataclasses of ``qkv.translation.config`` (descriptions from their
  field comments) and the model
  config dataclasses of ``qkv.models.builders.MODEL_KINDS`` (descriptions from their docstrings).
- ``index.md`` and ``contributing.md``: ``README.md`` and ``CONTRIBUTING.md`` of the repository,
  their ``docs/...`` links made relative to the site.

Pages under ``docs/`` link to the two root files as the repository holds them
(``../../CONTRIBUTING.md#section`` from ``docs/guides/``), so that the link works on GitHub;
:func:`on_page_markdown` turns such links into links to their site pages.

``python docs/hooks/reference.py OUTDIR`` writes the generated pages to OUTDIR, for a look
without building the site.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import io
import os
import re
import sys
import textwrap
import tokenize
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

# The pages written by this hook (site path -> function giving the markdown).
GENERATED = ("reference/cli.md", "reference/config.md", "index.md", "contributing.md")


# ---------------------------------------------------------------------------------------------
# The command line


@contextlib.contextmanager
def _columns(width: int) -> Iterator[None]:
    """argparse wraps help text to $COLUMNS: fix it so that the page is the same everywhere."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _subcommands(parser) -> list[tuple[str, str, Any]]:
    """(name, one-line help, parser) of each subcommand, in the order ``qkv --help`` lists them."""
    import argparse

    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            out += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return out


def cli_markdown() -> str:
    from qkv.cli.main import build_parser

    with _columns(100):
        parser = build_parser()
        top = parser.format_help()
        commands = _subcommands(parser)
        helps = {name: sub.format_help() for name, _, sub in commands}
    lines = [
        "# Command line",
        "",
        "`qkv` is installed with the package (`qkv = qkv.cli.main:main`). This page is generated from",
        "the parser the command itself runs, so it always shows what `qkv <command> --help` prints.",
        "User errors print `qkv: error: <message>` on stderr and exit with code 2.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    for name, help_text, _ in commands:
        lines.append(f"| [`qkv {name}`](#qkv-{name}) | {_cell(help_text)} |")
    lines += [
        "",
        "The keys that `qkv train` reads from a TOML file or from `--table.key=value` overrides are",
        "listed with their types and defaults in [Configuration keys](config.md).",
        "",
        "## qkv",
        "",
        "```text",
        top.rstrip(),
        "```",
    ]
    for name, _, _ in commands:
        lines += ["", f"## qkv {name}", "", "```text", helps[name].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


# ---------------------------------------------------------------------------------------------
# Configuration keys


def _field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` of a dataclass and the dataclasses it extends: the comment at the
    end of each field's line in the class source."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        source = textwrap.dedent(inspect.getsource(klass))
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        comments = {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.lineno in comments
            ):
                out[node.target.id] = comments[node.lineno]
    return out


def _attribute_docs(cls: type) -> dict[str, str]:
    """``{field: description}`` from the ``Attributes:`` section of a dataclass docstring.

    Entries may name several fields (``embed_dim, hidden_dim: sizes``) or hold several
    ``name: text`` parts separated by ``;`` (``local_mode: ...; window: ...``)."""
    doc = inspect.getdoc(cls) or ""
    match = re.search(r"^Attributes:\n(.*?)(?:\n\S|\Z)", doc, flags=re.S | re.M)
    if not match:
        return {}
    entries: list[str] = []
    for line in match.group(1).splitlines():
        if re.match(r"^ {4}\S", line):
            entries.append(line.strip())
        elif entries and line.strip():
            entries[-1] += " " + line.strip()
    fields = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    for entry in entries:
        # split "a: x; b: y" where b is a field name
        parts = re.split(r";\s+(?=(?:\w+(?:,\s*\w+)*):\s)", entry)
        for part in parts:
            head, _, text = part.partition(":")
            names = [n.strip() for n in head.split(",")]
            if all(n in fields for n in names):
                for n in names:
                    out[n] = text.strip()
    return out


def _md_text(text: str, module: Any = None) -> str:
    """Docstring text as markdown: reST roles become code, ``NAME`` of a tuple constant of
    ``module`` becomes its values."""
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: f"`{m.group(1).split('.')[-1]}`", text)

    def constant(m: re.Match) -> str:
        value = getattr(module, m.group(1), None) if module is not None else None
        if isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
            return ", ".join(f"`{v}`" for v in value)
        return f"`{m.group(1)}`"

    text = re.sub(r"``([A-Z][A-Z_0-9]+)``", constant, text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    return _cell(text)


def _value(value: Any) -> str:
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value!r}`"
    return f"`{value!r}`"


def _toml_type(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", dict: "table"}.get(type(value), "")


# Descriptions of the keys whose field has no comment (a comment there wins).
# tests/test_docs_build.py checks that every key named here still exists.
KEY_NOTES: dict[tuple[str, str], str] = {
    ("data", "bpe_vocab"): "vocabulary size of the BPE tokenizer (tokenizer = bpe)",
    ("data", "lowercase"): "TSV: lowercase both sides",
    ("data", "split_punct"): "TSV: make punctuation separate tokens",
    ("data", "valid_frac"): "TSV: fraction of the pairs held out for validation (grouped by source sentence)",
    ("data", "test_frac"): "TSV: fraction of the pairs held out for the test split",
    ("data", "seed"): "seed of the corpus generation (built-in) or of the split (TSV)",
    ("train", "epochs"): "passes over the training split",
    ("train", "batch_size"): "sentence pairs per batch",
    ("train", "lr"): "peak learning rate (AdamW), reached after the warm-up",
    ("train", "min_lr"): "learning rate at the end of the cosine schedule",
    ("train", "weight_decay"): "AdamW weight decay",
    ("train", "label_smoothing"): "label smoothing of the cross entropy",
    (
        "train",
        "teacher_forcing",
    ): "RNNs: fraction of steps fed the gold previous token (0.7: their own prediction 30% of the time)",
    ("train", "seed"): "seed of the initialization, the batch order and dropout",
}
# The same for an image classifier's tables, where they differ.
VISION_KEY_NOTES = {
    **KEY_NOTES,
    ("data", "seed"): "seed of the split (and of the located-digits canvases)",
    ("train", "batch_size"): "images per batch",
    ("train", "seed"): "seed of the initialization, the batch order, the shifts and dropout",
}


def _key_rows(table: str, cls: type, notes: dict[tuple[str, str], str] = KEY_NOTES) -> list[str]:
    """The rows of a ``[table]`` of ``cls``: key, type, default, the field's comment or note."""
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    comments = _field_comments(cls)
    for f in dataclasses.fields(cls):
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = _md_text(comments.get(f.name) or notes.get((table, f.name), ""))
        rows.append(f"| `{f.name}` | {_toml_type(value)} | {_value(value)} | {text} |")
    return rows


def _preset_rows(presets: dict) -> list[str]:
    rows = ["| `--model` | `[model]` table it starts from |", "|---|---|"]
    for name, preset in presets.items():
        table = ", ".join(f"{k} = {_value(v).strip('`')}" for k, v in (preset or {}).items())
        rows.append(f"| `{name}` | `{table or 'the preset sized for the data set'}` |")
    return rows


def _kind_section(kind: str, model_cls: type, config_cls: type, valid: frozenset[str]) -> list[str]:
    """``### kind = "..."``: the valid ``[model]`` keys of a model kind, from its config dataclass."""
    module = sys.modules[config_cls.__module__]
    docs = _attribute_docs(config_cls)
    lines = [
        "",
        f'### kind = "{kind}"',
        "",
        f"`{model_cls.__name__}`, configured by `{config_cls.__module__}.{config_cls.__name__}`.",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    for f in dataclasses.fields(config_cls):
        if f.name not in valid:
            continue
        if f.default is not dataclasses.MISSING:
            default = _value(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = _value(f.default_factory())
        else:
            default = "required"
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        lines.append(f"| `{f.name}` | {type_name} | {default} | {_md_text(docs.get(f.name, ''), module)} |")
    return lines


def _vision_config_markdown() -> list[str]:
    """The tables of an image classifier run (``qkv train --model vit``)."""
    import qkv.vision.config as vision
    from qkv.models.builders import IMAGE_KINDS, image_config_keys

    lines = [
        "",
        "## Image classifiers (`--model vit`)",
        "",
        "With a ViT preset (or an image `--data`) the tables are `qkv.vision.config`'s; the image",
        "size, the channels and the number of classes come from the data. See",
        "[Vision](../guides/vision.md).",
        "",
        "### Vision `[data]`",
        "",
        *_key_rows("data", vision.DataConfig, VISION_KEY_NOTES),
        "",
        "### Vision `[train]`",
        "",
        *_key_rows("train", vision.VisionTrainConfig, VISION_KEY_NOTES),
        "",
        "### Vision `[model]` presets",
        "",
        *_preset_rows(vision.MODEL_PRESETS),
    ]
    for kind, (model_cls, config_cls) in IMAGE_KINDS.items():
        lines += _kind_section(kind, model_cls, config_cls, image_config_keys(kind))
    return lines


def _speech_config_markdown() -> list[str]:
    """The tables of a speech recognition run (``qkv train --model las``)."""
    import qkv.speech.config as speech
    from qkv.models.builders import SPEECH_KINDS, speech_config_keys

    lines = [
        "",
        "## Speech recognizers (`--model las`)",
        "",
        "With a LAS preset (or `--data spoken-numbers`) the tables are `qkv.speech.config`'s; the",
        "feature size and the output words come from the data. See",
        "[Speech recognition](../guides/speech.md).",
        "",
        "### Speech `[data]`",
        "",
        *_key_rows("data", speech.DataConfig),
        "",
        "### Speech `[train]`",
        "",
        *_key_rows("train", speech.SpeechTrainConfig),
        "",
        "### Speech `[model]` presets",
        "",
        *_preset_rows(speech.MODEL_PRESETS),
    ]
    for kind, (model_cls, config_cls) in SPEECH_KINDS.items():
        lines += _kind_section(kind, model_cls, config_cls, speech_config_keys(kind))
    return lines


def config_markdown() -> str:
    import qkv.application.run_config as run_config
    import qkv.train.config as train_config
    import qkv.translation.config as config
    import qkv.vision.config as vision_config
    from qkv.models.builders import MODEL_KINDS, config_keys

    lines = [
        "# Configuration keys",
        "",
        "`qkv train` reads a run's configuration from three tables, `[data]`, `[model]` and `[train]`:",
        "the defaults below, then the model preset of `--model NAME`, then a TOML file, then",
        '`--table.key=value` overrides (values are read as TOML: `3`, `1e-3`, `true`, `"text"`).',
        "An unknown key is an error that lists the valid ones. This page is generated from the code",
        "(`qkv.translation.config`, `qkv.vision.config` and the model config dataclasses), so it lists",
        "exactly the keys `qkv train` accepts. See [Translation](../guides/translation.md) for how to",
        "train, and [the command line](cli.md#qkv-train) for the options of `qkv train`.",
        "",
        "```bash",
        "qkv train configs/transformer.toml --train.epochs=5 --model.d_model=64",
        "```",
    ]
    for table, cls in (("data", config.DataConfig), ("train", config.TranslationTrainConfig)):
        lines += ["", f"## [{table}]", "", *_key_rows(table, cls)]
    lines += [
        "",
        "## [model]",
        "",
        "`kind` picks the model class; the other keys are the fields of its config dataclass (the",
        "vocabulary sizes and the padding id come from the data). `qkv train --model NAME` starts",
        "from one of these presets:",
        "",
        *_preset_rows(config.MODEL_PRESETS),
    ]
    for kind, (model_cls, config_cls) in MODEL_KINDS.items():
        lines += _kind_section(kind, model_cls, config_cls, config_keys(kind))
    lines += _vision_config_markdown()
    lines += _speech_config_markdown()
    for module in (config, vision_config, run_config, train_config):
        lines += ["", f"## Notes from `{module.__name__}`", "", _md_block(inspect.getdoc(module) or "")]
    return "\n".join(lines) + "\n"


def _md_block(text: str) -> str:
    """A module docstring as markdown (reST literal blocks become code blocks)."""
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: f"`{m.group(1).split('.')[-1]}`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.endswith("::") and i + 1 < len(lines):
            out.append(line[:-1])
            block: list[str] = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("    ")):
                block.append(lines[i][4:])
                i += 1
            while block and not block[0].strip():
                block.pop(0)
            while block and not block[-1].strip():
                block.pop()
            out += ["", "```text", *block, "```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# README.md and CONTRIBUTING.md as site pages


def _site_links(text: str) -> str:
    """Repository links -> site links: ``docs/x.md`` -> ``x.md``, the two root files -> their pages."""
    text = re.sub(r"\]\(docs/", "](", text)
    text = text.replace("](CONTRIBUTING.md", "](contributing.md").replace("](README.md", "](index.md")
    return text


def readme_markdown() -> str:
    return _site_links((ROOT / "README.md").read_text(encoding="utf-8"))


def contributing_markdown() -> str:
    return _site_links((ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8"))


def page_markdown(uri: str) -> str:
    return {
        "reference/cli.md": cli_markdown,
        "reference/config.md": config_markdown,
        "index.md": readme_markdown,
        "contributing.md": contributing_markdown,
    }[uri]()


_ROOT_PAGES = {"README.md": "index.md", "CONTRIBUTING.md": "contributing.md"}
_LINK = re.compile(r"\]\(([^)\s#]+)(#[^)\s]*)?\)")


def root_links_to_site(markdown: str, page_uri: str) -> str:
    """In the page ``docs/<page_uri>``, links that reach ``README.md`` or ``CONTRIBUTING.md`` at
    the repository's root (``../CONTRIBUTING.md`` from ``docs/x.md``) -> links to their site pages."""
    page_dir = Path(page_uri).parent
    depth = len(page_dir.parts)

    def site(m: re.Match) -> str:
        target, anchor = m.group(1), m.group(2) or ""
        resolved = os.path.normpath(Path("docs") / page_dir / target)
        if resolved not in _ROOT_PAGES:
            return m.group(0)
        return f"]({'../' * depth}{_ROOT_PAGES[resolved]}{anchor})"

    return _LINK.sub(site, markdown)


# ---------------------------------------------------------------------------------------------
# The MkDocs hook


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri in GENERATED:
        return markdown
    return root_links_to_site(markdown, page.file.src_uri)


def on_files(files, config):
    from mkdocs.structure.files import File

    for uri in GENERATED:
        if files.get_file_from_path(uri) is not None:
            raise ValueError(f"docs/{uri} is generated by docs/hooks/reference.py: remove the file")
        files.append(File.generated(config, uri, content=page_markdown(uri)))
    return files


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "generated-docs")
    for uri in GENERATED:
        path = out / uri
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page_markdown(uri), encoding="utf-8")
        print(f"wrote {path}")
