"""Is an image explanation right? Four scores of a pixel map against where the evidence is.

Shape legend: ``N`` images, ``C`` channels, ``H x W`` pixels; ``boxes (N, 4)`` int
``(x0, y0, x1, y1)`` pixel boxes, ``x1``/``y1`` exclusive (as :func:`qkv.vision.located_digits`
returns them); ``maps (N, H, W)``, larger = more important (e.g. ``ImageExplanation.pixels``).

- :func:`pointing_game`: 1 when the map's maximum lies inside the box (ties count as inside
  when any maximal pixel is: a constant map always hits), else 0 (Zhang et al. 2016, without
  the tolerance margin).
- :func:`energy_in_box`: the share of the map's positive mass inside the box,
  ``sum_box max(m, 0) / sum max(m, 0)`` (Wang et al. 2020's energy-based pointing game; 0 for a
  map with no positive value).
- :func:`deletion_auc` and :func:`insertion_auc` (Petsiuk et al. 2018): pixels are removed
  from the image (replaced by a baseline) or inserted into the baseline, most important
  first, in ``steps`` equal parts; the curve is the target score after each part, and its area
  by the trapezoid rule over the fraction of pixels in ``[0, 1]``. A good map makes deletion
  low (the score falls at once) and insertion high.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "BASELINES",
    "box_masks",
    "deletion_auc",
    "energy_in_box",
    "insertion_auc",
    "perturbation_curve",
    "pointing_game",
]

#: What removed pixels become: each image's mean (per channel), or 0.
BASELINES = ("mean", "zero")


def _check(maps: Tensor, boxes: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    if not isinstance(maps, Tensor) or maps.dim() != 3 or not maps.is_floating_point():
        got = f"{maps.dtype} {tuple(maps.shape)}" if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"maps: expected a float tensor (N, H, W), got {got}")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps: expected finite values, got NaN or inf")
    if boxes is None:
        return maps, None
    n, h, w = maps.shape
    if not isinstance(boxes, Tensor) or tuple(boxes.shape) != (n, 4):
        got = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes: expected a tensor ({n}, 4) of (x0, y0, x1, y1), got {got}")
    x0, y0, x1, y1 = boxes.long().unbind(-1)
    if bool(((x0 < 0) | (y0 < 0) | (x1 > w) | (y1 > h) | (x1 <= x0) | (y1 <= y0)).any()):
        raise ValueError(f"boxes: expected 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h}, got {boxes.tolist()}")
    return maps, boxes.long()


def box_masks(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """``(N, H, W)`` bool: True inside each image's box."""
    h, w = size
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    x0, y0, x1, y1 = (v.view(-1, 1, 1) for v in boxes.long().unbind(-1))
    return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def pointing_game(maps: Tensor, boxes: Tensor) -> Tensor:
    """``(N,)`` float, 1.0 where the map's maximum is inside the box, else 0.0."""
    maps, boxes = _check(maps, boxes)
    inside = box_masks(boxes, tuple(maps.shape[1:]))
    peak = maps.flatten(1).max(dim=1).values.view(-1, 1, 1)
    return ((maps == peak) & inside).flatten(1).any(dim=1).float()


def energy_in_box(maps: Tensor, boxes: Tensor) -> Tensor:
    """``(N,)`` float in [0, 1]: the share of the map's positive mass inside the box."""
    maps, boxes = _check(maps, boxes)
    positive = maps.clamp(min=0).double()
    inside = (positive * box_masks(boxes, tuple(maps.shape[1:]))).flatten(1).sum(1)
    total = positive.flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=1e-300), torch.zeros_like(total)).float()


def _baseline(images: Tensor, baseline: str) -> Tensor:
    if baseline not in BASELINES:
        raise ValueError(f"baseline: expected one of {', '.join(BASELINES)}, got {baseline!r}")
    if baseline == "zero":
        return torch.zeros_like(images)
    return images.mean(dim=(2, 3), keepdim=True).expand_as(images)


def perturbation_curve(
    score: Callable[[Tensor], Tensor], images: Tensor, maps: Tensor, *, insert: bool, steps: int = 16,
    baseline: str = "mean", batch_size: int = 256,
) -> Tensor:  # fmt: skip
    """The deletion (``insert=False``) or insertion curve: ``(N, steps + 1)`` scores.

    Point ``k`` is ``score`` of the images whose ``round(k * H * W / steps)`` most important
    pixels (by ``maps``, ties in pixel order) are removed (all channels set to ``baseline``) or,
    for insertion, of the baseline with only those pixels of the image.

    Args:
        score: ``(M, C, H, W) -> (M,)`` the target's score (e.g. its class probability);
            called under ``torch.no_grad``, on up to ``batch_size`` images at a time, each
            image's rows in order.
        images: ``(N, C, H, W)`` float.
        maps: ``(N, H, W)``.
        steps: parts the pixels are removed or inserted in.
        baseline: ``"mean"`` (each image's mean per channel) or ``"zero"``.

    Raises:
        ValueError: shapes that disagree, ``steps < 1``, an unknown baseline, a ``score`` that
            does not return ``(M,)``.
    """
    maps, _ = _check(maps)
    if (
        not isinstance(images, Tensor)
        or images.dim() != 4
        or images.shape[0:1] + images.shape[2:] != maps.shape
    ):
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images: expected (N, C, H, W) with (N, H, W) = {tuple(maps.shape)}, got {got}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
    n, _, h, w = images.shape
    empty = _baseline(images, baseline)
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)  # (N, H*W)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w).expand(n, -1)).view(n, 1, h, w)
    counts = [round(k * h * w / steps) for k in range(steps + 1)]
    frames = []
    for c in counts:
        chosen = rank < c  # (N, 1, H, W): the c most important pixels
        frames.append(torch.where(chosen, images, empty) if insert else torch.where(chosen, empty, images))
    stacked = torch.stack(frames, dim=1).flatten(0, 1)  # (N * (steps + 1), C, H, W)
    with torch.no_grad():
        scores = torch.cat([score(stacked[i : i + batch_size]) for i in range(0, len(stacked), batch_size)])
    if scores.shape != (len(stacked),):
        raise ValueError(
            f"score: expected ({len(stacked)},) scores, one per image, got {tuple(scores.shape)}"
        )
    return scores.view(n, steps + 1)


def _auc(curve: Tensor) -> Tensor:
    """Trapezoid area of ``(N, K + 1)`` evenly spaced points over [0, 1]."""
    k = curve.shape[1] - 1
    return (curve[:, :-1] + curve[:, 1:]).sum(dim=1) / (2 * k)


def deletion_auc(score: Callable[[Tensor], Tensor], images: Tensor, maps: Tensor, **kwargs) -> Tensor:
    """``(N,)`` area under the deletion curve (:func:`perturbation_curve`); lower is better."""
    return _auc(perturbation_curve(score, images, maps, insert=False, **kwargs))


def insertion_auc(score: Callable[[Tensor], Tensor], images: Tensor, maps: Tensor, **kwargs) -> Tensor:
    """``(N,)`` area under the insertion curve (:func:`perturbation_curve`); higher is better."""
    return _auc(perturbation_curve(score, images, maps, insert=True, **kwargs))
