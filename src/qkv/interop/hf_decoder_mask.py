"""A decoder's causal mask as ``attn_implementation="qkv"`` hands it over: cache positions and
padding, never a ``Tq x Tk`` matrix.

``transformers`` describes the causal mask of one forward call by its cache positions (the new
tokens sit at ``q_offset .. q_offset + Tq - 1``, the keys at ``kv_offset .. kv_offset + Tk - 1``),
the 2-D ``attention_mask`` (padding) and, for Mistral-style models, the model's own sliding
window ``W`` (a token sees the ``W`` positions up to its own). :class:`DecoderMask` keeps exactly
that, as a :class:`qkv.masks.Mask`::

    causal & window(W) & padding        at positions (q_offset + i, kv_offset + j)

so the layers of one call share one object (``O(B Tk)`` memory), and a pattern put on the model
(:func:`qkv.interop.use_pattern`) is read at the same global positions
(:meth:`DecoderMask.with_pattern`): a decode step's single query row at position ``p`` sees the
keys the pattern allows in row ``p``, whatever the cache holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..masks.core import Mask, causal
from ..masks.shifted import shifted
from ..masks.window import sliding_window

__all__ = ["DecoderMask", "model_window"]


class DecoderMask(Mask):
    """``causal & window & padding`` of one decoder call at its cache positions.

    Attributes:
        q_offset: position of the first query (tokens already in the cache).
        kv_offset: position of the first key (> 0 when a sliding-window cache dropped the oldest).
        window: the model's own sliding window ``W`` (query ``p`` sees keys ``p - W + 1 .. p``),
            or None.
        padding: bool ``(B, Tk)``, False at padding keys, or None.
    """

    def __init__(self, q_offset: int, kv_offset: int, window: int | None, padding: Tensor | None) -> None:
        self.q_offset, self.kv_offset, self.window, self.padding = q_offset, kv_offset, window, padding
        local = causal("top_left") if window is None else causal("top_left") & sliding_window(window - 1, 0)
        self.base = shifted(local, q_offset=q_offset, kv_offset=kv_offset)
        if padding is not None:
            self.base = self.base & padding[:, None, None, :]  # (B, 1, 1, Tk)
        self.name = f"decoder({self.base.name})"

    def with_pattern(self, pattern: Mask) -> Mask:
        """``pattern & causal & window & padding``, ``pattern`` read at this call's positions."""
        return shifted(pattern, q_offset=self.q_offset, kv_offset=self.kv_offset) & self.base

    def plain(self, q_len: int, kv_len: int) -> Mask | None:
        """The mask of a call without a pattern: None when it allows every key (a decode step
        over a full cache without padding), else :attr:`base` (the square causal mask from
        position 0 is ``is_plain_causal``: fused kernels run it from a flag)."""
        binds = self.kv_offset + kv_len - 1 > self.q_offset  # the last key is after the first query
        if self.window is not None:
            binds = binds or self.q_offset + q_len - 1 - self.kv_offset >= self.window
        return self.base if binds or self.padding is not None else None

    # A prepared mask as ``transformers`` reads one: ``generate`` prepares the mask of each step
    # ahead of the forward pass for a static cache (``contiguous()`` on it), and the model's own
    # mask function then leaves a 4-D mask as it is (its ``ndim``); the mask interface hands
    # this one on unchanged (:func:`qkv.interop.hf_implementation.qkv_mask`).
    ndim = 4

    def contiguous(self) -> DecoderMask:
        """Itself (the mask holds positions and a ``(B, Tk)`` padding, nothing to lay out)."""
        return self

    @property
    def depends_on_batch_head(self) -> bool:
        return self.padding is not None

    @property
    def batch_head_shape(self) -> tuple[int, int] | None:
        return self.base.batch_head_shape

    def is_plain_causal(self, q_len: int, kv_len: int) -> bool:
        return self.base.is_plain_causal(q_len, kv_len)

    def mask_mod(self, q_len, kv_len):
        return self.base.mask_mod(q_len, kv_len)

    def materialize(self, q_len, kv_len, *, device=None):
        return self.base.materialize(q_len, kv_len, device=device)

    def _layout(self, q_len, kv_len, q_block, kv_block, device):
        return self.base._layout(q_len, kv_len, q_block, kv_block, device)


def decoder_mask(
    mask_function: Callable,
    kv_length: int,
    q_offset: Any,
    kv_offset: int,
    attention_mask: Tensor | None,
    local_size: int | None,
) -> DecoderMask | None:
    """The :class:`DecoderMask` of a ``transformers`` causal mask request, or None when the
    request is not a plain causal (or Mistral sliding-window causal) mask: overlays and packed
    sequences (their mask functions wrap the causal one) are left to ``sdpa_mask``, as is a
    static cache under ``torch.compile``.

    A static cache (``StaticCache``) gives its filled length ``q_offset`` as a 0-d tensor (read
    here, one host sync per call) and ``kv_length`` its maximum length: the slots past the
    filled ones lie after every query, so causal masks them, and the padding is extended over
    them with True (they are not padding; causal keeps them out)."""
    from transformers.masking_utils import causal_mask_function

    if isinstance(q_offset, Tensor) or isinstance(kv_offset, Tensor):
        if torch.compiler.is_compiling() or any(
            isinstance(o, Tensor) and o.numel() != 1 for o in (q_offset, kv_offset)
        ):
            return None
        q_offset, kv_offset = int(q_offset), int(kv_offset)
    window = None if mask_function is causal_mask_function else model_window(mask_function)
    if mask_function is not causal_mask_function and (window is None or window != local_size):
        return None
    padding = None
    if attention_mask is not None:
        padding = attention_mask.to(torch.bool)
        if padding.shape[-1] < kv_offset + kv_length:  # slots after every query: causal masks them
            padding = torch.nn.functional.pad(
                padding, (0, kv_offset + kv_length - padding.shape[-1]), value=True
            )
        padding = padding[:, kv_offset : kv_offset + kv_length]
        padding = None if bool(padding.all()) else padding
    return DecoderMask(int(q_offset), int(kv_offset), window, padding)


def model_window(mask_function: Callable) -> int | None:
    """``W`` when ``mask_function`` is ``transformers``' ``sliding_window_causal_mask_function(W)``
    (``and_masks(sliding_window_overlay(W), causal_mask_function)``), else None."""
    from transformers.masking_utils import causal_mask_function

    if getattr(mask_function, "__qualname__", "") != "and_masks.<locals>.and_mask":
        return None
    parts = _closure(mask_function, "mask_functions")
    if not isinstance(parts, tuple) or len(parts) != 2 or parts[1] is not causal_mask_function:
        return None
    overlay = parts[0]
    if getattr(overlay, "__qualname__", "") != "sliding_window_overlay.<locals>.inner_mask":
        return None
    window = _closure(overlay, "sliding_window")
    return window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else None


def _closure(fn: Callable, name: str) -> Any:
    """The value of the free variable ``name`` of ``fn`` (None when it has none)."""
    names = getattr(getattr(fn, "__code__", None), "co_freevars", ())
    if name not in names or fn.__closure__ is None:
        return None
    return fn.__closure__[names.index(name)].cell_contents
