"""``qkv demo vision``: a Vision Transformer on real handwritten digits, and which explanation
method finds the digit on a cluttered canvas, measured.

Trains two small ViTs (``runs/demo-vision/digits/``: scikit-learn's 8x8 digits;
``runs/demo-vision/located/``: :func:`qkv.vision.located_digits` canvases), runs the localisation
benchmark (:mod:`qkv.vision.localization`) at demo size on the second, and writes
``metrics.json``::

    {"vit": {"test": {"accuracy": ...}, "train_seconds": ...},
     "located": {"test": {"accuracy": ...}, "train_seconds": ...},
     "localization": {"attention": {"pointing": ..., "energy_in_box": ..., "deletion_auc": ...,
                      "insertion_auc": ...}, ..., "random": {...}}}

and ``report.html`` (one offline page, figures inlined). A finished model is reused on the next
run (``fresh=True`` retrains it); ``quick=True`` is a seconds-long smoke run whose numbers mean
nothing.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ..train.checkpoint import list_checkpoints
from .classifier import Classifier
from .config import DataConfig, resolve
from .localization import METRICS, RANDOM, localization_scores, located_test_set
from .pictures import available_methods
from .training import load_splits, train

__all__ = ["DEMO_RUNS", "run_vision_demo"]

#: Each model's preset and overrides (demo size: the digits in under a minute, the canvases in 2-3 on 2 cores).
DEMO_RUNS: dict[str, tuple[str, list[str]]] = {
    "digits": ("vit-digits", ["--data.dataset=digits", "--train.epochs=30", "--train.batch_size=32"]),
    "located": ("vit-located", ["--data.dataset=located-digits", "--train.epochs=6", "--train.batch_size=64",
                                "--train.lr=3e-3", "--train.warmup=100"]),
}  # fmt: skip
_QUICK = ["--train.max_steps=3", "--model.dim=16", "--model.depth=1", "--model.heads=2", "--model.mlp_dim=32"]
#: Localisation at demo size: canvases scored, deletion/insertion steps, ig points.
_BENCH = {"images": 100, "steps": 8, "ig_steps": 8}
_BENCH_QUICK = {"images": 8, "steps": 2, "ig_steps": 2}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _train_one(name: str, run: Path, *, fresh: bool, quick: bool) -> float | None:
    """Train ``name`` into ``run`` (seconds), or reuse a finished run there (``None``)."""
    if list_checkpoints(run) and not fresh:
        _say(f"{name}: reusing the model in {run} (--fresh retrains it)")
        return None
    if run.exists():
        shutil.rmtree(run)
    preset, overrides = DEMO_RUNS[name]
    extra = [*(["--data.size=300"] if quick and name == "located" else []), *(_QUICK if quick else [])]
    cfg = resolve(preset=preset, overrides=[*overrides, "--train.save_every_minutes=0", *extra])
    t0 = time.perf_counter()
    train(cfg, run, progress=False)
    seconds = time.perf_counter() - t0
    _say(f"{name}: trained in {seconds:.0f} s")
    return round(seconds, 1)


def _accuracy(clf: Classifier) -> float:
    test = load_splits(DataConfig(**clf.config["data"]))["test"]
    return round(clf.evaluate(test.images, test.labels).accuracy, 4)


def _figure(clf: Classifier, images, labels, path: Path, title: str) -> Path | None:
    try:
        from ..viz import image_methods

        maps = {
            m: clf.explain(images[:1], method=m, target=labels[:1], steps=8).pixels[0]
            for m in available_methods()
        }
        image_methods(images[0], maps, title=title, path=path)
    except ImportError:
        return None
    return path


def _previous(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def run_vision_demo(
    out_dir: str | Path = "runs/demo-vision", *, fresh: bool = False, quick: bool = False
) -> dict:
    """Train, score and report; returns what ``metrics.json`` holds."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started, previous = time.perf_counter(), _previous(out)
    metrics: dict[str, Any] = {}
    for name, key in (("digits", "vit"), ("located", "located")):
        seconds = _train_one(name, out / name, fresh=fresh, quick=quick)
        if seconds is None:
            seconds = previous.get(key, {}).get("train_seconds")
        metrics[key] = {
            "test": {"accuracy": _accuracy(Classifier.load(out / name))},
            "train_seconds": seconds,
        }
    located = Classifier.load(out / "located")
    bench = _BENCH_QUICK if quick else _BENCH
    images, labels, boxes = located_test_set(
        DataConfig(**located.config["data"]), bench["images"], seed=12345
    )
    scores = localization_scores(located, images, labels, boxes, methods=available_methods(), steps=bench["steps"],
                                 ig_steps=bench["ig_steps"])  # fmt: skip
    metrics["localization"] = {m: {k: round(v, 4) for k, v in s.items()} for m, s in scores.items()}
    figures = [f for f in (
        _figure(located, images, labels, out / "located_methods.png", f"a located digit of class {int(labels[0])}"),
        _figure(Classifier.load(out / "digits"), *_digit(out), out / "digit_methods.png", "a test digit"),
    ) if f is not None]  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    seconds = time.perf_counter() - started
    (out / "report.html").write_text(_report_html(metrics, figures, bench, quick=quick, seconds=seconds))
    _say(f"wrote {out / 'metrics.json'} and {out / 'report.html'} ({seconds:.0f} s)")
    return metrics


def _digit(out: Path):
    test = load_splits(DataConfig(**Classifier.load(out / "digits").config["data"]))["test"]
    return test.images[:1], test.labels[:1]


def _rows(scores: dict[str, dict[str, float]]) -> str:
    cells = []
    for name, s in scores.items():
        style = " class='baseline'" if name == RANDOM else ""
        cells.append(f"<tr{style}><td>{html.escape(name)}</td>" + "".join(f"<td>{s[k]:.3f}</td>" for k in METRICS)
                     + "</tr>")  # fmt: skip
    return "\n".join(cells)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></figure>'


def _report_html(metrics: dict[str, Any], figures: list[Path], bench: dict[str, int], *, quick: bool,
                 seconds: float) -> str:  # fmt: skip
    vit, loc = metrics["vit"], metrics["located"]

    def secs(m):
        return "reused" if m["train_seconds"] is None else f"{m['train_seconds']:.0f} s"

    note = "<p><b>A --quick run</b>: tiny models, a few steps; the numbers mean nothing.</p>" if quick else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>qkv demo vision</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:.2em .8em;text-align:right}}
td:first-child{{text-align:left}}.baseline{{color:#777}}img{{max-width:100%}}</style></head><body>
<h1>A Vision Transformer, and which explanation finds the object</h1>{note}
<p>Digits ViT (scikit-learn's 8x8 handwritten digits): test accuracy <b>{vit["test"]["accuracy"]:.4f}</b>,
trained in {secs(vit)}. Located-digits ViT (a digit at a random spot of a 32x32 canvas among distractor
strokes; the class depends on the digit alone): test accuracy <b>{loc["test"]["accuracy"]:.4f}</b>, trained
in {secs(loc)}.</p>
<h2>Does the explanation point at the digit?</h2>
<p>{bench["images"]} fresh canvases of the test digits, each method explaining the true class. Pointing: the
map's maximum inside the digit's box; energy: the map's positive mass inside it; deletion / insertion AUC:
the class probability as pixels are removed from the canvas / inserted into a black one, most important first
({bench["steps"]} steps; deletion lower is better, insertion higher). <i>random</i> is a map of noise.</p>
<table><tr><th>method</th><th>pointing</th><th>energy in box</th><th>deletion AUC</th><th>insertion AUC</th></tr>
{_rows(metrics["localization"])}</table>
<h2>Every method on one image</h2>
{"".join(_img(f) for f in figures) or "<p>(figures need matplotlib: pip install 'qkv[viz]')</p>"}
<p>Total demo time {seconds:.0f} s. Explore one image with
<code>qkv viz --checkpoint runs/demo-vision/located --image 0</code>.</p>
</body></html>
"""
