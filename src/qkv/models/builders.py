"""Model builders: a translation or an image model from the ``[model]`` table of a training config.

The table names a ``kind`` and any fields of that kind's config dataclass except the ones the
data decides (the vocabulary sizes and the padding id)::

    >>> model = build_model({"kind": "seq2seq", "attention": "luong"}, src_vocab=50, tgt_vocab=60)
    >>> sorted(config_keys("transformer"))[:3]
    ['d_model', 'decoder_layers', 'dropout']

:data:`MODEL_KINDS` is the one place that maps a kind to its model class and config
dataclass; the config validation of :mod:`qkv.application.run_config` reads its keys from
here, so a field added to a config dataclass is a valid ``[model]`` key at once.

Image-text matching models have a third, :data:`MATCHING_KINDS` (``clip``), whose data decides
the images and the caption vocabulary.

Captioners have a fourth, :data:`CAPTION_KINDS` (``captioner``: Show, Attend and Tell;
``captioner-transformer``), whose data decides the images, the vocabulary and its special ids.

Grounded translators have :data:`GROUNDED_KINDS` (``grounded``: a sentence and an image in,
a sentence out), whose data decides what a captioner's does and the longest source sentence.
Video question answering has :data:`VIDEO_QA_KINDS` (``video-qa``), whose data decides the
frames, the question vocabulary and the answers.

Speech recognizers have :data:`SPEECH_KINDS` (``las``, ``speech-transformer``), whose data decides the feature size
and the output vocabulary.

Image models have their own table, :data:`IMAGE_KINDS` (``vit``), since the data decides
other fields (the image size, the channels and the number of classes)::

    >>> vit = build_image_model({"kind": "vit", "patch_size": 2}, image_size=8, channels=1, num_classes=10)
    >>> vit.grid
    (4, 4)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from .captioner import CaptionTransformer, CaptionTransformerConfig, ShowAttendTell, ShowAttendTellConfig
from .clip import CLIP, CLIPConfig
from .grounded import GroundedConfig, GroundedTransformer
from .las import LAS, LASConfig
from .seq2seq import Seq2Seq, Seq2SeqConfig
from .speech_transformer import SpeechTransformer, SpeechTransformerConfig
from .transformer import Transformer, TransformerConfig
from .video_qa import VideoQA, VideoQAConfig
from .vit import ViT, ViTConfig

__all__ = [
    "CAPTION_KINDS",
    "CAPTION_PRESETS",
    "CLIP_PRESETS",
    "GROUNDED_KINDS",
    "GROUNDED_PRESETS",
    "IMAGE_KINDS",
    "KIND_NAMES",
    "MATCHING_KINDS",
    "MODEL_KINDS",
    "SPEECH_KINDS",
    "SPEECH_PRESETS",
    "VIDEO_QA_KINDS",
    "VIDEO_QA_PRESETS",
    "build_caption_model",
    "build_grounded_model",
    "build_image_model",
    "build_matching_model",
    "build_model",
    "build_speech_model",
    "build_video_qa_model",
    "caption_config_keys",
    "config_keys",
    "grounded_config_keys",
    "image_config_keys",
    "matching_config_keys",
    "speech_config_keys",
    "video_qa_config_keys",
]

#: ``kind`` -> (model class, config dataclass).
MODEL_KINDS: dict[str, tuple[type[nn.Module], type]] = {
    "seq2seq": (Seq2Seq, Seq2SeqConfig),
    "transformer": (Transformer, TransformerConfig),
}

#: The kinds in words, for error messages: ``'seq2seq' or 'transformer'``.
KIND_NAMES = " or ".join(map(repr, MODEL_KINDS))

# Config fields the data decides, never the [model] table.
_FROM_DATA = frozenset({"src_vocab", "tgt_vocab", "pad_id"})


def _keys_of(
    kinds: dict[str, tuple[type[nn.Module], type]], kind: object, decided: frozenset[str]
) -> frozenset[str]:
    """The valid keys of a ``[model]`` table of ``kind`` (one of ``kinds``): ``kind`` and the
    fields of its config dataclass but the ones the data decides (``decided``)."""
    if kind not in kinds:
        raise ValueError(f"model.kind: expected {' or '.join(map(repr, kinds))}, got {kind!r}")
    _, config_cls = kinds[kind]
    return frozenset({"kind"} | {f.name for f in dataclasses.fields(config_cls)} - decided)


def _build(
    kinds: dict[str, tuple[type[nn.Module], type]], model_cfg: dict[str, Any], default: str,
    decided: frozenset[str], facts: dict[str, Any], parts: dict[str, nn.Module] | None = None,
) -> nn.Module:  # fmt: skip
    """The model of ``model_cfg`` (``kind`` defaults to ``default``) with the data's ``facts``
    (and ``parts``, modules handed to the model's constructor); a key the table may not hold or
    a fact the data does not decide is a clear error."""
    kind = model_cfg.get("kind", default)
    keys = _keys_of(kinds, kind, decided)
    unknown = sorted(set(model_cfg) - keys)
    if unknown:
        raise ValueError(
            f"model: unknown key(s) {', '.join(unknown)} for kind {kind!r}; expected some of {', '.join(sorted(keys))}"
        )
    extra = sorted(set(facts) - decided)
    if extra:
        raise ValueError(f"facts: unknown {', '.join(extra)}; expected some of {', '.join(sorted(decided))}")
    model_cls, config_cls = kinds[kind]
    return model_cls(
        config_cls(**facts, **{k: v for k, v in model_cfg.items() if k != "kind"}), **(parts or {})
    )


def _check_kind(kind: object) -> str:
    if kind not in MODEL_KINDS:
        raise ValueError(f"model.kind: expected {KIND_NAMES}, got {kind!r}")
    return str(kind)


def config_keys(kind: str) -> frozenset[str]:
    """The valid keys of a ``[model]`` table of this kind: ``kind`` and the fields of its config
    dataclass but the vocabulary sizes and the padding id."""
    return _keys_of(MODEL_KINDS, kind, _FROM_DATA)


def build_model(model_cfg: dict[str, Any], *, src_vocab: int, tgt_vocab: int) -> nn.Module:
    """A :class:`Seq2Seq` or :class:`Transformer` from the ``[model]`` table (``kind`` defaults
    to ``"seq2seq"``)."""
    kind = _check_kind(model_cfg.get("kind", "seq2seq"))
    model_cls, config_cls = MODEL_KINDS[kind]
    fields = {k: v for k, v in model_cfg.items() if k != "kind"}
    return model_cls(config_cls(src_vocab=src_vocab, tgt_vocab=tgt_vocab, **fields))


#: Image classifiers: ``kind`` -> (model class, config dataclass).
IMAGE_KINDS: dict[str, tuple[type[nn.Module], type]] = {"vit": (ViT, ViTConfig)}

# Config fields an image data set decides, never the [model] table.
_FROM_IMAGES = frozenset({"image_size", "image_width", "channels", "num_classes"})


def image_config_keys(kind: str) -> frozenset[str]:
    """The valid keys of an image ``[model]`` table: ``kind`` and the fields of its config
    dataclass but the image size, the channels and the number of classes."""
    return _keys_of(IMAGE_KINDS, kind, _FROM_IMAGES)


def build_image_model(
    model_cfg: dict[str, Any], *, image_size: int, channels: int, num_classes: int
) -> nn.Module:
    """An image classifier (a :class:`ViT`) from its ``[model]`` table (``kind`` defaults to
    ``"vit"``) and the facts of the data."""
    facts = {"image_size": image_size, "channels": channels, "num_classes": num_classes}
    return _build(IMAGE_KINDS, model_cfg, "vit", _FROM_IMAGES, facts)


#: Image-text matching models: ``kind`` -> (model class, config dataclass).
MATCHING_KINDS: dict[str, tuple[type[nn.Module], type]] = {"clip": (CLIP, CLIPConfig)}

# Config fields the images and captions decide, never the [model] table.
_FROM_PAIRS = frozenset({"vocab_size", "image_size", "image_width", "channels", "max_words", "pad_id"})

#: ``[model]`` tables of CLIP models: ``clip-strips`` for the 8 x 32 digit strips (patch 4: a
#: 2 x 8 grid, each digit 2 x 2 patches).
CLIP_PRESETS: dict[str, dict[str, Any]] = {
    "clip-strips": {"kind": "clip", "patch_size": 4, "embed_dim": 64, "vision_dim": 64, "vision_depth": 3,
                    "vision_heads": 4, "vision_mlp_dim": 128, "text_dim": 64, "text_depth": 2,
                    "text_heads": 4, "text_mlp_dim": 128},
}  # fmt: skip


def matching_config_keys(kind: str) -> frozenset[str]:
    """The valid keys of a matching ``[model]`` table: ``kind`` and the fields of its config
    dataclass but the ones the images and captions decide."""
    return _keys_of(MATCHING_KINDS, kind, _FROM_PAIRS)


def build_matching_model(
    model_cfg: dict[str, Any], *, text: nn.Module | None = None, **facts: Any
) -> nn.Module:
    """An image-text matching model (a :class:`CLIP`) from its ``[model]`` table (``kind``
    defaults to ``"clip"``) and the facts of the data: ``vocab_size``, ``image_size``,
    ``image_width``, ``channels``, ``max_words``, ``pad_id``; ``text``: the locked text tower
    of ``text_tower = "minilm"`` (:class:`~qkv.models.locked_text.LockedText`, built by whoever
    holds its weights)."""
    return _build(MATCHING_KINDS, model_cfg, "clip", _FROM_PAIRS, facts, parts={"text": text} if text else {})


#: Captioners: ``kind`` -> (model class, config dataclass).
CAPTION_KINDS: dict[str, tuple[type[nn.Module], type]] = {
    "captioner": (ShowAttendTell, ShowAttendTellConfig),
    "captioner-transformer": (CaptionTransformer, CaptionTransformerConfig),
}

# Config fields the images and captions decide, never the [model] table.
_FROM_CAPTIONS = _FROM_PAIRS | {"start_id", "end_id"}

#: ``[model]`` tables of captioners for the 8 x 32 digit strips (patch 8: a 1 x 4 grid, one
#: patch per digit slot; patch 4, a 2 x 8 grid, reads a quarter digit per patch and captions
#: less well: 0.947 exact match on English test strips against 0.974). Show, Attend and Tell
#: learns its attention from its gold slots (``attention_supervision`` 1): unsupervised, the
#: attention of *hundred* and *thousand*, which the words before them and the number of digits
#: decide, peaks on the digits after their own (attention correctness 0.766 in English). The
#: Transformer decoder learns it too, on its last layer's cross-attention averaged over heads
#: (0.834 unsupervised on 4,000 English strips for 6 epochs, 1.000 supervised).
CAPTION_PRESETS: dict[str, dict[str, Any]] = {
    "captioner": {"kind": "captioner", "patch_size": 8, "dim": 64, "encoder_depth": 1, "encoder_heads": 4,
                  "encoder_mlp_dim": 128, "embed_dim": 32, "hidden_dim": 128, "attention_dim": 64,
                  "stochastic_weight": 0.0, "attention_supervision": 1.0},
    "captioner-transformer": {"kind": "captioner-transformer", "patch_size": 8, "dim": 64,
                              "encoder_depth": 1, "encoder_heads": 4, "encoder_mlp_dim": 128,
                              "decoder_depth": 2, "decoder_heads": 4, "decoder_mlp_dim": 128,
                              "attention_supervision": 1.0},
}  # fmt: skip


def caption_config_keys(kind: str) -> frozenset[str]:
    """The valid keys of a captioner's ``[model]`` table: ``kind`` and the fields of its config
    dataclass but the ones the images and captions decide."""
    return _keys_of(CAPTION_KINDS, kind, _FROM_CAPTIONS)


def build_caption_model(model_cfg: dict[str, Any], **facts: Any) -> nn.Module:
    """A captioner from its ``[model]`` table (``kind`` defaults to ``"captioner"``) and the
    facts of the data: ``vocab_size``, ``image_size``, ``image_width``, ``channels``,
    ``max_words``, ``pad_id``, ``start_id``, ``end_id``."""
    return _build(CAPTION_KINDS, model_cfg, "captioner", _FROM_CAPTIONS, facts)


#: Grounded translators: ``kind`` -> (model class, config dataclass).
GROUNDED_KINDS: dict[str, tuple[type[nn.Module], type]] = {"grounded": (GroundedTransformer, GroundedConfig)}

# Config fields the pairs decide, never the [model] table.
_FROM_GROUNDED = _FROM_CAPTIONS | {"max_source_words"}

#: ``[model]`` tables of grounded translators: ``grounded`` (patch 8, one patch per digit slot,
#: as the captioners; ``--model.use_image=false`` is its text-only control).
GROUNDED_PRESETS: dict[str, dict[str, Any]] = {
    "grounded": {"kind": "grounded", "patch_size": 8, "dim": 64, "encoder_depth": 1, "encoder_heads": 4,
                 "encoder_mlp_dim": 128, "source_depth": 1, "decoder_depth": 2, "decoder_heads": 4,
                 "decoder_mlp_dim": 128, "use_image": True},
}  # fmt: skip


def grounded_config_keys(kind: str) -> frozenset[str]:
    """The valid keys of a grounded translator's ``[model]`` table: ``kind`` and the fields of
    its config dataclass but the ones the pairs decide."""
    return _keys_of(GROUNDED_KINDS, kind, _FROM_GROUNDED)


def build_grounded_model(model_cfg: dict[str, Any], **facts: Any) -> nn.Module:
    """A grounded translator (a :class:`GroundedTransformer`) from its ``[model]`` table
    (``kind`` defaults to ``"grounded"``) and the facts of the pairs: a captioner's
    (:func:`build_caption_model`) and ``max_source_words``."""
    return _build(GROUNDED_KINDS, model_cfg, "grounded", _FROM_GROUNDED, facts)


#: Speech recognizers: ``kind`` -> (model class, config dataclass).
SPEECH_KINDS: dict[str, tuple[type[nn.Module], type]] = {
    "las": (LAS, LASConfig),
    "speech-transformer": (SpeechTransformer, SpeechTransformerConfig),
}

# Config fields the features and the transcripts decide, never the [model] table.
_FROM_SPEECH = frozenset({"n_mels", "vocab_size"})

#: ``[model]`` tables of speech recognizers: ``las`` (additive attention) and ``las-location``
#: (location-aware, Chorowski et al. 2015), each a two-layer listener over frames stacked by 3
#: (one state per 6 frames); ``speech-transformer``, two stride-2 convolutions (one state per 4
#: frames), 3 encoder and 2 decoder blocks of width 96, the subsampled states layer-normalised
#: before the positions (``front_norm``) and trained jointly with CTC (``ctc_weight`` 0.3): the
#: recipe that learned fastest per CPU-second (docs/guides/speech.md).
SPEECH_PRESETS: dict[str, dict[str, Any]] = {
    "las": {"kind": "las", "attention": "additive"},
    "las-location": {"kind": "las", "attention": "location"},
    "speech-transformer": {"kind": "speech-transformer", "subsample": 2, "d_model": 96, "heads": 4,
                           "encoder_layers": 3, "decoder_layers": 2, "ff_dim": 256, "front_norm": True,
                           "ctc_weight": 0.3},
}  # fmt: skip


def speech_config_keys(kind: str) -> frozenset[str]:
    """The valid keys of a speech ``[model]`` table: ``kind`` and the fields of its config
    dataclass but the ones the data decides."""
    return _keys_of(SPEECH_KINDS, kind, _FROM_SPEECH)


def build_speech_model(model_cfg: dict[str, Any], *, n_mels: int, vocab_size: int) -> nn.Module:
    """A speech recognizer (a :class:`LAS` or a :class:`SpeechTransformer`) from its ``[model]`` table (``kind`` defaults to
    ``"las"``) and the data's feature size and vocabulary size."""
    return _build(SPEECH_KINDS, model_cfg, "las", _FROM_SPEECH, {"n_mels": n_mels, "vocab_size": vocab_size})


#: Video question answering: ``kind`` -> (model class, config dataclass).
VIDEO_QA_KINDS: dict[str, tuple[type[nn.Module], type]] = {"video-qa": (VideoQA, VideoQAConfig)}

# Config fields the clips, questions and answers decide, never the [model] table.
_FROM_CLIPS = frozenset(
    {"vocab_size", "num_answers", "frame_classes", "max_words", "pad_id", "max_frames", "frame_size"}
    | {"channels"}
)

#: ``[model]`` tables of video question answering on 12 x 12 digit clips (patch 4: a 3 x 3
#: grid per frame; a per-frame digit loss of weight 1, ``--model.frame_loss_weight=0`` for none;
#: each frame's token also shows the frame before it, ``--model.previous_frame=false`` for not);
#: ``--model.variant=question_only`` or ``frames_averaged`` for the controls.
VIDEO_QA_PRESETS: dict[str, dict[str, Any]] = {
    "video-qa": {"kind": "video-qa", "patch_size": 4, "frame_depth": 2, "dim": 64, "heads": 4, "mlp_dim": 128,
                 "temporal_depth": 2, "question_depth": 2, "cross_depth": 1, "frame_loss_weight": 1.0,
                 "previous_frame": True},
}  # fmt: skip


def video_qa_config_keys(kind: str) -> frozenset[str]:
    """The valid keys of a video question answering ``[model]`` table: ``kind`` and the fields
    of its config dataclass but the ones the clips decide."""
    return _keys_of(VIDEO_QA_KINDS, kind, _FROM_CLIPS)


def build_video_qa_model(model_cfg: dict[str, Any], **facts: Any) -> nn.Module:
    """A video question answering model (a :class:`VideoQA`) from its ``[model]`` table
    (``kind`` defaults to ``"video-qa"``) and the facts of the data: ``vocab_size``,
    ``num_answers``, ``frame_classes``, ``max_words``, ``pad_id``, ``max_frames``, ``frame_size``,
    ``channels``."""
    return _build(VIDEO_QA_KINDS, model_cfg, "video-qa", _FROM_CLIPS, facts)
