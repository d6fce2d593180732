"""Training configuration: defaults, TOML files and dotted command-line overrides.

A run's configuration is a nested dict with three tables, ``data``, ``model`` and ``train``::

    qkv train configs/bahdanau.toml --train.epochs=3 --model.hidden_dim=64

Values of overrides are read as TOML (``3``, ``1e-3``, ``true``, ``"text"``); anything that is
not valid TOML is taken as a string, so ``--data.corpus=numbers-de`` works unquoted. Unknown
keys are errors that list the valid keys, so a typo never trains the wrong model silently.

The valid ``[model]`` keys are the fields of the model's config dataclass
(:class:`~qkv.models.seq2seq.Seq2SeqConfig`, :class:`~qkv.models.transformer.TransformerConfig`,
read through :func:`qkv.models.builders.config_keys`), so they never drift from the models.

Two ``[train]`` keys deserve a word:

- ``threads`` (default 1): torch CPU threads while training. One thread is the default because
  more cannot gain much on these small models and can lose a lot: on 2 cores (demo sizes,
  batch 64) the Transformer ran 17.0 step/s on 1 thread and 19.0 on 2 (1.12x), Bahdanau 21.0
  and 20.5; next to one busy process the Transformer fell to 4.3 step/s on 2 threads against
  15.5 on 1, Bahdanau to 4.4 against 15.3 (the threads wait for each other on a shared core).
  Set it higher on an idle machine with many cores and a large model; 0 means torch's default
  (one thread per core).
- ``save_every_minutes`` (default 5), ``save_every_steps`` (default 0 = off), ``keep_last``
  (default 2): besides the end of each epoch, a checkpoint is saved every N minutes or steps,
  so a run killed outright (SIGKILL, power loss) loses at most that much work; the newest
  ``keep_last`` checkpoints are kept. SIGINT (Ctrl-C) and SIGTERM lose nothing: the step
  under way finishes and a checkpoint is saved (:class:`qkv.train.loop.Trainer`).

``save_every`` and ``keep``, the earlier names of ``save_every_steps`` and ``keep_last``, are
still read (with a :class:`DeprecationWarning`).
"""

from __future__ import annotations

import copy
import tomllib
import warnings
from pathlib import Path
from typing import Any

from ..models.builders import KIND_NAMES, MODEL_KINDS, config_keys

__all__ = [
    "DEFAULTS",
    "MODEL_PRESETS",
    "RENAMED_TRAIN_KEYS",
    "load_config",
    "merge",
    "parse_override",
    "resolve",
    "train_setting",
]

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
        "corpus": "numbers",  # a built-in corpus name (qkv.translation.data.BUILTIN_CORPORA) or a .tsv path
        "size": 20000,  # built-in corpora: examples generated
        "options": {},  # built-in corpora: extra keyword arguments of the generator
        "tokenizer": "word",  # word | char | bpe
        "bpe_vocab": 2000,
        "lowercase": False,
        "split_punct": False,
        "max_len": 0,  # TSV: drop pairs longer than this many tokens (0 = keep all)
        "reverse": False,  # TSV: translate from the second column to the first
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
        "save_every_minutes": 5.0,  # also checkpoint every N minutes (0 = off): bounds what a kill loses
        "save_every_steps": 0,  # also checkpoint every N optimizer steps (0 = off)
        "keep_last": 2,  # the newest checkpoints kept (best/ is kept apart)
        "valid_decode": 300,  # validation sentences decoded greedily for exact match
        "max_decode_len": 0,  # decoding limit in target tokens (0 = 2 x the longest validation target + 10)
        # torch CPU threads while training (0 = torch's default, one per core). 1: more gain at most
        # 1.1-1.3x on these models and collapse next to a busy process (see the module docstring)
        "threads": 1,
    },
}

#: Earlier names of ``[train]`` keys, still read (with a DeprecationWarning): old name -> new name.
RENAMED_TRAIN_KEYS = {"save_every": "save_every_steps", "keep": "keep_last"}

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
    given = set(file_config.get("train", {}))  # [train] keys the file or the overrides set
    for text in overrides:
        path, value = parse_override(text)
        if path[0] == "train" and len(path) == 2:
            given.add(path[1])
        node = cfg
        for part in path[:-1]:
            if part not in node or not isinstance(node[part], dict):
                node = node.setdefault(part, {})
            else:
                node = node[part]
        node[path[-1]] = value
    _rename_train_keys(cfg["train"], given)
    _validate(cfg)
    return cfg


def _rename_train_keys(t: dict[str, Any], given: set[str]) -> None:
    """Move the values of the earlier key names (:data:`RENAMED_TRAIN_KEYS`) to the new ones."""
    for old, new in RENAMED_TRAIN_KEYS.items():
        if old not in t:
            continue
        if new in given:
            raise ValueError(
                f"config [train]: {old} and {new} both given; {old} is the earlier name of {new}: keep {new}"
            )
        warnings.warn(
            f"config [train]: {old} is now called {new}; {old} will stop working in a later release",
            DeprecationWarning,
            stacklevel=3,
        )
        t[new] = t.pop(old)


def train_setting(t: dict[str, Any], name: str) -> Any:
    """The ``[train]`` value ``name`` of ``t``: under its name, else under its earlier name
    (:data:`RENAMED_TRAIN_KEYS`: the configs of runs saved before the rename), else the default."""
    if name in t:
        return t[name]
    for old, new in RENAMED_TRAIN_KEYS.items():
        if new == name and old in t:
            return t[old]
    return DEFAULTS["train"][name]


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
    for key, least in (("save_every_steps", 0), ("keep_last", 1), ("threads", 0)):
        if not isinstance(t[key], int) or isinstance(t[key], bool) or t[key] < least:
            raise ValueError(f"config [train]: {key}: expected an int >= {least}, got {t[key]!r}")
    minutes = t["save_every_minutes"]
    if not isinstance(minutes, (int, float)) or isinstance(minutes, bool) or not minutes >= 0:
        raise ValueError(
            f"config [train]: save_every_minutes: expected a number of minutes >= 0 (0 = off), got {minutes!r}"
        )
    if not 0.0 <= float(t["teacher_forcing"]) <= 1.0:
        raise ValueError(
            f"config [train]: teacher_forcing: expected a ratio in [0, 1], got {t['teacher_forcing']!r}"
        )
    if cfg["data"]["tokenizer"] not in ("word", "char", "bpe"):
        raise ValueError(
            f"config [data]: tokenizer: expected word, char or bpe, got {cfg['data']['tokenizer']!r}"
        )
