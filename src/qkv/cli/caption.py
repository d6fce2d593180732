"""``qkv caption``: a trained captioner's caption of an image, and where each word looked.

::

    qkv caption --checkpoint runs/captioner --index 3
    qkv caption --checkpoint runs/captioner --image strip.png --beam 5

The image is a test strip of the run's data set (``--index N``) or an image file (``--image``:
converted to grayscale and resized to the strips' 8 x 32). Prints the caption and, per word,
the strip slot its attention peaks on (slot 0 is the leftmost digit) and the peak's weight.
"""

from __future__ import annotations

import argparse
import json

from . import USER_ERRORS, CommandError, error_message, warnings_as_messages
from .match import strip_image

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    c = sub.add_parser(
        "caption",
        help="caption an image with a trained captioner (qkv train --model captioner), with each word's attention",
        description="The caption of one image, a test strip of the run's data set (--index) or an image file "
        "(--image, made grayscale and resized to 8 x 32), by beam search; per word, the strip slot its "
        "attention peaks on.",
    )
    c.add_argument(
        "--checkpoint", required=True, help="a run directory of qkv train --model captioner (or a checkpoint)"
    )
    source = c.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", metavar="FILE", help="an image file (PNG, JPEG, ...)")
    source.add_argument("--index", type=int, metavar="N", help="the N-th test strip of the run's data set")
    c.add_argument("--beam", type=int, default=3, metavar="K", help="beam size (1: greedy; default 3)")
    c.add_argument("--json", action="store_true", help="print the caption and its attention peaks as JSON")
    c.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the captioner, caption the image, print the caption and each word's peak slot."""
    from ..crossmodal.captioner import Captioner

    try:
        captioner = Captioner.load(args.checkpoint)
        with warnings_as_messages():
            image, name, truth = strip_image(args, captioner.image_shape, captioner.config["data"])
        cap = captioner.caption(image, beam=args.beam)[0]
    except USER_ERRORS as e:
        raise CommandError(error_message(e)) from None
    peaks = [float(w) for w in cap.attention.max(-1).values] if cap.words else []
    if args.json:
        words = [
            {"word": w, "slot": s, "weight": round(p, 4)} for w, s, p in zip(cap.words, cap.peak_slots, peaks)
        ]
        print(json.dumps({"image": name, "reference": truth, "caption": cap.text, "stop": cap.stop,
                          "log_prob": round(cap.score, 4), "words": words}, indent=2, ensure_ascii=False))  # fmt: skip
        return 0
    print(f"{name}" + (f" (its caption: {truth!r})" if truth is not None else ""))
    print(f"  caption: {cap.text}" + ("  (cut at the word limit)" if cap.stop == "limit" else ""))
    for word, slot, peak in zip(cap.words, cap.peak_slots, peaks):
        print(f"  {word:<12} looks at slot {slot} ({peak:.0%} of its attention on one patch)")
    return 0
