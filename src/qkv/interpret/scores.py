"""One score per token, from any of the relevance results, for viewers and figures.

What each method returns, and what :func:`token_scores` makes of it::

    rollout / grad_rollout / flow(source=None) -> (T, T)   row i: what reaches output i
    flow(source=i) / integrated_gradients      -> (T,)
    token_scores(...)                          -> (T,) normalized, padding at 0
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["NORMALIZATIONS", "token_scores"]

NORMALIZATIONS = ("max", "sum", None)


def token_scores(
    relevance: Tensor,
    *,
    rows: int | Sequence[int] | None = None,
    keep: Tensor | None = None,
    exclude_self: bool = False,
    normalize: str | None = "max",
) -> Tensor:
    """Reduce a relevance result to one score per token.

    Args:
        relevance: ``(T, T)`` (rows = output positions, columns = input tokens) or ``(T,)``.
        rows: for ``(T, T)``: the output rows to average, e.g. ``0`` for ``[CLS]``; default:
            every kept row (right for mean-pooled sentence embeddings).
        keep: ``(T,)`` bool or 0/1 (an attention mask): tokens to score; the others (padding)
            get 0 and their rows are not averaged.
        exclude_self: for ``(T, T)``: zero the diagonal first, so each output row scores only
            the other tokens (the identity that rollout's residual and gradient rollout's
            ``R = I + ...`` start from otherwise dominates a mean over rows).
        normalize: ``"max"``: divide by the largest absolute score (scores in [-1, 1]);
            ``"sum"``: by the sum of absolute scores; ``None``: raw.

    Returns:
        ``(T,)`` float tensor.

    Raises:
        ValueError: a relevance that is not ``(T,)`` or ``(T, T)``, ``keep`` of another
            length, ``rows`` out of range, an unknown ``normalize``.
    """
    if (
        not isinstance(relevance, Tensor)
        or relevance.dim() not in (1, 2)
        or (relevance.dim() == 2 and relevance.shape[0] != relevance.shape[1])
    ):
        got = tuple(relevance.shape) if isinstance(relevance, Tensor) else type(relevance).__name__
        raise ValueError(f"relevance: expected (T, T) or (T,) for one sample, got {got}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize: expected one of 'max', 'sum' or None, got {normalize!r}")
    t = relevance.shape[-1]
    rel = relevance.detach().to(torch.promote_types(relevance.dtype, torch.float32))
    mask = torch.ones(t, dtype=torch.bool, device=rel.device)
    if keep is not None:
        if not isinstance(keep, Tensor) or tuple(keep.shape) != (t,):
            got = tuple(keep.shape) if isinstance(keep, Tensor) else type(keep).__name__
            raise ValueError(f"keep: expected shape (T,) = ({t},), got {got}")
        mask = keep.to(rel.device).bool()
    if rel.dim() == 2:
        if exclude_self:
            rel = rel * (1 - torch.eye(t, dtype=rel.dtype, device=rel.device))
        if rows is None:
            idx = mask.nonzero().flatten()
        else:
            idx = torch.as_tensor([rows] if isinstance(rows, int) else list(rows), dtype=torch.long)
            if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= t:
                raise ValueError(f"rows: expected indices in [0, {t}), got {rows!r}")
        rel = rel[idx.to(rel.device)].mean(dim=0) if idx.numel() else torch.zeros_like(rel[0])  # (T,)
    elif rows is not None or exclude_self:
        raise ValueError("rows/exclude_self: only for a (T, T) relevance")
    scores = torch.where(mask, rel, torch.zeros_like(rel))
    if normalize is not None:
        denom = scores.abs().amax() if normalize == "max" else scores.abs().sum()
        if denom > 0:
            scores = scores / denom
    return scores
