"""Long sequences: qkv's backends on sparse patterns against SDPA, FlexAttention, local-attention.

B=1, H=8, D=64, fp32, T in --sizes (default 1024,4096,16384; 32768 on request). Patterns:

    dense        no mask
    window       qkv.masks.sliding_window(256): |i - j| <= 256
    longformer   qkv.masks.longformer(256, range(16)): window 256 + 16 global tokens
    bigbird      qkv.masks.bigbird(64, 3, 2, 2, seed=0): block 64, 3 window blocks, 2 global, 2 random

Contenders, side by side in one process (interleaved, balanced rounds; docs/performance/index.md):

    qkv-auto          qkv.attention(q, k, v, mask=pattern)                (backend="auto")
    qkv-chunked       ... backend="chunked"
    qkv-blocksparse   ... backend="blocksparse" (patterns only)
    sdpa              F.scaled_dot_product_attention(q, k, v), no mask    (dense cases: the dense point)
    sdpa-mask         F.scaled_dot_product_attention with the dense bool mask (patterns)
    flex              torch.compile(flex_attention) with the pattern's BlockMask (forward only:
                      torch has no FlexAttention backward on CPU); compile time reported apart
    local-attention   lucidrains local-attention, window 256 looking one window back and forward
                      with exact_windowsize=True: the same |i - j| <= 256 (window pattern only)

forward (under torch.no_grad()) and forward+backward (fixed random grad_output). The roof, an
fp32 2048^3 matmul, is timed in the same rounds. Extras: weights on demand (one head of dense
T=4096 vs the forward alone), chunked additive attention at T=4096 (peak memory against the
reference), BlockMask build times (qkv's layout vs torch's create_block_mask).

    python benchmarks/attention_long.py              # writes benchmarks/results/attention_long.{json,md}
    python benchmarks/attention_long.py --quick      # smoke: T=256,512, 3 reps -> attention_long_quick.*
    python benchmarks/attention_long.py --sizes 16384 --patterns window --reps 7
"""

from __future__ import annotations

import argparse
import atexit
import inspect
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import qkv
from qkv.backends import BACKENDS

# common.py sits beside this file, however it is run (script or -m)
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
        matmul_contender,
        measure_roof,
        mem_available,
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
        compiled_flex,
        dense_mask,
        flex_status,
        int_list,
        log,
        machine_info,
        machine_line,
        markdown_table,
        matmul_contender,
        measure_roof,
        mem_available,
        paired_ratio,
        peak_rss_growth,
        time_interleaved,
        wait_for_quiet,
        write_report,
    )

SUITE = "attention_long"
REPO = Path(__file__).resolve().parent.parent
B, H, D = 1, 8, 64
DTYPE = torch.float32
ROOF_N = 2048
ROOF = "roof-matmul"
BASELINE = "qkv-auto"
WINDOW = 256
PATTERN_NAMES = ("dense", "window", "longformer", "bigbird")
FWD_BWD_FACTOR = 3.5
FLOPS_CONVENTION = (
    "forward 4*B*H*D*nnz, nnz = the pattern's allowed (query, key) pairs (T^2 for dense), whatever a "
    "contender computes (SDPA with a mask computes all T^2, tiles compute their padding); "
    "forward+backward 3.5x forward (FlashAttention convention)"
)
COVERAGE = {  # which pairs a contender computes (all give the pattern's exact result)
    "sdpa": "all T^2",
    "sdpa-mask": "all T^2, masked",
    "local-attention": "window ±256 (same pairs)",
}


def make_pattern(name: str):
    """The pattern objects, made once per run (qkv and flex cache block masks per object)."""
    m = qkv.masks
    return {
        "dense": None,
        "window": m.sliding_window(WINDOW),
        "longformer": m.longformer(WINDOW, range(16)),
        "bigbird": m.bigbird(64, 3, 2, 2, seed=0),
    }[name]


def count_pairs(pattern, t: int, chunk: int = 1024) -> int:
    """The pattern's allowed pairs at T, counted ``chunk`` rows at a time."""
    if pattern is None:
        return t * t
    fn = pattern.mask_mod(t, t)
    zero = torch.zeros((), dtype=torch.long)
    kv = torch.arange(t)[None, :]
    return sum(
        int(fn(zero, zero, torch.arange(r0, min(r0 + chunk, t))[:, None], kv).sum())
        for r0 in range(0, t, chunk)
    )


def sdpa_mask_skip(t: int, mode: str, opts: dict[str, Any]) -> str | None:
    """Why SDPA with the dense bool mask does not run at T (None: it runs).

    Measured at T=16384 (fwd): peak RSS growth 1.06 GiB = the float (1, 1, T, T) mask SDPA's CPU
    kernel makes from the bool one, about 3 s per forward and 9 s per forward+backward call;
    both grow as T^2.
    """
    need = 5 * t * t  # bool mask (T^2 bytes, made before) + its float copy (4 T^2) per call
    avail = mem_available()
    if avail is not None and need > avail // 2:
        return f"needs about {need / 2**30:.1f} GiB (bool mask + SDPA's float copy), {avail / 2**30:.1f} GiB available"
    limit = opts["sdpa_mask_max_t"] if mode == "fwd" else opts["sdpa_mask_bwd_max_t"]
    if t > limit:
        flag = "--sdpa-mask-max-t" if mode == "fwd" else "--sdpa-mask-bwd-max-t"
        per_call = (3.2 if mode == "fwd" else 9.2) * (t / 16384) ** 2
        return f"T > {flag} {limit}: about {per_call:.0f} s per call (T^2 work), kept out of the default run"
    return None


# ----------------------------------------------------------------------------- peers


def local_attention_module():
    """lucidrains local-attention at equal coverage, or None if it is not installed."""
    try:
        from local_attention import LocalAttention
    except ImportError:
        return None
    return LocalAttention(
        window_size=WINDOW,
        causal=False,
        look_backward=1,
        look_forward=1,
        exact_windowsize=True,  # |i - j| <= 256 exactly, not the whole neighbour windows
        autopad=True,
    )


def local_attention_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("local-attention")
    except Exception:
        return None


def has_weights_for() -> bool:
    return "weights_for" in inspect.signature(qkv.attention).parameters


# ----------------------------------------------------------------------------- cases


class Case:
    """The contenders of one (pattern, T, mode) on shared inputs, and the ones skipped (why)."""

    def __init__(self, pattern_name: str, t: int, mode: str, opts: dict[str, Any], seed: int = 0) -> None:
        self.pattern_name, self.t, self.mode, self.opts = pattern_name, t, mode, opts
        self.pattern = opts["patterns"][pattern_name]
        g = torch.Generator().manual_seed(seed)
        self.q, self.k, self.v = (torch.randn(B, H, t, D, generator=g, dtype=DTYPE) for _ in range(3))
        self.grad_out = torch.randn(B, H, t, D, generator=g, dtype=DTYPE)
        self.fns: dict[str, Callable[[], torch.Tensor]] = {}
        self.skipped: dict[str, str] = {}
        self.compile_s: float | None = None
        if mode == "fwd+bwd":
            for x in (self.q, self.k, self.v):
                x.requires_grad_(True)
        self._add_contenders()

    def _add_contenders(self) -> None:
        q, k, v, pat, t, opts = self.q, self.k, self.v, self.pattern, self.t, self.opts
        bwd = self.mode == "fwd+bwd"
        self.fns["qkv-auto"] = lambda: qkv.attention(q, k, v, mask=pat).out
        self.fns["qkv-chunked"] = lambda: qkv.attention(q, k, v, mask=pat, backend="chunked").out
        if "blocksparse" not in BACKENDS:
            self.skipped["qkv-blocksparse"] = "not in this qkv (qkv.backends.BACKENDS)"
        elif pat is None:
            self.skipped["qkv-blocksparse"] = "needs a pattern"
        else:
            self.fns["qkv-blocksparse"] = lambda: qkv.attention(q, k, v, mask=pat, backend="blocksparse").out
        if pat is None:
            self.fns["sdpa"] = lambda: F.scaled_dot_product_attention(q, k, v)
        elif (why := sdpa_mask_skip(t, self.mode, opts)) is not None:
            self.skipped["sdpa-mask"] = why
        else:
            mask = opts["dense_masks"].get((self.pattern_name, t))
            if mask is None:
                mask = opts["dense_masks"][(self.pattern_name, t)] = dense_mask(pat, t)
            self.fns["sdpa-mask"] = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if bwd:
            self.skipped["flex"] = f"torch {torch.__version__} has no FlexAttention backward on CPU"
        elif (why := flex_status()) is not None:
            self.skipped["flex"] = why
        elif pat is None and t > opts["flex_dense_max_t"]:
            self.skipped["flex"] = (
                f"dense above --flex-dense-max-t {opts['flex_dense_max_t']}: its CPU kernel ran dense T=4096 at "
                "about 4x SDPA's time, about 18 s per call at T=16384"
            )
        else:
            self._add_flex()
        if self.pattern_name == "window":
            la = local_attention_module()
            if la is None:
                self.skipped["local-attention"] = "not installed (pip install local-attention)"
            else:
                self.fns["local-attention"] = lambda: la(q, k, v)
        elif self.pattern_name != "dense":
            self.skipped["local-attention"] = "sliding window only: no global tokens or random blocks"

    def _add_flex(self) -> None:
        from qkv.backends.flex import layout_block_mask

        q, k, v, t = self.q, self.k, self.v, self.t
        bm = None
        if self.pattern is not None:
            bm = layout_block_mask(self.pattern, t, t, self.opts["flex_block"])
        fn = compiled_flex()
        t0 = time.perf_counter()
        with torch.no_grad():
            fn(q, k, v, block_mask=bm)
        self.compile_s = time.perf_counter() - t0
        self.fns["flex"] = lambda: fn(q, k, v, block_mask=bm)

    def contenders(self, slow_s: float, slow_reps: int) -> tuple[list[Contender], dict[str, float]]:
        """One untimed call each (the warm-up: it also decides ``slow_reps`` for contenders slower
        than ``slow_s``), then the Contender objects for :func:`time_interleaved`."""
        out, first = [], {}
        for name, fn in self.fns.items():
            run, before = self.wrap(fn)
            if before is not None:
                before()
            t0 = time.perf_counter()
            run()
            first[name] = time.perf_counter() - t0
            reps = slow_reps if first[name] > slow_s else None
            out.append(Contender(name, run, before=before, reps=reps, warmup=0))
        return out, first

    def wrap(self, fn):
        if self.mode == "fwd":

            def run():
                with torch.no_grad():
                    return fn()

            return run, None

        def run_bwd():
            fn().backward(self.grad_out)

        def before():
            self.q.grad = self.k.grad = self.v.grad = None

        return run_bwd, before


# ----------------------------------------------------------------------------- the run


def run_case(case: Case, opts: dict[str, Any], nnz: int, checks: list) -> list[dict[str, Any]]:
    label = f"{case.pattern_name} T={case.t} {case.mode}"
    quiet = wait_for_quiet(opts["wait_quiet_s"], threshold=opts["max_other_load"] or 0.25)
    contenders, first = case.contenders(opts["slow_s"], opts["slow_reps"])
    for name, dt in first.items():
        log(f"{label} untimed first call {name}: {dt * 1e3:.1f} ms")
    roof_c = matmul_contender(ROOF_N, DTYPE, name=ROOF)
    reps = opts["reps"]
    timings = time_interleaved(
        [*contenders, roof_c],
        reps,
        label=label,
        max_other_load=opts["max_other_load"],
        max_redo=opts["max_redo"] if opts["max_other_load"] is not None else 0,
        wait_s=min(opts["wait_quiet_s"], 30.0),
    )
    roof_gflops = 2 * ROOF_N**3 / timings[ROOF].median / 1e9
    fwd_flops = 4 * B * H * D * nnz
    flops = fwd_flops if case.mode == "fwd" else FWD_BWD_FACTOR * fwd_flops
    base = timings[BASELINE]
    rows, outs = [], {}
    for c in contenders:
        tm = timings[c.name]
        mem = None
        if opts["memory"]:
            holder: dict[str, Any] = {}
            mem = peak_rss_growth(
                lambda c=c, holder=holder: holder.setdefault("out", c.run()), before=c.before
            )
            if case.mode == "fwd" and holder.get("out") is not None:
                outs[c.name] = holder["out"].detach()
            holder.clear()
        gflops = flops / tm.median / 1e9
        rows.append(
            {
                "pattern": case.pattern_name,
                "T": case.t,
                "mode": case.mode,
                "contender": c.name,
                "coverage": COVERAGE.get(c.name, "pattern"),
                **tm.to_dict(),
                "first_call_s": first[c.name],
                "ratio_to_qkv_auto": tm.median / base.median,
                "paired_ratio_to_qkv_auto": paired_ratio(tm, base),
                "nnz": nnz,
                "flops": flops,
                "gflops": gflops,
                "roof_gflops_same_rounds": roof_gflops,
                "roof_fraction": gflops / roof_gflops,
                "ideal_s": flops / (roof_gflops * 1e9),
                "peak_rss_growth_bytes": mem,
                "other_processes_load_cores": tm.mean_other_load,
                "waited_for_quiet_s": quiet["waited_s"],
                "compile_s": case.compile_s if c.name == "flex" else None,
            }
        )
    if outs:
        ref_name = "sdpa-mask" if "sdpa-mask" in outs else ("sdpa" if "sdpa" in outs else "qkv-chunked")
        ref = outs[ref_name]
        checks.append(
            {
                "pattern": case.pattern_name,
                "T": case.t,
                "against": ref_name,
                "max_abs_diff": {n: float((o - ref).abs().max()) for n, o in outs.items() if n != ref_name},
            }
        )
    log(
        f"{label}: "
        + ", ".join(f"{r['contender']} {r['median_s'] * 1e3:.1f} ms" for r in rows)
        + f"; ideal {flops / roof_gflops / 1e6:.1f} ms at roof {roof_gflops:.0f} GFLOP/s"
    )
    return rows


def run_weights_case(opts: dict[str, Any]) -> dict[str, Any] | None:
    """qkv.attention(..., weights_for=([0], None)) at dense T=4096 against the forward alone."""
    if not has_weights_for():
        return None
    t = opts["weights_t"]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, t, D, generator=g, dtype=DTYPE) for _ in range(3))

    def fwd(**kw):
        def run():
            with torch.no_grad():
                return qkv.attention(q, k, v, **kw)

        return run

    contenders = [
        Contender("forward", fwd()),
        Contender("forward+weights(head 0)", fwd(weights_for=([0], None))),
        Contender("reference need_weights (all heads)", fwd(backend="reference", need_weights=True), reps=3),
    ]
    wait_for_quiet(opts["wait_quiet_s"], threshold=opts["max_other_load"] or 0.25)
    tm = time_interleaved(
        contenders, opts["reps"], label=f"weights T={t}", max_other_load=opts["max_other_load"],
        max_redo=opts["max_redo"] if opts["max_other_load"] is not None else 0,
    )  # fmt: skip
    one = contenders[1].run()
    full = contenders[2].run()
    mem = {c.name: peak_rss_growth(c.run) for c in contenders} if opts["memory"] else {}
    res = {
        "T": t,
        "backend": one.backend,
        "weights_shape": list(one.weights.shape),
        "max_abs_diff_weights_vs_reference": float((one.weights - full.weights[:, :1]).abs().max()),
        "timings": {n: x.to_dict() for n, x in tm.items()},
        "peak_rss_growth_bytes": mem,
        "ratio_weights_to_forward": tm["forward+weights(head 0)"].median / tm["forward"].median,
        "paired_ratio_weights_to_forward": paired_ratio(tm["forward+weights(head 0)"], tm["forward"]),
    }
    log(f"weights on demand T={t}: {res['ratio_weights_to_forward']:.2f}x the forward alone")
    return res


def run_additive_case(opts: dict[str, Any]) -> dict[str, Any]:
    """Chunked additive attention against the reference, forward, H=1 (the reference's
    (Tq, Tk, A) features are 8*T*T*A*4 bytes at H=8: 34 GB at T=4096)."""
    t, h, a = opts["additive_t"], 1, 64
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, t, D, generator=g, dtype=DTYPE) for _ in range(3))
    params = {
        "w_query": torch.randn(a, D, generator=g) / math.sqrt(D),
        "w_key": torch.randn(a, D, generator=g) / math.sqrt(D),
        "v": torch.randn(a, generator=g),
    }

    def fwd(backend):
        def run():
            with torch.no_grad():
                return qkv.attention(q, k, v, score="additive", score_kwargs=params, backend=backend).out

        return run

    contenders = [Contender("qkv-chunked", fwd("chunked")), Contender("qkv-reference", fwd("reference"))]
    wait_for_quiet(opts["wait_quiet_s"], threshold=opts["max_other_load"] or 0.25)
    tm = time_interleaved(
        contenders,
        opts["additive_reps"],
        label=f"additive T={t}",
        max_other_load=opts["max_other_load"],
        max_redo=opts["max_redo"] if opts["max_other_load"] is not None else 0,
        wait_s=min(opts["wait_quiet_s"], 30.0),
    )
    holder: dict[str, Any] = {}
    mem = {c.name: peak_rss_growth(lambda c=c: holder.__setitem__(c.name, c.run())) for c in contenders}
    diff = float((holder["qkv-chunked"] - holder["qkv-reference"]).abs().max())
    res = {
        "T": t,
        "H": h,
        "A": a,
        "timings": {n: x.to_dict() for n, x in tm.items()},
        "peak_rss_growth_bytes": mem,
        "memory_ratio_chunked_to_reference": (mem["qkv-chunked"] or 0) / max(mem["qkv-reference"] or 1, 1),
        "max_abs_diff": diff,
    }
    log(
        f"additive T={t} H=1: chunked peak {mem['qkv-chunked']} B, reference {mem['qkv-reference']} B, diff {diff:.1e}"
    )
    return res


def run_block_mask_builds(sizes: list[int], names: list[str], opts: dict[str, Any]) -> list[dict[str, Any]]:
    """BlockMask build time and peak memory: qkv's layout (no T x T) vs torch's create_block_mask."""
    if not _flex_importable():
        return []
    from torch.nn.attention.flex_attention import create_block_mask

    from qkv.backends.flex import layout_block_mask

    rows = []
    block = opts["flex_block"]
    for name in names:
        pat = opts["patterns"][name]
        if pat is None:
            continue
        for t in sizes:
            fns = {"qkv layout": lambda pat=pat, t=t: layout_block_mask(pat, t, t, block)}
            if t <= opts["create_block_mask_max_t"]:
                mm = pat.mask_mod(t, t)
                fns["torch create_block_mask"] = lambda mm=mm, t=t: create_block_mask(
                    mm, None, None, t, t, device="cpu", BLOCK_SIZE=block
                )
            same = None
            if "torch create_block_mask" in fns:
                a, b = fns["qkv layout"](), fns["torch create_block_mask"]()
                same = bool(torch.equal(a.to_dense(), b.to_dense())) and all(
                    torch.equal(x, y)
                    for x, y in (
                        (a.kv_num_blocks, b.kv_num_blocks),
                        (a.full_kv_num_blocks, b.full_kv_num_blocks),
                    )
                )
                del a, b
            contenders = [
                Contender(what, fn, reps=5 if what == "qkv layout" else (1 if t >= 16384 else 3))
                for what, fn in fns.items()
            ]
            wait_for_quiet(opts["wait_quiet_s"], threshold=opts["max_other_load"] or 0.25)
            tm = time_interleaved(
                contenders,
                5,
                label=f"block mask {name} T={t}",
                progress=False,
                max_other_load=opts["max_other_load"],
                max_redo=opts["max_redo"] if opts["max_other_load"] is not None else 0,
                wait_s=min(opts["wait_quiet_s"], 30.0),
            )
            for c in contenders:
                mem = peak_rss_growth(c.run) if opts["memory"] else None
                x = tm[c.name]
                rows.append(
                    {"pattern": name, "T": t, "builder": c.name, "reps": len(x.samples), "median_s": x.median,
                     "peak_rss_growth_bytes": mem, "same_tiles_as_create_block_mask": same,
                     "other_processes_load_cores": x.mean_other_load}
                )  # fmt: skip
            if t > opts["create_block_mask_max_t"]:
                rows.append(
                    {"pattern": name, "T": t, "builder": "torch create_block_mask", "reps": 0, "median_s": None,
                     "peak_rss_growth_bytes": None,
                     "skipped": f"T > {opts['create_block_mask_max_t']}: it evaluates T^2 mask entries "
                                f"(2.8 GiB peak at T=16384, about 4x that at 2T)"}
                )  # fmt: skip
            log(
                f"block mask {name} T={t}: " + ", ".join(f"{r['builder']} {r['median_s']}" for r in rows[-2:])
            )
    return rows


def _flex_importable() -> bool:
    from qkv.backends.flex import flex_available

    return flex_available()


def run_suite(sizes: list[int], names: list[str], opts: dict[str, Any]) -> dict[str, Any]:
    t_start = time.perf_counter()
    log(
        f"{SUITE}: sizes {sizes}, patterns {names}, reps {opts['reps']} (slow contenders {opts['slow_reps']})"
    )
    machine = machine_info(REPO)
    roof_start = {
        str(dt).removeprefix("torch."): measure_roof(ROOF_N, dt, 5) for dt in (DTYPE, torch.bfloat16)
    }
    for name, r in roof_start.items():
        log(f"roof {name} matmul {ROOF_N}^3: {r['gflops']:.1f} GFLOP/s")
    opts["patterns"] = {n: make_pattern(n) for n in PATTERN_NAMES}
    cases, checks, skipped, compile_times, autos = [], [], [], [], []
    opts["dense_masks"] = {}
    for t in sizes:
        for name in names:
            nnz = count_pairs(opts["patterns"][name], t)
            opts["dense_masks"].clear()  # the bool masks of SDPA, shared by a pattern's two passes
            for mode in ("fwd", "fwd+bwd"):
                if name == "dense" and mode == "fwd+bwd" and t > opts["dense_bwd_max_t"]:
                    skipped.append(
                        {"pattern": name, "T": t, "mode": mode, "contender": "all",
                         "reason": f"dense forward+backward above --dense-bwd-max-t {opts['dense_bwd_max_t']} "
                                   "(no sparsity to measure; about 8 s per SDPA call at T=16384)"}
                    )  # fmt: skip
                    continue
                case = Case(name, t, mode, opts)
                for c, why in case.skipped.items():
                    skipped.append({"pattern": name, "T": t, "mode": mode, "contender": c, "reason": why})
                if case.compile_s is not None:
                    compile_times.append({"pattern": name, "T": t, "compile_s": case.compile_s})
                autos.append({"pattern": name, "T": t, "mode": mode, "backend": _auto_backend(case)})
                cases += run_case(case, opts, nnz, checks)
                del case
    extras: dict[str, Any] = {}
    if opts["extras"]:
        extras["weights_on_demand"] = run_weights_case(opts)
        extras["additive"] = run_additive_case(opts)
        extras["block_mask_build"] = run_block_mask_builds(sizes, names, opts)
    roof_end = {str(dt).removeprefix("torch."): measure_roof(ROOF_N, dt, 5) for dt in (DTYPE, torch.bfloat16)}
    opts["dense_masks"].clear()
    cfg = {k: v for k, v in opts.items() if k not in ("patterns", "dense_masks")}
    cfg.update(
        {
            "B": B,
            "H": H,
            "D": D,
            "dtype": str(DTYPE).removeprefix("torch."),
            "sizes": sizes,
            "patterns": {
                n: repr(opts["patterns"][n]) if opts["patterns"][n] is not None else "none" for n in names
            },
            "baseline": BASELINE,
            "timing": (
                "one untimed first call per contender (the warm-up; for flex after the compiling call), then "
                "time.perf_counter around one call in rounds, contenders and the roof matmul interleaved in "
                "balanced orders; median of the reps; contenders whose first call took more than slow_s run "
                "slow_reps reps (the first rounds)"
            ),
            "ratio": "median time / median time of qkv-auto in the same case (paired: median of per-round ratios)",
            "flops_convention": FLOPS_CONVENTION,
            "roof": f"fp32 matmul {ROOF_N}^3, 2*n^3/t, timed in the same rounds as each case",
            "memory_method": MEMORY_METHOD if opts["memory"] else "not measured (--no-memory)",
            "flex": "torch.compile(flex_attention, dynamic=False) with a BlockMask built by "
            f"qkv.backends.flex.layout_block_mask at {opts['flex_block']} tiles, built once outside the "
            "timed calls (tiles compared with torch's create_block_mask in the BlockMask table; 64x64 "
            "was the fastest tile on this CPU among 64x32, 64x64, 128x64, 128x128, 256x64)",
            "local_attention": {
                "version": local_attention_version(),
                "config": f"LocalAttention(window_size={WINDOW}, causal=False, look_backward=1, look_forward=1, "
                "exact_windowsize=True, autopad=True), no rotary embedding",
            },
        }
    )
    return {
        "suite": SUITE,
        "machine": machine,
        "config": cfg,
        "roof": {"start": roof_start, "end": roof_end},
        "auto_backend": autos,
        "checks": checks,
        "skipped": skipped,
        "flex_compile": compile_times,
        "cases": cases,
        "extras": extras,
        "wall_s": time.perf_counter() - t_start,
    }


def _auto_backend(case: Case) -> str:
    """The backend qkv-auto runs in this case (with gradients for fwd+bwd)."""
    with torch.set_grad_enabled(case.mode != "fwd"):
        return qkv.dispatch_report(case.q, case.k, case.v, mask=case.pattern).chosen or "?"


# ----------------------------------------------------------------------------- report


def _mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.0f}"


def _load(timing: dict[str, Any]) -> str:
    """Mean other-process load (cores) of a Timing.to_dict() (n/a where unknown)."""
    known = [x for x in timing.get("other_load_cores_per_rep", []) if x is not None]
    return f"{statistics.fmean(known):.2f}" if known else "n/a"


def _ms(s: float | None) -> str:
    return "n/a" if s is None else f"{s * 1e3:.1f}"


def targets(res: dict[str, Any]) -> list[list[str]]:
    """The suite's targets as measured (only those whose cases ran)."""
    by = {(c["pattern"], c["T"], c["mode"], c["contender"]): c for c in res["cases"]}
    rows = []

    def get(p, t, m, c):
        return by.get((p, t, m, c))

    def add(target, value, ok):
        rows.append([target, value, "met" if ok else "NOT met"])

    t = 16384
    a = get("window", t, "fwd", "qkv-auto")
    if a:
        f = get("window", t, "fwd", "flex")
        if f:
            r = a["median_s"] / f["median_s"]
            add(
                "window T=16384 fwd: qkv <= compiled FlexAttention",
                f"{r:.2f}x flex ({_ms(a['median_s'])} vs {_ms(f['median_s'])} ms)",
                r <= 1.0,
            )
        r = a["median_s"] / a["ideal_s"]
        add(
            "window T=16384 fwd: qkv <= 2.5x ideal at the roof",
            f"{r:.2f}x ideal ({_ms(a['median_s'])} vs {_ms(a['ideal_s'])} ms)",
            r <= 2.5,
        )
        m = get("window", t, "fwd", "sdpa-mask")
        if m and a["peak_rss_growth_bytes"] and m["peak_rss_growth_bytes"]:
            r = a["peak_rss_growth_bytes"] / m["peak_rss_growth_bytes"]
            add(
                "window T=16384 fwd: peak memory <= 1/10 of SDPA with mask",
                f"{r:.3f} ({_mib(a['peak_rss_growth_bytes'])} vs {_mib(m['peak_rss_growth_bytes'])} MiB)",
                r <= 0.1,
            )
    ab = get("window", t, "fwd+bwd", "qkv-auto")
    la = get("window", t, "fwd+bwd", "local-attention")
    if ab and la:
        r = la["median_s"] / ab["median_s"]
        add(
            "window T=16384 fwd+bwd: local-attention / qkv >= 4",
            f"{r:.2f}x ({_ms(la['median_s'])} vs {_ms(ab['median_s'])} ms)",
            r >= 4,
        )
    if ab:
        m = get("window", t, "fwd+bwd", "sdpa-mask")
        if m and ab["peak_rss_growth_bytes"] and m["peak_rss_growth_bytes"]:
            r = ab["peak_rss_growth_bytes"] / m["peak_rss_growth_bytes"]
            add(
                "window T=16384 fwd+bwd: peak memory <= 1/10 of SDPA with mask",
                f"{r:.3f} ({_mib(ab['peak_rss_growth_bytes'])} vs {_mib(m['peak_rss_growth_bytes'])} MiB)",
                r <= 0.1,
            )
    for p in ("longformer", "bigbird"):
        a = get(p, t, "fwd", "qkv-auto")
        if not a:
            continue
        m, f = get(p, t, "fwd", "sdpa-mask"), get(p, t, "fwd", "flex")
        if m:
            r = m["median_s"] / a["median_s"]
            add(
                f"{p} T=16384 fwd: SDPA with mask / qkv >= 10",
                f"{r:.1f}x ({_ms(m['median_s'])} vs {_ms(a['median_s'])} ms)",
                r >= 10,
            )
        if f:
            r = a["median_s"] / f["median_s"]
            add(
                f"{p} T=16384 fwd: qkv <= 1.5x compiled FlexAttention",
                f"{r:.2f}x flex ({_ms(a['median_s'])} vs {_ms(f['median_s'])} ms)",
                r <= 1.5,
            )
    ex = res["extras"]
    if ex.get("additive"):
        r = ex["additive"]["memory_ratio_chunked_to_reference"]
        add(
            f"additive T={ex['additive']['T']} (H=1): chunked peak memory <= 1/8 of the reference, exact",
            f"{r:.4f} (max abs diff {ex['additive']['max_abs_diff']:.1e})",
            r <= 1 / 8 and ex["additive"]["max_abs_diff"] < 1e-4,
        )
    if ex.get("weights_on_demand"):
        r = ex["weights_on_demand"]["ratio_weights_to_forward"]
        add(
            f"weights on demand, one head, T={ex['weights_on_demand']['T']}: <= 1.5x the forward",
            f"{r:.2f}x",
            r <= 1.5,
        )
    return rows


def to_markdown(res: dict[str, Any]) -> str:
    m, cfg = res["machine"], res["config"]
    lines = [
        f"# {SUITE}: sparse patterns at long T, qkv against SDPA, FlexAttention and local-attention",
        "",
        f"B={cfg['B']}, H={cfg['H']}, D={cfg['D']}, {cfg['dtype']}. Median of {cfg['reps']} timed reps "
        f"({cfg['slow_reps']} for a contender whose first call took more than {cfg['slow_s']:.0f} s), contenders "
        "interleaved in balanced rounds after an untimed first call, with the roof matmul timed in the same "
        "rounds. Ratio = time / qkv-auto's time (paired = median of per-round ratios). `ideal` = the "
        "pattern's FLOPs at the roof measured in the same rounds.",
        "",
        machine_line(
            m, load=False, extra=f"; local-attention {cfg['local_attention']['version'] or 'not installed'}"
        ),
        "",
        "Patterns: " + "; ".join(f"{n} = `{p}`" for n, p in cfg["patterns"].items()) + ".",
        "",
    ]
    rows = []
    seen = set()
    for c in res["cases"]:
        key = (c["pattern"], c["T"], c["mode"])
        if key not in seen:
            seen.add(key)
            rows.append(
                [c["pattern"], c["T"], c["mode"], "*ideal (roof)*", "", "", _ms(c["ideal_s"]),
                 f"{c['ideal_s'] / _median_of(res, key, BASELINE):.3f}", "", "", "100%", "", ""]
            )  # fmt: skip
        load = c["other_processes_load_cores"]
        load_txt = "n/a" if load is None else f"{load:.2f}"
        if c["rounds_redone"]:
            load_txt += f" ({c['rounds_redone']} redone)"
        rows.append(
            [
                c["pattern"],
                c["T"],
                c["mode"],
                c["contender"],
                c["coverage"],
                c["reps"],
                _ms(c["median_s"]),
                f"{c['ratio_to_qkv_auto']:.3f}",
                f"{c['paired_ratio_to_qkv_auto']:.3f}",
                f"{c['gflops']:.1f}",
                f"{c['roof_fraction'] * 100:.0f}%",
                _mib(c["peak_rss_growth_bytes"]),
                load_txt,
            ]
        )
    lines.append(
        markdown_table(
            [
                "pattern",
                "T",
                "pass",
                "contender",
                "covers",
                "reps",
                "median ms",
                "ratio",
                "paired",
                "GFLOP/s",
                "of roof",
                "peak MiB",
                "other load",
            ],
            rows,
            align="lrllllrrrrrrr",
        )
    )
    tg = targets(res)
    if tg:
        lines += ["", "## Targets as measured", "", markdown_table(["target", "measured", ""], tg)]
    if res["skipped"]:
        lines += [
            "",
            "## Skipped",
            "",
            markdown_table(
                ["pattern", "T", "pass", "contender", "why"],
                [[s["pattern"], s["T"], s["mode"], s["contender"], s["reason"]] for s in res["skipped"]],
            ),
        ]
    if res["flex_compile"]:
        lines += [
            "",
            "## FlexAttention compile time (first call, not in the timed runs)",
            "",
            f"Compile cache: {cfg['compile_cache']}.",
            "",
            markdown_table(
                ["pattern", "T", "compile + first call s"],
                [[x["pattern"], x["T"], f"{x['compile_s']:.1f}"] for x in res["flex_compile"]],
                align="lrr",
            ),
        ]
    ex = res["extras"]
    if ex.get("weights_on_demand"):
        w = ex["weights_on_demand"]
        lines += [
            "",
            f"## Weights on demand (dense, T={w['T']}, forward, backend {w['backend']})",
            "",
            markdown_table(
                ["call", "reps", "median ms", "ratio to forward", "peak MiB", "other load"],
                [
                    [
                        n,
                        x["reps"],
                        _ms(x["median_s"]),
                        f"{x['median_s'] / w['timings']['forward']['median_s']:.2f}",
                        _mib(w["peak_rss_growth_bytes"].get(n)),
                        _load(x),
                    ]
                    for n, x in w["timings"].items()
                ],
                align="lrrrrr",
            ),
            "",
            f"`weights_for=([0], None)` returns weights {tuple(w['weights_shape'])}; max abs difference from the "
            f"reference's head 0: {w['max_abs_diff_weights_vs_reference']:.1e}.",
        ]
    if ex.get("additive"):
        a = ex["additive"]
        lines += [
            "",
            f"## Chunked additive attention (T={a['T']}, D={D}, A={a['A']}, forward, H={a['H']})",
            "",
            f"H=1 because the reference materializes the (Tq, Tk, A) features: 8*T*T*A*4 bytes = "
            f"{8 * a['T'] ** 2 * a['A'] * 4 / 1e9:.0f} GB at H=8.",
            "",
            markdown_table(
                ["backend", "reps", "median ms", "peak MiB", "other load"],
                [
                    [n, x["reps"], _ms(x["median_s"]), _mib(a["peak_rss_growth_bytes"].get(n)), _load(x)]
                    for n, x in a["timings"].items()
                ],
                align="lrrrr",
            ),
            "",
            f"Memory ratio chunked / reference: {a['memory_ratio_chunked_to_reference']:.4f}; max abs difference "
            f"{a['max_abs_diff']:.1e}.",
        ]
    if ex.get("block_mask_build"):
        lines += [
            "",
            f"## BlockMask build ({cfg['flex_block'][0]}x{cfg['flex_block'][1]} tiles)",
            "",
            markdown_table(
                [
                    "pattern",
                    "T",
                    "builder",
                    "reps",
                    "median ms",
                    "peak MiB",
                    "same tiles as torch's",
                    "other load",
                ],
                [
                    [
                        r["pattern"],
                        r["T"],
                        r["builder"],
                        r["reps"],
                        _ms(r["median_s"]) if r["median_s"] else "skipped: " + r.get("skipped", ""),
                        _mib(r["peak_rss_growth_bytes"]),
                        {True: "yes", False: "no", None: ""}[r.get("same_tiles_as_create_block_mask")],
                        _load({"other_load_cores_per_rep": [r.get("other_processes_load_cores")]}),
                    ]
                    for r in ex["block_mask_build"]
                ],
                align="lrlrrrlr",
            ),
        ]
    roof = res["roof"]
    lines += [
        "",
        "## Notes",
        "",
        f"- FLOPs: {cfg['flops_convention']}.",
        f"- Roof: {cfg['roof']}; standalone at start "
        + ", ".join(f"{k} {v['gflops']:.0f}" for k, v in roof["start"].items())
        + " GFLOP/s, at end "
        + ", ".join(f"{k} {v['gflops']:.0f}" for k, v in roof["end"].items())
        + " GFLOP/s.",
        f"- Peak MiB: {cfg['memory_method']}",
        f"- flex: {cfg['flex']}.",
        f"- local-attention: {cfg['local_attention']['config']}.",
        "- auto ran: "
        + "; ".join(f"{a['pattern']} T={a['T']} {a['mode']}: {a['backend']}" for a in res["auto_backend"])
        + ".",
        "- Checks (forward outputs, max abs difference): "
        + "; ".join(
            f"{c['pattern']} T={c['T']} vs {c['against']}: "
            + ", ".join(f"{n} {d:.1e}" for n, d in c["max_abs_diff"].items())
            for c in res["checks"]
        )
        + ".",
        "- Other load: mean number of cores kept busy by other processes during the rounds the contender ran; "
        + (
            f"before each case the run waited up to {cfg['wait_quiet_s']:.0f} s for it to drop to "
            f"{cfg['max_other_load']} cores, and a round above it was redone (at most {cfg['max_redo']} per case)."
            if cfg["max_other_load"] is not None
            else "every round kept, whatever the load."
        ),
        f"- Wall time of the run: {res['wall_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def _median_of(res, key, name) -> float:
    for c in res["cases"]:
        if (c["pattern"], c["T"], c["mode"], c["contender"]) == (*key, name):
            return c["median_s"]
    return math.nan


# ----------------------------------------------------------------------------- CLI


def _names(s: str) -> list[str]:
    out = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in out if x not in PATTERN_NAMES]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"unknown patterns {bad}; valid: {', '.join(PATTERN_NAMES)}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="smoke run: T=256,512, 3 reps, small extras; writes *_quick.*"
    )
    p.add_argument(
        "--sizes",
        type=int_list(1),
        default=None,
        help="sequence lengths (default 1024,4096,16384; 32768 allowed)",
    )
    p.add_argument(
        "--patterns", type=_names, default=None, help=f"subset of {','.join(PATTERN_NAMES)} (default all)"
    )
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per contender (default 5)")
    p.add_argument(
        "--slow-reps", type=int, default=3, help="reps of a contender whose first call is slow (default 3)"
    )
    p.add_argument(
        "--slow-s", type=float, default=2.0, help="a first call longer than this is slow (default 2 s)"
    )
    p.add_argument("--sdpa-mask-max-t", type=int, default=32768, help="largest T for SDPA with a mask, fwd")
    p.add_argument(
        "--sdpa-mask-bwd-max-t", type=int, default=16384, help="largest T for SDPA with a mask, fwd+bwd"
    )
    p.add_argument("--flex-dense-max-t", type=int, default=4096, help="largest T for dense FlexAttention")
    p.add_argument("--dense-bwd-max-t", type=int, default=4096, help="largest T for dense forward+backward")
    p.add_argument(
        "--flex-block", type=int_list(1), default=[64, 64], help="FlexAttention tiles q,kv (default 64,64)"
    )
    p.add_argument(
        "--warm-compile-cache",
        action="store_true",
        help="keep torch inductor's on-disk cache (default: a fresh one, so compile times are cold)",
    )
    p.add_argument(
        "--no-extras", action="store_true", help="skip weights on demand, additive, block mask builds"
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory calls")
    p.add_argument("--max-other-load", type=float, default=0.25, metavar="CORES",
                   help="redo a round during which other processes kept more than CORES busy; negative: keep all")  # fmt: skip
    p.add_argument("--max-redo", type=int, default=2, help="rounds redone at most per case (default 2)")
    p.add_argument("--wait-quiet", type=float, default=None, metavar="S",
                   help="before each case wait up to S s for a quiet machine (default 60, 0 with --quick)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.warm_compile_cache:  # compile times as a first run pays them (inductor's disk cache empty)
        cache = tempfile.mkdtemp(prefix="qkv-bench-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
    sizes = args.sizes or ([256, 512] if args.quick else [1024, 4096, 16384])
    names = args.patterns or list(PATTERN_NAMES)
    reps = args.reps or (3 if args.quick else 5)
    if reps < 1 or args.slow_reps < 1:
        raise SystemExit("--reps and --slow-reps must be >= 1")
    if not args.quick and (reps < 5 or args.slow_reps < 3):
        log(
            "warning: below the protocol's minimum (5 reps, 3 for slow contenders); use --quick for smoke runs"
        )
    if len(args.flex_block) != 2:
        raise SystemExit("--flex-block: expected two integers q,kv")
    opts = {
        "reps": reps,
        "slow_reps": min(args.slow_reps, reps),
        "slow_s": args.slow_s,
        "sdpa_mask_max_t": args.sdpa_mask_max_t,
        "sdpa_mask_bwd_max_t": args.sdpa_mask_bwd_max_t,
        "dense_bwd_max_t": args.dense_bwd_max_t,
        "flex_dense_max_t": args.flex_dense_max_t,
        "flex_block": tuple(args.flex_block),
        "memory": not args.no_memory,
        "extras": not args.no_extras,
        "max_other_load": None if args.max_other_load < 0 else args.max_other_load,
        "max_redo": args.max_redo,
        "compile_cache": "warm (inductor's on-disk cache kept)"
        if args.warm_compile_cache
        else "cold (a fresh TORCHINDUCTOR_CACHE_DIR; dynamo's in-process state is warm after the first compile)",
        "wait_quiet_s": args.wait_quiet if args.wait_quiet is not None else (0.0 if args.quick else 60.0),
        "weights_t": 512 if args.quick else 4096,
        "additive_t": 512 if args.quick else 4096,
        "additive_reps": 3,
        "create_block_mask_max_t": 16384,
    }
    if local_attention_module() is None:
        log("note: local-attention is not installed: its rows are skipped (pip install local-attention)")
    res = run_suite(sizes, names, opts)
    write_report(args.out, SUITE, args.quick, res, to_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
