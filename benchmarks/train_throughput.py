"""Training throughput of qkv's translation models: target tokens per second.

Every model of ``qkv train --model`` (none, bahdanau, luong, luong-local, transformer) with the
sizes of ``qkv demo`` on the built-in ``numbers-de`` corpus (digits -> German number words, up
to 9 digits), batch 64, AdamW, CPU, fp32, with 1 and 2 torch threads. Each case: warm-up
steps, then the median over rounds of ``--steps`` optimizer steps (forward, backward, clip,
step), interleaved across models so load changes hit them alike (docs/performance/index.md).

    python benchmarks/train_throughput.py                 # writes benchmarks/results/train_throughput.{json,md}
    python benchmarks/train_throughput.py --quick         # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from qkv.models.builders import build_model
from qkv.translation.config import resolve
from qkv.translation.data import batches, encode_pairs
from qkv.translation.demo import DEMO_CORPUS, DEMO_MODELS
from qkv.translation.training import _loss, prepare_data

# common.py sits beside this file, however it is run
if __package__:  # imported as a package module (`python -m benchmarks.<suite>`)
    from .common import log, machine_info, markdown_table, wait_for_quiet, write_json
else:  # python benchmarks/<suite>.py: the script's directory is first on sys.path
    from common import log, machine_info, markdown_table, wait_for_quiet, write_json

SUITE = "train_throughput"
REPO = Path(__file__).resolve().parent.parent
MODELS = ("none", "bahdanau", "luong", "luong-local", "transformer")


def config(name: str) -> dict[str, Any]:
    # the demo's sizes; Luong models take Bahdanau's
    model = (
        dict(DEMO_MODELS[name]["model"]) if name in DEMO_MODELS else dict(DEMO_MODELS["bahdanau"]["model"])
    )
    return resolve({"data": {**DEMO_CORPUS, "size": 4000}, "model": model}, preset=name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 2, 2
    threads = [int(x) for x in args.threads.split(",")]
    info = machine_info(REPO)
    info["quiet"] = wait_for_quiet(30.0)
    setups = {}
    for name in MODELS:
        cfg = config(name)
        corpus, src_tok, tgt_tok = prepare_data(cfg)
        pairs = encode_pairs(corpus["train"], src_tok, tgt_tok)
        torch.manual_seed(0)
        model = build_model(cfg.model, src_vocab=len(src_tok), tgt_vocab=len(tgt_tok))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        plan = list(batches(pairs, batch_size=64, shuffle=True, seed=0, sort_within=20))
        setups[name] = (cfg, model, opt, plan)
    results = []
    cursor = dict.fromkeys(MODELS, 0)
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        rates: dict[str, list[float]] = {name: [] for name in MODELS}

        def run(name: str, steps: int, cursor: dict[str, int] = cursor) -> float:
            cfg, model, opt, plan = setups[name]
            model.train()
            tokens, t0 = 0, time.perf_counter()
            for _ in range(steps):
                b = plan[cursor[name] % len(plan)]
                cursor[name] += 1
                loss, ntok = _loss(model, b, cfg.train)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                tokens += ntok
            return tokens / (time.perf_counter() - t0)

        for name in MODELS:
            run(name, 2)  # warm-up
        for r in range(args.rounds):
            order = MODELS if r % 2 == 0 else tuple(reversed(MODELS))
            for name in order:
                rates[name].append(run(name, args.steps))
        for name in MODELS:
            med = statistics.median(rates[name])
            params = sum(p.numel() for p in setups[name][1].parameters())
            results.append(
                {"model": name, "threads": n_threads, "target_tokens_per_s": med, "parameters": params}
            )
            log(f"{name:<12} threads={n_threads}: {med:,.0f} target tok/s")
    doc = {"suite": SUITE, "machine": info, "steps": args.steps, "rounds": args.rounds, "results": results}
    suffix = "_quick" if args.quick else ""
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{SUITE}{suffix}.json", doc)
    rows = [
        [r["model"], r["threads"], f"{r['target_tokens_per_s']:,.0f}", f"{r['parameters']:,}"]
        for r in results
    ]
    md = (
        f"# Training throughput (target tokens/s)\n\n{info.get('cpu_model', '')}, torch {info['torch_version']}, "
        f"{info['date_utc']}; numbers-de (digits -> German words, up to 9 digits), batch 64, AdamW, fp32, "
        f"median of {args.rounds} rounds x {args.steps} steps, interleaved.\n\n"
        + markdown_table(["model", "threads", "target tok/s", "parameters"], rows, align="lrrr")
        + "\n"
    )
    (out / f"{SUITE}{suffix}.md").write_text(md, encoding="utf-8")
    log(f"wrote {out / (SUITE + suffix)}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
