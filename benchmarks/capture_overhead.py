"""Overhead of qkv.capture on qkv's all-MiniLM-L6-v2 at 128 tokens (CPU, float32).

Times the forward pass without capture, inside ``qkv.capture``, and with ``need_weights=True``,
interleaved (each round runs the three once) so load changes hit them alike; prints medians
in ms and the ratio capture / plain (target <= 1.5x).

    python benchmarks/capture_overhead.py [--rounds 30] [--batch 1] [--tokens 128] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=os.path.basename(__file__), description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from qkv.capture import capture
    from qkv.interop import load_bert

    model, tok = load_bert("minilm")
    text = " ".join(["attention"] * (args.tokens - 2))  # one token per word, plus [CLS] and [SEP]
    batch = tok([text] * args.batch)
    assert batch.input_ids.shape[1] == args.tokens, batch.input_ids.shape
    inputs = batch.model_inputs()

    def plain():
        return model(**inputs)

    def captured():
        with capture(model) as maps:
            out = model(**inputs)
        return out, maps

    def weights():
        return model(**inputs, need_weights=True)

    runs = {"plain": plain, "capture": captured, "need_weights": weights}
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(args.rounds):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        a, (b, maps) = plain(), captured()
        same = torch.equal(a.last_hidden_state, b.last_hidden_state)
    med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    print(
        f"all-MiniLM-L6-v2, B={args.batch}, T={args.tokens}, torch threads={torch.get_num_threads()}, "
        f"{args.rounds} rounds (medians)"
    )
    for name, ms in med.items():
        print(f"  {name:<13} {ms:8.2f} ms   x{ms / med['plain']:.2f}")
    print(f"  captured maps: {tuple(maps.stack().shape)}; last hidden state bitwise equal: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
