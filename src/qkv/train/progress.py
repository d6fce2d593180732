"""Training progress: tqdm's bar on a terminal, a plain log line every N steps elsewhere."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["LogLines", "progress_bar"]


class LogLines:
    """tqdm's ``update``, ``set_postfix``, ``write`` and ``close`` as plain lines for logs and
    pipes: the meter every ``every`` units and at the end; rate and ETA count this session only."""

    def __init__(
        self, total: int, *, initial: int = 0, desc: str, unit: str = "step", stream: TextIO,
        every: int = 100, clock: Callable[[], float] = time.monotonic,
    ):  # fmt: skip
        self.total, self.n, self.initial, self.every = total, initial, initial, every
        self.desc, self.unit, self.stream, self.clock = desc, unit, stream, clock
        self.postfix, self.start, self.closed = "", clock(), False

    def update(self, n: int = 1) -> None:
        self.n += n
        if (self.n - self.initial) % self.every == 0:
            self.write(self.line())

    def set_postfix(self, refresh: bool = True, **fields: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in fields.items())

    def line(self) -> str:
        elapsed = self.clock() - self.start
        return _tqdm().format_meter(
            self.n, self.total, elapsed, ncols=0, prefix=self.desc, unit=self.unit,
            postfix=self.postfix or None, initial=self.initial,
        )  # fmt: skip

    def write(self, message: str, file: TextIO | None = None) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed pipe must not stop training
            print(message, file=file or self.stream, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.write(self.line())


def progress_bar(
    total: int,
    *,
    initial: int = 0,
    desc: str,
    stream: TextIO | None = None,
    unit: str = "step",
    every: int = 100,
) -> tqdm | LogLines:
    """A tqdm bar on ``stream`` (stderr) when it is a terminal, else :class:`LogLines`."""
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        return _tqdm()(total=total, initial=initial, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
    return LogLines(total, initial=initial, desc=desc, unit=unit, stream=stream, every=every)


def _tqdm() -> type[tqdm]:
    """tqdm's class, imported when a run starts (``pip install 'qkv[train]'``)."""
    try:
        from tqdm import tqdm
    except ImportError as e:
        raise ImportError("training progress needs tqdm: pip install 'qkv[train]'") from e
    return tqdm
