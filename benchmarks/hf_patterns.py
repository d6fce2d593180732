"""A sparse pattern on a pretrained encoder and on a decoder: qkv.interop.use_pattern against transformers' sdpa.

Three parts, float32 on CPU, one document per batch.

1. Time and peak memory. A model shaped like all-MiniLM-L6-v2 (6 layers, 12 heads of 32,
   hidden 384) built from its configuration with ``max_position_embeddings`` raised to the
   longest document (random weights: positions beyond 512 were never trained, so only cost is
   measured here), over documents of 512 to 16k tokens, with the pattern
   ``sliding_window(W) | global_tokens([0])``. Contenders (timed interleaved,
   ``benchmarks/common.py``): the model on ``attn_implementation="qkv"`` with
   :func:`qkv.interop.use_pattern` (qkv's block-sparse kernel), and the model on ``"sdpa"``
   given the same pattern as a dense ``(1, 1, T, T)`` bool mask, up to ``--dense-max`` tokens
   (beyond it the dense mask is not built). Peak memory: growth of the process's peak RSS
   during one call (``common.MEMORY_METHOD``).
2. Decoder prefill. The same pattern on a Llama-shaped decoder (6 layers, 12 query heads and 4
   key/value heads of 32, hidden 384; random weights, built from a configuration): qkv with
   :func:`qkv.interop.use_pattern` (the pattern & causal at cache positions, block-sparse)
   against ``"sdpa"`` given ``pattern & causal`` as a dense ``(1, 1, T, T)`` bool mask, time
   and peak memory of one prefill.
3. Quality. The real all-MiniLM-L6-v2 (the ``minilm`` extra) on documents full attention can
   still read (up to 512 tokens: the repository's own docs pages, cut into documents): cosine
   similarity of the mean-pooled sentence embeddings with the pattern against full attention,
   per window.

    python -m benchmarks.hf_patterns                                 # 512 to 16384 tokens
    python -m benchmarks.hf_patterns --lengths 512,4096 --dense-max 4096 --windows 64,128
    python -m benchmarks.hf_patterns --quick                         # smoke run
    python -m benchmarks.hf_patterns --parts decoder --decoder-lengths 256 --reps 1 --out /tmp/hf_patterns
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
        int_list,
        log,
        machine_info,
        machine_line,
        markdown_table,
        peak_rss_growth,
        time_interleaved,
        write_report,
    )
else:  # python benchmarks/<suite>.py: the script's directory is first on sys.path
    from common import (
        Contender,
        int_list,
        log,
        machine_info,
        machine_line,
        markdown_table,
        peak_rss_growth,
        time_interleaved,
        write_report,
    )

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SUITE = "hf_patterns"
REPO = Path(__file__).resolve().parent.parent


def _pattern(window: int):
    import qkv

    return qkv.masks.sliding_window(window) | qkv.masks.global_tokens([0])


def _shaped_model(implementation: str, positions: int):
    """all-MiniLM-L6-v2's shape with ``positions`` positions, random weights (seeded)."""
    import transformers

    from qkv.interop import minilm_path, register_hf

    register_hf()
    cfg = transformers.BertConfig.from_pretrained(str(minilm_path()))
    cfg.max_position_embeddings = positions
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    model.set_attn_implementation(implementation)
    return model


def _cost(lengths: list[int], window: int, dense_max: int, reps: int) -> list[dict[str, Any]]:
    from qkv.interop import use_pattern

    pattern = _pattern(window)
    ours = _shaped_model("qkv", max(lengths))
    sdpa = _shaped_model("sdpa", max(lengths))
    sdpa.load_state_dict(ours.state_dict())
    rows = []
    for length in lengths:
        ids = torch.randint(1000, 20000, (1, length), generator=torch.Generator().manual_seed(length))
        contenders = [Contender("qkv use_pattern", lambda ids=ids: ours(input_ids=ids).last_hidden_state)]
        if length <= dense_max:
            dense = pattern.materialize(length, length)  # (1, 1, T, T) bool, True = attend
            contenders.append(
                Contender("sdpa, dense mask", lambda ids=ids, m=dense: sdpa(input_ids=ids, attention_mask=m))
            )
        with torch.inference_mode(), use_pattern(ours, pattern):
            timings = time_interleaved(contenders, reps, label=f"T={length}")
            peaks = {c.name: peak_rss_growth(c.run) for c in contenders}
            diff = None
            if len(contenders) == 2:
                a, b = contenders[0].run(), contenders[1].run().last_hidden_state
                diff = float((a - b).abs().max())
        rows.append({
            "tokens": length,
            "times_ms": {n: round(t.median * 1e3, 1) for n, t in timings.items()},
            "peak_mib": {n: None if p is None else round(p / 2**20, 1) for n, p in peaks.items()},
            "max_abs_diff": diff,
        })  # fmt: skip
        log(f"T={length}: {rows[-1]}")
    return rows


def _documents(tok, tokens: int, count: int) -> list[torch.Tensor]:
    """``count`` documents of ``tokens`` tokens ([CLS] text [SEP]) cut from the docs pages."""
    text = "\n".join(p.read_text() for p in sorted((REPO / "docs").rglob("*.md")))
    ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
    body = tokens - 2
    docs = []
    for i in range(count):
        chunk = ids[i * body : (i + 1) * body]
        if len(chunk) < body:
            break
        docs.append(torch.tensor([[tok.cls_token_id, *chunk, tok.sep_token_id]]))
    return docs


def _quality(tokens: int, windows: list[int], count: int) -> list[dict[str, Any]]:
    import transformers

    from qkv.interop import minilm_path, register_hf, use_pattern

    register_hf()
    model = transformers.AutoModel.from_pretrained(str(minilm_path()), attn_implementation="qkv").eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_path()))
    docs = _documents(tok, tokens, count)
    rows = []
    with torch.inference_mode():
        full = [model(input_ids=d).last_hidden_state.mean(dim=1) for d in docs]  # (1, 384) each
        for window in windows:
            with use_pattern(model, _pattern(window)):
                cos = [
                    float(
                        torch.nn.functional.cosine_similarity(
                            model(input_ids=d).last_hidden_state.mean(dim=1), f
                        )
                    )
                    for d, f in zip(docs, full)
                ]
            rows.append({"tokens": tokens, "window": window, "documents": len(docs),
                         "cosine_mean": round(sum(cos) / len(cos), 4), "cosine_min": round(min(cos), 4)})  # fmt: skip
            log(f"quality: {rows[-1]}")
    return rows


def _decoder(implementation: str, positions: int):
    """A Llama-shaped decoder (grouped-query heads), random weights (seeded)."""
    import transformers

    from qkv.interop import register_hf

    register_hf()
    cfg = transformers.LlamaConfig(
        vocab_size=32000, hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
        num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=positions,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.set_attn_implementation(implementation)
    return model


def _decoder_cost(lengths: list[int], window: int, dense_max: int, reps: int) -> list[dict[str, Any]]:
    """One prefill of the decoder: qkv with the pattern against sdpa with pattern & causal dense."""
    import qkv
    from qkv.interop import use_pattern

    pattern = _pattern(window)
    ours, sdpa = _decoder("qkv", max(lengths)), _decoder("sdpa", max(lengths))
    sdpa.load_state_dict(ours.state_dict())
    rows = []
    for length in lengths:
        ids = torch.randint(1000, 20000, (1, length), generator=torch.Generator().manual_seed(length))
        contenders = [
            Contender("qkv use_pattern", lambda ids=ids: ours(input_ids=ids, use_cache=False).logits)
        ]
        if length <= dense_max:
            dense = pattern.materialize(length, length) & qkv.masks.causal().materialize(length, length)
            contenders.append(Contender(
                "sdpa, dense mask", lambda ids=ids, m=dense: sdpa(input_ids=ids, attention_mask=m, use_cache=False).logits
            ))  # fmt: skip
        with torch.inference_mode(), use_pattern(ours, pattern):
            timings = time_interleaved(contenders, reps, label=f"decoder T={length}")
            peaks = {c.name: peak_rss_growth(c.run) for c in contenders}
            diff = None
            if len(contenders) == 2:
                diff = float((contenders[0].run() - contenders[1].run()).abs().max())
        rows.append({
            "tokens": length,
            "times_ms": {n: round(t.median * 1e3, 1) for n, t in timings.items()},
            "peak_mib": {n: None if p is None else round(p / 2**20, 1) for n, p in peaks.items()},
            "max_abs_diff": diff,
        })  # fmt: skip
        log(f"decoder T={length}: {rows[-1]}")
    return rows


def to_markdown(res: dict[str, Any]) -> str:
    def ms(r, n):
        v = r["times_ms"].get(n)
        return "-" if v is None else f"{v:.0f}"

    def mib(r, n):
        v = r["peak_mib"].get(n)
        return "-" if v is None else f"{v:.0f}"

    names = ["qkv use_pattern", "sdpa, dense mask"]
    cost = [[r["tokens"], *(ms(r, n) for n in names), *(mib(r, n) for n in names)] for r in res["cost"]]
    decoder = [[r["tokens"], *(ms(r, n) for n in names), *(mib(r, n) for n in names)] for r in res["decoder"]]
    decoder_diffs = ", ".join(
        f"{r['max_abs_diff']:.1e}" for r in res["decoder"] if r["max_abs_diff"] is not None
    )
    quality = [[r["tokens"], r["window"], r["documents"], f"{r['cosine_mean']:.4f}", f"{r['cosine_min']:.4f}"]
               for r in res["quality"]]  # fmt: skip
    diffs = ", ".join(f"{r['max_abs_diff']:.1e}" for r in res["cost"] if r["max_abs_diff"] is not None)
    return (
        "# A sparse pattern on a pretrained encoder (all-MiniLM-L6-v2) and a decoder\n\n"
        f"Pattern `sliding_window({res['window']}) | global_tokens([0])`, one document per batch, float32, "
        f"`transformers` {res['transformers']}, {res['reps']} interleaved rounds (medians). Time and memory: the "
        "MiniLM shape with random weights and enough positions; sdpa gets the pattern as a dense "
        f"(1, 1, T, T) mask up to {res['dense_max']} tokens (`-`: not run).\n\n"
        + markdown_table(
            ["tokens", "qkv ms", "sdpa ms", "qkv peak MiB", "sdpa peak MiB"], cost, align="rrrrr"
        )
        + f"\n\nLargest difference of qkv from sdpa (last hidden state): {diffs or '-'}.\n\n"
        "Decoder prefill: the same pattern & causal on a Llama-shaped decoder (6 layers, 12 query and 4 "
        "key/value heads, random weights); sdpa gets pattern & causal as a dense (1, 1, T, T) mask.\n\n"
        + markdown_table(
            ["tokens", "qkv ms", "sdpa ms", "qkv peak MiB", "sdpa peak MiB"], decoder, align="rrrrr"
        )
        + f"\n\nLargest difference of qkv from sdpa (logits): {decoder_diffs or '-'}.\n\n"
        "Quality: the real all-MiniLM-L6-v2 on documents cut from this repository's docs; cosine "
        "similarity of the mean-pooled embeddings with the pattern against full attention.\n\n"
        + markdown_table(
            ["tokens", "window", "documents", "mean cosine", "min cosine"], quality, align="rrrrr"
        )
        + f"\n\n{machine_line(res['machine'])}\n"
    )


PARTS = ("cost", "decoder", "quality")


def _parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(PARTS)}, got {text!r}"
        )
    return parts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hf_patterns", description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int_list(2), default=[512, 2048, 8192, 16384], help="document lengths")
    p.add_argument("--window", type=int, default=128, help="window of the timed pattern (default 128)")
    p.add_argument(
        "--dense-max", type=int, default=4096, help="longest document given to sdpa (default 4096)"
    )
    p.add_argument(
        "--decoder-lengths", type=int_list(1), default=[512, 2048, 8192], help="decoder prompt lengths"
    )
    p.add_argument("--reps", type=int, default=2, help="timed rounds per length (default 2)")
    p.add_argument("--windows", type=int_list(1), default=[32, 64, 128], help="windows of the quality part")
    p.add_argument("--quality-tokens", type=int, default=512, help="document length of the quality part")
    p.add_argument("--documents", type=int, default=8, help="documents of the quality part (default 8)")
    p.add_argument(
        "--quick", action="store_true", help="256 and 512 tokens, 1 round, 2 documents: a smoke run"
    )
    p.add_argument(
        "--parts",
        type=_parts,
        default=list(PARTS),
        help=f"parts to run, comma-separated, of {','.join(PARTS)} (default all; a part not run reports no rows)",
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.reps, args.windows, args.documents = [256, 512], 1, [64], 2
        args.decoder_lengths = [256, 512]
    import transformers

    info = machine_info(REPO)
    res = {
        "suite": SUITE, "machine": info, "transformers": transformers.__version__, "reps": args.reps,
        "window": args.window, "dense_max": args.dense_max,
        "parts": args.parts,
        "cost": _cost(args.lengths, args.window, args.dense_max, args.reps) if "cost" in args.parts else [],
        "decoder": (
            _decoder_cost(args.decoder_lengths, args.window, args.dense_max, args.reps)
            if "decoder" in args.parts else []
        ),
        "quality": _quality(args.quality_tokens, args.windows, args.documents) if "quality" in args.parts else [],
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(args.out, SUITE, args.quick, res, to_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
