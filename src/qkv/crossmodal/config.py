"""The config of a cross-modal run (matching, captioning or grounded translation): the ``[data]``, ``[model]`` and
``[train]`` tables.

::

    qkv train --model clip --data digit-strips-de --train.epochs=6
    qkv train --model captioner --data digit-strips-fr
    qkv train --model grounded --data digit-strips --model.use_image=false
    qkv train --model video-qa --data digit-clips

:func:`resolve` builds a :class:`RunConfig` from the defaults, a model preset
(:data:`MODEL_PRESETS`), a TOML file and dotted overrides, each table a frozen dataclass that
checks itself. ``[train]`` is :class:`~qkv.train.config.TrainConfig` with defaults for small
models on digit strips (:class:`CrossModalTrainConfig`); the valid ``[model]`` keys are the
fields of the kind's config dataclass (:class:`qkv.models.clip.CLIPConfig`,
:class:`qkv.models.captioner.ShowAttendTellConfig`,
:class:`qkv.models.captioner.CaptionTransformerConfig`,
:class:`qkv.models.grounded.GroundedConfig`, :class:`qkv.models.video_qa.VideoQAConfig`) but the ones the data decides
(:func:`model_keys`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..application import run_config
from ..models.builders import (
    CAPTION_KINDS,
    CAPTION_PRESETS,
    CLIP_PRESETS,
    GROUNDED_KINDS,
    GROUNDED_PRESETS,
    MATCHING_KINDS,
    VIDEO_QA_KINDS,
    VIDEO_QA_PRESETS,
    caption_config_keys,
    grounded_config_keys,
    matching_config_keys,
    video_qa_config_keys,
)
from ..train.config import TrainConfig
from ..train.config import expect as _expect
from .clips import QUESTION_KINDS, check_kinds

__all__ = [
    "CLIP_DATASETS",
    "DATASETS",
    "MODEL_KINDS",
    "MODEL_PRESETS",
    "TRAIN_BY_KIND",
    "CrossModalTrainConfig",
    "DataConfig",
    "RunConfig",
    "model_keys",
    "resolve",
    "resume_config",
]

#: ``--data`` names -> their language: the digit strips captioned in English, French, German, or
#: digit by digit; the digit clips, asked questions in English (:mod:`qkv.crossmodal.clips`).
DATASETS = {
    "digit-strips": "en",
    "digit-strips-fr": "fr",
    "digit-strips-de": "de",
    "digit-strips-digits": "digits",
    "digit-clips": "en",
}
#: The ``--data`` names of clips, the only data of the :data:`VIDEO_QA_KINDS`.
CLIP_DATASETS = ("digit-clips",)

#: The model presets of ``qkv train --model NAME``: ``clip`` is ``clip-strips``; ``captioner``
#: (Show, Attend and Tell) and ``captioner-transformer``; ``grounded`` (image-grounded
#: translation: the strips' images and numbers, whatever their caption language); ``video-qa``
#: (on ``digit-clips``).
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "clip": CLIP_PRESETS["clip-strips"],
    **CLIP_PRESETS,
    **CAPTION_PRESETS,
    **GROUNDED_PRESETS,
    **VIDEO_QA_PRESETS,
}

#: ``[model] kind`` -> (model class, config dataclass): the matching, captioning, grounded
#: translation and video question answering kinds.
MODEL_KINDS = {**MATCHING_KINDS, **CAPTION_KINDS, **GROUNDED_KINDS, **VIDEO_QA_KINDS}


def model_keys(kind: str) -> frozenset[str]:
    """The valid keys of a ``[model]`` table of this kind (matching, captioning, grounded
    translation or video QA)."""
    if kind in GROUNDED_KINDS:
        return grounded_config_keys(kind)
    if kind in VIDEO_QA_KINDS:
        return video_qa_config_keys(kind)
    return caption_config_keys(kind) if kind in CAPTION_KINDS else matching_config_keys(kind)


def _is_int(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


@dataclass(frozen=True)
class DataConfig:
    """The ``[data]`` table: which strips, how many, how split and augmented."""

    dataset: str = (
        "digit-strips"  # digit-strips | digit-strips-fr | digit-strips-de | digit-strips-digits | digit-clips
    )
    train_size: int = 20_000  # training strips (or clips) per epoch (shuffled every epoch)
    valid_size: int = 500  # validation strips or clips (valid handwriting)
    test_size: int = 1_000  # test and zero-shot strips, test clips (test handwriting)
    split_seed: int = 0  # how handwriting and numbers are split
    seed: int = 0  # which strips are drawn
    redraw: bool = True  # matching: epochs after the first draw fresh training strips
    augment_shift: int = 0  # matching: training digits moved by up to this many pixels in their slots
    question_kinds: tuple[str, ...] = QUESTION_KINDS  # clips: the question kinds asked, each equally often

    def __post_init__(self) -> None:
        _expect("data", "dataset", self.dataset in DATASETS, " | ".join(DATASETS), self.dataset)
        for key, least in (
            ("train_size", 1),
            ("valid_size", 0),
            ("test_size", 0),
            ("split_seed", 0),
            ("seed", 0),
            ("augment_shift", 0),
        ):
            value = getattr(self, key)
            _expect("data", key, _is_int(value, least), f"an int >= {least}", value)
        _expect("data", "redraw", isinstance(self.redraw, bool), "true or false", self.redraw)
        try:
            object.__setattr__(self, "question_kinds", check_kinds(self.question_kinds))
        except ValueError:
            _expect("data", "question_kinds", False, f"distinct kinds among {', '.join(QUESTION_KINDS)}",
                    self.question_kinds)  # fmt: skip

    @property
    def lang(self) -> str:
        """The caption language, one of :data:`qkv.crossmodal.data.CAPTION_LANGUAGES`."""
        return DATASETS[self.dataset]


@dataclass(frozen=True)
class CrossModalTrainConfig(TrainConfig):
    """The ``[train]`` table of matching and captioning: :class:`~qkv.train.config.TrainConfig`
    with defaults for small models on 20,000 strips (batches of 128: for CLIP, 127 negatives per
    pair); a kind may start from other values (:data:`TRAIN_BY_KIND`)."""

    epochs: int = 8
    batch_size: int = 128
    lr: float = 2e-3
    min_lr: float = 1e-5
    warmup: int = 100
    weight_decay: float = 0.05
    patience: int = 0


#: ``[train]`` values a model kind starts from instead of :class:`CrossModalTrainConfig`'s
#: (a file or an override still wins): the matcher keeps improving to about epoch 12 (image->text
#: R@1 on new handwriting 0.865 after 8 epochs, 0.908 after 14), the captioners and the grounded
#: translator do not (the grounded one learns the training handwriting by heart: 0.957 after 8,
#: 0.929 after 14).
TRAIN_BY_KIND: dict[str, dict[str, Any]] = {"clip": {"epochs": 14}}


@dataclass(frozen=True)
class RunConfig(run_config.RunConfig):
    """A whole cross-modal run: its three tables (``model`` is a dict checked against its
    kind's config dataclass, :data:`MODEL_KINDS`)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: dict(CLIP_PRESETS["clip-strips"]))
    train: CrossModalTrainConfig = field(default_factory=CrossModalTrainConfig)

    MODEL_KINDS, DEFAULT_KIND, model_keys = MODEL_KINDS, "clip", staticmethod(model_keys)
    MODEL_PRESETS, DEFAULT_PRESET = MODEL_PRESETS, "clip"
    TRAIN_BY_KIND = TRAIN_BY_KIND

    def __post_init__(self) -> None:
        super().__post_init__()
        kind = self.model.get("kind", self.DEFAULT_KIND)
        if (kind in VIDEO_QA_KINDS) != (self.data.dataset in CLIP_DATASETS):
            valid = (
                CLIP_DATASETS if kind in VIDEO_QA_KINDS else [d for d in DATASETS if d not in CLIP_DATASETS]
            )
            _expect(
                "data", "dataset", False, f"{' | '.join(valid)} for model kind {kind!r}", self.data.dataset
            )


#: Defaults <- model preset <- file <- overrides, checked: :meth:`RunConfig.resolve`.
resolve = RunConfig.resolve
#: What a resumed run continues with: :meth:`RunConfig.resume`.
resume_config = RunConfig.resume
