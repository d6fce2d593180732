"""Dense scaled-dot attention: qkv.attention against PyTorch SDPA, side by side in one process.

Shapes B=1, H=8, D=64, fp32, T in --sizes (default 1024,4096). Contenders:

    sdpa           F.scaled_dot_product_attention(q, k, v), called directly
    qkv-auto       qkv.attention(q, k, v)                      (backend="auto": runs SDPA)
    qkv-reference  qkv.attention(q, k, v, backend="reference") (the readable specification)

for the forward pass (under torch.no_grad()) and forward+backward (out.backward(grad_output)
with a fixed random grad_output; q, k, v grads dropped before every call). An fp32 2048^3
matmul, the roof, is timed in the same rounds. Each case: warm-up, then interleaved rounds,
median reported (the measurement protocol: docs/performance/index.md). The rounds follow balanced orders
(with the roof, 4 contenders and 4 orders: the default 12 reps make three full cycles).

Then the per-call cost (qkv-auto against SDPA at T = 16, 64, 256, 1024, 2048, back-to-back
calls) and a Hugging Face BERT-like padding-mask batch (B=8, H=12, T=128, D=32, a (B, 1, T, T)
bool mask): qkv-auto against SDPA, and the weights (``need_weights=True``, auto and reference)
against the eager ``softmax(q k^T) @ v`` a user would write.

    python benchmarks/attention_dense.py --threads 1   # writes benchmarks/results/attention_dense.{json,md}
    python benchmarks/attention_dense.py --quick    # smoke: T=256,512, 3 reps -> attention_dense_quick.*
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import qkv

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
        measure_roof,
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
        measure_roof,
        paired_ratio,
        peak_rss_growth,
        time_interleaved,
        wait_for_quiet,
        write_report,
    )

SUITE = "attention_dense"
REPO = Path(__file__).resolve().parent.parent
B, H, D = 1, 8, 64
DTYPE = torch.float32
ROOF_N = 2048
CONTENDERS = ("sdpa", "qkv-auto", "qkv-reference")
BASELINE = "sdpa"
ROOF = "roof-matmul"

# FLOP counts. Forward: the two matmuls QK^T and PV, 2 * B*H*Tq*Tk*D each. Forward+backward:
# the FlashAttention convention (flash-attention benchmarks: bwd = 2.5 x fwd, fwd_bwd = 3.5 x fwd),
# i.e. 14*B*H*T*T*D: the backward's four matmuls (dV, dP, dQ, dK) plus recomputing QK^T as fused
# kernels do. A backward that keeps the weights (qkv-reference) needs 3 x fwd; the count is a
# convention shared by all contenders, so GFLOP/s ratios equal time ratios.
FWD_BWD_FACTOR = 3.5
FLOPS_CONVENTION = (
    "forward 4*B*H*Tq*Tk*D (QK^T and PV); forward+backward 3.5x forward = 14*B*H*T*T*D "
    "(FlashAttention convention: backward 2.5x forward, counting the recomputed QK^T)"
)


def attention_flops(t: int, mode: str) -> float:
    fwd = 4 * B * H * t * t * D
    return fwd if mode == "fwd" else FWD_BWD_FACTOR * fwd


# ----------------------------------------------------------------------------- contenders


def _forward_fns(q, k, v) -> dict[str, Any]:
    return {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
        "qkv-auto": lambda: qkv.attention(q, k, v).out,
        "qkv-reference": lambda: qkv.attention(q, k, v, backend="reference").out,
    }


def make_case(t: int, mode: str, reps: int, ref_reps: int, seed: int = 0) -> list[Contender]:
    """The three contenders of one case (mode "fwd" or "fwd+bwd") on shared inputs, plus the roof."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, t, D, generator=g, dtype=DTYPE) for _ in range(3))
    grad_out = torch.randn(B, H, t, D, generator=g, dtype=DTYPE)
    fns = _forward_fns(q, k, v)
    ref_reps = min(ref_reps, reps)

    if mode == "fwd":

        def wrap(fn):
            def run():
                with torch.no_grad():
                    fn()

            return run

        before = None
    else:
        for x in (q, k, v):
            x.requires_grad_(True)

        def wrap(fn):
            return lambda: fn().backward(grad_out)

        def before():
            q.grad = k.grad = v.grad = None

    contenders = [
        Contender(name, wrap(fn), before=before, reps=ref_reps if name == "qkv-reference" else None)
        for name, fn in fns.items()
    ]
    return [*contenders, matmul_contender(ROOF_N, DTYPE, name=ROOF)]


def check_outputs(t: int, seed: int = 0) -> dict[str, Any]:
    """Which backend auto ran (forward and with gradients), and how far qkv's outputs and
    gradients are from SDPA's."""
    g = torch.Generator().manual_seed(seed)
    q, k, v, grad_out = (torch.randn(B, H, t, D, generator=g, dtype=DTYPE) for _ in range(4))
    with torch.no_grad():
        ref = F.scaled_dot_product_attention(q, k, v)
        auto = qkv.attention(q, k, v)
        spec = qkv.attention(q, k, v, backend="reference")

    def grads(fn):
        leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
        res = fn(*leaves)
        (res if isinstance(res, torch.Tensor) else res.out).backward(grad_out)
        return res, [x.grad for x in leaves]

    _, g_ref = grads(F.scaled_dot_product_attention)
    auto_grad, g_auto = grads(qkv.attention)
    return {
        "T": t,
        "auto_backend": auto.backend,
        "auto_backend_with_grad": auto_grad.backend,
        "max_abs_diff_auto_vs_sdpa": (auto.out - ref).abs().max().item(),
        "max_abs_diff_reference_vs_sdpa": (spec.out - ref).abs().max().item(),
        "max_abs_diff_grads_auto_vs_sdpa": max(
            (a - b).abs().max().item() for a, b in zip(g_auto, g_ref, strict=True)
        ),
    }


def measure_overhead(reps: int, calls: int = 500, t: int = 16, cold_reps: int = 31) -> dict[str, Any]:
    """Per-call time at a tiny T (forward, no_grad), where the kernel costs little, so that
    qkv-auto - sdpa is qkv's own cost per call (validation, dispatch, result):

    - hot: ``calls`` calls in a loop, the same function again and again (caches warm);
    - cold: one call right after an untimed fp32 2048^3 matmul, as when attention follows the
      QKV projection in a model; the matmul evicts the interpreter's code and data from the
      caches and TLBs, and every Python operation on the way to the kernel costs more.
    """
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, t, D, generator=g, dtype=DTYPE) for _ in range(3))
    fns = _forward_fns(q, k, v)
    names = ("sdpa", "qkv-auto")

    def loop(fn):
        def run():
            with torch.no_grad():
                for _ in range(calls):
                    fn()

        return run

    def once(fn):
        def run():
            with torch.no_grad():
                fn()

        return run

    hot = time_interleaved(
        [Contender(n, loop(fns[n]), warmup=2) for n in names], reps, label="overhead hot", progress=False
    )
    matmul = matmul_contender(ROOF_N, DTYPE).run
    cold = time_interleaved(
        [Contender(n, once(fns[n]), before=matmul, warmup=2) for n in names],
        cold_reps,
        label="overhead cold",
        progress=False,
    )
    hot_us = {n: tm.median / calls * 1e6 for n, tm in hot.items()}
    cold_us = {n: tm.median * 1e6 for n, tm in cold.items()}
    return {
        "T": t,
        "hot": {"calls_per_rep": calls, "reps": reps, "per_call_us": hot_us},
        "cold": {
            "reps": cold_reps,
            "before_each_call": f"fp32 matmul {ROOF_N}^3 (untimed)",
            "per_call_us": cold_us,
        },
        "qkv_overhead_us": {
            "hot": hot_us["qkv-auto"] - hot_us["sdpa"],
            "cold": cold_us["qkv-auto"] - cold_us["sdpa"],
        },
    }


PER_CALL_SIZES = [16, 64, 256, 1024, 2048]
MASK_SHAPE = (8, 12, 128, 32)  # B, H, T, D: a BERT-base-like batch with a (B, 1, T, T) padding mask


def _no_grad_loop(fn, calls: int):
    def run():
        with torch.no_grad():
            for _ in range(calls):
                fn()

    return run


def measure_per_call(reps: int, sizes: list[int] = PER_CALL_SIZES) -> list[dict[str, Any]]:
    """Per-call time of ``qkv.attention`` (auto) against SDPA at each T (forward, no_grad,
    B=1, H=8, D=64): ``calls`` back-to-back calls per rep (about as long at every T),
    interleaved rounds, median per call."""
    rows = []
    for t in sizes:
        g = torch.Generator().manual_seed(t)
        q, k, v = (torch.randn(B, H, t, D, generator=g, dtype=DTYPE) for _ in range(3))
        fns = _forward_fns(q, k, v)
        calls = max(1, min(500, 256 * 256 * 40 // (t * t)))
        names = ("sdpa", "qkv-auto")
        tm = time_interleaved(
            [Contender(n, _no_grad_loop(fns[n], calls), warmup=2) for n in names],
            reps, label=f"per call T={t}", progress=False,
        )  # fmt: skip
        per = {n: tm[n].median / calls * 1e6 for n in names}
        rows.append(
            {
                "T": t,
                "calls_per_rep": calls,
                "reps": reps,
                "per_call_us": per,
                "ratio": per["qkv-auto"] / per["sdpa"],
                "paired_ratio": paired_ratio(tm["qkv-auto"], tm["sdpa"]),
                "qkv_adds_us": per["qkv-auto"] - per["sdpa"],
            }
        )
        log(
            f"per call T={t}: sdpa {per['sdpa']:.1f} us, qkv-auto {per['qkv-auto']:.1f} us ({rows[-1]['ratio']:.3f}x)"
        )
    return rows


def _padding_inputs():
    b, h, t, d = MASK_SHAPE
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(b, h, t, d, generator=g, dtype=DTYPE) for _ in range(3))
    lengths = torch.tensor([t - (t // (2 * b)) * i for i in range(b)])  # from T down to about T/2
    keep = torch.arange(t)[None, :] < lengths[:, None]  # (B, T): True = a real token
    mask = keep[:, None, None, :].expand(b, 1, t, t).contiguous()  # (B, 1, T, T), as Hugging Face's BERT
    return q, k, v, mask


def _eager_weights(q, k, v, mask):
    """What a user writes for the weights: softmax(q k^T * scale, masked) @ v, both returned."""
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    w = s.masked_fill(~mask, float("-inf")).softmax(-1)
    return w @ v, w


def padding_mask_case(reps: int, calls: int = 5) -> dict[str, Any]:
    """The padding-mask call of a Hugging Face BERT batch, forward under no_grad: the output
    alone (qkv-auto against SDPA) and with the weights (qkv's auto and reference backends
    against the eager math a user would write); interleaved, median per call."""
    q, k, v, mask = _padding_inputs()
    fns = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        "qkv-auto": lambda: qkv.attention(q, k, v, mask=mask).out,
        "eager-weights": lambda: _eager_weights(q, k, v, mask),
        "qkv-auto-weights": lambda: qkv.attention(q, k, v, mask=mask, need_weights=True),
        "qkv-reference-weights": lambda: qkv.attention(
            q, k, v, mask=mask, need_weights=True, backend="reference"
        ),
    }
    tm = time_interleaved(
        [Contender(n, _no_grad_loop(fn, calls), warmup=2) for n, fn in fns.items()],
        reps, label="padding mask", progress=False,
    )  # fmt: skip
    ms = {n: t.median / calls * 1e3 for n, t in tm.items()}
    with torch.no_grad():
        eager_out, eager_w = _eager_weights(q, k, v, mask)
        auto = qkv.attention(q, k, v, mask=mask, need_weights=True)
        ref = qkv.attention(q, k, v, mask=mask, need_weights=True, backend="reference")
        sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    res = {
        "shape_BHTD": list(MASK_SHAPE),
        "mask": "(B, 1, T, T) bool key padding, lengths T down to about T/2",
        "calls_per_rep": calls,
        "reps": reps,
        "per_call_ms": ms,
        "ratios": {
            "qkv-auto / sdpa": ms["qkv-auto"] / ms["sdpa"],
            "qkv-auto-weights / eager-weights": ms["qkv-auto-weights"] / ms["eager-weights"],
            "qkv-reference-weights / eager-weights": ms["qkv-reference-weights"] / ms["eager-weights"],
        },
        "paired_ratios": {
            "qkv-auto / sdpa": paired_ratio(tm["qkv-auto"], tm["sdpa"]),
            "qkv-auto-weights / eager-weights": paired_ratio(tm["qkv-auto-weights"], tm["eager-weights"]),
            "qkv-reference-weights / eager-weights": paired_ratio(
                tm["qkv-reference-weights"], tm["eager-weights"]
            ),
        },
        "max_abs_diff": {
            "auto out vs sdpa": (auto.out - sdpa).abs().max().item(),
            "auto weights vs eager": (auto.weights - eager_w).abs().max().item(),
            "reference weights vs eager": (ref.weights - eager_w).abs().max().item(),
            "reference out vs eager": (ref.out - eager_out).abs().max().item(),
        },
        "auto_backend": auto.backend,
    }
    log("padding mask: " + ", ".join(f"{n} {x:.2f} ms" for n, x in ms.items()))
    return res


# ----------------------------------------------------------------------------- the run


def run_suite(
    sizes: list[int],
    reps: int,
    ref_reps: int,
    memory: bool = True,
    wait_quiet_s: float = 0.0,
    max_other_load: float | None = None,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    log(f"{SUITE}: sizes {sizes}, reps {reps} (qkv-reference {min(ref_reps, reps)}), threads "
        f"{torch.get_num_threads()}")  # fmt: skip
    machine = machine_info(REPO)
    roof_start = {
        str(dt).removeprefix("torch."): measure_roof(ROOF_N, dt, reps) for dt in (DTYPE, torch.bfloat16)
    }
    for name, r in roof_start.items():
        log(f"roof {name} matmul {ROOF_N}^3: {r['gflops']:.1f} GFLOP/s")

    cases, checks = [], []
    for t in sizes:
        checks.append(check_outputs(t))
        log(
            f"T={t}: auto ran {checks[-1]['auto_backend']!r}, with gradients {checks[-1]['auto_backend_with_grad']!r}"
        )
        for mode in ("fwd", "fwd+bwd"):
            label = f"T={t} {mode}"
            contenders = make_case(t, mode, reps, ref_reps)
            quiet = wait_for_quiet(wait_quiet_s, threshold=max_other_load or 0.25)
            timings = time_interleaved(
                contenders,
                reps,
                label=label,
                max_other_load=max_other_load,
                max_redo=reps if max_other_load is not None else 0,
                wait_s=min(wait_quiet_s, 30.0),
            )
            roof = timings[ROOF]
            roof_gflops = 2 * ROOF_N**3 / roof.median / 1e9
            flops = attention_flops(t, mode)
            base = timings[BASELINE]
            by_name = {c.name: c for c in contenders}
            for name in CONTENDERS:
                tm = timings[name]
                mem = None
                if memory:
                    log(f"{label} memory {name}")
                    c = by_name[name]
                    mem = peak_rss_growth(c.run, before=c.before)
                gflops = flops / tm.median / 1e9
                cases.append(
                    {
                        "T": t,
                        "mode": mode,
                        "contender": name,
                        **tm.to_dict(),
                        "ratio_to_sdpa": tm.median / base.median,
                        "paired_ratio_to_sdpa": paired_ratio(tm, base),
                        "flops": flops,
                        "gflops": gflops,
                        "roof_gflops_same_rounds": roof_gflops,
                        "roof_fraction": gflops / roof_gflops,
                        "peak_rss_growth_bytes": mem,
                        "other_processes_load_cores": tm.mean_other_load,
                        "waited_for_quiet_s": quiet["waited_s"],
                    }
                )
            log(
                f"{label}: "
                + ", ".join(f"{n} {timings[n].median * 1e3:.1f} ms" for n in CONTENDERS)
                + f"; roof {roof_gflops:.0f} GFLOP/s; other load {roof.mean_other_load or 0:.2f} cores, "
                + f"{roof.redone} rounds redone"
            )

    roof_end = {
        str(dt).removeprefix("torch."): measure_roof(ROOF_N, dt, reps) for dt in (DTYPE, torch.bfloat16)
    }
    return {
        "suite": SUITE,
        "machine": machine,
        "config": {
            "B": B,
            "H": H,
            "D": D,
            "dtype": str(DTYPE).removeprefix("torch."),
            "sizes": sizes,
            "reps": reps,
            "reps_qkv_reference": min(ref_reps, reps),
            "warmup": "1 untimed call per contender per case",
            "timing": (
                "time.perf_counter around one call; contenders and the roof matmul interleaved in "
                "rounds in balanced orders (each contender follows each other one equally often); "
                "median of the reps"
            ),
            "baseline": BASELINE,
            "ratio": "median time / median time of sdpa in the same case (paired: median of per-round ratios)",
            "flops_convention": FLOPS_CONVENTION,
            "roof": f"fp32 matmul {ROOF_N}^3, 2*n^3/t, timed in the same rounds as each case",
            "memory_method": MEMORY_METHOD if memory else "not measured (--no-memory)",
            "grad_output": "fixed random tensor; q, k, v .grad set to None before every call",
            "wait_quiet_s": wait_quiet_s,
            "max_other_load": max_other_load,
        },
        "roof": {"start": roof_start, "end": roof_end},
        "checks": checks,
        "cases": cases,
        "overhead": measure_overhead(max(reps, 5)),
        "per_call": measure_per_call(max(reps, 5)),
        "padding_mask": padding_mask_case(max(reps, 5)),
        "wall_s": time.perf_counter() - t_start,
    }


# ----------------------------------------------------------------------------- report


def _mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.0f}"


def to_markdown(res: dict[str, Any]) -> str:
    m, cfg = res["machine"], res["config"]
    lines = [
        f"# {SUITE}: dense scaled-dot attention, qkv against PyTorch SDPA",
        "",
        f"B={cfg['B']}, H={cfg['H']}, D={cfg['D']}, {cfg['dtype']}. Median of {cfg['reps']} timed reps "
        f"({cfg['reps_qkv_reference']} for qkv-reference), contenders interleaved in balanced rounds after "
        "warm-up, with the roof matmul timed in the same rounds. Ratio = time / sdpa time "
        "(paired = median of per-round ratios).",
        "",
        machine_line(m, load=False),
        "",
    ]
    rows = []
    for c in res["cases"]:
        load = c["other_processes_load_cores"]
        load_txt = "n/a" if load is None else f"{load:.2f}"
        if c["rounds_redone"]:
            load_txt += f" ({c['rounds_redone']} redone)"
        rows.append(
            [
                c["T"],
                c["mode"],
                c["contender"],
                c["reps"],
                f"{c['median_s'] * 1e3:.1f}",
                f"{c['ratio_to_sdpa']:.3f}",
                f"{c['paired_ratio_to_sdpa']:.3f}",
                f"{c['gflops']:.1f}",
                f"{c['roof_gflops_same_rounds']:.0f}",
                f"{c['roof_fraction'] * 100:.0f}%",
                _mib(c["peak_rss_growth_bytes"]),
                load_txt,
            ]
        )
    lines.append(
        markdown_table(
            [
                "T",
                "pass",
                "contender",
                "reps",
                "median ms",
                "ratio",
                "paired ratio",
                "GFLOP/s",
                "roof GFLOP/s",
                "of roof",
                "peak MiB",
                "other load",
            ],
            rows,
            align="rllrrrrrrrrr",
        )
    )
    roof = res["roof"]
    ov = res["overhead"]
    lines += [
        "",
        f"- FLOPs: {cfg['flops_convention']}.",
        f"- Roof: {cfg['roof']}; standalone at start "
        + ", ".join(f"{k} {v['gflops']:.0f}" for k, v in roof["start"].items())
        + " GFLOP/s, at end "
        + ", ".join(f"{k} {v['gflops']:.0f}" for k, v in roof["end"].items())
        + " GFLOP/s (bf16 for reference only; the attention runs in fp32).",
        f"- Peak MiB: {cfg['memory_method']}",
        "- Other load: mean number of cores kept busy by other processes during the rounds the "
        "contender ran (/proc/stat minus this process's CPU time); above 0 the machine was shared. "
        + (
            f"Before each case the run waited up to {cfg['wait_quiet_s']:.0f} s for that load to drop to "
            f"{cfg['max_other_load']} cores; a round above it was thrown away and redone (at most reps "
            "times per case; the count is shown)."
            if cfg["max_other_load"] is not None
            else "Every round kept, whatever the load."
        ),
        "- Checks: "
        + "; ".join(
            f"T={c['T']}: auto ran {c['auto_backend']} ({c['auto_backend_with_grad']} with gradients), "
            f"max|auto-sdpa| {c['max_abs_diff_auto_vs_sdpa']:.1e} (gradients "
            f"{c['max_abs_diff_grads_auto_vs_sdpa']:.1e}), max|reference-sdpa| "
            f"{c['max_abs_diff_reference_vs_sdpa']:.1e}"
            for c in res["checks"]
        )
        + ".",
        f"- qkv's own cost per call, at T={ov['T']} (forward, no_grad): hot (median of {ov['hot']['reps']} x "
        f"{ov['hot']['calls_per_rep']} calls in a loop) sdpa {ov['hot']['per_call_us']['sdpa']:.1f} us, qkv-auto "
        f"{ov['hot']['per_call_us']['qkv-auto']:.1f} us, so qkv adds {ov['qkv_overhead_us']['hot']:.1f} us; "
        f"cold (each call right after a {ROOF_N}^3 matmul, median of {ov['cold']['reps']}) sdpa "
        f"{ov['cold']['per_call_us']['sdpa']:.0f} us, qkv-auto {ov['cold']['per_call_us']['qkv-auto']:.0f} us, "
        f"so qkv adds {ov['qkv_overhead_us']['cold']:.0f} us.",
        f"- Wall time of the run: {res['wall_s']:.0f} s.",
        "",
        *_per_call_markdown(res),
    ]
    return "\n".join(lines)


def _per_call_markdown(res: dict[str, Any]) -> list[str]:
    """The per-call table (qkv-auto against SDPA by T) and the padding-mask table."""
    cfg = res["config"]
    rows = [
        [r["T"], r["calls_per_rep"], f"{r['per_call_us']['sdpa']:.1f}", f"{r['per_call_us']['qkv-auto']:.1f}",
         f"{r['qkv_adds_us']:.1f}", f"{r['ratio']:.3f}", f"{r['paired_ratio']:.3f}"]
        for r in res["per_call"]
    ]  # fmt: skip
    pm = res["padding_mask"]
    b, h, t, d = pm["shape_BHTD"]
    mask_rows = [[name, f"{ms:.2f}"] for name, ms in pm["per_call_ms"].items()]
    ratio_rows = [[name, f"{r:.3f}", f"{pm['paired_ratios'][name]:.3f}"] for name, r in pm["ratios"].items()]
    return [
        "## Per-call cost",
        "",
        f"B={cfg['B']}, H={cfg['H']}, D={cfg['D']}, {cfg['dtype']}, forward under no_grad, {torch.get_num_threads()} "
        f"thread(s); each rep is `calls` back-to-back calls, sdpa and qkv-auto interleaved, median of "
        f"{res['per_call'][0]['reps']} reps per call.",
        "",
        markdown_table(
            ["T", "calls", "sdpa us", "qkv-auto us", "qkv adds us", "ratio", "paired ratio"],
            rows, align="rrrrrrr",
        ),
        "",
        f"## Padding mask and weights on demand (B={b}, H={h}, T={t}, D={d})",
        "",
        f"A {pm['mask']} mask, forward under no_grad, {pm['calls_per_rep']} calls per rep, median of "
        f"{pm['reps']} interleaved reps. `eager-weights` is `softmax(q k^T * scale, masked) @ v` returning "
        "both the output and the weights; `*-weights` ask qkv for the weights (`need_weights=True`).",
        "",
        markdown_table(["contender", "ms per call"], mask_rows, align="lr"),
        "",
        markdown_table(["ratio", "median", "paired"], ratio_rows, align="lrr"),
        "",
        "Max |difference|: " + ", ".join(f"{k} {x:.1e}" for k, x in pm["max_abs_diff"].items())
        + f"; auto ran {pm['auto_backend']}.",
        "",
    ]  # fmt: skip


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: T=256,512, 3 reps; writes *_quick.*")
    p.add_argument("--sizes", type=int_list(1), default=None, help="sequence lengths (default 1024,4096)")
    p.add_argument(
        "--reps", type=int, default=None, help="timed repetitions per contender (default 12, >= 5)"
    )
    p.add_argument(
        "--ref-reps",
        type=int,
        default=None,
        help="timed repetitions of qkv-reference, slow at large T (default: --reps; at least 3). It then "
        "runs in the first rounds only, and the orders are no longer exactly balanced",
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory calls")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument(
        "--max-other-load",
        type=float,
        default=0.25,
        metavar="CORES",
        help="throw away and redo (at most --reps times per case) a round during which other processes "
        "kept more than CORES cores busy; negative: keep every round (default 0.25)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        metavar="S",
        help="before each case wait up to S seconds for other processes to leave the CPUs idle "
        "(default 60, 0 with --quick)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads: expected >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    sizes = args.sizes or ([256, 512] if args.quick else [1024, 4096])
    reps = args.reps or (3 if args.quick else 12)
    ref_reps = args.ref_reps or reps
    if reps < 1 or ref_reps < 1:
        raise SystemExit("--reps and --ref-reps must be >= 1")
    if not args.quick and (reps < 5 or ref_reps < 3):
        log("warning: below the protocol's minimum (5 reps, 3 for qkv-reference); use --quick for smoke runs")
    wait_quiet = args.wait_quiet if args.wait_quiet is not None else (0.0 if args.quick else 60.0)
    res = run_suite(
        sizes,
        reps,
        ref_reps,
        memory=not args.no_memory,
        wait_quiet_s=wait_quiet,
        max_other_load=None if args.max_other_load < 0 else args.max_other_load,
    )
    write_report(args.out, SUITE, args.quick, res, to_markdown)
    ratios = {(c["T"], c["mode"]): c["ratio_to_sdpa"] for c in res["cases"] if c["contender"] == "qkv-auto"}
    worst = max(ratios.values())
    log(
        "qkv-auto / sdpa: "
        + ", ".join(f"T={t} {m} {r:.3f}" for (t, m), r in ratios.items())
        + f" (worst {worst:.3f}, median {statistics.median(ratios.values()):.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
