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
K steps, wherever it stopped: at an epoch's end or in the middle of one.

Nothing is lost when a run is stopped:

- SIGINT (Ctrl-C) and SIGTERM (``kill``, a scheduler's stop) end the run at the next step
  boundary: the step under way finishes, a checkpoint is saved, and :attr:`TrainResult.exit_code`
  is 130 or 143 (128 + the signal). The handlers are installed for the duration of
  :meth:`Trainer.fit` only, in the main thread only, and not over a signal that was ignored
  (``nohup``); the previous handlers are restored after. A second signal stops at once: the
  step under way is abandoned (the random generators rewound to its start, so the checkpoint
  saved is still exact), or, during the weight update itself, the update finishes first.
- SIGKILL, a crash or a power cut cannot be caught: a checkpoint every ``save_every_minutes``
  (5 by default) and/or ``save_every_steps`` bounds what they lose; the newest ``keep_last``
  checkpoints are kept, and a damaged one (a file cut short) is skipped on ``--resume`` for the
  newest intact one.
- A KeyboardInterrupt raised in a step without the handlers (another thread installed none)
  also saves an exact checkpoint, as above. A model whose forward changes buffers (batch norm
  statistics) is the exception: those changes are not rewound.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, TextIO

import torch
from torch import Tensor, nn

from .._moved import moved_attribute
from .checkpoint import Checkpoint, _candidates, load_checkpoint, save_checkpoint
from .config import train_setting
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

    def validate(self, model: nn.Module) -> dict[str, float | None]:
        """Validation metrics: ``valid_loss`` (lower is better; early stopping and the ``best/``
        checkpoint follow it; None when there is nothing to validate on, never a made-up 0)
        and any others (recorded and printed with the epoch; None is shown as n/a)."""
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
    """The latest intact checkpoint of a run to resume, or None for a new run.

    When resuming, damaged newer checkpoints (see :func:`~qkv.train.checkpoint.load_checkpoint`)
    are moved aside to ``ckpt-<step>.damaged`` (kept for inspection, never loaded or pruned), so
    the checkpoints the resumed run writes are the newest ones again.

    Raises:
        FileNotFoundError: ``resume`` but ``out_dir`` holds no checkpoint.
        FileExistsError: not ``resume`` but ``out_dir`` already holds a run (never overwritten).
        CorruptCheckpointError: ``resume`` and every checkpoint of ``out_dir`` is damaged.
    """
    out = Path(out_dir)
    holds_run = out.is_dir() and bool(_candidates(out)[0])
    if resume:
        if not holds_run:
            raise FileNotFoundError(f"--resume: no checkpoint in {str(out)!r}")
        ckpt = load_checkpoint(out)
        for damaged in ckpt.skipped:
            _set_aside(damaged, ckpt)
        return ckpt
    if holds_run:
        raise FileExistsError(
            f"out: {str(out)!r} already holds a run; pass --resume to continue it or choose another --out"
        )
    return None


def _set_aside(damaged: Path, resumed: Checkpoint) -> None:
    target = damaged.with_name(f"{damaged.name}.damaged")
    n = 1
    while target.exists():
        target, n = damaged.with_name(f"{damaged.name}.damaged-{n}"), n + 1
    try:
        os.replace(damaged, target)
    except OSError as e:
        warnings.warn(f"could not move the damaged checkpoint {damaged} aside: {e}", stacklevel=3)
        return
    warnings.warn(
        f"the damaged checkpoint {damaged.name} was moved to {target.name} (kept for inspection; delete it "
        f"when done); the run continues from {resumed.path.name} (step {resumed.step})",
        stacklevel=3,
    )


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
    epoch_seconds: float = 0.0  # seconds spent in the steps of the current epoch, over all sessions
    finished: bool = False  # stopped early

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> RunState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in names})


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns: the run directory, the step reached, per-epoch history,
    the best validation loss (``inf`` when there was no validation data), whether it stopped
    early or was interrupted, and the signal that stopped it (``signal.SIGINT``,
    ``signal.SIGTERM`` or None)."""

    out_dir: Path
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best_valid_loss: float = math.inf
    stopped_early: bool = False
    interrupted: bool = False
    seconds: float = 0.0
    stop_signal: int | None = None

    @property
    def exit_code(self) -> int:
        """The exit status for a command that ran this fit: 0 when the run ended by itself,
        128 + the signal number when a signal stopped it (130 for SIGINT, 143 for SIGTERM, as
        a shell reports a process the signal ended), 130 for another interruption."""
        if not self.interrupted:
            return 0
        return 128 + int(self.stop_signal) if self.stop_signal is not None else 130


def _rng_snapshot() -> tuple:
    """The state of every global generator a step may draw from (cheap: a few kB of copies)."""
    cuda = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    numpy = sys.modules.get("numpy")  # imported by someone: its global generator may be in use
    np_state = numpy.random.get_state() if numpy is not None else None
    return torch.get_rng_state(), cuda, random.getstate(), np_state


def _rng_rewind(snapshot: tuple) -> None:
    cpu, cuda, py, np_state = snapshot
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(py)
    if np_state is not None:
        sys.modules["numpy"].random.set_state(np_state)


class Trainer:
    """Trains ``model`` on ``task`` with ``optimizer``; checkpoints go to ``out_dir``.

    Args:
        settings: the ``[train]`` table: ``epochs``, ``max_steps``, the learning-rate schedule
            (``lr``, ``warmup``, ``schedule``, ``min_lr``), ``clip``, ``save_every_minutes``,
            ``save_every_steps``, ``keep_last`` and ``patience`` (see
            :data:`qkv.train.config.DEFAULTS`; a missing key takes its default).
        config, vocab: stored in every checkpoint (the run's full config; its vocabularies).
        desc: the progress bar's label; progress: show it on ``stream`` (stderr). The lines
            about resuming and interruptions are printed on ``stream`` either way.
        clock: seconds, for ``save_every_minutes`` (``time.monotonic``; tests pass a fake one).
    """

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, task: Task, *, settings: dict[str, Any],
        out_dir: str | Path, config: dict[str, Any], vocab: dict[str, Any] | None = None,
        desc: str = "train", progress: bool = True, stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):  # fmt: skip
        self.model, self.optimizer, self.task, self.t = model, optimizer, task, settings
        self.out, self.config, self.vocab = Path(out_dir), config, vocab
        self.desc, self.progress, self.clock = desc, progress, clock
        self.stream = sys.stderr if stream is None else stream
        self.state = RunState()
        total = int(settings["epochs"]) * task.batches_per_epoch
        self.total_steps = min(total, int(settings["max_steps"])) if settings["max_steps"] else total
        self.bar: Progress | None = None
        self._started, self._seconds_before, self._steps_here = 0.0, 0.0, 0
        self._last_save, self._saved_step = 0.0, -1
        self._stop_signal: int | None = None  # the signal that asked the run to stop
        self._phase: str | None = None  # "step": forward/backward; "update": weights and state changing
        self._rng_at_step: tuple | None = None

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint``: weights, optimizer, global RNG state and the run state."""
        checkpoint.restore(self.model, self.optimizer, rng=True)
        self.state = RunState.from_dict(checkpoint.state)
        self._saved_step = checkpoint.step

    # ---- the run

    def fit(self, *, stop_after_steps: int | None = None) -> TrainResult:
        """Train until the last epoch, ``max_steps``, early stopping, SIGINT/SIGTERM or Ctrl-C.

        A signal stops the run after the step under way, then a checkpoint is saved (see the
        module docstring); :attr:`TrainResult.exit_code` says how a command should exit.

        Args:
            stop_after_steps: stop (and checkpoint) after this many optimizer steps in this call,
                as an interruption would (tests use it to check exact resumption).
        """
        st = self.state
        result = TrainResult(
            out_dir=self.out, step=st.step, history=list(st.history), best_valid_loss=st.best
        )
        self._started, self._seconds_before, self._steps_here = time.perf_counter(), st.seconds, 0
        self._last_save, self._stop_signal, self._phase = self.clock(), None, None
        with self._stop_signals():
            self._fit(result, stop_after_steps)
        result.step, result.history, result.best_valid_loss = st.step, list(st.history), st.best
        result.stop_signal = self._stop_signal if result.interrupted else None
        result.seconds = self._seconds()
        return result

    def _fit(self, result: TrainResult, stop_after_steps: int | None) -> None:
        st = self.state
        if self.progress:
            start = min(st.step, self.total_steps)
            self.bar = Progress(self.total_steps, initial=start, desc=self.desc, stream=self.stream)
        if st.step > 0 and self._work_left():
            self._tell(
                f"resuming from step {st.step} of {self.total_steps} (epoch {st.epoch + 1}, "
                f"batch {st.batch} of {self.task.batches_per_epoch})"
            )
        self.model.train()
        consistent = True
        try:
            while self._work_left() and not self._should_stop(stop_after_steps):
                self.run_epoch(stop_after_steps)
                mid_epoch = st.batch < self.task.batches_per_epoch
                if self._should_stop(stop_after_steps) and (mid_epoch or self._stop_signal is not None):
                    break  # end_epoch (validation can take a while) comes after the resume
                if self.end_epoch():
                    result.stopped_early = True
                    break
        except KeyboardInterrupt:
            # raised mid-step (no handler installed, or a second signal): the step is abandoned
            if self._phase == "step" and self._rng_at_step is not None:
                _rng_rewind(self._rng_at_step)  # as if the step had never begun
            consistent = self._phase != "update"
            result.interrupted = True
        finally:
            self._phase = None
            if self.bar is not None:
                self.bar.close()
        if not result.stopped_early and self._work_left():
            result.interrupted = True
        if result.interrupted:
            self._save_interrupted(consistent)

    def _save_interrupted(self, consistent: bool) -> None:
        st = self.state
        why = self._signal_name() or "interrupted"
        if not consistent:
            self._tell(
                f"{why} during the weight update of step {st.step + 1}: nothing saved (the weights are half "
                f"updated); the last checkpoint (step {self._saved_step}) stands; continue with --resume"
            )
            return
        self._tell(f"{why}: stopping after step {st.step}, saving a checkpoint...")
        if self._saved_step != st.step:
            self.save()
        self._tell(f"checkpoint saved at step {st.step}; continue with --resume")

    def run_epoch(self, stop_after_steps: int | None = None) -> tuple[int, float]:
        """The optimizer steps of the current epoch, from the batch it stopped at; returns the
        units counted and the seconds taken. Stops early at the step budget, after
        ``stop_after_steps`` steps of this :meth:`fit`, or when a signal asked the run to stop;
        saves the periodic checkpoints (``save_every_minutes``, ``save_every_steps``)."""
        st = self.state
        started, counted = time.perf_counter(), 0
        for i, batch in enumerate(self.task.batches(st.epoch, st.batch), start=st.batch):
            began = time.perf_counter()
            self._rng_at_step = _rng_snapshot()
            self._phase = "step"
            loss, count = self.step(batch)  # enters the "update" phase before the optimizer step
            st.batch = i + 1
            st.epoch_loss += loss * count
            st.epoch_tokens += count
            self._phase = None  # a step boundary: the state is whole again
            st.epoch_seconds += time.perf_counter() - began
            counted += count
            if self.bar is not None:
                rate = counted / max(time.perf_counter() - started, 1e-9)
                self.bar.update(1, epoch=st.epoch + 1, loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}")
            if st.step >= self.total_steps or self._should_stop(stop_after_steps):
                break
            if st.batch < self.task.batches_per_epoch:  # end_epoch saves the epoch's last step
                self._periodic_save()
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
        self._phase = "update"
        self.optimizer.step()
        self.state.step += 1
        self._steps_here += 1
        return float(loss.detach()), count

    def end_epoch(self, count_per_s: float | None = None) -> bool:
        """Validate, record and checkpoint the epoch just finished (and ``best/`` when it
        improved); returns True to stop early (``patience`` epochs without improvement).

        ``count_per_s``: the epoch's throughput for the record; by default the units of the
        epoch over the seconds its steps took, both counted across resumes. A task whose
        validation has nothing to measure returns ``valid_loss`` None: the epoch records None,
        and neither ``best/`` nor early stopping follow it.
        """
        st = self.state
        metrics = self.task.validate(self.model)
        self.model.train()  # validation may leave the model in eval mode (decoding does)
        vloss = metrics.get("valid_loss")
        if count_per_s is None:
            count_per_s = st.epoch_tokens / st.epoch_seconds if st.epoch_seconds > 0 else 0.0
        self._phase = "update"
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
        st.batch, st.epoch_loss, st.epoch_tokens, st.epoch_seconds = 0, 0.0, 0, 0.0
        improved = vloss is not None and vloss < st.best - 1e-6
        if improved:
            st.best, st.bad_epochs = vloss, 0
        elif vloss is not None:
            st.bad_epochs += 1
        self._phase = None
        self._say(self._epoch_line(record, metrics))
        if improved:
            save_checkpoint(self.out / "best", model=self.model, step=st.step, config=self.config,
                            vocab=self.vocab, metrics={"valid_loss": vloss, **record}, state={}, keep=1)  # fmt: skip
        self.save()
        if vloss is None or not (self.t["patience"] and st.bad_epochs >= int(self.t["patience"])):
            return False
        st.finished = True
        self.save()
        self._say(f"early stopping: no better validation loss for {st.bad_epochs} epochs")
        return True

    def save(self) -> None:
        """Checkpoint the run: weights, optimizer, RNG and :class:`RunState` (the newest
        ``keep_last`` kept)."""
        st = self.state
        st.seconds = self._seconds()
        save_checkpoint(
            self.out, model=self.model, optimizer=self.optimizer, step=st.step, config=self.config,
            vocab=self.vocab, metrics={"history": st.history}, state=asdict(st),
            keep=int(self._setting("keep_last")),
        )  # fmt: skip
        self._last_save, self._saved_step = self.clock(), st.step

    # ---- helpers

    def _setting(self, name: str) -> Any:
        return train_setting(self.t, name)

    def _periodic_save(self) -> None:
        """Save when ``save_every_steps`` steps or ``save_every_minutes`` minutes have passed."""
        every = int(self._setting("save_every_steps") or 0)
        minutes = float(self._setting("save_every_minutes") or 0)
        by_steps = every > 0 and self.state.step % every == 0
        by_time = minutes > 0 and self.clock() - self._last_save >= 60.0 * minutes
        if by_steps or by_time:
            self.save()

    def _work_left(self) -> bool:
        st = self.state
        return st.epoch < int(self.t["epochs"]) and st.step < self.total_steps and not st.finished

    def _should_stop(self, stop_after_steps: int | None) -> bool:
        """A signal asked the run to stop, or this fit's step budget is spent."""
        return self._stop_signal is not None or (
            stop_after_steps is not None and self._steps_here >= stop_after_steps
        )

    def _signal_name(self) -> str | None:
        if self._stop_signal is None:
            return None
        try:
            return signal.Signals(self._stop_signal).name
        except ValueError:
            return f"signal {self._stop_signal}"

    @contextlib.contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM ask the run to stop at the next step boundary, for the duration of
        the block; in the main thread only (elsewhere Python cannot install handlers), never over
        an ignored signal (``nohup``) or a handler set outside Python. Restored after."""
        installed: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for name in ("SIGINT", "SIGTERM"):
                signum = getattr(signal, name, None)
                if signum is None:
                    continue
                before = signal.getsignal(signum)
                if before is None or before == signal.SIG_IGN:
                    continue
                try:
                    signal.signal(signum, self._on_signal)
                except (ValueError, OSError):  # pragma: no cover - a platform without it
                    continue
                installed[signum] = before
        try:
            yield
        finally:
            for signum, before in installed.items():
                signal.signal(signum, before)

    def _on_signal(self, signum: int, frame: Any) -> None:
        """The first signal asks to stop after the step under way (nothing is printed here: a
        handler that writes can interrupt a write in progress); a second one stops at once,
        except during the weight update, which is never left half done."""
        if self._stop_signal is None:
            self._stop_signal = signum
            return
        if self._phase != "update":
            raise KeyboardInterrupt

    def _seconds(self) -> float:
        return self._seconds_before + time.perf_counter() - self._started

    def _epoch_line(self, record: dict[str, Any], metrics: dict[str, Any]) -> str:
        """``epoch 3: train loss 0.4210, valid loss 0.5120, valid exact match 0.870, 9,512 target tok/s``"""

        def shown(value: Any, digits: int) -> str:
            return "n/a (no validation data)" if value is None else f"{value:.{digits}f}"

        extra = "".join(
            f", {k.replace('_', ' ')} {shown(v, 3)}" for k, v in metrics.items() if k != "valid_loss"
        )
        return (
            f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, "
            f"valid loss {shown(record['valid_loss'], 4)}{extra}, {record['tokens_per_s']:,.0f} {self.task.count_unit}/s"
        )

    def _say(self, message: str) -> None:
        """A line above the progress bar (nothing without one)."""
        if self.bar is not None:
            self.bar.write(message)

    def _tell(self, message: str) -> None:
        """A line the user must see, bar or not: above the bar, else on the stream."""
        if self.bar is not None and not self.bar.closed:
            self.bar.write(message)
            return
        with contextlib.suppress(OSError, ValueError):
            print(message, file=self.stream, flush=True)
