"""Image explanations: which pixels decided an image transformer's output, by five methods.

    exp = explain_image(model, images, method="rollout")   # images (N, C, H, W)
    exp.pixels     # (N, H, W) float map in pixel space
    exp.patches    # (N, h, w) the same map on the patch grid

Works on qkv's ViT (:mod:`qkv.models.vit`), Hugging Face ViTs (``ViTModel``,
``ViTForImageClassification``) and timm's ``VisionTransformer``; the patch grid, the class token
and any register tokens are read from the model (:mod:`qkv.interpret.patch_grid`), and the
attention weights are the exact ones even when the model runs a fused kernel
(:mod:`qkv.interpret.image_attention`). The methods and their formulas:
:mod:`qkv.interpret.image_methods`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from . import image_methods
from .image_target import Target
from .patch_grid import PatchGrid, check_channels, check_images, patch_grid

__all__ = ["IMAGE_METHODS", "ImageExplanation", "explain_image"]

_METHODS = {
    "attention": image_methods.attention_map,
    "rollout": image_methods.rollout_map,
    "grad": image_methods.grad_map,
    "gradcam": image_methods.gradcam_map,
    "ig": image_methods.ig_map,
}
#: The method names :func:`explain_image` accepts.
IMAGE_METHODS = tuple(_METHODS)


@dataclass(frozen=True)
class ImageExplanation:
    """One method's explanation of a batch of images.

    Attributes:
        method: the method's name (one of :data:`IMAGE_METHODS`).
        pixels: ``(N, H, W)`` float: each pixel's score (a patch's score on each of its pixels,
            except ``ig``, computed per pixel).
        patches: ``(N, h, w)`` float: each patch's score (``ig``: the sum of its pixels').
        grid: the model's :class:`PatchGrid` on these images (prefix tokens, the class token).
        target: ``(N,)`` the class explained per image (``grad``, ``gradcam``, ``ig`` with a
            class target), else ``None``.
        heads: ``attention`` only: ``(N, L, H, h, w)``, every layer's and head's row; ``patches``
            is the last layer's mean over heads.
    """

    method: str
    pixels: Tensor
    patches: Tensor
    grid: PatchGrid
    target: Tensor | None = None
    heads: Tensor | None = None


def explain_image(
    model: nn.Module, images: Tensor, *, method: str = "rollout", target: Target = None, steps: int = 32
) -> ImageExplanation:
    """Explain ``model``'s output on ``images`` by ``method``.

    Args:
        model: qkv's ViT, a Hugging Face ViT or timm's ``VisionTransformer`` (any model whose
            patch grid :func:`qkv.interpret.patch_grid.patch_grid` finds). Use ``model.eval()``:
            dropout would make every method random.
        images: ``(N, C, H, W)`` or ``(C, H, W)`` float, as the model takes them.
        method: ``"attention"``, ``"rollout"``, ``"grad"``, ``"gradcam"`` or ``"ig"``
            (:mod:`qkv.interpret.image_methods`).
        target: what ``grad``, ``gradcam`` and ``ig`` explain: ``None`` (the predicted class),
            a class, one class per image, or a function ``output -> (N,)`` scores
            (:mod:`qkv.interpret.image_target`). ``attention`` and ``rollout`` explain no output.
        steps: integration points of ``ig``.

    Returns:
        :class:`ImageExplanation`; maps are detached, in the images' dtype.

    Raises:
        ValueError: an unknown method (the methods are listed), images that are not
            ``(N, C, H, W)`` float, of another channel count than the patch embedding reads, or
            whose size the patches do not divide, a model whose grid
            cannot be found, a bad ``target``.
        ImportError: ``ig`` without Captum.
    """
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {', '.join(IMAGE_METHODS)}, got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    x = check_images(images)
    check_channels(model, x.shape[1])
    grid, known = patch_grid(model, tuple(x.shape[-2:]))
    run = _METHODS[method]
    if method == "ig":
        result = run(model, x, grid, known, target, steps=steps)
    else:
        result = run(model, x, grid, known, target)
    patches = result.patches.detach()
    pixels = result.pixels if result.pixels is not None else result.grid.to_pixels(patches)
    return ImageExplanation(method, pixels.detach(), patches, result.grid, result.target, result.heads)
