"""The config of a translation run: the ``[data]``, ``[model]`` and ``[train]`` tables.

::

    qkv train configs/bahdanau.toml --train.epochs=3 --model.hidden_dim=64

:func:`resolve` builds a :class:`RunConfig` from the defaults, a model preset
(:data:`MODEL_PRESETS`), a TOML file and dotted overrides, each table a frozen dataclass that
checks itself (an unknown key is an error listing the valid ones). ``[train]`` is the
model-agnostic :class:`~qkv.train.config.TrainConfig` plus translation's keys
(:class:`TranslationTrainConfig`); the valid ``[model]`` keys are the fields of the model's
config dataclass (:func:`qkv.models.builders.config_keys`). :func:`resume_config` is what a
resumed run may change. The composition is :class:`qkv.application.run_config.RunConfig`'s; inference
reads ``[data]`` and ``[model]`` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..application import run_config
from ..models.builders import MODEL_KINDS, config_keys
from ..train.config import TrainConfig
from ..train.config import expect as _expect

__all__ = [
    "MODEL_PRESETS",
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
class RunConfig(run_config.RunConfig):
    """A whole translation run: its three tables (``model`` is a dict: its keys depend on the
    model's ``kind``, checked against the model's config dataclass); :meth:`to_toml` names the
    ``[model]`` table's preset."""

    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: dict(MODEL_PRESETS["bahdanau"]))
    train: TranslationTrainConfig = field(default_factory=TranslationTrainConfig)

    MODEL_KINDS, DEFAULT_KIND, model_keys = MODEL_KINDS, "seq2seq", staticmethod(config_keys)
    MODEL_PRESETS, DEFAULT_PRESET = MODEL_PRESETS, "bahdanau"

    def preset_name(self) -> str | None:
        return model_preset(self.model)


def model_preset(model: dict[str, Any]) -> str | None:
    """The preset a ``[model]`` table starts from: ``transformer``, or the attention's name."""
    name = "transformer" if model.get("kind") == "transformer" else model.get("attention")
    return name if name in MODEL_PRESETS else None


#: Defaults <- model preset (``bahdanau`` without one) <- file <- overrides, checked: :meth:`RunConfig.resolve`.
resolve = RunConfig.resolve
#: What a resumed run continues with (:data:`~qkv.application.run_config.SAFE_ON_RESUME` may change): :meth:`RunConfig.resume`.
resume_config = RunConfig.resume


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
