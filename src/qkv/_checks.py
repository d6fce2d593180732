"""Argument checks shared by every layer (each raises a clear error naming the argument).

They sit at the bottom of the package, next to :mod:`qkv._types`, and import nothing from qkv:
a module that validates a dropout probability, a dimension or a broadcast uses these instead of
writing its own.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "PADDING_MEANING",
    "broadcasts_to",
    "check_bool_mask",
    "check_dim",
    "check_dropout",
    "check_int",
    "check_positive",
]


def broadcasts_to(
    shape: tuple[int, ...] | torch.Size, target: tuple[int, ...], max_dims: int | None = None
) -> bool:
    """Whether ``shape`` broadcasts to ``target`` without growing it (and has at most
    ``max_dims`` dims)."""
    if max_dims is not None and len(shape) > max_dims:
        return False
    try:
        return tuple(torch.broadcast_shapes(tuple(shape), tuple(target))) == tuple(target)
    except RuntimeError:
        return False


def check_dim(name: str, value: object) -> int:
    """A positive int (``bool`` excluded) or a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def check_int(name: str, value: object, low: int) -> int:
    """An int ``>= low`` or an error naming the argument: TypeError for what is not an int
    (``bool`` included), ValueError for an int below ``low``. ``name`` may carry its owner
    (``"sliding_window: left"``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int >= {low}, got {value!r}")
    if value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return value


def check_positive(name: str, value: object) -> float:
    """A finite number > 0 or a ValueError naming the argument."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def check_dropout(dropout: object, name: str = "dropout") -> float:
    """A probability in ``[0, 1)`` or a ValueError naming the argument."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1), got {dropout!r}")
    return float(dropout)


# The convention of torch's ``key_padding_mask``, named in every message about it.
PADDING_MEANING = "True = padding, never attended"


def check_bool_mask(mask: Tensor, name: str = "mask", meaning: str = "True = may attend") -> Tensor:
    """Raise a clear error unless ``mask`` is a bool tensor; the message states the argument's
    own convention ``meaning`` (``"True = padding"`` for a ``key_padding_mask``...)."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name}: expected a bool tensor or a qkv.masks.Mask, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        hint = (
            " (float masks are additive biases: pass them as bias=)"
            if mask.is_floating_point()
            else f" (convert with {name}.bool(); {meaning})"
        )
        raise TypeError(f"{name}: expected dtype torch.bool ({meaning}), got {mask.dtype}{hint}")
    return mask
