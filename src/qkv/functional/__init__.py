"""Pure attention math: scores, normalizers, the ``attention`` entry point, kernel regression."""

# scores and normalize first: the backends import them while this package initializes.
from . import normalize, scores
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
from .scores import additive, cosine, dot, gaussian, general, scaled_dot

from .attention import attention, dispatch_report  # isort: skip
from . import kernel_regression  # isort: skip
from .kernel_regression import nadaraya_watson  # isort: skip

__all__ = [
    "additive",
    "attention",
    "cosine",
    "dispatch_report",
    "dot",
    "entmax15",
    "entmax_bisect",
    "gaussian",
    "general",
    "gumbel_softmax_weights",
    "hard_argmax",
    "kernel_regression",
    "masked_softmax",
    "nadaraya_watson",
    "normalize",
    "sample_hard",
    "scaled_dot",
    "scores",
    "sparsemax",
    "topk_softmax",
]
