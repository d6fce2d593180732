"""Thin ``nn.Module`` shells that own parameters and call :mod:`qkv.functional`.

Every module takes ``(B, T, E)`` inputs (batch first), has keyword-only options (the sizes
that define it, like ``MultiHeadAttention(embed_dim, num_heads)``, may come first) and
returns a :class:`qkv.AttentionOutput` (weights are returned, never stored on ``self``),
except :class:`TorchMultiheadAttention`, which speaks :class:`torch.nn.MultiheadAttention`'s
convention to be its drop-in.
Position encodings (:mod:`.positional`) and KV caches for decoding (:mod:`.kv_cache`) live
here too.
"""

from .adaptive_span import AdaptiveSpanAttention
from .additive import AdditiveAttention
from .dot_product import DotProductAttention
from .dynamic_conv import DynamicConv, LightConv
from .hard import HardAttention, HardAttentionOutput, ReinforceBaseline, reinforce_loss
from .kernel_regression import NadarayaWatson
from .kv_cache import CacheStep, KVCache, SlidingWindowKVCache, StaticKVCache
from .luong import LuongAttention
from .multihead import MultiHeadAttention
from .pooling import AttentionPooling
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
from .routing import CapsuleRouting
from .scores import AdditiveScore, CosineScore, GaussianScore, GeneralScore
from .torch_multihead import TorchMultiheadAttention

__all__ = [
    "ALiBi",
    "AdaptiveSpanAttention",
    "AdditiveAttention",
    "AdditiveScore",
    "AttentionPooling",
    "CacheStep",
    "CapsuleRouting",
    "CosineScore",
    "DotProductAttention",
    "DynamicConv",
    "GaussianScore",
    "GeneralScore",
    "HardAttention",
    "HardAttentionOutput",
    "KVCache",
    "LearnedPositionalEncoding",
    "LightConv",
    "LuongAttention",
    "MultiHeadAttention",
    "NadarayaWatson",
    "PositionalBias",
    "ReinforceBaseline",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "SlidingWindowKVCache",
    "StaticKVCache",
    "T5RelativeBias",
    "TorchMultiheadAttention",
    "alibi_bias",
    "alibi_slopes",
    "apply_rotary",
    "positional",
    "reinforce_loss",
    "sinusoidal_table",
    "t5_relative_buckets",
]
