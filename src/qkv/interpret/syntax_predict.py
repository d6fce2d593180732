"""Each word's predicted head from word-level attention, by every map (Clark et al. 2019).

For word ``i`` and map ``W`` (:mod:`qkv.interpret.word_attention`), the word itself excluded:

- direction ``0``, the dependent attends to its head: ``argmax_j W[i, j]``;
- direction ``1``, the head attends to its dependent: ``argmax_j W[j, i]`` (the word that pays
  ``i`` the most attention; Clark et al.'s transposed maps).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["head_predictions"]


def head_predictions(attention: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Each word's predicted head by each map, in both directions (module docstring).

    Args:
        attention: ``(..., K, n, n)`` word-level attention of one sentence, or of a padded
            batch ``(B, K, n, n)`` with ``lengths``.
        lengths: ``(B,)`` words of each sentence of a batch (columns past them are never
            predicted).

    Returns:
        ``(..., 2, K, n)`` long: direction 0, then 1; ``-1`` where a sentence has one word.
    """
    n = attention.shape[-1]
    cannot = torch.eye(n, dtype=torch.bool)
    if lengths is not None:
        cannot = cannot | (torch.arange(n) >= lengths[:, None, None, None])  # (B, 1, 1, n)
        cannot = cannot[:, None]  # (B, 1, 1, n, n) against (B, 2, K, n, n)
    both = torch.stack([attention, attention.transpose(-1, -2)], -4).masked_fill(cannot, float("-inf"))
    pred = both.argmax(-1)
    return pred.masked_fill(torch.isinf(both.amax(-1)), -1)
