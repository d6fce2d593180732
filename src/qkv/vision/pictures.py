"""One image through a trained classifier, ready to show: its attention per layer and head, and
each explanation method's map (what ``qkv viz --checkpoint DIR --image ...`` draws).

    picture = image_picture(Classifier.load("runs/digits"), image, methods=("rollout", "gradcam"))
    picture.attention     # L x (heads, T, T), T = the class token + the patches
    picture.maps          # {method: (N=1) patch map (h, w)}, for the viewer's overlays
    picture.pixels        # {method: (H, W) pixel map}, for a figure

The maps are :meth:`Classifier.explain`'s; this module only gathers them for one image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from ..interpret.image import IMAGE_METHODS, ImageExplanation
from .classifier import Classifier

__all__ = ["ImagePicture", "available_methods", "check_methods", "image_picture"]

#: The name of the raw-attention map in the viewer (whose own ``attention`` overlay is per head).
_ATTENTION_MAP = "attention (last layer)"


@dataclass(frozen=True)
class ImagePicture:
    """One image, what the classifier says about it and why.

    Attributes:
        image: ``(C, H, W)`` in [0, 1].
        attention: one ``(heads, T, T)`` per layer.
        prefix, grid: tokens before the patches (the class token), the patch grid ``(h, w)``.
        explanations: ``{method: ImageExplanation}`` of this image (batch of one).
        predicted, probability: the predicted class and its probability.
        label: the true class when known, else ``None``.
        title: one line naming the image and the prediction.
    """

    image: Tensor
    attention: list[Tensor]
    prefix: int
    grid: tuple[int, int]
    explanations: dict[str, ImageExplanation]
    predicted: str
    probability: float
    label: str | None
    title: str

    @property
    def maps(self) -> dict[str, Tensor]:
        """``{name: (h, w)}`` patch maps for the viewer (raw attention renamed, the page's own
        ``attention`` overlay being per layer and head)."""
        return {
            (_ATTENTION_MAP if m == "attention" else m): e.patches[0] for m, e in self.explanations.items()
        }

    @property
    def pixels(self) -> dict[str, Tensor]:
        """``{method: (H, W)}`` pixel maps for a figure."""
        return {m: e.pixels[0] for m, e in self.explanations.items()}


def available_methods() -> tuple[str, ...]:
    """Every image method this installation runs: ``ig`` only when Captum is installed."""
    try:
        import captum  # noqa: F401
    except ImportError:
        return tuple(m for m in IMAGE_METHODS if m != "ig")
    return IMAGE_METHODS


def check_methods(methods: Sequence[str]) -> list[str]:
    """``methods`` without duplicates, in order.

    Raises:
        ValueError: none, or a name not in :data:`qkv.interpret.IMAGE_METHODS` (they are listed).
    """
    out: list[str] = []
    for m in methods:
        if m not in IMAGE_METHODS:
            raise ValueError(f"method: expected some of {', '.join(IMAGE_METHODS)}, got {m!r}")
        if m not in out:
            out.append(m)
    if not out:
        raise ValueError(f"method: expected at least one of {', '.join(IMAGE_METHODS)}, got none")
    return out


def image_picture(
    clf: Classifier, image: Tensor, *, methods: Sequence[str] = IMAGE_METHODS, label: int | None = None,
    name: str = "image", ig_steps: int = 32,
) -> ImagePicture:  # fmt: skip
    """``image (C, H, W)`` (as :meth:`Classifier.predict` takes it) through ``clf``: attention,
    prediction and every method's explanation of the predicted class.

    Raises:
        ValueError: an image of another shape, an unknown method, ``label`` out of range.
        ImportError: ``ig`` without Captum.
    """
    methods = check_methods(methods)
    if label is not None and not 0 <= label < len(clf.classes):
        raise ValueError(f"label: expected a class from 0 to {len(clf.classes) - 1}, got {label!r}")
    x = clf.check_images(image)[:1]
    predicted, probs = clf.predict(x)
    k = int(predicted[0])
    explanations = {m: clf.explain(x, method=m, target=k, steps=ig_steps) for m in methods}
    grid = next(iter(explanations.values())).grid
    truth = None if label is None else clf.classes[label]
    said = f"predicted {clf.classes[k]!r} ({float(probs[0, k]):.0%})"
    title = f"{name}: {said}" + ("" if truth is None else f", true class {truth!r}")
    return ImagePicture(
        image=x[0], attention=[a[0] for a in clf.attention(x)], prefix=grid.prefix, grid=(grid.h, grid.w),
        explanations=explanations, predicted=clf.classes[k], probability=float(probs[0, k]), label=truth,
        title=title,
    )  # fmt: skip
