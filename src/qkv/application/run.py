"""An application's run directory: training into it (:func:`fit_run`, the ``train(cfg, out,
**options)`` of every application, on :func:`open_run`, :func:`torch_threads` and
:func:`seed_everything`) and loading the trained model from it (:func:`load_trained`)."""

from __future__ import annotations

import contextlib
import os
import random
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import torch

from ..parallel import check_world_size, data_parallel, process_group
from ..train.checkpoint import Checkpoint, list_checkpoints, load_checkpoint
from ..train.loop import Trainer, TrainResult

__all__ = ["fit_run", "load_trained", "open_run", "seed_everything", "torch_threads"]


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run with ``threads`` torch CPU threads (0: torch's default), restored after."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> None:
    """Seed the global generators a run draws from (``random`` and torch's), before building it."""
    random.seed(seed)
    torch.manual_seed(seed)


def open_run(out_dir: str | Path, *, resume: bool, writer: bool = True) -> Checkpoint | None:
    """The newest intact checkpoint of the run to resume (damaged newer ones moved aside to
    ``<name>.damaged`` by the ``writer``: the one process of a group that writes), or None for a
    new run. Raises FileNotFoundError (``resume``, no checkpoint),
    FileExistsError (a run is there: never overwritten), CheckpointError (all are damaged)."""
    out, held = Path(out_dir), bool(list_checkpoints(out_dir))
    if held != resume:
        if resume:
            raise FileNotFoundError(f"--resume: no checkpoint in {str(out)!r}")
        raise FileExistsError(f"out: {str(out)!r} already holds a run; pass --resume or choose another --out")
    ckpt = load_checkpoint(out) if resume else None
    for damaged in ckpt.skipped if ckpt and writer else ():
        target, n = damaged.with_name(f"{damaged.name}.damaged"), 1
        while target.exists():
            target, n = damaged.with_name(f"{damaged.name}.damaged-{n}"), n + 1
        os.replace(damaged, target)
        warnings.warn(
            f"the damaged checkpoint {damaged.name} was moved to {target.name} (kept for inspection; "
            f"delete it when done); the run continues from {ckpt.path.name} (step {ckpt.step})",
            stacklevel=2,
        )
    return ckpt


def fit_run(
    cfg: Any, out_dir: str | Path, make_trainer: Callable[..., Trainer], *, config_type: Any,
    resume: bool = False, progress: bool = True, stream: TextIO | None = None,
    stop_after_steps: int | None = None, announce: bool | None = None,
) -> TrainResult:  # fmt: skip
    """Train the model of an application's config ``cfg`` (a
    :class:`~qkv.application.run_config.RunConfig`); checkpoints go to ``out_dir``: the ``train``
    of each application.

    :func:`open_run`, then, with ``cfg.train.threads`` torch threads and the global generators
    seeded with ``cfg.train.seed``, the :class:`~qkv.train.loop.Trainer` that ``make_trainer(cfg, checkpoint,
    out=, progress=, stream=, announce=)`` builds (``checkpoint``: the one resumed, or None),
    restored from the checkpoint, fitted.

    Under ``torchrun`` (or in a process group already initialized), each process is one rank of
    a data-parallel run (:func:`qkv.parallel.data_parallel`): ``batch_size`` examples a rank, a
    step of ``world x batch_size``; rank 0 alone prints and writes checkpoints; a run resumes
    with the world size it was trained with (ValueError otherwise).

    Args:
        cfg: the run's config; when resuming, the config to continue with
            (:meth:`~qkv.application.run_config.RunConfig.resume` says what may change), or None
            for the run's own (``config_type.from_dict``).
        out_dir: the run directory (``ckpt-*`` checkpoints, ``best/``).
        resume: continue from the newest intact checkpoint in ``out_dir`` (an existing run
            directory without ``resume`` is an error, so nothing is overwritten).
        progress: show a progress bar with the loss, units/s and ETA on ``stream`` (stderr).
        stop_after_steps: stop (and checkpoint) after this many optimizer steps in this call,
            as an interruption would (tests use it to check exact resumption).
        announce: print a line about the model and the data on ``stream`` before training
            (default: when ``progress``).
    """
    with contextlib.ExitStack() as stack:
        group = stack.enter_context(process_group())
        writer = group is None or group.is_writer
        ckpt = open_run(out_dir, resume=resume, writer=writer)
        if cfg is None:
            if ckpt is None:
                raise ValueError("cfg: None is only for resuming a run (its own config)")
            cfg = config_type.from_dict(ckpt.config)
        if ckpt is not None:
            check_world_size(ckpt.state.get("world_size", 1), 1 if group is None else group.world)
        stream = sys.stderr if stream is None else stream
        announce = progress if announce is None else announce
        if not writer:  # one rank speaks
            progress, announce, stream = False, False, stack.enter_context(open(os.devnull, "w"))
        stack.enter_context(torch_threads(cfg.train.threads))
        seed_everything(cfg.train.seed)  # the global generators the Trainer checkpoints
        trainer = make_trainer(
            cfg, ckpt, out=Path(out_dir), progress=progress, stream=stream, announce=announce
        )
        if group is not None:
            data_parallel(trainer, group)
            stack.enter_context(group.stop_signals())
        if ckpt is not None:
            trainer.restore(ckpt)
        return trainer.fit(stop_after_steps=stop_after_steps)


def load_trained(run: str | os.PathLike, *, best: bool = True) -> Checkpoint:
    """The checkpoint a trained model is loaded from: the run directory's ``best/`` one when
    there is one (and ``best``), else :func:`load_checkpoint` of ``run`` (its newest intact one,
    or ``run`` itself when it is a checkpoint). Raises FileNotFoundError: no such directory."""
    path = Path(run)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: no such directory {str(path)!r}")
    return load_checkpoint(path / "best" if best and list_checkpoints(path / "best") else path)
