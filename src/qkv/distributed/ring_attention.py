"""``ring_attention``: exact attention of this rank's queries over a sequence sharded across
a process group, masks and biases in global coordinates."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

from torch import Tensor

from .._types import AttentionOutput
from ..api.prepare import ScoreLike, prepare
from ..backends import dispatch
from ..backends.attention_weights import as_index
from ..backends.base import check_fits
from ..backends.sequence_parallel import active
from ..masks.core import Mask, check_bool_mask
from .context import context_parallel

__all__ = ["ring_attention"]


def ring_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    group: Any = None,
    layout: str = "contiguous",
    score: ScoreLike = "scaled_dot",
    mask: Mask | Tensor | None = None,
    bias: Tensor | None = None,
    scale: float | None = None,
    need_weights: bool = False,
    weights_for: tuple[Any, Any] | None = None,
    score_kwargs: dict[str, Any] | None = None,
) -> AttentionOutput:
    """Attention of this rank's queries over the whole sequence, sharded across ``group``.

    Shapes, with ``w`` ranks, ``n = Tq / w`` queries and ``m = Tk / w`` keys per rank (``Tk =
    Tq`` for self-attention; a cross-attention memory is sharded in the same layout)::

        query (..., H, n, D), key (..., H, m, D), value (..., H, m, Dv)   this rank's shards
        -> out (..., H, n, Dv), lse (..., H, n), weights (..., H, n, Tk)  this rank's rows

    Inside a :func:`qkv.distributed.context_parallel` block of the same group and layout, the
    messages are counted in that context's ``stats``. Every rank of ``group`` calls it with shards of one length, dtype and batch (checked: a
    clear error on every rank otherwise), and every rank runs the backward if one does.

    Args:
        group, layout: the process group (None: the default one) and which positions each rank
            holds (``"contiguous"`` or ``"zigzag"``; see :func:`qkv.distributed.sequence_positions`).
        score, score_kwargs, scale: as :func:`qkv.attention` (named scores; parameters that
            require grad are refused).
        mask: a :class:`qkv.masks.Mask` (e.g. ``qkv.masks.causal()``, a sliding window), or a
            bool tensor (True = may attend) broadcastable to ``(..., H, Tq, Tk)``: both in global
            coordinates. Ranks whose positions the mask never lets meet exchange nothing.
        bias: a float tensor broadcastable to ``(..., H, Tq, Tk)`` in global coordinates
            (not differentiated).
        need_weights, weights_for: this rank's rows of the weights, ``(..., H, n, Tk)``, or the
            chosen ``(heads, rows)`` of them (rows are local); not differentiable.

    Returns:
        an :class:`qkv.AttentionOutput` with ``backend="ring"``.

    Raises:
        qkv.distributed.RingCommunicationError: a rank died or a message failed (within the
            process group's timeout).
    """
    pattern = mask if isinstance(mask, Mask) else None
    inputs, restore = prepare(
        query, key, value, score=score, mask=pattern, scale=scale, need_weights=need_weights,
        weights_for=weights_for, score_kwargs=score_kwargs,
    )  # fmt: skip
    sp = active()
    same = sp is not None and sp.group is group and sp.layout == layout  # count into the caller's
    with contextlib.nullcontext(sp) if same else context_parallel(group, layout=layout) as sp:
        shape = (*inputs.query.shape[:-2], inputs.q_len * sp.world, inputs.kv_len * sp.world)
        if mask is not None and pattern is None:
            inputs = dataclasses.replace(
                inputs, tensor_mask=check_fits("mask", check_bool_mask(mask, "mask"), shape)
            )
        if bias is not None:
            if not isinstance(bias, Tensor) or not bias.is_floating_point():
                raise TypeError(f"bias: expected a float tensor in global coordinates, got {bias!r:.60}")
            inputs = dataclasses.replace(inputs, bias=check_fits("bias", bias, shape))
        result = dispatch.choose(inputs, "ring").run(inputs)
    if inputs.weights_for is not None:
        heads, rows = inputs.weights_for
        w = result.weights
        h_idx, r_idx = (
            as_index(heads, w.shape[-3], "heads", w.device),
            as_index(rows, w.shape[-2], "rows", w.device),
        )
        w = w if h_idx is None else w.index_select(-3, h_idx)
        result = dataclasses.replace(result, weights=w if r_idx is None else w.index_select(-2, r_idx))
    return restore(result)
