"""Thin ``nn.Module`` shells that own parameters and call :mod:`qkv.functional`.

Every module takes ``(B, T, E)`` inputs (batch first), has a keyword-only constructor and
returns a :class:`qkv.AttentionOutput` (weights are returned, never stored on ``self``).
"""

from .additive import AdditiveAttention
from .dot_product import DotProductAttention
from .kernel_regression import NadarayaWatson
from .luong import LuongAttention
from .multihead import MultiHeadAttention
from .scores import AdditiveScore, CosineScore, GaussianScore, GeneralScore

__all__ = [
    "AdditiveAttention",
    "AdditiveScore",
    "CosineScore",
    "DotProductAttention",
    "GaussianScore",
    "GeneralScore",
    "LuongAttention",
    "MultiHeadAttention",
    "NadarayaWatson",
]
