"""Training configuration: defaults, TOML files and dotted command-line overrides.

A run's configuration is a nested dict with three tables, ``data``, ``model`` and ``train``::

    qkv train configs/bahdanau.toml --train.epochs=3 --model.hidden_dim=64

Values of overrides are read as TOML (``3``, ``1e-3``, ``true``, ``"text"``); anything that is
not valid TOML is taken as a string, so ``--data.corpus=numbers-de`` works unquoted. Unknown
keys are errors that list the valid keys, so a typo never trains the wrong model silently.

The valid ``[model]`` keys are the fields of the model's config dataclass
(:class:`~qkv.models.seq2seq.Seq2SeqConfig`, :class:`~qkv.models.transformer.TransformerConfig`,
read through :func:`qkv.models.builders.config_keys`), so they never drift from the models.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

from ..models.builders import KIND_NAMES, MODEL_KINDS, config_keys

__all__ = ["DEFAULTS", "MODEL_PRESETS", "load_config", "merge", "parse_override", "resolve"]

#: The model presets of ``qkv train --model NAME``: the ``model`` table each starts from.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "none": {"kind": "seq2seq", "attention": "none"},
    "bahdanau": {"kind": "seq2seq", "attention": "bahdanau"},
    "luong": {"kind": "seq2seq", "attention": "luong", "luong_score": "general"},
    "luong-local": {"kind": "seq2seq", "attention": "luong-local", "local_mode": "p", "window": 3},
    "transformer": {"kind": "transformer"},
}

DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {
        "corpus": "numbers",  # a built-in corpus name (qkv.data.BUILTIN_CORPORA) or a .tsv path
        "size": 20000,  # built-in corpora: examples generated
        "options": {},  # built-in corpora: extra keyword arguments of the generator
        "tokenizer": "word",  # word | char | bpe
        "bpe_vocab": 2000,
        "lowercase": False,
        "split_punct": False,
        "max_len": 0,  # TSV: drop pairs longer than this many tokens (0 = keep all)
        "valid_frac": 0.05,
        "test_frac": 0.05,
        "seed": 0,
    },
    "model": {"kind": "seq2seq", "attention": "bahdanau"},
    "train": {
        "epochs": 10,
        "batch_size": 64,
        "lr": 2e-3,
        "min_lr": 1e-4,
        "schedule": "cosine",  # constant | cosine | inverse_sqrt
        "warmup": 100,  # steps of linear warm-up
        "clip": 1.0,  # gradient-norm clipping (0 = off)
        "weight_decay": 0.0,
        "label_smoothing": 0.0,
        "teacher_forcing": 1.0,
        "patience": 3,  # early stopping: epochs without a better validation loss (0 = off)
        "seed": 0,
        "max_steps": 0,  # stop after this many optimizer steps (0 = no limit)
        "save_every": 0,  # also checkpoint every N steps (0 = at the end of each epoch only)
        "keep": 2,  # checkpoints kept
        "valid_decode": 300,  # validation sentences decoded greedily for exact match
        "max_decode_len": 0,  # decoding limit in target tokens (0 = 2 x the longest validation target + 10)
        "threads": 0,  # torch CPU threads while training (0 = torch's default); small RNNs run best on 1
    },
}

_TRAIN_KEYS = set(DEFAULTS["train"])
_DATA_KEYS = set(DEFAULTS["data"])


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"--train.lr=1e-3"`` or ``"train.lr=1e-3"`` -> ``(["train", "lr"], 0.001)``."""
    body = text[2:] if text.startswith("--") else text
    if "=" not in body:
        raise ValueError(f"override {text!r}: expected --table.key=value")
    key, raw = body.split("=", 1)
    path = key.split(".")
    if len(path) < 2 or not all(path):
        raise ValueError(f"override {text!r}: expected --table.key=value, e.g. --train.lr=1e-3")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


def merge(base: dict, update: dict) -> dict:
    """Recursive merge of ``update`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | Path) -> dict:
    """Read a TOML config file (clear errors for a missing file or bad TOML)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config: no such file {str(p)!r}")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config {str(p)!r}: invalid TOML: {e}") from None


def resolve(file_config: dict | None = None, *, preset: str | None = None, overrides: list[str] = ()) -> dict:
    """Defaults <- model preset <- file <- overrides, validated. Returns the full config."""
    cfg = copy.deepcopy(DEFAULTS)
    file_config = file_config or {}
    preset = preset or file_config.get("model", {}).get("preset")
    if preset is not None:
        if preset not in MODEL_PRESETS:
            raise ValueError(f"model: unknown model {preset!r}; valid: {', '.join(MODEL_PRESETS)}")
        cfg["model"] = copy.deepcopy(MODEL_PRESETS[preset])
    cfg = merge(cfg, file_config)
    cfg["model"].pop("preset", None)
    for text in overrides:
        path, value = parse_override(text)
        node = cfg
        for part in path[:-1]:
            if part not in node or not isinstance(node[part], dict):
                node = node.setdefault(part, {})
            else:
                node = node[part]
        node[path[-1]] = value
    _validate(cfg)
    return cfg


def _validate(cfg: dict) -> None:
    unknown_tables = set(cfg) - {"data", "model", "train"}
    if unknown_tables:
        raise ValueError(f"config: unknown tables {sorted(unknown_tables)}; valid: data, model, train")
    for table, valid in (("data", _DATA_KEYS), ("train", _TRAIN_KEYS)):
        extra = set(cfg[table]) - valid
        if extra:
            raise ValueError(
                f"config [{table}]: unknown keys {sorted(extra)}; valid: {', '.join(sorted(valid))}"
            )
    kind = cfg["model"].get("kind", "seq2seq")
    if kind not in MODEL_KINDS:
        raise ValueError(f"config [model]: kind: expected {KIND_NAMES}, got {kind!r}")
    valid = config_keys(kind)
    extra = set(cfg["model"]) - valid
    if extra:
        raise ValueError(
            f"config [model] (kind={kind!r}): unknown keys {sorted(extra)}; valid: {', '.join(sorted(valid))}"
        )
    t = cfg["train"]
    for key in ("epochs", "batch_size"):
        if not isinstance(t[key], int) or isinstance(t[key], bool) or t[key] < 1:
            raise ValueError(f"config [train]: {key}: expected an int >= 1, got {t[key]!r}")
    if t["schedule"] not in ("constant", "cosine", "inverse_sqrt"):
        raise ValueError(
            f"config [train]: schedule: expected constant, cosine or inverse_sqrt, got {t['schedule']!r}"
        )
    if not isinstance(t["lr"], (int, float)) or t["lr"] <= 0:
        raise ValueError(f"config [train]: lr: expected a number > 0, got {t['lr']!r}")
    if not 0.0 <= float(t["teacher_forcing"]) <= 1.0:
        raise ValueError(
            f"config [train]: teacher_forcing: expected a ratio in [0, 1], got {t['teacher_forcing']!r}"
        )
    if cfg["data"]["tokenizer"] not in ("word", "char", "bpe"):
        raise ValueError(
            f"config [data]: tokenizer: expected word, char or bpe, got {cfg['data']['tokenizer']!r}"
        )
