"""Thin ``nn.Module`` shells that own parameters and call :mod:`qkv.functional`.

Every module takes ``(B, T, E)`` inputs (batch first), has a keyword-only constructor and
returns a :class:`qkv.AttentionOutput` (weights are returned, never stored on ``self``).
Position encodings (:mod:`.positional`) and KV caches for decoding (:mod:`.kv_cache`) live
here too.
"""

from .additive import AdditiveAttention
from .dot_product import DotProductAttention
from .kernel_regression import NadarayaWatson
from .kv_cache import CacheStep, KVCache, SlidingWindowKVCache, StaticKVCache
from .luong import LuongAttention
from .multihead import MultiHeadAttention
from .positional import (
    ALiBi,
    LearnedPositionalEncoding,
    PositionalBias,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    T5RelativeBias,
    alibi_bias,
    alibi_slopes,
    apply_rotary,
    positional,
    sinusoidal_table,
    t5_relative_buckets,
)
from .scores import AdditiveScore, CosineScore, GaussianScore, GeneralScore

__all__ = [
    "ALiBi",
    "AdditiveAttention",
    "AdditiveScore",
    "CacheStep",
    "CosineScore",
    "DotProductAttention",
    "GaussianScore",
    "GeneralScore",
    "KVCache",
    "LearnedPositionalEncoding",
    "LuongAttention",
    "MultiHeadAttention",
    "NadarayaWatson",
    "PositionalBias",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "SlidingWindowKVCache",
    "StaticKVCache",
    "T5RelativeBias",
    "alibi_bias",
    "alibi_slopes",
    "apply_rotary",
    "positional",
    "sinusoidal_table",
    "t5_relative_buckets",
]
