"""Checkpoints that are safe to open, atomic to write and exact to resume from.

A run directory holds complete checkpoints and a pointer to the newest one::

    run/
      latest.json                  {"checkpoint": "ckpt-00001200", "step": 1200, ...}
      ckpt-00001000/
      ckpt-00001200/
        model.safetensors          the model's state_dict (a tensor tied to another is stored once)
        training.safetensors       optimizer tensors ("optimizer.state.<param index>.<name>"),
                                   RNG states ("rng.torch", "rng.cuda.<device>"), user tensors
                                   ("state.<path>")
        meta.json                  format version, step, config, vocab, metrics, user state,
                                   optimizer param groups and scalar state, scheduler state,
                                   Python and NumPy RNG states, versions, SHA-256 of both files

Nothing is ever unpickled: tensors live in safetensors files and everything else in JSON, so
opening a checkpoint cannot run code. A pickle, a ``torch.save`` zip or any other file offered
where a safetensors or JSON file is expected raises :class:`UnsafeCheckpointError`.

Writing is atomic. Every file goes into a temporary directory inside the run directory, is
fsynced, and the directory is renamed to ``ckpt-<step>`` in one ``os.replace``; only then is
``latest.json`` replaced (temporary file, fsync, ``os.replace``, fsync of the directory) and
are older checkpoints pruned. A process killed at any moment leaves the previous checkpoint
complete and ``latest.json`` pointing at a complete checkpoint; leftovers of a killed save are
removed by the next save. One process at a time saves into a given run directory.

Resuming is exact: after :meth:`Checkpoint.restore` the model, the optimizer (tensors and
Python numbers with their original types, e.g. Adam's ``step`` tensor), the LR scheduler and
the torch, CUDA, Python and NumPy random generators are where they were at save time, so the
next steps are bitwise equal to those of an uninterrupted run on the same machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import random
import re
import secrets
import shutil
import stat
import struct
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "find_latest",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT = "qkv-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
TRAINING_FILE = "training.safetensors"
META_FILE = "meta.json"
LATEST_FILE = "latest.json"

_CKPT_RE = re.compile(r"^ckpt-(\d{8,})$")
# a checkpoint moved aside while the same step is saved again (see save_checkpoint)
_REPLACED_RE = re.compile(r"^\.old-ckpt-(\d{8,})-\d+-[0-9a-f]+$")
# leftovers of an interrupted save: temporary checkpoint dirs, replaced or pruned checkpoints
# waiting for deletion, temporary pointer files. The pid says whether the writer may be alive.
_LEFTOVER_RE = re.compile(
    r"^\.(?:tmp|old|trash)-ckpt-\d+-(\d+)-[0-9a-f]+$|^\.latest\.json\.(\d+)-[0-9a-f]+\.tmp$"
)
_HASH_CHUNK = 1 << 20
_MAX_SAFETENSORS_HEADER = 100_000_000  # the limit safetensors itself enforces


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing file, bad digest, unknown format version.

    The message names the path.
    """


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file that is damaged: truncated (a copy or a disk that filled up), empty,
    missing, not valid JSON, or whose SHA-256 differs from the one recorded at save time.

    The message names the file and says what is wrong with it. Loading a run directory skips
    such a checkpoint for the newest intact one, with a warning (:func:`load_checkpoint`).
    """


class UnsafeCheckpointError(CheckpointError):
    """A file that is not a safetensors or JSON file where one is expected.

    Raised for pickles, ``torch.save`` archives (a zip holding a pickle) and unrecognized
    content. Such files are never opened by a loader that could run code; the message says
    what the file looks like and how to convert a trusted one.
    """


def _extra_error() -> ImportError:
    return ImportError("qkv checkpoints need safetensors: pip install 'qkv[train]'")


def _safetensors_torch():
    try:
        import safetensors.torch as st
    except ImportError as e:  # pragma: no cover - the extra is installed in development
        raise _extra_error() from e
    return st


# ----------------------------------------------------------------------------- JSON encoding
#
# JSON cannot say "tuple", "dict with int keys", "NaN" or "tensor". These are written as
# one-key objects with a reserved key, so e.g. Adam's ``betas=(0.9, 0.999)`` and the int keys of
# ``optimizer.state_dict()["state"]`` come back with their types. Tensors go into a safetensors
# file under the dotted path of where they were found and are referenced by that name.

_TENSOR, _TUPLE, _FLOAT, _DICT = "__tensor__", "__tuple__", "__float__", "__dict__"
_TAGS = (_TENSOR, _TUPLE, _FLOAT, _DICT)


class _Encoder:
    """Turns nested Python state into strict JSON, collecting tensors when allowed."""

    def __init__(self, what: str, tensors: dict[str, Tensor] | None):
        self.what = what
        self.tensors = tensors  # None: tensors are refused (user sections are plain JSON)

    def __call__(self, obj: Any, path: tuple = ()) -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            if math.isfinite(obj):
                return float(obj)
            return {_FLOAT: "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
        if isinstance(obj, Tensor):
            if self.tensors is None:
                raise TypeError(
                    f"{self._where(path)}: expected plain JSON data (numbers, strings, lists, dicts), "
                    f"got a tensor of shape {tuple(obj.shape)}; store a number (.item()) or a list (.tolist())"
                )
            key = self._key(path)
            self.tensors[key] = obj
            return {_TENSOR: key}
        if isinstance(obj, tuple):
            return {_TUPLE: [self(v, (*path, i)) for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self(v, (*path, i)) for i, v in enumerate(obj)]
        if isinstance(obj, Mapping):
            plain = all(isinstance(k, str) for k in obj) and not (len(obj) == 1 and next(iter(obj)) in _TAGS)
            if plain:
                return {k: self(v, (*path, k)) for k, v in obj.items()}
            return {_DICT: [[self(k, (*path, "key")), self(v, (*path, k))] for k, v in obj.items()]}
        item = getattr(obj, "item", None)
        if type(obj).__module__ == "numpy" and callable(item):  # a NumPy scalar
            return self(item(), path)
        raise TypeError(
            f"{self._where(path)}: cannot store a {type(obj).__module__}.{type(obj).__qualname__} in a "
            "checkpoint; only tensors, numbers, strings, bools, None, lists, tuples and dicts are "
            "stored (functions such as a LambdaLR lambda cannot be saved: rebuild them in code)"
        )

    def _where(self, path: tuple) -> str:
        return self.what + "".join(f"[{p!r}]" for p in path)

    def _key(self, path: tuple) -> str:
        key = ".".join([self.what, *(str(p) for p in path)])
        base, n = key, 1
        while key in self.tensors:  # "a.b" as one dict key and as two nested keys
            key, n = f"{base}#{n}", n + 1
        return key


def _decode(obj: Any, tensors: Mapping[str, Tensor], where: Path) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if isinstance(obj, dict):
        if len(obj) == 1:
            ((tag, value),) = obj.items()
            if tag == _TENSOR:
                if value not in tensors:
                    raise CheckpointError(f"{where}: tensor {value!r} is missing from {TRAINING_FILE}")
                return tensors[value]
            if tag == _TUPLE:
                return tuple(_decode(v, tensors, where) for v in value)
            if tag == _FLOAT:
                return float(value)
            if tag == _DICT:
                return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in value}
        return {k: _decode(v, tensors, where) for k, v in obj.items()}
    return obj


def _clone_tree(obj: Any) -> Any:
    """A copy whose tensors are cloned (optimizers adopt the tensors they are given)."""
    if isinstance(obj, Tensor):
        return obj.clone()
    if isinstance(obj, tuple):
        return tuple(_clone_tree(v) for v in obj)
    if isinstance(obj, list):
        return [_clone_tree(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _clone_tree(v) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------- tensors on disk


def _storage_key(t: Tensor) -> tuple:
    return (t.device, t.untyped_storage().data_ptr())


def _prepare_tensors(named: Mapping[str, Tensor], what: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Contiguous CPU tensors safetensors accepts, and ``{alias: stored name}`` for ties.

    safetensors refuses tensors that share memory. A tensor identical to an earlier one (the
    same storage, offset, shape, strides and dtype: tied weights) is stored once and recorded
    as an alias; distinct views of one storage are stored as separate copies.
    """
    first: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    kept: dict[str, Tensor] = {}
    users: dict[tuple, int] = {}
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{what}[{name!r}]: expected a tensor, got {type(t).__name__}")
        if t.layout != torch.strided:
            raise TypeError(f"{what}[{name!r}]: sparse tensors ({t.layout}) are not stored; use .to_dense()")
        if t.device.type == "meta":
            raise ValueError(f"{what}[{name!r}]: a meta tensor has no data to save")
        if t.numel() > 0:
            ident = (*_storage_key(t), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
            if ident in first:
                aliases[name] = first[ident]
                continue
            first[ident] = name
            users[_storage_key(t)] = users.get(_storage_key(t), 0) + 1
        kept[name] = t
    out = {}
    for name, t in kept.items():
        t = t.detach()
        shared = t.numel() > 0 and users[_storage_key(t)] > 1
        if shared:
            t = t.clone(memory_format=torch.contiguous_format)
        out[name] = t.to("cpu").contiguous()
    return out, aliases


def _fsync_file(path: Path) -> tuple[str, int]:
    """Flush ``path`` to disk; return its SHA-256 and size."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb+") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(f.fileno())
    return digest.hexdigest(), size


def _fsync_dir(path: Path) -> None:
    """Make renames and new entries in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_file_mode(directory: Path) -> int | None:
    """The permissions a file created in ``directory`` gets (0666 less the umask, or what the
    directory's default ACL says), read from a probe file: the umask cannot be read without
    setting it, which would race with other threads. None on Windows (no such modes)."""
    if os.name == "nt":
        return None
    probe = directory / f".mode-{secrets.token_hex(4)}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        return stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
        probe.unlink()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# a list of numbers spread over lines by json's indent (a raw newline never occurs inside a
# JSON string, so a match that starts with "[\n" is structure, not text)
_NUMBER_LIST = re.compile(r"\[\n\s*([-+0-9.eE,\s]+?)\n\s*\]")


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=1, allow_nan=False, ensure_ascii=False)
    text = _NUMBER_LIST.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------- refusing unsafe files

_CONVERT_HINT = (
    "qkv never unpickles checkpoint files: unpickling can run arbitrary code. If the file comes "
    "from a source you trust, convert it once, e.g. "
    "`from safetensors.torch import save_file; save_file(torch.load(path, weights_only=True), "
    "'model.safetensors')`, and load the weights with model.load_state_dict"
)


def _describe_unsafe(head: bytes) -> str:
    """What a file that is not safetensors/JSON looks like, from its first bytes."""
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (the torch.save format, which holds a pickle)"
    if len(head) >= 2 and head[0] == 0x80 and 1 <= head[1] <= 5:
        return f"a pickle stream (PROTO opcode 0x80, protocol {head[1]})"
    if head[:1] in (b"(", b"c", b"}", b"]", b"\x80", b"I", b"S", b"V", b"l", b"d"):
        return "a pickle stream (it starts with a pickle opcode)"
    if not head:
        return "an empty file"
    return f"unrecognized content (first bytes {head[:8]!r})"


def _looks_unsafe(head: bytes) -> bool:
    """A zip archive (``torch.save``) or a pickle stream with a protocol header."""
    return head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 1 <= head[1] <= 5)


def _check_safetensors(path: Path) -> None:
    """Raise unless ``path`` is a whole safetensors file: a u64 header size, a JSON header, and
    exactly the tensor bytes the header declares (read from the header; the data is not read).

    Raises:
        CorruptCheckpointError: a missing, empty or truncated file, or a safetensors header
            that does not match the file's size.
        UnsafeCheckpointError: a pickle, a zip archive or anything else that is not safetensors.
    """
    if not path.is_file():
        raise CorruptCheckpointError(f"{path}: missing file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
        if len(head) >= 9 and head[8:9] == b"{":  # the u64 header size, then the JSON header
            (n,) = struct.unpack("<Q", head[:8])
            if n <= _MAX_SAFETENSORS_HEADER:
                if 8 + n > size:
                    raise CorruptCheckpointError(
                        f"{path}: truncated: its safetensors header declares {n:,} bytes of header alone, "
                        f"but the file has {size:,} bytes in all; the file was cut short (an interrupted "
                        "copy or write, a full disk)"
                    )
                f.seek(8)
                try:
                    header = json.loads(f.read(n))
                except (UnicodeDecodeError, ValueError):
                    header = None
                if not isinstance(header, dict):
                    raise CorruptCheckpointError(
                        f"{path}: corrupt: the safetensors header is not a JSON object"
                    )
                _check_data_size(path, header, 8 + n, size)
                return
    if size == 0:
        raise CorruptCheckpointError(
            f"{path}: corrupt: the file is empty (0 bytes); it was never fully written"
        )
    if not _looks_unsafe(head) and size < 9:
        raise CorruptCheckpointError(
            f"{path}: truncated: {size} bytes, too short to be a safetensors file (8 bytes of header size, "
            "then the header)"
        )
    raise UnsafeCheckpointError(
        f"{path}: expected a safetensors file, found {_describe_unsafe(head)}. {_CONVERT_HINT}"
    )


def _check_data_size(path: Path, header: dict, data_start: int, size: int) -> None:
    """The tensors of a safetensors header must end exactly at the end of the file."""
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise CorruptCheckpointError(
                f"{path}: corrupt: tensor {name!r} has no valid data_offsets in the header"
            )
        end = max(end, offsets[1])
    expected = data_start + end
    if size < expected:
        raise CorruptCheckpointError(
            f"{path}: truncated: its safetensors header declares {expected:,} bytes, the file has {size:,} "
            f"({expected - size:,} missing); the file was cut short (an interrupted copy or write, a full disk)"
        )
    if size > expected:
        raise CorruptCheckpointError(
            f"{path}: corrupt: {size - expected:,} bytes after the last tensor its safetensors header declares"
        )


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CorruptCheckpointError(f"{path}: missing file")
    data = path.read_bytes()
    if not data.strip():
        raise CorruptCheckpointError(f"{path}: corrupt: the file is empty; it was never fully written")
    if not data.lstrip()[:1] == b"{":
        raise UnsafeCheckpointError(f"{path}: expected a JSON file, found {_describe_unsafe(data[:16])}")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptCheckpointError(f"{path}: not valid JSON ({e}); the file is corrupt or truncated") from e


def _unsafe_files(directory: Path) -> list[Path]:
    suffixes = {".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".tar"}
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


# ----------------------------------------------------------------------------- the run directory


def _step_of(path: Path) -> int | None:
    m = _CKPT_RE.match(path.name)
    return int(m.group(1)) if m else None


def _complete(path: Path) -> list[tuple[int, Path]]:
    """``(step, dir)`` of the complete checkpoints in a run directory, newest step first."""
    found = []
    if path.is_dir():
        for p in path.iterdir():
            step = _step_of(p)
            if step is not None and (p / META_FILE).is_file():
                found.append((step, p))
    return sorted(found, reverse=True)


def _candidates(directory: Path) -> tuple[list[Path], bool]:
    """The complete checkpoints of a run directory in the order to try them, and whether
    ``latest.json`` names a checkpoint that is missing.

    First the one ``latest.json`` names, then the complete ``ckpt-*`` directories by step,
    newest first, then checkpoints a save of the same step had moved aside when it was killed
    (a window of two renames).
    """
    order: list[Path] = []
    dangling = False
    if (directory / LATEST_FILE).exists():
        try:
            target = _from_pointer(directory)
        except CorruptCheckpointError as e:  # the checkpoints themselves may be fine: look at them
            warnings.warn(f"{e}; ignoring it and taking the checkpoint with the highest step", stacklevel=4)
            target = False
        if target is None:
            dangling = True
        elif target:
            order.append(target)
    order += [p for _, p in _complete(directory) if p not in order]
    replaced = sorted(
        ((int(m.group(1)), p) for p in directory.iterdir() if (m := _REPLACED_RE.match(p.name))),
        reverse=True,
    )
    order += [p for _, p in replaced if (p / META_FILE).is_file()]
    return order, dangling


def _from_pointer(directory: Path) -> Path | None:
    """The checkpoint ``latest.json`` names, if it exists and is complete."""
    pointer = _read_json(directory / LATEST_FILE)
    name = pointer.get("checkpoint") if isinstance(pointer, dict) else None
    if not isinstance(name, str) or not _CKPT_RE.match(name):
        raise CorruptCheckpointError(
            f"{directory / LATEST_FILE}: corrupt: expected a 'checkpoint' entry like 'ckpt-00000100'"
        )
    target = directory / name
    return target if (target / META_FILE).is_file() else None


def _check_intact(ckpt: Path) -> None:
    """The checks that need no hashing: ``meta.json`` is a JSON object, and both safetensors
    files are whole (their headers match their sizes, which match those recorded at save time).

    Raises:
        CorruptCheckpointError: what is damaged, naming the file.
        UnsafeCheckpointError: a file that is not JSON or safetensors.
    """
    meta = _read_json(ckpt / META_FILE)
    if not isinstance(meta, dict):
        raise CorruptCheckpointError(f"{ckpt / META_FILE}: corrupt: expected a JSON object")
    files = meta.get("files")
    for name in (MODEL_FILE, TRAINING_FILE):
        _check_safetensors(ckpt / name)
        _check_size(ckpt / name, files.get(name) if isinstance(files, dict) else None)


def _check_size(path: Path, recorded: Any) -> None:
    """``path`` has the size ``meta.json`` recorded for it at save time (when it recorded one)."""
    expected = recorded.get("bytes") if isinstance(recorded, dict) else None
    if isinstance(expected, int) and not isinstance(expected, bool):
        size = path.stat().st_size
        if size < expected:
            raise CorruptCheckpointError(
                f"{path}: truncated: {size:,} bytes, {expected:,} when it was saved ({expected - size:,} missing)"
            )
        if size > expected:
            raise CorruptCheckpointError(
                f"{path}: corrupt: {size:,} bytes, {expected:,} when it was saved; the file was changed"
            )


def _first_intact(directory: Path, order: list[Path], dangling: bool, open_one):
    """``(open_one(ckpt), ckpt, skipped)`` for the first checkpoint of ``order`` that
    ``open_one`` opens without a :class:`CorruptCheckpointError`; a warning names the ones
    skipped and why. Raises the error of the newest when none opens."""
    errors: list[tuple[Path, CorruptCheckpointError]] = []
    for ckpt in order:
        try:
            result = open_one(ckpt)
        except CorruptCheckpointError as e:
            errors.append((ckpt, e))
            continue
        if errors:
            why = "; ".join(str(e) for _, e in errors)
            warnings.warn(
                f"{directory}: skipped {len(errors)} damaged checkpoint{'s' if len(errors) > 1 else ''} "
                f"({why}); using {ckpt.name}, the newest intact one",
                stacklevel=3,
            )
        elif dangling:
            warnings.warn(
                f"{directory / LATEST_FILE} names a checkpoint that is missing; loading {ckpt.name}",
                stacklevel=3,
            )
        return result, ckpt, [p for p, _ in errors]
    if len(errors) == 1:
        raise errors[0][1]
    raise CorruptCheckpointError(
        f"{directory}: no intact checkpoint: " + "; ".join(str(e) for _, e in errors)
    ) from errors[0][1]


def find_latest(directory: str | os.PathLike) -> Path | None:
    """The newest intact checkpoint of a run directory, or ``None`` if it has none.

    Follows ``latest.json``; without one (or if it names a checkpoint that is gone) takes the
    complete ``ckpt-*`` directory with the highest step. A damaged checkpoint (a truncated or
    empty file, sizes that differ from those recorded at save time, a ``meta.json`` that is not
    valid JSON) is skipped for the next newest, with a warning. Digests are not checked here
    (that reads every byte): :func:`load_checkpoint` checks them.

    Raises:
        CorruptCheckpointError: the run directory has checkpoints, all of them damaged (a
            damaged ``latest.json`` is only a warning: the checkpoints are looked at instead).
        UnsafeCheckpointError: ``latest.json``, a ``meta.json`` or a ``model.safetensors`` is a
            pickle or another file that is not JSON or safetensors.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    order, _ = _candidates(directory)
    if not order:
        return None
    _, ckpt, _ = _first_intact(directory, order, False, _check_intact)
    return ckpt


def _resolve(path: Path) -> tuple[list[Path], bool]:
    """The ``ckpt-*`` directories that ``path`` designates, in the order to try them (one for
    a ``ckpt-*`` directory or its ``meta.json``), and whether ``latest.json`` dangles."""
    if path.is_file():
        if path.name == META_FILE:
            return [path.parent], False
        if path.name == LATEST_FILE:
            path = path.parent
        else:
            with open(path, "rb") as f:
                head = f.read(16)
            if head.lstrip()[:1] != b"{" and not (len(head) >= 9 and head[8:9] == b"{"):
                raise UnsafeCheckpointError(
                    f"{path}: expected a qkv checkpoint directory, found a file holding "
                    f"{_describe_unsafe(head)}. {_CONVERT_HINT}"
                )
            raise CheckpointError(
                f"{path}: expected a run directory or a ckpt-* directory, got a file; pass its directory"
            )
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    if (path / META_FILE).is_file():
        return [path], False
    order, dangling = _candidates(path)
    if order:
        return order, dangling
    unsafe = _unsafe_files(path)
    if unsafe:
        names = ", ".join(p.name for p in unsafe)
        raise UnsafeCheckpointError(
            f"{path}: no qkv checkpoint here; found {names}, which qkv does not open ({_CONVERT_HINT})"
        )
    raise CheckpointError(f"{path}: no checkpoint found (no {LATEST_FILE}, no complete ckpt-* directory)")


# ----------------------------------------------------------------------------- RNG states


def _rng_capture(tensors: dict[str, Tensor]) -> dict[str, Any]:
    tensors["rng.torch"] = torch.get_rng_state()
    cuda = 0
    # Reading CUDA states would initialize CUDA on every device; a run that never touched
    # CUDA has no CUDA state worth keeping.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
            cuda += 1
    version, internal, gauss = random.getstate()
    out: dict[str, Any] = {
        "cuda_devices": cuda,
        "python": {"version": version, "state": list(internal), "gauss_next": gauss},
        "numpy": None,
    }
    try:
        import numpy as np
    except ImportError:
        return out
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - the global one users seed
    out["numpy"] = {
        "kind": kind,
        "keys": [int(k) for k in keys],
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }
    return out


def _rng_state(rng: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> dict[str, Any]:
    """``{"torch": Tensor, "cuda": [Tensor per device], "python": ..., "numpy": ... or None}``."""
    return {
        "torch": tensors["rng.torch"],
        "cuda": [tensors[f"rng.cuda.{i}"] for i in range(rng.get("cuda_devices", 0))],
        "python": rng["python"],
        "numpy": rng.get("numpy"),
    }


def _rng_restore(rng: Mapping[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    saved = rng["cuda"]
    if saved and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if n != len(saved):
            warnings.warn(
                f"the checkpoint has CUDA RNG states for {len(saved)} devices, this machine has {n}; "
                f"restoring the first {min(n, len(saved))}",
                stacklevel=3,
            )
        for i, state in enumerate(saved[:n]):
            torch.cuda.set_rng_state(state, device=i)
    py = rng["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    if rng["numpy"] is not None:
        try:
            import numpy as np
        except ImportError:
            warnings.warn("the checkpoint has a NumPy RNG state but NumPy is not installed", stacklevel=3)
            return
        s = rng["numpy"]
        np.random.set_state(  # noqa: NPY002
            (
                s["kind"],
                np.asarray(s["keys"], dtype=np.uint32),
                s["pos"],
                s["has_gauss"],
                s["cached_gaussian"],
            )
        )


# ----------------------------------------------------------------------------- save


def _check_step(step: object) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step: expected an int >= 0, got {step!r}")
    return step


def _versions() -> dict[str, str]:
    st = _safetensors_torch()
    return {
        "qkv": _module_version("qkv"),  # the installed distribution's (importing qkv would be a cycle)
        "torch": torch.__version__,
        "safetensors": getattr(st, "__version__", None) or _module_version("safetensors"),
        "python": platform.python_version(),
    }


def _module_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers: this process is not saving any more
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_leftovers(directory: Path) -> None:
    for p in directory.iterdir():
        m = _LEFTOVER_RE.match(p.name)
        if m is None or _pid_alive(int(m.group(1) or m.group(2))):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


def _prune(directory: Path, current: Path, keep: int | None) -> None:
    if keep is None:
        return
    others = [p for _, p in _complete(directory) if p != current]
    for p in others[keep - 1 :]:
        # renamed first, so a kill during deletion never leaves a half-deleted ckpt-* behind
        trash = directory / f".trash-{p.name}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.replace(p, trash)
        except OSError:
            continue
        shutil.rmtree(trash, ignore_errors=True)


def _encode(model, optimizer, scheduler, step, config, vocab, metrics, state):
    """The tensors of ``model.safetensors`` and ``training.safetensors`` and the ``meta.json``
    document of a checkpoint (TypeError, naming the place, for anything that cannot be stored)."""
    model_sd = model.state_dict()
    model_tensors, model_aliases = _prepare_tensors(model_sd, "model")
    training: dict[str, Tensor] = {}
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": step,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": _Encoder("config", None)(dict(config)),
        "vocab": _Encoder("vocab", None)(vocab),
        "metrics": _Encoder("metrics", None)(metrics),
        "state": _Encoder("state", training)(state),
        "optimizer": None,
        "scheduler": None,
    }
    if optimizer is not None:
        sd = optimizer.state_dict()
        meta["optimizer"] = {
            "class": type(optimizer).__qualname__,
            "state": _Encoder("optimizer.state", training)(sd["state"]),
            "param_groups": _Encoder("optimizer.param_groups", training)(sd["param_groups"]),
        }
    if scheduler is not None:
        meta["scheduler"] = {
            "class": type(scheduler).__qualname__,
            "state": _Encoder("scheduler", training)(scheduler.state_dict()),
        }
    meta["rng"] = _rng_capture(training)
    training_tensors, training_aliases = _prepare_tensors(training, "training")
    meta["model_keys"] = list(model_sd)
    meta["aliases"] = {MODEL_FILE: model_aliases, TRAINING_FILE: training_aliases}
    meta["versions"] = _versions()
    return model_tensors, training_tensors, meta


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    step: int,
    config: Mapping[str, Any],
    vocab: Mapping[str, Any] | list | None = None,
    metrics: Mapping[str, Any] | None = None,
    state: Mapping[str, Any] | None = None,
    keep: int | None = 2,
) -> Path:
    """Write a complete checkpoint ``directory/ckpt-<step:08d>`` atomically; return its path.

    Args:
        directory: the run directory (created if needed).
        model: its ``state_dict()`` goes to ``model.safetensors``; tied tensors are stored once.
        optimizer: any ``torch.optim.Optimizer``; its tensor state goes to
            ``training.safetensors`` as ``optimizer.state.<param index>.<name>``, its param
            groups and non-tensor state to ``meta.json``.
        scheduler: an LR scheduler (anything with ``state_dict()``/``load_state_dict()``)
            whose state holds numbers, strings, lists, dicts and tensors only.
        step: the number of optimizer steps taken, an int >= 0.
        config, vocab, metrics: plain JSON data (numbers, strings, bools, None, lists, dicts;
            tuples and non-string dict keys keep their types). Tensors are refused.
        state: yours (epoch, position in the data...): plain JSON data, and tensors too (e.g.
            a ``torch.Generator``'s ``get_state()``), stored as ``state.<path>``.
        keep: how many complete checkpoints to keep (the new one included), or ``None`` for all.

    The RNG states of torch (CPU, and CUDA when it is in use), ``random`` and ``numpy.random``
    are always saved. Saving the same step twice replaces the earlier checkpoint (it is moved
    aside, the new one renamed in, then it is deleted; loading finds the moved one if a kill
    falls between the two renames).

    Raises:
        ValueError: a bad ``step`` or ``keep``.
        TypeError: something that cannot be stored (a lambda in a scheduler state, a tensor in
            ``config``...); the message names where it was found. Nothing is written then.
        OSError: from the file system; the previous checkpoints stay as they were.
    """
    step = _check_step(step)
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep: expected an int >= 1 or None, got {keep!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(config, Mapping):
        raise TypeError(
            f"config: expected a dict, got {type(config).__name__} (for a dataclass, pass dataclasses.asdict(config))"
        )
    st = _safetensors_torch()
    # Everything is encoded before the disk is touched: a value that cannot be stored fails here.
    model_tensors, training_tensors, meta = _encode(
        model, optimizer, scheduler, step, config, vocab, metrics, state
    )

    directory = Path(directory)
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        _fsync_dir(directory.parent)
    final = directory / f"ckpt-{step:08d}"
    tmp = directory / f".tmp-ckpt-{step:08d}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        files = {}
        mode = _new_file_mode(tmp)
        for name, tensors in ((MODEL_FILE, model_tensors), (TRAINING_FILE, training_tensors)):
            st.save_file(tensors, str(tmp / name), metadata={"format": "pt"})
            if mode is not None:  # safetensors writes 0600 whatever the umask; files here follow it
                os.chmod(tmp / name, mode)
            sha, size = _fsync_file(tmp / name)
            files[name] = {"sha256": sha, "bytes": size}
        meta["files"] = files
        _write_json(tmp / META_FILE, meta)  # written last: a ckpt-* with meta.json is complete
        _fsync_dir(tmp)
        if final.exists():
            old = directory / f".old-ckpt-{step:08d}-{os.getpid()}-{secrets.token_hex(4)}"
            os.replace(final, old)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old, final)
                raise
            _fsync_dir(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
            _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    pointer = directory / f".latest.json.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        _write_json(
            pointer,
            {"format": FORMAT, "format_version": FORMAT_VERSION, "checkpoint": final.name, "step": step},
        )
        os.replace(pointer, directory / LATEST_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            pointer.unlink()
        raise
    _fsync_dir(directory)

    _prune(directory, final, keep)
    _remove_leftovers(directory)
    return final


# ----------------------------------------------------------------------------- load


@dataclass
class Checkpoint:
    """A loaded checkpoint. Tensors are in memory; nothing in it can run code.

    Attributes:
        path: the ``ckpt-*`` directory.
        step, config, vocab, metrics, state: as given to :func:`save_checkpoint`.
        model_state: the model's ``state_dict`` (tied names share one tensor).
        optimizer_state: the optimizer's ``state_dict`` or ``None``.
        scheduler_state: the scheduler's ``state_dict`` or ``None``.
        rng_state: ``{"torch": uint8 tensor, "cuda": [uint8 tensor per device], "python":
            {...}, "numpy": {...} or None}``.
        meta: the raw ``meta.json`` (versions, digests, RNG states...).
        skipped: newer checkpoints of the run directory that were damaged and skipped (see
            :func:`load_checkpoint`).
    """

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
    meta: dict = field(default_factory=dict, repr=False)
    skipped: list[Path] = field(default_factory=list, repr=False)

    def restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        rng: bool = True,
        *,
        strict: bool = True,
    ) -> Checkpoint:
        """Load everything back into live objects, in place; return ``self``.

        ``optimizer`` (and ``scheduler``) must be built over the parameters of ``model`` in
        the same order as at save time. Afterwards ``optimizer.state_dict()`` equals the saved
        one, tensors and Python numbers with their types, and the random generators continue
        where they were (``rng=False`` leaves them alone). The checkpoint's own tensors are not
        handed to the optimizer, so one checkpoint can restore several times.

        Raises:
            CheckpointError: an optimizer or scheduler is given but the checkpoint has none.
            RuntimeError: from ``load_state_dict`` when names or shapes do not match.
        """
        model.load_state_dict(self.model_state, strict=strict)
        if optimizer is not None:
            if self.optimizer_state is None:
                raise CheckpointError(f"{self.path}: the checkpoint has no optimizer state")
            optimizer.load_state_dict(_clone_tree(self.optimizer_state))
        if scheduler is not None:
            if self.scheduler_state is None:
                raise CheckpointError(f"{self.path}: the checkpoint has no scheduler state")
            scheduler.load_state_dict(_clone_tree(self.scheduler_state))
        if rng:
            _rng_restore(self.rng_state)
        return self


def _load_tensors(path: Path, expected: Any, device: str, verify: bool) -> dict[str, Tensor]:
    _check_safetensors(path)
    _check_size(path, expected)
    if verify:
        if not isinstance(expected, dict) or "sha256" not in expected:
            raise CheckpointError(f"{path}: meta.json records no digest for this file")
        sha = _sha256(path)
        if sha != expected["sha256"]:
            raise CorruptCheckpointError(
                f"{path}: SHA-256 mismatch (file {sha[:16]}..., meta.json {str(expected['sha256'])[:16]}...); "
                "the file is corrupt or was changed after saving"
            )
    try:
        return _safetensors_torch().load_file(str(path), device=device)
    except Exception as e:  # safetensors raises its own error types on malformed files
        raise CorruptCheckpointError(f"{path}: cannot read the safetensors file ({e})") from e


def load_checkpoint(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu", verify: bool = True
) -> Checkpoint:
    """Load a checkpoint without unpickling anything.

    Args:
        path: a run directory (follows ``latest.json``, else the highest complete step), a
            ``ckpt-*`` directory, or its ``meta.json``.
        map_location: device for the model tensors. Optimizer tensors and RNG states load on
            the CPU; ``optimizer.load_state_dict`` moves them next to their parameters.
        verify: check the SHA-256 of both safetensors files against ``meta.json``.

    From a run directory, a damaged newest checkpoint (:class:`CorruptCheckpointError`: a
    truncated or empty file, a digest mismatch, a ``meta.json`` that is not valid JSON) is
    skipped for the newest intact one, with a warning that says what is wrong; the skipped
    ones are listed in :attr:`Checkpoint.skipped`. A ``ckpt-*`` directory given directly is
    loaded or refused, never substituted.

    Raises:
        UnsafeCheckpointError: a pickle, ``torch.save`` zip or any other non-safetensors /
            non-JSON file where a checkpoint file is expected (including a ``.pt`` file passed
            as ``path``).
        CorruptCheckpointError: a truncated, empty or missing file, a digest mismatch (in a
            run directory: every checkpoint damaged).
        CheckpointError: a format version this qkv does not know, no checkpoint in the directory.
    """
    path = Path(path)
    order, dangling = _resolve(path)
    if len(order) == 1 and not dangling:
        return _load_one(order[0], map_location, verify)
    ckpt, _, skipped = _first_intact(path, order, dangling, lambda c: _load_one(c, map_location, verify))
    ckpt.skipped = skipped
    return ckpt


def _load_one(ckpt: Path, map_location: str | torch.device, verify: bool) -> Checkpoint:
    """The checkpoint in the ``ckpt-*`` directory ``ckpt`` (see :func:`load_checkpoint`)."""
    meta = _read_json(ckpt / META_FILE)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{ckpt / META_FILE}: not a qkv checkpoint (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{ckpt / META_FILE}: checkpoint format version {meta.get('format_version')!r}, this qkv reads "
            f"version {FORMAT_VERSION}; use the qkv version that wrote it ({meta.get('versions', {}).get('qkv')})"
        )
    files = meta.get("files", {})
    device = str(map_location)
    model_state = _load_tensors(ckpt / MODEL_FILE, files.get(MODEL_FILE), device, verify)
    training = _load_tensors(ckpt / TRAINING_FILE, files.get(TRAINING_FILE), "cpu", verify)
    aliases = meta.get("aliases", {})
    for alias, target in aliases.get(TRAINING_FILE, {}).items():
        if target not in training:
            raise CheckpointError(f"{ckpt / TRAINING_FILE}: tensor {target!r} is missing")
        training[alias] = training[target]
    restored_model: dict[str, Tensor] = {}
    model_aliases = aliases.get(MODEL_FILE, {})
    for name in meta.get("model_keys", [*model_state, *model_aliases]):
        stored = model_aliases.get(name, name)
        if stored not in model_state:
            raise CheckpointError(f"{ckpt / MODEL_FILE}: tensor {stored!r} is missing")
        restored_model[name] = model_state[stored]  # tied names share one tensor

    where = ckpt / META_FILE
    try:
        step = _check_step(meta["step"])
        opt = meta.get("optimizer")
        optimizer_state = None
        if opt is not None:
            optimizer_state = {
                "state": _decode(opt["state"], training, where),
                "param_groups": _decode(opt["param_groups"], training, where),
            }
        sch = meta.get("scheduler")
        scheduler_state = _decode(sch["state"], training, where) if sch is not None else None
        rng_state = _rng_state(meta["rng"], training)
        user = {k: _decode(meta.get(k), training, where) for k in ("config", "vocab", "metrics", "state")}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{where}: malformed checkpoint metadata ({type(e).__name__}: {e})") from e
    return Checkpoint(
        path=ckpt,
        step=step,
        **user,
        model_state=restored_model,
        optimizer_state=optimizer_state,
        scheduler_state=scheduler_state,
        rng_state=rng_state,
        meta=meta,
    )
