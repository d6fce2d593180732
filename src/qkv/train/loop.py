"""The model-agnostic training loop, in the spirit of minGPT's ``trainer.py``.

A :class:`Trainer` trains the model of a :class:`Task` epoch by epoch. A run resumes bitwise (on
CPU): the global generators are checkpointed, an epoch's batch order is a pure function of
``(seed, epoch)`` (a task's contract) and the learning rate one of the step. SIGINT and SIGTERM
stop at the next step boundary with a checkpoint (exit code 130 / 143); a second one stops at
once, the step under way rewound (never mid-update). SIGKILL loses at most ``save_every_minutes``
/ ``save_every_steps`` of work.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import torch
from torch import Tensor, nn

from .checkpoint import Checkpoint, save_checkpoint
from .config import TrainConfig
from .progress import progress_bar
from .rng import rng_state, set_rng_state

__all__ = ["RunState", "Task", "TrainResult", "Trainer", "learning_rate"]


class Task(Protocol):
    """What a :class:`Trainer` needs to know of a model family and its data: the batches of an
    epoch, and the unit its loss counts (``"target tok"``) for the epoch line."""

    batches_per_epoch: int
    count_unit: str

    def batches(self, epoch: int, start: int) -> Iterable[Any]:
        """The batches of ``epoch`` from batch ``start`` on: a pure function of the seed and epoch."""

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, int]:
        """The mean loss of a batch and the number of units it averages over."""

    def validate(self, model: nn.Module) -> dict[str, float | None]:
        """``valid_loss`` (lower is better; None when there is nothing to validate on) and others."""


def learning_rate(step: int, config: TrainConfig, total_steps: int) -> float:
    """The learning rate at optimizer step ``step`` (0-based): linear warm-up, then the schedule."""
    lr, warm = config.lr, config.warmup
    if warm and step < warm:
        return lr * (step + 1) / warm
    if config.schedule == "constant":
        return lr
    if config.schedule == "inverse_sqrt":
        return lr * math.sqrt(max(warm, 1)) / math.sqrt(step + 1)
    progress = min(1.0, (step - warm) / max(1, total_steps - warm))
    return config.min_lr + 0.5 * (lr - config.min_lr) * (1 + math.cos(math.pi * progress))


@dataclass
class RunState:
    """Where a run is: plain numbers, stored in every checkpoint as JSON."""

    epoch: int = 0
    batch: int = 0  # batches of the current epoch done
    step: int = 0
    best_valid_loss: float = math.inf
    bad_epochs: int = 0  # epochs since it improved
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # training time over all sessions
    epoch_loss: float = 0.0  # sum of loss x count over the current epoch
    epoch_tokens: int = 0
    epoch_seconds: float = 0.0  # seconds in the steps of the current epoch, over all sessions
    stopped_early: bool = False  # no better validation loss for ``patience`` epochs
    world_size: int = 1  # the processes training it (qkv.parallel): a resume needs as many


@dataclass
class TrainResult(RunState):
    """What :meth:`Trainer.fit` returns: the run state, and whether the run was ``interrupted``
    before its end (by ``stop_signal``, or by ``stop_after_steps`` when None)."""

    interrupted: bool = False
    stop_signal: int | None = None

    @property
    def exit_code(self) -> int:
        """0 when the run ended by itself, else 128 + the signal (130, as SIGINT, for another stop)."""
        return 128 + (self.stop_signal or signal.SIGINT) if self.interrupted else 0


class Trainer:
    """Trains ``model`` on ``task`` with ``optimizer`` as ``config`` says; checkpoints (holding
    ``run_config``, the application's whole config, and ``vocab``) go to ``out_dir``. Progress
    shows on ``stream`` (stderr) when ``progress``; the lines about resuming and stopping show
    either way. ``clock`` times ``save_every_minutes`` (tests pass a fake one). ``group``: None,
    or the ``qkv.parallel.Group`` this trainer is a rank of (``qkv.parallel.data_parallel`` sets
    it): its writer alone writes checkpoints, the others wait at a barrier, and it decides every
    stop for all ranks (``agree_stop``; the signals are its own)."""

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, task: Task, *, config: TrainConfig,
        out_dir: str | Path, run_config: dict[str, Any], vocab: Any = None, desc: str = "train",
        progress: bool = True, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
    ):  # fmt: skip
        self.model, self.optimizer, self.task, self.config = model, optimizer, task, config
        self.out, self.run_config, self.vocab = Path(out_dir), run_config, vocab
        self.desc, self.progress, self.clock = desc, progress, clock
        self.stream = sys.stderr if stream is None else stream
        self.state, self.bar, self.group = RunState(), None, None
        self._last_save, self._saved_step, self._steps_here, self._seconds_before = 0.0, -1, 0, 0.0
        self._stop_signal: int | None = None  # the signal that asked the run to stop
        self._phase: str | None = None  # "step": forward/backward; "update": weights changing
        self._rng_at_step: dict[str, Any] | None = None

    @property
    def total_steps(self) -> int:
        total = self.config.epochs * self.task.batches_per_epoch
        return min(total, self.config.max_steps) if self.config.max_steps else total

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint``: weights, optimizer, random generators, run state."""
        checkpoint.restore(self.model, self.optimizer)
        self.state, self._saved_step = RunState(**checkpoint.state), checkpoint.step

    def fit(self, *, stop_after_steps: int | None = None) -> TrainResult:
        """Train until the end, early stopping or a stop; ``stop_after_steps`` stops (and
        checkpoints) after that many steps of this call, as a signal would."""
        st = self.state
        self._started, self._seconds_before, self._steps_here = time.perf_counter(), st.seconds, 0
        self._last_save, self._stop_signal, self._phase = self.clock(), None, None
        if self.progress:
            self.bar = progress_bar(self.total_steps, initial=min(st.step, self.total_steps), desc=self.desc,
                                    stream=self.stream)  # fmt: skip
        if st.step > 0 and self._work_left():
            self._print(f"resuming from step {st.step} of {self.total_steps} (epoch {st.epoch + 1}, "
                        f"batch {st.batch} of {self.task.batches_per_epoch})", always=True)  # fmt: skip
        with self._stop_signals():
            consistent = self._fit(stop_after_steps)
        interrupted = self._work_left()
        if interrupted:
            self._save_interrupted(consistent)
        st.seconds = self._seconds()
        stop_signal = self._stop_signal if interrupted else None
        return TrainResult(**asdict(st), interrupted=interrupted, stop_signal=stop_signal)

    def _fit(self, stop_after_steps: int | None) -> bool:
        """The epochs; False when a KeyboardInterrupt left the weights half updated."""
        self.model.train()
        try:
            while self._work_left() and not self._should_stop(stop_after_steps):
                self.run_epoch(stop_after_steps)
                mid_epoch = self.state.batch < self.task.batches_per_epoch
                if self._should_stop(stop_after_steps) and (mid_epoch or self._stop_signal is not None):
                    break  # end_epoch (validation can take a while) comes after the resume
                self.end_epoch()  # early stopping ends the loop (no work left)
        except KeyboardInterrupt:  # mid-step (no handler, or a second signal): the step is abandoned
            if self._phase == "step" and self._rng_at_step is not None:
                set_rng_state(self._rng_at_step)  # as if the step had never begun
            return self._phase != "update"
        finally:
            self._phase = None
            if self.bar is not None:
                self.bar.close()
        return True

    def _save_interrupted(self, consistent: bool) -> None:
        st, why = self.state, signal.Signals(self._stop_signal).name if self._stop_signal else "interrupted"
        if not consistent:
            self._print(f"{why} during the weight update of step {st.step + 1}: nothing saved (the weights "
                        f"are half updated); the last checkpoint (step {self._saved_step}) stands; continue "
                        "with --resume", always=True)  # fmt: skip
            return
        self._print(f"{why}: stopping after step {st.step}, saving a checkpoint...", always=True)
        if self._saved_step != st.step:
            self.save()
        self._print(f"checkpoint saved at step {st.step}; continue with --resume", always=True)

    def run_epoch(self, stop_after_steps: int | None = None) -> None:
        """The optimizer steps of the current epoch from the batch it stopped at, until its end,
        the step budget or a stop; saves the periodic checkpoints."""
        st = self.state
        for i, batch in enumerate(self.task.batches(st.epoch, st.batch), start=st.batch):
            began, self._rng_at_step, self._phase = time.perf_counter(), rng_state(), "step"
            loss, count = self.step(batch)  # enters the "update" phase before the optimizer step
            st.batch = i + 1
            st.epoch_loss += loss * count
            st.epoch_tokens += count
            self._phase = None  # a step boundary: the state is whole again
            st.epoch_seconds += time.perf_counter() - began
            if self.bar is not None:
                rate = st.epoch_tokens / max(st.epoch_seconds, 1e-9)  # this epoch's, over its steps
                self.bar.set_postfix(
                    epoch=st.epoch + 1, loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}", refresh=False
                )
                self.bar.update(1)
            if st.step >= self.total_steps or self._should_stop(stop_after_steps):
                break
            if st.batch < self.task.batches_per_epoch:  # end_epoch saves the epoch's last step
                self._periodic_save()

    def step(self, batch: Any) -> tuple[float, int]:
        """One optimizer step on ``batch``; returns the loss and the units it averaged over."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.state.step, self.config, self.total_steps)
        loss, count = self.task.loss(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip)
        self._phase = "update"
        self.optimizer.step()
        self.state.step += 1
        self._steps_here += 1
        return float(loss.detach()), count

    def end_epoch(self) -> bool:
        """Validate, record and checkpoint the epoch just finished (and ``best/`` when it
        improved); True to stop early (``patience`` epochs without improvement)."""
        st = self.state
        metrics = self.task.validate(self.model)
        self.model.train()  # validation may leave the model in eval mode
        vloss = metrics.get("valid_loss")
        self._phase = "update"
        rate = st.epoch_tokens / st.epoch_seconds if st.epoch_seconds > 0 else 0.0
        train_loss = st.epoch_loss / max(st.epoch_tokens, 1)
        record = {"epoch": st.epoch + 1, "step": st.step, "train_loss": train_loss, "valid_loss": vloss,
                  "tokens_per_s": rate, **metrics}  # fmt: skip
        st.history.append(record)
        st.epoch, st.batch, st.epoch_loss, st.epoch_tokens, st.epoch_seconds = st.epoch + 1, 0, 0.0, 0, 0.0
        improved = vloss is not None and vloss < st.best_valid_loss - 1e-6
        st.best_valid_loss = vloss if improved else st.best_valid_loss
        st.bad_epochs = 0 if improved else st.bad_epochs + (vloss is not None)  # nothing validated: no count
        st.stopped_early = vloss is not None and 0 < self.config.patience <= st.bad_epochs
        self._phase = None
        self._print(self._epoch_line(record, metrics))
        if improved:
            self._write(self.out / "best", metrics=record, state={}, keep=1)
        self.save()
        if st.stopped_early:
            self._print(f"early stopping: no better validation loss for {st.bad_epochs} epochs")
        return st.stopped_early

    def save(self) -> None:
        """Checkpoint the run (the newest ``keep_last`` kept)."""
        st = self.state
        st.seconds = self._seconds()
        self._write(self.out, optimizer=self.optimizer, state=asdict(st), keep=self.config.keep_last)
        self._last_save, self._saved_step = self.clock(), st.step

    def _write(self, directory: Path, **saved: Any) -> None:
        if self.group is None or self.group.is_writer:
            save_checkpoint(directory, model=self.model, step=self.state.step, config=self.run_config,
                            vocab=self.vocab, **saved)  # fmt: skip
        if self.group is not None:
            self.group.barrier()

    def _periodic_save(self) -> None:
        every, minutes = self.config.save_every_steps, self.config.save_every_minutes
        by_steps = every > 0 and self.state.step % every == 0
        if by_steps or (minutes > 0 and self.clock() - self._last_save >= 60.0 * minutes):
            self.save()

    def _work_left(self) -> bool:
        st = self.state
        return st.epoch < self.config.epochs and st.step < self.total_steps and not st.stopped_early

    def _should_stop(self, stop_after_steps: int | None) -> bool:
        """A signal asked the run to stop, or this fit's step budget is spent."""
        if self.group is not None:  # one decision for all ranks, at the same step boundary
            self._stop_signal = self.group.agree_stop()
        spent = stop_after_steps is not None and self._steps_here >= stop_after_steps
        return self._stop_signal is not None or spent

    @contextlib.contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM ask the run to stop, for the block's duration; in the main thread
        only, never over an ignored signal or a handler set outside Python; restored after."""
        installed: dict[int, Any] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            before = signal.getsignal(signum)
            main = threading.current_thread() is threading.main_thread() and self.group is None
            if main and before not in (None, signal.SIG_IGN):
                installed[signum] = signal.signal(signum, self._on_signal)
        try:
            yield
        finally:
            for signum, before in installed.items():
                signal.signal(signum, before)

    def _on_signal(self, signum: int, frame: Any) -> None:
        """The first signal asks to stop after the step under way (printing nothing: a handler
        that writes can interrupt a write); a second stops at once, but never mid-update."""
        if self._stop_signal is None:
            self._stop_signal = signum
        elif self._phase != "update":
            raise KeyboardInterrupt

    def _seconds(self) -> float:
        return self._seconds_before + time.perf_counter() - self._started

    def _epoch_line(self, record: dict[str, Any], metrics: dict[str, Any]) -> str:
        """``epoch 3: train loss 0.4210, valid loss 0.5120, valid exact match 0.870, 9,512 target tok/s``"""
        shown = [f"train loss {record['train_loss']:.4f}"]
        for key, value in {"valid_loss": record["valid_loss"], **metrics}.items():
            digits = 4 if key == "valid_loss" else 3
            number = "n/a (no validation data)" if value is None else f"{value:.{digits}f}"
            shown.append(f"{key.replace('_', ' ')} {number}")
        return f"epoch {record['epoch']}: {', '.join(shown)}, {record['tokens_per_s']:,.0f} {self.task.count_unit}/s"

    def _print(self, message: str, *, always: bool = False) -> None:
        """A line above the progress bar; without one, only the lines the user must see."""
        with contextlib.suppress(OSError, ValueError):  # a closed pipe must not stop training
            if self.bar is not None and not self.bar.disable:
                self.bar.write(message, file=self.stream)
            elif always or self.bar is not None:
                print(message, file=self.stream, flush=True)
