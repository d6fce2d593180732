"""The config of a speech recognition run: the ``[data]``, ``[model]`` and ``[train]`` tables.

::

    qkv train --model las --data spoken-numbers --train.epochs=10

:func:`resolve` builds a :class:`RunConfig` from the defaults, a model preset
(:data:`MODEL_PRESETS`), a TOML file and dotted overrides, each table a frozen dataclass that
checks itself. The valid ``[model]`` keys are the fields of its kind's config dataclass
(:class:`qkv.models.las.LASConfig`, :class:`qkv.models.speech_transformer.SpeechTransformerConfig`)
but the ones the data decides (:func:`qkv.models.builders.speech_config_keys`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..application import run_config
from ..models.builders import SPEECH_KINDS, SPEECH_PRESETS, speech_config_keys
from ..train.config import TrainConfig
from ..train.config import expect as _expect
from .spec_augment import SpecAugment

__all__ = [
    "DATASETS",
    "MODEL_PRESETS",
    "DataConfig",
    "RunConfig",
    "SpeechTrainConfig",
    "resolve",
    "resume_config",
]

#: ``--data`` names: English numbers 0-999 spoken by espeak-ng and flite voices.
DATASETS = ("spoken-numbers",)
#: The model presets of ``qkv train --model NAME``.
MODEL_PRESETS: dict[str, dict[str, Any]] = dict(SPEECH_PRESETS)


def _is_int(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class DataConfig:
    """The ``[data]`` table: which utterances, how many, how split (:mod:`qkv.speech.data`)."""

    dataset: str = "spoken-numbers"
    train_size: int = 3000  # training utterances (training voices)
    valid_size: int = 200  # validation utterances (valid voices, never trained on)
    test_size: int = 300  # utterances of each test split (test voices; flite's kal16)
    max_number: int = 999  # numbers 0 .. max_number
    n_mels: int = 40  # log-mel bands
    split_seed: int = 0  # which espeak-ng voices are held out
    seed: int = 0  # which utterances are drawn
    warp: float = 0.0  # training: vocal tract length perturbation factors drawn in [1 - warp, 1 + warp]
    flite_share: float = 0.25  # training: the share of utterances spoken by flite's awb, rms and slt
    cache_dir: str = ""  # where generated features are kept ("": $QKV_CACHE/speech or ~/.cache/qkv/speech)

    def __post_init__(self) -> None:
        _expect("data", "dataset", self.dataset in DATASETS, " | ".join(DATASETS), self.dataset)
        for key, least in (("train_size", 1), ("valid_size", 0), ("test_size", 0), ("max_number", 0),
                           ("n_mels", 8), ("split_seed", 0), ("seed", 0)):  # fmt: skip
            value = getattr(self, key)
            _expect("data", key, _is_int(value, least), f"an int >= {least}", value)
        _expect("data", "max_number", self.max_number <= 999_999, "an int <= 999999", self.max_number)
        _expect("data", "cache_dir", isinstance(self.cache_dir, str), "a path (str)", self.cache_dir)
        _expect(
            "data", "warp", _is_real(self.warp) and 0 <= self.warp < 0.5, "a number in [0, 0.5)", self.warp
        )
        share = self.flite_share
        _expect("data", "flite_share", _is_real(share) and 0 <= share <= 1, "a number in [0, 1]", share)


@dataclass(frozen=True)
class SpeechTrainConfig(TrainConfig):
    """The ``[train]`` table of speech: :class:`~qkv.train.config.TrainConfig` with defaults for
    a small LAS on 3,000 utterances, and SpecAugment's masks of the training batches
    (:class:`qkv.speech.spec_augment.SpecAugment`; no masks by default)."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-3
    min_lr: float = 1e-4
    warmup: int = 50
    patience: int = 0
    freq_masks: int = 0  # SpecAugment: frequency masks per utterance
    freq_width: int = 0  # the widest, in mel bands
    time_masks: int = 0  # time masks per utterance
    time_width: int = 0  # the widest, in frames

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("freq_masks", "freq_width", "time_masks", "time_width"):
            _expect("train", key, _is_int(getattr(self, key), 0), "an int >= 0", getattr(self, key))

    @property
    def spec_augment(self) -> SpecAugment:
        """The masking policy of the training batches."""
        return SpecAugment(self.freq_masks, self.freq_width, self.time_masks, self.time_width)


@dataclass(frozen=True)
class RunConfig(run_config.RunConfig):
    """A whole speech recognition run: its three tables (``model`` is a dict checked against its
    kind's config dataclass)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: dict(SPEECH_PRESETS["las"]))
    train: SpeechTrainConfig = field(default_factory=SpeechTrainConfig)

    MODEL_KINDS, DEFAULT_KIND, model_keys = SPEECH_KINDS, "las", staticmethod(speech_config_keys)
    MODEL_PRESETS, DEFAULT_PRESET = MODEL_PRESETS, "las"


#: Defaults <- model preset <- file <- overrides, checked: :meth:`RunConfig.resolve`.
resolve = RunConfig.resolve
#: What a resumed run continues with: :meth:`RunConfig.resume`.
resume_config = RunConfig.resume
