"""The localisation benchmark: does an explanation of a digit's class point at the digit?

A classifier trained on :func:`qkv.vision.located_digits` canvases (one digit among distractor
strokes; the class depends on the digit alone) is explained by every method of
:data:`qkv.interpret.IMAGE_METHODS` and by a random map, on fresh canvases drawn from the test
digits, and each map is scored against the digit's box by :mod:`qkv.interpret.localization`:
pointing game, energy in the box, deletion and insertion AUC. Every map explains the true class;
the deletion/insertion score is that class's probability.

    scores = localization_scores(clf, *located_test_set(clf_data, 200, seed=1))
    scores["rollout"]   # {"pointing": ..., "energy_in_box": ..., "deletion_auc": ..., "insertion_auc": ...}

What ``benchmarks/vision_explain.py`` and ``qkv demo vision`` run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..interpret.image import IMAGE_METHODS
from ..interpret.localization import deletion_auc, energy_in_box, insertion_auc, pointing_game
from .classifier import Classifier
from .config import DataConfig
from .data import load_digits, split
from .located import located_digits

__all__ = ["METRICS", "RANDOM", "localization_scores", "located_test_set", "random_maps"]

#: The scores of each method, in the order tables show them.
METRICS = ("pointing", "energy_in_box", "deletion_auc", "insertion_auc")
#: The name of the random-map baseline.
RANDOM = "random"


def located_test_set(data: DataConfig, n: int, *, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` canvases (images, labels, boxes) of ``data``'s canvas size drawn from its test digits
    (the digits split of ``data.seed``, so no canvas shows a digit the model trained on)."""
    digits = split(load_digits(), valid_frac=data.valid_frac, test_frac=data.test_frac, seed=data.seed)[
        "test"
    ]
    return located_digits(n, seed=seed, canvas=data.canvas, digits=digits)


def random_maps(n: int, size: tuple[int, int], *, seed: int) -> Tensor:
    """``(n, H, W)`` uniform noise: the baseline every method should beat."""
    return torch.rand((n, *size), generator=torch.Generator().manual_seed(seed))


def _method_maps(
    clf: Classifier, images: Tensor, labels: Tensor, method: str, ig_steps: int, batch: int
) -> Tensor:
    parts = [
        clf.explain(images[i : i + batch], method=method, target=labels[i : i + batch], steps=ig_steps).pixels
        for i in range(0, len(images), batch)
    ]
    return torch.cat(parts)


def _scores(clf: Classifier, images: Tensor, labels: Tensor, boxes: Tensor, maps: Tensor, steps: int,
            batch: int) -> dict[str, float]:  # fmt: skip
    deletion, insertion = [], []
    for i in range(0, len(images), batch):
        x, m = images[i : i + batch], maps[i : i + batch]
        targets = labels[i : i + batch].repeat_interleave(steps + 1)  # perturbation_curve's row order

        def score(frames: Tensor, targets: Tensor = targets) -> Tensor:
            return clf.predict(frames)[1][torch.arange(len(frames)), targets]

        kw = {"steps": steps, "baseline": "zero", "batch_size": len(targets)}
        deletion.append(deletion_auc(score, x, m, **kw))
        insertion.append(insertion_auc(score, x, m, **kw))
    return {
        "pointing": float(pointing_game(maps, boxes).mean()),
        "energy_in_box": float(energy_in_box(maps, boxes).mean()),
        "deletion_auc": float(torch.cat(deletion).mean()),
        "insertion_auc": float(torch.cat(insertion).mean()),
    }


def localization_scores(
    clf: Classifier, images: Tensor, labels: Tensor, boxes: Tensor, *, methods: Sequence[str] = IMAGE_METHODS,
    steps: int = 16, ig_steps: int = 16, seed: int = 0, batch: int = 50,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """``{method: {metric: mean over the images}}`` for ``methods`` and :data:`RANDOM`.

    Args:
        clf: a classifier of ``images``' size.
        images, labels, boxes: ``(N, C, H, W)``, ``(N,)``, ``(N, 4)`` (:func:`located_test_set`).
        methods: explanation methods (:data:`qkv.interpret.IMAGE_METHODS`).
        steps: parts of deletion and insertion; removed pixels become 0 (the canvas's black).
        ig_steps: integration points of ``ig``.
        seed: the random maps' seed.
        batch: images explained and perturbed at a time.

    Raises:
        ValueError: an unknown method, shapes that disagree. ImportError: ``ig`` without Captum.
    """
    if labels.shape != (len(images),) or boxes.shape != (len(images), 4):
        raise ValueError(
            f"labels, boxes: expected ({len(images)},) and ({len(images)}, 4), got "
            f"{tuple(labels.shape)} and {tuple(boxes.shape)}"
        )
    out = {}
    for method in methods:
        maps = _method_maps(clf, images, labels, method, ig_steps, batch)
        out[method] = _scores(clf, images, labels, boxes, maps, steps, batch)
    noise = random_maps(len(images), tuple(images.shape[-2:]), seed=seed)
    out[RANDOM] = _scores(clf, images, labels, boxes, noise, steps, batch)
    return out
