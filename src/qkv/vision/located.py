"""Digits at known places: a localisation benchmark whose right answer is known.

:func:`located_digits` puts one scikit-learn digit (8x8, upscaled 2x to 16x16) at a random spot
of a larger black canvas and draws distractor strokes (short straight lines of the digits' ink)
around it, never on it. The label is the digit's class, so a classifier must find the digit and
ignore the strokes, and ``boxes`` tell where the evidence is: an explanation of the class
should point inside the box.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .data import Images, load_digits

__all__ = ["DIGIT_SIDE", "located_digits"]

#: The side of a placed digit in pixels (8x8 digits upscaled 2x).
DIGIT_SIDE = 16
_STROKES = (2, 4)  # distractor strokes per canvas: at least, at most
_STROKE_LENGTH = (5, 10)  # pixels


def _upscaled(digits: Images) -> np.ndarray:
    """``(N, 16, 16)`` float32: each 8x8 digit upscaled 2x (bilinear)."""
    big = torch.nn.functional.interpolate(digits.images, scale_factor=DIGIT_SIDE / digits.image_size,
                                          mode="bilinear", align_corners=False)  # fmt: skip
    return big[:, 0].clamp(0, 1).numpy()  # (N, 1, 16, 16) -> (N, 16, 16)


def _ink_box(patch: np.ndarray, y: int, x: int) -> tuple[int, int, int, int]:
    """The pixel box ``(x0, y0, x1, y1)`` (inclusive-exclusive) of a patch's ink placed at ``(y, x)``."""
    rows, cols = np.nonzero(patch > 0)
    return x + int(cols.min()), y + int(rows.min()), x + int(cols.max()) + 1, y + int(rows.max()) + 1


def _stroke(canvas: np.ndarray, free: np.ndarray, rng: np.random.Generator) -> None:
    """Draw one straight stroke on ``canvas`` where ``free`` (tries a few spots; may draw none)."""
    side = canvas.shape[0]
    for _ in range(20):
        length = rng.integers(_STROKE_LENGTH[0], _STROKE_LENGTH[1] + 1)
        angle = rng.uniform(0, np.pi)
        y0, x0 = rng.uniform(0, side, size=2)
        t = np.linspace(0, length, 2 * length)
        ys = np.round(y0 + t * np.sin(angle)).astype(int)
        xs = np.round(x0 + t * np.cos(angle)).astype(int)
        inside = (ys >= 0) & (ys < side) & (xs >= 0) & (xs < side)
        ys, xs = ys[inside], xs[inside]
        if len(ys) >= _STROKE_LENGTH[0] and free[ys, xs].all():
            canvas[ys, xs] = np.maximum(canvas[ys, xs], rng.uniform(0.6, 1.0))
            return


def located_digits(
    n: int, *, seed: int, canvas: int = 32, digits: Images | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` canvases, each one digit at a random spot among distractor strokes.

    Args:
        n: how many images.
        seed: the generator's seed (the same seed, the same images).
        canvas: the side of the square canvas in pixels (at least 16, the placed digit's side).
        digits: the 8x8 digits to draw from (:func:`~qkv.vision.data.load_digits` or a split of
            it, so train and test canvases need not share a digit); default all of them.

    Returns:
        ``images (n, 1, canvas, canvas)`` float32 in [0, 1], ``labels (n,)`` int64 (the digit's
        class, nothing else decides it), ``boxes (n, 4)`` int64 ``(x0, y0, x1, y1)``: the
        pixel box of the digit's ink, ``x1``/``y1`` exclusive. Strokes never touch the digit's
        16x16 square (one pixel of margin), so every inked pixel inside the box is the digit's.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected an int >= 0, got {n!r}")
    if isinstance(canvas, bool) or not isinstance(canvas, int) or canvas < DIGIT_SIDE:
        raise ValueError(f"canvas: expected an int >= {DIGIT_SIDE} (a placed digit's side), got {canvas!r}")
    digits = load_digits() if digits is None else digits
    pool = _upscaled(digits)  # (M, 16, 16)
    rng = np.random.default_rng(seed)
    images = np.zeros((n, canvas, canvas), dtype=np.float32)
    labels, boxes = np.zeros(n, dtype=np.int64), np.zeros((n, 4), dtype=np.int64)
    for i in range(n):
        k = rng.integers(len(pool))
        y, x = rng.integers(0, canvas - DIGIT_SIDE + 1, size=2)
        images[i, y : y + DIGIT_SIDE, x : x + DIGIT_SIDE] = pool[k]
        free = np.ones((canvas, canvas), dtype=bool)
        free[max(y - 1, 0) : y + DIGIT_SIDE + 1, max(x - 1, 0) : x + DIGIT_SIDE + 1] = False
        for _ in range(rng.integers(_STROKES[0], _STROKES[1] + 1)):
            _stroke(images[i], free, rng)
        labels[i], boxes[i] = digits.labels[k], _ink_box(pool[k], int(y), int(x))
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels), torch.from_numpy(boxes)
