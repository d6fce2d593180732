"""``qkv demo``: attention versus the fixed-context bottleneck, measured, in a few minutes.

Trains three translators on the built-in number corpus (digits -> German number words, whose
word order differs from the digit order: 34 -> "vier und dreißig"):

    none          seq2seq, the decoder sees only the encoder's final state (article 000's
                  bottleneck)
    bahdanau      seq2seq with Bahdanau additive attention
    transformer   a small pre-LN Transformer

then evaluates each on the held-out test set and on its longest inputs (``test_long``), and
writes into the output directory (``runs/demo``):

    metrics.json      {model: {"test": {...}, "test_long": {...}, "train_seconds", "tokens_per_s"}}
                      with exact_match (fraction), bleu, chrf and aer (attention models)
    <model>/          the run directories (checkpoints; ``qkv translate --checkpoint`` works on them)
    heatmaps/*.png    attention alignments of long test inputs
    report.html       one self-contained page (images inlined) that opens offline: the scores,
                      the heatmaps (shown at their size, 96 px per inch, so their labels read at
                      their point size) and each model's translation of a few test inputs and
                      of the longest ones, the wrong ones marked

A model whose run already finished with the same configuration is reused; an interrupted one
resumes exactly where it stopped; ``fresh=True`` retrains.
"""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from ..application.run import torch_threads
from ..train.checkpoint import list_checkpoints, load_checkpoint
from .config import RunConfig, resolve
from .training import load_corpus, train
from .translator import Translator

__all__ = ["DEMO_CORPUS", "DEMO_MODELS", "demo_config", "example_rows", "run_demo"]

DEMO_CORPUS = {"corpus": "numbers-de", "size": 24000, "seed": 0, "options": {"max_value": 999_999_999}}

#: Per model: the preset and its overrides (sizes chosen to train in about a minute on 2 cores).
DEMO_MODELS: dict[str, dict[str, Any]] = {
    "none": {
        "preset": "none",
        "model": {"embed_dim": 64, "hidden_dim": 256, "dropout": 0.1},
        "train": {"epochs": 3, "lr": 3e-3, "threads": 1},
    },
    "bahdanau": {
        "preset": "bahdanau",
        "model": {"embed_dim": 64, "hidden_dim": 128, "dropout": 0.1},
        "train": {"epochs": 3, "lr": 3e-3, "threads": 1},
    },
    "transformer": {
        "preset": "transformer",
        "model": {"d_model": 128, "num_heads": 4, "ff_dim": 256, "encoder_layers": 2, "decoder_layers": 2},
        "train": {"epochs": 6, "lr": 1e-3, "warmup": 200, "threads": 2},
    },
}


def demo_config(name: str, *, quick: bool = False) -> RunConfig:
    """The full training config of one demo model."""
    spec = DEMO_MODELS[name]
    data = dict(DEMO_CORPUS)
    train = {"batch_size": 64, "patience": 0, "valid_decode": 200, **spec["train"]}
    model = dict(spec["model"])
    if quick:
        data["size"] = 600
        train["epochs"] = 1
        train["valid_decode"] = 20
        train["threads"] = 1
    return resolve({"data": data, "model": model, "train": train}, preset=spec["preset"])


def _status(run: Path, cfg: RunConfig) -> str:
    """``"done"``, ``"partial"`` (resume it), ``"other"`` (a different config) or ``"none"``."""
    if not list_checkpoints(run):
        return "none"
    ck = load_checkpoint(run)
    if json.dumps(ck.config, sort_keys=True) != json.dumps(cfg.to_dict(), sort_keys=True):
        return "other"
    st = ck.state
    total_epochs = cfg.train.epochs
    return "done" if st.get("epoch", 0) >= total_epochs or st.get("stopped_early") else "partial"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    models: tuple[str, ...] = tuple(DEMO_MODELS),
    fresh: bool = False,
    quick: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, evaluate and report; returns the metrics written to ``metrics.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unknown = [m for m in models if m not in DEMO_MODELS]
    if unknown:
        raise ValueError(f"models: unknown {unknown}; valid: {', '.join(DEMO_MODELS)}")
    started = time.perf_counter()
    _train_all(_plan(out, models, fresh=fresh, quick=quick), progress)
    corpus = load_corpus(demo_config(models[0], quick=quick).data)  # the models share the corpus
    report = {name: _evaluate(name, demo_config(name, quick=quick), out / name, corpus) for name in models}
    figures = _heatmaps(out, models, corpus)
    examples = example_rows(out, models, corpus)
    meta = {
        "corpus": DEMO_CORPUS | {"quick": quick, "long_threshold": corpus.meta.get("long_threshold")},
        "seconds": round(time.perf_counter() - started, 1),
    }
    _atomic_write(out / "metrics.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    _atomic_write(out / "report.html", _report_html(report, figures, meta, examples))
    _say(
        f"wrote {out / 'metrics.json'}, {out / 'report.html'} and {len(figures)} heatmaps ({meta['seconds']:.0f} s)"
    )
    _say(_summary_table(report))
    return report


def _plan(out: Path, models, *, fresh: bool, quick: bool) -> list[tuple[str, dict[str, Any], Path, bool]]:
    """The runs still to train, ``(name, cfg, run, resume)``; finished ones are reused, runs of
    another configuration (or all, with ``fresh``) removed."""
    jobs = []
    for i, name in enumerate(models, 1):
        cfg = demo_config(name, quick=quick)
        run = out / name
        status = "none" if fresh else _status(run, cfg)
        if fresh or status == "other":
            if run.exists():
                _say(f"[{i}/{len(models)}] {name}: removing the previous demo run in {run}")
                shutil.rmtree(run)
            status = "none"
        if status == "done":
            _say(f"[{i}/{len(models)}] {name}: already trained in {run} (use --fresh to retrain)")
            continue
        verb = "resuming" if status == "partial" else "training"
        _say(f"[{i}/{len(models)}] {name}: {verb} on {cfg.data.corpus} ({cfg.data.size} pairs)")
        jobs.append((name, cfg, run, status == "partial"))
    return jobs


def _train_all(jobs, progress: bool) -> None:
    # One-thread models (small RNNs) train side by side, one process per core; the rest after.
    single = [j for j in jobs if cfg_threads(j[1]) == 1]
    if len(single) > 1 and (os.cpu_count() or 1) > 1:
        _train_parallel(single, progress)
        jobs = [j for j in jobs if j not in single]
    for name, cfg, run, resume in jobs:
        stream = sys.stderr if sys.stderr.isatty() else _Lines(sys.stderr, name)  # a bar names its run
        train(cfg, run, resume=resume, progress=progress, stream=stream)


def _evaluate(name: str, cfg: RunConfig, run: Path, corpus) -> dict[str, Any]:
    """The report entry of one trained model: training figures and test / test_long metrics."""
    tr = Translator.load(run)
    state = load_checkpoint(run).state
    history, seconds = state.get("history", []), state.get("seconds", 0.0)
    entry: dict[str, Any] = {
        "train_seconds": round(float(seconds), 1),
        "tokens_per_s": round(sum(h["tokens_per_s"] for h in history) / max(len(history), 1), 1),
        "epochs": len(history),
        "parameters": sum(p.numel() for p in tr.model.parameters()),
    }
    with torch_threads(cfg.train.threads):
        for split in ("test", "test_long"):
            _say(f"      evaluating {name} on {split} ({len(corpus[split])} examples)")
            entry[split] = _rounded(tr.evaluate(corpus[split]))
    _say(
        f"      {name}: exact match {entry['test']['exact_match']:.3f} (long inputs "
        f"{entry['test_long']['exact_match']:.3f}), BLEU {entry['test']['bleu']:.1f}"
        + (f", AER {entry['test']['aer']:.3f}" if "aer" in entry["test"] else "")
    )
    return entry


def cfg_threads(cfg: RunConfig) -> int:
    return cfg.train.threads


class _Lines:
    """A stream that is not a terminal (progress bars print plain lines) and starts every line with
    the model's name (``bahdanau: epoch 2: train loss ...``): runs side by side interleave."""

    def __init__(self, stream, name: str) -> None:
        self.stream, self.prefix, self.at_start = stream, f"{name}: ", True

    def write(self, text: str) -> int:
        lines = text.split("\n")
        named = "\n".join(
            (self.prefix if (i or self.at_start) and line else "") + line for i, line in enumerate(lines)
        )
        self.at_start = text.endswith("\n") or (self.at_start and not text)
        self.stream.write(named)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def _train_child(name: str, cfg: RunConfig, run: str, resume: bool, progress: bool) -> None:
    train(cfg, run, resume=resume, progress=progress, stream=_Lines(sys.stderr, name))


def _train_parallel(jobs, progress: bool) -> None:
    """Train one-thread models in separate processes at once (each checkpoints as usual)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    names = ", ".join(j[0] for j in jobs)
    _say(f"      {names}: training side by side, one process and one thread each")
    workers = min(len(jobs), os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [
            pool.submit(_train_child, name, cfg, str(run), resume, progress)
            for name, cfg, run, resume in jobs
        ]
        for f in futures:
            f.result()


def _rounded(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}


def _summary_table(report: dict[str, Any]) -> str:
    lines = [f"{'model':<12} {'exact':>7} {'long':>7} {'BLEU':>6} {'chrF':>6} {'AER':>6} {'train s':>8}"]
    for name, e in report.items():
        aer = e["test"].get("aer")
        lines.append(
            f"{name:<12} {e['test']['exact_match']:>7.3f} {e['test_long']['exact_match']:>7.3f} "
            f"{e['test']['bleu']:>6.1f} {e['test']['chrf']:>6.1f} {'-' if aer is None else f'{aer:.3f}':>6} "
            f"{e['train_seconds']:>8.0f}"
        )
    return "\n".join(lines)


def _translate(tr: Translator, sources: list[str]):
    """Greedy translations for the report, which shows every output and marks the wrong ones
    (so the per-sentence warnings of doubtful outputs are not printed as well)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tr.translate(sources)


def _longest(examples, count: int) -> list:
    return sorted(examples, key=lambda e: -len(e.source.split()))[:count]


def _same(output: str, reference: str) -> bool:
    """The exact match of :meth:`Translator.evaluate`: equal up to white space."""
    return output.split() == reference.split()


def _heatmaps(out: Path, models, corpus, count: int = 2) -> list[tuple[str, Path, tuple[float, float]]]:
    """Alignment heatmaps of the longest test inputs for each attention model:
    ``(caption, path, (width, height) in inches)``, input by input."""
    try:
        from ..viz import alignment
    except ImportError:
        return []
    folder = out / "heatmaps"
    folder.mkdir(exist_ok=True)
    examples = _longest(corpus["test_long"], count)
    figures = []
    for name in models:
        for k, r in enumerate(_translate(Translator.load(out / name), [e.source_text for e in examples])):
            if r.attention is None:
                continue
            path = folder / f"{name}-{k + 1}.png"
            right = _same(r.text, examples[k].target_text)
            gold = examples[k].alignment if right else None
            fig = alignment(
                r.attention[: len(r.target_tokens)],
                r.source_tokens,
                r.target_tokens,
                gold=gold,
                title=f"{name} ({'right' if right else 'wrong'})",
                path=path,
            )
            size = tuple(float(x) for x in fig.get_size_inches())
            mark = "right" if right else f"wrong; the reference is {examples[k].target_text}"
            figures.append((k, f"{name}: {r.source} -> {r.text} ({mark})", path, size))
    figures.sort(key=lambda f: f[0])  # input by input: the models side by side
    return [f[1:] for f in figures]


def example_rows(out: str | Path, models, corpus, *, count: int = 4) -> list[dict[str, Any]]:
    """Each model's translation of the first ``count`` test inputs and of the ``count`` longest
    ones (``test_long``, where the fixed-context baseline breaks down; not repeated among the
    first): one row per input,
    ``{"split", "source", "reference", "outputs": {model: {"text", "right"}}}``; ``right`` is
    the exact match of :meth:`Translator.evaluate`."""
    longest = _longest(corpus["test_long"], count)
    taken = {e.source for e in longest}
    chosen = [("test", e) for e in [e for e in corpus["test"] if e.source not in taken][:count]]
    chosen += [("test_long", e) for e in longest]
    rows = [
        {"split": split, "source": e.source_text, "reference": e.target_text, "outputs": {}}
        for split, e in chosen
    ]
    for name in models:
        translations = _translate(Translator.load(Path(out) / name), [row["source"] for row in rows])
        for row, r in zip(rows, translations):
            row["outputs"][name] = {"text": r.text, "right": _same(r.text, row["reference"])}
    return rows


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _examples_html(rows: list[dict[str, Any]], models) -> str:
    """The translations table: one row per input, one column per model; wrong outputs marked
    (a cross, red), right ones ticked; each group ends with the count of right outputs."""
    esc = html.escape
    head = "".join(f"<th>{esc(m)}</th>" for m in models)
    groups = (
        ("test", "Held-out test inputs"),
        ("test_long", "The longest inputs (test_long): where one fixed context vector runs out"),
    )
    parts = [f"<table class='examples'><tr><th>input</th><th>reference</th>{head}</tr>"]
    for split, heading in groups:
        chosen = [r for r in rows if r["split"] == split]
        if not chosen:
            continue
        parts.append(f"<tr class='group'><th colspan='{2 + len(models)}'>{esc(heading)}</th></tr>")
        for r in chosen:
            cells = []
            for m in models:
                o = r["outputs"][m]
                if o["right"]:
                    cells.append(
                        f"<td class='right'><span class='mark'>&#10003;</span> {esc(o['text'])}</td>"
                    )
                else:
                    cells.append(
                        "<td class='wrong' title='differs from the reference'>"
                        f"<span class='mark'>&#10007;</span> {esc(o['text']) or '<i>(empty)</i>'}</td>"
                    )
            parts.append(
                f"<tr><td><code>{esc(r['source'])}</code></td><td>{esc(r['reference'])}</td>{''.join(cells)}</tr>"
            )
        counts = "".join(
            f"<td>{sum(r['outputs'][m]['right'] for r in chosen)} of {len(chosen)} right</td>" for m in models
        )
        parts.append(f"<tr class='count'><td colspan='2'>right</td>{counts}</tr>")
    parts.append("</table>")
    return "".join(parts)


#: The report's style sheet.
_REPORT_CSS = """
body { font-family: system-ui, sans-serif; max-width: 80rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
p { max-width: 60rem; }
table { border-collapse: collapse; margin: 1rem 0; }
td, th { border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.figures { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
figure { margin: 0; } img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: .9rem; color: #444; }
table.examples td, table.examples th { text-align: left; vertical-align: top; }
table.examples code { white-space: nowrap; }
table.examples tr.group th { background: #f3f5f7; font-weight: 600; }
table.examples tr.count td { color: #555; font-style: italic; }
td.wrong { background: #fde8e8; color: #8a1111; }
td.right { color: #1d5e20; }
.mark { font-weight: 700; }
.quick { background: #fff6d6; padding: .4rem .6rem; }
"""


def _score_rows(report: dict[str, Any]) -> str:
    """One ``<tr>`` per model: exact match (test, long inputs), BLEU, chrF, AER, time, speed, size."""
    rows = []
    for name, e in report.items():
        t, lg = e["test"], e["test_long"]
        cells = (
            name,
            f"{t['exact_match']:.3f}",
            f"{lg['exact_match']:.3f}",
            f"{t['bleu']:.1f}",
            f"{t['chrf']:.1f}",
            "-" if "aer" not in t else f"{t['aer']:.3f}",
            f"{e['train_seconds']:.0f}",
            f"{e['tokens_per_s']:,.0f}",
            f"{e['parameters']:,}",
        )
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "".join(rows)


def _figures_html(figures) -> str:
    """The heatmaps inlined as PNG data, each at its size in inches (96 CSS px each): the
    figures' 11 pt labels read as 11 pt."""
    imgs = []
    for caption, path, (width, _) in figures:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        caption = html.escape(caption)
        imgs.append(
            f'<figure style="max-width: {width:.2f}in"><img alt="{caption}" style="width: {width:.2f}in" '
            f'src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>'
        )
    return "".join(imgs) or "<p>(heatmaps need matplotlib: pip install 'qkv[viz]')</p>"


def _report_html(
    report: dict[str, Any], figures, meta: dict[str, Any], examples: list[dict[str, Any]]
) -> str:
    """The self-contained HTML report: scores, heatmaps, test examples."""
    esc = html.escape
    quick = (
        "<p class='quick'>A <code>--quick</code> run: tiny data, one epoch; its scores and "
        "translations show that the pipeline works, nothing about the models.</p>"
        if meta["corpus"].get("quick")
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>qkv demo: attention vs the fixed context</title>
<style>{_REPORT_CSS}</style></head><body>
<h1>Attention vs the fixed-context bottleneck</h1>
{quick}<p>Three translators trained on the built-in corpus <code>{esc(meta["corpus"]["corpus"])}</code>
({meta["corpus"]["size"]} generated pairs: numbers written as digits, translated into German number
words, whose order differs from the digits': 34 &rarr; <i>vier und dreißig</i>). The baseline
<b>none</b> reads one fixed context vector, the encoder's final state (the Seq2Seq of article 000);
<b>bahdanau</b> attends to every source position at every step; <b>transformer</b> is a small
encoder-decoder Transformer. <i>long</i> is the exact match on the held-out inputs with the most
tokens (at least {esc(str(meta["corpus"].get("long_threshold")))}).</p>
<table><tr><th>model</th><th>exact match</th><th>long inputs</th><th>BLEU</th><th>chrF</th><th>AER</th>
<th>train s</th><th>target tok/s</th><th>parameters</th></tr>
{_score_rows(report)}</table>
<p>AER: alignment error rate of the attention (argmax per target word, teacher-forced on the reference)
against the gold word alignment (lower is better; the Transformer's is the mean of its last layer's
heads).</p>
<h2>Where the models look</h2>
<p>Each row is a German word being written; each column a digit of the input. Outlined cells are the gold
alignment (drawn when the translation is right).</p>
<div class="figures">{_figures_html(figures)}</div>
<h2>Test examples</h2>
<p>Each model's greedy translation; <span class="mark">&#10007;</span> marks an output that differs from
the reference (red), <span class="mark">&#10003;</span> one that matches it. The baseline reads the whole
input through one fixed-size vector: on the longest inputs that is where it fails.</p>
{_examples_html(examples, list(report))}
<p>Total demo time {meta["seconds"]:.0f} s. Translate with
<code>qkv translate --checkpoint runs/demo/bahdanau "4 2 0 7"</code>.</p>
</body></html>
"""
