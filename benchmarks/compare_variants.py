"""Attention variants of the translation models, trained and evaluated side by side.

On the demo's ``numbers-de`` corpus (digits -> German number words, up to 9 digits; the word
order differs from the digit order: 34 -> "vier und dreißig"), with ``--size`` pairs (default
12,000, half the demo's), each variant is trained with ``qkv.translation.training.train`` and evaluated
with ``Translator.evaluate`` on ``test`` and ``test_long`` (the longest inputs):

    (a) Bahdanau: soft (softmax) vs hard attention trained with REINFORCE vs straight-through
        Gumbel-softmax (both take the argmax at evaluation)
    (b) Bahdanau: softmax vs sparsemax vs 1.5-entmax, with the mean fraction of exactly-zero
        attention weights (teacher-forced on the test references, real source positions only)
    (c) Transformer: multi-head self-attention vs DynamicConv vs LightConv (cross-attention
        stays attention)
    (d) Transformer: sinusoidal vs RoPE vs ALiBi vs T5 relative positions

Sizes are the demo's (``qkv.translation.demo.DEMO_MODELS``): Bahdanau embed 64 / hidden 128, 3 epochs,
lr 3e-3; Transformer d_model 128, 4 heads, ff 256, 2 + 2 layers, lr 1e-3, warm-up 200, and
``--tf-epochs`` (default 8) epochs since the corpus is half the demo's. Every run uses one torch
thread; two runs go at a time, in separate processes (2 cores). Training seconds are wall time
of ``train`` (including the per-epoch validation loss) while the other process also ran: compare
them within this table only.

    python benchmarks/compare_variants.py            # about 6 minutes on 2 quiet cores (10 under load)
    python benchmarks/compare_variants.py --quick    # smoke: 1,500 pairs, 1 epoch -> results/compare_variants_quick.*
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

# common.py sits beside this file, however it is run
if __package__:  # imported as a package module (`python -m benchmarks.<suite>`)
    from .common import log, machine_info, markdown_table, write_json
else:  # python benchmarks/<suite>.py: the script's directory is first on sys.path
    from common import log, machine_info, markdown_table, write_json

SUITE = "compare_variants"
REPO = Path(__file__).resolve().parent.parent

#: name -> (group(s), preset, model overrides); the demo's sizes are added by :func:`config`.
VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bahdanau-softmax": ("ab", "bahdanau", {}),
    "bahdanau-hard": ("a", "bahdanau", {"normalize": "hard"}),
    "bahdanau-gumbel": ("a", "bahdanau", {"normalize": "gumbel"}),
    "bahdanau-sparsemax": ("b", "bahdanau", {"normalize": "sparsemax"}),
    "bahdanau-entmax15": ("b", "bahdanau", {"normalize": "entmax15"}),
    "transformer-attention": ("cd", "transformer", {}),
    "transformer-dynamicconv": ("c", "transformer", {"mixer": "dynamicconv"}),
    "transformer-lightconv": ("c", "transformer", {"mixer": "lightconv"}),
    "transformer-rope": ("d", "transformer", {"positional": "rope"}),
    "transformer-alibi": ("d", "transformer", {"positional": "alibi"}),
    "transformer-t5": ("d", "transformer", {"positional": "t5"}),
}
GROUPS = {
    "a": "Bahdanau: soft vs hard (REINFORCE) vs Gumbel straight-through",
    "b": "Bahdanau: softmax vs sparsemax vs 1.5-entmax",
    "c": "Transformer: self-attention vs DynamicConv vs LightConv",
    "d": "Transformer positions: sinusoidal vs RoPE vs ALiBi vs T5 buckets",
}


def config(name: str, *, size: int, rnn_epochs: int, tf_epochs: int) -> dict[str, Any]:
    """The full training config of one variant (the demo's sizes, one thread)."""
    from qkv.translation.config import resolve
    from qkv.translation.demo import DEMO_CORPUS, DEMO_MODELS

    _, preset, overrides = VARIANTS[name]
    spec = DEMO_MODELS[preset]
    train = {**spec["train"], "threads": 1, "batch_size": 64, "patience": 0, "valid_decode": 0}
    train["epochs"] = rnn_epochs if preset != "transformer" else tf_epochs
    data = {**DEMO_CORPUS, "size": size}
    return resolve({"data": data, "model": {**spec["model"], **overrides}, "train": train}, preset=preset)


def zero_fraction(weights) -> float | None:
    """Exactly-zero weights over all entries of the (T, S) maps (real positions only)."""
    maps = [w for w in weights if w is not None and w.numel()]
    if not maps:
        return None
    zeros = sum(int((w == 0).sum()) for w in maps)
    return zeros / sum(w.numel() for w in maps)


def run_variant(name: str, cfg, workdir: str) -> dict[str, Any]:
    """Train and evaluate one variant (in a child process, one torch thread)."""
    import torch

    from qkv.translation.training import load_corpus, train
    from qkv.translation.translator import Translator

    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    run = Path(workdir) / name
    result = train(cfg, run, progress=False)
    corpus = load_corpus(cfg.data)
    tr = Translator.load(run)
    entry: dict[str, Any] = {
        "train_seconds": round(result.seconds, 1),
        "steps": result.step,
        "epochs": len(result.history),
        "best_valid_loss": round(result.best_valid_loss, 4),
        "parameters": sum(p.numel() for p in tr.model.parameters()),
        "load_average_1m_at_start": load_start,
    }
    t0 = time.perf_counter()
    for split in ("test", "test_long"):
        m = tr.evaluate(corpus[split])
        entry[split] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}
    if cfg.model.get("kind", "seq2seq") == "seq2seq":
        zf = zero_fraction(tr.forced_attention(corpus["test"]))
        entry["test"]["zero_weight_fraction"] = None if zf is None else round(zf, 4)
    entry["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return entry


def _fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    p.add_argument(
        "--size", type=int, default=12000, help="pairs generated (train 90%%, valid/test 5%% each)"
    )
    p.add_argument("--rnn-epochs", type=int, default=3)
    p.add_argument("--tf-epochs", type=int, default=8)
    p.add_argument("--jobs", type=int, default=2, help="trainings at a time (one process each)")
    p.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    p.add_argument(
        "--keep", default="", help="keep the run directories here (default: a temporary directory)"
    )
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.rnn_epochs, args.tf_epochs = 1500, 1, 1
    names = [n for n in VARIANTS if not args.only or n in args.only.split(",")]
    info = machine_info(REPO)
    started = time.perf_counter()
    cfgs = {n: config(n, size=args.size, rnn_epochs=args.rnn_epochs, tf_epochs=args.tf_epochs) for n in names}
    results: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="qkv-variants-") as tmp,
        ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as pool,
    ):
        work = args.keep or tmp
        futures = {n: pool.submit(run_variant, n, cfgs[n], work) for n in names}
        for n, f in futures.items():
            results[n] = e = f.result()
            log(
                f"{n:<24} exact {e['test']['exact_match']:.3f} long {e['test_long']['exact_match']:.3f} "
                f"BLEU {e['test']['bleu']:.1f} AER {_fmt(e['test'].get('aer'))} train {e['train_seconds']:.0f} s"
            )
    info["load_average_1m_end"] = os.getloadavg()[0]
    total = round(time.perf_counter() - started, 1)
    doc = {
        "suite": SUITE,
        "machine": info,
        "corpus": {"name": "numbers-de", "size": args.size, "max_value": 999_999_999, "seed": 0},
        "rnn_epochs": args.rnn_epochs,
        "tf_epochs": args.tf_epochs,
        "jobs": args.jobs,
        "seconds": total,
        "groups": {g: [n for n in names if g in VARIANTS[n][0]] for g in GROUPS},
        "variants": {
            n: {"config": {"model": cfgs[n].model, "train": dataclasses.asdict(cfgs[n].train)}, **results[n]}
            for n in names
        },
    }
    suffix = "_quick" if args.quick else ""
    out = REPO / "benchmarks" / "results"
    write_json(out / f"{SUITE}{suffix}.json", doc)
    md = [
        "# Attention variants of the translation models (trained)\n",
        f"{info.get('cpu_model', '')}, torch {info['torch_version']}, {info['date_utc']}; load average "
        f"{info['load_average_1m']:.1f} at the start, {info['load_average_1m_end']:.1f} at the end. "
        f"numbers-de, {args.size:,} pairs (test {results[names[0]]['test']['n']}, test_long "
        f"{results[names[0]]['test_long']['n']}); Bahdanau {args.rnn_epochs} epoch(s), Transformer "
        f"{args.tf_epochs} epoch(s), the demo's sizes, batch 64, one torch thread per run, {args.jobs} runs at a "
        f"time. Greedy decoding. exact = exact match (fraction), BLEU (sacrebleu), AER of the "
        f"teacher-forced attention argmax against the gold alignment (Transformer: last layer's cross "
        f"attention, mean over heads); zeros = fraction of exactly-zero attention weights on real "
        f"source positions. Train seconds: wall time with another run beside it. Whole run: {total:.0f} s.\n",
    ]
    headers = [
        "variant",
        "exact",
        "exact long",
        "BLEU",
        "BLEU long",
        "AER",
        "AER long",
        "zeros",
        "train s",
        "params",
    ]
    for g, title in GROUPS.items():
        members = doc["groups"][g]
        if not members:
            continue
        rows = []
        for n in members:
            e = results[n]
            rows.append(
                [
                    n,
                    _fmt(e["test"]["exact_match"]),
                    _fmt(e["test_long"]["exact_match"]),
                    _fmt(e["test"]["bleu"], ".1f"),
                    _fmt(e["test_long"]["bleu"], ".1f"),
                    _fmt(e["test"].get("aer")),
                    _fmt(e["test_long"].get("aer")),
                    _fmt(e["test"].get("zero_weight_fraction")),
                    f"{e['train_seconds']:.0f}",
                    f"{e['parameters']:,}",
                ]
            )
        md.append(f"## ({g}) {title}\n\n" + markdown_table(headers, rows, align="lrrrrrrrrr") + "\n")
    text = "\n".join(md)
    (out / f"{SUITE}{suffix}.md").write_text(text, encoding="utf-8")
    print(text)
    log(f"wrote {out / SUITE}{suffix}.json and .md ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
