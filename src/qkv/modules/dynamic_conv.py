"""LightConv and DynamicConv blocks (Wu et al. 2019, "Pay Less Attention with Lightweight and
Dynamic Convolutions", section 3 and figure 2), drop-in replacements for self-attention.

Each block is the paper's: ``Linear(E, 2E) -> GLU -> convolution -> Linear(E, E)``, with the
convolution of :mod:`qkv.functional.dynamic_conv`. The forward takes what a self-attention layer
takes and returns a :class:`qkv.AttentionOutput`, so a Transformer layer can use either.

Shape legend (see :mod:`qkv._types`)::

    B batch   T length   E embed_dim   H heads   K kernel_size
    x (B, T, E) -> out (B, T, E), weights (B, H, T, T) (the banded convolution matrix)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_dim
from .._types import AttentionOutput
from ..functional.dynamic_conv import conv_padding, dynamic_conv, light_conv
from ..masks.core import PADDING_MEANING, check_bool_mask

__all__ = ["DynamicConv", "LightConv"]


class _ConvBlock(nn.Module):
    """What LightConv and DynamicConv share: projections, GLU, padding and checks."""

    def __init__(
        self,
        *,
        embed_dim: int,
        kernel_size: int,
        num_heads: int,
        causal: bool,
        weight_dropout: float,
        weight_softmax: bool,
        bias: bool,
    ) -> None:
        super().__init__()
        self.embed_dim = check_dim("embed_dim", embed_dim)
        self.num_heads = check_dim("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim: expected a multiple of num_heads={num_heads}, got {embed_dim}")
        conv_padding(kernel_size, causal)  # validates kernel_size
        self.kernel_size = kernel_size
        self.causal = bool(causal)
        if (
            isinstance(weight_dropout, bool)
            or not isinstance(weight_dropout, (int, float))
            or not 0.0 <= weight_dropout < 1.0
        ):
            raise ValueError(f"weight_dropout: expected a number in [0, 1), got {weight_dropout!r}")
        self.weight_dropout = float(weight_dropout)
        self.weight_softmax = bool(weight_softmax)
        self.in_proj = nn.Linear(embed_dim, 2 * embed_dim, bias=bias)  # -> GLU -> E
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, kernel_size={self.kernel_size}, num_heads={self.num_heads}, "
            f"causal={self.causal}, weight_dropout={self.weight_dropout}, weight_softmax={self.weight_softmax}"
        )

    def _inputs(self, x: Tensor, key_padding_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """GLU(in_proj(x)) ``(B, T, E)`` and the key mask (True = real position) or None."""
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.embed_dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected shape (B, T, E={self.embed_dim}), got {got}")
        key_mask = None
        if key_padding_mask is not None:
            check_bool_mask(key_padding_mask, "key_padding_mask", PADDING_MEANING)
            if tuple(key_padding_mask.shape) != tuple(x.shape[:2]):
                raise ValueError(
                    f"key_padding_mask: expected shape (B, T) = {tuple(x.shape[:2])} with True = padding, "
                    f"got {tuple(key_padding_mask.shape)}"
                )
            key_mask = ~key_padding_mask
        h = F.glu(self.in_proj(x), dim=-1)  # (B, T, 2E) -> (B, T, E)
        if key_mask is not None:
            h = h.masked_fill(key_padding_mask[..., None], 0.0)  # padded steps never leak
        return h, key_mask

    def _conv_kwargs(self, key_mask: Tensor | None, need_weights: bool) -> dict:
        return dict(
            causal=self.causal, key_mask=key_mask, normalize=self.weight_softmax,
            weight_dropout=self.weight_dropout, training=self.training, need_weights=need_weights,
        )  # fmt: skip


class LightConv(_ConvBlock):
    """LightConv block: ``out_proj(LightConv(GLU(in_proj(x))))``; the convolution's kernel
    ``softmax(weight_h)`` is one ``(K,)`` vector per head, shared by the ``E / H`` channels of
    the head and by every time step (:func:`qkv.functional.dynamic_conv.light_conv`).

    Args:
        embed_dim: ``E``, divisible by ``num_heads``.
        kernel_size: ``K >= 1``.
        num_heads: ``H``, the number of distinct kernels.
        causal: only past and current inputs (decoder); False: a centered window.
        weight_dropout: DropConnect on the normalized kernel in training mode.
        weight_softmax: normalize the kernel with a softmax over ``K`` (the paper).
        bias: biases of the projections.

    Attributes:
        in_proj, weight, out_proj: ``Linear(E, 2E)`` (then GLU), ``(H, K)``, ``Linear(E, E)``.

    Raises:
        ValueError: dims that are not positive ints, ``E`` not divisible by ``H``, dropout
            outside ``[0, 1)``.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        kernel_size: int,
        num_heads: int,
        causal: bool = True,
        weight_dropout: float = 0.0,
        weight_softmax: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__(
            embed_dim=embed_dim, kernel_size=kernel_size, num_heads=num_heads, causal=causal,
            weight_dropout=weight_dropout, weight_softmax=weight_softmax, bias=bias,
        )  # fmt: skip
        self.weight = nn.Parameter(torch.empty(num_heads, kernel_size))
        nn.init.xavier_uniform_(self.weight)

    def forward(
        self, x: Tensor, *, key_padding_mask: Tensor | None = None, need_weights: bool = False
    ) -> AttentionOutput:
        """Args: ``x (B, T, E)``; ``key_padding_mask (B, T)``, True = padding (torch's
        convention); ``need_weights``: also return the banded weights ``(B, H, T, T)`` that map
        the GLU outputs to the convolution's outputs.

        Returns:
            :class:`qkv.AttentionOutput` ``(out (B, T, E), weights or None)``, backend
            ``"light_conv"``.
        """
        h, key_mask = self._inputs(x, key_padding_mask)
        res = light_conv(h, self.weight.to(h.dtype), **self._conv_kwargs(key_mask, need_weights))
        return AttentionOutput(out=self.out_proj(res.out), weights=res.weights, backend=res.backend)


class DynamicConv(_ConvBlock):
    """DynamicConv block: ``out_proj(DynamicConv(GLU(in_proj(x))))``; at each step ``t`` the
    kernels are predicted from the step's input, ``softmax(weight_proj(h_t))`` reshaped to
    ``(H, K)`` (:func:`qkv.functional.dynamic_conv.dynamic_conv`).

    Args: as :class:`LightConv`.

    Attributes:
        in_proj, weight_proj, out_proj: ``Linear(E, 2E)`` (then GLU), ``Linear(E, H * K)``,
            ``Linear(E, E)``.

    Raises:
        ValueError: as :class:`LightConv`.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        kernel_size: int,
        num_heads: int,
        causal: bool = True,
        weight_dropout: float = 0.0,
        weight_softmax: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__(
            embed_dim=embed_dim, kernel_size=kernel_size, num_heads=num_heads, causal=causal,
            weight_dropout=weight_dropout, weight_softmax=weight_softmax, bias=bias,
        )  # fmt: skip
        self.weight_proj = nn.Linear(embed_dim, num_heads * kernel_size, bias=bias)

    def forward(
        self, x: Tensor, *, key_padding_mask: Tensor | None = None, need_weights: bool = False
    ) -> AttentionOutput:
        """As :meth:`LightConv.forward`; backend ``"dynamic_conv"``."""
        h, key_mask = self._inputs(x, key_padding_mask)
        bsz, t, _ = h.shape
        kernel = self.weight_proj(h).view(bsz, t, self.num_heads, self.kernel_size)  # (B, T, H, K)
        res = dynamic_conv(h, kernel, **self._conv_kwargs(key_mask, need_weights))
        return AttentionOutput(out=self.out_proj(res.out), weights=res.weights, backend=res.backend)
