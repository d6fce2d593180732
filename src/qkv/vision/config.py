"""The config of an image classification run: the ``[data]``, ``[model]`` and ``[train]`` tables.

::

    qkv train --model vit --data digits --train.epochs=20 --model.dim=32

:func:`resolve` builds a :class:`RunConfig` from the defaults, a model preset
(:data:`MODEL_PRESETS`; ``vit`` picks the size made for the data set), a TOML file and dotted
overrides, each table a frozen dataclass that checks itself. ``[train]`` is the model-agnostic
:class:`~qkv.train.config.TrainConfig` with defaults for small ViTs plus ``label_smoothing``
(:class:`VisionTrainConfig`); the valid ``[model]`` keys are the fields of the model's config
dataclass but the ones the data decides (:func:`qkv.models.builders.image_config_keys`).
:func:`resume_config` is what a resumed run may change. The composition is
:class:`qkv.application.run_config.RunConfig`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..application import run_config
from ..models.builders import IMAGE_KINDS, image_config_keys
from ..train.config import TrainConfig
from ..train.config import expect as _expect

__all__ = [
    "DATASETS",
    "MODEL_PRESETS",
    "VIT_PRESETS",
    "DataConfig",
    "RunConfig",
    "VisionTrainConfig",
    "preset_for",
    "resolve",
    "resume_config",
]

#: The built-in data sets of ``[data] dataset`` (anything else is a folder of class subfolders).
DATASETS = ("digits", "fashion-mnist", "located-digits")

#: ``[model]`` tables of ViTs sized for each data set (the data gives the image size, the
#: channels and the classes), the one place they are set: 8x8 digits (patch 2: a 4x4 grid),
#: 28x28 Fashion-MNIST (a 7x7 grid from the convolutional stem of two stride-2 convolutions, 48
#: wide and 3 deep: the stem costs about the block it replaces and, at equal compute, trains to a
#: better accuracy within the 10 minutes of ``benchmarks/vision_fashion.py`` on 2 cores), the
#: 32x32 localisation canvases of ``located_digits`` (patch 4: 8x8).
VIT_PRESETS: dict[str, dict[str, Any]] = {
    "vit-digits": {
        "kind": "vit",
        "patch_size": 2,
        "dim": 48,
        "depth": 3,
        "heads": 4,
        "mlp_dim": 96,
        "dropout": 0.1,
    },
    "vit-fashion-mnist": {
        "kind": "vit",
        "patch_size": 4,
        "stem": "conv",
        "dim": 48,
        "depth": 3,
        "heads": 4,
        "mlp_dim": 96,
    },
    "vit-located": {"kind": "vit", "patch_size": 4, "dim": 64, "depth": 4, "heads": 4, "mlp_dim": 128},
}

#: The model presets of ``qkv train --model NAME``; ``vit`` is the one sized for the data set
#: (:func:`preset_for`).
MODEL_PRESETS: dict[str, dict[str, Any] | None] = {"vit": None, **VIT_PRESETS}

# The preset ``vit`` means for each data set; a folder (32x32 by default) gets the canvases' one.
_PRESET_OF_DATASET = {
    "digits": "vit-digits",
    "fashion-mnist": "vit-fashion-mnist",
    "located-digits": "vit-located",
}


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
class RunConfig(run_config.RunConfig):
    """A whole image classification run: its three tables (``model`` is a dict checked against
    the model's config dataclass); the preset ``vit`` (the default) is the one
    :func:`preset_for` the data set."""

    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: dict(VIT_PRESETS["vit-digits"]))
    train: VisionTrainConfig = field(default_factory=VisionTrainConfig)

    MODEL_KINDS, DEFAULT_KIND, model_keys = IMAGE_KINDS, "vit", staticmethod(image_config_keys)
    MODEL_PRESETS, DEFAULT_PRESET = MODEL_PRESETS, "vit"

    @classmethod
    def preset_table(cls, preset: str, tables: dict[str, Any]) -> dict[str, Any]:
        if preset == "vit":
            preset = preset_for(tables.get("data", {}).get("dataset", DataConfig.dataset))
        return VIT_PRESETS[preset]


def preset_for(dataset: str) -> str:
    """The ViT preset sized for a data set (``vit-digits`` for ``digits``, ...; a folder: ``vit-located``)."""
    return _PRESET_OF_DATASET.get(dataset, "vit-located")


#: Defaults <- model preset (``vit``: sized for the data set) <- file <- overrides, checked: :meth:`RunConfig.resolve`.
resolve = RunConfig.resolve
#: What a resumed run continues with (:data:`~qkv.application.run_config.SAFE_ON_RESUME` may change): :meth:`RunConfig.resume`.
resume_config = RunConfig.resume
