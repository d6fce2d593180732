"""torch.compile over qkv attention: compile time and steady-state time, compiled against eager.

Cases (float32, forward under torch.no_grad() and forward+backward):

    mha-dense          qkv.MultiHeadAttention(E=256, H=4) self-attention, B=4, T=512 (--t)
    mha-causal-pad     the same with qkv.masks.causal() and a key_padding_mask (B, T)
    window-blocksparse qkv.attention(q, k, v, mask=sliding_window(64)), B=1, H=4, D=64, T=4096 (--t-long)
    bigbird-blocksparse   the same with bigbird(block=64, window_blocks=3, global_blocks=1, random_blocks=1)

Each case is compiled with ``torch.compile(fn, fullgraph=True)`` (inductor): the first call's
wall and CPU seconds are the compile time. Then eager and compiled calls are timed
interleaved in balanced rounds after warm-up (the measurement protocol:
docs/performance/index.md); ratio = compiled / eager (paired: median of per-round ratios, of
wall and of process CPU time). Graph breaks are counted with torch._dynamo.explain, and the
compiled output is compared with eager's.

    python -m benchmarks.compile           # writes benchmarks/results/compile.{json,md}
    python -m benchmarks.compile --quick   # smoke: small shapes, 2 reps -> compile_quick.*
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

import qkv
from qkv import masks

if __package__:  # imported as a package module (`python -m benchmarks.<suite>`)
    from .common import (
        Contender,
        log,
        machine_info,
        machine_line,
        markdown_table,
        paired_ratio,
        time_interleaved,
        wait_for_quiet,
        write_report,
    )
else:  # python benchmarks/<suite>.py: the script's directory is first on sys.path
    from common import (
        Contender,
        log,
        machine_info,
        machine_line,
        markdown_table,
        paired_ratio,
        time_interleaved,
        wait_for_quiet,
        write_report,
    )

SUITE = "compile"
REPO = Path(__file__).resolve().parent.parent
E, HEADS, B = 256, 4, 4
WINDOW = masks.sliding_window(64)
BIGBIRD = masks.bigbird(block=64, window_blocks=3, global_blocks=1, random_blocks=1, seed=0)


def make_cases(t: int, t_long: int, seed: int = 0) -> dict[str, tuple[Any, tuple]]:
    """name -> (function of tensors, its inputs); patterns and modules made once, outside."""
    torch.manual_seed(seed)
    mha = qkv.MultiHeadAttention(E, HEADS).eval()
    x = torch.randn(B, t, E)
    pad = torch.zeros(B, t, dtype=torch.bool)  # (B, T), True = padding
    pad[1:, t * 3 // 4 :] = True
    causal = masks.causal()
    q, k, v = (torch.randn(1, HEADS, t_long, 64) for _ in range(3))
    return {
        "mha-dense": (lambda x: mha(x).out, (x,)),
        "mha-causal-pad": (lambda x, p: mha(x, mask=causal, key_padding_mask=p).out, (x, pad)),
        "window-blocksparse": (lambda q, k, v: qkv.attention(q, k, v, mask=WINDOW).out, (q, k, v)),
        "bigbird-blocksparse": (lambda q, k, v: qkv.attention(q, k, v, mask=BIGBIRD).out, (q, k, v)),
    }


def _runner(fn, args: tuple, grad: bool):
    """One repetition: the forward (no grad) or forward+backward of ``fn(*args)``."""
    params = [a for a in args if a.is_floating_point()]
    if not grad:

        def run():
            with torch.no_grad():
                fn(*args)

        return run, None

    def run():
        fn(*args).sum().backward()

    def before():
        for p in params:
            p.grad = None

    return run, before


def measure_case(name: str, fn, args: tuple, mode: str, reps: int, max_other_load) -> dict[str, Any]:
    grad = mode == "fwd+bwd"
    args = tuple(a.detach().requires_grad_(grad and a.is_floating_point()) for a in args)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(*args)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    run_c, before = _runner(compiled, args, grad)
    c0, t0 = time.process_time(), time.perf_counter()
    run_c()  # the compile
    compile_s, compile_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    with torch.no_grad():
        diff = (compiled(*args) - fn(*args)).abs().max().item()
    run_e, _ = _runner(fn, args, grad)
    timings = time_interleaved(
        [Contender("eager", run_e, before), Contender("compiled", run_c, before)],
        reps, label=f"{name} {mode}", max_other_load=max_other_load,
        max_redo=2 if max_other_load is not None else 0,
    )  # fmt: skip
    eager, comp = timings["eager"], timings["compiled"]
    log(f"{name} {mode}: compile {compile_s:.1f} s, compiled / eager {paired_ratio(comp, eager):.3f}")
    return {
        "case": name, "mode": mode, "graph_breaks": explained.graph_break_count,
        "graphs": explained.graph_count, "compile_s": compile_s, "compile_cpu_s": compile_cpu_s,
        "max_abs_diff": diff, "eager": eager.to_dict(), "compiled": comp.to_dict(),
        "ratio": comp.median / eager.median, "paired_ratio": paired_ratio(comp, eager),
        "paired_cpu_ratio": paired_ratio(comp, eager, cpu=True),
    }  # fmt: skip


def run_suite(t: int, t_long: int, reps: int, wait_quiet_s: float, max_other_load) -> dict[str, Any]:
    t_start = time.perf_counter()
    log(f"{SUITE}: T={t}, T long={t_long}, reps {reps}, threads {torch.get_num_threads()}")
    machine = machine_info(REPO)
    cases = []
    for name, (fn, args) in make_cases(t, t_long).items():
        for mode in ("fwd", "fwd+bwd"):
            wait_for_quiet(wait_quiet_s, threshold=max_other_load or 0.25)
            cases.append(measure_case(name, fn, args, mode, reps, max_other_load))
    config = dict(
        E=E, heads=HEADS, B=B, T=t, T_long=t_long, reps=reps,
        compile="torch.compile(fn, fullgraph=True), inductor; compile time = the first call",
        timing="eager and compiled interleaved in balanced rounds after 1 warm-up call each; median",
        wait_quiet_s=wait_quiet_s, max_other_load=max_other_load,
    )  # fmt: skip
    return {
        "suite": SUITE,
        "machine": machine,
        "config": config,
        "cases": cases,
        "wall_s": time.perf_counter() - t_start,
    }


def to_markdown(res: dict[str, Any]) -> str:
    cfg = res["config"]
    lines = [
        f"# {SUITE}: torch.compile over qkv attention, compiled against eager",
        "",
        f"MultiHeadAttention E={cfg['E']}, H={cfg['heads']}, B={cfg['B']}, T={cfg['T']}; blocksparse "
        f"patterns B=1, H={cfg['heads']}, D=64, T={cfg['T_long']}; float32. {cfg['compile']}. "
        f"Median of {cfg['reps']} reps; ratio = compiled / eager (paired: median of per-round ratios).",
        "",
        machine_line(res["machine"]),
        "",
    ]
    rows = [
        [
            c["case"], c["mode"], c["graph_breaks"], f"{c['compile_s']:.1f}", f"{c['compile_cpu_s']:.1f}",
            f"{c['eager']['median_s'] * 1e3:.2f}", f"{c['compiled']['median_s'] * 1e3:.2f}",
            f"{c['paired_ratio']:.3f}", f"{c['paired_cpu_ratio']:.3f}", f"{c['max_abs_diff']:.1e}",
        ]
        for c in res["cases"]
    ]  # fmt: skip
    headers = [
        "case", "pass", "graph breaks", "compile s", "compile CPU s", "eager ms", "compiled ms",
        "paired ratio", "paired CPU ratio", "max abs diff",
    ]  # fmt: skip
    lines += [
        markdown_table(headers, rows, align="llrrrrrrrr"),
        "",
        "- Compile CPU s: this process only; inductor compiles its kernels in worker processes too.",
        f"- Wall time: {res['wall_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: T=64, T long=1024, 2 reps; *_quick.*")
    p.add_argument("--t", type=int, default=None, help="MultiHeadAttention length (default 512)")
    p.add_argument("--t-long", type=int, default=None, help="blocksparse length (default 4096)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 7)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    p.add_argument(
        "--max-other-load", type=float, default=0.5, metavar="CORES",
        help="redo a round during which other processes kept more than CORES cores busy (at most 2 per "
        "case); negative: keep every round (default 0.5)",
    )  # fmt: skip
    p.add_argument("--wait-quiet", type=float, default=None, metavar="S", help="wait up to S s (default 20)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t = args.t or (64 if args.quick else 512)
    t_long = args.t_long or (1024 if args.quick else 4096)
    reps = args.reps or (2 if args.quick else 7)
    if min(t, t_long, reps) < 1:
        raise SystemExit("--t, --t-long and --reps must be >= 1")
    wait_quiet = args.wait_quiet if args.wait_quiet is not None else (0.0 if args.quick else 20.0)
    max_other = None if args.max_other_load < 0 or args.quick else args.max_other_load
    res = run_suite(t, t_long, reps, wait_quiet, max_other)
    write_report(args.out, SUITE, args.quick, res, to_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
