"""The five image explanations, each a map over the patch grid (or the pixels).

Shape legend (see :mod:`qkv.interpret.patch_grid`): ``N`` images, ``L`` layers, ``H`` heads,
``T`` tokens, ``C`` channels, ``h x w`` patches. "The row" is the class token's row of a
``(T, T)`` matrix over the patch columns (the mean of the patch rows for a mean-pooled model).

- ``attention``: the raw weights, per layer and head, the row: ``(N, L, H, h, w)``; its map is
  the last layer's mean over heads.
- ``rollout`` (Abnar & Zuidema 2020): ``prod_l normalize_rows(0.5 mean_h(A_l) + 0.5 I)``, the
  row (:func:`qkv.interpret.rollout`: the identity models the residual, then each row is
  renormalised to sum to 1; normalising columns instead is a known bug of released code).
- ``grad`` (Chefer et al. 2021): ``R = I; R <- R + mean_h(relu(dy/dA_l * A_l)) @ R``, the row.
- ``gradcam`` (Selvaraju et al. 2017) on the patch tokens ``a (N, h*w, C)`` the last attention
  layer reads (for pre-LN blocks: after the layer norm)::

      alpha_c = mean_patches(dy/da_c);   cam = relu(sum_c alpha_c a_c)

- ``ig`` (Sundararajan et al. 2017, Captum): pixel attributions against a black image, summed
  over channels ``(N, H, W)``; its patch map sums each patch's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..modules import MultiHeadAttention, TorchMultiheadAttention
from .gradients import gradient_relevance
from .image_attention import attention_blocks, record_attention
from .image_target import Target, logits_of, target_classes, target_scores
from .patch_grid import PatchGrid
from .rollout import rollout

__all__ = ["MethodResult", "attention_map", "grad_map", "gradcam_map", "ig_map", "rollout_map"]


@dataclass(frozen=True)
class MethodResult:
    """What a method computed: ``patches (N, h, w)``, ``pixels (N, H, W)`` when computed in pixel
    space, the classes explained ``(N,)``, per-head maps ``(N, L, H, h, w)`` (``attention``),
    and the grid with its prefix read from the tokens."""

    patches: Tensor
    grid: PatchGrid
    pixels: Tensor | None = None
    target: Tensor | None = None
    heads: Tensor | None = None


def _weights(model: nn.Module, images: Tensor) -> tuple[list[Tensor], object]:
    """``([A_l (N, H, T, T)], the model's output)`` of one forward pass without gradients."""
    with torch.no_grad(), record_attention(model) as layers:
        output = model(images)
    maps = layers()
    if not maps:
        raise ValueError(f"model: no self-attention was recorded while {type(model).__name__} ran")
    return maps, output


def attention_map(
    model: nn.Module, images: Tensor, grid: PatchGrid, known: bool, target: Target
) -> MethodResult:
    """The raw attention of every layer and head (module docstring)."""
    maps, _ = _weights(model, images)
    grid = grid.with_tokens(maps[0].shape[-1], known_prefix=known)
    heads = grid.rows(torch.stack(maps, dim=1))  # (N, L, H, T, T) -> (N, L, H, h, w)
    return MethodResult(heads[:, -1].mean(dim=1), grid, heads=heads)


def rollout_map(
    model: nn.Module, images: Tensor, grid: PatchGrid, known: bool, target: Target
) -> MethodResult:
    """Attention rollout's row (module docstring)."""
    maps, _ = _weights(model, images)
    grid = grid.with_tokens(maps[0].shape[-1], known_prefix=known)
    flow = rollout(torch.stack(maps))  # (L, N, H, T, T) -> (N, T, T)
    return MethodResult(grid.rows(flow), grid)


def grad_map(model: nn.Module, images: Tensor, grid: PatchGrid, known: bool, target: Target) -> MethodResult:
    """Chefer et al.'s gradient-weighted relevance, the row (module docstring)."""
    x = images.detach().requires_grad_(True)  # the graph exists even when the model is frozen
    with torch.enable_grad(), record_attention(model, detach=False) as layers:
        scores, classes = target_scores(model(x), target)
    maps = layers()
    if not maps:
        raise ValueError(f"model: no self-attention was recorded while {type(model).__name__} ran")
    grid = grid.with_tokens(maps[0].shape[-1], known_prefix=known)
    grads = torch.autograd.grad(scores.sum(), maps, allow_unused=True)
    relevance = gradient_relevance(maps, grads)  # (N, T, T)
    return MethodResult(grid.rows(relevance), grid, target=classes)


def last_attention(model: nn.Module) -> nn.Module:
    """The last self-attention module of ``model`` (timm's, Hugging Face's or qkv's).

    Raises:
        ValueError: none found.
    """
    blocks = attention_blocks(model)
    if blocks:
        return blocks[-1]
    from ..interop import hf_attention

    if hf_attention.is_transformers_model(model):
        found = [m for _, m, _, kind in hf_attention.attention_modules(model) if kind == "encoder"]
    else:
        found = [m for m in model.modules() if isinstance(m, (MultiHeadAttention, TorchMultiheadAttention))]
    if not found:
        raise ValueError(f"model: {type(model).__name__} has no self-attention module for Grad-CAM")
    return found[-1]


def gradcam_map(
    model: nn.Module, images: Tensor, grid: PatchGrid, known: bool, target: Target
) -> MethodResult:
    """Grad-CAM on the patch tokens the last attention layer reads (module docstring)."""
    read: list[Tensor] = []

    def keep_input(mod, args, kwargs):
        tokens = args[0] if args else next(v for v in kwargs.values() if isinstance(v, Tensor))
        read.append(tokens)

    x = images.detach().requires_grad_(True)
    handle = last_attention(model).register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        with torch.enable_grad():
            scores, classes = target_scores(model(x), target)
    finally:
        handle.remove()
    tokens = read[-1]  # (N, T, C)
    grid = grid.with_tokens(tokens.shape[1], known_prefix=known)
    (grads,) = torch.autograd.grad(scores.sum(), tokens)
    acts, grads = tokens.detach()[:, grid.prefix :], grads[:, grid.prefix :]  # (N, h*w, C)
    alpha = grads.mean(dim=1, keepdim=True)  # (N, 1, C): each channel's weight
    cam = (alpha * acts).sum(dim=-1).clamp_min(0)  # (N, h*w)
    return MethodResult(cam.unflatten(-1, (grid.h, grid.w)), grid, target=classes)


def ig_map(
    model: nn.Module, images: Tensor, grid: PatchGrid, known: bool, target: Target, *, steps: int = 32
) -> MethodResult:
    """Integrated gradients on the pixels, through Captum (module docstring)."""
    try:
        from captum.attr import IntegratedGradients
    except ImportError as exc:
        raise ImportError("method 'ig' needs Captum: pip install 'qkv[interpret]'") from exc
    x = images.detach()
    maps, output = _weights(model, x)  # the tokens give the grid's prefix; the output the classes
    grid = grid.with_tokens(maps[0].shape[-1], known_prefix=known)
    if callable(target) and not isinstance(target, Tensor):

        def forward(batch):
            return target_scores(model(batch), target)[0]

        classes = None
    else:

        def forward(batch):
            return logits_of(model(batch))

        classes = target_classes(logits_of(output), target)
    with torch.enable_grad():
        attr = IntegratedGradients(forward).attribute(
            x, baselines=torch.zeros_like(x), target=classes, n_steps=steps
        )
    pixels = attr.detach().sum(dim=1)  # (N, C, H, W) -> (N, H, W)
    return MethodResult(grid.pool(pixels), grid, pixels=pixels, target=classes)
