"""The video question answering step of ``qkv demo cross-modal``: the video QA model and its
question-only control trained at demo size (:data:`VIDEO_QA_MODELS`), their accuracy on the
test clips (new handwriting) overall and per question kind, and a few test clips with their
question, both answers and the question's attention over the frames.

Its ``metrics.json`` entry::

    {"accuracy": <test accuracy>, "question_only": <the control's>,
     "per_kind": {"position", "after"}, "question_only_per_kind": {...},
     "gold_peak", "frame_accuracy", "train_seconds": {"full", "question_only"}}

(``per_kind``: the kinds of the runs' ``[data] question_kinds``; accuracies in [0, 1];
``gold_peak`` the share of questions with gold frames whose attention peaks on one,
``frame_accuracy`` the share of real frames whose digit the frame head reads; the seconds from
each run's checkpoint).
"""

from __future__ import annotations

import html
import sys
from typing import Any

from .answerer import Answerer
from .answering import load_clips
from .clips import QUESTION_KINDS, DigitClips
from .config import DataConfig
from .demo_figures import clip_figure, inline_png, table_html
from .demo_steps import DemoContext, DemoSection, train_or_reuse

__all__ = ["VIDEO_QA_MODELS", "video_qa_step"]

#: ``train_seconds`` key -> the run of :data:`~qkv.crossmodal.demo_steps.DEMO_RUNS` (and its
#: directory under the demo's): the model that sees the clip, and the control that does not.
VIDEO_QA_MODELS = {"full": "video-qa", "question_only": "video-qa-question"}
_LABELS = {"full": "video QA (sees the clip)", "question_only": "question-only control"}
_EXAMPLES = {"position": "<i>what is the third digit</i>", "count": "<i>how many sevens</i>",
             "after": "<i>which digit comes after the five</i>"}  # fmt: skip


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def video_qa_step(context: DemoContext) -> DemoSection:
    """Train (or reuse) and score the video QA model and its question-only control on the same
    test clips; one test clip per question kind answered by both."""
    answerers: dict[str, Answerer] = {}
    seconds: dict[str, float] = {}
    for key, name in VIDEO_QA_MODELS.items():
        seconds[key] = train_or_reuse(context, name)
        answerers[key] = Answerer.load(context.out / name)
    data = DataConfig(**answerers["full"].config["data"])
    test = load_clips(data, ("test",))["test"]
    scores = {key: a.evaluate(test) for key, a in answerers.items()}
    full, blind = scores["full"], scores["question_only"]
    metrics: dict[str, Any] = {
        "accuracy": round(full["accuracy"], 4),
        "question_only": round(blind["accuracy"], 4),
        "per_kind": {k: _rounded(full[f"accuracy_{k}"]) for k in data.question_kinds},
        "question_only_per_kind": {k: _rounded(blind[f"accuracy_{k}"]) for k in data.question_kinds},
        "gold_peak": _rounded(full["gold_peak"]),
        "frame_accuracy": _rounded(full["frame_accuracy"]),
        "train_seconds": seconds,
    }
    _say(f"  video-qa: test accuracy {metrics['accuracy']:.3f}, question only {metrics['question_only']:.3f}")
    return DemoSection(metrics, _video_html(metrics, _clips(context, answerers, test)))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _clips(context: DemoContext, answerers: dict[str, Answerer], test: DigitClips) -> list[str]:
    """The first test clip of each question kind answered by both models, as HTML figures: the
    frames over the full model's attention on each (gold frames in orange)."""
    kinds = test.kinds()
    index = [kinds.index(k) for k in QUESTION_KINDS if k in kinds]
    part = test.frames[index], test.lengths[index], [test.questions[i] for i in index]
    seen, weights = answerers["full"].answer(*part)
    blind, _ = answerers["question_only"].answer(*part)
    gold_answers = answerers["full"].answers
    out = []
    for j, i in enumerate(index):
        n = int(test.lengths[i])
        title = f"{test.questions[i]}?"
        path = clip_figure(test.frames[i, :n], weights[j, :n], test.gold[i], title=title,
                           path=context.figure(f"clip-{i}.png"))  # fmt: skip
        picture = inline_png(path, title) if path else "<p>(figures need matplotlib)</p>"
        gold = gold_answers[int(test.answers[i])]
        text = (f"sees the clip: <b>{html.escape(seen[j])}</b> ({'right' if seen[j] == gold else 'wrong'}), "
                f"question only: {html.escape(blind[j])}, answer: {html.escape(gold)}")  # fmt: skip
        out.append(f"<figure>{picture}<figcaption>{text}</figcaption></figure>")
    return out


def _video_html(metrics: dict[str, Any], shown: list[str]) -> str:
    rows = [[_LABELS["full"], metrics["accuracy"], *metrics["per_kind"].values(),
             f"{metrics['train_seconds']['full']:.0f} s"],
            [_LABELS["question_only"], metrics["question_only"], *metrics["question_only_per_kind"].values(),
             f"{metrics['train_seconds']['question_only']:.0f} s"]]  # fmt: skip
    header = ["model", "test accuracy", *metrics["per_kind"], "training"]
    peak, read = metrics["gold_peak"], metrics["frame_accuracy"]
    return f"""<h2>Video question answering: a question attends to the frames</h2>
<p>Clips of 6 to 12 frames of a moving handwritten digit, one question each, of the kinds
{", ".join(_EXAMPLES[k] for k in metrics["per_kind"])}. A ViT reads each frame (which also sees
the frame before it) and the question's token cross-attends to the frames; the control answers
from the question alone. Test clips show new handwriting.</p>
{table_html(header, rows)}
<p>The question's attention peaks on a gold frame (the frames holding the answer) for
{_share(peak)} of the questions that have one; the frame head reads {_share(read)} of the test
frames' digits.</p>
<p>One test clip per question kind; under each frame, the question's attention on it (the
gold frames in orange; the rest of its weight is on the null frame, "nothing here").</p>
<div class="strips">{"".join(shown)}</div>
"""


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"
