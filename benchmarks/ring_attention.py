"""ring_attention: exact ring attention (context parallelism) on CPU with gloo, against one process.

For each world size, one ``torch.multiprocessing.spawn`` (gloo, a file rendezvous, one thread per
rank) runs causal attention over a zig-zag sharded sequence (``qkv.distributed.ring_attention``),
forward + backward, and reports per rank: the peak memory growth of one step, the time per step
(the slowest rank, after a barrier), and the bytes and messages it received. The same step runs
in one process on the chunked backend (one thread) for comparison. A small float32 problem gives
the error ratio at each world size (ring vs the float64 reference, relative to the float32
reference: ``tests/helpers.py``'s rule).

On this CPU machine the ranks share two cores: the times show the ring's overhead, not a
speed-up; throughput scaling is claimed only on GPUs.

    python -m benchmarks.ring_attention           # writes benchmarks/results/ring_attention.{json,md}
    python -m benchmarks.ring_attention --quick   # a short run (ring_attention_quick.*)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__:  # imported as a package module (`python -m benchmarks.<suite>`)
    from .common import (
        MEMORY_METHOD,
        int_list,
        log,
        machine_info,
        machine_line,
        markdown_table,
        peak_rss_growth,
        write_report,
    )
else:  # python benchmarks/<suite>.py: the script's directory is first on sys.path
    from common import (
        MEMORY_METHOD,
        int_list,
        log,
        machine_info,
        machine_line,
        markdown_table,
        peak_rss_growth,
        write_report,
    )

SUITE = "ring_attention"
REPO = Path(__file__).resolve().parent.parent
B, H, D = 1, 4, 64
RATIO_T, RATIO_D = 96, 16  # the error-ratio problem: T divisible by 2 x world up to 8 (zigzag)


def _inputs(t: int, d: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, t, d, generator=g, dtype=torch.float64) for _ in range(4)]


def _no_grads(*tensors: torch.Tensor) -> None:
    """Release the previous step's gradients (before a memory reading: not credited to the step)."""
    for x in tensors:
        x.grad = None


def _step(q, k, v, d_out, group=None):
    """One forward + backward of causal ring attention on this rank's shards."""
    import qkv
    import qkv.distributed as qd

    _no_grads(q, k, v)
    out = qd.ring_attention(q, k, v, group=group, layout="zigzag", mask=qkv.masks.causal()).out
    out.backward(d_out)


def _ratio_case(world: int) -> dict:
    """This rank's float32 output and gradient shards of the error-ratio problem."""
    import qkv
    import qkv.distributed as qd

    shards = [qd.shard_sequence(t.float(), layout="zigzag") for t in _inputs(RATIO_T, RATIO_D, 0)]
    q, k, v = (x.requires_grad_() for x in shards[:3])
    out = qd.ring_attention(q, k, v, layout="zigzag", mask=qkv.masks.causal()).out
    out.backward(shards[3])
    return {"out": out.detach().tolist(), "grads": [x.grad.tolist() for x in (q, k, v)]}


def _measure(rank: int, world: int, t: int, reps: int) -> dict:
    """Peak memory, times and traffic of one step at sequence length ``t`` on this rank."""
    import torch.distributed as dist

    import qkv.distributed as qd

    n = t // world
    g = torch.Generator().manual_seed(1000 + rank)
    q, k, v, d_out = (torch.randn(B, H, n, D, generator=g) for _ in range(4))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    with qd.context_parallel(layout="zigzag") as sp:
        _step(q, k, v, d_out)  # warm-up, and the traffic of one step
        traffic = {"fwd_recvs": sp.stats.forward_recvs, "bwd_recvs": sp.stats.backward_recvs,
                   "fwd_bytes": sp.stats.forward_bytes, "bwd_bytes": sp.stats.backward_bytes}  # fmt: skip
    times = []
    for _ in range(reps):
        dist.barrier()
        start = time.perf_counter()
        _step(q, k, v, d_out)
        dist.barrier()  # the step ends when the slowest rank is done
        times.append(time.perf_counter() - start)
    dist.barrier()
    peak = peak_rss_growth(lambda: _step(q, k, v, d_out), before=lambda: _no_grads(q, k, v))
    return {"t": t, "times": times, "peak_bytes": peak, **traffic}


def _rank_main(rank: int, world: int, rendezvous: str, out_dir: str, lengths: list[int], reps: int) -> None:
    import torch.distributed as dist

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=rendezvous, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300)
    )
    result = {
        "ratio": _ratio_case(world),
        "runs": [_measure(rank, world, t, reps) for t in lengths if t % (2 * world) == 0],
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def run_world(world: int, lengths: list[int], reps: int) -> list[dict]:
    """Every rank's results at ``world`` ranks."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        mp.spawn(
            _rank_main, args=(world, f"file://{d}/rendezvous", d, lengths, reps), nprocs=world, join=True
        )
        return [json.loads(Path(d, f"rank{r}.json").read_text()) for r in range(world)]


def _assemble(ranks: list[dict], world: int, get) -> torch.Tensor:
    import qkv.distributed as qd

    full = torch.empty(B, H, RATIO_T, RATIO_D, dtype=torch.float32)
    for r, res in enumerate(ranks):
        full.index_copy_(
            2, qd.sequence_positions(RATIO_T, rank=r, world=world, layout="zigzag"), torch.tensor(get(res))
        )
    return full


def _reference(dtype) -> list[torch.Tensor]:
    """out, dq, dk, dv of the reference backend on the error-ratio problem, in ``dtype``."""
    import qkv

    q, k, v, d_out = (t.float().to(dtype) for t in _inputs(RATIO_T, RATIO_D, 0))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = qkv.attention(q, k, v, mask=qkv.masks.causal(), backend="reference").out
    out.backward(d_out)
    return [out.detach(), q.grad, k.grad, v.grad]


def error_ratios(ranks: list[dict], world: int) -> list[float]:
    """out, dq, dk, dv: ``maxabs(ring - golden) / (maxabs(eager - golden) + floor)``."""
    golden, eager = _reference(torch.float64), _reference(torch.float32)
    ring = [_assemble(ranks, world, lambda r: r["ratio"]["out"])]
    ring += [_assemble(ranks, world, lambda r, i=i: r["ratio"]["grads"][i]) for i in range(3)]
    ratios = []
    for got, gold, ref in zip(ring, golden, eager):
        floor = 8 * torch.finfo(torch.float32).eps * max(float(gold.abs().max()), 1.0)
        err = float((got.double() - gold).abs().max())
        ratios.append(err / (float((ref.double() - gold).abs().max()) + floor))
    return ratios


def single_process(t: int, reps: int) -> dict:
    """Time and peak memory of one causal step on the chunked backend, one thread."""
    import qkv

    g = torch.Generator().manual_seed(7)
    q, k, v, d_out = (torch.randn(B, H, t, D, generator=g) for _ in range(4))
    q, k, v = (x.requires_grad_() for x in (q, k, v))

    def step():
        _no_grads(q, k, v)
        qkv.attention(q, k, v, mask=qkv.masks.causal(), backend="chunked").out.backward(d_out)

    step()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"t": t, "times": times, "peak_bytes": peak_rss_growth(step, before=lambda: _no_grads(q, k, v))}


def plan_bytes(t: int, world: int | None) -> int:
    """The memory plan (``memory_bytes``) of one step: the ring backend's per rank at ``world``
    ranks, or the chunked backend's in one process (``world`` None)."""
    import qkv
    from qkv.api.prepare import prepare
    from qkv.backends import sequence_parallel

    n = t if world is None else t // world
    q = torch.empty(B, H, n, D, requires_grad=True)
    inputs, _ = prepare(q, q, q, mask=qkv.masks.causal())
    if world is None:
        return qkv.backends.BACKENDS["chunked"].memory_bytes(inputs)
    context = sequence_parallel.SequenceParallel(group=None, layout="zigzag", rank=0, world=world)
    with sequence_parallel.activate(context):
        return qkv.backends.BACKENDS["ring"].memory_bytes(inputs)


def _rows(res: dict) -> list[list]:
    """One row per (T, world): measured peak, plan, time and traffic; one process first."""
    mib, rows = 1 << 20, []
    for t, single in res["single"].items():
        base_ms, base_peak, base_plan = (
            1e3 * statistics.median(single["times"]),
            single["peak_bytes"],
            plan_bytes(int(t), None),
        )
        rows.append([t, "1 (chunked)", f"{base_peak / mib:.1f}", "1.00", f"{base_plan / mib:.1f}", "1.00",
                     f"{base_ms:.1f}", "", "", ""])  # fmt: skip
        for w, runs in res["ring"].items():
            run = [x for per_rank in runs for x in per_rank if x["t"] == int(t)]
            if not run:
                continue
            peak, plan = max(x["peak_bytes"] for x in run), plan_bytes(int(t), int(w))
            ms = 1e3 * statistics.median([max(col) for col in zip(*[x["times"] for x in run])])
            fwd, bwd = max(x["fwd_recvs"] for x in run), max(x["bwd_recvs"] for x in run)
            kib = max(x["fwd_bytes"] + x["bwd_bytes"] for x in run) / 1024
            rows.append([t, w, f"{peak / mib:.1f}", f"{peak / base_peak:.2f}", f"{plan / mib:.1f}",
                         f"{plan / base_plan:.2f}", f"{ms:.1f}", fwd, bwd, f"{kib:.0f}"])  # fmt: skip
    return rows


def to_markdown(res: dict) -> str:
    lines = [
        "# ring_attention: exact ring attention on CPU (gloo) against one process",
        "",
        f"B={B}, H={H}, D={D}, float32, causal mask, zig-zag layout; forward + backward per step. "
        f"Median of {res['reps']} timed steps (each the slowest rank's, between barriers); one thread per "
        "rank, the ranks sharing the machine's cores: the times show the ring's overhead, not a speed-up, "
        "and they depend on the machine's load (the load average below); the memory numbers do not.",
        "",
        machine_line(res["machine"]),
        "",
        f"Memory: {MEMORY_METHOD} The previous step's gradients are released before the reading "
        "(a step is not credited with memory the last one held). Per rank: the largest over the ranks.",
        "",
        "## Error ratio per world size (float32; the rule's limits are 2 for out, 3 for gradients)",
        "",
        f"Causal, zig-zag, T={RATIO_T}, D={RATIO_D}: ring vs the float64 reference, relative to the float32 reference.",
        "",
        markdown_table(
            ["world", "out", "dq", "dk", "dv"],
            [[w, *(f"{x:.3f}" for x in r)] for w, r in res["ratios"].items()],
            "rrrrr",
        ),
        "",
        "## Memory, time and traffic per step",
        "",
    ]
    headers = ["T", "world", "peak MiB / rank", "of 1 process", "plan MiB / rank", "of 1 process", "ms / step",
               "recvs fwd", "recvs bwd", "KiB in / rank"]  # fmt: skip
    lines += [markdown_table(headers, _rows(res), "rlrrrrrrrr"), ""]
    lines += [
        "Peak MiB is measured (RSS growth: the pages a step touches beyond what the process already "
        "held, so it depends on each process's allocator history); plan MiB is the backends' own "
        "estimate (`memory_bytes`, what `auto` and the memory checks use).",
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a short run: T=512, worlds 1,2, 2 reps")
    p.add_argument("--lengths", type=int_list(2), default=[1024, 4096, 8192], help="sequence lengths T")
    p.add_argument("--worlds", type=int_list(1), default=[1, 2, 4, 8], help="world sizes (processes)")
    p.add_argument("--reps", type=int, default=2, help="timed steps per size")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.lengths, args.worlds, args.reps = [512], [1, 2], 2
    torch.set_num_threads(1)
    res = {"machine": machine_info(REPO), "reps": args.reps, "ratios": {}, "ring": {}, "single": {}}
    for t in args.lengths:
        log(f"single process, chunked, T={t}")
        res["single"][str(t)] = single_process(t, args.reps)
    for w in args.worlds:
        log(f"ring, world {w}")
        ranks = run_world(w, args.lengths, args.reps)
        res["ratios"][str(w)] = error_ratios(ranks, w)
        res["ring"][str(w)] = [r["runs"] for r in ranks]
    write_report(args.out, SUITE, args.quick, res, to_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
