"""The model-agnostic training loop: optimizer steps, epochs, validation, checkpoints, exact resume.

A :class:`Trainer` trains any model a :class:`Task` describes (its batches, its loss, its
validation); it knows nothing of translation. :func:`qkv.translation.train`, what
``qkv train`` runs, builds a translation task, model and optimizer from a config and hands
them to a Trainer. The pieces, in the spirit of minGPT's ``trainer.py``:

- :meth:`Trainer.fit` runs epochs until the step budget, early stopping or an interruption;
- :meth:`Trainer.run_epoch` takes the optimizer steps of one epoch (:meth:`Trainer.step`);
- :meth:`Trainer.end_epoch` validates, records the epoch, checkpoints and decides early stopping;
- :meth:`Trainer.save` writes the run's checkpoint.

Runs resume exactly: everything random (dropout, teacher-forcing coins) draws from torch's
global generator, whose state is checkpointed; the batch order of an epoch must be a pure
function of ``(seed, epoch)`` (a task's contract), so a resumed run skips the batches already
done; the learning rate is a function of the step (:func:`learning_rate`). On CPU a run
interrupted after K/2 steps and resumed gives bitwise the same weights and losses as a run of
K steps. Ctrl-C (KeyboardInterrupt) saves a checkpoint at the current batch and returns cleanly.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, TextIO

import torch
from torch import Tensor, nn

from .._moved import moved_attribute
from .checkpoint import Checkpoint, find_latest, load_checkpoint, save_checkpoint
from .progress import Progress

__all__ = [
    "RunState",
    "Task",
    "TrainResult",
    "Trainer",
    "learning_rate",
    "open_run",
    "seed_everything",
    "torch_threads",
]

# The translation recipe that used to live here: qkv.translation.training (deprecated names below).
_MOVED = {
    "build_model": "qkv.models.builders",
    "load_corpus": "qkv.translation.training",
    "prepare_data": "qkv.translation.training",
    "train": "qkv.translation.training",
    "validation_loss": "qkv.translation.training",
    "_loss": "qkv.translation.training",
    "_max_len": "qkv.translation.training",
    "_SORT_WITHIN": "qkv.translation.training",
}


def __getattr__(name: str) -> Any:
    """Deprecated names, moved out of the model-agnostic loop (see :mod:`qkv._moved`)."""
    return moved_attribute(__name__, name, _MOVED)


class Task(Protocol):
    """What a :class:`Trainer` needs to know about a model family and its data.

    Attributes:
        batches_per_epoch: the number of batches :meth:`batches` yields from ``start=0``.
        count_unit: what :meth:`loss` counts (``"target tok"``), for the epoch summary line.
    """

    batches_per_epoch: int
    count_unit: str

    def batches(self, epoch: int, start: int) -> Iterable[Any]:
        """The batches of ``epoch`` from batch ``start`` on; a pure function of the seed and
        ``epoch``, so a resumed run continues where it stopped."""
        ...

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, int]:
        """The mean loss of a batch (to minimize) and the number of units it averages over."""
        ...

    def validate(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics: ``valid_loss`` (lower is better; early stopping and the ``best/``
        checkpoint follow it) and any others (recorded and printed with the epoch)."""
        ...


def learning_rate(step: int, t: dict[str, Any], total_steps: int) -> float:
    """The learning rate at optimizer step ``step`` (0-based): linear warm-up, then the schedule."""
    lr, warm = float(t["lr"]), int(t["warmup"])
    if warm and step < warm:
        return lr * (step + 1) / warm
    if t["schedule"] == "constant":
        return lr
    if t["schedule"] == "inverse_sqrt":
        return lr * math.sqrt(max(warm, 1)) / math.sqrt(step + 1)
    progress = min(1.0, (step - warm) / max(1, total_steps - warm))
    return float(t["min_lr"]) + 0.5 * (lr - float(t["min_lr"])) * (1 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators."""
    random.seed(seed)
    torch.manual_seed(seed)


def open_run(out_dir: str | Path, *, resume: bool) -> Checkpoint | None:
    """The latest checkpoint of a run to resume, or None for a new run.

    Raises:
        FileNotFoundError: ``resume`` but ``out_dir`` holds no checkpoint.
        FileExistsError: not ``resume`` but ``out_dir`` already holds a run (never overwritten).
    """
    out = Path(out_dir)
    if resume:
        if find_latest(out) is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {str(out)!r}")
        return load_checkpoint(out)
    if find_latest(out) is not None:
        raise FileExistsError(
            f"out: {str(out)!r} already holds a run; pass --resume to continue it or choose another --out"
        )
    return None


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch CPU threads (0 or None: torch's default), restored after."""
    before = torch.get_num_threads()
    if int(threads or 0) > 0:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class RunState:
    """Everything a resumed run needs to continue exactly: plain numbers, checkpointed as JSON
    (the ``state`` of each checkpoint)."""

    epoch: int = 0
    batch: int = 0  # batches of the current epoch done
    step: int = 0
    best: float = math.inf  # the best validation loss
    bad_epochs: int = 0  # epochs since it improved
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # training time over all sessions
    epoch_loss: float = 0.0  # sum of loss x count over the current epoch
    epoch_tokens: int = 0
    finished: bool = False  # stopped early

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> RunState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in names})


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns: the run directory, the step reached, per-epoch history,
    the best validation loss, and whether it stopped early or was interrupted."""

    out_dir: Path
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best_valid_loss: float = math.inf
    stopped_early: bool = False
    interrupted: bool = False
    seconds: float = 0.0


class Trainer:
    """Trains ``model`` on ``task`` with ``optimizer``; checkpoints go to ``out_dir``.

    Args:
        settings: the ``[train]`` table: ``epochs``, ``max_steps``, the learning-rate schedule
            (``lr``, ``warmup``, ``schedule``, ``min_lr``), ``clip``, ``save_every``,
            ``keep`` and ``patience`` (see :data:`qkv.train.config.DEFAULTS`).
        config, vocab: stored in every checkpoint (the run's full config; its vocabularies).
        desc: the progress bar's label; progress: show it on ``stream`` (stderr).
    """

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, task: Task, *, settings: dict[str, Any],
        out_dir: str | Path, config: dict[str, Any], vocab: dict[str, Any] | None = None,
        desc: str = "train", progress: bool = True, stream: TextIO | None = None,
    ):  # fmt: skip
        self.model, self.optimizer, self.task, self.t = model, optimizer, task, settings
        self.out, self.config, self.vocab = Path(out_dir), config, vocab
        self.desc, self.progress = desc, progress
        self.stream = sys.stderr if stream is None else stream
        self.state = RunState()
        total = int(settings["epochs"]) * task.batches_per_epoch
        self.total_steps = min(total, int(settings["max_steps"])) if settings["max_steps"] else total
        self.bar: Progress | None = None
        self._started, self._seconds_before, self._steps_here = 0.0, 0.0, 0

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint``: weights, optimizer, global RNG state and the run state."""
        checkpoint.restore(self.model, self.optimizer, rng=True)
        self.state = RunState.from_dict(checkpoint.state)

    # ---- the run

    def fit(self, *, stop_after_steps: int | None = None) -> TrainResult:
        """Train until the last epoch, ``max_steps``, early stopping or Ctrl-C.

        Args:
            stop_after_steps: stop (and checkpoint) after this many optimizer steps in this call,
                as an interruption would (tests use it to check exact resumption).
        """
        st = self.state
        result = TrainResult(
            out_dir=self.out, step=st.step, history=list(st.history), best_valid_loss=st.best
        )
        self._started, self._seconds_before, self._steps_here = time.perf_counter(), st.seconds, 0
        if self.progress:
            self.bar = Progress(self.total_steps, desc=self.desc, stream=self.stream)
        self.model.train()
        try:
            while st.epoch < int(self.t["epochs"]) and st.step < self.total_steps:
                counted, seconds = self.run_epoch(stop_after_steps)
                if self._stopped_mid_epoch(stop_after_steps):
                    result.interrupted = True
                    break
                if self.end_epoch(counted / max(seconds, 1e-9)):
                    result.stopped_early = True
                    break
        except KeyboardInterrupt:
            result.interrupted = True
            self._say("interrupted: saving a checkpoint...")
        finally:
            if self.bar is not None:
                self.bar.close()
        if result.interrupted:
            self.save()
            print(f"checkpoint saved at step {st.step}; continue with --resume", file=self.stream)
        result.step, result.history, result.best_valid_loss = st.step, list(st.history), st.best
        result.seconds = self._seconds()
        return result

    def run_epoch(self, stop_after_steps: int | None = None) -> tuple[int, float]:
        """The optimizer steps of the current epoch, from the batch it stopped at; returns the
        units counted and the seconds taken. Stops early at the step budget or after
        ``stop_after_steps`` steps of this :meth:`fit`."""
        st, t = self.state, self.t
        started, counted = time.perf_counter(), 0
        for i, batch in enumerate(self.task.batches(st.epoch, st.batch), start=st.batch):
            loss, count = self.step(batch)
            st.batch = i + 1
            st.epoch_loss += loss * count
            st.epoch_tokens += count
            counted += count
            if self.bar is not None:
                rate = counted / max(time.perf_counter() - started, 1e-9)
                self.bar.update(1, epoch=st.epoch + 1, loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}")
            if t["save_every"] and st.step % int(t["save_every"]) == 0:
                self.save()
            if st.step >= self.total_steps or self._budget_spent(stop_after_steps):
                break
        return counted, time.perf_counter() - started

    def step(self, batch: Any) -> tuple[float, int]:
        """One optimizer step on ``batch``; returns the loss and the units it averaged over."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.state.step, self.t, self.total_steps)
        loss, count = self.task.loss(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.t["clip"]:
            nn.utils.clip_grad_norm_(self.model.parameters(), float(self.t["clip"]))
        self.optimizer.step()
        self.state.step += 1
        self._steps_here += 1
        return float(loss.detach()), count

    def end_epoch(self, count_per_s: float) -> bool:
        """Validate, record and checkpoint the epoch just finished (and ``best/`` when it
        improved); returns True to stop early (``patience`` epochs without improvement)."""
        st = self.state
        metrics = self.task.validate(self.model)
        self.model.train()  # validation may leave the model in eval mode (decoding does)
        vloss = metrics["valid_loss"]
        record = {
            "epoch": st.epoch + 1,
            "step": st.step,
            "train_loss": st.epoch_loss / max(st.epoch_tokens, 1),
            "valid_loss": vloss,
            "tokens_per_s": count_per_s,
            **metrics,
        }
        st.history.append(record)
        st.epoch += 1
        st.batch, st.epoch_loss, st.epoch_tokens = 0, 0.0, 0
        improved = vloss < st.best - 1e-6
        st.best, st.bad_epochs = (vloss, 0) if improved else (st.best, st.bad_epochs + 1)
        self._say(self._epoch_line(record, metrics))
        self.save()
        if improved:
            save_checkpoint(self.out / "best", model=self.model, step=st.step, config=self.config,
                            vocab=self.vocab, metrics={"valid_loss": vloss, **record}, state={}, keep=1)  # fmt: skip
        if not (self.t["patience"] and st.bad_epochs >= int(self.t["patience"])):
            return False
        st.finished = True
        self.save()
        self._say(f"early stopping: no better validation loss for {st.bad_epochs} epochs")
        return True

    def save(self) -> None:
        """Checkpoint the run: weights, optimizer, RNG and :class:`RunState` (``keep`` kept)."""
        st = self.state
        st.seconds = self._seconds()
        save_checkpoint(
            self.out, model=self.model, optimizer=self.optimizer, step=st.step, config=self.config,
            vocab=self.vocab, metrics={"history": st.history}, state=asdict(st), keep=int(self.t["keep"]),
        )  # fmt: skip

    # ---- helpers

    def _seconds(self) -> float:
        return self._seconds_before + time.perf_counter() - self._started

    def _budget_spent(self, stop_after_steps: int | None) -> bool:
        return stop_after_steps is not None and self._steps_here >= stop_after_steps

    def _stopped_mid_epoch(self, stop_after_steps: int | None) -> bool:
        st = self.state
        return (
            self._budget_spent(stop_after_steps)
            and st.batch < self.task.batches_per_epoch
            and st.step < self.total_steps
        )

    def _epoch_line(self, record: dict[str, Any], metrics: dict[str, float]) -> str:
        """``epoch 3: train loss 0.4210, valid loss 0.5120, valid exact match 0.870, 9,512 target tok/s``"""
        extra = "".join(f", {k.replace('_', ' ')} {v:.3f}" for k, v in metrics.items() if k != "valid_loss")
        return (
            f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, valid loss {record['valid_loss']:.4f}"
            f"{extra}, {record['tokens_per_s']:,.0f} {self.task.count_unit}/s"
        )

    def _say(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
