"""Training infrastructure, for any model: the loop, checkpoints, progress display and run configs.

- :mod:`qkv.train.loop`: the model-agnostic :class:`Trainer` (optimizer steps, epochs,
  validation, early stopping, exact resume) of a :class:`Task`, and the learning-rate schedule.
- :mod:`qkv.train.checkpoint`: atomic safetensors + JSON checkpoints with exact resume,
  never pickle.
- :mod:`qkv.train.progress`: a progress bar (tqdm) on a terminal, sparse log lines elsewhere.
- :mod:`qkv.train.config`: run configs: defaults, model presets, TOML files, dotted overrides.

What is specific to translation (the ``qkv train`` recipe, decoding, the translator, the
metrics, the demo) lives in :mod:`qkv.translation`. The metrics are still importable from
here, deprecated.
"""

from typing import Any

from .._moved import moved_attribute
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    find_latest,
    load_checkpoint,
    save_checkpoint,
)
from .config import DEFAULTS, MODEL_PRESETS, load_config, resolve
from .loop import RunState, Task, Trainer, TrainResult, learning_rate
from .progress import Progress

__all__ = [
    "DEFAULTS",
    "MODEL_PRESETS",
    "Checkpoint",
    "CheckpointError",
    "CorruptCheckpointError",
    "Progress",
    "RunState",
    "Task",
    "TrainResult",
    "Trainer",
    "UnsafeCheckpointError",
    "find_latest",
    "learning_rate",
    "load_checkpoint",
    "load_config",
    "resolve",
    "save_checkpoint",
]

_MOVED = dict.fromkeys(
    ["aer", "alignment_from_weights", "bleu", "chrf", "exact_match"], "qkv.translation.metrics"
)


def __getattr__(name: str) -> Any:
    """The evaluation metrics, moved to :mod:`qkv.translation.metrics` (deprecated here)."""
    return moved_attribute(__name__, name, _MOVED)
