"""The config of an image classification run: the ``[data]``, ``[model]`` and ``[train]`` tables.

::

    qkv train --model vit --data digits --train.epochs=20 --model.dim=32

:func:`resolve` builds a :class:`RunConfig` from the defaults, a model preset
(:data:`MODEL_PRESETS`; ``vit`` picks the size made for the data set), a TOML file and dotted
overrides, each table a frozen dataclass that checks itself. ``[train]`` is the model-agnostic
:class:`~qkv.train.config.TrainConfig` with defaults for small ViTs plus ``label_smoothing``
(:class:`VisionTrainConfig`); the valid ``[model]`` keys are the fields of the model's config
dataclass but the ones the data decides (:func:`qkv.models.builders.image_config_keys`).
:func:`resume_config` is what a resumed run may change.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..models.builders import IMAGE_KINDS, VIT_PRESETS, image_config_keys
from ..train.config import TrainConfig, from_table, parse_override
from ..train.config import expect as _expect

__all__ = [
    "DATASETS",
    "MODEL_PRESETS",
    "SAFE_ON_RESUME",
    "DataConfig",
    "RunConfig",
    "VisionTrainConfig",
    "preset_for",
    "resolve",
    "resume_config",
]

#: The built-in data sets of ``[data] dataset`` (anything else is a folder of class subfolders).
DATASETS = ("digits", "fashion-mnist", "located-digits")

#: The model presets of ``qkv train --model NAME``; ``vit`` is the one sized for the data set
#: (:func:`preset_for`).
MODEL_PRESETS: dict[str, dict[str, Any] | None] = {"vit": None, **VIT_PRESETS}

# The preset ``vit`` means for each data set; a folder (32x32 by default) gets the canvases' one.
_PRESET_OF_DATASET = {
    "digits": "vit-digits",
    "fashion-mnist": "vit-fashion-mnist",
    "located-digits": "vit-located",
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


def _is_int(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1


@dataclass(frozen=True)
class DataConfig:
    """The ``[data]`` table: which images, how they are split and augmented."""

    dataset: str = "digits"  # digits | fashion-mnist | located-digits | a folder of class subfolders
    image_size: int = 32  # folders: images are resized to image_size x image_size
    channels: int = 1  # folders: 1 (grayscale) or 3 (RGB)
    canvas: int = 32  # located-digits: the canvas side
    size: int = 0  # located-digits: training canvases (0: 8000); fashion-mnist: first N images (0: all)
    valid_frac: float = 0.1  # of the training images (of the digits, for located-digits)
    test_frac: float = 0.2  # digits, folders, located-digits (fashion-mnist has its own test set)
    augment_shift: int = 0  # training images moved by up to this many pixels (0 = no augmentation)
    seed: int = 0

    def __post_init__(self) -> None:
        ok = isinstance(self.dataset, str) and bool(self.dataset)
        _expect("data", "dataset", ok, f"{' | '.join(DATASETS)} or a folder", self.dataset)
        for key, least in (("image_size", 1), ("canvas", 16), ("size", 0), ("augment_shift", 0), ("seed", 0)):
            value = getattr(self, key)
            _expect("data", key, _is_int(value, least), f"an int >= {least}", value)
        _expect("data", "channels", self.channels in (1, 3), "1 (grayscale) or 3 (RGB)", self.channels)
        for key in ("valid_frac", "test_frac"):
            value = getattr(self, key)
            _expect("data", key, _is_fraction(value), "a fraction in [0, 1)", value)


@dataclass(frozen=True)
class VisionTrainConfig(TrainConfig):
    """The ``[train]`` table of image classification: :class:`~qkv.train.config.TrainConfig`
    with defaults for small ViTs on small data (the digits: 40 epochs of batches of 32, label
    smoothing 0.1, no early stopping), and ``label_smoothing``."""

    epochs: int = 40
    batch_size: int = 32
    lr: float = 2e-3
    min_lr: float = 1e-5
    warmup: int = 50
    weight_decay: float = 0.05
    patience: int = 0
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        value = self.label_smoothing
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
        _expect("train", "label_smoothing", ok, "a ratio in [0, 1]", value)


@dataclass(frozen=True)
class RunConfig:
    """A whole image classification run: its three tables (``model`` is a dict checked against
    the model's config dataclass)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: dict(VIT_PRESETS["vit-digits"]))
    train: VisionTrainConfig = field(default_factory=VisionTrainConfig)

    def __post_init__(self) -> None:
        kind = self.model.get("kind", "vit")
        _expect("model", "kind", kind in IMAGE_KINDS, " or ".join(map(repr, IMAGE_KINDS)), kind)
        unknown = sorted(set(self.model) - image_config_keys(kind))
        if unknown:
            valid = ", ".join(sorted(image_config_keys(kind)))
            raise ValueError(f"config [model] (kind={kind!r}): unknown keys {unknown}; valid: {valid}")

    @classmethod
    def from_dict(cls, tables: dict[str, Any]) -> RunConfig:
        """From ``{"data": {...}, "model": {...}, "train": {...}}`` (what checkpoints store)."""
        unknown = sorted(set(tables) - {"data", "model", "train"})
        if unknown:
            raise ValueError(f"config: unknown tables {unknown}; valid: data, model, train")
        return cls(
            data=from_table(DataConfig, "data", tables.get("data", {})),
            model=dict(tables.get("model", VIT_PRESETS["vit-digits"])),
            train=from_table(VisionTrainConfig, "train", tables.get("train", {})),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_toml(self) -> str:
        """Every key and its value, as a TOML config file (``[model]`` with every field of its model)."""
        import tomli_w

        tables = self.to_dict()
        kind = self.model.get("kind", "vit")
        keys = image_config_keys(kind)
        fields = dataclasses.fields(IMAGE_KINDS[kind][1])
        defaults = {
            f.name: f.default for f in fields if f.name in keys and f.default is not dataclasses.MISSING
        }
        tables["model"] = {"kind": kind, **defaults, **self.model}
        return tomli_w.dumps({k: {n: v for n, v in t.items() if v is not None} for k, t in tables.items()})


def preset_for(dataset: str) -> str:
    """The ViT preset sized for a data set (``vit-digits`` for ``digits``, ...; a folder: ``vit-located``)."""
    return _PRESET_OF_DATASET.get(dataset, "vit-located")


def resolve(
    file_config: dict | None = None, *, preset: str | None = None, overrides: Iterable[str] = ()
) -> RunConfig:
    """Defaults <- model preset <- file <- overrides (``--table.key=value``), checked.

    The preset ``vit`` (the default) is the one :func:`preset_for` the data set.
    """
    tables = copy.deepcopy(file_config or {})
    model = tables.setdefault("model", {})
    preset = preset or model.pop("preset", None) or "vit"
    model.pop("preset", None)
    if preset not in MODEL_PRESETS:
        raise ValueError(f"model: unknown model {preset!r}; valid: {', '.join(MODEL_PRESETS)}")
    for text in overrides:
        _set(tables, *parse_override(text))
    if preset == "vit":
        preset = preset_for(tables.get("data", {}).get("dataset", DataConfig.dataset))
    tables["model"] = {**VIT_PRESETS[preset], **tables["model"]}
    return RunConfig.from_dict(tables)


def resume_config(run_config: dict[str, Any], overrides: Iterable[str]) -> tuple[RunConfig, list[str]]:
    """The config a resumed run continues with: its own, checked, with ``overrides`` applied.

    Returns the config and the overrides that changed something (``"train.epochs=20"``).

    Raises:
        ValueError: an override of a key outside :data:`SAFE_ON_RESUME` that would change the
            run's value, or a bad value.
    """
    tables = RunConfig.from_dict(run_config).to_dict()
    applied = []
    for text in overrides:
        path, value = parse_override(text)
        key = ".".join(path)
        node: Any = tables
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node == value:
            continue
        if key not in SAFE_ON_RESUME:
            raise ValueError(
                f"--resume: {key} cannot change in a run under way (the run has {node!r}, got {value!r}); "
                f"train a new run with another --out. A resumed run may change {', '.join(SAFE_ON_RESUME)}"
            )
        _set(tables, path, value)
        applied.append(f"{key}={value!r}")
    return RunConfig.from_dict(tables), applied


def _set(tables: dict[str, Any], path: list[str], value: Any) -> None:
    node = tables
    for part in path[:-1]:
        node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
    node[path[-1]] = value
