"""Attention maps of a Hugging Face model: qkv.capture against transformers' eager attention.

all-MiniLM-L6-v2 (the ``minilm`` extra) loaded by ``transformers``, float32 on CPU. Contenders,
timed interleaved (``benchmarks/common.py``): the model as loaded (``sdpa``, no maps: the
floor), ``transformers`` eager with ``output_attentions=True`` (every map, the usual way),
``qkv.capture`` of every map (the model on ``attn_implementation="qkv"``: every weight from
qkv's exact weights pass, each output computed from them, one pass), of one head (``heads=0``,
every layer: qkv's fused kernel, the weights pass for that head) and of one layer
(``layers=-1``, every head: the other layers compute no weights).
Reports medians, the paired ratio to eager of wall and of CPU times (the CPU ratio is the one
to read on a loaded machine: what this process's call cost), the load other processes put on
the machine while it ran, and the largest difference of outputs and maps against eager.

    python -m benchmarks.hf_capture                           # 32 x 128 and 8 x 512 tokens
    python -m benchmarks.hf_capture --shapes 32x128,8x512 --reps 5 --threads 1
    python -m benchmarks.hf_capture --quick                   # smoke run: 2 x 32 tokens
"""

from __future__ import annotations

import argparse
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


def _one_shape(model, tok, batch: int, tokens: int, reps: int) -> dict[str, Any]:
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
        Contender("qkv.capture, every map", captured),
        Contender("qkv.capture, head 0", lambda: captured(0)),
        Contender("qkv.capture, last layer", lambda: captured(layers=-1)),
    ]
    with torch.inference_mode():
        timings = time_interleaved(contenders, reps, label=f"{batch}x{tokens}")
        ref = eager()
        out, maps = captured()
    base = timings["eager, output_attentions"]
    return {
        "batch": batch,
        "tokens": tokens,
        "times_ms": {n: round(t.median * 1e3, 1) for n, t in timings.items()},
        "ratio_to_eager": {n: round(paired_ratio(t, base), 3) for n, t in timings.items()},
        "cpu_ratio_to_eager": {n: round(paired_ratio(t, base, cpu=True), 3) for n, t in timings.items()},
        "other_load_cores": base.mean_other_load,
        "max_abs_diff_output": float((out.last_hidden_state - ref.last_hidden_state).abs().max()),
        "max_abs_diff_maps": max(float((a - b).abs().max()) for a, b in zip(maps.layers(), ref.attentions)),
    }


def to_markdown(res: dict[str, Any]) -> str:
    rows = [
        [f"{r['batch']} x {r['tokens']}", name, f"{ms:.1f}", f"{r['ratio_to_eager'][name]:.2f}x",
         f"{r['cpu_ratio_to_eager'][name]:.2f}x"]
        for r in res["shapes"]
        for name, ms in r["times_ms"].items()
    ]  # fmt: skip
    loads = "; ".join(
        f"{r['batch']} x {r['tokens']}: {r['other_load_cores'] or 0:.2f} cores" for r in res["shapes"]
    )
    diffs = "; ".join(
        f"{r['batch']} x {r['tokens']}: output {r['max_abs_diff_output']:.1e}, maps {r['max_abs_diff_maps']:.1e}"
        for r in res["shapes"]
    )
    return (
        "# Attention maps of a Hugging Face model (all-MiniLM-L6-v2)\n\n"
        f"`transformers` {res['transformers']}, float32, {res['reps']} interleaved rounds (medians; "
        "ratio: the paired median ratio to eager with `output_attentions=True`, of wall and of this "
        "process's CPU times).\n\n"
        + markdown_table(
            ["batch x tokens", "contender", "ms", "vs eager", "CPU vs eager"], rows, align="llrrr"
        )
        + f"\n\nLargest difference of qkv.capture from eager: {diffs}.\n\n"
        + f"Other processes kept busy, on average over the rounds: {loads}.\n\n{machine_line(res['machine'])}\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hf_capture", description=__doc__.splitlines()[0])
    p.add_argument(
        "--shapes", type=_shapes, default=_shapes("32x128,8x512"), help="BxT list (default 32x128,8x512)"
    )
    p.add_argument("--reps", type=int, default=6, help="timed rounds per shape (default 6)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--quick", action="store_true", help="2 x 32 tokens, 2 rounds: a smoke run")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.shapes, args.reps = [(2, 32)], 2
    import transformers

    from qkv.interop import minilm_path

    info = machine_info(REPO)
    model = transformers.AutoModel.from_pretrained(str(minilm_path()), attn_implementation="sdpa").eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_path()))
    shapes = []
    for batch, tokens in args.shapes:
        shapes.append(_one_shape(model, tok, batch, tokens, args.reps))
        log(
            f"{batch} x {tokens}: wall {shapes[-1]['ratio_to_eager']}, cpu {shapes[-1]['cpu_ratio_to_eager']}"
        )
    res = {"suite": SUITE, "machine": info, "transformers": transformers.__version__, "reps": args.reps,
           "shapes": shapes}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(args.out, SUITE, args.quick, res, to_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
