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
from . import adaptive_span, local, routing  # isort: skip
from .adaptive_span import adaptive_span_attention, span_penalty  # isort: skip
from .dynamic_conv import light_conv  # isort: skip
from .local import local_attention, local_centers  # isort: skip
from .routing import dynamic_routing, margin_loss, squash  # isort: skip

__all__ = [
    "adaptive_span",
    "adaptive_span_attention",
    "additive",
    "attention",
    "cosine",
    "dispatch_report",
    "dot",
    "dynamic_routing",
    "entmax15",
    "entmax_bisect",
    "gaussian",
    "general",
    "gumbel_softmax_weights",
    "hard_argmax",
    "kernel_regression",
    "light_conv",
    "local",
    "local_attention",
    "local_centers",
    "margin_loss",
    "masked_softmax",
    "nadaraya_watson",
    "normalize",
    "routing",
    "sample_hard",
    "scaled_dot",
    "scores",
    "span_penalty",
    "sparsemax",
    "squash",
    "topk_softmax",
]
