"""``qkv match``: how well captions match an image, by a trained image-text matcher.

::

    qkv match --checkpoint runs/clip --index 3 "forty two" "four hundred and two" "twenty four"
    qkv match --checkpoint runs/clip --image strip.png "seven" "seventy"

The image is a test strip of the run's data set (``--index N``) or an image file (``--image``:
converted to grayscale and resized to the strips' 8 x 32). Prints, per caption, the cosine
similarity and the probability (the softmax of the scaled similarities over the captions given).
"""

from __future__ import annotations

import argparse
import json

from . import USER_ERRORS, CommandError, error_message, warnings_as_messages

__all__ = ["add_parser", "run", "strip_image"]


def add_parser(sub) -> None:
    m = sub.add_parser(
        "match",
        help="score captions against an image with a trained image-text matcher (qkv train --model clip)",
        description="Cosine similarity and probability of each caption for one image: a test strip of "
        "the run's data set (--index) or an image file (--image, made grayscale and resized to 8 x 32).",
    )
    m.add_argument(
        "--checkpoint", required=True, help="a run directory of qkv train --model clip (or a checkpoint)"
    )
    source = m.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", metavar="FILE", help="an image file (PNG, JPEG, ...)")
    source.add_argument("--index", type=int, metavar="N", help="the N-th test strip of the run's data set")
    m.add_argument("captions", nargs="+", help="the captions to score")
    m.add_argument("--json", action="store_true", help="print the scores as JSON")
    m.set_defaults(handler=run)


def strip_image(args: argparse.Namespace, image_shape: tuple[int, int, int], data: dict):
    """The image a command works on: ``(C, H, W)``, its description and its caption (None for
    a file): ``--image FILE`` resized to ``image_shape``, or the ``--index``-th test strip of
    the run's ``[data]`` table ``data``."""
    if args.image is not None:
        from ..vision.data import read_image

        c, h, w = image_shape
        return read_image(args.image, image_size=h, channels=c, image_width=w), args.image, None  # (C, h, w)
    from ..crossmodal.config import DataConfig
    from ..crossmodal.data import digit_strips

    d = DataConfig(**data)
    if args.index < 0:
        raise ValueError(f"--index: expected an int >= 0, got {args.index}")
    strips = digit_strips(args.index + 1, seed=d.seed, lang=d.lang, split="test", split_seed=d.split_seed)
    return strips.images[args.index], f"test strip {args.index}", strips.captions[args.index]


def run(args: argparse.Namespace) -> int:
    """Load the matcher, score the captions, print them best first."""
    from ..crossmodal.matcher import Matcher

    try:
        matcher = Matcher.load(args.checkpoint)
        with warnings_as_messages():
            image, name, truth = strip_image(args, matcher.image_shape, matcher.config["data"])
        sim = matcher.similarity(image, args.captions)[0]
        probs = matcher.probabilities(image, args.captions)[0]
    except USER_ERRORS as e:
        raise CommandError(error_message(e)) from None
    rows = sorted(zip(args.captions, sim.tolist(), probs.tolist()), key=lambda r: -r[2])
    if args.json:
        scores = [{"caption": c, "similarity": round(s, 4), "probability": round(p, 4)} for c, s, p in rows]
        print(json.dumps({"image": name, "caption": truth, "scores": scores}, indent=2, ensure_ascii=False))
        return 0
    print(f"{name}" + (f" (its caption: {truth!r})" if truth is not None else ""))
    for caption, s, p in rows:
        print(f"  {p:6.1%}  similarity {s:+.3f}  {caption}")
    return 0
