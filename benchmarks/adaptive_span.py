"""Adaptive attention span: full causal attention against adaptive span as the span shrinks.

Shapes B=1, H=8, D=64, fp32, T=4096 (--t). Contenders, on the same q, k, v:

    sdpa-causal   F.scaled_dot_product_attention(q, k, v, is_causal=True)   (the baseline)
    full          qkv.attention(q, k, v, mask=qkv.masks.causal())           (backend auto)
    span-Z        qkv.api.adaptive_span.adaptive_span_attention(q, k, v, z, ramp=R),
                  every head's span z = Z (--spans, default 4096,1024,256,64), R = 32

for the forward pass (under torch.no_grad()) and forward+backward (out.backward(grad_output),
gradients to q, k, v and, for span-Z, to the span). Adaptive span crops the keys beyond the
window W = ceil(Z + R) - 1 before scoring: each block of 64 queries scores a strip of 64 + W
keys, so the work falls with the span (Z >= T: no mask is left, plain causal attention runs). An fp32 2048^3 matmul, the roof, is timed in the same
rounds. Each mode: warm-up, then interleaved rounds in balanced orders, median reported (the
measurement protocol: docs/performance/index.md).

    python benchmarks/adaptive_span.py           # writes benchmarks/results/adaptive_span.{json,md}
    python benchmarks/adaptive_span.py --quick   # smoke: T=1024, 2 reps -> adaptive_span_quick.*
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import qkv
from qkv.api.adaptive_span import adaptive_span_attention, fused_block, span_window

# common.py sits beside this file, however it is run (script or -m)
if __package__:  # imported as a package module (`python -m benchmarks.<suite>`)
    from .common import (
        MEMORY_METHOD,
        Contender,
        int_list,
        log,
        machine_info,
        machine_line,
        markdown_table,
        matmul_contender,
        paired_ratio,
        peak_rss_growth,
        time_interleaved,
        wait_for_quiet,
        write_report,
    )
else:  # python benchmarks/<suite>.py: the script's directory is first on sys.path
    from common import (
        MEMORY_METHOD,
        Contender,
        int_list,
        log,
        machine_info,
        machine_line,
        markdown_table,
        matmul_contender,
        paired_ratio,
        peak_rss_growth,
        time_interleaved,
        wait_for_quiet,
        write_report,
    )

SUITE = "adaptive_span"
REPO = Path(__file__).resolve().parent.parent
B, H, D = 1, 8, 64
DTYPE = torch.float32
RAMP = 32.0
BLOCK = 64
ROOF_N = 2048
ROOF = "roof-matmul"
BASELINE = "sdpa-causal"
FWD_BWD_FACTOR = 3.5
FLOPS_CONVENTION = (
    "4*B*H*D per computed (query, key) score (QK^T and PV); forward+backward 3.5x forward "
    "(FlashAttention convention). Computed pairs: T(T+1)/2 for sdpa-causal (its kernel skips the "
    "tiles above the diagonal; counted without the diagonal tiles' waste) and for full (qkv "
    "runs the same is_causal kernel for a plain causal mask), T^2 for a span covering the sequence, the "
    "strips ceil(T / block) * block * (block + W) for a cropped span (block 64 forward; with the span "
    "learned, fused_block(64, W): W/4 rounded up to a power of two, 64 to 256); useful pairs: those "
    "with a nonzero weight"
)


def pairs(t: int, name: str, mode: str = "fwd") -> dict[str, int]:
    """(query, key) pairs computed and useful for contender ``name``; with ``mode`` "fwd+bwd"
    a learned span's strips take query blocks of ``fused_block(BLOCK, W)``."""
    causal = t * (t + 1) // 2
    if name in ("sdpa-causal", "full"):  # full: qkv runs SDPA's is_causal kernel for causal()
        return {"computed": causal, "useful": causal}
    span = int(name.removeprefix("span-"))
    w = min(span_window(span, RAMP), t - 1)
    block = fused_block(BLOCK, w) if mode == "fwd+bwd" else BLOCK
    n_blocks = -(-t // block)
    strip = block + w
    computed = n_blocks * block * strip if n_blocks * block * strip < t * t else t * t
    useful = sum(min(i + 1, w + 1) for i in range(t))
    return {"computed": computed, "useful": useful, "window": w}


def make_case(t: int, spans: list[int], mode: str, seed: int = 0) -> tuple[list[Contender], dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, t, D, generator=g, dtype=DTYPE) for _ in range(3))
    grad_out = torch.randn(B, H, t, D, generator=g, dtype=DTYPE)
    z = {s: torch.full((H,), float(s), dtype=DTYPE) for s in spans}
    grad = mode == "fwd+bwd"
    if grad:
        for x in (q, k, v, *z.values()):
            x.requires_grad_(True)
    fns = {
        "sdpa-causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "full": lambda: qkv.attention(q, k, v, mask=qkv.masks.causal()),
    }
    for s in spans:
        fns[f"span-{s}"] = lambda s=s: adaptive_span_attention(q, k, v, z[s], ramp=RAMP, block_size=BLOCK)
    backends = {}
    with torch.set_grad_enabled(grad):
        for name, fn in fns.items():
            res = fn()
            backends[name] = res.backend if isinstance(res, qkv.AttentionOutput) else "torch sdpa"

    def wrap(fn):
        if grad:
            return lambda: _out(fn()).backward(grad_out)

        def run():
            with torch.no_grad():
                fn()

        return run

    def before():
        for x in (q, k, v, *z.values()):
            x.grad = None

    contenders = [Contender(n, wrap(fn), before=before if grad else None) for n, fn in fns.items()]
    return [*contenders, matmul_contender(ROOF_N, DTYPE, name=ROOF)], backends


def _out(res: Any) -> torch.Tensor:
    return res.out if isinstance(res, qkv.AttentionOutput) else res


def check_outputs(t: int, spans: list[int], seed: int = 1) -> list[dict[str, Any]]:
    """Cropped against uncropped (crop=False) for every span, and span >= T against full."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, t, D, generator=g, dtype=DTYPE) for _ in range(3))
    out = []
    with torch.no_grad():
        full = qkv.attention(q, k, v, mask=qkv.masks.causal()).out
        for s in spans:
            z = torch.full((H,), float(s), dtype=DTYPE)
            cropped = adaptive_span_attention(q, k, v, z, ramp=RAMP, block_size=BLOCK).out
            dense = adaptive_span_attention(q, k, v, z, ramp=RAMP, crop=False).out
            row = {"span": s, "max_abs_diff_cropped_vs_uncropped": (cropped - dense).abs().max().item()}
            if s >= t - 1:
                row["max_abs_diff_vs_full"] = (cropped - full).abs().max().item()
            out.append(row)
    return out


def run_suite(
    t: int, spans: list[int], reps: int, memory: bool, wait_quiet_s: float, max_other_load: float | None
) -> dict[str, Any]:
    t_start = time.perf_counter()
    log(f"{SUITE}: T={t}, spans {spans}, reps {reps}, threads {torch.get_num_threads()}")
    machine = machine_info(REPO)
    checks = check_outputs(t, spans)
    cases = []
    for mode in ("fwd", "fwd+bwd"):
        contenders, backends = make_case(t, spans, mode)
        quiet = wait_for_quiet(wait_quiet_s, threshold=max_other_load or 0.25)
        timings = time_interleaved(
            contenders,
            reps,
            label=mode,
            max_other_load=max_other_load,
            max_redo=2 if max_other_load is not None else 0,  # keeps the run within about 3 minutes
            wait_s=min(wait_quiet_s, 30.0),
        )
        roof = timings[ROOF]
        roof_gflops = 2 * ROOF_N**3 / roof.median / 1e9
        base = timings[BASELINE]
        by_name = {c.name: c for c in contenders}
        for name in [n for n in timings if n != ROOF]:
            tm = timings[name]
            span = int(name.removeprefix("span-")) if name.startswith("span-") else None
            p = pairs(t, name, mode)
            factor = 1.0 if mode == "fwd" else FWD_BWD_FACTOR
            flops = 4 * B * H * D * p["computed"] * factor
            mem = None
            if memory:
                log(f"{mode} memory {name}")
                mem = peak_rss_growth(by_name[name].run, before=by_name[name].before)
            cases.append(
                {
                    "mode": mode,
                    "contender": name,
                    "span": span,
                    "window": p.get("window"),
                    "backend": backends[name],
                    **tm.to_dict(),
                    "ratio_to_baseline": tm.median / base.median,
                    "paired_ratio_to_baseline": paired_ratio(tm, base),
                    "pairs_computed": p["computed"],
                    "pairs_useful": p["useful"],
                    "flops_computed": flops,
                    "gflops": flops / tm.median / 1e9,
                    "roof_gflops_same_rounds": roof_gflops,
                    "peak_rss_growth_bytes": mem,
                    "other_processes_load_cores": tm.mean_other_load,
                    "waited_for_quiet_s": quiet["waited_s"],
                }
            )
        log(
            f"{mode}: "
            + ", ".join(f"{n} {timings[n].median * 1e3:.1f} ms" for n in timings if n != ROOF)
            + f"; roof {roof_gflops:.0f} GFLOP/s; other load {roof.mean_other_load or 0:.2f} cores"
        )
    return {
        "suite": SUITE,
        "machine": machine,
        "config": {
            "B": B,
            "H": H,
            "D": D,
            "T": t,
            "dtype": str(DTYPE).removeprefix("torch."),
            "ramp": RAMP,
            "block_size": BLOCK,
            "spans": spans,
            "reps": reps,
            "warmup": "1 untimed call per contender per mode",
            "timing": "time.perf_counter around one call; contenders and the roof interleaved in balanced "
            "orders; median of the reps",
            "baseline": BASELINE,
            "flops_convention": FLOPS_CONVENTION,
            "roof": f"fp32 matmul {ROOF_N}^3, 2*n^3/t, timed in the same rounds",
            "memory_method": MEMORY_METHOD if memory else "not measured (--no-memory)",
            "grad_output": "fixed random tensor; q, k, v (and span) .grad set to None before every call",
            "wait_quiet_s": wait_quiet_s,
            "max_other_load": max_other_load,
        },
        "checks": checks,
        "cases": cases,
        "wall_s": time.perf_counter() - t_start,
    }


# ----------------------------------------------------------------------------- report


def to_markdown(res: dict[str, Any]) -> str:
    m, cfg = res["machine"], res["config"]
    lines = [
        f"# {SUITE}: full causal attention against adaptive span (Sukhbaatar et al. 2019)",
        "",
        f"B={cfg['B']}, H={cfg['H']}, D={cfg['D']}, T={cfg['T']}, {cfg['dtype']}; ramp R={cfg['ramp']:g}, "
        f"query blocks of {cfg['block_size']}; every head's span = Z. Median of {cfg['reps']} reps, "
        "contenders interleaved in balanced rounds after warm-up, the roof matmul timed in the same rounds. "
        "Ratio = time / time of sdpa-causal (paired = median of per-round ratios).",
        "",
        machine_line(m),
        "",
    ]
    rows = []
    for c in res["cases"]:
        load = c["other_processes_load_cores"]
        rows.append(
            [
                c["mode"],
                c["contender"],
                "" if c["window"] is None else c["window"],
                c["backend"],
                c["reps"],
                f"{c['median_s'] * 1e3:.1f}",
                f"{c['ratio_to_baseline']:.3f}",
                f"{c['paired_ratio_to_baseline']:.3f}",
                f"{c['flops_computed'] / 1e9:.1f}",
                f"{c['pairs_useful'] / c['pairs_computed']:.2f}",
                f"{c['gflops']:.1f}",
                f"{c['roof_gflops_same_rounds']:.0f}",
                "n/a" if c["peak_rss_growth_bytes"] is None else f"{c['peak_rss_growth_bytes'] / 2**20:.0f}",
                ("n/a" if load is None else f"{load:.2f}")
                + (f" ({c['rounds_redone']} redone)" if c["rounds_redone"] else ""),
            ]
        )
    headers = [
        "pass",
        "contender",
        "window W",
        "backend",
        "reps",
        "median ms",
        "ratio",
        "paired ratio",
        "GFLOP computed",
        "useful / computed",
        "GFLOP/s",
        "roof GFLOP/s",
        "peak MiB",
        "other load",
    ]
    lines.append(markdown_table(headers, rows, align="lllrrrrrrrrrrr"))
    lines += [
        "",
        f"- FLOPs: {cfg['flops_convention']}.",
        "- backend: what ran inside. With gradients for the span, torch's fused CPU kernels run the strips "
        "forward and backward on the bias `log m_z` as a constant mask (`qkv.api.span_strips`: q, k, v), "
        "and `qkv.api.span_ramp` gives the span its gradient from the ramp's band.",
        f"- Peak MiB: {cfg['memory_method']}",
        "- Other load: mean number of cores kept busy by other processes during the rounds "
        f"(waited up to {cfg['wait_quiet_s']:.0f} s for a quiet machine before each pass; a round "
        f"above {cfg['max_other_load']} cores was thrown away and redone, at most 2 per pass).",
        "- Checks (forward, fp32, max abs difference): "
        + "; ".join(
            f"Z={c['span']}: cropped vs uncropped {c['max_abs_diff_cropped_vs_uncropped']:.1e}"
            + (f", vs full {c['max_abs_diff_vs_full']:.1e}" if "max_abs_diff_vs_full" in c else "")
            for c in res["checks"]
        )
        + ".",
        f"- Wall time of the run: {res['wall_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: T=1024, 2 reps; writes *_quick.*")
    p.add_argument("--t", type=int, default=None, help="sequence length (default 4096)")
    p.add_argument("--spans", type=int_list(0), default=None, help="spans Z (default 4096,1024,256,64)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 7)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory calls")
    p.add_argument(
        "--max-other-load",
        type=float,
        default=0.5,
        metavar="CORES",
        help="redo a round during which other processes kept more than CORES cores busy "
        "(at most 2 per pass); negative: keep every round (default 0.5)",
    )
    p.add_argument("--wait-quiet", type=float, default=None, metavar="S", help="wait up to S s (default 20)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t = args.t or (1024 if args.quick else 4096)
    spans = args.spans or [4096, 1024, 256, 64]
    reps = args.reps or (2 if args.quick else 7)
    if t < 1 or reps < 1:
        raise SystemExit("--t and --reps must be >= 1")
    wait_quiet = args.wait_quiet if args.wait_quiet is not None else (0.0 if args.quick else 20.0)
    res = run_suite(
        t,
        spans,
        reps,
        memory=not args.no_memory,
        wait_quiet_s=wait_quiet,
        max_other_load=None if args.max_other_load < 0 else args.max_other_load,
    )
    write_report(args.out, SUITE, args.quick, res, to_markdown)
    fwd = {c["contender"]: c["ratio_to_baseline"] for c in res["cases"] if c["mode"] == "fwd"}
    log(
        "forward time / sdpa-causal: " + ", ".join(f"{k} {v:.3f}" for k, v in fwd.items() if math.isfinite(v))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
