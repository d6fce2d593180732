"""Greedy decoding with a KV cache against full recomputation, for MHA, GQA and MQA (CPU).

A small decoder-only model (pre-norm blocks of causal self-attention with RoPE and an MLP,
built from ``qkv.MultiHeadAttention``, random weights) generates ``--new`` tokens greedily after a
``--prompt``-token prompt, for a batch of ``--batch`` sequences. Contenders, for each number of
key/value heads (``H`` = MHA, ``H/4`` = GQA, 1 = MQA):

    recompute         every step runs the whole sequence so far under qkv.masks.causal()
    kv-cache          the prompt once, then one token per step with qkv.modules.KVCache()
    kv-cache-prealloc the same with KVCache(max_len=prompt + new) (a buffer written in place)

Time = one whole generation (prompt included) under torch.no_grad(); tokens/s = batch * new /
time. Before timing, every cached generation is checked against recomputation: same tokens and
the largest logit difference over all steps. Contenders are interleaved in balanced rounds after
warm-up (the protocol of ``common.py``).

    python benchmarks/decode_kv_cache.py            # writes benchmarks/results/decode_kv_cache.{json,md}
    python benchmarks/decode_kv_cache.py --quick    # smoke: shorter, 2 reps -> decode_kv_cache_quick.*
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import qkv
from qkv.modules import KVCache, MultiHeadAttention

# common.py sits beside this file, however it is run (script or -m)
if __package__:  # imported as a package module (`python -m benchmarks.<suite>`)
    from .common import (
        Contender,
        log,
        machine_info,
        machine_line,
        markdown_table,
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
        time_interleaved,
        wait_for_quiet,
        write_report,
    )

SUITE = "decode_kv_cache"
REPO = Path(__file__).resolve().parent.parent
DTYPE = torch.float32
MODES = ("recompute", "kv-cache", "kv-cache-prealloc")
BASELINE = "recompute"

# ----------------------------------------------------------------------------- the model


class Block(nn.Module):
    """Pre-norm decoder block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, *, dim: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(embed_dim=dim, num_heads=heads, num_kv_heads=kv_heads, rotary=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        mask = qkv.masks.causal() if cache is None else None  # the cache masks by position itself
        x = x + self.attn(self.norm1(x), mask=mask, cache=cache).out
        return x + self.mlp(self.norm2(x))


class TinyDecoder(nn.Module):
    """Token embedding -> blocks -> norm -> vocabulary logits. ``(B, T)`` ids -> ``(B, T, V)``."""

    def __init__(self, *, vocab: int, dim: int, layers: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim=dim, heads=heads, kv_heads=kv_heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ids: Tensor, caches: list[KVCache] | None = None) -> Tensor:
        x = self.embed(ids)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.head(self.norm(x))


def generate(model: TinyDecoder, prompt: Tensor, new: int, mode: str) -> tuple[Tensor, list[Tensor]]:
    """Greedy: ``prompt (B, P)`` -> ``(B, P + new)`` tokens and the last-position logits of each step."""
    ids, steps = prompt, []
    caches = None
    if mode != "recompute":
        cap = prompt.shape[1] + new if mode == "kv-cache-prealloc" else None
        caches = [KVCache(max_len=cap) for _ in model.blocks]
    inp = prompt
    for _ in range(new):
        logits = model(ids if caches is None else inp, caches)[:, -1]  # (B, V)
        steps.append(logits)
        nxt = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        ids = torch.cat((ids, nxt), dim=1)
        inp = nxt
    return ids, steps


# ----------------------------------------------------------------------------- the run


def kv_cache_bytes(cfg: dict[str, int], kv_heads: int) -> int:
    """Keys and values of all layers at the end of a generation, fp32."""
    t = cfg["prompt"] + cfg["new"]
    return 2 * cfg["layers"] * cfg["batch"] * kv_heads * t * (cfg["dim"] // cfg["heads"]) * 4


def run_suite(cfg: dict[str, int], reps: int, recompute_reps: int, wait_quiet_s: float, max_other_load):
    t_start = time.perf_counter()
    machine = machine_info(REPO)
    heads = cfg["heads"]
    kv_options = sorted({heads, max(heads // 4, 1), 1}, reverse=True)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, cfg["vocab"], (cfg["batch"], cfg["prompt"]), generator=g)
    models, checks, cached, recompute = {}, [], [], []
    for kvh in kv_options:
        torch.manual_seed(kvh)
        model = TinyDecoder(
            vocab=cfg["vocab"], dim=cfg["dim"], layers=cfg["layers"], heads=heads, kv_heads=kvh
        ).eval()
        models[kvh] = model
        with torch.no_grad():
            ref_ids, ref_steps = generate(model, prompt, cfg["new"], "recompute")
            for mode in MODES[1:]:
                ids, steps = generate(model, prompt, cfg["new"], mode)
                diff = max(float((a - b).abs().max()) for a, b in zip(steps, ref_steps, strict=True))
                checks.append(
                    {
                        "kv_heads": kvh,
                        "mode": mode,
                        "same_tokens": bool(torch.equal(ids, ref_ids)),
                        "max_abs_logit_diff": diff,
                        "max_abs_logit": max(float(s.abs().max()) for s in ref_steps),
                    }
                )
                log(
                    f"check Hkv={kvh} {mode}: same tokens {checks[-1]['same_tokens']}, max |dlogit| {diff:.1e}"
                )
        for mode in MODES:

            def run(model=model, mode=mode):
                with torch.no_grad():
                    generate(model, prompt, cfg["new"], mode)

            (recompute if mode == BASELINE else cached).append(Contender(f"Hkv={kvh} {mode}", run))
    # Two groups, each interleaved in its own rounds: the cached generations (short rounds, the
    # MHA/GQA/MQA comparison) and the recomputations (long rounds).
    timings, quiet = {}, {}
    for group, group_reps in (("cached", reps), ("recompute", recompute_reps)):
        quiet[group] = wait_for_quiet(wait_quiet_s, threshold=max_other_load or 0.25)
        timings |= time_interleaved(
            cached if group == "cached" else recompute,
            group_reps,
            label=f"{SUITE} {group}",
            max_other_load=max_other_load,
            max_redo=group_reps if max_other_load is not None else 0,
            wait_s=min(wait_quiet_s, 30.0),
        )
    cases = []
    for kvh in kv_options:
        base = timings[f"Hkv={kvh} {BASELINE}"]
        mha_cache = timings[f"Hkv={heads} kv-cache"]
        for mode in MODES:
            tm = timings[f"Hkv={kvh} {mode}"]
            cases.append(
                {
                    "kv_heads": kvh,
                    "attention": "MHA" if kvh == heads else ("MQA" if kvh == 1 else "GQA"),
                    "mode": mode,
                    **tm.to_dict(),
                    "tokens_per_s": cfg["batch"] * cfg["new"] / tm.median,
                    "speedup_vs_recompute": base.median / tm.median,
                    "time_vs_mha_kv_cache": tm.median / mha_cache.median,
                    "kv_cache_bytes": None if mode == BASELINE else kv_cache_bytes(cfg, kvh),
                    "other_processes_load_cores": tm.mean_other_load,
                }
            )
    return {
        "suite": SUITE,
        "machine": machine,
        "config": {
            **cfg,
            "head_dim": cfg["dim"] // heads,
            "dtype": str(DTYPE).removeprefix("torch."),
            "kv_heads": kv_options,
            "model": "pre-norm blocks: x + MHA(LN(x)) with RoPE, x + MLP(LN(x)) (4x, GELU); random weights",
            "reps": reps,
            "reps_recompute": recompute_reps,
            "timing": (
                "time.perf_counter around one greedy generation (prompt + new tokens) under no_grad; "
                "two groups (cached contenders; recompute contenders), each interleaved in rounds in "
                "balanced orders after 1 warm-up call each; median"
            ),
            "wait_quiet_s": wait_quiet_s,
            "waited_for_quiet_s": {g: q["waited_s"] for g, q in quiet.items()},
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
        f"# {SUITE}: greedy decoding with a KV cache against full recomputation",
        "",
        f"Decoder of {cfg['layers']} layers, E={cfg['dim']}, H={cfg['heads']} (Dh={cfg['head_dim']}), RoPE, "
        f"vocabulary {cfg['vocab']}, {cfg['dtype']}; batch {cfg['batch']}, prompt {cfg['prompt']} tokens, "
        f"{cfg['new']} new tokens (greedy). Time = one whole generation, prompt included; tokens/s = "
        f"batch x new / median time. Median of {cfg['reps']} timed reps ({cfg['reps_recompute']} for "
        "recompute); the cached contenders are interleaved in balanced rounds after warm-up, the "
        "recompute contenders likewise in their own rounds.",
        "",
        machine_line(m),
        "",
    ]
    rows = []
    for c in res["cases"]:
        load = c["other_processes_load_cores"]
        load_txt = "n/a" if load is None else f"{load:.2f}"
        if c["rounds_redone"]:
            load_txt += f" ({c['rounds_redone']} redone)"
        kv = c["kv_cache_bytes"]
        rows.append(
            [
                f"{c['attention']} (Hkv={c['kv_heads']})",
                c["mode"],
                c["reps"],
                f"{c['median_s'] * 1e3:.0f}",
                f"{c['tokens_per_s']:.0f}",
                f"{c['speedup_vs_recompute']:.2f}x",
                f"{c['time_vs_mha_kv_cache']:.2f}",
                "-" if kv is None else f"{kv / 2**20:.2f}",
                load_txt,
            ]
        )
    lines.append(
        markdown_table(
            [
                "attention",
                "mode",
                "reps",
                "median ms",
                "tokens/s",
                "vs recompute",
                "time / MHA kv-cache",
                "KV cache MiB",
                "other load",
            ],
            rows,
            align="llrrrrrrr",
        )
    )
    lines += [
        "",
        "- vs recompute: recompute median / this median, same number of key/value heads. "
        "KV cache MiB: keys and values of all layers after the last token.",
        "- Checks (cached generation against recomputation, same weights): "
        + "; ".join(
            f"Hkv={c['kv_heads']} {c['mode']}: {'same tokens' if c['same_tokens'] else 'TOKENS DIFFER'}, "
            f"max |logit diff| {c['max_abs_logit_diff']:.1e} (|logits| up to {c['max_abs_logit']:.1f})"
            for c in res["checks"]
        )
        + ".",
        "- Other load: mean number of cores kept busy by other processes during the rounds the contender "
        "ran (/proc/stat minus this process's CPU time)"
        + (
            f"; a round above {cfg['max_other_load']} cores was thrown away and redone (at most reps times)."
            if cfg["max_other_load"] is not None
            else "; every round kept, whatever the load."
        ),
        f"- Wall time of the run: {res['wall_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 16 new tokens, 2 reps; writes *_quick.*")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dim", type=int, default=256, help="model dim E (default 256)")
    p.add_argument("--heads", type=int, default=8, help="query heads H; GQA uses H/4 key/value heads")
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens (default 32)")
    p.add_argument("--new", type=int, default=128, help="generated tokens (default 128)")
    p.add_argument("--reps", type=int, default=None, help="timed reps of the cached contenders (default 6)")
    p.add_argument("--recompute-reps", type=int, default=None, help="timed reps of recompute (default 5)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    p.add_argument(
        "--max-other-load",
        type=float,
        default=0.5,
        metavar="CORES",
        help="redo a round during which other processes kept more than CORES cores busy; negative: keep all",
    )
    p.add_argument(
        "--wait-quiet", type=float, default=None, metavar="S", help="wait up to S s for a quiet machine"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("layers", "dim", "heads", "vocab", "batch", "prompt", "new"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(args, name)}")
    if args.dim % args.heads or (args.dim // args.heads) % 2:
        raise SystemExit(
            f"--dim: expected a multiple of --heads with an even head dim, got {args.dim}/{args.heads}"
        )
    cfg = {k: getattr(args, k) for k in ("layers", "dim", "heads", "vocab", "batch", "prompt", "new")}
    if args.quick:
        cfg["new"] = min(cfg["new"], 16)
    reps = args.reps or (2 if args.quick else 6)
    recompute_reps = args.recompute_reps or (2 if args.quick else 5)
    wait_quiet = args.wait_quiet if args.wait_quiet is not None else (0.0 if args.quick else 60.0)
    if reps < 1 or recompute_reps < 1:
        raise SystemExit("--reps and --recompute-reps must be >= 1")
    log(f"{SUITE}: {cfg}, reps {reps} (recompute {recompute_reps}), threads {torch.get_num_threads()}")
    res = run_suite(
        cfg,
        reps,
        recompute_reps,
        wait_quiet,
        None if args.max_other_load < 0 else args.max_other_load,
    )
    write_report(args.out, SUITE, args.quick, res, to_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
