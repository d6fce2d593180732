"""Training for any model: the :class:`Trainer` over a :class:`Task`, its ``[train]`` table
(:class:`TrainConfig`), safe atomic checkpoints with exact resume, and progress. Applications
(:mod:`qkv.translation`) bring their tasks and tables."""

from .checkpoint import Checkpoint, CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from .config import TrainConfig, parse_override
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
    "parse_override",
    "progress_bar",
    "save_checkpoint",
]
