"""``qkv demo cross-modal``: handwriting matched to words, captioned in three languages, read
into translations and asked about in videos, measured, in a few minutes.

Runs the steps of :data:`DEMO_STEPS` one after the other (:mod:`qkv.crossmodal.demo_steps`,
:mod:`qkv.crossmodal.demo_grounded`): the CLIP-style matcher on English captions
(``runs/demo-cross-modal/clip/``), Show, Attend and Tell in English, French and German
(``captioner-en/``, ``captioner-fr/``, ``captioner-de/``) and the grounded translator with its
text-only control (``grounded/``, ``grounded-text/``), the video question answering model and
its question-only control (``video-qa/``, ``video-qa-question/``), each trained at demo size and
evaluated, and writes ``metrics.json``, one entry per step::

    {"clip": {"test": {"i2t_r1", "t2i_r1", "i2t_r5", "t2i_r5"}, "zero_shot": {"i2t_r1", "t2i_r1"},
              "train_seconds"},
     "captioner": {"en": {"exact_match", "bleu", "attention_correctness", "train_seconds"},
                   "fr": {...}, "de": {...}},
     "grounded": {"with_image", "text_only", "zero_shot": {"with_image", "text_only"},
                  "train_seconds": {"with_image", "text_only"}},
     "video_qa": {"accuracy", "question_only", "per_kind": {"position", "after"},
                  "question_only_per_kind": {...}, "gold_peak", "frame_accuracy",
                  "train_seconds": {"full", "question_only"}}}

(recalls, exact match and accuracies in [0, 1], BLEU in [0, 100]) and ``report.html``: one offline page, its
figures inlined. A finished model of the same config is reused on the next run (``fresh=True``
retrains it); ``quick=True`` is a seconds-long smoke run whose numbers mean nothing.

Another cross-modal model joins the demo as one more :class:`DemoStep`: a function of a
:class:`~qkv.crossmodal.demo_steps.DemoContext` returning its
:class:`~qkv.crossmodal.demo_steps.DemoSection` (its ``metrics.json`` entry and its HTML).
"""

from __future__ import annotations

import html
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..application.run import torch_threads
from .demo_grounded import grounded_step
from .demo_steps import DemoContext, DemoInterrupted, DemoSection, captioner_step, clip_step
from .demo_video import video_qa_step

__all__ = ["DEMO_STEPS", "DemoInterrupted", "DemoStep", "run_crossmodal_demo"]


@dataclass(frozen=True)
class DemoStep:
    """One step of the demo: its key in ``metrics.json``, what it does (its progress line) and
    the function that trains, evaluates and reports."""

    name: str
    title: str
    run: Callable[[DemoContext], DemoSection]


#: Torch threads a step evaluates with: one, as its trainings (small models on a shared or
#: small machine spend more CPU on a second thread than they gain: scoring the grounded
#: translator on 1,000 pairs takes 1.9 CPU seconds on one thread, 16 on two beside a busy process).
DEMO_THREADS = 1

#: The steps of ``qkv demo cross-modal``, in order.
DEMO_STEPS: tuple[DemoStep, ...] = (
    DemoStep("clip", "a CLIP-style matcher on English captions", clip_step),
    DemoStep("captioner", "Show, Attend and Tell captioners in en, fr and de", captioner_step),
    DemoStep("grounded", "grounded translation and its text-only control", grounded_step),
    DemoStep("video_qa", "video question answering and its question-only control", video_qa_step),
)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_crossmodal_demo(out_dir: str | Path = "runs/demo-cross-modal", *, fresh: bool = False, quick: bool = False,
                        steps: Sequence[DemoStep] = DEMO_STEPS) -> dict[str, Any]:  # fmt: skip
    """Run every step, then write ``metrics.json`` and ``report.html`` into ``out_dir``;
    returns what ``metrics.json`` holds.

    Raises:
        ValueError: two steps of one name (their entries would collide).
        DemoInterrupted: a training was stopped by SIGINT or SIGTERM (nothing more is written).
    """
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"steps: expected distinct names, got {names}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    context, started = DemoContext(out, fresh=fresh, quick=quick), time.perf_counter()
    sections: dict[str, DemoSection] = {}
    for i, step in enumerate(steps, 1):
        _say(f"[{i}/{len(steps)}] {step.name}: {step.title}")
        began = time.perf_counter()
        with torch_threads(DEMO_THREADS):  # its trainings use as many ([train] threads)
            sections[step.name] = step.run(context)
        _say(f"[{i}/{len(steps)}] {step.name}: done in {time.perf_counter() - began:.0f} s")
    metrics = {name: s.metrics for name, s in sections.items()}
    seconds = time.perf_counter() - started
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    page = _report_html([s.html for s in sections.values()], out, quick=quick, seconds=seconds)
    (out / "report.html").write_text(page)
    _say(f"report: {out / 'report.html'}\nmetrics: {out / 'metrics.json'}\n({seconds:.0f} s in all)")
    return metrics


def _report_html(parts: list[str], out: Path, *, quick: bool, seconds: float) -> str:
    run = html.escape(shlex.quote(str(out)))
    note = (
        "<p><b>A --quick run</b>: tiny trainings, a few steps; the numbers mean nothing.</p>" if quick else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>qkv demo cross-modal</title>
<style>body{{font-family:sans-serif;max-width:64em;margin:2em auto}}td,th{{padding:.2em .8em;text-align:right}}
td:first-child{{text-align:left}}img{{max-width:100%}}.strips{{display:flex;flex-wrap:wrap;gap:1em}}
figure{{margin:.5em 0}}</style></head><body>
<h1>Handwriting matched to words, captioned word by word, read into translations, and watched</h1>{note}
<p>Strips of one to four of scikit-learn's 8x8 handwritten digits, captioned by the number they show
(<i>forty two</i>, <i>quarante deux</i>, <i>zwei und vierzig</i>). Test strips
show handwriting never seen in training; zero-shot strips show numbers never captioned in training.
Clips are short videos of the same handwriting, asked one question each.</p>
{"".join(parts)}
<p>Total demo time {seconds:.0f} s. Try <code>qkv caption --checkpoint {run}/captioner-de --index 2</code>,
<code>qkv match --checkpoint {run}/clip --index 2 "six hundred and two" "six hundred and twenty"</code>
<code>qkv evaluate --checkpoint {run}/grounded</code>
and <code>qkv evaluate --checkpoint {run}/video-qa</code>.</p>
</body></html>
"""
