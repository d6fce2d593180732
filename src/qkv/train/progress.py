"""A small progress display for training and evaluation loops: tqdm on a terminal, log lines elsewhere.

On a terminal one line is redrawn in place at most every ``min_interval`` seconds::

    train:  42%|########            | 420/1000 step [01:03<01:27, 6.65 step/s] loss=2.314 tok_s=12.4k

On anything else (CI logs, pipes, files) a plain line is printed at most every
``log_interval`` seconds (10 by default) and once at the end, so logs never flood::

    train: 42% 420/1000 step [01:03<01:27, 6.65 step/s] loss=2.314 tok_s=12.4k

Closing prints a summary line: ``train: done 1000/1000 step in 02:30 (6.67 step/s) loss=1.92``.

The terminal work (redrawing in place, erasing, printing messages above the bar without
tearing it, sharing the terminal with other bars) is tqdm's. :class:`Progress` only decides
what the line says and when it is shown, by the same rule in both modes: tqdm has no sparse
log mode, and the line format (rounded clock, average rate, compact fields) is qkv's.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["Progress"]

_BAR = 20
_SUFFIXES = (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3))


def _clock_text(seconds: float) -> str:
    """``mm:ss``, or ``h:mm:ss`` from one hour on (rounded to the second)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    h, rest = divmod(round(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _value_text(value: Any) -> str:
    """Compact field values: 4 significant digits, k/M/G/T suffixes from 10 000 on."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "numel", lambda: 1)() == 1:
        value = item()  # a 0-dim tensor or NumPy scalar
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if abs(value) >= 1e4:
        suffix, scale = next(s for s in _SUFFIXES if abs(value) >= s[1])
        return f"{value / scale:.3g}{suffix}" if abs(value / scale) < 1000 else f"{value / scale:.0f}{suffix}"
    if isinstance(value, int):
        return str(value)
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4g}"


def _quietly(action: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    """Run an output action; a closed pipe or stream must not stop training."""
    with contextlib.suppress(OSError, ValueError):
        action(*args, **kwargs)


def _line_bar(stream: TextIO):
    """A tqdm bar that shows the line it is given (tqdm is imported here: only terminals need it).

    The line is the bar's description (``bar_format="{desc}"``), drawn by
    ``set_description_str``; ``delay=inf`` keeps tqdm from drawing on its own (at creation,
    when closing); ``position=0`` pins the line, and with ``nrows=2`` a terminal that reports
    no height (0 rows, some pseudo-terminals) still shows it.
    """
    from tqdm import tqdm

    return tqdm(
        total=None, file=stream, bar_format="{desc}", delay=math.inf, position=0, leave=False,
        disable=False, ncols=0, nrows=2, mininterval=0, miniters=0,
    )  # fmt: skip


class Progress:
    """Progress of a loop with a bar, percentage, elapsed time, ETA, rate and live fields.

    Use as a context manager::

        with Progress(total=1000, desc="train") as bar:
            for step in range(1000):
                ...
                bar.update(loss=loss, tok_s=tokens_per_second)

    Args:
        total: the number of units expected, or ``None`` when unknown (no bar, no ETA).
        desc: a short label at the start of the line.
        initial: the units already done before this display started (a resumed run): the
            count continues from it, and the rate and ETA count only the units done here.
        unit: the name of one unit (``"step"``, ``"batch"``, ``"sentence"``).
        stream: where to write; ``None`` means ``sys.stderr`` at construction time.
        min_interval: seconds between redraws on a terminal.
        log_interval: seconds between lines when the stream is not a terminal.
        tty: force terminal (``True``) or log (``False``) behaviour; ``None`` asks
            ``stream.isatty()``.
        width: the terminal width the line is cut to; ``None`` asks the terminal.
        disable: print nothing (e.g. on all ranks but the first).
        clock: a function returning seconds (``time.monotonic``); tests pass a fake one.

    The rate is the average since the start, ``(n - initial) / elapsed``, and the ETA is
    ``(total - n) / rate``.

    Raises:
        ValueError: a negative ``total`` or ``initial``, non-positive intervals.
    """

    def __init__(
        self,
        total: int | None,
        *,
        desc: str,
        initial: int = 0,
        unit: str = "step",
        stream: TextIO | None = None,
        min_interval: float = 0.5,
        log_interval: float = 10.0,
        tty: bool | None = None,
        width: int | None = None,
        disable: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
            raise ValueError(f"total: expected an int >= 0 or None, got {total!r}")
        if isinstance(initial, bool) or not isinstance(initial, int) or initial < 0:
            raise ValueError(f"initial: expected an int >= 0, got {initial!r}")
        for name, value in (("min_interval", min_interval), ("log_interval", log_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name}: expected a number of seconds >= 0, got {value!r}")
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        self.min_interval = float(min_interval)
        self.log_interval = float(log_interval)
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty()) if callable(isatty) else False
        self.tty = tty
        self.width = width
        self.disable = disable
        self.clock = clock
        self.initial = initial
        self.n = initial
        self.fields: dict[str, Any] = {}
        self.start = clock()
        self.closed = False
        self._last_shown: float | None = None  # when the bar was drawn / the last log line printed
        self._bar = _line_bar(self.stream) if tty and not disable else None

    # -- context manager

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- numbers

    @property
    def elapsed(self) -> float:
        """Seconds since the start."""
        return max(self.clock() - self.start, 0.0)

    def _rate(self, elapsed: float) -> float | None:
        done = self.n - self.initial
        return done / elapsed if elapsed > 0 and done > 0 else None

    def _rate_text(self, rate: float | None) -> str:
        if rate is None:
            return f"? {self.unit}/s"
        if rate < 1:
            return f"{1 / rate:.2f} s/{self.unit}"
        return f"{rate:.2f} {self.unit}/s"

    def _fields_text(self) -> str:
        return " ".join(f"{k}={_value_text(v)}" for k, v in self.fields.items())

    def line(self, *, bar: bool | None = None) -> str:
        """The current status line (with the bar on a terminal, without it in logs)."""
        bar = self.tty if bar is None else bar
        elapsed = self.elapsed
        rate = self._rate(elapsed)
        if self.total is None:
            text = f"{self.desc}: {self.n} {self.unit} [{_clock_text(elapsed)}, {self._rate_text(rate)}]"
        else:
            frac = min(self.n / self.total, 1.0) if self.total else 1.0
            eta = (self.total - self.n) / rate if rate else math.inf
            eta = max(eta, 0.0)
            shown = f"{100 * frac:3.0f}%|{'#' * int(frac * _BAR):<{_BAR}}|" if bar else f"{100 * frac:.0f}%"
            text = (
                f"{self.desc}: {shown} {self.n}/{self.total} {self.unit} "
                f"[{_clock_text(elapsed)}<{_clock_text(eta)}, {self._rate_text(rate)}]"
            )
        fields = self._fields_text()
        return f"{text} {fields}" if fields else text

    # -- output

    def _emit(self, text: str) -> None:
        def write() -> None:
            self.stream.write(text)
            self.stream.flush()

        _quietly(write)

    def _columns(self) -> int:
        return self.width if self.width is not None else shutil.get_terminal_size((100, 20)).columns

    def _show(self) -> None:
        """Redraw the line on a terminal, or print it as a log line."""
        if self._bar is None:
            self._emit(self.line() + "\n")
            return
        _quietly(self._bar.set_description_str, self.line()[: max(self._columns() - 1, 1)], refresh=True)

    def update(self, n: int = 1, **fields: Any) -> None:
        """Count ``n`` more units (0 to only change fields) and set fields like ``loss=...``.

        Raises:
            ValueError: ``n`` is not an int >= 0.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n: expected an int >= 0, got {n!r}")
        self.n += n
        self.fields.update(fields)
        if self.disable or self.closed:
            return
        now = self.clock()
        interval = self.min_interval if self.tty else self.log_interval
        due = self._last_shown is None or now - self._last_shown >= interval
        finished = self.tty and self.total is not None and self.n >= self.total
        if due or finished:  # a terminal also shows the last step at once
            self._show()
            self._last_shown = now

    def write(self, message: str) -> None:
        """Print ``message`` on its own line above the bar (the bar is redrawn below it)."""
        if self.disable:
            return
        if self._bar is None or self.closed or self._last_shown is None:
            self._emit(f"{message}\n")
            return
        _quietly(self._bar.write, message, file=self.stream)  # tqdm erases the bars, prints, redraws them

    def summary(self) -> str:
        """The final line: units done, time and average rate here (and where it resumed), the last fields."""
        elapsed = self.elapsed
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        word = "done" if self.total is None or self.n >= self.total else "stopped at"
        rate = self._rate_text(self._rate(elapsed))
        resumed = f", resumed at {self.initial}" if self.initial else ""
        text = f"{self.desc}: {word} {done} {self.unit} in {_clock_text(elapsed)} ({rate}{resumed})"
        fields = self._fields_text()
        return f"{text} {fields}" if fields else text

    def close(self) -> None:
        """Replace the bar by the summary line (printed once; later calls do nothing)."""
        if self.closed:
            return
        self.closed = True
        if self.disable:
            return
        if self._bar is not None:
            if self._last_shown is not None:
                _quietly(self._bar.clear)
            self._bar.close()
        self._emit(self.summary() + "\n")
