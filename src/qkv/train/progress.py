"""Training progress: tqdm's bar on a terminal; elsewhere (a log, a pipe) tqdm's meter as a plain
line when it starts, every N steps and at the end."""

from __future__ import annotations

import contextlib
import math
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["LogLines", "progress_bar"]


class LogLines:
    """The file tqdm draws on when ``stream`` is not a terminal: each redraw of its status line
    (``"\\r"``, the meter, padding) becomes a line of its own. A closed stream or pipe is
    ignored: it must not stop training."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.lstrip("\r").rstrip()
        if line:
            with contextlib.suppress(OSError, ValueError):
                print(line, file=self.stream, flush=True)

    def flush(self) -> None:
        """Every line is flushed as it is written."""


def progress_bar(
    total: int, *, initial: int = 0, desc: str, stream: TextIO | None = None, every: int = 100, unit: str = "step"
) -> tqdm:  # fmt: skip
    """A tqdm bar on ``stream`` (stderr) when it is a terminal; elsewhere tqdm's meter (no bar)
    on :class:`LogLines` every ``every`` steps, whatever the time between them, and at
    ``close()``. Rate and ETA count the steps of this session (from ``initial``) only."""
    try:
        from tqdm import tqdm
    except ImportError as e:  # imported when a run starts: the other commands need no extra
        raise ImportError("training progress needs tqdm: pip install 'qkv[train]'") from e
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
    # smoothing=0: the rate is the session's mean; maxinterval=inf: tqdm's monitor never
    # lowers miniters, so a slow run still prints every `every` steps, not every step
    return tqdm(
        total=total, initial=initial, desc=desc, unit=unit, file=LogLines(stream), ncols=0,
        mininterval=0, maxinterval=math.inf, miniters=every, smoothing=0,
    )  # fmt: skip
