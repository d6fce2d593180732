"""The steps of ``qkv demo cross-modal``: each trains its models at demo size (or reuses them),
evaluates them and returns a :class:`DemoSection`, its part of ``metrics.json`` and of
``report.html``.

- :func:`clip_step`: the CLIP-style matcher on English captions; recall@1 and @5 both ways on
  the test strips (new handwriting), recall@1 on the zero-shot ones (new numbers); a similarity
  matrix of a few test strips and their captions.
- :func:`captioner_step`: Show, Attend and Tell (the preset: supervised attention) in English,
  French and German; exact match, BLEU and attention correctness on the test strips (greedy
  captions); a few test strips with their generated captions and, per word, its attention over
  the strip.
- :func:`qkv.crossmodal.demo_grounded.grounded_step`: the grounded translator and its text-only
  control (its own module).
- :func:`qkv.crossmodal.demo_video.video_qa_step`: the video question answering model and its
  question-only control (its own module).

A step is a function of a :class:`DemoContext`; :func:`train_or_reuse` trains one of
:data:`DEMO_RUNS` into ``context.out / name``.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..train.checkpoint import list_checkpoints, load_checkpoint
from .captioner import Captioner
from .config import CLIP_DATASETS, DataConfig, RunConfig, resolve
from .demo_figures import caption_figure, inline_png, similarity_figure, table_html
from .matcher import Matcher
from .training import load_strips, train

__all__ = ["DEMO_RUNS", "DemoContext", "DemoInterrupted", "DemoSection", "captioner_step", "clip_step", "demo_config",
           "finished_run", "train_or_reuse"]  # fmt: skip

_SIZE = ["--data.train_size=10000", "--train.epochs=6"]
_GROUNDED_SIZE = ["--data.train_size=6000", "--train.epochs=6"]
#: The demo's video QA: position and after questions over 12,000 clips for 3 epochs, a small model
#: (the preset's 250k parameters learn the same in about five times the CPU), with the previous frame.
_CLIP_SIZE = ['--data.question_kinds=["position", "after"]', "--data.train_size=12000", "--train.epochs=3",
              "--train.batch_size=32", "--train.lr=5e-3", "--model.dim=32", "--model.heads=2", "--model.mlp_dim=64",
              "--model.patch_size=6", "--model.frame_depth=1", "--model.temporal_depth=0",
              "--model.question_depth=1"]  # fmt: skip
#: Each demo model's preset and overrides: the matcher on 10,000 strips for 8 epochs, the captioners
#: on 10,000 strips for 6 epochs, the grounded translator and its text-only control on 6,000 for
#: 6; the video QA model and its question-only control on 12,000 clips of two question kinds for
#: 3 epochs (the full recipe: 80,000 clips of three kinds for 3, the preset's model).
DEMO_RUNS: dict[str, tuple[str, list[str]]] = {
    "clip": ("clip", ["--data.dataset=digit-strips", "--data.train_size=10000", "--train.epochs=8"]),
    "captioner-en": ("captioner", ["--data.dataset=digit-strips", *_SIZE]),
    "captioner-fr": ("captioner", ["--data.dataset=digit-strips-fr", *_SIZE]),
    "captioner-de": ("captioner", ["--data.dataset=digit-strips-de", *_SIZE]),
    "grounded": ("grounded", ["--data.dataset=digit-strips", *_GROUNDED_SIZE]),
    "grounded-text": (
        "grounded",
        ["--data.dataset=digit-strips", *_GROUNDED_SIZE, "--model.use_image=false"],
    ),
    "video-qa": ("video-qa", ["--data.dataset=digit-clips", *_CLIP_SIZE]),
    "video-qa-question": (
        "video-qa",
        ["--data.dataset=digit-clips", *_CLIP_SIZE, "--model.variant=question_only"],
    ),
}
#: A seconds-long smoke run: a few strips, 3 steps; its numbers mean nothing.
_QUICK = ["--data.train_size=128", "--data.valid_size=16", "--data.test_size=16", "--train.max_steps=3",
          "--train.batch_size=64"]  # fmt: skip
#: Recalls kept in ``metrics.json`` per set of the matcher.
CLIP_RECALLS = {"test": ("i2t_r1", "t2i_r1", "i2t_r5", "t2i_r5"), "zero_shot": ("i2t_r1", "t2i_r1")}
#: Scores kept per captioner.
CAPTION_SCORES = ("exact_match", "bleu", "attention_correctness")
CAPTION_LANGS = ("en", "fr", "de")


class DemoInterrupted(RuntimeError):
    """A training of the demo stopped by SIGINT or SIGTERM (its checkpoint saved); the demo
    stops with it. ``exit_code``: 128 + the signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class DemoContext:
    """Where a demo writes (``out``: one run directory per model, ``out / "figures"``), whether
    it retrains finished models (``fresh``) and whether it is a smoke run (``quick``)."""

    out: Path
    fresh: bool = False
    quick: bool = False

    def figure(self, name: str) -> Path:
        """The path of a figure of the report (``out/figures/name``)."""
        (self.out / "figures").mkdir(parents=True, exist_ok=True)
        return self.out / "figures" / name


@dataclass(frozen=True)
class DemoSection:
    """What a step returns: its entry of ``metrics.json`` and its HTML (an ``<h2>`` and what follows)."""

    metrics: dict[str, Any]
    html: str


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def demo_config(name: str, *, quick: bool = False) -> RunConfig:
    """The full config of one of :data:`DEMO_RUNS` (``quick``: the smoke-run sizes)."""
    preset, overrides = DEMO_RUNS[name]
    return resolve(
        preset=preset, overrides=[*overrides, "--train.save_every_minutes=0", *(_QUICK if quick else [])]
    )


def finished_run(run: Path, cfg: RunConfig) -> bool:
    """Whether ``run`` holds a finished training of exactly ``cfg``."""
    if not list_checkpoints(run):
        return False
    ck = load_checkpoint(run)
    if json.dumps(ck.config, sort_keys=True) != json.dumps(cfg.to_dict(), sort_keys=True):
        return False
    st, t = ck.state, cfg.train
    return (
        st.get("epoch", 0) >= t.epochs
        or bool(st.get("stopped_early"))
        or 0 < t.max_steps <= st.get("step", 0)
    )


def train_or_reuse(context: DemoContext, name: str) -> float:
    """Train demo model ``name`` into ``context.out / name``, or reuse a finished run of the same
    config there (not with ``fresh``); returns its training seconds (from its checkpoint).

    Raises:
        DemoInterrupted: the training was stopped by SIGINT or SIGTERM.
    """
    run, cfg = context.out / name, demo_config(name, quick=context.quick)
    if not context.fresh and finished_run(run, cfg):
        _say(f"  {name}: reusing the model in {run} (--fresh retrains it)")
    else:
        if run.exists():
            shutil.rmtree(run)
        unit = "clips" if cfg.data.dataset in CLIP_DATASETS else "strips"
        _say(f"  {name}: training ({cfg.data.train_size:,} {unit}, {cfg.train.epochs} epochs)")
        result = train(cfg, run, progress=not context.quick, stream=sys.stderr)
        if result.interrupted:
            raise DemoInterrupted(f"{name}: training interrupted, the demo stops (run it again: this model "
                                  "starts over, the finished ones are reused)", result.exit_code)  # fmt: skip
    seconds = round(float(load_checkpoint(run).state["seconds"]), 3)
    _say(f"  {name}: {seconds:.0f} s of training")
    return seconds


def clip_step(context: DemoContext) -> DemoSection:
    """Train (or reuse) and score the matcher; its similarity matrix on a few test strips."""
    seconds = train_or_reuse(context, "clip")
    matcher = Matcher.load(context.out / "clip")
    sets = load_strips(DataConfig(**matcher.config["data"]), tuple(CLIP_RECALLS))
    metrics: dict[str, Any] = {}
    candidates = 0
    for split, keys in CLIP_RECALLS.items():
        recalls = matcher.evaluate(sets[split], ks=(1, 5))
        metrics[split] = {k: round(recalls[k], 4) for k in keys}
        candidates = candidates or recalls["captions"]  # the test set's
    metrics["train_seconds"] = seconds
    _say(
        f"  clip: test i2t R@1 {metrics['test']['i2t_r1']:.3f}, zero-shot {metrics['zero_shot']['i2t_r1']:.3f}"
    )
    test = sets["test"]
    short = [c for c in dict.fromkeys(test.captions) if len(c) <= 24]  # distinct captions, in order
    shown = short[:6] or list(dict.fromkeys(test.captions))[:6]
    images = test.images[[test.captions.index(c) for c in shown]]
    figure = similarity_figure(
        images, matcher.similarity(images, shown), shown, path=context.figure("clip.png")
    )
    return DemoSection(metrics, _clip_html(metrics, figure, candidates))


def _clip_html(metrics: dict[str, Any], figure: Path | None, candidates: int) -> str:
    t, z = metrics["test"], metrics["zero_shot"]
    rows = [["test (new handwriting)", t["i2t_r1"], t["t2i_r1"], t["i2t_r5"], t["t2i_r5"]],
            ["zero-shot (new numbers)", z["i2t_r1"], z["t2i_r1"], "", ""]]  # fmt: skip
    picture = inline_png(figure, "similarity matrix") if figure else "<p>(figures need matplotlib)</p>"
    return f"""<h2>Matching: a CLIP-style dual encoder (English)</h2>
<p>A ViT image tower and a Transformer text tower trained with the symmetric InfoNCE loss
({metrics["train_seconds"]:.0f} s of training). Recall@K: the share of strips whose caption is among
their K most similar captions (image->text), and back (text->image); the test set's candidates are its
{candidates} distinct captions.</p>
{table_html(["set", "image->text R@1", "text->image R@1", "image->text R@5", "text->image R@5"], rows)}
<p>Six test strips against their six captions (caption j is strip j's): the diagonal should stand out.</p>
<figure>{picture}</figure>
"""


def captioner_step(context: DemoContext) -> DemoSection:
    """Train (or reuse) and score the captioner in each language; a few strips per language with
    each generated word's attention."""
    metrics: dict[str, Any] = {}
    pictures = []
    for lang in CAPTION_LANGS:
        name = f"captioner-{lang}"
        seconds = train_or_reuse(context, name)
        captioner = Captioner.load(context.out / name)
        test = load_strips(DataConfig(**captioner.config["data"]), ("test",))["test"]
        scores = captioner.evaluate(test)
        metrics[lang] = {**{k: round(scores[k], 4) for k in CAPTION_SCORES}, "train_seconds": seconds}
        _say(f"  {name}: exact match {scores['exact_match']:.3f}, attention correctness "
             f"{scores['attention_correctness']:.3f}")  # fmt: skip
        pictures += _caption_pictures(context, captioner, test, lang, count=1 if context.quick else 2)
    return DemoSection(metrics, _captioner_html(metrics, pictures))


def _caption_pictures(context: DemoContext, captioner: Captioner, test, lang: str, count: int) -> list[str]:
    """The first ``count`` test strips of 3 or 4 digits, captioned greedily, as inlined figures."""
    index = [i for i, s in enumerate(test.slots) if len({x for w in s for x in w}) >= 3][:count]
    out = []
    for i, caption in zip(index, captioner.caption(test.images[index], beam=1)):
        verdict = "right" if caption.text == test.captions[i] else f"wrong; gold: {test.captions[i]}"
        title = f"{lang}: {caption.text}\n({verdict})"
        path = caption_figure(test.images[i], caption.words, caption.attention, captioner.model.grid, title=title,
                              path=context.figure(f"caption-{lang}-{i}.png"))  # fmt: skip
        if path is not None:
            out.append(inline_png(path, title))
    return out


def _captioner_html(metrics: dict[str, Any], pictures: list[str]) -> str:
    rows = [[lang, m["exact_match"], m["bleu"], m["attention_correctness"], f"{m['train_seconds']:.0f} s"]
            for lang, m in metrics.items()]  # fmt: skip
    shown = "".join(f"<figure>{p}</figure>" for p in pictures) or "<p>(figures need matplotlib)</p>"
    return f"""<h2>Captioning: Show, Attend and Tell in three languages</h2>
<p>An LSTM decoder that scores the strip's four patches (one per digit slot) with additive
attention before each word; its attention learns from each word's gold digit (supervised attention,
Liu et al. 2017). Test strips (new handwriting), greedy captions. Attention correctness: the share
of words whose attention peaks on the digit they name (gold captions fed to the decoder; German
names the units before the tens, so its words cross the strip).</p>
{table_html(["captions", "exact match", "BLEU", "attention correctness", "training"], rows)}
<p>Test strips with their generated captions; below each strip, one row per word: where the
decoder looked when it wrote it (the brighter, the more weight; one colour scale from 0 to 1).</p>
<div class="strips">{shown}</div>
"""
