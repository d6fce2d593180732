"""PyTorch's fused ``F.scaled_dot_product_attention`` (flash / memory-efficient / math kernels).

Equal to the reference backend within tolerance for the ``dot`` and ``scaled_dot`` scores with
bool masks and additive biases. It returns no weights: asked for them, ``qkv.attention``
computes them in a second pass (:mod:`qkv.backends.attention_weights`). For that pass, when the
call runs torch's fused CPU kernel (fp32/fp64, no autograd, no dropout) it calls that kernel
directly and returns its log-sum-exp too, so the weights cost one matmul and one exp; its output
is SDPA's own, bit for bit.

The NaN rule costs a reduction only where the kernel breaks it: with a mask (rows with no key),
the causal kernel, and the sizes where :mod:`qkv.backends.nan_probe` found that unmasked SDPA
drops a NaN query row. With a mask and no autograd graph (inference), one sum over the query and
the output stands for the sums over the keys and values that would decide whether unreachable
keys need zeroing: garbage there shows as NaN in the output, and only then are the keys zeroed
and the kernel run again.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .._types import AttentionOutput
from . import memory
from .base import AttentionInputs, Capabilities, not_supported_reasons, plain_causal, zero_unreachable_keys
from .nan_probe import drops_nan_rows

__all__ = ["SdpaBackend"]

_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_CHOICE = 1  # SDPBackend.FLASH_ATTENTION: on CPU, the kernel above


class SdpaBackend:
    name = "sdpa"
    capabilities = Capabilities(
        "SDPA", dot_only=True, custom_scores=False, softmax_only=True, bias_grad=False, empty=False,
        instead="backend='chunked'",
    )  # fmt: skip
    auto_max_dense_mask = 1 << 26  # elements of a dense mask auto may build from a pattern

    def supports(self, inputs: AttentionInputs) -> list[str]:
        return not_supported_reasons(self.capabilities, inputs)

    def auto_skip(self, inputs: AttentionInputs) -> list[str]:
        """``auto`` does not build a huge dense mask from a pattern: chunked skips blocks. A
        plain causal pattern (no bias) builds none: it runs as ``is_causal``."""
        plain = inputs.bias is None and plain_causal(inputs)
        if (
            inputs.pattern is not None
            and not plain
            and inputs.q_len * inputs.kv_len > self.auto_max_dense_mask
        ):
            mib = inputs.q_len * inputs.kv_len / 2**20
            return [
                f"a pattern at Tq x Tk = {inputs.q_len} x {inputs.kv_len}: its dense mask would take {mib:.0f} MiB"
            ]
        return []

    def memory_bytes(self, inputs: AttentionInputs) -> int:
        """Peak extra bytes (see :mod:`qkv.backends.memory`): the output, plus: the dense mask
        of a pattern; the additive mask SDPA (or qkv, with a bias) builds from a bool mask
        (M e, and ``~mask``); with grad dq, dk, dv; and when torch falls back to the math kernel
        (dropout, Dv != D, > 4 dims...), the logits, weights and their softmax (3 L c, 6 with
        grad, + L c of dropout)."""
        s = memory.sizes(inputs)
        L, c, e = s["L"], s["c"], s["e"]
        grad = memory.needs_grad(inputs)
        work = s["n"] * s["tq"] * s["dv"] * e
        if grad:
            work += s["qkv"] * c
        kept = building = 0
        if inputs.has_mask and not (inputs.bias is None and plain_causal(inputs)):
            kept, building = memory.dense_mask_bytes(inputs)
            work += _additive_mask_bytes(inputs, memory.mask_elements(inputs), e)
        if _kernel(inputs) == "math":
            work += (6 if grad else 3) * L * c
            if inputs.dropout_active:
                work += L * c
        return max(building, kept + work)

    def run(self, inputs: AttentionInputs) -> AttentionOutput:
        q, k, v, bias = inputs.query, inputs.key, inputs.value, inputs.bias
        dropout_p = inputs.dropout_p if inputs.dropout_active else 0.0
        if bias is None and plain_causal(inputs):
            # Square causal: SDPA's own causal kernel, no dense mask (every key is reachable
            # by the last query, so nothing needs zeroing).
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=dropout_p, scale=inputs.scale
            )
            return AttentionOutput(
                out=_nan_rows(out, q, k, v, None, causal=True), weights=None, lse=None, backend=self.name
            )
        mask = inputs.mask
        attn_mask = mask
        if bias is not None:
            attn_mask = bias.to(q.dtype)
            if mask is not None:
                attn_mask = attn_mask.masked_fill(~mask, float("-inf"))

        def run(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor | None]:
            return self._fused(inputs, q, k, v, attn_mask, dropout_p)

        if mask is None:
            out, lse = run(k, v)
            return AttentionOutput(
                out=_nan_rows(out, q, k, v, None), weights=None, lse=lse, backend=self.name
            )
        if not dropout_p and _inference(q, k, v):
            # Garbage (NaN, inf) in a key no query may attend can only reach the output as NaN
            # (0 * inf); one sum over the query and the output rules it out, and NaN queries
            # with it. Only when something is not finite: zero the keys and run again.
            out, lse = run(k, v)
            if math.isfinite(float(q.sum(dtype=torch.float32) + out.sum(dtype=torch.float32))):
                return AttentionOutput(out=out, weights=None, lse=lse, backend=self.name)
        k, v = zero_unreachable_keys(k, v, mask)  # the backward reads them too
        out, lse = run(k, v)
        return AttentionOutput(out=_nan_rows(out, q, k, v, mask), weights=None, lse=lse, backend=self.name)

    def _fused(
        self,
        inputs: AttentionInputs,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        attn_mask: Tensor | None,
        dropout_p: float,
    ) -> tuple[Tensor, Tensor | None]:
        """``(out, lse)``: SDPA, or its fused CPU kernel with the log-sum-exp when the weights
        are asked for and it can (``lse`` None otherwise)."""
        if inputs.need_weights and _lse_kernel(q, k, v, attn_mask, dropout_p, inputs.scale):
            return _with_lse(q, k, v, attn_mask, inputs.scale, inputs.mask)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=inputs.scale
        )
        return out, None

    def plain_runner(
        self, inputs: AttentionInputs
    ) -> Callable[[Tensor, Tensor, Tensor], AttentionOutput] | None:
        """What :meth:`run` does for calls shaped like ``inputs`` when they have no mask, bias
        or weights asked, as a function of ``(query, key, value)`` (:mod:`qkv.api.plain_calls`):
        the fused kernel, and the NaN rule's reduction only where the probe found the kernel
        breaks it at this size (asked once, here)."""
        if inputs.has_mask or inputs.bias is not None or inputs.need_weights:
            return None
        dropout_p = inputs.dropout_p if inputs.dropout_active else 0.0
        scale, name = inputs.scale, self.name
        repair = drops_nan_rows(inputs.query, inputs.key, inputs.value)

        def run(q: Tensor, k: Tensor, v: Tensor) -> AttentionOutput:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
            if repair:
                out = _nan_rows(out, q, k, v, None)
            return AttentionOutput(out=out, weights=None, lse=None, backend=name)

        return run


def _inference(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """No autograd graph is recorded (nothing of the call is read again by a backward), outside
    ``torch.compile`` (which traces no value checks)."""
    recorded = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    return not recorded and not torch.compiler.is_compiling()


def _lse_kernel(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, dropout_p: float, scale: float
) -> bool:
    """Whether the call can run torch's fused CPU kernel that also returns the log-sum-exp
    (what SDPA itself runs for these inputs; then the weights on demand cost one matmul and
    one exp): fp32/fp64 CPU inputs, 4-D, no dropout, no autograd, the kernel torch picks."""
    if _FLASH is None or dropout_p or q.device.type != "cpu" or q.dim() != 4 or torch.compiler.is_compiling():
        return False
    if q.dtype not in (torch.float32, torch.float64) or (attn_mask is not None and attn_mask.dim() != 4):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return False
    choice = getattr(torch, "_fused_sdp_choice", None)
    try:
        return choice is not None and choice(q, k, v, attn_mask, 0.0, False, scale=scale) == _FLASH_CHOICE
    except (RuntimeError, TypeError):  # pragma: no cover - private API changed
        return False


def _with_lse(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, scale: float, mask: Tensor | None):
    """``(out, lse)`` from the fused CPU kernel SDPA runs (the bool mask converted as SDPA
    converts it, so ``out`` is SDPA's own); ``lse`` is ``-inf`` in rows with no key."""
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros((), dtype=q.dtype).masked_fill(~attn_mask, float("-inf"))
    out, lse = _FLASH(q, k, v, 0.0, False, attn_mask=attn_mask, scale=scale)
    if mask is not None:
        lse = lse.masked_fill(~mask.any(dim=-1), float("-inf"))
    return out, lse


def _nan_rows(
    out: Tensor, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, *, causal: bool = False
) -> Tensor:
    """NaN propagates as in eager PyTorch: a query row holding NaN gives a NaN output row when
    it attends any key. (SDPA's fused CPU kernels return zeros for such a row at some sizes,
    and NaN for a row with no key.) Without a mask the reduction that looks for NaN runs only
    where :func:`drops_nan_rows` found that the kernel breaks the rule."""
    if torch.compiler.is_compiling():
        pass
    elif mask is None and not causal and not drops_nan_rows(query, key, value):
        return out
    elif not bool(torch.isnan(query.sum())):
        return out  # one reduction rules out NaN (a NaN anywhere makes the sum NaN)
    bad = torch.isnan(query).any(dim=-1, keepdim=True)  # (..., Tq, 1)
    if mask is not None:  # a row with no key gives 0 on every backend, whatever its query holds
        has_key = mask.any(dim=-1, keepdim=True)
        out = out.masked_fill(~has_key, 0.0)
        bad = bad & has_key
    return out.masked_fill(bad, float("nan"))


def _additive_mask_bytes(inputs: AttentionInputs, m: int, e: int) -> int:
    """The additive float mask built from a bool mask of ``m`` elements; with a bias, qkv folds
    the mask into it (``~mask`` and a float copy of the bias) and the result takes their
    broadcast shape."""
    work = 0
    if inputs.bias is not None:
        bias = inputs.bias
        work += m + (bias.numel() * e if bias.dtype != inputs.query.dtype else 0)
        if inputs.tensor_mask is not None:
            m = math.prod(torch.broadcast_shapes(bias.shape, inputs.tensor_mask.shape))
        else:
            m = max(m, bias.numel())
    return work + m * e


def _kernel(inputs: AttentionInputs) -> str:
    """``"fused"`` or ``"math"``: which kernel ``F.scaled_dot_product_attention`` will run for
    these inputs (asked from torch, whose choice depends on device, dtype, shapes, dropout)."""
    q, k, v = inputs.query, inputs.key, inputs.value
    dropout = inputs.dropout_p if inputs.dropout_active else 0.0
    causal = inputs.bias is None and plain_causal(inputs)
    attn_mask = None
    if inputs.has_mask and not causal:  # a zero-stride stand-in of the mask's shape and dtype
        dtype = torch.bool if inputs.bias is None else q.dtype
        shape = torch.broadcast_shapes(
            *[t.shape for t in (inputs.tensor_mask, inputs.bias) if t is not None],
            (1, 1, inputs.q_len, inputs.kv_len),
        )
        attn_mask = torch.zeros((), dtype=dtype, device=q.device).expand(shape)
    elif inputs.bias is not None:
        attn_mask = inputs.bias
    choice = getattr(torch, "_fused_sdp_choice", None)
    if choice is not None:
        try:
            kind = choice(q, k, v, attn_mask, dropout, causal, scale=inputs.scale)
            return "math" if kind <= 0 else "fused"  # SDPBackend: ERROR -1, MATH 0, fused kernels > 0
        except (RuntimeError, TypeError):  # pragma: no cover - private API changed
            pass
    fused = not dropout and q.dim() == 4 and q.shape[-1] == v.shape[-1]  # pragma: no cover
    return "fused" if fused else "math"  # pragma: no cover
