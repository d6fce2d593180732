"""Images as the cross-modal models take them, and where their patches fall.

A model's patch ``(r, c)`` of its ``h x w`` grid (row-major: patch ``r * w + c``) covers pixels
``r*P .. r*P+P-1`` down and ``c*P .. c*P+P-1`` across; on a digit strip it lies in slot
``c * P // SLOT_WIDTH`` (:func:`patch_slots`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["attention_pixels", "check_images", "patch_slots"]


def check_images(images: object, image_shape: tuple[int, int, int]) -> Tensor:
    """``images`` as float ``(N, C, H, W)`` (one ``(C, H, W)`` image: N = 1) of ``image_shape``.

    Raises:
        ValueError: not a tensor of that shape (naming the expected one).
    """
    want = "(N, {}, {}, {})".format(*image_shape)
    if not isinstance(images, Tensor) or images.dim() not in (3, 4):
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images: expected a tensor {want} or one image (C, H, W), got {got}")
    x = images.float() if images.dim() == 4 else images.float().unsqueeze(0)
    if tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(f"images: expected {want}, got {tuple(images.shape)}")
    return x


def patch_slots(grid: tuple[int, int], patch_size: int, slot_width: int) -> Tensor:
    """``(h * w,)`` int64: the strip slot of each patch, row-major.

    Raises:
        ValueError: a patch that straddles two slots (``slot_width`` not a multiple of ``patch_size``).
    """
    if slot_width % patch_size:
        raise ValueError(f"patch_size: expected a divisor of the slot width {slot_width}, got {patch_size}")
    h, w = grid
    return (torch.arange(w) * patch_size // slot_width).repeat(h)  # (h*w,): column c -> c*P // S


def attention_pixels(attention: Tensor, grid: tuple[int, int], patch_size: int) -> Tensor:
    """Per-patch weights ``(..., h * w)`` as pixel maps ``(..., h * P, w * P)``: each pixel gets
    its patch's weight (so a map sums to ``P * P`` times the weights' sum)."""
    h, w = grid
    x = attention.reshape(*attention.shape[:-1], h, w)  # (..., h, w), row-major
    return x.repeat_interleave(patch_size, -2).repeat_interleave(patch_size, -1)
