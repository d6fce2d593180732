"""The state of every global random generator, captured and put back: what checkpoints store
(read back with ``weights_only=True``) and what the Trainer rewinds when it abandons a step."""

from __future__ import annotations

import random
import sys
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["rng_state", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    """torch's CPU generator, CUDA's (when in use), ``random``'s and ``numpy.random``'s (when
    NumPy is imported), as tensors, numbers, strings and tuples."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    numpy = sys.modules.get("numpy")
    np_state = None
    if numpy is not None:
        kind, keys, pos, has_gauss, cached = numpy.random.get_state()
        np_state = (kind, keys.tolist(), int(pos), int(has_gauss), float(cached))
    return {"torch": torch.get_rng_state(), "cuda": cuda, "python": random.getstate(), "numpy": np_state}


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Put back what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    random.setstate(state["python"])
    if state["numpy"] is not None:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
