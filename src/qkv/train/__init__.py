"""Training infrastructure: checkpoints, evaluation metrics and progress display.

- :mod:`qkv.train.checkpoint`: atomic safetensors + JSON checkpoints with exact resume,
  never pickle.
- :mod:`qkv.train.metrics`: BLEU, chrF, exact match (sacrebleu), attention-derived word
  alignments and the alignment error rate.
- :mod:`qkv.train.progress`: a progress bar that redraws on a terminal and logs sparsely
  elsewhere.
"""

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    UnsafeCheckpointError,
    find_latest,
    load_checkpoint,
    save_checkpoint,
)
from .metrics import aer, alignment_from_weights, bleu, chrf, exact_match
from .progress import Progress

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Progress",
    "UnsafeCheckpointError",
    "aer",
    "alignment_from_weights",
    "bleu",
    "chrf",
    "exact_match",
    "find_latest",
    "load_checkpoint",
    "save_checkpoint",
]
