"""Cost as work grows: time and peak memory of patterned attention from T = 1k to 128k, and the
per-call cost of ``qkv.attention`` at short T.

Growth (B=1, H=8, D=64, fp32, forward under torch.no_grad(), T doubling, default 1024..131072):

    window      qkv.masks.sliding_window(256): |i - j| <= 256
    longformer  qkv.masks.longformer(256, range(16)): window 256 + 16 global tokens
    bigbird     qkv.masks.bigbird(64, 3, 2, 2, seed=0): block 64, 3 window blocks, 2 global, 2 random
    causal      qkv.masks.causal(): j <= i

each run by

    qkv         qkv.attention(q, k, v, mask=pattern)   (backend "auto"; the backend it ran is recorded)
    sdpa-mask   F.scaled_dot_product_attention(q, k, v, attn_mask=<the dense bool (T, T) mask>)
    flex        torch.compile(flex_attention, dynamic=False) with the pattern's BlockMask
                (qkv.backends.flex.layout_block_mask, 64x64 tiles, built outside the timed calls)

A contender is skipped, with its reason in the results, where its memory would exceed the budget
(``min(--max-mem-gib, half of MemAvailable)``: qkv by its own memory plan, ``dispatch_report``;
sdpa-mask by its bool mask and SDPA's float copy, 5 T^2 bytes; flex by its output, log-sum-exp and
BlockMask) or where its call, extrapolated from the previous T by the slope of its last two sizes
(2 before it has two), would take more than ``--max-call-s`` CPU seconds. Once skipped, larger T are too.

Each case: one untimed call (compiles flex), one untimed call under the peak-RSS probe (the memory
column, :func:`common.peak_rss_growth`), then ``--reps`` interleaved, balanced rounds
(``--slow-reps`` for a contender whose first call took more than 2 s of wall time). Per pattern and contender:
the log-log slope (least squares of log time on log T over the T >= ``--fit-from`` that ran) and
the crossover, the smallest measured T from which qkv (and flex) is faster than sdpa-mask at every
larger T where both ran.

Per-call cost (no mask, forward, B=1, H=8, D=64, fp32, T = 1, 2, 4, ..., 1024):
``qkv.attention(q, k, v)`` against ``F.scaled_dot_product_attention(q, k, v)``; a rep times
enough calls in a row to last about 20 ms and reports the time per call.

    python -m benchmarks.scaling               # results/scaling.{json,md}, docs/scaling-*.png
    python -m benchmarks.scaling --quick       # T = 1024..4096, 2 reps -> results/scaling_quick.* and figures there
    python -m benchmarks.scaling --sizes 1024,2048 --patterns window --no-per-call
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import qkv

if __package__:  # imported as a package module (`python -m benchmarks.<suite>`)
    from .common import (
        MEMORY_METHOD,
        Contender,
        compiled_flex,
        dense_mask,
        flex_status,
        int_list,
        log,
        machine_info,
        machine_line,
        markdown_table,
        measure_roof,
        mem_available,
        peak_rss_growth,
        time_interleaved,
        write_report,
    )
else:  # python benchmarks/<suite>.py: the script's directory is first on sys.path
    from common import (
        MEMORY_METHOD,
        Contender,
        compiled_flex,
        dense_mask,
        flex_status,
        int_list,
        log,
        machine_info,
        machine_line,
        markdown_table,
        measure_roof,
        mem_available,
        peak_rss_growth,
        time_interleaved,
        write_report,
    )

SUITE = "scaling"
REPO = Path(__file__).resolve().parent.parent
B, H, D = 1, 8, 64
DTYPE = torch.float32
ELEMENT = 4  # bytes of fp32
WINDOW = 256
FLEX_BLOCK = (64, 64)
PATTERN_NAMES = ("window", "longformer", "bigbird", "causal")
CONTENDERS = ("qkv", "sdpa-mask", "flex")
SIZES = [1024 * 2**i for i in range(8)]  # 1024 .. 131072
QUICK_SIZES = [1024, 2048, 4096]
PER_CALL_SIZES = [2**i for i in range(11)]  # 1 .. 1024
QUICK_PER_CALL_SIZES = [1, 16, 256]
PER_CALL_REP_S = 0.02
SLOW_S = 2.0


def make_patterns() -> dict[str, qkv.masks.Mask]:
    """The pattern objects, made once per run (qkv and flex cache plans per object)."""
    m = qkv.masks
    return {
        "window": m.sliding_window(WINDOW),
        "longformer": m.longformer(WINDOW, range(16)),
        "bigbird": m.bigbird(64, 3, 2, 2, seed=0),
        "causal": m.causal(),
    }


# ----------------------------------------------------------------------------- what fits


def memory_need(name: str, pattern, q: torch.Tensor) -> tuple[int | None, str]:
    """Estimated peak bytes of one forward call of contender ``name`` at ``q``'s T, and where
    the estimate comes from."""
    t = q.shape[-2]
    if name == "qkv":
        report = qkv.dispatch_report(q, q, q, mask=pattern)
        return report.memory.get(report.chosen), f"qkv's memory plan ({report.chosen})"
    if name == "sdpa-mask":
        return 5 * t * t, "bool mask T^2 + SDPA's float copy 4 T^2"
    tiles = math.ceil(t / FLEX_BLOCK[0]) * math.ceil(t / FLEX_BLOCK[1])
    out = B * H * t * (D + 1) * ELEMENT  # output and log-sum-exp
    return out + 4 * tiles * 4, "output + log-sum-exp + BlockMask index tables"


def skip_reason(name: str, pattern, q: torch.Tensor, history: list[tuple[int, float]], opts) -> str | None:
    """Why contender ``name`` does not run at ``q``'s T (None: it runs). ``history`` holds its
    (T, median CPU s per call) at the smaller T it ran."""
    t = q.shape[-2]
    need, source = memory_need(name, pattern, q)
    avail = mem_available()
    budget = opts["max_mem_bytes"] if avail is None else min(opts["max_mem_bytes"], avail // 2)
    if need is not None and need > budget:
        return f"does not fit: needs about {need / 2**30:.1f} GiB ({source}), budget {budget / 2**30:.1f} GiB"
    if history:
        (t1, s1), slope = history[-1], 2.0
        if len(history) >= 2:
            t0, s0 = history[-2]
            slope = max(1.0, math.log(s1 / s0) / math.log(t1 / t0))
        predicted = s1 * (t / t1) ** slope
        if predicted > opts["max_call_s"]:
            return (
                f"too slow: about {predicted:.0f} CPU s per call extrapolated from T={t1} (slope {slope:.2f}), "
                f"above --max-call-s {opts['max_call_s']:g}"
            )
    return None


# ----------------------------------------------------------------------------- contenders


def contender_fn(name: str, pattern, q, k, v) -> Callable[[], torch.Tensor]:
    """One forward call of contender ``name`` on (q, k, v) (inputs built outside the call)."""
    if name == "qkv":
        return lambda: qkv.attention(q, k, v, mask=pattern).out
    t = q.shape[-2]
    if name == "sdpa-mask":
        mask = dense_mask(pattern, t)
        return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    from qkv.backends.flex import layout_block_mask

    block_mask, flex = layout_block_mask(pattern, t, t, FLEX_BLOCK), compiled_flex()
    return lambda: flex(q, k, v, block_mask=block_mask)


def no_grad(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    def run():
        with torch.no_grad():
            return fn()

    return run


# ----------------------------------------------------------------------------- growth


def run_growth_case(pattern_name: str, t: int, opts, history: dict[str, list]) -> list[dict[str, Any]]:
    """Every contender of one (pattern, T) that fits: first call, memory, interleaved reps.
    Appends each one's (T, median CPU s) to ``history``; returns one row per contender."""
    pattern = opts["patterns"][pattern_name]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, t, D, generator=g, dtype=DTYPE) for _ in range(3))
    rows, contenders, info = [], [], {}
    for name in opts["contenders"]:
        why = opts["skip_all"].get(name) or opts["stopped"].get((pattern_name, name))
        why = why or skip_reason(name, pattern, q, history[name], opts)
        if why is not None:
            opts["stopped"].setdefault((pattern_name, name), why)
            rows.append({"pattern": pattern_name, "T": t, "contender": name, "skipped": why})
            continue
        run = no_grad(contender_fn(name, pattern, q, k, v))
        t0 = time.perf_counter()
        first = run()
        first_s = time.perf_counter() - t0
        del first
        mem = peak_rss_growth(run) if opts["memory"] else None
        info[name] = {"first_call_s": first_s, "peak_rss_growth_bytes": mem}
        contenders.append(
            Contender(name, run, reps=opts["slow_reps"] if first_s > SLOW_S else None, warmup=0)
        )
        peak = "not measured" if mem is None else f"{mem / 2**20:.0f} MiB"
        log(f"{pattern_name} T={t} {name}: first call {first_s:.2f} s, peak {peak}")
    if contenders:
        timings = time_interleaved(contenders, opts["reps"], label=f"{pattern_name} T={t}", progress=False)
        backend = qkv.dispatch_report(q, k, v, mask=pattern).chosen
        for c in contenders:
            tm = timings[c.name]
            history[c.name].append((t, tm.cpu_median))
            rows.append(
                {"pattern": pattern_name, "T": t, "contender": c.name, **tm.to_dict(), **info[c.name],
                 "backend": backend if c.name == "qkv" else None,
                 "other_processes_load_cores": tm.mean_other_load}
            )  # fmt: skip
        log(
            f"{pattern_name} T={t}: "
            + ", ".join(f"{c.name} {timings[c.name].median * 1e3:.1f} ms" for c in contenders)
        )
    return rows


def fit_slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(y) on log(T) (None below two points)."""
    if len(points) < 2:
        return None
    xs, ys = [math.log(t) for t, _ in points], [math.log(y) for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def crossover(rows: list[dict[str, Any]], pattern: str, name: str) -> dict[str, Any]:
    """The smallest measured T from which ``name`` takes less CPU time than sdpa-mask at every
    larger T where both ran; ``None`` with the reason otherwise."""
    med = {
        (r["contender"], r["T"]): r["cpu_median_s"]
        for r in rows
        if r["pattern"] == pattern and "median_s" in r
    }
    both = sorted(t for (c, t) in med if c == name and ("sdpa-mask", t) in med)
    if not both:
        return {"T": None, "note": "no T where both ran"}
    wins = [med[(name, t)] < med[("sdpa-mask", t)] for t in both]
    if not wins[-1]:
        return {"T": None, "note": f"slower than sdpa-mask at the largest common T ({both[-1]})"}
    i = len(wins)
    while i > 0 and wins[i - 1]:
        i -= 1
    t = both[i]
    note = f"faster from the smallest T measured ({t})" if i == 0 else f"slower at T={both[i - 1]}"
    return {"T": t, "note": note, "ratio_at_crossover": med[(name, t)] / med[("sdpa-mask", t)]}


def summarize(rows: list[dict[str, Any]], opts) -> list[dict[str, Any]]:
    """Per pattern and contender: fitted time and memory slopes, largest T run, crossovers."""
    out = []
    for pattern in opts["pattern_names"]:
        for name in opts["contenders"]:
            ran = [r for r in rows if r["pattern"] == pattern and r["contender"] == name and "median_s" in r]
            fit = [r for r in ran if r["T"] >= opts["fit_from"]] or ran
            mem = [(r["T"], r["peak_rss_growth_bytes"]) for r in fit if r.get("peak_rss_growth_bytes")]
            out.append(
                {"pattern": pattern, "contender": name, "sizes_run": [r["T"] for r in ran],
                 "fit_sizes": [r["T"] for r in fit],
                 "cpu_time_slope": fit_slope([(r["T"], r["cpu_median_s"]) for r in fit]),
                 "wall_time_slope": fit_slope([(r["T"], r["median_s"]) for r in fit]),
                 "memory_slope": fit_slope(mem),
                 "crossover_vs_sdpa_mask": crossover(rows, pattern, name) if name != "sdpa-mask" else None}
            )  # fmt: skip
    return out


# ----------------------------------------------------------------------------- per call


def run_per_call(sizes: list[int], opts) -> list[dict[str, Any]]:
    """qkv.attention against F.scaled_dot_product_attention, no mask, forward, per call."""
    rows = []
    for t in sizes:
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(B, H, t, D, generator=g, dtype=DTYPE) for _ in range(3))
        calls = {
            "sdpa": no_grad(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v)),
            "qkv": no_grad(lambda q=q, k=k, v=v: qkv.attention(q, k, v).out),
        }
        for fn in calls.values():  # warm: checks, choice and runner cached
            fn(), fn()
        t0 = time.perf_counter()
        for _ in range(10):
            calls["sdpa"]()
        inner = max(1, min(2000, round(PER_CALL_REP_S / ((time.perf_counter() - t0) / 10))))

        def repeat(fn, n=inner):
            for _ in range(n):
                fn()

        contenders = [Contender(n, lambda fn=fn: repeat(fn)) for n, fn in calls.items()]
        tm = time_interleaved(contenders, opts["per_call_reps"], label=f"per call T={t}", progress=False)
        sdpa_us, qkv_us = (tm[n].median / inner * 1e6 for n in ("sdpa", "qkv"))
        rows.append(
            {"T": t, "calls_per_rep": inner, "sdpa_us": sdpa_us, "qkv_us": qkv_us,
             "overhead_us": qkv_us - sdpa_us, "ratio": qkv_us / sdpa_us,
             "timings": {n: x.to_dict() for n, x in tm.items()},
             "other_processes_load_cores": tm["qkv"].mean_other_load,
             "backend": qkv.dispatch_report(q, k, v).chosen}
        )  # fmt: skip
        log(f"per call T={t}: sdpa {sdpa_us:.1f} us, qkv {qkv_us:.1f} us ({inner} calls per rep)")
    return rows


# ----------------------------------------------------------------------------- figures


def growth_figure(
    rows: list[dict[str, Any]], summary: list[dict[str, Any]], pattern: str, path: Path
) -> None:
    """Time and peak memory against T, log-log, one line per contender, its slope in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    slopes = {s["contender"]: s for s in summary if s["pattern"] == pattern}
    for name, marker in zip(CONTENDERS, "osD", strict=True):
        ran = [r for r in rows if r["pattern"] == pattern and r["contender"] == name and "median_s" in r]
        if not ran:
            continue
        s = slopes[name]
        ts = [r["T"] for r in ran]
        label = name + (f" (slope {s['cpu_time_slope']:.2f})" if s["cpu_time_slope"] is not None else "")
        ax_t.loglog(ts, [r["cpu_median_s"] * 1e3 for r in ran], marker=marker, label=label)
        mem = [(r["T"], r["peak_rss_growth_bytes"] / 2**20) for r in ran if r.get("peak_rss_growth_bytes")]
        if mem:
            mlabel = name + (f" (slope {s['memory_slope']:.2f})" if s["memory_slope"] is not None else "")
            ax_m.loglog(*zip(*mem, strict=True), marker=marker, label=mlabel)
    for ax, what in ((ax_t, "forward CPU time, ms (1 thread)"), (ax_m, "peak memory growth, MiB")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("T (tokens)")
        ax.set_ylabel(what)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{pattern}: B=1, H=8, D=64, fp32, forward")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def per_call_figure(rows: list[dict[str, Any]], path: Path) -> None:
    """Microseconds per call of qkv.attention and SDPA against T, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), constrained_layout=True)
    ts = [r["T"] for r in rows]
    ax.loglog(ts, [r["sdpa_us"] for r in rows], marker="o", label="F.scaled_dot_product_attention")
    ax.loglog(ts, [r["qkv_us"] for r in rows], marker="s", label="qkv.attention")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("T (tokens)")
    ax.set_ylabel("time per call, us")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("per call, no mask: B=1, H=8, D=64, fp32")
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------- the run


def run_suite(opts) -> dict[str, Any]:
    t_start = time.perf_counter()
    machine = machine_info(REPO)
    roof = measure_roof(2048, DTYPE, 3)
    log(f"roof fp32 matmul 2048^3: {roof['gflops']:.1f} GFLOP/s, {torch.get_num_threads()} thread(s)")
    opts["patterns"] = make_patterns()
    opts["stopped"] = {}
    opts["skip_all"] = {"flex": why} if (why := flex_status()) is not None else {}
    rows: list[dict[str, Any]] = []
    for pattern in opts["pattern_names"]:
        history: dict[str, list] = {name: [] for name in opts["contenders"]}
        for t in opts["sizes"]:
            rows += run_growth_case(pattern, t, opts, history)
    summary = summarize(rows, opts)
    per_call = run_per_call(opts["per_call_sizes"], opts) if opts["per_call_sizes"] else []
    figures = {}
    for pattern in opts["pattern_names"]:
        figures[pattern] = opts["figures"] / f"scaling-{pattern}{opts['suffix']}.png"
        growth_figure(rows, summary, pattern, figures[pattern])
    if per_call:
        figures["per_call"] = opts["figures"] / f"scaling-per-call{opts['suffix']}.png"
        per_call_figure(per_call, figures["per_call"])
    cfg = {k: v for k, v in opts.items() if k not in ("patterns", "stopped", "skip_all", "figures")}
    cfg.update(
        {"B": B, "H": H, "D": D, "dtype": "float32", "flex_block": list(FLEX_BLOCK),
         "patterns": {n: repr(opts["patterns"][n]) for n in opts["pattern_names"]},
         "memory_method": MEMORY_METHOD if opts["memory"] else "not measured (--no-memory)",
         "slope": f"least squares of log(median s) on log(T) over the T >= {opts['fit_from']} that ran, "
                  "of the process's CPU time per call (one thread: the work, whatever else ran) and of wall time",
         "crossover": "on the median CPU time per call"}
    )  # fmt: skip
    return {
        "suite": SUITE,
        "machine": machine,
        "load_average_1m_end": machine_info()["load_average_1m"],
        "config": cfg,
        "roof": roof,
        "growth": rows,
        "summary": summary,
        "per_call": per_call,
        "figures": {
            k: str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p) for k, p in figures.items()
        },
        "wall_s": time.perf_counter() - t_start,
    }


# ----------------------------------------------------------------------------- report


def _cell(row: dict[str, Any] | None, key: str, scale: float, fmt: str) -> str:
    if row is None:
        return ""
    if "skipped" in row:
        return "does not fit" if row["skipped"].startswith("does not fit") else "too slow"
    value = row.get(key)
    return "n/a" if value is None else format(value * scale, fmt)


def _time_cell(row: dict[str, Any] | None) -> str:
    """``CPU (wall)`` ms of a growth row, or why it was skipped."""
    if row is None or "skipped" in row:
        return _cell(row, "", 0, "")
    return f"{row['cpu_median_s'] * 1e3:.1f} ({row['median_s'] * 1e3:.1f})"


def growth_table(res: dict[str, Any]) -> str:
    by = {(r["pattern"], r["T"], r["contender"]): r for r in res["growth"]}
    names = res["config"]["contenders"]
    headers = [
        "pattern",
        "T",
        *(f"{n} CPU (wall) ms" for n in names),
        *(f"{n} MiB" for n in names),
        "qkv ran",
        "other load",
    ]
    rows = []
    for pattern in res["config"]["pattern_names"]:
        for t in res["config"]["sizes"]:
            got = [by.get((pattern, t, n)) for n in names]
            loads = [
                r["other_processes_load_cores"]
                for r in got
                if r and r.get("other_processes_load_cores") is not None
            ]
            rows.append(
                [pattern, t, *(_time_cell(r) for r in got),
                 *(_cell(r, "peak_rss_growth_bytes", 2**-20, ".0f") for r in got),
                 (by.get((pattern, t, "qkv")) or {}).get("backend") or "",
                 f"{statistics.fmean(loads):.2f}" if loads else ""]
            )  # fmt: skip
    return markdown_table(headers, rows, "lr" + "r" * 2 * len(names) + "lr")


def summary_table(res: dict[str, Any]) -> str:
    def slope(x):
        return "" if x is None else f"{x:.2f}"

    rows = []
    for s in res["summary"]:
        cross = s["crossover_vs_sdpa_mask"]
        where = (
            "" if cross is None else (f"T = {cross['T']} ({cross['note']})" if cross["T"] else cross["note"])
        )
        fit = s["fit_sizes"]
        span = f"{fit[0]}..{fit[-1]} ({len(fit)})" if fit else "none ran"
        rows.append(
            [
                s["pattern"],
                s["contender"],
                span,
                slope(s["cpu_time_slope"]),
                slope(s["wall_time_slope"]),
                slope(s["memory_slope"]),
                where,
            ]
        )
    headers = [
        "pattern",
        "contender",
        "T fitted (points)",
        "CPU time slope",
        "wall time slope",
        "memory slope",
        "beats sdpa-mask (CPU time) from",
    ]
    return markdown_table(headers, rows, "lllrrrl")


def skipped_table(res: dict[str, Any]) -> str:
    first: dict[tuple[str, str], dict[str, Any]] = {}
    for r in res["growth"]:
        if "skipped" in r:
            first.setdefault((r["pattern"], r["contender"]), r)
    rows = [[p, c, r["T"], r["skipped"]] for (p, c), r in first.items()]
    return (
        markdown_table(["pattern", "contender", "from T", "why"], rows, "llrl")
        if rows
        else "Nothing skipped."
    )


def per_call_table(res: dict[str, Any]) -> str:
    """Wall time per call (and the process's CPU time per call in brackets), qkv against SDPA."""

    def us(r: dict[str, Any], name: str) -> str:
        cpu = r["timings"][name]["cpu_median_s"] / r["calls_per_rep"] * 1e6
        return f"{r[name + '_us']:.1f} ({cpu:.1f})"

    rows = [
        [r["T"], r["backend"], r["calls_per_rep"], us(r, "sdpa"), us(r, "qkv"), f"{r['overhead_us']:+.1f}",
         f"{r['ratio']:.2f}", f"{r['other_processes_load_cores']:.2f}"]
        for r in res["per_call"]
    ]  # fmt: skip
    headers = ["T", "qkv ran", "calls per rep", "SDPA us (CPU)", "qkv.attention us (CPU)", "qkv - SDPA us", "ratio",
               "other load"]  # fmt: skip
    return markdown_table(headers, rows, "rlrrrrrr")


def to_markdown(res: dict[str, Any]) -> str:
    cfg, m = res["config"], res["machine"]
    parts = [
        "# scaling: cost as work grows",
        f"B={B}, H={H}, D={D}, float32, forward under `torch.no_grad()`, {cfg['threads']} torch thread(s). "
        f"Median of {cfg['reps']} reps ({cfg['slow_reps']} for a call over {SLOW_S:g} s), contenders interleaved "
        "in balanced rounds after an untimed first call (flex: the compiling call) and one untimed call under "
        "the peak-RSS probe (MiB: peak resident memory growth of that call; inputs not counted).",
        machine_line(m, extra=f"; load average {res['load_average_1m_end']:.2f} at the end; "
                     f"roof (fp32 2048^3 matmul) {res['roof']['gflops']:.1f} GFLOP/s; wall {res['wall_s'] / 60:.1f} min"),
        "Patterns: " + "; ".join(f"{n} = `{r}`" for n, r in cfg["patterns"].items()) + ". Contenders: qkv = "
        "`qkv.attention(q, k, v, mask=pattern)` (backend auto, the one it ran in `qkv ran`); sdpa-mask = "
        "`F.scaled_dot_product_attention` with the dense bool mask; flex = compiled FlexAttention with the "
        f"pattern's BlockMask at {FLEX_BLOCK[0]}x{FLEX_BLOCK[1]} tiles. Skipped: above the memory budget "
        f"(min({cfg['max_mem_gib']:g} GiB, half of MemAvailable)) or above {cfg['max_call_s']:g} CPU s per call "
        "extrapolated from the smaller T.",
        *res.get("notes", []),
        "## Time and memory", growth_table(res),
        f"## Fitted slopes (log-log, T >= {cfg['fit_from']}) and crossover", summary_table(res),
        "## Skipped (first T; larger T skipped too)", skipped_table(res),
    ]  # fmt: skip
    if res["per_call"]:
        parts += ["## Per-call cost, no mask (qkv.attention against SDPA)", per_call_table(res)]
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scaling.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="T=1024..4096, 2 reps, 3 per-call sizes: *_quick.*")
    p.add_argument("--sizes", type=int_list(1), default=None, help="T values (default 1024..131072)")
    p.add_argument(
        "--patterns",
        default=",".join(PATTERN_NAMES),
        help="comma-separated subset of " + ",".join(PATTERN_NAMES),
    )
    p.add_argument(
        "--contenders", default=",".join(CONTENDERS), help="comma-separated subset of " + ",".join(CONTENDERS)
    )
    p.add_argument("--reps", type=int, default=5, help="timed reps per case (default 5)")
    p.add_argument("--slow-reps", type=int, default=2, help=f"reps of a call over {SLOW_S:g} s (default 2)")
    p.add_argument(
        "--max-mem-gib", type=float, default=6.0, help="memory budget of one call, GiB (default 6)"
    )
    p.add_argument(
        "--max-call-s", type=float, default=5.0, help="skip calls predicted above this many CPU s (default 5)"
    )
    p.add_argument("--fit-from", type=int, default=4096, help="fit slopes over T >= this (default 4096)")
    p.add_argument(
        "--per-call-sizes", type=int_list(1), default=None, help="T of the per-call part (default 1..1024)"
    )
    p.add_argument("--per-call-reps", type=int, default=15, help="reps of the per-call part (default 15)")
    p.add_argument("--no-per-call", action="store_true", help="skip the per-call part")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS probe")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="results directory")
    p.add_argument(
        "--figures", type=Path, default=None, help="figure directory (default docs/; --quick: --out)"
    )
    args = p.parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """The suite from parsed arguments: checks them, runs, writes the report."""
    patterns, contenders = args.patterns.split(","), args.contenders.split(",")
    for flag, got, valid in (
        ("--patterns", patterns, PATTERN_NAMES),
        ("--contenders", contenders, CONTENDERS),
    ):
        if bad := [x for x in got if x not in valid]:
            raise SystemExit(f"{flag}: expected names among {', '.join(valid)}, got {', '.join(bad)}")
    torch.set_num_threads(args.threads)
    opts = {
        "sizes": args.sizes or (QUICK_SIZES if args.quick else SIZES),
        "pattern_names": patterns,
        "contenders": [c for c in CONTENDERS if c in contenders],
        "reps": 2 if args.quick else args.reps,
        "slow_reps": min(args.slow_reps, 2 if args.quick else args.reps),
        "max_mem_gib": args.max_mem_gib,
        "max_mem_bytes": int(args.max_mem_gib * 2**30),
        "max_call_s": args.max_call_s,
        "fit_from": args.fit_from if not args.quick else min(args.fit_from, 1024),
        "per_call_sizes": [] if args.no_per_call else args.per_call_sizes or (QUICK_PER_CALL_SIZES if args.quick else PER_CALL_SIZES),
        "per_call_reps": 5 if args.quick else args.per_call_reps,
        "memory": not args.no_memory,
        "threads": args.threads,
        "quick": args.quick,
        "figures": args.figures or (args.out if args.quick else REPO / "docs"),
        "suffix": "_quick" if args.quick else "",
    }  # fmt: skip
    res = run_suite(opts)
    write_report(args.out, SUITE, args.quick, res, to_markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
