"""Retrieval metrics of a similarity matrix: recall@K from images to captions and back.

``similarity[i, j]`` scores image ``i`` against caption ``j``; ``positives[i, j]`` says which
pairs match (default: the diagonal; with repeated captions, every caption equal to the image's
own). Image->text recall@K is the share of images with a matching caption among their ``K``
highest-scoring captions; text->image recall@K the share of captions with a matching image among
their ``K`` highest-scoring images. Ties count against: a non-matching item scoring the same as the best
match ranks above it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["caption_positives", "retrieval_recalls"]


def _hits(sim: Tensor, positives: Tensor, k: int) -> float:
    """The share of rows whose best positive has fewer than ``k`` negatives scoring as high."""
    best = sim.masked_fill(~positives, float("-inf")).max(1, keepdim=True).values  # (R, 1)
    above = ((sim >= best) & ~positives).sum(1)  # (R,) negatives ranked above the best positive
    return float((above < k).float().mean())


def retrieval_recalls(
    similarity: Tensor, positives: Tensor | None = None, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """``{"i2t_r1", "t2i_r1", "i2t_r5", ...}`` of an images x captions ``similarity``.

    Raises:
        ValueError: ``similarity`` is not 2-D or empty, ``positives`` is not a bool matrix of its
            shape, a row or column without a positive, or a ``k`` < 1.
    """
    if similarity.dim() != 2 or not similarity.numel():
        raise ValueError(
            f"similarity: expected a non-empty (images, captions) matrix, got {tuple(similarity.shape)}"
        )
    if positives is None:
        if similarity.shape[0] != similarity.shape[1]:
            raise ValueError(f"positives: needed for a non-square similarity {tuple(similarity.shape)}")
        positives = torch.eye(similarity.shape[0], dtype=torch.bool)
    if positives.dtype != torch.bool or positives.shape != similarity.shape:
        raise ValueError(f"positives: expected a bool matrix of shape {tuple(similarity.shape)}, "
                         f"got {positives.dtype} {tuple(positives.shape)}")  # fmt: skip
    if not bool(positives.any(1).all()) or not bool(positives.any(0).all()):
        raise ValueError("positives: expected every image and every caption to have a match")
    out = {}
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"ks: expected ints >= 1, got {k!r}")
        out[f"i2t_r{k}"] = _hits(similarity, positives, k)
        out[f"t2i_r{k}"] = _hits(similarity.T, positives.T, k)
    return out


def caption_positives(captions: Sequence[str], candidates: Sequence[str]) -> Tensor:
    """``(len(captions), len(candidates))`` bool: True where candidate ``j`` is caption ``i``."""
    index: dict[str, list[int]] = {}
    for j, c in enumerate(candidates):
        index.setdefault(c, []).append(j)
    out = torch.zeros(len(captions), len(candidates), dtype=torch.bool)
    for i, c in enumerate(captions):
        out[i, index.get(c, [])] = True
    return out
