"""The model-agnostic ``[train]`` table of a run: :class:`TrainConfig`, a frozen dataclass that
checks itself, and :func:`expect`, the one check that names the table, the key, what was expected
and what came. An application adds its own keys by subclassing :class:`TrainConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["TrainConfig", "expect"]


def expect(table: str, key: str, ok: bool, expected: str, got: Any) -> None:
    """Raise ``ValueError("config [table] key: expected ..., got ...")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"config [{table}] {key}: expected {expected}, got {got!r}")


def _is_int(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _is_number(value: Any, least: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= least


@dataclass(frozen=True)
class TrainConfig:
    """What any training run needs (the ``[train]`` table); every check in ``__post_init__``."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    min_lr: float = 1e-4
    schedule: str = "cosine"  # constant | cosine | inverse_sqrt
    warmup: int = 100  # steps of linear warm-up
    clip: float = 1.0  # gradient-norm clipping (0 = off)
    weight_decay: float = 0.0
    patience: int = 3  # early stopping: epochs without a better validation loss (0 = off)
    seed: int = 0
    max_steps: int = 0  # stop after this many optimizer steps (0 = no limit)
    save_every_minutes: float = 5.0  # also checkpoint every N minutes (0 = off)
    save_every_steps: int = 0  # also checkpoint every N optimizer steps (0 = off)
    keep_last: int = 2  # the newest checkpoints kept (best/ apart)
    threads: int = 1  # torch CPU threads (0 = torch's default); 2 threads beside a busy process: 3.6x slower

    def __post_init__(self) -> None:
        for key, least in (("epochs", 1), ("batch_size", 1), ("keep_last", 1)):
            expect("train", key, _is_int(getattr(self, key), least), f"an int >= {least}", getattr(self, key))
        for key in ("warmup", "patience", "seed", "max_steps", "save_every_steps", "threads"):
            expect("train", key, _is_int(getattr(self, key), 0), "an int >= 0", getattr(self, key))
        for key in ("min_lr", "clip", "weight_decay", "save_every_minutes"):
            expect("train", key, _is_number(getattr(self, key), 0), "a number >= 0", getattr(self, key))
        expect("train", "lr", _is_number(self.lr, 0) and self.lr > 0, "a number > 0", self.lr)
        schedules = ("constant", "cosine", "inverse_sqrt")
        expect("train", "schedule", self.schedule in schedules, " | ".join(schedules), self.schedule)
