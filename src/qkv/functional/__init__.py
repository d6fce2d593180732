"""Pure attention math: scores, normalizers, the ``attention`` entry point, kernel regression."""

# scores and normalize first: the backends import them while this package initializes.
from . import normalize, scores
from .normalize import masked_softmax
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
    "gaussian",
    "general",
    "kernel_regression",
    "masked_softmax",
    "nadaraya_watson",
    "normalize",
    "scaled_dot",
    "scores",
]
