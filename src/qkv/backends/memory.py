"""Memory plans: how many bytes a backend (or a weights request) will take, before it runs.

``auto`` never picks a backend whose plan cannot fit in the device's budget
(:mod:`qkv.backends.device_budget`), and an explicit backend or a weights request that cannot
fit raises :class:`MemoryPlanError` at once, saying how much it needs and what would fit,
instead of dying in the allocator minutes later.

Each backend owns its estimate: ``memory_bytes(inputs)`` on the backend (see
:class:`qkv.backends.base.Backend`), the peak *extra* bytes of one call beyond its inputs (the
output included), measured on CPU (peak RSS, torch 2.13) and kept on the safe side. This module
holds what those estimates share, with::

    N = batch x heads (all leading dims)    L = N * Tq * Tk (the logits)
    e = bytes of the input dtype             c = bytes of the compute dtype (float32 for halves)
    M = elements of the dense mask a pattern builds (Tq * Tk, times the batch if it depends on it)

(:func:`sizes`, :func:`needs_grad`, :func:`score_width`, :func:`dense_mask_bytes`,
:func:`mask_elements`, :func:`pattern_tables_bytes`). A dense mask built from a
:class:`qkv.masks.Mask` keeps :data:`PATTERN_KEPT_BYTES` per element (1 for causal) and takes
up to :data:`PATTERN_BYTES` per element while it is built (int64 index arithmetic); block-wise
backends spend :data:`PATTERN_TABLES` on a pattern's tables. Weights on demand
(:func:`weights_bytes`) take ``N' Tq' Tk e`` for the selected heads and rows plus one key block
of work. A plan under :data:`MIN_CHECKED_BYTES` is never refused (reading the free memory costs
more than it risks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..masks.core import Mask
from . import device_budget
from .base import AttentionInputs, BackendNotSupportedError

__all__ = [
    "MIN_CHECKED_BYTES",
    "MemoryPlanError",
    "backend_error",
    "below_check",
    "check_weights",
    "dense_mask_bytes",
    "estimate_bytes",
    "format_bytes",
    "mask_elements",
    "needs_grad",
    "pattern_tables_bytes",
    "score_width",
    "sizes",
    "weights_bytes",
]

MIN_CHECKED_BYTES = 4 << 20  # plans below this are never refused (no memory read)
PATTERN_BYTES = 18  # peak bytes per element while a pattern builds its dense mask
PATTERN_KEPT_BYTES = 4  # bytes per element a built dense mask holds (with the allocator's slack)
PATTERN_TABLES = 16 << 20  # a pattern's tables, layouts and per-block index arithmetic


class MemoryPlanError(BackendNotSupportedError):
    """A plan (an explicit backend, or the weights asked for) cannot fit in the memory available.

    Raised before anything is allocated. It is a :class:`BackendNotSupportedError` (hence a
    ``ValueError``): like the other reasons an explicit backend cannot run, it is a verdict on
    the arguments, which the caller fixes by choosing another backend or asking for less
    (``weights_for=``); code that already falls back on ``BackendNotSupportedError`` keeps
    working. It is not a ``MemoryError``: nothing failed to allocate, and the process is fine.

    Attributes:
        needed: the estimated bytes of the plan.
        available: the bytes available on the device when it was planned.
    """

    def __init__(self, message: str, *, needed: int, available: int) -> None:
        super().__init__(message)
        self.needed, self.available = needed, available


# ----------------------------------------------------------------------------- estimates


def sizes(inputs: AttentionInputs) -> dict[str, int]:
    """The sizes every estimate uses (see the module docstring)."""
    q, v = inputs.query, inputs.value
    n = math.prod(q.shape[:-2])
    e = q.element_size()
    c = 4 if q.dtype in (torch.float16, torch.bfloat16) else e
    return dict(
        n=n, tq=inputs.q_len, tk=inputs.kv_len, d=q.shape[-1], dv=v.shape[-1], e=e, c=c,
        L=n * inputs.q_len * inputs.kv_len,
        qkv=q.numel() + inputs.key.numel() + v.numel(),
    )  # fmt: skip


def needs_grad(inputs: AttentionInputs) -> bool:
    """Autograd will keep intermediates (and run a backward) for this call."""
    if not torch.is_grad_enabled():
        return False
    tensors = [inputs.query, inputs.key, inputs.value, inputs.bias]
    tensors += [t for t in inputs.score_kwargs.values() if isinstance(t, Tensor)]
    if isinstance(inputs.score_fn, nn.Module):
        tensors += list(inputs.score_fn.parameters())
    return any(t is not None and t.requires_grad for t in tensors)


def score_width(inputs: AttentionInputs) -> int:
    """Features per logit a score builds before reducing: ``A`` for additive, ``D`` for
    gaussian and score modules (``(..., Tq, Tk, W)`` intermediates), 1 for dot-like scores."""
    return inputs.score.width(int(inputs.query.shape[-1]))


def _pattern_lead(pattern: Mask, batch: int) -> int:
    """Product of the leading dims of the dense mask ``pattern.materialize`` builds: its
    declared ``(b, h)`` sizes, or the batch for a pattern that depends on it without saying."""
    shape = pattern.batch_head_shape
    if shape is not None:
        return math.prod(shape)
    return batch if pattern.depends_on_batch_head else 1


def _pattern_elements(inputs: AttentionInputs) -> int:
    """Elements ``M`` of the dense mask built from the pattern (0 without one)."""
    if inputs.pattern is None:
        return 0
    return inputs.q_len * inputs.kv_len * _pattern_lead(inputs.pattern, math.prod(inputs.query.shape[:-3]))


def _cheap_pattern(inputs: AttentionInputs) -> bool:
    """No pattern, or one (causal, full) that is a comparison of two aranges: no tables, and
    a dense mask of bools only."""
    p = inputs.pattern
    return p is None or p.is_full or p.is_plain_causal(inputs.q_len, inputs.kv_len)


def dense_mask_bytes(inputs: AttentionInputs) -> tuple[int, int]:
    """``(kept, peak)`` bytes of the dense mask a pattern builds (0, 0 for a tensor mask or no
    mask): :data:`PATTERN_KEPT_BYTES` per element kept (1 for causal), up to
    :data:`PATTERN_BYTES` while built."""
    m = _pattern_elements(inputs)
    if _cheap_pattern(inputs):
        return m, m
    return m * PATTERN_KEPT_BYTES, m * PATTERN_BYTES


def mask_elements(inputs: AttentionInputs) -> int:
    """Elements of the dense mask (built from the pattern, or the tensor mask's own)."""
    if inputs.tensor_mask is not None:
        return inputs.tensor_mask.numel()
    return _pattern_elements(inputs)


def pattern_tables_bytes(inputs: AttentionInputs) -> int:
    """What a block-wise backend spends on a pattern besides its blocks: :data:`PATTERN_TABLES`
    (0 for causal and full)."""
    return 0 if _cheap_pattern(inputs) else PATTERN_TABLES


def below_check(inputs: AttentionInputs) -> bool:
    """True when no plan of the built-in backends (their ``memory_bytes``) can exceed
    :data:`MIN_CHECKED_BYTES`, by a bound cheaper than the estimates: 256 bytes per logit, plus
    64 W for a wide score, plus 64 per input element (patterns excluded: tables, blocksparse's
    gathers). Keep it above every estimate when editing them. Inside a graph being traced
    (``torch.compile``, ``torch.export``) nothing is planned: no data reaches the planner there."""
    if torch.compiler.is_compiling():
        return True
    if inputs.pattern is not None:
        return False
    q = inputs.query
    logits = math.prod(q.shape[:-1]) * inputs.kv_len
    elements = q.numel() + inputs.key.numel() + inputs.value.numel()
    return logits * (256 + 64 * score_width(inputs)) + 64 * elements <= MIN_CHECKED_BYTES


def estimate_bytes(backend: Any, inputs: AttentionInputs) -> int | None:
    """Estimated peak extra bytes of running ``backend`` on ``inputs`` (its ``memory_bytes``),
    or None for an object without one (never refused for memory). Call it only for a backend
    that supports the inputs."""
    own = getattr(backend, "memory_bytes", None)
    return None if own is None else int(own(inputs))


def _count(sel: Any, size: int) -> int:
    """How many heads or rows a ``weights_for`` selection picks (None = all)."""
    if sel is None:
        return size
    if isinstance(sel, slice):
        return len(range(*sel.indices(size)))
    if isinstance(sel, int):
        return 1
    if isinstance(sel, Tensor):
        return sel.numel()
    return len(sel) if isinstance(sel, Sequence) else size


def _selected(inputs: AttentionInputs, weights_for: tuple[Any, Any] | None) -> int:
    """Elements of the weights ``(..., H', Tq', Tk)`` that ``weights_for`` selects (None: all)."""
    heads, rows = weights_for or (None, None)
    lead = math.prod(inputs.query.shape[:-3])
    return lead * _count(heads, inputs.query.shape[-3]) * _count(rows, inputs.q_len) * inputs.kv_len


def weights_bytes(inputs: AttentionInputs, weights_for: tuple[Any, Any] | None = None) -> int:
    """Bytes of computing the weights ``(..., H', Tq', Tk)`` selected by ``weights_for``
    (``(heads, rows)``; by default what ``inputs`` asks for: 0 when it asks for none): the
    result in the input dtype plus the work of the second pass over one key block (logits,
    exp, mask: ~10 c per element, and int64 index arithmetic for a pattern)."""
    if weights_for is None:
        if not inputs.need_weights:
            return 0
        weights_for = inputs.weights_for
    s = sizes(inputs)
    selected = _selected(inputs, weights_for)  # (..., H', Tq', Tk)
    block = selected // s["tk"] * min(1024, s["tk"]) if s["tk"] else 0  # (..., H', Tq', 1024)
    per_element = 10 * s["c"] + (PATTERN_BYTES if inputs.pattern is not None else 0)
    return selected * s["e"] + block * per_element


# ----------------------------------------------------------------------------- messages


def format_bytes(n: int) -> str:
    """``115.2 GB``, ``31 MB``, ``4.2 MB``, ``512 kB``: decimal units, about 3 digits."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value >= 10 and unit in ("MB", "kB") else f"{value:.1f} {unit}"
    return f"{n} bytes"


def _problem(inputs: AttentionInputs) -> str:
    lead = math.prod(inputs.query.shape[:-2])
    dtype = str(inputs.query.dtype).removeprefix("torch.")
    return f"Tq x Tk = {inputs.q_len} x {inputs.kv_len} with batch x heads = {lead} ({dtype})"


def _room_text(available: int) -> str:
    share = device_budget.SAFETY_FRACTION
    return f"about {format_bytes(available)} is available (plans use at most {share:.0%})"


def backend_error(
    name: str, inputs: AttentionInputs, needed: int, available: int, fits: list[tuple[str, int]]
) -> MemoryPlanError:
    """The error of an explicit backend whose plan does not fit; ``fits`` lists the backends
    that do, as ``(name, bytes)``."""
    if fits:
        others = ", ".join(f"backend {n!r} fits (about {format_bytes(b)})" for n, b in fits)
        hint = f"{others}; backend='auto' picks one that fits"
    else:
        hint = "no backend fits these inputs: shorten the sequences or split the batch"
    return MemoryPlanError(
        f"backend {name!r} needs about {format_bytes(needed)} for {_problem(inputs)}, but "
        f"{_room_text(available)}; {hint}",
        needed=needed,
        available=available,
    )


def check_weights(inputs: AttentionInputs, *, available: int | None = None) -> None:
    """Raise :class:`MemoryPlanError` when the weights ``inputs`` asks for cannot fit; the
    message proposes a ``weights_for=(heads, rows)`` that does (one head, up to 1024 rows)."""
    needed = weights_bytes(inputs)
    if needed <= MIN_CHECKED_BYTES or torch.compiler.is_compiling():
        return
    available, budget = device_budget.budget_bytes(inputs.query.device, available)
    if needed <= budget:
        return
    if inputs.weights_for is None:
        what = f"need_weights=True: the full weights (..., H, Tq, Tk) = {inputs.logits_shape}"
    else:
        what = f"weights_for={inputs.weights_for!r}: the selected weights"
    rows = min(inputs.q_len, 1024)
    while rows > 1 and weights_bytes(inputs, (0, slice(0, rows))) > budget:
        rows //= 2
    part = weights_bytes(inputs, (0, slice(0, rows)))
    if part <= budget:
        hint = (
            f"ask for a part with weights_for=(heads, rows), e.g. weights_for=(0, slice(0, {rows})) "
            f"(about {format_bytes(part)})"
        )
    else:
        hint = "even one row of one head does not fit: the keys are too long"
    dtype = str(inputs.query.dtype).removeprefix("torch.")
    size = format_bytes(_selected(inputs, inputs.weights_for) * inputs.query.element_size())
    raise MemoryPlanError(
        f"{what} in {dtype} take {size} (about {format_bytes(needed)} to compute), but "
        f"{_room_text(available)}; {hint}",
        needed=needed,
        available=available,
    )
