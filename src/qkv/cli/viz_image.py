"""The image mode of ``qkv viz``: an image classifier of ``qkv train --model vit`` on one image.

    qkv viz --checkpoint runs/digits --image 7                      # test image 7 -> attention.html
    qkv viz --checkpoint runs/digits --image my.png --method rollout gradcam --png methods.png

``--image``: an index into the test split of the run's data set (``[data]`` of the checkpoint),
or an image file (read, converted to the model's channels, resized to its image size:
:func:`qkv.vision.data.read_image`). The picture (:func:`qkv.vision.pictures.image_picture`)
explains the predicted class by every ``--method`` (default all of
:data:`qkv.interpret.IMAGE_METHODS`; ``ig`` only when Captum is installed). The HTML viewer
(:func:`qkv.viz.save_image_html`) holds the attention of every layer and head and each method's
map as an overlay; ``--png`` draws the methods side by side (:func:`qkv.viz.image_methods`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import USER_ERRORS, CommandError, error_message, warnings_as_messages

__all__ = ["run_image"]


def _methods(given: list[str] | None) -> list[str]:
    from ..vision.pictures import available_methods, check_methods

    if given is None:
        return list(available_methods())
    names = [n.strip().lower() for text in given for n in text.split(",") if n.strip()]
    try:
        methods = check_methods(names)
    except ValueError as e:
        raise CommandError(f"--{e}") from None
    if "ig" in methods and "ig" not in available_methods():
        raise CommandError("--method ig: integrated gradients need Captum: pip install 'qkv[interpret]'")
    return methods


def _image(clf, value: str):
    """``(image (C, H, W), true label or None, name)`` of ``--image``."""
    from ..vision.config import DataConfig
    from ..vision.data import read_image
    from ..vision.training import load_splits

    if value.strip().lstrip("-").isdigit():
        index = int(value)
        with warnings_as_messages():
            test = load_splits(DataConfig(**clf.config["data"]))["test"]
        if not 0 <= index < len(test):
            raise CommandError(
                f"--image: expected a test image index from 0 to {len(test) - 1} "
                f"({len(test)} test images of {clf.config['data']['dataset']!r}), got {index}"
            )
        return test.images[index], int(test.labels[index]), f"test image {index}"
    try:
        image = read_image(value, image_size=clf.image_size, channels=clf.channels)
    except (ValueError, FileNotFoundError) as e:
        raise CommandError(f"--{error_message(e)}") from None
    return image, None, Path(value).name


def _load(path: str):
    from ..vision.classifier import Classifier

    try:
        return Classifier.load(Path(path).expanduser())
    except USER_ERRORS as e:
        raise CommandError(f"--checkpoint: {error_message(e)}") from None


def run_image(args: argparse.Namespace, html: Path | None, figure: Path | None, size) -> int:
    """Explain one image of ``--image`` by ``--method``; write ``html`` and/or ``figure``."""
    from ..vision.pictures import image_picture

    methods = _methods(args.method)
    clf = _load(args.checkpoint)
    image, label, name = _image(clf, args.image)
    try:
        picture = image_picture(clf, image, methods=methods, label=label, name=name, ig_steps=args.ig_steps)
    except USER_ERRORS as e:
        raise CommandError(error_message(e)) from None
    print(f"model: {clf.describe()}")
    print(picture.title)
    if figure is not None:
        from ..viz import image_methods

        try:
            image_methods(picture.image, picture.pixels, title=picture.title, path=figure)
        except ImportError as e:
            raise CommandError(f"--png: {e}") from None
        print(f"wrote {figure} ({size(figure)}): {', '.join(methods)} side by side")
    if html is not None:
        from ..viz import save_image_html

        save_image_html(html, picture.image, picture.attention, prefix=picture.prefix, grid=picture.grid,
                        maps=picture.maps, title=picture.title)  # fmt: skip
        layers, heads = len(picture.attention), picture.attention[0].shape[0]
        print(
            f"wrote {html} ({size(html)}): {layers} layers x {heads} heads, maps: {', '.join(picture.maps)}"
        )
    return 0
