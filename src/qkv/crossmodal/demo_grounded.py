"""The grounded translation step of ``qkv demo cross-modal``: the grounded translator and its
text-only control trained side by side at demo size (:data:`GROUNDED_MODELS`), their exact
match on the test pairs (new handwriting) and the zero-shot ones (new numbers), and a few test
sentences with the strip, both translations and, per number word of the one that sees the
strip, its attention over the strip.

Its ``metrics.json`` entry::

    {"with_image": <test exact match>, "text_only": <the control's>,
     "zero_shot": {"with_image", "text_only"}, "train_seconds": {"with_image", "text_only"}}

(exact matches in [0, 1]; the seconds from each run's checkpoint).
"""

from __future__ import annotations

import html
import sys
from typing import Any

import torch

from .config import DataConfig
from .demo_figures import caption_figure, inline_png, table_html
from .demo_steps import DemoContext, DemoSection, train_or_reuse
from .grounded import GroundedPairs, number_words_of
from .grounded_translator import GroundedTranslator, Translation
from .grounding import load_pairs

__all__ = ["GROUNDED_MODELS", "grounded_step"]

#: ``metrics.json`` key -> the run of :data:`~qkv.crossmodal.demo_steps.DEMO_RUNS` (and its
#: directory under the demo's): the translator that sees the strip, and the control that does not.
GROUNDED_MODELS = {"with_image": "grounded", "text_only": "grounded-text"}
_LABELS = {"with_image": "grounded (sees the strip)", "text_only": "text-only control"}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def grounded_step(context: DemoContext) -> DemoSection:
    """Train (or reuse) and score the grounded translator and its text-only control on the same
    test and zero-shot pairs; a few test sentences translated by both."""
    translators: dict[str, GroundedTranslator] = {}
    seconds: dict[str, float] = {}
    for key, name in GROUNDED_MODELS.items():
        seconds[key] = train_or_reuse(context, name)
        translators[key] = GroundedTranslator.load(context.out / name)
    data = DataConfig(**translators["with_image"].config["data"])  # the control's is the same
    pairs = load_pairs(data, ("test", "zero_shot"))
    scores = {key: {split: t.evaluate(p) for split, p in pairs.items()} for key, t in translators.items()}
    metrics: dict[str, Any] = {
        **{key: round(scores[key]["test"]["exact_match"], 4) for key in GROUNDED_MODELS},
        "zero_shot": {key: round(scores[key]["zero_shot"]["exact_match"], 4) for key in GROUNDED_MODELS},
        "train_seconds": seconds,
    }
    _say(f"  grounded: test exact match {metrics['with_image']:.3f} with the image, "
         f"{metrics['text_only']:.3f} text only")  # fmt: skip
    shown = _sentences(context, translators, pairs["test"], count=1 if context.quick else 3)
    return DemoSection(metrics, _grounded_html(metrics, scores, shown))


def _sentences(context: DemoContext, translators: dict[str, GroundedTranslator], test: GroundedPairs,
               count: int) -> list[str]:  # fmt: skip
    """The first ``count`` test pairs of a number of two words or more, translated by both
    models, as HTML figures: the strip and, per number word of the translation with the image,
    its attention over the strip's patches; the sentences in the caption."""
    index = [i for i, n in enumerate(test.numbers) if len(n.split()) >= 2][:count]
    sources, images = [test.sources[i] for i in index], test.images[index]
    seen = translators["with_image"].translate(sources, images)
    blind = translators["text_only"].translate(sources, images)
    grid = translators["with_image"].model.grid
    out = []
    for i, s, b in zip(index, seen, blind):
        rows = torch.tensor([k for k, w in enumerate(s.words) if number_words_of(w)], dtype=torch.long)
        title = f"with the image: {s.number or '(no number)'}"
        path = caption_figure(test.images[i], [s.words[k] for k in rows.tolist()],
                              s.attention[rows][:, -grid[0] * grid[1] :], grid, title=title,
                              path=context.figure(f"grounded-{i}.png"))  # fmt: skip
        picture = inline_png(path, title) if path else "<p>(figures need matplotlib)</p>"
        lines = [("source", test.sources[i]), ("with the image", _verdict(s, test.targets[i])),
                 ("text only", _verdict(b, test.targets[i])), ("reference", test.targets[i])]  # fmt: skip
        text = "<br>".join(f"{name}: <i>{html.escape(line)}</i>" for name, line in lines)
        out.append(f"<figure>{picture}<figcaption>{text}</figcaption></figure>")
    return out


def _verdict(translation: Translation, target: str) -> str:
    return f"{translation.text} ({'right' if translation.text == target else 'wrong'})"


def _grounded_html(metrics: dict[str, Any], scores: dict[str, dict[str, dict[str, float]]],
                   shown: list[str]) -> str:  # fmt: skip
    rows = [[_LABELS[key], metrics[key], metrics["zero_shot"][key], s["test"]["number_match"],
             s["test"]["number_image_attention"] if key == "with_image" else "-",
             f"{metrics['train_seconds'][key]:.0f} s"] for key, s in scores.items()]  # fmt: skip
    header = ["translator", "test exact match", "zero-shot exact match", "test number words right",
              "number words' weight on the strip", "training"]  # fmt: skip
    return f"""<h2>Grounded translation: the number is only in the strip</h2>
<p>English sentences whose number is hidden (<i>[?]</i>) go to French with the number in words,
read from the strip: one Transformer whose decoder attends to the source words and the strip's
four patches, and the same model without the patches (the control: it can write the sentence,
not the number). Test pairs show new handwriting, zero-shot pairs numbers never seen in training;
greedy translations.</p>
{table_html(header, rows)}
<p>Test sentences translated by both; below the strip, one row per number word of the
translation that sees it: its attention over the strip (one colour scale from 0 to 1; the rest of
its weight is on the English words).</p>
<div class="strips">{"".join(shown)}</div>
"""
