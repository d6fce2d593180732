"""Directories written whole or not at all: what makes a checkpoint survive a kill mid-save."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(target: Path, files: Mapping[str, bytes]) -> None:
    """Make ``target`` a directory of ``files`` (``{name: bytes}``), whole or not at all: written
    into a fsynced temporary sibling renamed to ``target`` (one already there is moved aside)."""
    tag = f"{target.name}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp, old = target.parent / f".tmp-{tag}", target.parent / f".old-{tag}"
    try:
        tmp.mkdir()
        for name, data in files.items():
            with open(tmp / name, "wb") as f:  # created with the umask's permissions
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        _fsync(tmp)
        if target.is_dir():
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        if old.exists() and not target.exists():
            os.replace(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def _fsync(directory: Path) -> None:
    """Make the entries of ``directory`` durable (not on Windows: directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
