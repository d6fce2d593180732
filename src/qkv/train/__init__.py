"""Training for any model: the :class:`Trainer` over a :class:`Task`, its ``[train]`` table
(:class:`TrainConfig`), safe atomic checkpoints with exact resume, and progress. Applications
(:mod:`qkv.application`) bring their tasks and tables."""

from .checkpoint import Checkpoint, CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .loop import RunState, Task, Trainer, TrainResult, learning_rate
from .progress import progress_bar

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "RunState",
    "Task",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "learning_rate",
    "list_checkpoints",
    "load_checkpoint",
    "progress_bar",
    "save_checkpoint",
]
