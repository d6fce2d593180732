"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

Shape legend (see :mod:`qkv._types`)::

    L   layers     H   heads     T   tokens (self-attention: Tq = Tk = T)
    ... optional batch dims

    attentions (L, ..., H, T, T) -> rollout (..., T, T)

Each layer's heads are fused (mean, max or min), the residual connection is modelled by mixing
in the identity, rows are renormalized, and the layers are multiplied bottom-up::

    A~_l = normalize_rows(0.5 * fuse_h(A_l) + 0.5 * I)      (add_residual=True)
    rollout = A~_L @ ... @ A~_2 @ A~_1

``rollout[i, j]`` is how much of input token ``j`` reaches output position ``i``; each row is a
distribution (sums to 1) whenever every layer's rows do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._types import AttentionMaps

__all__ = ["HEAD_FUSIONS", "as_layers", "layer_matrices", "rollout"]

HEAD_FUSIONS = ("mean", "max", "min")


def as_layers(attentions, *, kind: str = "encoder") -> Tensor:
    """``(L, ..., H, T, T)`` from a tensor, a sequence of per-layer tensors, or the ``kind`` maps
    of an :class:`qkv.AttentionMaps`.

    Raises:
        TypeError: another type. ValueError: fewer than 3 dims, ``Tq != Tk``, no layers,
        layers of different shapes.
    """
    if isinstance(attentions, AttentionMaps):
        if kind not in ("encoder", "decoder"):
            raise ValueError(f"kind: expected 'encoder' or 'decoder' (self-attention), got {kind!r}")
        layers = getattr(attentions, kind)
        if not layers:
            have = ", ".join(attentions.kinds()) or "nothing"
            raise ValueError(f"attentions: the AttentionMaps has no {kind} maps (it has {have}); pass kind=")
        attentions = layers
    if isinstance(attentions, Sequence) and not isinstance(attentions, (Tensor, str)):
        if not attentions or not all(isinstance(a, Tensor) for a in attentions):
            raise ValueError("attentions: expected a non-empty sequence of per-layer tensors")
        shapes = {tuple(a.shape) for a in attentions}
        if len(shapes) > 1:
            raise ValueError(f"attentions: layers of different shapes {sorted(shapes)}")
        attentions = torch.stack(list(attentions))  # (L, ..., H, T, T)
    if not isinstance(attentions, Tensor):
        raise TypeError(
            f"attentions: expected a tensor (L, H, T, T), a list of layers or AttentionMaps, got {type(attentions).__name__}"
        )
    if attentions.dim() < 4 or attentions.shape[-1] != attentions.shape[-2]:
        raise ValueError(
            f"attentions: expected self-attention weights (L, ..., H, T, T), got {tuple(attentions.shape)}"
        )
    return attentions


def layer_matrices(
    attentions,
    *,
    head_fusion: str = "mean",
    add_residual: bool = True,
    discard_ratio: float = 0.0,
    kind: str = "encoder",
) -> Tensor:
    """The per-layer matrices ``A~_l`` that rollout multiplies and attention flow uses as
    capacities: ``(L, ..., T, T)`` (see :func:`rollout` for the arguments)."""
    att = as_layers(attentions, kind=kind)
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion: expected one of {', '.join(HEAD_FUSIONS)}, got {head_fusion!r}")
    if (
        isinstance(discard_ratio, bool)
        or not isinstance(discard_ratio, (int, float))
        or not 0 <= discard_ratio < 1
    ):
        raise ValueError(f"discard_ratio: expected a number in [0, 1), got {discard_ratio!r}")
    att = att.detach()
    if head_fusion == "mean":
        a = att.mean(dim=-3)  # (L, ..., H, T, T) -> (L, ..., T, T)
    elif head_fusion == "max":
        a = att.amax(dim=-3)
    else:
        a = att.amin(dim=-3)
    t = a.shape[-1]
    eye = torch.eye(t, dtype=a.dtype, device=a.device)
    drop = int(discard_ratio * t)
    if drop:
        # Per row, zero the `drop` weakest links (never the token itself).
        ranked = a.masked_fill(eye.bool(), float("inf"))
        idx = ranked.topk(drop, dim=-1, largest=False).indices  # (L, ..., T, drop)
        a = a.scatter(-1, idx, 0.0)
    if add_residual:
        a = 0.5 * a + 0.5 * eye
    total = a.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, a / total.where(total > 0, torch.ones_like(total)), a)


def rollout(
    attentions: Tensor | Sequence[Tensor] | AttentionMaps,
    *,
    head_fusion: str = "mean",
    add_residual: bool = True,
    discard_ratio: float = 0.0,
    kind: str = "encoder",
) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020); see the module docstring for the formula.

    Args:
        attentions: ``(L, H, T, T)`` or ``(L, B, H, T, T)`` weights, a list of per-layer
            ``(H, T, T)``/``(B, H, T, T)`` tensors, or an :class:`qkv.AttentionMaps` (its
            ``kind`` maps), e.g. ``BertModel(..., need_weights=True).attentions`` or
            ``capture(...).to_maps()``. Layer 0 is the one nearest the input.
        head_fusion: ``"mean"`` (the paper), ``"max"`` or ``"min"`` over heads.
        add_residual: mix in the identity, ``0.5 A + 0.5 I`` (the residual connection).
        discard_ratio: per row, zero this fraction of the weakest links before
            renormalizing (never the token itself): a common denoising trick.
        kind: which maps of an ``AttentionMaps`` (``"encoder"`` or ``"decoder"``).

    Returns:
        ``(T, T)`` (``(B, T, T)`` for batched input), rows summing to 1 (a row stays 0 where a
        query attended to nothing in every layer without residual). No gradients.

    Raises:
        ValueError: not self-attention shaped, an unknown ``head_fusion``, ``discard_ratio``
            outside ``[0, 1)``.
    """
    layers = layer_matrices(
        attentions, head_fusion=head_fusion, add_residual=add_residual, discard_ratio=discard_ratio, kind=kind
    )
    out = layers[0]
    for a in layers[1:]:
        out = a @ out  # later layers act on what earlier layers mixed
    return out
