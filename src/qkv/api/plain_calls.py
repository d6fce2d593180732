"""The plain repeated call of :func:`qkv.attention`: a call signature seen before, run directly.

A hot loop calls attention with the same shapes again and again, most often with no mask, no
bias and no weights asked. For such a call every check of :mod:`qkv.api.prepare` and the
backend choice of :mod:`qkv.backends.dispatch` depend only on what :func:`plain_key` reads
(shapes, dtypes, devices, last-dim strides, ``requires_grad``, autograd's mode and the plain
arguments), so the first call of a signature runs the full path and, when its backend choice
did not read the free memory, keeps the chosen backend's *runner*: a function of ``(query, key,
value)`` that does what the backend's ``run`` does for these inputs (for ``sdpa``: the fused
kernel and, only at the sizes where the kernel breaks it, the NaN rule's reduction). Later
calls with the same key run it at once.

Nothing else changes: a call with a mask, a bias, weights, a grouped-query or 2-D/3-D layout,
a named score with parameters, a callable, under ``torch.compile`` or inside a
sequence-parallel context takes the full path every time; errors are raised by the full path on
every call (a failing call stores nothing); a swapped backend registry is never answered from
here (each entry keeps the registry it was made under).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch
from torch import Tensor

from .._bounded_cache import BoundedCache
from .._types import AttentionOutput
from ..backends import dispatch
from ..backends.base import AttentionInputs

__all__ = ["lookup", "plain_key", "remember"]

Runner = Callable[[Tensor, Tensor, Tensor], AttentionOutput]

_RUNNERS = BoundedCache(512)  # plain_key -> (registry token, runner)
_PLAIN = (int, float, bool, type(None))


def plain_key(query, key, value, score, scale, dropout_p, training, backend, normalize) -> Hashable | None:
    """The key of a call with no mask, bias, weights or parameters, or None when the call is
    not one the runners serve (see the module docstring; the caller checks the rest)."""
    if not (type(query) is Tensor and type(key) is Tensor and type(value) is Tensor) or query.dim() < 4:
        return None
    if (
        type(score) is not str
        or type(backend) is not str
        or type(scale) not in _PLAIN
        or normalize != "softmax"
    ):
        return None
    if type(dropout_p) not in _PLAIN or type(training) not in _PLAIN or torch.compiler.is_compiling():
        return None
    return (
        query.shape, key.shape, value.shape, query.dtype, key.dtype, value.dtype,
        query.device, key.device, value.device, query.stride(-1), key.stride(-1), value.stride(-1),
        query.requires_grad, key.requires_grad, value.requires_grad, torch.is_grad_enabled(),
        score, type(scale), scale, type(dropout_p), dropout_p, training, backend,
    )  # fmt: skip


def lookup(plain: Hashable | None, backend: str) -> Runner | None:
    """The runner kept for ``plain`` under the current registry, outside any sequence-parallel
    context where ``auto`` would mean ``ring``; else None."""
    if plain is None:
        return None
    entry = _RUNNERS.get(plain)
    if entry is None or entry[0] != dispatch.registry_token() or dispatch.resolves_elsewhere(backend):
        return None
    return entry[1]


def remember(plain: Hashable | None, inputs: AttentionInputs, backend: str, chosen: object) -> None:
    """Keep ``chosen``'s runner for ``plain`` when the full path just ran it on ``inputs`` from
    a cached choice (one that read no free memory) and the backend offers one."""
    if plain is None or inputs.signature is None:
        return
    if dispatch.cached_choice(inputs, backend) is not chosen:
        return
    make = getattr(chosen, "plain_runner", None)
    runner = None if make is None else make(inputs)
    if runner is not None:
        _RUNNERS.put(plain, (dispatch.registry_token(), runner))
