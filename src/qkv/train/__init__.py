"""Training for any model: the :class:`Trainer` over a :class:`Task` (:mod:`~qkv.train.loop`),
its ``[train]`` table (:class:`TrainConfig`), safe atomic checkpoints with exact resume
(:mod:`~qkv.train.checkpoint`, :mod:`~qkv.train.rng`, :mod:`~qkv.train.atomic`) and progress
(:mod:`~qkv.train.progress`). Applications (:mod:`qkv.translation`) bring their tasks and tables.
"""

from .checkpoint import Checkpoint, CheckpointError, find_latest, load_checkpoint, save_checkpoint
from .config import TrainConfig, load_toml, parse_override
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
    "find_latest",
    "learning_rate",
    "load_checkpoint",
    "load_toml",
    "parse_override",
    "progress_bar",
    "save_checkpoint",
]
