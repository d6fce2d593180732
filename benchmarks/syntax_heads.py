"""What does MiniLM look at? Clark et al.'s (2019) syntax heads and attention probes on a treebank.

The real all-MiniLM-L6-v2 (6 layers x 12 heads) reads every sentence of Universal Dependencies
English EWT's development set (2,001 sentences, CC BY-SA 4.0, read from ``../shared/data``,
never copied into the repository); ``qkv.interpret.syntax.analyze_syntax`` gives, per relation
with at least ``--min-count`` dependents, the best head against the best fixed offset with
sentence-bootstrap 95% intervals, and the attention probes' UAS on 20% held-out sentences.

    python -m benchmarks.syntax_heads                  # writes benchmarks/results/syntax_heads.{json,md}, docs/syntax-heads.png
    python -m benchmarks.syntax_heads --conllu /path/to/en_ewt-ud-dev.conllu --threads 1
    python -m benchmarks.syntax_heads --quick          # the first 200 sentences: a smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

# common.py sits beside this file, however it is run
if __package__:  # imported as a package module (`python -m benchmarks.<suite>`)
    from .common import log, machine_info, machine_line, markdown_table, write_report
else:  # python benchmarks/<suite>.py: the script's directory is first on sys.path
    from common import log, machine_info, machine_line, markdown_table, write_report

SUITE = "syntax_heads"
REPO = Path(__file__).resolve().parent.parent
#: Relative to the repository's root.
DEFAULT_CONLLU = Path("../shared/data/ud-english-ewt/en_ewt-ud-dev.conllu")
#: A relation "beats the offset" when its best head is at least this far above it.
MARGIN = 0.10


def _rows(res: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, r in sorted(res["relations"].items(), key=lambda kv: -kv[1]["n"]):
        gain = r["accuracy"] - r["baseline_accuracy"]
        rows.append([
            name, str(r["n"]), f"{r['best_head'][0] + 1}-{r['best_head'][1] + 1}", r["direction"],
            f"{r['accuracy']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]",
            f"{r['baseline_offset']:+d}", f"{r['baseline_accuracy']:.3f}",
            f"{gain:+.3f} [{r['gain_ci'][0]:+.3f}, {r['gain_ci'][1]:+.3f}]", "yes" if gain >= MARGIN else "",
        ])  # fmt: skip
    return rows


def to_markdown(res: dict[str, Any]) -> str:
    p = res["probe"]
    beats = sum(1 for r in res["relations"].values() if r["accuracy"] - r["baseline_accuracy"] >= MARGIN)
    table = markdown_table(
        ["relation", "n", "best head", "direction", "accuracy [95% CI]", "offset", "offset acc.",
         "gain [95% CI]", f">= {MARGIN * 100:.0f} pts"],
        _rows(res),
        align="lrllrrrrl",
    )  # fmt: skip
    return (
        f"# Syntax heads of {res['model']} on {res['treebank']}\n\n"
        f"{res['sentences']} sentences, {res['words']} words ({res['skipped_too_long']} longer than the model's "
        f"{res['max_length']} pieces skipped); relations with at least {res['min_count']} dependents (UD labels, "
        f"subtypes folded). Best head: layer-head, 1-based; dep->head: the dependent's most attended word "
        f"is its head; head->dep: the word that attends most to the dependent is its head. Offset: the "
        f"relation's most frequent head offset. Intervals: 95% percentile bootstrap over sentences "
        f"({res['bootstrap']} resamples, seed {res['seed']}).\n\n"
        f"{table}\n\n"
        f"{beats} relations where the best head beats the best offset by at least {MARGIN * 100:.0f} points.\n\n"
        f"Attention probes, UAS on {p['test_sentences']} held-out sentences ({p['test_words']} words, roots "
        f"excluded): attention + input embeddings **{p['uas']:.3f}**, attention only {p['attention_only_uas']:.3f}, "
        f"best offset ({p['baseline_offset']:+d}) {p['baseline_uas']:.3f}, right-branching "
        f"{p['right_branching_uas']:.3f}.\n\n"
        f"Time: {res['read_seconds']:.1f} s to read the treebank, {res['seconds']:.1f} s to analyse it "
        f"(forward passes, head accuracies, bootstrap, both probes; {res['cpu_seconds']:.1f} s of this "
        f"process's CPU time over its {res['machine']['torch_num_threads']} torch thread(s): on a machine "
        f"shared with other jobs the wall time is longer than the CPU time).\n\n"
        f"{machine_line(res['machine'])}\n"
    )


def _result(report, args: argparse.Namespace, conllu: Path, read_seconds: float) -> dict[str, Any]:
    out = report.to_json()
    for name, r in report.relations.items():
        out["relations"][name]["direction"] = "dep->head" if r.best[0] == 0 else "head->dep"
        out["relations"][name]["gain_ci"] = [round(r.gain_ci[0], 4), round(r.gain_ci[1], 4)]
    p = report.probe
    out["probe"].update(
        baseline_offset=p.baseline_offset,
        right_branching_uas=round(p.right_branching_uas, 4),
        test_sentences=p.test_sentences,
        test_words=p.test_words,
    )
    return {
        "suite": SUITE, "treebank": conllu.name, "model": "all-MiniLM-L6-v2" if args.model == "minilm" else args.model,
        "max_length": args.max_length, "min_count": args.min_count, "bootstrap": args.bootstrap, "seed": args.seed,
        "read_seconds": round(read_seconds, 2), "skipped_too_long": report.skipped_too_long, **out,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="syntax_heads", description=__doc__.splitlines()[0])
    p.add_argument(
        "--conllu",
        type=Path,
        default=DEFAULT_CONLLU,
        help=f"the treebank (default {DEFAULT_CONLLU}, from the repository's root)",
    )
    p.add_argument("--model", default="minilm", help="'minilm' or a local Hugging Face BERT directory")
    p.add_argument(
        "--min-count", type=int, default=50, help="relations with at least N dependents (default 50)"
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the probes (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="the first 200 sentences: a smoke run")
    args = p.parse_args(argv)
    import torch

    from qkv.interop import load_bert
    from qkv.interpret.syntax import analyze_syntax, syntax_figure
    from qkv.interpret.treebank import read_conllu

    if args.threads:
        torch.set_num_threads(args.threads)
    conllu = args.conllu if args.conllu.is_absolute() else REPO / args.conllu
    if not conllu.is_file():
        p.error(f"--conllu: no such file {conllu} (UD English EWT's dev set; pass its path)")
    info = machine_info(REPO)
    t0 = time.perf_counter()
    sentences = read_conllu(conllu, limit=200 if args.quick else None)
    read_seconds = time.perf_counter() - t0
    model, tokenizer = load_bert(args.model)
    args.max_length = tokenizer.max_length
    log(f"read {len(sentences)} sentences in {read_seconds:.1f} s; analysing")
    cpu = time.process_time()
    report = analyze_syntax(
        model, tokenizer, sentences, min_count=args.min_count, bootstrap=args.bootstrap, seed=args.seed
    )
    cpu = time.process_time() - cpu
    log(f"analysed in {report.seconds:.1f} s ({cpu:.1f} s of CPU time)")
    res = {**_result(report, args, conllu, read_seconds), "cpu_seconds": round(cpu, 1), "machine": info}
    out = REPO / "benchmarks" / "results"
    write_report(out, SUITE, args.quick, res, to_markdown)
    figure = out / f"{SUITE}_quick.png" if args.quick else REPO / "docs" / "syntax-heads.png"
    syntax_figure(report, figure, min_count=args.min_count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
