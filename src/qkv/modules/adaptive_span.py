"""Multi-head self-attention with a learned span per head (Sukhbaatar et al. 2019, "Adaptive
Attention Span in Transformers").

Shape legend (see :mod:`qkv._types`)::

    B   batch        T   sequence length        E   embed_dim
    H   heads        Dh  head dim = E / H

    x (B, T, E) -> out (B, T, E), weights (B, H, T, T)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_dim, check_dropout
from .._types import AttentionOutput
from ..api.adaptive_span import adaptive_span_attention, check_ramp, span_penalty, span_window
from ..masks.core import PADDING_MEANING, check_bool_mask

__all__ = ["AdaptiveSpanAttention"]


class AdaptiveSpanAttention(nn.Module):
    """Self-attention where head ``h`` weights a key at distance ``x`` by the soft mask
    ``m_z(x) = clamp((R + z_h - x) / R, 0, 1)`` and renormalizes (the paper's equation; see
    :func:`qkv.api.adaptive_span.adaptive_span_attention`).

    The span is stored as a fraction, ``z_h = max_span * clamp(span_fraction_h, 0, 1)``, as in
    the paper's code. Add :meth:`span_penalty` to the loss so that spans shrink unless they
    pay off, and call :meth:`clamp_span_` after each optimizer step to keep the fractions in
    ``[0, 1]`` (outside it the clamp stops the gradient). Keys beyond the largest span plus the
    ramp are never scored (:attr:`window`): compute and memory shrink with the spans.

    Args:
        embed_dim: ``E``; divisible by ``num_heads``.
        num_heads: ``H``.
        max_span: ``S``, the largest span a head may learn (positions, > 0).
        ramp: ``R > 0``, the width of the soft ramp (the paper uses 32).
        init_span: the initial span of every head, in ``[0, max_span]`` positions (the paper's
            code starts at 0, i.e. a window of ``R``).
        causal: past keys only (language modelling, the paper's setting); False: symmetric
            distances ``|i - j|``.
        bias: biases of the four projections.
        dropout: dropout on the attention weights in training mode.
        block_size: query block length of the cropped computation.
        backend: passed to :func:`qkv.attention`.

    Attributes:
        q_proj, k_proj, v_proj, out_proj: ``Linear(E, E)``.
        span_fraction: ``(H,)`` parameter, ``z_h / S``.

    Raises:
        ValueError: dims that are not positive ints, ``E`` not divisible by ``H``,
            ``max_span <= 0``, ``ramp <= 0``, ``init_span`` outside ``[0, max_span]``, dropout
            outside ``[0, 1)``.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        num_heads: int,
        max_span: float,
        ramp: float = 32.0,
        init_span: float = 0.0,
        causal: bool = True,
        bias: bool = True,
        dropout: float = 0.0,
        block_size: int = 64,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.embed_dim = check_dim("embed_dim", embed_dim)
        self.num_heads = check_dim("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim: expected a multiple of num_heads={num_heads}, got {embed_dim}")
        self.head_dim = embed_dim // num_heads
        if isinstance(max_span, bool) or not isinstance(max_span, (int, float)) or not max_span > 0:
            raise ValueError(f"max_span: expected a number > 0, got {max_span!r}")
        if not math.isfinite(max_span):
            raise ValueError(f"max_span: expected a finite number, got {max_span!r}")
        self.max_span = float(max_span)
        self.ramp = check_ramp(ramp)
        if (
            isinstance(init_span, bool)
            or not isinstance(init_span, (int, float))
            or not 0 <= init_span <= max_span
        ):
            raise ValueError(f"init_span: expected a number in [0, max_span={max_span}], got {init_span!r}")
        self.causal = bool(causal)
        self.dropout = check_dropout(dropout)
        self.block_size = check_dim("block_size", block_size)
        if not isinstance(backend, str):
            raise TypeError(f"backend: expected a name (str), got {type(backend).__name__}")
        self.backend = backend
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.span_fraction = nn.Parameter(torch.full((num_heads,), init_span / self.max_span))
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(proj.weight)
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

    @property
    def span(self) -> Tensor:
        """``z = max_span * clamp(span_fraction, 0, 1)``, ``(H,)`` positions (differentiable)."""
        return self.max_span * self.span_fraction.clamp(0.0, 1.0)

    @property
    def window(self) -> int:
        """The farthest key any head can see now: ``ceil(max_h z_h + R) - 1``."""
        return span_window(self.span, self.ramp)

    def span_penalty(self, coefficient: float) -> Tensor:
        """``coefficient * mean_h z_h``, the paper's span loss (add it to the task loss)."""
        return span_penalty(self.span, coefficient)

    @torch.no_grad()
    def clamp_span_(self) -> None:
        """Clamp ``span_fraction`` into ``[0, 1]`` in place (call after each optimizer step)."""
        self.span_fraction.clamp_(0.0, 1.0)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, max_span={self.max_span:g}, "
            f"ramp={self.ramp:g}, causal={self.causal}, dropout={self.dropout}"
        )

    def forward(
        self, x: Tensor, *, key_padding_mask: Tensor | None = None, need_weights: bool = False
    ) -> AttentionOutput:
        """Self-attention over ``x``.

        Args:
            x: ``(B, T, E)``.
            key_padding_mask: ``(B, T)`` bool with torch's convention, True = padding (never
                attended).
            need_weights: also return the weights ``(B, H, T, T)``.

        Returns:
            :class:`qkv.AttentionOutput` with ``out (B, T, E)``, ``weights`` when asked, ``lse``
            when the backend gives it, and the backend's name.

        Raises:
            ValueError: ``x`` not ``(B, T, E)``, a padding mask not ``(B, T)``.
            TypeError: a non-bool padding mask.
        """
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.embed_dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected shape (B, T, E={self.embed_dim}), got {got}")
        bsz, t, _ = x.shape
        key_mask = None
        if key_padding_mask is not None:
            check_bool_mask(key_padding_mask, "key_padding_mask", PADDING_MEANING)
            if tuple(key_padding_mask.shape) != (bsz, t):
                raise ValueError(
                    f"key_padding_mask: expected shape (B, T) = ({bsz}, {t}) with True = padding, "
                    f"got {tuple(key_padding_mask.shape)}"
                )
            key_mask = ~key_padding_mask  # True = may attend
        heads, dh = self.num_heads, self.head_dim
        q = self.q_proj(x).view(bsz, t, heads, dh).transpose(1, 2)  # (B, H, T, Dh)
        k = self.k_proj(x).view(bsz, t, heads, dh).transpose(1, 2)  # (B, H, T, Dh)
        v = self.v_proj(x).view(bsz, t, heads, dh).transpose(1, 2)  # (B, H, T, Dh)
        res = adaptive_span_attention(
            q, k, v, self.span.to(x.dtype), ramp=self.ramp, causal=self.causal, key_mask=key_mask,
            dropout_p=self.dropout, training=self.training, need_weights=need_weights,
            block_size=self.block_size, backend=self.backend,
        )  # fmt: skip
        out = self.out_proj(res.out.transpose(1, 2).reshape(bsz, t, self.embed_dim))  # (B, T, E)
        return AttentionOutput(out=out, weights=res.weights, lse=res.lse, backend=res.backend)
