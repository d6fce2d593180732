"""Lightweight and dynamic convolutions (Wu, Fan, Baevski, Dauphin, Auli 2019, "Pay Less
Attention with Lightweight and Dynamic Convolutions"), as functional ops.

Both are depthwise convolutions over time whose ``E`` channels are split into ``H`` contiguous
groups ("heads") of ``C = E / H`` channels; every channel of head ``h`` uses the same kernel of
width ``K``, softmax-normalized over its ``K`` taps:

    out[t, c] = sum_k softmax(w_h)[k] * x[t + k - P, c]          h = c // C     (LightConv)
    out[t, c] = sum_k softmax(f(x_t)_h)[k] * x[t + k - P, c]                    (DynamicConv)

LightConv's kernel ``w (H, K)`` is a parameter, shared by every time step; DynamicConv's kernel
``(B, T, H, K)`` is predicted from the input at each step (``f`` is a linear layer in the
paper; here the caller passes its output). ``P`` is the left padding:

    causal      P = K - 1        out[t] sees x[t-K+1 .. t]           (decoders)
    non-causal  P = (K - 1) // 2 out[t] sees x[t-P .. t+K-1-P]       (centered; for even K one
                                                                      more tap on the right)

Positions outside ``[0, T)`` and padded positions (``key_mask`` False) are zeros: padded inputs
are zeroed before the convolution, so nothing leaks from them. The kernel is not renormalized
at the edges (as in the paper): a row of the effective weights sums to 1 when its whole window
lies on real positions, and to the sum of the taps that do otherwise.

As attention: ``out[b, t, head h] = sum_s A[b, h, t, s] x[b, s, head h]`` with the banded matrix
``A[b, h, t, s] = kernel[b, t, h, s - t + P]`` (:func:`banded_weights`), returned as the
``weights`` when asked.

Shape legend (see :mod:`qkv._types`)::

    B batch   T length   E channels   H heads   C = E / H   K kernel width
    x (B, T, E), light weight (H, K), dynamic weight (B, T, H, K)
    -> out (B, T, E), weights (B, H, T, T)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_bool_mask
from .._types import AttentionOutput

__all__ = ["banded_weights", "conv_padding", "dynamic_conv", "light_conv"]


def conv_padding(kernel_size: int, causal: bool) -> tuple[int, int]:
    """``(left, right)`` zero padding: ``(K - 1, 0)`` causal, ``((K-1)//2, K//2)`` centered."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise ValueError(f"kernel_size: expected an int >= 1, got {kernel_size!r}")
    left = kernel_size - 1 if causal else (kernel_size - 1) // 2
    return left, kernel_size - 1 - left


def light_conv(
    x: Tensor,
    weight: Tensor,
    *,
    causal: bool = True,
    key_mask: Tensor | None = None,
    normalize: bool = True,
    weight_dropout: float = 0.0,
    training: bool = False,
    need_weights: bool = False,
) -> AttentionOutput:
    """LightConv: a depthwise convolution with one softmax-normalized kernel per head.

    Args:
        x: ``(B, T, E)``.
        weight: ``(H, K)`` kernel logits (``E`` divisible by ``H``).
        causal: left padding ``K - 1`` (no future input); False: centered.
        key_mask: ``(B, T)`` bool, True = real position (False = padding, zeroed first).
        normalize: softmax over the ``K`` taps (the paper); False uses ``weight`` as is.
        weight_dropout, training: DropConnect on the normalized kernel, only when training.
        need_weights: also return the banded weights ``(B, H, T, T)`` of the normalized kernel
            (before DropConnect, as attention weights are returned before dropout).

    Returns:
        :class:`qkv.AttentionOutput` with ``out (B, T, E)``, ``weights`` when asked,
        ``backend="light_conv"``.

    Raises:
        ValueError: wrong shapes (named), ``E`` not divisible by ``H``, dropout outside ``[0, 1)``.
        TypeError: non-float tensors, a non-bool key mask.
    """
    x = _check_x(x)
    bsz, t, e = x.shape
    _check_float("weight", weight, x)
    if weight.dim() != 2:
        raise ValueError(f"weight: expected shape (H, K), got {tuple(weight.shape)}")
    heads, k = weight.shape
    _check_heads(e, heads)
    kernel, used = _normalize(weight, normalize, weight_dropout, training)  # (H, K)
    x = _zero_padding(x, key_mask)
    left, right = conv_padding(k, causal)
    xp = F.pad(x.transpose(1, 2), (left, right))  # (B, E, T + K - 1)
    per_channel = used.repeat_interleave(e // heads, dim=0).unsqueeze(1)  # (E, 1, K): head of c = c // C
    out = F.conv1d(xp, per_channel, groups=e).transpose(1, 2)  # (B, T, E)
    weights = None
    if need_weights:
        weights = banded_weights(
            kernel[None, None].expand(bsz, t, heads, k), causal=causal, key_mask=key_mask
        )
    return AttentionOutput(out=out, weights=weights, backend="light_conv")


def dynamic_conv(
    x: Tensor,
    weight: Tensor,
    *,
    causal: bool = True,
    key_mask: Tensor | None = None,
    normalize: bool = True,
    weight_dropout: float = 0.0,
    training: bool = False,
    need_weights: bool = False,
    method: str = "auto",
) -> AttentionOutput:
    """DynamicConv: a depthwise convolution whose kernel changes with the time step.

    Args:
        x: ``(B, T, E)``.
        weight: ``(B, T, H, K)`` kernel logits, one kernel per sample, step and head (the
            paper predicts them from ``x_t`` with a linear layer).
        causal, key_mask, normalize, weight_dropout, training, need_weights: as
            :func:`light_conv`.
        method: ``"unfold"`` (windows of ``x`` as a strided view times the kernels:
            ``O(T K E)``), ``"band"`` (the banded ``(B, H, T, T)`` matrix times ``x``: more
            FLOPs, but one matmul, faster for short sequences) or ``"auto"``: band when
            ``T <= 16 K``. Both equal the definition within floating-point tolerance.

    Returns:
        :class:`qkv.AttentionOutput` with ``out (B, T, E)``, ``weights (B, H, T, T)`` when
        asked, ``backend="dynamic_conv"``.

    Raises:
        ValueError / TypeError: as :func:`light_conv`; ``weight`` not ``(B, T, H, K)``; an
            unknown ``method``.
    """
    if method not in ("auto", "unfold", "band"):
        raise ValueError(f"method: expected 'auto', 'unfold' or 'band', got {method!r}")
    x = _check_x(x)
    bsz, t, e = x.shape
    _check_float("weight", weight, x)
    if weight.dim() != 4 or tuple(weight.shape[:2]) != (bsz, t):
        raise ValueError(
            f"weight: expected shape (B, T, H, K) with (B, T) = ({bsz}, {t}), got {tuple(weight.shape)}"
        )
    heads, k = weight.shape[2], weight.shape[3]
    _check_heads(e, heads)
    kernel, used = _normalize(weight, normalize, weight_dropout, training)  # (B, T, H, K)
    x = _zero_padding(x, key_mask)
    c = e // heads
    if method == "band" or (method == "auto" and t <= 16 * k):
        band = banded_weights(used, causal=causal)  # (B, H, T, T)
        out = band @ x.view(bsz, t, heads, c).transpose(1, 2)  # (B, H, T, C)
        out = out.transpose(1, 2).reshape(bsz, t, e)  # (B, T, E)
    else:
        left, right = conv_padding(k, causal)
        xp = F.pad(x, (0, 0, left, right))  # (B, T + K - 1, E)
        windows = xp.unfold(1, k, 1)  # (B, T, E, K): window t holds x[t - P .. t - P + K - 1], a view
        windows = windows.view(bsz, t, heads, c, k)  # (B, T, H, C, K)
        out = torch.einsum("bthck,bthk->bthc", windows, used).reshape(bsz, t, e)  # (B, T, E)
    weights = banded_weights(kernel, causal=causal, key_mask=key_mask) if need_weights else None
    return AttentionOutput(out=out, weights=weights, backend="dynamic_conv")


def banded_weights(kernel: Tensor, *, causal: bool, key_mask: Tensor | None = None) -> Tensor:
    """The convolution as attention weights: ``A[b, h, t, s] = kernel[b, t, h, s - t + P]`` for
    ``0 <= s - t + P < K``, else 0; columns of padded positions (``key_mask`` False) are 0.

    Args:
        kernel: ``(B, T, H, K)``, the (normalized) kernels.
        causal: the padding rule of :func:`conv_padding`.
        key_mask: ``(B, T)`` bool, True = real position.

    Returns:
        ``(B, H, T, T)``; ``out = A @ x`` per head reproduces the convolution.
    """
    bsz, t, heads, k = kernel.shape
    left, _ = conv_padding(k, causal)
    width = t + k - 1
    dense = kernel.new_zeros(bsz, heads, t, width)  # column p = key position s + P
    # Row t holds its K taps at columns t .. t + K - 1: a strided view (rows never overlap).
    view = dense.as_strided((bsz, heads, t, k), (heads * t * width, t * width, width + 1, 1))
    view.copy_(kernel.permute(0, 2, 1, 3))  # (B, H, T, K)
    weights = dense[..., left : left + t]  # (B, H, T, T)
    if key_mask is not None:
        weights = weights * key_mask[:, None, None, :].to(weights.dtype)
    return weights


# ----------------------------------------------------------------------------- kernels and checks


def _normalize(weight: Tensor, normalize: bool, p: float, training: bool) -> tuple[Tensor, Tensor]:
    """``(kernel, used)``: the normalized kernel and the one the convolution uses (after
    DropConnect when training)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"weight_dropout: expected a number in [0, 1), got {p!r}")
    kernel = torch.softmax(weight, dim=-1) if normalize else weight
    return kernel, F.dropout(kernel, p=p, training=True) if training and p > 0 else kernel


def _zero_padding(x: Tensor, key_mask: Tensor | None) -> Tensor:
    if key_mask is None:
        return x
    check_bool_mask(key_mask, "key_mask")
    if tuple(key_mask.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"key_mask: expected shape (B, T) = {tuple(x.shape[:2])} with True = real position, "
            f"got {tuple(key_mask.shape)}"
        )
    return x.masked_fill(~key_mask[..., None], 0.0)  # padded inputs never reach the output


def _check_x(x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 3:
        raise ValueError(f"x: expected shape (B, T, E), got {tuple(x.shape)}")
    return x


def _check_float(name: str, t: object, ref: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} like x, got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name}: expected device {ref.device} like x, got {t.device}")


def _check_heads(e: int, heads: int) -> None:
    if heads < 1 or e % heads:
        raise ValueError(f"weight: expected H dividing E={e} (channels per head C = E / H), got H={heads}")
