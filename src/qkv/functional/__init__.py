"""Pure attention math: scores, normalizers, local attention, dynamic convolutions, routing.

Nothing here chooses a backend: the entry point :func:`qkv.attention` and the compositions that
call it (adaptive span, Nadaraya-Watson) live in :mod:`qkv.api`, above :mod:`qkv.backends`.
"""

from . import local, normalize, routing, scores
from .dynamic_conv import light_conv
from .local import local_attention, local_centers
from .normalize import (
    entmax15,
    entmax_bisect,
    gumbel_softmax_weights,
    hard_argmax,
    masked_softmax,
    sample_hard,
    sparsemax,
    topk_softmax,
)
from .routing import dynamic_routing, margin_loss, squash
from .scores import additive, cosine, dot, gaussian, general, scaled_dot

__all__ = [
    "additive",
    "cosine",
    "dot",
    "dynamic_routing",
    "entmax15",
    "entmax_bisect",
    "gaussian",
    "general",
    "gumbel_softmax_weights",
    "hard_argmax",
    "light_conv",
    "local",
    "local_attention",
    "local_centers",
    "margin_loss",
    "masked_softmax",
    "normalize",
    "routing",
    "sample_hard",
    "scaled_dot",
    "scores",
    "sparsemax",
    "squash",
    "topk_softmax",
]
