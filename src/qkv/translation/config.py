"""The config of a translation run: the ``[data]``, ``[model]`` and ``[train]`` tables.

::

    qkv train configs/bahdanau.toml --train.epochs=3 --model.hidden_dim=64

:func:`resolve` builds a :class:`RunConfig` from the defaults, a model preset
(:data:`MODEL_PRESETS`), a TOML file and dotted overrides, each table a frozen dataclass that
checks itself (an unknown key is an error listing the valid ones). ``[train]`` is the
model-agnostic :class:`~qkv.train.config.TrainConfig` plus translation's keys
(:class:`TranslationTrainConfig`); the valid ``[model]`` keys are the fields of the model's
config dataclass (:func:`qkv.models.builders.config_keys`). :func:`resume_config` is what a
resumed run may change. Inference reads ``[data]`` and ``[model]`` only.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..models.builders import KIND_NAMES, MODEL_KINDS, config_keys
from ..train.config import TrainConfig, from_table, parse_override
from ..train.config import expect as _expect

__all__ = [
    "MODEL_PRESETS",
    "SAFE_ON_RESUME",
    "DataConfig",
    "RunConfig",
    "TranslationTrainConfig",
    "model_preset",
    "resolve",
    "resume_config",
]

#: The model presets of ``qkv train --model NAME``: the ``[model]`` table each starts from.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "none": {"kind": "seq2seq", "attention": "none"},
    "bahdanau": {"kind": "seq2seq", "attention": "bahdanau"},
    "luong": {"kind": "seq2seq", "attention": "luong", "luong_score": "general"},
    "luong-local": {"kind": "seq2seq", "attention": "luong-local", "local_mode": "p", "window": 3},
    "transformer": {"kind": "transformer"},
}

#: The keys a resumed run may change: how long it runs and how it saves, never what it learns.
SAFE_ON_RESUME = (
    "train.epochs",
    "train.max_steps",
    "train.patience",
    "train.save_every_minutes",
    "train.save_every_steps",
    "train.keep_last",
)


@dataclass(frozen=True)
class DataConfig:
    """The ``[data]`` table: the corpus and how its text becomes tokens."""

    corpus: str = "numbers"  # a built-in corpus name (qkv.translation.data.BUILTIN_CORPORA) or a .tsv path
    size: int = 20000  # built-in corpora: examples generated
    options: dict[str, Any] = field(default_factory=dict)  # built-in corpora: generator arguments
    tokenizer: str = "word"  # word | char | bpe
    bpe_vocab: int = 2000
    lowercase: bool = False
    split_punct: bool = False
    max_len: int = 0  # TSV: drop pairs longer than this many tokens (0 = keep all)
    reverse: bool = False  # TSV: translate from the second column to the first
    valid_frac: float = 0.05
    test_frac: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        _expect(
            "data",
            "tokenizer",
            self.tokenizer in ("word", "char", "bpe"),
            "word | char | bpe",
            self.tokenizer,
        )
        for key, least in (("size", 1), ("bpe_vocab", 1), ("max_len", 0), ("seed", 0)):
            value = getattr(self, key)
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
            _expect("data", key, ok, f"an int >= {least}", value)
        for key in ("valid_frac", "test_frac"):
            value = getattr(self, key)
            _expect("data", key, _number(value) and 0 <= value < 1, "a fraction in [0, 1)", value)


@dataclass(frozen=True)
class TranslationTrainConfig(TrainConfig):
    """The ``[train]`` table of translation: :class:`~qkv.train.config.TrainConfig` and the
    loss and validation keys of translation."""

    label_smoothing: float = 0.0
    teacher_forcing: float = 1.0
    valid_decode: int = 300  # validation sentences decoded greedily for exact match
    max_decode_len: int = 0  # decoding limit in target tokens (0 = 2 x the longest reference + 10)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, top in (("label_smoothing", 1.0), ("teacher_forcing", 1.0)):
            value = getattr(self, key)
            _expect("train", key, _number(value) and 0 <= value <= top, "a ratio in [0, 1]", value)
        for key in ("valid_decode", "max_decode_len"):
            value = getattr(self, key)
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            _expect("train", key, ok, "an int >= 0", value)


@dataclass(frozen=True)
class RunConfig:
    """A whole translation run: its three tables (``model`` is a dict: its keys depend on the
    model's ``kind``, checked against the model's config dataclass)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: dict(MODEL_PRESETS["bahdanau"]))
    train: TranslationTrainConfig = field(default_factory=TranslationTrainConfig)

    def __post_init__(self) -> None:
        kind = self.model.get("kind", "seq2seq")
        _expect("model", "kind", kind in MODEL_KINDS, KIND_NAMES, kind)
        unknown = sorted(set(self.model) - config_keys(kind))
        if unknown:
            valid = ", ".join(sorted(config_keys(kind)))
            raise ValueError(f"config [model] (kind={kind!r}): unknown keys {unknown}; valid: {valid}")

    @classmethod
    def from_dict(cls, tables: dict[str, Any]) -> RunConfig:
        """From ``{"data": {...}, "model": {...}, "train": {...}}`` (what checkpoints store)."""
        unknown = sorted(set(tables) - {"data", "model", "train"})
        if unknown:
            raise ValueError(f"config: unknown tables {unknown}; valid: data, model, train")
        return cls(
            data=from_table(DataConfig, "data", tables.get("data", {})),
            model=dict(tables.get("model", MODEL_PRESETS["bahdanau"])),
            train=from_table(TranslationTrainConfig, "train", tables.get("train", {})),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_toml(self) -> str:
        """Every key and its value, as a TOML config file (``[model]`` with its preset and every
        field of its model; TOML has no null: a field whose default is None is left out)."""
        import tomli_w

        tables = self.to_dict()
        preset = model_preset(self.model)
        kind = self.model.get("kind", "seq2seq")
        keys = config_keys(kind)
        fields = dataclasses.fields(MODEL_KINDS[kind][1])
        defaults = {
            f.name: f.default for f in fields if f.name in keys and f.default is not dataclasses.MISSING
        }
        model = {"kind": kind, **defaults, **self.model}
        tables["model"] = {**({"preset": preset} if preset else {}), **model}
        return tomli_w.dumps({k: {n: v for n, v in t.items() if v is not None} for k, t in tables.items()})


def model_preset(model: dict[str, Any]) -> str | None:
    """The preset a ``[model]`` table starts from: ``transformer``, or the attention's name."""
    name = "transformer" if model.get("kind") == "transformer" else model.get("attention")
    return name if name in MODEL_PRESETS else None


def resolve(
    file_config: dict | None = None, *, preset: str | None = None, overrides: Iterable[str] = ()
) -> RunConfig:
    """Defaults <- model preset <- file <- overrides (``--table.key=value``), checked."""
    tables = copy.deepcopy(file_config or {})
    model = tables.setdefault("model", {})
    preset = preset or model.pop("preset", None) or "bahdanau"
    model.pop("preset", None)
    if preset not in MODEL_PRESETS:
        raise ValueError(f"model: unknown model {preset!r}; valid: {', '.join(MODEL_PRESETS)}")
    tables["model"] = {**MODEL_PRESETS[preset], **model}
    for text in overrides:
        _set(tables, *parse_override(text))
    return RunConfig.from_dict(tables)


def resume_config(run_config: dict[str, Any], overrides: Iterable[str]) -> tuple[RunConfig, list[str]]:
    """The config a resumed run continues with: its own, checked, with ``overrides`` applied.

    Returns the config and the overrides that changed something (``"train.epochs=20"``).

    Raises:
        ValueError: an override of a key outside :data:`SAFE_ON_RESUME` that would change the
            run's value (the weights, data and optimizer of the checkpoint follow that value;
            train a new run in another directory to change it), or a bad value.
    """
    tables = RunConfig.from_dict(run_config).to_dict()
    applied = []
    for text in overrides:
        path, value = parse_override(text)
        key = ".".join(path)
        current = _get(tables, path)
        if current == value:
            continue
        if key not in SAFE_ON_RESUME:
            raise ValueError(
                f"--resume: {key} cannot change in a run under way (the run has {current!r}, got {value!r}): its "
                "checkpoint's weights, data and optimizer follow it; train a new run with another --out. "
                f"A resumed run may change {', '.join(SAFE_ON_RESUME)}"
            )
        _set(tables, path, value)
        applied.append(f"{key}={value!r}")
    return RunConfig.from_dict(tables), applied


def _set(tables: dict[str, Any], path: list[str], value: Any) -> None:
    node = tables
    for part in path[:-1]:
        node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
    node[path[-1]] = value


def _get(tables: dict[str, Any], path: list[str]) -> Any:
    node: Any = tables
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
