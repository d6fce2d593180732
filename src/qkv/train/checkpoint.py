"""Checkpoints that are safe to open, atomic to write and exact to resume from.

A run directory holds checkpoints, the highest step the newest. ``ckpt-00001200/`` holds
``model.safetensors`` (the weights, tied tensors once), ``training.pt`` (optimizer, scheduler
and RNG states, read with ``torch.load(weights_only=True)``: no code runs) and ``meta.json``
(step, config, vocab, metrics, run state, tied names, the files' sizes and SHA-256). A damaged
or foreign file raises :class:`CheckpointError` naming it. A killed save leaves the earlier
checkpoints whole (:mod:`~qkv.train.atomic`; one process saves into a run directory).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .atomic import write_atomically
from .rng import rng_state, set_rng_state

__all__ = ["Checkpoint", "CheckpointError", "list_checkpoints", "load_checkpoint", "save_checkpoint"]

FORMAT, FORMAT_VERSION = "qkv-checkpoint", 2
MODEL_FILE, TRAINING_FILE, META_FILE = "model.safetensors", "training.pt", "meta.json"
# ckpt-<step>, or .old-ckpt-<step>-<pid>-<hex>: moved aside by a save of its step
_CKPT_RE = re.compile(r"^(?:\.old-)?ckpt-(\d{8,})(?:-\d+-[0-9a-f]+)?$")
_LEFTOVER_RE = re.compile(r"^\.(?:tmp|old)-")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, changed since it was saved, not a
    qkv checkpoint, or a file that is not what it should be (a pickle offered as weights). The
    message names the file and says what is wrong; nothing in the file was executed."""


def _model_tensors(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors of ``model.state_dict()`` as safetensors stores them (contiguous CPU copies),
    and ``{tied name: stored name}`` for a tensor identical to an earlier one (tied weights)."""
    tensors, ties, first = {}, {}, {}
    for name, t in model.state_dict().items():
        ident = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride(), t.dtype)
        if t.numel() and ident in first:
            ties[name] = first[ident]
            continue
        first.setdefault(ident, name)
        tensors[name] = t.detach().to("cpu", copy=True).contiguous()
    return tensors, ties


def _serialize(what: str, obj: Any) -> bytes:
    """``torch.save(obj)``, refused unless ``torch.load(weights_only=True)`` reads it back."""
    buffer = io.BytesIO()
    try:
        torch.save(obj, buffer)
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    except Exception as e:
        raise TypeError(f"{what}: only tensors, numbers, strings and containers are stored: {e}") from None
    return buffer.getvalue()


def save_checkpoint(
    directory: str | os.PathLike, *, model: nn.Module, optimizer: Any = None, scheduler: Any = None,
    step: int, config: Mapping[str, Any], vocab: Any = None, metrics: Any = None, state: Any = None,
    keep: int | None = 2,
) -> Path:  # fmt: skip
    """Write ``directory/ckpt-<step:08d>`` atomically (replacing one of the same step); return it.
    ``optimizer`` and ``scheduler`` (with ``state_dict()``) go to ``training.pt`` with the RNG
    states; ``config``, ``vocab``, ``metrics`` and ``state`` are JSON data; the ``keep`` newest
    checkpoints are kept (None: all). Raises ValueError (``step``, ``keep``), TypeError (a value
    that cannot be stored, named; nothing written), OSError (earlier checkpoints stay whole)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step: expected an int >= 0, got {step!r}")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep: expected an int >= 1 or None, got {keep!r}")
    if not isinstance(config, Mapping):
        raise TypeError(f"config: expected a dict, got {type(config).__name__}")
    from safetensors.torch import save

    tensors, ties = _model_tensors(model)
    states = {k: x and x.state_dict() for k, x in (("optimizer", optimizer), ("scheduler", scheduler))}
    files = {
        MODEL_FILE: save(tensors),
        TRAINING_FILE: _serialize(" or ".join(states), {**states, "rng": rng_state()}),
    }
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step, "ties": ties}
    for key, value in (("config", dict(config)), ("vocab", vocab), ("metrics", metrics), ("state", state)):
        try:
            meta[key] = json.loads(json.dumps(value))
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"{key}: expected plain JSON data (numbers, strings, lists, dicts): {e}"
            ) from None
    meta["files"] = {n: {"bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()}
    files[META_FILE] = json.dumps(meta, indent=1).encode()

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"ckpt-{step:08d}"
    write_atomically(final, files)
    _prune(directory, final, keep)
    return final


def _prune(directory: Path, current: Path, keep: int | None) -> None:
    """Delete all but the ``keep`` newest checkpoints, and what killed saves left behind. An old
    checkpoint is first renamed to a leftover name (atomic), so a kill mid-delete leaves no
    half-deleted ``ckpt-*`` behind: the next save removes the rest."""
    others = [p for p in list_checkpoints(directory) if p != current]
    for p in others[keep - 1 if keep else len(others) :]:
        os.replace(p, p.with_name(f".tmp-pruned-{p.name}-{os.getpid()}-{secrets.token_hex(4)}"))
    for p in directory.iterdir():
        if _LEFTOVER_RE.match(p.name):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``path`` (its ``ckpt-*`` directory), what was saved, the model's
    ``state_dict`` (tied names share one tensor), and ``skipped``: the damaged newer checkpoints
    of the run directory :func:`load_checkpoint` passed over."""

    path: Path
    step: int
    config: dict
    vocab: Any
    metrics: Any
    state: Any
    model_state: dict[str, Tensor]
    optimizer_state: dict | None = None
    scheduler_state: dict | None = None
    rng_state: dict = field(default_factory=dict, repr=False)
    skipped: list[Path] = field(default_factory=list, repr=False)

    def restore(self, model: nn.Module, optimizer: Any = None, scheduler: Any = None, rng: bool = True):
        """Load everything back into live objects (copies: one checkpoint restores many times);
        ``rng=False`` leaves the random generators alone. Returns ``self``. Raises CheckpointError
        (an optimizer or scheduler given, none saved), RuntimeError (names or shapes differ)."""
        model.load_state_dict(self.model_state)
        live_saved = ((optimizer, self.optimizer_state), (scheduler, self.scheduler_state))
        for (live, saved), what in zip(live_saved, ("optimizer", "scheduler")):
            if live is not None:
                if saved is None:
                    raise CheckpointError(f"{self.path}: the checkpoint has no {what} state")
                live.load_state_dict(copy.deepcopy(saved))
        if rng:
            set_rng_state(self.rng_state)
        return self


def _read_meta(ckpt: Path) -> dict[str, Any]:
    """``meta.json`` of ``ckpt``, after checking that both other files have their saved sizes."""
    path = ckpt / META_FILE
    try:
        meta = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing file") from None
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); damaged, or not a qkv checkpoint") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a qkv checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version")
        raise CheckpointError(f"{path}: checkpoint format version {version!r}; qkv reads {FORMAT_VERSION}")
    for name, saved in meta["files"].items():
        if not (ckpt / name).is_file():
            raise CheckpointError(f"{ckpt / name}: missing file")
        size = (ckpt / name).stat().st_size
        if size != saved["bytes"]:
            why = "truncated (an interrupted copy, a full disk)" if size < saved["bytes"] else "changed"
            raise CheckpointError(f"{ckpt / name}: {why}: {size:,} bytes, {saved['bytes']:,} when saved")
    return meta


def _read(path: Path, saved: Mapping[str, Any], verify: bool, load) -> Any:
    """``load(bytes)`` of the file ``path``, its digest checked first; any failure -> CheckpointError."""
    data = path.read_bytes()
    if verify and hashlib.sha256(data).hexdigest() != saved["sha256"]:
        raise CheckpointError(f"{path}: SHA-256 mismatch: the file is damaged or was changed after saving")
    try:
        return load(data)
    except Exception as e:  # safetensors and torch.load raise their own types on foreign files
        raise CheckpointError(
            f"{path}: refused: not the {path.suffix} file of a qkv checkpoint ({e})"
        ) from None


def _load_one(ckpt: Path, map_location: Any, verify: bool) -> Checkpoint:
    from safetensors.torch import load

    meta = _read_meta(ckpt)
    files = meta["files"]
    stored = _read(ckpt / MODEL_FILE, files[MODEL_FILE], verify, load)

    trusted = lambda data: torch.load(io.BytesIO(data), weights_only=True)  # noqa: E731 (no code runs)
    training = _read(ckpt / TRAINING_FILE, files[TRAINING_FILE], verify, trusted)
    model_state = {k: v.to(map_location) for k, v in stored.items()}
    for name, target in meta["ties"].items():
        model_state[name] = model_state[target]
    saved = {k: meta[k] for k in ("step", "config", "vocab", "metrics", "state")}
    optimizer, scheduler, rng = training["optimizer"], training["scheduler"], training["rng"]
    return Checkpoint(ckpt, **saved, model_state=model_state, optimizer_state=optimizer,
                      scheduler_state=scheduler, rng_state=rng)  # fmt: skip


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The complete checkpoints of a run directory, newest step first (one moved aside by a
    killed save of the same step comes after the step's own)."""
    directory = Path(directory)
    found = []
    for p in directory.iterdir() if directory.is_dir() else ():
        if (m := _CKPT_RE.match(p.name)) and (p / META_FILE).is_file():
            found.append((int(m.group(1)), not p.name.startswith("."), p))
    return [p for *_, p in sorted(found, key=lambda f: f[:2], reverse=True)]


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu", verify: bool = True) -> Checkpoint:
    """Load a checkpoint (nothing in it runs code) from a ``ckpt-*`` directory or its
    ``meta.json`` (loaded or refused, never substituted), or a run directory: its newest intact
    checkpoint, damaged newer ones skipped with a warning (:attr:`Checkpoint.skipped`).
    ``map_location``: the device of the weights; ``verify``: check the files' SHA-256. Raises
    CheckpointError: no checkpoint there, or a damaged, truncated or foreign file (named)."""
    path = Path(path)
    if path.name == META_FILE:
        path = path.parent
    if path.is_file():
        raise CheckpointError(f"{path}: expected a run or ckpt-* directory of qkv, got a file (never opened)")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    if (path / META_FILE).is_file():
        return _load_one(path, map_location, verify)
    skipped: dict[Path, str] = {}  # the damaged checkpoints, newest first, and why
    for ckpt in list_checkpoints(path):
        try:
            found = _load_one(ckpt, map_location, verify)
        except CheckpointError as e:
            skipped[ckpt] = str(e)
            continue
        if skipped:
            why = "; ".join(skipped.values())
            warnings.warn(f"{path}: skipped damaged checkpoints ({why}); using {ckpt.name}", stacklevel=2)
        found.skipped = list(skipped)
        return found
    if skipped:
        raise CheckpointError(f"{path}: no intact checkpoint: " + "; ".join(skipped.values()))
    raise CheckpointError(f"{path}: no checkpoint found (no complete ckpt-* directory)")
