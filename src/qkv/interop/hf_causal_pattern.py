"""Whether a pattern can be put on a decoder: the checks :func:`qkv.interop.use_pattern` runs
before it sets a pattern on a model with causal self-attention.

A decoder attends ``pattern & causal`` (and its own window, if its configuration has one), and
with a KV cache it computes each token's row once, when the token is new, at the length the
sequence has then. So a pattern is **causal-compatible** when

1. a token's row does not depend on the sequence length: the rows of ``pattern & causal`` at
   length 37 are the first rows of those at length 80 (:func:`qkv.masks.random_blocks` draws
   its blocks per length and fails; a :func:`qkv.masks.document` mask is built for one length
   and fails);
2. every token sees at least one key at or before it (``~causal()`` leaves none: an empty row
   is an output of zeros, not attention).

A model with its own sliding window ``W`` (Mistral's ``config.sliding_window``) attends
``pattern & causal & window(W)``: the pattern can narrow the window, never widen it. A pattern
that allows a key the window masks (a wider window, a global token) is a conflict and is
refused rather than silently cut (the model's sliding-window cache no longer holds those keys).
The conflict is looked for on a probe of ``2W + 1`` positions, a query-row slab at a time.
"""

from __future__ import annotations

import torch

from ..masks.core import Mask, causal
from ..masks.shifted import shifted
from ..masks.window import sliding_window

__all__ = ["check_causal_pattern"]

SHORT, LONG = 37, 80  # probe lengths: neither a multiple of the other nor of a tile size
ROWS = 256  # query rows per slab of the window probe


def check_causal_pattern(pattern: Mask, *, model_window: int | None = None) -> None:
    """Refuse a pattern a decoder cannot run (see the module docstring).

    Raises:
        ValueError: ``pattern`` is not causal-compatible, or allows keys outside
            ``model_window`` (each named).
    """
    allowed = pattern & causal("top_left")
    try:
        short = allowed.materialize(SHORT, SHORT).any(dim=(0, 1))  # (37, 37)
        long = allowed.materialize(LONG, LONG).any(dim=(0, 1))  # (80, 80)
    except ValueError as err:
        raise ValueError(
            f"use_pattern: {pattern!r} is not causal-compatible: a decoder reads it at every length, and at "
            f"{SHORT} or {LONG} tokens it raised: {err}"
        ) from err
    if not torch.equal(short, long[:SHORT, :SHORT]):
        raise ValueError(
            f"use_pattern: {pattern!r} is not causal-compatible: a token's row depends on the sequence length "
            f"(rows at {SHORT} tokens differ from the same rows at {LONG}), so cached decoding would differ "
            "from recomputing"
        )
    empty = (~long.any(dim=-1)).nonzero()
    if empty.numel():
        raise ValueError(
            f"use_pattern: {pattern!r} is not causal-compatible: with causal, token {int(empty[0])} sees no "
            "key at or before it"
        )
    if model_window is not None:
        _check_window(pattern, model_window)


def _check_window(pattern: Mask, window: int) -> None:
    """Refuse a pattern that allows, under causal, a key more than ``window - 1`` positions back."""
    outside = pattern & causal("top_left") & ~sliding_window(window - 1, 0)
    length = 2 * window + 1
    for first in range(0, length, ROWS):
        rows = min(ROWS, length - first)
        hit = shifted(outside, q_offset=first, kv_offset=0).materialize(rows, length).any(dim=(0, 1))
        where = hit.nonzero()
        if where.numel():
            q, k = first + int(where[0, 0]), int(where[0, 1])
            raise ValueError(
                f"use_pattern: {pattern!r} conflicts with the model's own sliding window "
                f"(config.sliding_window={window}): it lets token {q} see token {k}, which the window "
                "masks; the model attends pattern & causal & window, so use a pattern inside the window "
                f"(e.g. qkv.masks.sliding_window({window - 1}) or narrower)"
            )
