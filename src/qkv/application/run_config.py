"""The config of an application's run: :class:`RunConfig` (``[data]``, ``[model]``, ``[train]``:
defaults <- model preset <- file <- dotted overrides ``--train.lr=1e-3``, what a resumed run may
change, TOML out), with the pieces it reads: a table's keys (:func:`from_table`), a TOML file
(:func:`load_toml`) and an override (:func:`parse_override`). An application subclasses
:class:`RunConfig` with its own tables, presets and model kinds (:mod:`qkv.translation.config`,
:mod:`qkv.vision.config`).
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from ..train.config import TrainConfig, expect

__all__ = ["SAFE_ON_RESUME", "RunConfig", "from_table", "load_toml", "parse_override"]

#: The keys a resumed run may change: how long it runs and how it saves, never what it learns.
SAFE_ON_RESUME = ("train.epochs", "train.max_steps", "train.patience", "train.save_every_minutes",
                  "train.save_every_steps", "train.keep_last")  # fmt: skip


@dataclass(frozen=True)
class RunConfig:
    """A whole run: its ``[data]`` and ``[train]`` tables (frozen dataclasses) and its ``[model]``
    table, a dict whose valid keys (``model_keys(kind)``) depend on the model's ``kind``.

    An application subclasses it: the three fields again, each with its table as the default
    (``field(default_factory=DataConfig)``; ``model``: its default preset's table), and the
    class attributes below. Construction checks ``[model]``: ``config [model] (kind='vit'):
    unknown keys [...]; valid: ...``.
    """

    data: Any
    model: dict[str, Any]
    train: TrainConfig

    #: kind -> (model class, config dataclass); ``DEFAULT_KIND`` when ``[model]`` names none.
    MODEL_KINDS: ClassVar[dict[str, tuple[type, type]]] = {}
    DEFAULT_KIND: ClassVar[str] = ""
    #: ``--model NAME`` -> the ``[model]`` table it starts from; ``DEFAULT_PRESET`` without one.
    MODEL_PRESETS: ClassVar[dict[str, Any]] = {}
    DEFAULT_PRESET: ClassVar[str] = ""
    #: kind -> ``[train]`` values that kind starts from instead of the table's defaults.
    TRAIN_BY_KIND: ClassVar[dict[str, dict[str, Any]]] = {}
    model_keys: ClassVar[Callable[[str], frozenset[str]]]

    def __post_init__(self) -> None:
        kind = self.model.get("kind", self.DEFAULT_KIND)
        expect("model", "kind", kind in self.MODEL_KINDS, " or ".join(map(repr, self.MODEL_KINDS)), kind)
        unknown = sorted(set(self.model) - self.model_keys(kind))
        if unknown:
            valid = ", ".join(sorted(self.model_keys(kind)))
            raise ValueError(f"config [model] (kind={kind!r}): unknown keys {unknown}; valid: {valid}")

    @classmethod
    def from_dict(cls, tables: dict[str, Any]) -> Self:
        """From ``{"data": {...}, "model": {...}, "train": {...}}`` (what checkpoints store)."""
        fields = dataclasses.fields(cls)
        unknown = sorted(set(tables) - {f.name for f in fields})
        if unknown:
            raise ValueError(f"config: unknown tables {unknown}; valid: {', '.join(f.name for f in fields)}")
        values = {}
        for f in fields:  # each field's default factory is its table's dataclass, or the default [model]
            given = tables.get(f.name)
            if f.name == "model":
                values["model"] = dict(f.default_factory() if given is None else given)
            else:
                values[f.name] = from_table(f.default_factory, f.name, {} if given is None else given)
        return cls(**values)

    @classmethod
    def resolve(
        cls, file_config: dict | None = None, *, preset: str | None = None, overrides: Iterable[str] = ()
    ) -> Self:
        """Defaults (a kind's own ``[train]`` values from :attr:`TRAIN_BY_KIND`) <- model preset
        (``preset``, else the file's ``[model] preset``, else ``DEFAULT_PRESET``; see
        :meth:`preset_table`) <- file <- overrides (``--table.key=value``), checked."""
        tables = copy.deepcopy(file_config or {})
        model = tables.setdefault("model", {})
        preset = preset or model.pop("preset", None) or cls.DEFAULT_PRESET
        model.pop("preset", None)
        if preset not in cls.MODEL_PRESETS:
            raise ValueError(f"model: unknown model {preset!r}; valid: {', '.join(cls.MODEL_PRESETS)}")
        for text in overrides:
            _set(tables, *parse_override(text))
        kind = tables["model"].get("kind") or (cls.MODEL_PRESETS[preset] or {}).get("kind")
        train = tables.setdefault("train", {})
        if (
            isinstance(kind, str) and kind in cls.TRAIN_BY_KIND and isinstance(train, dict)
        ):  # else checked below
            for key, value in cls.TRAIN_BY_KIND[kind].items():
                train.setdefault(key, value)  # the file's and the overrides' values stay
        tables["model"] = {**cls.preset_table(preset, tables), **tables["model"]}
        return cls.from_dict(tables)

    @classmethod
    def preset_table(cls, preset: str, tables: dict[str, Any]) -> dict[str, Any]:
        """The ``[model]`` table ``preset`` starts from (an application may read ``tables``)."""
        return cls.MODEL_PRESETS[preset]

    @classmethod
    def resume(cls, run_config: dict[str, Any], overrides: Iterable[str]) -> tuple[Self, list[str]]:
        """The config a resumed run continues with: its own, checked, with ``overrides`` applied.

        Returns the config and the overrides that changed something (``"train.epochs=20"``).

        Raises:
            ValueError: an override of a key outside :data:`SAFE_ON_RESUME` that would change the
                run's value (the weights, data and optimizer of the checkpoint follow that value;
                train a new run in another directory to change it), or a bad value.
        """
        tables = cls.from_dict(run_config).to_dict()
        applied = []
        for text in overrides:
            path, value = parse_override(text)
            key, current = ".".join(path), _get(tables, path)
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
        return cls.from_dict(tables), applied

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def preset_name(self) -> str | None:
        """The preset :meth:`to_toml` names in ``[model]`` (None: no ``preset`` key)."""
        return None

    def to_toml(self) -> str:
        """Every key and its value, as a TOML config file (``[model]`` with every field of its
        model; TOML has no null: a field whose default is None is left out)."""
        import tomli_w

        tables, kind, preset = self.to_dict(), self.model.get("kind", self.DEFAULT_KIND), self.preset_name()
        keys = self.model_keys(kind)
        fields = dataclasses.fields(self.MODEL_KINDS[kind][1])
        defaults = {
            f.name: f.default for f in fields if f.name in keys and f.default is not dataclasses.MISSING
        }
        tables["model"] = {**({"preset": preset} if preset else {}), "kind": kind, **defaults, **self.model}
        return tomli_w.dumps({k: {n: v for n, v in t.items() if v is not None} for k, t in tables.items()})


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


def from_table(cls: type, table: str, values: dict[str, Any]) -> Any:
    """``cls(**values)``, unknown keys refused with the valid ones listed."""
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"config [{table}]: unknown keys {unknown}; valid: {', '.join(valid)}")
    return cls(**values)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"--train.lr=1e-3"`` -> ``(["train", "lr"], 0.001)``: the value is read as TOML, else
    taken as a string (``--data.corpus=numbers-de`` works unquoted)."""
    body = text.removeprefix("--")
    key, sep, raw = body.partition("=")
    path = key.split(".")
    if not sep or len(path) < 2 or not all(path):
        raise ValueError(f"override {text!r}: expected --table.key=value, e.g. --train.lr=1e-3")
    try:
        return path, tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return path, raw


def load_toml(path: str | Path) -> dict[str, Any]:
    """A TOML config file as a dict (clear errors for a missing file or bad TOML)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config: no such file {str(p)!r}")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config {str(p)!r}: invalid TOML: {e}") from None
