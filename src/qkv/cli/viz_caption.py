"""The captioner mode of ``qkv viz``: a captioner of ``qkv train --model captioner`` (or
``captioner-transformer``) on one image, each word it writes with its attention over the image.

    qkv viz --checkpoint runs/captioner --index 2                    # test strip 2 -> attention.html
    qkv viz --checkpoint runs/captioner --image strip.png --png words.png

The image is a test strip of the run's data set (``--index N``) or an image file (``--image``:
made grayscale and resized to the strips' 8 x 32), as ``qkv caption`` reads it. The caption
comes from beam search (``--beam K``, default 3); the picture
(:func:`qkv.crossmodal.pictures.caption_picture`) holds every cross-attention map of its words.
The HTML viewer (:func:`qkv.viz.save_crossmodal_html`) shows the words over the image (hover a
word for its attention, a patch for the words' weights on it; layer and head selectors for a
Transformer decoder); ``--png`` draws one overlay per word (:func:`qkv.viz.image_word_maps`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import USER_ERRORS, CommandError, error_message, warnings_as_messages

__all__ = ["DEFAULT_BEAM", "run_caption"]

#: ``--beam`` when not given (as ``qkv caption``).
DEFAULT_BEAM = 3


def run_caption(args: argparse.Namespace, html: Path | None, figure: Path | None, size) -> int:
    """Caption the image of ``--index``/``--image``; write ``html`` and/or ``figure``."""
    from ..crossmodal.captioner import Captioner
    from ..crossmodal.pictures import caption_picture
    from .match import strip_image

    beam = DEFAULT_BEAM if args.beam is None else args.beam
    try:
        captioner = Captioner.load(Path(args.checkpoint).expanduser())
        with warnings_as_messages():
            image, name, truth = strip_image(args, captioner.image_shape, captioner.config["data"])
        picture = caption_picture(captioner, image, beam=beam, name=name)
    except USER_ERRORS as e:
        raise CommandError(error_message(e)) from None
    print(picture.title)
    if truth is not None:
        print(f"  its caption: {truth!r}")
    if figure is not None:
        from ..viz import image_word_maps

        try:
            image_word_maps(
                picture.image, picture.word_maps(), picture.words, title=picture.title, path=figure
            )
        except ImportError as e:
            raise CommandError(f"--png: {e}") from None
        print(f"wrote {figure} ({size(figure)}): one overlay per word ({len(picture.words)} words)")
    if html is not None:
        from ..viz import save_crossmodal_html

        save_crossmodal_html(html, picture.image, picture.attention, picture.words, grid=picture.grid,
                             title=picture.title)  # fmt: skip
        layers, heads = picture.attention.shape[:2]
        print(f"wrote {html} ({size(html)}): {len(picture.words)} words, {layers} layer(s) x {heads} head(s)")
    return 0
