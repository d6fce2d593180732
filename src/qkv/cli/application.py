"""Which application a command serves: translation, vision, crossmodal or speech, from an explicit small mapping.

``qkv train`` reads it from the model preset (``--model``), else the config file's ``[model]``
table, else ``--data`` (a built-in image data set or a folder), and ``qkv train --resume --out
DIR`` from the run; ``qkv evaluate`` from the ``[model]`` kind stored in the checkpoint. Nothing is guessed beyond these tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "APPLICATION_OF_KIND",
    "CROSSMODAL_DATASETS",
    "CROSSMODAL_PRESETS",
    "SPEECH_DATASETS",
    "SPEECH_PRESETS",
    "VISION_DATASETS",
    "VISION_PRESETS",
    "kind_of_checkpoint",
    "of_checkpoint",
    "of_train_args",
]

#: ``[model] kind`` -> the application that trains and evaluates it.
APPLICATION_OF_KIND = {
    "seq2seq": "translation",
    "transformer": "translation",
    "vit": "vision",
    "clip": "crossmodal",
    "captioner": "crossmodal",
    "captioner-transformer": "crossmodal",
    "grounded": "crossmodal",
    "video-qa": "crossmodal",
    "las": "speech",
    "speech-transformer": "speech",
}
#: The ``--model`` presets of vision (:data:`qkv.vision.config.MODEL_PRESETS`); the others are translation's.
VISION_PRESETS = ("vit", "vit-digits", "vit-fashion-mnist", "vit-located")
#: The built-in image data sets (:data:`qkv.vision.config.DATASETS`).
VISION_DATASETS = ("digits", "fashion-mnist", "located-digits")
#: The ``--model`` presets of crossmodal (:data:`qkv.crossmodal.config.MODEL_PRESETS`).
CROSSMODAL_PRESETS = ("clip", "clip-strips", "captioner", "captioner-transformer", "grounded", "video-qa")
#: The built-in data sets of crossmodal (:data:`qkv.crossmodal.config.DATASETS`).
CROSSMODAL_DATASETS = (
    "digit-strips",
    "digit-strips-fr",
    "digit-strips-de",
    "digit-strips-digits",
    "digit-clips",
)

#: The ``--model`` presets of speech (:data:`qkv.speech.config.MODEL_PRESETS`).
SPEECH_PRESETS = ("las", "las-location", "speech-transformer")
#: The built-in data sets of speech (:data:`qkv.speech.config.DATASETS`).
SPEECH_DATASETS = ("spoken-numbers",)


def of_train_args(preset: str | None, file_config: dict[str, Any], data: str | None) -> str:
    """``"vision"``, ``"crossmodal"``, ``"speech"`` or ``"translation"`` for ``qkv train``: the
    preset's, else the config file's ``[model]`` (its ``preset`` or ``kind``), else ``--data`` (an
    image data set or a folder is vision, digit strips and clips crossmodal, spoken numbers speech), else
    translation."""
    model = file_config.get("model", {})
    if preset is None:
        preset = model.get("preset")
    if preset is not None:
        if preset in CROSSMODAL_PRESETS:
            return "crossmodal"
        if preset in SPEECH_PRESETS:
            return "speech"
        return "vision" if preset in VISION_PRESETS else "translation"
    if "kind" in model:
        return APPLICATION_OF_KIND.get(model["kind"], "translation")
    if data in CROSSMODAL_DATASETS:
        return "crossmodal"
    if data in SPEECH_DATASETS:
        return "speech"
    if data is not None and (data in VISION_DATASETS or Path(data).is_dir()):
        return "vision"
    return "translation"


def kind_of_checkpoint(path: str | Path) -> str:
    """The ``[model]`` kind a run directory (or checkpoint) of ``qkv train`` stored; ``seq2seq``
    when there is nothing to read (the loader reports the error)."""
    import warnings

    from ..train.checkpoint import CheckpointError, load_checkpoint

    try:
        with warnings.catch_warnings():  # the loader reports damaged checkpoints itself
            warnings.simplefilter("ignore")
            config = load_checkpoint(path, verify=False).config
    except (CheckpointError, OSError):
        return "seq2seq"
    return str(config.get("model", {}).get("kind", "seq2seq"))


def of_checkpoint(path: str | Path) -> str:
    """The application of a run directory (or checkpoint) of ``qkv train``: from the ``[model]``
    kind it stored (:func:`kind_of_checkpoint`); translation when there is nothing to read."""
    return APPLICATION_OF_KIND.get(kind_of_checkpoint(path), "translation")
