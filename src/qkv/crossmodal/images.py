"""Images as the cross-modal models take them, and where their patches fall.

A model's patch ``(r, c)`` of its ``h x w`` grid (row-major: patch ``r * w + c``) covers pixels
``r*P .. r*P+P-1`` down and ``c*P .. c*P+P-1`` across; on a digit strip it lies in slot
``c * P // SLOT_WIDTH`` (:func:`patch_slots`); :func:`slot_attention` spreads each caption word
over the patches of its gold slots, the target of supervised attention. :func:`shift_slots` is the light augmentation of
training strips: each digit moved within its own slot.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["attention_pixels", "check_images", "patch_slots", "shift_slots", "slot_attention"]


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


def slot_attention(slots: Sequence[Sequence[Sequence[int]]], patch_slot: Tensor, length: int) -> Tensor:
    """``(C, length, N)``: per caption, per word, the uniform distribution over the patches of
    its gold slots (the ones :func:`qkv.crossmodal.caption_metrics.attention_hits` counts a
    peak on); a row of zeros for a word without a slot and after the caption's last word.

    Args:
        slots: per caption, per word, its gold slots (``()``: none), as
            :func:`qkv.crossmodal.data.digit_strips` gives them.
        patch_slot: ``(N,)`` the slot of each patch (:func:`patch_slots`).
        length: the words per row, at least the longest caption's.

    Raises:
        ValueError: a caption longer than ``length``.
    """
    out = torch.zeros(len(slots), length, patch_slot.shape[0])
    for c, word_slots in enumerate(slots):
        if len(word_slots) > length:
            raise ValueError(
                f"length: expected at least the {len(word_slots)} words of caption {c}, got {length}"
            )
        for t, gold in enumerate(word_slots):
            if gold:
                hit = torch.isin(patch_slot, torch.tensor(gold, dtype=patch_slot.dtype)).float()  # (N,)
                out[c, t] = hit / hit.sum()
    return out


def attention_pixels(attention: Tensor, grid: tuple[int, int], patch_size: int) -> Tensor:
    """Per-patch weights ``(..., h * w)`` as pixel maps ``(..., h * P, w * P)``: each pixel gets
    its patch's weight (so a map sums to ``P * P`` times the weights' sum)."""
    h, w = grid
    x = attention.reshape(*attention.shape[:-1], h, w)  # (..., h, w), row-major
    return x.repeat_interleave(patch_size, -2).repeat_interleave(patch_size, -1)


def shift_slots(images: Tensor, *, slot_width: int, max_shift: int, generator: torch.Generator) -> Tensor:
    """Strips ``(N, C, H, W)`` with each ``H x slot_width`` slot moved by its own ``dy, dx`` drawn
    from ``[-max_shift, max_shift]`` inside the slot (zeros filling in; a pixel pushed out of its
    slot is dropped, never moved into the next one): the digits stay in their slots, so a
    strip's caption and its words' slots still hold. ``max_shift = 0`` returns ``images``.

    Raises:
        ValueError: ``W`` not a multiple of ``slot_width``, or ``max_shift`` not an int >= 0.
    """
    from ..vision.data import random_shifts

    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift: expected an int >= 0, got {max_shift!r}")
    n, c, h, w = images.shape
    if w % slot_width:
        raise ValueError(f"images: expected a width that is a multiple of {slot_width}, got {w}")
    if max_shift == 0:
        return images
    k = w // slot_width
    slots = images.reshape(n, c, h, k, slot_width).permute(0, 3, 1, 2, 4).reshape(n * k, c, h, slot_width)
    moved = random_shifts(slots, max_shift=max_shift, generator=generator)  # (N * k, C, H, S)
    return moved.reshape(n, k, c, h, slot_width).permute(0, 2, 3, 1, 4).reshape(n, c, h, w)
