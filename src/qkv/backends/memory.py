"""Memory plans: how many bytes a backend (or a weights request) will take, before it runs.

``auto`` never picks a backend whose plan cannot fit in the device's available memory, and an
explicit backend or a weights request that cannot fit raises :class:`MemoryPlanError` at once,
saying how much it needs and what would fit, instead of dying in the allocator minutes later.

Estimates are the peak *extra* bytes of one call beyond its inputs (the output included),
measured on CPU (peak RSS, torch 2.13) and kept on the safe side. With::

    N = batch x heads (all leading dims)    L = N * Tq * Tk (the logits)
    e = bytes of the input dtype             c = bytes of the compute dtype (float32 for halves)
    M = elements of the dense mask a pattern builds (Tq * Tk, times the batch if it depends on it)

the table :data:`ESTIMATES` holds, per backend name (see each function for the terms):

    reference   (3 L c | 6 L c with grad) + 2 L e for halves + L c per mask/dropout
                + 16 L + 3 L c for a non-softmax normalizer (a sort), + 2..4 L W e for a wide
                score (gaussian, additive: W = D or A), + the dense mask of a pattern
    sdpa        fused kernel: the output (+ dq, dk, dv with grad) + the additive mask it builds
                from a bool mask (M e); math fallback (dropout, Dv != D, > 4 dims...): + 3 L c
    chunked     the output + (16 c + 4 W e) bytes per element of one q_block x kv_block block
                (+ dq, dk, dv and 8 c per block element with grad)
    blocksparse 2 * the allowed tiles x tile x (1 + e) (bool and additive masks) + 8 N Tq D c
                + the gathered keys (at most 32 MiB)
    flex        eager (unfused): 4 L c; compiled: a few copies of q, k, v

A dense mask built from a :class:`qkv.masks.Mask` keeps :data:`PATTERN_KEPT_BYTES` per element
(1 for causal) and takes up to :data:`PATTERN_BYTES` per element while it is built (int64 index
arithmetic); block-wise backends spend :data:`PATTERN_TABLES` on a pattern's tables. Weights on
demand (:func:`weights_bytes`) take ``N' Tq' Tk e`` for the selected heads and rows plus one
key block of work.

The budget of a plan is :data:`SAFETY_FRACTION` of :func:`available_bytes`; a plan under
:data:`MIN_CHECKED_BYTES` is never refused (reading the free memory costs more than it risks).
Tests lower the limit by monkeypatching ``qkv.backends.memory.available_bytes``, or pass
``available=`` to :func:`budget_bytes` and :func:`check_weights`; nothing is switched
process-wide.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..masks.core import Mask
from .base import AttentionInputs, BackendNotSupportedError, plain_causal

__all__ = [
    "ESTIMATES",
    "MIN_CHECKED_BYTES",
    "SAFETY_FRACTION",
    "MemoryPlanError",
    "available_bytes",
    "below_check",
    "budget_bytes",
    "check_weights",
    "estimate_bytes",
    "format_bytes",
    "weights_bytes",
]

SAFETY_FRACTION = 0.8  # a plan may use at most this share of the available memory
MIN_CHECKED_BYTES = 4 << 20  # plans below this are never refused (no memory read)
UNKNOWN_AVAILABLE = 1 << 62  # when the free memory cannot be read: never refuse
PATTERN_BYTES = 18  # peak bytes per element while a pattern builds its dense mask
PATTERN_KEPT_BYTES = 4  # bytes per element a built dense mask holds (with the allocator's slack)
PATTERN_TABLES = 16 << 20  # a pattern's tables, layouts and per-block index arithmetic
GATHER_BYTES = 32 << 20  # blocksparse bounds its gathered keys per piece to this


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


# ----------------------------------------------------------------------------- available memory


def available_bytes(device: torch.device | str) -> int:
    """Bytes a new allocation may take on ``device`` now.

    CPU: ``MemAvailable`` of ``/proc/meminfo``, lowered to the room under the process's cgroup
    limit when there is one (containers); CUDA: free device memory plus what PyTorch's caching
    allocator holds unused. Where it cannot be read (other systems, meta), a huge number: the
    plans are then never refused.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "mps":
        try:
            return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
        except (AttributeError, RuntimeError):  # pragma: no cover - older torch
            return UNKNOWN_AVAILABLE
    if device.type != "cpu":
        return UNKNOWN_AVAILABLE
    room = _meminfo_available()
    cgroup = _cgroup_room()
    if cgroup is not None:
        room = cgroup if room is None else min(room, cgroup)
    return UNKNOWN_AVAILABLE if room is None else room


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _cgroup_room() -> int | None:
    """Bytes left under the cgroup memory limit (v2, else v1), page cache counted as free;
    None without a limit."""
    own = _read("/proc/self/cgroup") or ""
    v2 = next((line[3:].strip() for line in own.splitlines() if line.startswith("0::")), None)
    dirs = [f"/sys/fs/cgroup{v2}".rstrip("/")] if v2 not in (None, "/") else []
    for d in [*dirs, "/sys/fs/cgroup"]:
        limit = _read(f"{d}/memory.max")
        current = _read(f"{d}/memory.current")
        if limit is not None and current is not None:
            if limit.strip() == "max":
                return None
            return _room(int(limit), int(current), _read(f"{d}/memory.stat"), "inactive_file")
    limit = _read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    usage = _read("/sys/fs/cgroup/memory/memory.usage_in_bytes")
    if limit is None or usage is None or int(limit) >= 1 << 60:  # v1 says "no limit" with ~2^63
        return None
    return _room(int(limit), int(usage), _read("/sys/fs/cgroup/memory/memory.stat"), "total_inactive_file")


def _room(limit: int, used: int, stat: str | None, reclaimable: str) -> int:
    for line in (stat or "").splitlines():
        name, _, value = line.partition(" ")
        if name == reclaimable:
            used -= int(value)
            break
    return max(0, limit - max(0, used))


def budget_bytes(device: torch.device | str, available: int | None = None) -> tuple[int, int]:
    """``(available, budget)``: the bytes available on ``device`` (or ``available``) and the
    share of them a plan may use (:data:`SAFETY_FRACTION`)."""
    if available is None:
        available = available_bytes(device)
    return available, int(available * SAFETY_FRACTION)


# ----------------------------------------------------------------------------- estimates


def _dims(inputs: AttentionInputs) -> dict[str, int]:
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


def _needs_grad(inputs: AttentionInputs) -> bool:
    """Autograd will keep intermediates (and run a backward) for this call."""
    if not torch.is_grad_enabled():
        return False
    tensors = [inputs.query, inputs.key, inputs.value, inputs.bias]
    tensors += [t for t in inputs.score_kwargs.values() if isinstance(t, Tensor)]
    if isinstance(inputs.score_fn, nn.Module):
        tensors += list(inputs.score_fn.parameters())
    return any(t is not None and t.requires_grad for t in tensors)


def _score_width(inputs: AttentionInputs) -> int:
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


def _dense_mask_bytes(inputs: AttentionInputs) -> tuple[int, int]:
    """``(kept, peak)`` bytes of the dense mask a pattern builds (0, 0 for a tensor mask or no
    mask): :data:`PATTERN_KEPT_BYTES` per element kept (1 for causal), up to
    :data:`PATTERN_BYTES` while built."""
    m = _pattern_elements(inputs)
    if _cheap_pattern(inputs):
        return m, m
    return m * PATTERN_KEPT_BYTES, m * PATTERN_BYTES


def _mask_elements(inputs: AttentionInputs) -> int:
    """Elements of the dense mask (built from the pattern, or the tensor mask's own)."""
    if inputs.tensor_mask is not None:
        return inputs.tensor_mask.numel()
    return _pattern_elements(inputs)


def _tables(inputs: AttentionInputs) -> int:
    """What a block-wise backend spends on a pattern besides its blocks: :data:`PATTERN_TABLES`
    (0 for causal and full)."""
    return 0 if _cheap_pattern(inputs) else PATTERN_TABLES


def _reference(backend: Any, inputs: AttentionInputs) -> int:
    """logits (scaled), exp and weights at once: 3 L c (softmax in float32 for halves: + 2 L e
    for the half copies); autograd keeps them and the backward adds as many: 6 L c. A mask adds
    the masked copy (L c) and ``~mask`` (L bytes), dropout its output (L c); a non-softmax
    normalizer sorts (values and int64 indices: 3 L c + 16 L more); a wide score builds
    ``(..., Tq, Tk, W)`` twice (4 times with grad)."""
    s = _dims(inputs)
    L, c, e = s["L"], s["c"], s["e"]
    grad = _needs_grad(inputs)
    work = (6 if grad else 3) * L * c + (2 * L * e if c != e else 0)
    if inputs.has_mask:
        work += L * c + L
    if inputs.dropout_active:
        work += L * c
    if inputs.normalize != "softmax":
        work += 3 * L * c + 16 * L
    width = _score_width(inputs)
    if width > 1:
        work += (4 if grad else 2) * L * width * e
    kept, building = _dense_mask_bytes(inputs)
    return max(building, kept + work)


def _sdpa_kernel(inputs: AttentionInputs) -> str:
    """``"fused"`` or ``"math"``: which kernel ``F.scaled_dot_product_attention`` will run for
    these inputs (asked from torch, whose choice depends on device, dtype, shapes, dropout)."""
    q, k, v = inputs.query, inputs.key, inputs.value
    dropout = inputs.dropout_p if inputs.dropout_active else 0.0
    causal = inputs.bias is None and plain_causal(inputs)
    attn_mask = None
    if inputs.has_mask and not causal:  # a zero-stride stand-in of the mask's shape and dtype
        dtype = torch.bool if inputs.bias is None else q.dtype
        shape = torch.broadcast_shapes(
            *[t.shape for t in (inputs.tensor_mask, inputs.bias) if t is not None],
            (1, 1, inputs.q_len, inputs.kv_len),
        )
        attn_mask = torch.zeros((), dtype=dtype, device=q.device).expand(shape)
    elif inputs.bias is not None:
        attn_mask = inputs.bias
    choice = getattr(torch, "_fused_sdp_choice", None)
    if choice is not None:
        try:
            kind = choice(q, k, v, attn_mask, dropout, causal, scale=inputs.scale)
            return "math" if kind <= 0 else "fused"  # SDPBackend: ERROR -1, MATH 0, fused kernels > 0
        except (RuntimeError, TypeError):  # pragma: no cover - private API changed
            pass
    fused = not dropout and q.dim() == 4 and q.shape[-1] == v.shape[-1]  # pragma: no cover
    return "fused" if fused else "math"  # pragma: no cover


def _sdpa(backend: Any, inputs: AttentionInputs) -> int:
    """The output, plus: the dense mask of a pattern; the additive mask SDPA (or qkv, with a
    bias) builds from a bool mask (M e, and ``~mask``); with grad dq, dk, dv; and when torch
    falls back to the math kernel, the logits, weights and their softmax (3 L c, 6 with grad,
    + L c of dropout)."""
    s = _dims(inputs)
    L, c, e = s["L"], s["c"], s["e"]
    grad = _needs_grad(inputs)
    work = s["n"] * s["tq"] * s["dv"] * e
    if grad:
        work += s["qkv"] * c
    kept = building = 0
    if inputs.has_mask and not (inputs.bias is None and plain_causal(inputs)):
        kept, building = _dense_mask_bytes(inputs)
        m = _mask_elements(inputs)
        if inputs.bias is not None:  # qkv folds the mask into the bias: ~mask, and a float copy
            work += m + (inputs.bias.numel() * e if inputs.bias.dtype != inputs.query.dtype else 0)
            if inputs.tensor_mask is not None:
                m = math.prod(torch.broadcast_shapes(inputs.bias.shape, inputs.tensor_mask.shape))
            else:
                m = max(m, inputs.bias.numel())
        work += m * e  # the additive float mask
    if _sdpa_kernel(inputs) == "math":
        work += (6 if grad else 3) * L * c
        if inputs.dropout_active:
            work += L * c
    return max(building, kept + work)


def _chunked(backend: Any, inputs: AttentionInputs) -> int:
    """The output and lse, plus per element of one ``q_block x kv_block`` block (all heads):
    about 16 c bytes of block tensors (logits, masks, exp, corrections) and 4 W e for a wide
    score's intermediates; with grad dq, dk, dv in the compute dtype (and dbias) and 8 c more
    per block element."""
    s = _dims(inputs)
    c, e = s["c"], s["e"]
    sizes = getattr(backend, "block_sizes", None)
    q_block, kv_block = sizes(inputs) if sizes is not None else (128, 512)
    block = s["n"] * min(q_block, s["tq"]) * min(kv_block, s["tk"])
    width = _score_width(inputs)
    total = s["n"] * s["tq"] * (s["dv"] * e + c) + block * 16 * c + _tables(inputs)
    if width > 1:
        total += 4 * block * width * e
    if _needs_grad(inputs):  # dq, dk, dv, and the backward's own block tensors (p, dp, ds...)
        total += s["qkv"] * c + block * 8 * c
        if inputs.bias is not None and inputs.bias.requires_grad:
            total += inputs.bias.numel() * c
    return total


def _blocksparse(backend: Any, inputs: AttentionInputs) -> int:
    """The plan's masks: each allowed ``q_block x kv_block`` tile as bool and as additive
    float (1 + e bytes per element, twice for the band's padding; per batch and head when the
    pattern depends on them), the kernels' blocked copies and outputs (8 N Tq D c), the
    gathered keys and values (at most :data:`GATHER_BYTES`); with grad, gradient buffers."""
    s = _dims(inputs)
    c, e = s["c"], s["e"]
    q_block, kv_block = getattr(backend, "q_block", 64), getattr(backend, "kv_block", 64)
    layout_of = getattr(backend, "layout", None)
    if layout_of is not None:
        tiles = int(layout_of(inputs).any.sum())
    else:  # pragma: no cover - a look-alike backend without a layout: all tiles
        tiles = math.ceil(s["tq"] / q_block) * math.ceil(s["tk"] / kv_block)
    per = s["n"] if inputs.pattern.depends_on_batch_head else 1
    total = 2 * tiles * q_block * kv_block * (1 + e) * per
    total += 8 * s["n"] * s["tq"] * max(s["d"], s["dv"]) * c + _tables(inputs)
    total += min(GATHER_BYTES, 2 * tiles * kv_block * s["n"] * max(s["d"], s["dv"]) * e)
    if _needs_grad(inputs):
        total += 4 * s["qkv"] * c
    return total


def _flex(backend: Any, inputs: AttentionInputs) -> int:
    """Eager FlexAttention is unfused: the scores, their modifications and softmax (4 L c).
    Compiled, the kernel works per tile: copies of q, k, v (score transforms, zeroed keys) and
    the output. A bool tensor mask is pooled to tiles (two padded copies, 2 M)."""
    s = _dims(inputs)
    c, dense = s["c"], not getattr(backend, "compile", False)
    total = s["n"] * s["tq"] * (s["dv"] * s["e"] + c) + 4 * s["qkv"] * c + _tables(inputs)
    if dense:
        total += 4 * s["L"] * c
    if inputs.tensor_mask is not None:
        total += 2 * inputs.tensor_mask.numel()
    if _needs_grad(inputs):  # (CUDA: no CPU backward) dq, dk, dv; eager: the scores' gradients
        total += 3 * s["qkv"] * c + (3 * s["L"] * c if dense else 0)
    return total


# backend name -> estimate(backend, inputs) -> bytes. A backend outside this table may define
# ``memory_bytes(inputs)``; one with neither is never refused for memory.
ESTIMATES: dict[str, Callable[[Any, AttentionInputs], int]] = {
    "reference": _reference,
    "sdpa": _sdpa,
    "chunked": _chunked,
    "blocksparse": _blocksparse,
    "flex": _flex,
}


def below_check(inputs: AttentionInputs) -> bool:
    """True when no plan of the built-in backends (:data:`ESTIMATES`) can exceed
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
    return logits * (256 + 64 * _score_width(inputs)) + 64 * elements <= MIN_CHECKED_BYTES


def estimate_bytes(backend: Any, inputs: AttentionInputs) -> int | None:
    """Estimated peak extra bytes of running ``backend`` on ``inputs``, or None when it has no
    estimate. Call it only for a backend that supports the inputs."""
    own = getattr(backend, "memory_bytes", None)
    if own is not None:
        return int(own(inputs))
    estimate = ESTIMATES.get(getattr(backend, "name", None))
    return None if estimate is None else int(estimate(backend, inputs))


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
    s = _dims(inputs)
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
    return f"about {format_bytes(available)} is available (plans use at most {SAFETY_FRACTION:.0%})"


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
    available, budget = budget_bytes(inputs.query.device, available)
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
