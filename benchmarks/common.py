"""Shared helpers of the qkv benchmark suites (the measurement protocol: docs/performance/index.md).

- :func:`time_interleaved`: warm up, then time the contenders round by round, in orders where
  each follows each other one equally often (:func:`balanced_orders`), so that drift and
  carry-over on a shared machine hit all of them alike; optionally redo the rounds during which
  other processes kept the CPUs busy (:class:`CpuLoad`, :func:`wait_for_quiet`); report medians
  of the wall time and of the process's CPU time (all its threads) of each call.
- :func:`matmul_contender` / :func:`measure_roof`: the machine's measured roof, an n^3 matmul.
- :func:`peak_rss_growth`: peak resident memory of one call above the resident memory before it;
  :func:`mem_available`: what the machine has left; :func:`dense_mask`: a pattern's bool matrix
  built a slab of rows at a time (SDPA's mask at long T).
- :func:`machine_info`, :class:`CpuLoad`: what ran where, and how busy the rest of the machine was.
- :func:`markdown_table`, :func:`write_json`, :func:`log`: output.

Suites import this module as their sibling: ``.common`` when they are imported as a package
module (``python -m benchmarks.<suite>``, what ``make bench`` runs), ``common`` when run as a script
(``python benchmarks/<suite>.py`` puts ``benchmarks/`` first on ``sys.path``); none changes
``sys.path``. Each suite's entry point is ``main(argv: list[str] | None) -> int``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as _dt
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MEMORY_METHOD",
    "Contender",
    "CpuLoad",
    "Timing",
    "balanced_orders",
    "dense_mask",
    "log",
    "machine_info",
    "markdown_table",
    "matmul_contender",
    "measure_roof",
    "mem_available",
    "paired_ratio",
    "peak_rss_growth",
    "time_interleaved",
    "wait_for_quiet",
    "write_json",
]

MEMORY_METHOD = (
    "peak RSS growth: one untimed call after the timed ones; gc + malloc_trim, read VmRSS, reset the "
    "process high-water mark (write 5 to /proc/self/clear_refs), call, read VmHWM; report VmHWM - VmRSS. "
    "Inputs (and grad_output) exist before the call and are not counted; everything the call allocates "
    "and touches is (outputs, autograd saved tensors, gradients, workspaces), whatever allocates it."
)


def log(msg: str) -> None:
    """A progress line on stderr (stdout stays free for results)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- timing


@dataclass
class Contender:
    """One thing to time. ``run`` is one repetition; ``before`` runs untimed before each call
    (e.g. drop the gradients of the previous one); ``reps`` lowers the repetitions of a slow
    contender (it then takes part in the first ``reps`` rounds only)."""

    name: str
    run: Callable[[], object]
    before: Callable[[], object] | None = None
    reps: int | None = None
    warmup: int = 1


@dataclass
class Timing:
    name: str
    samples: list[float] = field(default_factory=list)  # seconds, in round order
    cpu_samples: list[float] = field(default_factory=list)  # this process's CPU seconds of each sample
    rounds: list[int] = field(default_factory=list)  # the round of each sample
    loads: list[float | None] = field(default_factory=list)  # other processes' load in that round
    redone: int = 0  # rounds thrown away (busy machine) and run again

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def cpu_median(self) -> float:
        """Median CPU time of this process per call (all its threads): on a machine shared with
        other processes, what one thread's call cost, whatever the scheduler did."""
        return statistics.median(self.cpu_samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def mean_other_load(self) -> float | None:
        known = [x for x in self.loads if x is not None]
        return statistics.fmean(known) if known else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "reps": len(self.samples),
            "median_s": self.median,
            "min_s": self.min,
            "max_s": self.max,
            "samples_s": self.samples,
            "cpu_median_s": self.cpu_median if self.cpu_samples else None,
            "cpu_samples_s": self.cpu_samples,
            "other_load_cores_per_rep": self.loads,
            "rounds_redone": self.redone,
        }


def balanced_orders(n: int) -> list[list[int]]:
    """Orders of ``n`` contenders (a Williams design) in which every contender comes right after
    every other one equally often: n orders for even n, 2n for odd n.

    What ran just before changes a call's time (caches, CPU state): at T=1024 an SDPA call is
    about 3% slower right after a 2048^3 matmul or the reference than right after another SDPA
    call, more than a cache flush or an untimed priming call removes. A plain rotation
    (A B C, B C A, C A B) has A after C twice as often as after B; these orders do not.
    """
    if n <= 2:
        return [list(range(n)), list(range(n))[::-1]] if n == 2 else [list(range(n))]
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    rows = [[(x + i) % n for x in first] for i in range(n)]
    return rows + [row[::-1] for row in rows] if n % 2 else rows


def _call(c: Contender) -> tuple[float, float]:
    """Wall and process CPU seconds of one call (``before`` untimed)."""
    if c.before is not None:
        c.before()
    c0, t0 = time.process_time(), time.perf_counter()
    c.run()
    return time.perf_counter() - t0, time.process_time() - c0


def time_interleaved(
    contenders: Sequence[Contender],
    reps: int,
    *,
    balanced: bool = True,
    label: str = "",
    progress: bool = True,
    max_other_load: float | None = None,
    max_redo: int = 0,
    wait_s: float = 0.0,
) -> dict[str, Timing]:
    """Warm every contender up (``warmup`` untimed calls each, interleaved), then time
    ``reps`` rounds; each round calls every contender still owed a repetition once.

    With ``balanced`` the rounds cycle through :func:`balanced_orders`, so that every contender
    follows every other one equally often (exactly so when ``reps`` is a multiple of the number of
    orders and every contender runs every round). With ``max_other_load``, a round during which other processes
    kept more cores busy than that is thrown away and run again (after waiting up to ``wait_s``
    for a quiet machine), at most ``max_redo`` times per call; the load of every kept round is
    recorded either way. Returns the timings by name, samples in round order.
    """
    if reps < 1:
        raise ValueError(f"reps: expected >= 1, got {reps}")
    names = [c.name for c in contenders]
    if len(set(names)) != len(names):
        raise ValueError(f"contender names must be unique, got {names}")
    for w in range(max(c.warmup for c in contenders)):
        for c in contenders:
            if w < c.warmup:
                dt, _ = _call(c)
                if progress:
                    log(f"{label} warm-up {w + 1} {c.name}: {dt * 1e3:.2f} ms")
    out = {c.name: Timing(c.name) for c in contenders}
    orders = balanced_orders(len(contenders)) if balanced else [list(range(len(contenders)))]
    r, redone = 0, 0
    while r < reps:
        order = [contenders[i] for i in orders[r % len(orders)]]
        load = CpuLoad().start()
        got = {}
        for c in order:
            if r < (c.reps or reps):
                got[c.name] = _call(c)
                if progress:
                    log(f"{label} rep {r + 1}/{c.reps or reps} {c.name}: {got[c.name][0] * 1e3:.2f} ms")
        other = load.stop()
        if max_other_load is not None and other is not None and other > max_other_load and redone < max_redo:
            redone += 1
            if progress:
                log(f"{label} round {r + 1} thrown away: other processes kept {other:.2f} cores busy")
            wait_for_quiet(wait_s, threshold=max_other_load)
            continue
        for name, (dt, cpu) in got.items():
            out[name].samples.append(dt)
            out[name].cpu_samples.append(cpu)
            out[name].rounds.append(r)
            out[name].loads.append(other)
        r += 1
    for t in out.values():
        t.redone = redone
    return out


def paired_ratio(a: Timing, b: Timing, *, cpu: bool = False) -> float:
    """Median over the rounds both ran of ``a_i / b_i``: less sensitive to drift between rounds
    than ``median(a) / median(b)``; of the CPU times with ``cpu``."""
    a_s, b_s = (a.cpu_samples, b.cpu_samples) if cpu else (a.samples, b.samples)
    b_by_round = dict(zip(b.rounds, b_s, strict=True))
    ratios = [x / b_by_round[r] for r, x in zip(a.rounds, a_s, strict=True) if r in b_by_round]
    return statistics.median(ratios)


# ----------------------------------------------------------------------------- roof


def matmul_contender(n: int = 2048, dtype: torch.dtype = torch.float32, name: str | None = None) -> Contender:
    """An ``n x n @ n x n`` matmul (``2 n^3`` FLOPs) into a preallocated output."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    c = torch.empty(n, n, dtype=dtype)
    return Contender(name or f"matmul-{n}-{str(dtype).removeprefix('torch.')}", lambda: torch.mm(a, b, out=c))


def measure_roof(n: int = 2048, dtype: torch.dtype = torch.float32, reps: int = 5) -> dict[str, Any]:
    """Median time of an n^3 matmul and its GFLOP/s (``2 n^3 / t``)."""
    c = matmul_contender(n, dtype)
    t = time_interleaved([c], reps, label=f"roof {c.name}", progress=False)[c.name]
    return {
        "n": n,
        "dtype": str(dtype).removeprefix("torch."),
        **t.to_dict(),
        "gflops": 2 * n**3 / t.median / 1e9,
    }


# ----------------------------------------------------------------------------- memory


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def peak_rss_growth(fn: Callable[[], object], before: Callable[[], object] | None = None) -> int | None:
    """Bytes by which the process's peak RSS during ``fn()`` exceeds its RSS just before
    (see :data:`MEMORY_METHOD`); ``None`` where the peak cannot be reset (not Linux)."""
    if before is not None:
        before()
    gc.collect()
    _malloc_trim()
    try:
        base = _status_kib("VmRSS")
    except (OSError, KeyError):
        return None
    if not _reset_peak_rss():
        return None
    fn()
    return max(0, _status_kib("VmHWM") - base) * 1024


def mem_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def dense_mask(pattern, t: int, chunk: int = 1024) -> torch.Tensor:
    """bool (1, 1, T, T) from the pattern's mask_mod, built ``chunk`` rows at a time (the
    pattern's own ``materialize`` holds int64 T x T temporaries: 8 GiB at T = 32768)."""
    fn = pattern.mask_mod(t, t)
    zero = torch.zeros(1, 1, 1, 1, dtype=torch.long)
    kv = torch.arange(t).view(1, 1, 1, t)
    out = torch.empty(1, 1, t, t, dtype=torch.bool)
    for r0 in range(0, t, chunk):
        q = torch.arange(r0, min(r0 + chunk, t)).view(1, 1, -1, 1)
        out[:, :, r0 : r0 + chunk] = fn(zero, zero, q, kv)
    return out


# ----------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_describe(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def machine_info(repo: Path | None = None) -> dict[str, Any]:
    """CPU model, cores, threads, torch and Python versions, date (UTC), and the git state."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = None
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "os_cpu_count": os.cpu_count(),
        "cpus_available": affinity,
        "torch_num_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if repo is not None:
        info["git"] = _git_describe(repo)
    return info


class CpuLoad:
    """How many cores other processes kept busy between :meth:`start` and :meth:`stop`
    (all-CPU busy time from /proc/stat minus this process's own CPU time, over wall time)."""

    _HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    @staticmethod
    def _busy_s() -> float | None:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
        steal = v[7] if len(v) > 7 else 0
        guest = sum(v[8:10]) if len(v) > 9 else 0  # already counted in user/nice
        return (sum(v) - idle - steal - guest) / CpuLoad._HZ

    @staticmethod
    def _own_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def start(self) -> CpuLoad:
        self._t0, self._busy0, self._own0 = time.perf_counter(), self._busy_s(), self._own_s()
        return self

    def stop(self) -> float | None:
        """Mean number of cores busy with other processes since :meth:`start`."""
        busy1, wall = self._busy_s(), time.perf_counter() - self._t0
        if busy1 is None or self._busy0 is None or wall <= 0:
            return None
        other = (busy1 - self._busy0) - (self._own_s() - self._own0)
        return max(0.0, other / wall)


def wait_for_quiet(max_wait_s: float, threshold: float = 0.25, window_s: float = 1.0) -> dict[str, Any]:
    """Sleep in ``window_s`` steps until other processes keep at most ``threshold`` cores busy,
    or ``max_wait_s`` has passed. Returns the time waited and the last load measured."""
    t0 = time.perf_counter()
    other = None
    while max_wait_s > 0:
        load = CpuLoad().start()
        time.sleep(window_s)
        other = load.stop()
        waited = time.perf_counter() - t0
        if other is None or other <= threshold or waited >= max_wait_s:
            break
        log(f"waiting for a quieter machine: other processes keep {other:.2f} cores busy ({waited:.0f} s)")
    return {"waited_s": time.perf_counter() - t0, "other_load_cores": other}


# ----------------------------------------------------------------------------- output


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one letter per column (``l``/``r``), default left."""
    align = align or "l" * len(headers)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def int_list(minimum: int):
    """An argparse ``type=``: comma-separated integers, each ``>= minimum`` (``"1024,4096"``)."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"expected integers >= {minimum}, got {text!r}")
        return values

    return parse


def machine_line(m: dict[str, Any], *, load: bool = True, extra: str = "") -> str:
    """The report's "Machine: ..." sentence from :func:`machine_info` (CPU, threads, torch,
    Python, date, load average at start, the qkv commit), with ``extra`` appended."""
    git = m.get("git") or {}
    at_start = f"load average {m['load_average_1m']:.2f} at start; " if load else ""
    dirty = " + uncommitted changes" if git.get("dirty") else ""
    return (
        f"Machine: {m['cpu_model']}, {m['os_cpu_count']} CPUs ({m['cpus_available']} available), "
        f"torch.get_num_threads() = {m['torch_num_threads']}, torch {m['torch_version']} "
        f"({m['torch_cpu_capability']}), Python {m['python_version']}; {m['date_utc']}; {at_start}"
        f"qkv at {(git.get('commit') or '?')[:10]}{dirty}{extra}."
    )


def write_report(out: Path, suite: str, quick: bool, res: dict[str, Any], to_markdown) -> str:
    """Write ``<suite>[_quick].json`` and ``.md`` under ``out``, print the markdown, log where."""
    stem = suite + ("_quick" if quick else "")
    write_json(out / f"{stem}.json", res)
    md = to_markdown(res)
    (out / f"{stem}.md").write_text(md)
    print(md)
    log(f"wrote {out / stem}.json and .md")
    return md


def flex_status() -> str | None:
    """None when compiled FlexAttention can run here, else why not."""
    from qkv.backends.flex import _cpu_compile_supported, flex_available

    if not flex_available():
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention"
    if not _cpu_compile_supported():
        return "compiled FlexAttention on CPU needs AVX2"
    return None


_FLEX = None


def compiled_flex():
    """``torch.compile(flex_attention)``, one per process (one graph per pattern and T)."""
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        # One graph per (pattern, T): more than torch's default limit of 8 in one run.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX
