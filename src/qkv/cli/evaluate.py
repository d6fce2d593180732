"""``qkv evaluate``: score a trained model on a split of its data or on a whole TSV file (a
thin shell over :meth:`qkv.translation.translator.Translator.evaluate` and, for an image
classifier, :meth:`qkv.vision.classifier.Classifier.evaluate`: accuracy and the confusion matrix;
for a grounded translator, :meth:`qkv.crossmodal.grounded_translator.GroundedTranslator.evaluate`:
sentence and number-word exact match; for a speech recognizer, :meth:`qkv.speech.recognizer.Recognizer.evaluate`: word and character
error rates on voices never heard in training).

qkv evaluate --checkpoint DIR [--data FILE.tsv | --split test] [--beam K] [--ctc-weight L] [--limit N] [--json]

(``--ctc-weight``: a speech recognizer with a CTC head only, joint CTC/attention beam search.)

The application is the one of the checkpoint's stored ``[model]`` kind
(:func:`qkv.cli.application.of_checkpoint`).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from . import USER_ERRORS, CommandError, application, error_message, warnings_as_messages
from .checkpoint import add_checkpoint_options, load_translator

__all__ = ["add_parser", "rounded_metrics", "run"]


def add_parser(sub) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="score a trained model: BLEU, chrF, exact match, alignment error rate; an image classifier: "
        "accuracy and the confusion matrix",
        description=(
            "Decodes a split of the run's corpus (--split), or every pair of --data FILE.tsv (the whole file, "
            "read as in training, --data.reverse included), from the sentences as written, exactly as qkv translate does, and scores the text "
            "output against the references as written: sacrebleu's standard BLEU (cased, 13a tokenization) "
            "and chrF, each with the signature that says how it was computed; exact match; for a model "
            "trained on normalized text, 'BLEU normalized' (output and reference in the training form: a "
            "diagnostic, not comparable with published numbers); AER on built-in corpora. BLEU and chrF are "
            "rounded to 2 decimals, fractions to 4. An image classifier (qkv train --model vit) is scored on "
            "a split of its data set: accuracy and the confusion matrix (rows: true class, columns: predicted)."
        ),
    )
    add_checkpoint_options(ev)
    ev.add_argument(
        "--data",
        metavar="FILE.tsv",
        help="evaluate on the whole of this TSV file (every pair; no split) instead of the run's corpus",
    )
    ev.add_argument(
        "--split",
        default=None,
        help="the split of the run's corpus: train, valid, test or test_long (default test; not with --data)",
    )
    ev.add_argument(
        "--ctc-weight",
        type=float,
        default=0.0,
        metavar="L",
        help="a speech recognizer with a CTC head (speech-transformer): rank beam hypotheses by "
        "L * CTC + (1 - L) * attention log-probability (0, the default: attention alone)",
    )
    ev.add_argument("--limit", type=int, default=0, help="evaluate only the first N examples")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.set_defaults(handler=run)


#: Decimals of the metrics ``qkv evaluate`` reports: scores in [0, 100] get 2, fractions 4.
_DECIMALS = {
    "bleu": 2,
    "chrf": 2,
    "bleu_normalized": 2,
    "exact_match": 4,
    "aer": 4,
    "attention_correctness": 4,
    "number_match": 4,
    "number_image_attention": 4,
    "other_image_attention": 4,
}


def rounded_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` as reported: BLEU and chrF to 2 decimals, fractions to 4 (sacrebleu's
    100.00000000000004 is 100.0); counts and signatures as they are."""
    return {
        k: round(v, _DECIMALS[k]) if k in _DECIMALS and isinstance(v, float) else v
        for k, v in metrics.items()
    }


def run(args: argparse.Namespace) -> int:
    """Decode and score a split of the run's corpus, or the whole ``--data`` file; print the metrics."""
    if args.data and args.split is not None:
        raise CommandError(f"--split {args.split}: not used with --data (the whole file is evaluated)")
    app = application.of_checkpoint(args.checkpoint)
    if args.ctc_weight and app != "speech":
        raise CommandError(
            f"--ctc-weight {args.ctc_weight}: only a speech recognizer decodes with a CTC head"
        )
    if app == "vision":
        return _run_vision(args)
    if app == "crossmodal":
        return _run_crossmodal(args)
    if app == "speech":
        return _run_speech(args)
    return _run_translation(args)


def _run_translation(args: argparse.Namespace) -> int:
    """Exact match, BLEU and chrF (and AER where the corpus has alignments) of a translator."""
    tr = load_translator(args.checkpoint)
    try:
        with warnings_as_messages():
            if args.data:
                from ..translation.data import load_tsv

                d = tr.config["data"]
                corpus = load_tsv(
                    args.data,
                    lowercase=d["lowercase"],
                    split_punct=d["split_punct"],
                    reverse=bool(d.get("reverse", False)),
                    valid_frac=0.0,
                    test_frac=0.0,
                )
                examples = corpus["train"]  # valid_frac = test_frac = 0: every pair
            else:
                from ..translation.config import DataConfig
                from ..translation.training import load_corpus

                examples = load_corpus(DataConfig(**tr.config["data"]))[args.split or "test"]
            if args.limit:
                examples = examples[: args.limit]
            metrics = rounded_metrics(tr.evaluate(examples, beam=args.beam, alpha=args.alpha))
    except USER_ERRORS as e:
        raise CommandError(error_message(e)) from None
    if args.json:
        print(json.dumps({"model": tr.describe(), "parameters": tr.num_parameters, **metrics}, indent=2))
        return 0
    print(f"model: {tr.describe()}")
    what = args.split or "test"
    if args.data:
        what = f"{args.data} ({f'its first {args.limit} pairs' if args.limit else 'the whole file'})"
    print(f"{what}: {metrics['n']} examples, beam {args.beam}")
    print(f"  exact match      {metrics['exact_match']:.4f}")
    print(f"  BLEU             {metrics['bleu']:.2f}  (sacrebleu {metrics['bleu_signature']})")
    print(f"  chrF             {metrics['chrf']:.2f}  (sacrebleu {metrics['chrf_signature']})")
    if "bleu_normalized" in metrics:
        print(
            f"  BLEU normalized  {metrics['bleu_normalized']:.2f}  (output and reference in the training form, "
            "lowercased/split as in training; not comparable with published BLEU)"
        )
    if "aer" in metrics:
        print(f"  AER              {metrics['aer']:.4f}")
    stops = metrics.get("stops", {})
    if stops.get("repetition") or stops.get("limit"):
        print(
            f"  cut outputs      {stops.get('repetition', 0)} stopped repeating a fragment, "
            f"{stops.get('limit', 0)} reached the length limit"
        )
    return 0


def _run_vision(args: argparse.Namespace) -> int:
    """Accuracy and the confusion matrix of an image classifier on a split of its data set."""
    from ..vision.classifier import Classifier
    from ..vision.config import DataConfig
    from ..vision.training import load_splits

    if args.data:
        raise CommandError(
            f"--data {args.data}: an image classifier is evaluated on a split of its data set (--split)"
        )
    split = args.split or "test"
    if split not in ("train", "valid", "test"):
        raise CommandError(f"--split: expected train, valid or test for an image classifier, got {split!r}")
    try:
        clf = Classifier.load(args.checkpoint)
        with warnings_as_messages():
            images = load_splits(DataConfig(**clf.config["data"]))[split]
        n = args.limit or len(images)
        evaluation = clf.evaluate(images.images[:n], images.labels[:n])
    except USER_ERRORS as e:
        raise CommandError(error_message(e)) from None
    result = {
        "model": clf.describe(),
        "parameters": clf.num_parameters,
        "split": split,
        **evaluation.to_dict(),
    }
    result["accuracy"] = round(result["accuracy"], 4)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"model: {clf.describe()}")
    print(f"{split}: {evaluation.n} images")
    print(f"  accuracy  {result['accuracy']:.4f}")
    width = max(len(str(int(evaluation.confusion.max()))), 2)
    print("  confusion (rows: true class, columns: predicted)")
    for name, row in zip(evaluation.classes, evaluation.confusion.tolist()):
        print(f"  {name[:12]:>12} " + " ".join(f"{v:>{width}}" for v in row))
    return 0


def _crossmodal_splits(args: argparse.Namespace) -> tuple[str, ...]:
    """The splits of digit strips ``qkv evaluate`` scores: ``--split``, else test and zero_shot."""
    if args.data:
        raise CommandError(f"--data {args.data}: a cross-modal model is evaluated on its data set's strips")
    split = args.split or "test"
    if split not in ("valid", "test", "zero_shot"):
        raise CommandError(
            f"--split: expected valid, test or zero_shot for a cross-modal model, got {split!r}"
        )
    return ("test", "zero_shot") if args.split is None else (split,)


def _run_crossmodal(args: argparse.Namespace) -> int:
    """Recall@1/5/10 both ways of an image-text matcher on held-out strips and held-out numbers
    (a captioner: :func:`_run_captioner`)."""
    from ..crossmodal.config import DataConfig
    from ..crossmodal.matcher import Matcher
    from ..crossmodal.training import load_strips

    kind = application.kind_of_checkpoint(args.checkpoint)
    if kind.startswith("captioner"):
        return _run_captioner(args)
    if kind == "grounded":
        return _run_grounded(args)
    if kind == "video-qa":
        return _run_video_qa(args)
    splits = _crossmodal_splits(args)
    try:
        matcher = Matcher.load(args.checkpoint)
        with warnings_as_messages():
            strips = load_strips(DataConfig(**matcher.config["data"]), splits)
        result = {name: matcher.evaluate(_first(s, args.limit)) for name, s in strips.items()}
    except USER_ERRORS as e:
        raise CommandError(error_message(e)) from None
    result = {
        name: {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
        for name, r in result.items()
    }
    if args.json:
        print(json.dumps({"lang": matcher.lang, **result}, indent=2))
        return 0
    for name, r in result.items():
        print(f"{name}: {r['n']} strips, {r['captions']} distinct captions ({matcher.lang})")
        for k in (1, 5, 10):
            print(f"  R@{k:<2}  image->text {r[f'i2t_r{k}']:.4f}  text->image {r[f't2i_r{k}']:.4f}")
    return 0


def _run_captioner(args: argparse.Namespace) -> int:
    """Exact match, BLEU, chrF and attention correctness of a captioner (greedy captions, or
    ``--beam K``) on held-out strips and held-out numbers."""
    from ..crossmodal.captioner import Captioner
    from ..crossmodal.config import DataConfig
    from ..crossmodal.training import load_strips

    splits = _crossmodal_splits(args)
    try:
        captioner = Captioner.load(args.checkpoint)
        with warnings_as_messages():
            strips = load_strips(DataConfig(**captioner.config["data"]), splits)
        result = {
            name: captioner.evaluate(_first(s, args.limit), beam=args.beam or 1) for name, s in strips.items()
        }
    except USER_ERRORS as e:
        raise CommandError(error_message(e)) from None
    result = {name: rounded_metrics(r) for name, r in result.items()}
    if args.json:
        print(json.dumps({"lang": captioner.lang, **result}, indent=2))
        return 0
    for name, r in result.items():
        print(f"{name}: {r['n']} strips ({captioner.lang})")
        print(f"  exact match {r['exact_match']:.4f}  BLEU {r['bleu']:.2f}  chrF {r['chrf']:.2f}  "
              f"attention correctness {r['attention_correctness']:.4f}")  # fmt: skip
    return 0


def _run_grounded(args: argparse.Namespace) -> int:
    """Sentence and number-word exact match of a grounded translator (greedy translations) on
    held-out strips and held-out numbers, and where its words look."""
    from ..crossmodal.config import DataConfig
    from ..crossmodal.grounded_translator import GroundedTranslator
    from ..crossmodal.grounding import load_pairs

    splits = _crossmodal_splits(args)
    if args.beam not in (None, 1):
        raise CommandError(f"--beam {args.beam}: a grounded translator decodes greedily")
    try:
        translator = GroundedTranslator.load(args.checkpoint)
        with warnings_as_messages():
            pairs = load_pairs(DataConfig(**translator.config["data"]), splits)
        result = {
            name: translator.evaluate(p.take(args.limit) if args.limit else p) for name, p in pairs.items()
        }
    except USER_ERRORS as e:
        raise CommandError(error_message(e)) from None
    result = {name: rounded_metrics(r) for name, r in result.items()}
    if args.json:
        print(json.dumps({"model": translator.describe(), **result}, indent=2))
        return 0
    print(f"model: {translator.describe()}")
    for name, r in result.items():
        print(f"{name}: {r['n']} pairs  exact match {r['exact_match']:.4f}  number words {r['number_match']:.4f}  "
              f"weight on the image: number words {r['number_image_attention']:.4f}, "
              f"other words {r['other_image_attention']:.4f}")  # fmt: skip
    return 0


def _run_video_qa(args: argparse.Namespace) -> int:
    """Accuracy per question kind and overall of a video question answerer on held-out clips
    (test handwriting), and the share of questions whose attention peaks on a gold frame."""
    from ..crossmodal.answerer import Answerer
    from ..crossmodal.answering import load_clips
    from ..crossmodal.config import DataConfig

    if args.data:
        raise CommandError(
            f"--data {args.data}: a video question answerer is evaluated on its data set's clips"
        )
    split = args.split or "test"
    if split not in ("valid", "test"):
        raise CommandError(f"--split: expected valid or test for a video question answerer, got {split!r}")
    try:
        answerer = Answerer.load(args.checkpoint)
        with warnings_as_messages():
            clips = load_clips(DataConfig(**answerer.config["data"]), (split,))[split]
        metrics = answerer.evaluate(clips.take(args.limit) if args.limit else clips)
    except USER_ERRORS as e:
        raise CommandError(error_message(e)) from None
    result = {"variant": answerer.variant, split: {k: round(v, 4) if isinstance(v, float) else v
                                                  for k, v in metrics.items()}}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    r = result[split]
    peak = "n/a" if r["gold_peak"] is None else f"{r['gold_peak']:.4f}"
    print(f"{split}: {r['n']} clips ({answerer.variant})")
    print(
        f"  accuracy {r['accuracy']:.4f}  "
        + "  ".join(
            f"{k} {r[f'accuracy_{k}']:.4f}"
            for k in ("position", "count", "after")
            if r[f"accuracy_{k}"] is not None
        )
    )
    print(f"  attention peak on a gold frame {peak}")
    return 0


def _first(strips, limit: int):
    """The first ``limit`` strips (all with 0)."""
    if not limit:
        return strips
    return type(strips)(strips.images[:limit], strips.captions[:limit], strips.slots[:limit])


#: ``qkv evaluate`` of a speech recognizer: the name each split is reported under.
_SPEECH_SPLITS = {"test": "heldout_voices", "kal16": "flite_kal16", "valid": "valid_voices", "train": "train"}


def _run_speech(args: argparse.Namespace) -> int:
    """WER and CER of a speech recognizer on held-out espeak-ng voices and on flite's kal16."""
    from ..speech.config import DataConfig
    from ..speech.recognizer import Recognizer
    from ..speech.training import load_splits

    if args.data:
        raise CommandError(
            f"--data {args.data}: a speech recognizer is evaluated on its spoken numbers (--split)"
        )
    if args.split is not None and args.split not in _SPEECH_SPLITS:
        raise CommandError(
            f"--split: expected {', '.join(_SPEECH_SPLITS)} for a speech recognizer, got {args.split!r}"
        )
    splits = ("test", "kal16") if args.split is None else (args.split,)
    if not 0.0 <= args.ctc_weight <= 1.0:
        raise CommandError(f"--ctc-weight: expected a float in [0, 1], got {args.ctc_weight}")
    try:
        rec = Recognizer.load(args.checkpoint)
        with warnings_as_messages():
            sets = load_splits(DataConfig(**rec.config["data"]), splits)
        scores = {
            _SPEECH_SPLITS[s]: rec.evaluate(
                _first_spoken(sets[s], args.limit), beam=args.beam, ctc_weight=args.ctc_weight
            )
            for s in splits
        }
    except USER_ERRORS as e:
        raise CommandError(error_message(e)) from None
    result = {"model": rec.describe(), "beam": args.beam, "ctc_weight": args.ctc_weight,
              "wer": {k: round(v["wer"], 4) for k, v in scores.items()},
              "cer": {k: round(v["cer"], 4) for k, v in scores.items()},
              "monotonic": {k: round(v["monotonic"], 4) for k, v in scores.items()},
              "n": {k: v["n"] for k, v in scores.items()}}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"model: {result['model']}; beam {args.beam}, CTC weight {args.ctc_weight}")
    for name in scores:
        print(
            f"{name}: {result['n'][name]} utterances  WER {result['wer'][name]:.4f}  CER {result['cer'][name]:.4f}  "
            f"monotonic alignments {result['monotonic'][name]:.4f}"
        )
    return 0


def _first_spoken(spoken, limit: int):
    """The first ``limit`` utterances (all with 0)."""
    if not limit:
        return spoken
    return type(spoken)(spoken.features[:limit], spoken.texts[:limit], spoken.voices[:limit])
