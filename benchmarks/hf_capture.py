"""Attention maps of a Hugging Face model: qkv.capture against transformers' eager attention.

all-MiniLM-L6-v2 (the ``minilm`` extra) loaded by ``transformers``, float32 on CPU. Contenders,
timed interleaved (``benchmarks/common.py``): the model as loaded (``sdpa``, no maps: the
floor), ``transformers`` eager with ``output_attentions=True`` (every map, the usual way: the
loaded model switched to eager for the call and back, the baseline, and a second copy loaded
as eager, which pays no switch), ``qkv.capture`` of every map (the model on
``attn_implementation="qkv"`` for the block: every weight from qkv's exact weights pass, each
output computed from them, one pass; the block's set-up included), of one head (``heads=0``,
every layer: qkv's fused kernel, the weights pass for that head) and of one layer
(``layers=-1``, every head: the other layers compute no weights).
Reports medians, the paired ratio to eager of wall and of CPU times (the CPU ratio is the one
to read on a loaded machine: what this process's call cost), the load other processes put on
the machine while it ran, the largest difference of outputs and maps against eager, and, per
shape, whether capturing every map cost at most eager's (paired CPU ratio <= 1.0). Short inputs
(at most 256 tokens in the batch) run ``--short-reps`` rounds: a call takes milliseconds there,
where a few rounds do not settle a median.

    python -m benchmarks.hf_capture                           # 1x16, 2x32, 32x128 and 8x512 tokens
    python -m benchmarks.hf_capture --shapes 1x16,2x32 --reps 6 --threads 1 --out /tmp/hf_capture
    python -m benchmarks.hf_capture --quick                   # smoke run: 2 x 32 tokens
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path
from typing import Any

import torch

if __package__:  # imported as a package module (`python -m benchmarks.<suite>`)
    from .common import (
        Contender,
        log,
        machine_info,
        machine_line,
        markdown_table,
        paired_ratio,
        time_interleaved,
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
        write_report,
    )

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SUITE = "hf_capture"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_SHAPES = "1x16,2x32,32x128,8x512"
SHORT_TOKENS = 256  # batches of at most this many tokens run --short-reps rounds
EVERY_MAP = "qkv.capture, every map"


def _shapes(text: str) -> list[tuple[int, int]]:
    try:
        shapes = [tuple(int(x) for x in item.lower().split("x")) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BxT[,BxT...] such as 32x128, got {text!r}") from None
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(f"expected BxT[,BxT...] such as 32x128, got {text!r}")
    return shapes  # type: ignore[return-value]


def _inputs(tok, batch: int, tokens: int) -> dict[str, torch.Tensor]:
    words = " ".join(["attention"] * (tokens - 2))  # one token per word, plus [CLS] and [SEP]
    enc = tok([words] * batch, return_tensors="pt")
    assert enc["input_ids"].shape == (batch, tokens), enc["input_ids"].shape
    return dict(enc)


def _one_shape(model, eager_model, tok, batch: int, tokens: int, reps: int) -> dict[str, Any]:
    from qkv.capture import capture

    inputs = _inputs(tok, batch, tokens)

    def eager():
        model.set_attn_implementation("eager")
        try:
            return model(**inputs, output_attentions=True)
        finally:
            model.set_attn_implementation("sdpa")

    def captured(heads=None, layers=None):
        with capture(model, heads=heads, layers=layers) as maps:
            out = model(**inputs)
        return out, maps

    contenders = [
        Contender("sdpa, no maps", lambda: model(**inputs)),
        Contender("eager, output_attentions", eager),
        Contender("eager model, output_attentions", lambda: eager_model(**inputs, output_attentions=True)),
        Contender("qkv.capture, every map", captured),
        Contender("qkv.capture, head 0", lambda: captured(0)),
        Contender("qkv.capture, last layer", lambda: captured(layers=-1)),
    ]
    with torch.inference_mode():
        timings = time_interleaved(contenders, reps, label=f"{batch}x{tokens}")
        ref = eager()
        out, maps = captured()
    base = timings["eager, output_attentions"]
    cpu_ratio = paired_ratio(timings[EVERY_MAP], base, cpu=True)
    return {
        "batch": batch,
        "tokens": tokens,
        "times_ms": {n: round(t.median * 1e3, 1) for n, t in timings.items()},
        "ratio_to_eager": {n: round(paired_ratio(t, base), 3) for n, t in timings.items()},
        "cpu_ratio_to_eager": {n: round(paired_ratio(t, base, cpu=True), 3) for n, t in timings.items()},
        "cpu_ratio_to_eager_model": {
            n: round(paired_ratio(t, timings["eager model, output_attentions"], cpu=True), 3)
            for n, t in timings.items()
        },
        "every_map_at_most_eager": cpu_ratio <= 1.0,
        "other_load_cores": base.mean_other_load,
        "max_abs_diff_output": float((out.last_hidden_state - ref.last_hidden_state).abs().max()),
        "max_abs_diff_maps": max(float((a - b).abs().max()) for a, b in zip(maps.layers(), ref.attentions)),
    }


def to_markdown(res: dict[str, Any]) -> str:
    rows = [
        [f"{r['batch']} x {r['tokens']}", name, f"{ms:.1f}", f"{r['ratio_to_eager'][name]:.2f}x",
         f"{r['cpu_ratio_to_eager'][name]:.2f}x", f"{r['cpu_ratio_to_eager_model'][name]:.2f}x"]
        for r in res["shapes"]
        for name, ms in r["times_ms"].items()
    ]  # fmt: skip
    checks = "; ".join(
        f"{r['batch']} x {r['tokens']}: {r['cpu_ratio_to_eager'][EVERY_MAP]:.2f}x "
        f"({'yes' if r['every_map_at_most_eager'] else 'NO'})"
        for r in res["shapes"]
    )
    loads = "; ".join(
        f"{r['batch']} x {r['tokens']}: {r['other_load_cores'] or 0:.2f} cores" for r in res["shapes"]
    )
    diffs = "; ".join(
        f"{r['batch']} x {r['tokens']}: output {r['max_abs_diff_output']:.1e}, maps {r['max_abs_diff_maps']:.1e}"
        for r in res["shapes"]
    )
    return (
        "# Attention maps of a Hugging Face model (all-MiniLM-L6-v2)\n\n"
        f"`transformers` {res['transformers']}, float32, {res['reps']} interleaved rounds "
        f"({res['short_reps']} for {SHORT_TOKENS} tokens or fewer; medians; ratio: the paired median ratio to "
        "eager with `output_attentions=True` (the loaded model switched to eager and back), of wall and of "
        "this process's CPU times; last column: CPU against a copy loaded as eager, no switch).\n\n"
        + markdown_table(
            ["batch x tokens", "contender", "ms", "vs eager", "CPU vs eager", "CPU vs eager model"],
            rows,
            align="llrrrr",
        )
        + f"\n\nEvery map at most eager's CPU time (paired ratio <= 1.0x): {checks}.\n\n"
        + f"Largest difference of qkv.capture from eager: {diffs}.\n\n"
        + f"Other processes kept busy, on average over the rounds: {loads}.\n\n{machine_line(res['machine'])}\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hf_capture", description=__doc__.splitlines()[0])
    p.add_argument(
        "--shapes", type=_shapes, default=_shapes(DEFAULT_SHAPES), help=f"BxT list (default {DEFAULT_SHAPES})"
    )
    p.add_argument("--reps", type=int, default=6, help="timed rounds per shape (default 6)")
    p.add_argument(
        "--short-reps",
        type=int,
        default=60,
        help=f"timed rounds for shapes of at most {SHORT_TOKENS} tokens (default 60)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--quick", action="store_true", help="2 x 32 tokens, 2 rounds: a smoke run")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.shapes, args.reps, args.short_reps = [(2, 32)], 2, 2
    import transformers

    from qkv.interop import minilm_path

    info = machine_info(REPO)
    model = transformers.AutoModel.from_pretrained(str(minilm_path()), attn_implementation="sdpa").eval()
    eager_model = copy.deepcopy(model)
    eager_model.set_attn_implementation("eager")
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_path()))
    shapes = []
    for batch, tokens in args.shapes:
        reps = args.short_reps if batch * tokens <= SHORT_TOKENS else args.reps
        shapes.append(_one_shape(model, eager_model, tok, batch, tokens, reps))
        log(
            f"{batch} x {tokens}: wall {shapes[-1]['ratio_to_eager']}, cpu {shapes[-1]['cpu_ratio_to_eager']}; "
            f"every map at most eager's: {shapes[-1]['every_map_at_most_eager']}"
        )
    res = {"suite": SUITE, "machine": info, "transformers": transformers.__version__, "reps": args.reps,
           "short_reps": args.short_reps, "shapes": shapes}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(args.out, SUITE, args.quick, res, to_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
