"""``qkv demo``: train three translators on built-in data and write a report (a thin shell over
:func:`qkv.translation.demo.run_demo`); ``qkv demo vision``: a Vision Transformer on digits and the
localisation benchmark of its explanations (:func:`qkv.vision.demo.run_vision_demo`); ``qkv demo
cross-modal``: a CLIP-style matcher, Show, Attend and Tell captioners and a grounded translator on
strips of handwritten digits, and video question answering on clips of them
(:func:`qkv.crossmodal.demo.run_crossmodal_demo`); ``qkv demo
speech``: Listen, Attend and Spell against a Transformer on spoken numbers, and their alignments
(:func:`qkv.speech.demo.run_speech_demo`); ``qkv demo --examples`` prints the four worked examples
of the source articles (:mod:`qkv.explain`); the fourth, attention pooling, also trains three tiny
models on the adding problem (:func:`qkv.examples.adding.compare_pooling`, seconds).

qkv demo [translation|vision|cross-modal|speech] [--out DIR] [--fresh] [--quick] [--json]
qkv demo --examples [--precision P] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from . import CommandError, error_message
from .explain import add_output_options

__all__ = ["DEMO_OUT", "NEXT_HINT", "add_parser", "run"]

#: Where each demo writes its models and report when ``--out`` is not given.
DEMO_OUT = {"translation": "runs/demo", "vision": "runs/demo-vision", "cross-modal": "runs/demo-cross-modal",
            "speech": "runs/demo-speech"}  # fmt: skip

#: The last lines of the translation demo (on stderr): the other demos, what they do and write.
NEXT_HINT = (
    "next: `qkv demo vision` trains two small Vision Transformers (handwritten digits, and digits "
    "among distractor strokes), scores how well each image explanation method points at the digit, "
    "and writes runs/demo-vision/report.html (a few minutes on 2 cores)\n"
    "next: `qkv demo cross-modal` trains a CLIP-style matcher of handwritten digit strips and their "
    "captions, Show, Attend and Tell captioners in English, French and German and a translator that reads "
    "a sentence's hidden number from the strip, and a model answering questions about clips of the digits, and "
    "writes runs/demo-cross-modal/report.html (each word's attention over the strip, each question's over the "
    "frames; under 5 minutes on 2 cores)"
)


def add_parser(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="train three translators (no attention, Bahdanau, Transformer) and write a report; "
        "--examples: print the four worked examples",
        description=(
            "Trains three translators on the built-in numbers-de corpus (numbers written as digits -> "
            "German number words): none, the seq2seq baseline that reads one fixed context vector; "
            "bahdanau, seq2seq with additive attention; transformer, a small Transformer. Evaluates each "
            "on the held-out test set and on its longest inputs, and writes into --out: metrics.json, "
            "heatmaps/*.png (where the attention models look on long inputs) and report.html (one offline "
            "page: the scores, the heatmaps and each model's translations, wrong ones marked). A few "
            "minutes on 2 cores; a finished model is reused on the next run (--fresh retrains it). "
            "With --examples: the four worked examples of the source articles (Seq2Seq, self-attention, "
            "kernel regression, attention pooling) are printed step by step; the last also trains three tiny "
            "models on the adding problem (the article's pooling layer as written, fixed, and mean pooling; "
            "seconds) and prints their errors in training and inference mode. "
            "qkv demo vision: a Vision Transformer on handwritten digits, another on digits placed among "
            "distractor strokes, and how well each image explanation method (attention, rollout, grad, gradcam, "
            "ig) points at the digit, against a random map; writes runs/demo-vision/ (metrics.json, the two "
            "checkpoints, report.html). "
            "qkv demo cross-modal: a CLIP-style matcher of strips of handwritten digits and their English "
            "captions (recall@1 and @5 on new handwriting, recall@1 on numbers never captioned in training) and "
            "Show, Attend and Tell captioners in English, French and German (exact match, BLEU, attention "
            "correctness), and an English-to-French translator that reads the sentence's hidden number from "
            "the strip against its text-only control (exact match), and a video question answering model "
            "against its question-only control (accuracy per question kind on clips of new handwriting); "
            "writes runs/demo-cross-modal/ (metrics.json, the eight checkpoints, report.html with each "
            "generated word's attention over the strip and each question's over the frames). "
            "qkv demo speech: Listen, Attend and Spell and a Transformer trained on numbers spoken by espeak-ng and "
            "flite voices, scored (WER, CER, the share of monotonic alignments) on held-out espeak-ng voices and "
            "flite's kal16; writes runs/demo-speech/ (metrics.json, the two checkpoints, report.html with each "
            "model's attention under the spectrogram of held-out utterances). Needs espeak-ng and flite."
        ),
        epilog="Examples: qkv demo;  qkv demo --quick --out /tmp/demo;  qkv demo vision;  "
        "qkv demo cross-modal;  qkv demo speech;  qkv demo --examples --precision 2",
    )
    demo.add_argument(
        "which",
        nargs="?",
        choices=tuple(DEMO_OUT),
        default="translation",
        help="translation (the default: the three translators), vision (a ViT on digits, a ViT on located "
        "digits, and how well each image explanation method points at the digit: runs/demo-vision/), "
        "cross-modal (a matcher, captioners and a grounded translator of handwritten digit strips, video "
        "question answering on clips of them: runs/demo-cross-modal/) or speech (LAS and a Transformer on spoken numbers, their alignments: "
        "runs/demo-speech/)",
    )
    demo.add_argument(
        "--examples",
        action="store_true",
        help="print the four worked examples step by step (the last trains three tiny models, seconds)",
    )
    demo.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output directory (default runs/demo; vision: runs/demo-vision; cross-modal: runs/demo-cross-modal; "
        "speech: runs/demo-speech)",
    )
    demo.add_argument("--fresh", action="store_true", help="retrain even when a finished model is there")
    demo.add_argument(
        "--quick",
        action="store_true",
        help="a much smaller run (translation: 600 pairs, one epoch; vision, speech: tiny models, 3 steps; "
        "cross-modal: 128 strips, 3 steps; seconds): "
        "a smoke test, its scores mean nothing",
    )
    add_output_options(
        demo,
        precision_help="with --examples: decimals shown (default 4)",
        json_help="print the metrics (what metrics.json holds) on stdout when done; with --examples: "
        "the four examples as one JSON object",
        precision_default=None,
    )
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Train and report (or print the worked examples: ``--examples``); options of the other mode
    are errors."""
    if args.examples:
        unused = [o for o, v in (("--out", args.out), ("--fresh", args.fresh), ("--quick", args.quick),
                                 (args.which, args.which != "translation")) if v]  # fmt: skip
        if unused:
            raise CommandError(f"{'/'.join(unused)}: not used with --examples (it writes no run)")
        return _examples(args)
    if args.precision is not None:
        raise CommandError("--precision: only used with --examples (the report's numbers are fixed)")
    errors: tuple[type[Exception], ...] = (ValueError, ImportError, FileExistsError)
    stopped: tuple[type[Exception], ...] = ()  # a demo's "training interrupted" error, with its exit code
    if args.which == "vision":
        from ..vision.demo import run_vision_demo as run_demo
    elif args.which == "cross-modal":
        from ..crossmodal.demo import DemoInterrupted
        from ..crossmodal.demo import run_crossmodal_demo as run_demo

        stopped = (DemoInterrupted,)
    elif args.which == "speech":
        from ..speech.demo import run_speech_demo as run_demo
        from ..speech.synthesizers import SynthesizerMissing

        errors += (SynthesizerMissing,)
    else:
        from ..translation.demo import run_demo
    try:
        report = run_demo(args.out or DEMO_OUT[args.which], fresh=args.fresh, quick=args.quick)
    except errors as e:
        raise CommandError(error_message(e)) from None
    except stopped as e:
        print(f"qkv: {e}", file=sys.stderr)
        return e.exit_code
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False))
    if args.which == "translation":
        print(NEXT_HINT, file=sys.stderr)
    return 0


def _examples(args: argparse.Namespace) -> int:
    from .. import explain as ex

    examples = [
        ("seq2seq", "1/4  Seq2Seq with attention (article 000): one decoder step", ex.explain_seq2seq),
        ("self_attention", "2/4  Self-attention (article 004), step by step", ex.explain_self_attention),
        (
            "kernel_regression",
            "3/4  Kernel regression (article 001): attention before deep learning",
            ex.explain_kernel_regression,
        ),
        (
            "pooling",
            "4/4  Attention pooling (article 002): the article's layer and its trap",
            ex.explain_pooling,
        ),
    ]
    if args.json:
        doc = {name: make().to_dict() for name, _, make in examples}
        doc["adding_problem"] = _adding_comparison().to_dict()
        print(json.dumps(doc, indent=2, allow_nan=False))
        return 0
    precision = 4 if args.precision is None else args.precision
    for i, (_, heading, make) in enumerate(examples):
        if i:
            print()
        bar = "#" * (len(heading) + 4)
        print(f"{bar}\n# {heading} #\n{bar}\n")
        print(make().to_text(precision=precision), flush=True)
    print("\nTrained on the adding problem (the sum of the two marked values of 100; a few seconds):\n")
    print(_adding_comparison().to_text(precision=precision))
    return 0


def _adding_comparison():
    """The article's worked example trained: :func:`qkv.examples.adding.compare_pooling`."""
    from ..examples.adding import compare_pooling

    return compare_pooling()
