"""Which patches and which words made an image-caption similarity high: Chefer et al.'s
relevance through both towers of a CLIP-style dual encoder.

Shape legend: ``B`` pairs, ``C`` channels, ``H x W`` pixels, ``h x w`` patches, ``T`` words,
``E`` the shared embedding dim, ``L`` layers, ``heads`` heads.

For each pair ``b`` (image ``b`` with caption ``b``) the target is its cosine similarity
``s_b = v_b . t_b`` (``v``, ``t`` the unit-length embeddings). Each tower keeps its own
self-attention layers ``A_l (B, heads, T', T')`` and gets (Chefer, Gur, Wolf 2021, "Generic
Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers",
eqs. 5-6, as their CLIP notebook applies them to each tower of a dual encoder)::

    R = I;  R <- R + mean_heads( relu( ds/dA_l * A_l ) ) @ R     (input side first)
    patch map   = R_image[class token, patches]     (B, h, w)    (mean of the patch rows when
                                                                  the ViT mean-pools)
    word scores = R_text[class token, words]        (B, T)       (padding: exactly 0)

The towers meet only in ``s``, so the image relevance is the one :func:`qkv.interpret.grad_rollout`
gives for the ViT alone with ``s`` as the target and the caption embedding held fixed (and the
other way round); the pairs never mix (``s_b`` reaches only pair ``b``'s graph), so the maps of
a batch are those of each pair alone. ``relu`` keeps positive evidence only: a patch that
lowers the similarity scores 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..capture import capture
from .gradients import gradient_relevance
from .patch_grid import patch_grid

__all__ = ["MatchRelevance", "match_relevance"]


class MatchRelevance(NamedTuple):
    """What :func:`match_relevance` returns: ``patches (B, h, w)``, ``words (B, T)`` (padding 0)."""

    patches: Tensor
    words: Tensor


@contextmanager
def _differentiable(model: nn.Module) -> Iterator[None]:
    """Eval mode, gradients on and every parameter requiring them, for the block (then back):
    the weights must be part of the graph even when the model is frozen."""
    was = model.training
    frozen = [p for p in model.parameters() if not p.requires_grad]
    try:
        model.eval()
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for p in frozen:
            p.requires_grad_(False)
        model.train(was)


def _layers(maps, tower: str) -> list[Tensor]:
    names = maps.names("encoder")
    if not names:
        raise ValueError(f"model: no self-attention was recorded in its {tower} tower")
    return [maps.merged(n) for n in names]  # each (B, heads, T', T')


def _check_pairs(model: nn.Module, images: object, tokens: object) -> None:
    for name in ("visual", "text", "encode_image", "encode_text"):
        if not hasattr(model, name):
            raise TypeError(
                f"model: expected a dual encoder with visual, text, encode_image and encode_text "
                f"(qkv.models.CLIP), got {type(model).__name__} without {name}"
            )
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images: expected a float tensor (B, C, H, W), got {got}")
    if not isinstance(tokens, Tensor) or tokens.dim() != 2:
        got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"tokens: expected word ids (B, T), got {got}")
    if tokens.shape[0] != images.shape[0]:
        raise ValueError(f"tokens: expected {images.shape[0]} captions, one per image (pairs), "
                         f"got {tokens.shape[0]}")  # fmt: skip


def match_relevance(model: nn.Module, images: Tensor, tokens: Tensor) -> MatchRelevance:
    """The relevance of each patch and each word for the similarity of each (image, caption)
    pair, through both towers (module docstring).

    Args:
        model: a :class:`qkv.models.CLIP` (any dual encoder with a qkv ``visual`` ViT and a
            ``text`` tower of qkv attention, ``encode_image`` and ``encode_text``).
        images: ``(B, C, H, W)`` in [0, 1].
        tokens: ``(B, T)`` word ids, caption ``b`` paired with image ``b`` (``pad_id`` pads).

    Returns:
        :class:`MatchRelevance` ``(patches (B, h, w), words (B, T))``, detached, in the model's
        dtype. Runs in eval mode (then restores the mode); parameters' ``.grad`` untouched.

    Raises:
        TypeError: not a dual encoder. ValueError: shapes that do not pair up (naming the argument).
    """
    _check_pairs(model, images, tokens)
    grid, known = patch_grid(model.visual, tuple(images.shape[2:]))
    with _differentiable(model):
        with capture(model.visual, kinds="encoder", detach=False) as image_maps:
            v = model.encode_image(images)  # (B, E)
        with capture(model.text, kinds="encoder", detach=False) as text_maps:
            t = model.encode_text(tokens)  # (B, E)
        similarity = (v * t).sum(-1)  # (B,): s_b of each pair
        image_layers, text_layers = _layers(image_maps, "image"), _layers(text_maps, "text")
        grads = torch.autograd.grad(similarity.sum(), [*image_layers, *text_layers], allow_unused=True)
    image_relevance = gradient_relevance(image_layers, grads[: len(image_layers)])  # (B, T_i, T_i)
    text_relevance = gradient_relevance(text_layers, grads[len(image_layers) :])  # (B, 1+T, 1+T)
    grid = grid.with_tokens(image_relevance.shape[-1], known_prefix=known)
    return MatchRelevance(grid.rows(image_relevance), text_relevance[:, 0, 1:])
