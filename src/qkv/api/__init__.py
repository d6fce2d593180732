"""The public entry of attention: :func:`attention` validates its arguments once
(:mod:`qkv.api.prepare`), asks :mod:`qkv.backends` which kernel runs them, and returns an
:class:`qkv.AttentionOutput`; the compositions built on it (adaptive span, Nadaraya-Watson
kernel regression) live here too, and :func:`scaled_dot_product_attention`, PyTorch's SDPA call
on the same dispatch. Layers: ``functional`` (math) < ``masks`` < ``backends`` <
``api`` < ``modules``.
"""

from . import adaptive_span, kernel_regression
from .adaptive_span import adaptive_span_attention, span_penalty
from .attention import attention, dispatch_report
from .kernel_regression import nadaraya_watson
from .prepare import prepare
from .torch_sdpa import scaled_dot_product_attention

__all__ = [
    "adaptive_span",
    "adaptive_span_attention",
    "attention",
    "dispatch_report",
    "kernel_regression",
    "nadaraya_watson",
    "prepare",
    "scaled_dot_product_attention",
    "span_penalty",
]
