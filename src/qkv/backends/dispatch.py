"""Backend registry and the ``auto`` choice.

The choice depends on the output problem alone: asking for weights never changes the kernel
(the weights come from the backend that ran or from the exact second pass of
:mod:`qkv.backends.attention_weights`). Inside a sequence-parallel context
(:mod:`qkv.backends.sequence_parallel`, set by ``qkv.distributed.context_parallel``) ``auto``
means ``ring``: the only backend that sees the whole sequence (a local one would attend within
the shard). Elsewhere ``auto`` walks :data:`PRIORITY` and runs the first backend whose ``supports`` returns no
reasons, that it does not pass over for speed (``auto_skip``) and whose memory plan fits in the
device's budget (each backend's ``memory_bytes``, :mod:`qkv.backends.memory`,
:mod:`qkv.backends.device_budget`); when none of those is left, the first
that can run and fits, whatever its speed. The result's ``backend`` field names it. An
explicitly requested backend that cannot run raises :class:`BackendNotSupportedError` listing
its reasons, and one that cannot fit raises :class:`MemoryPlanError` (a subclass) saying what
it needs and which backend fits: never a silent fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .._bounded_cache import BoundedCache
from . import device_budget, memory
from .base import AttentionInputs, Backend, BackendNotSupportedError
from .blocksparse import BlockSparseBackend
from .chunked import ChunkedBackend
from .flex import FlexBackend
from .memory import MemoryPlanError
from .reference import ReferenceBackend
from .ring import RingBackend
from .sdpa import SdpaBackend
from .sequence_parallel import active as sequence_parallel_active

__all__ = [
    "BACKENDS",
    "PRIORITY",
    "DispatchReport",
    "MemoryPlanError",
    "cached_choice",
    "check_weights_fit",
    "choose",
    "get_backend",
    "registry_token",
    "resolves_elsewhere",
]

BACKENDS: dict[str, Backend] = {
    "reference": ReferenceBackend(),
    "sdpa": SdpaBackend(),
    "chunked": ChunkedBackend(),
    "blocksparse": BlockSparseBackend(),
    "flex": FlexBackend(),
    "ring": RingBackend(),
}
# Fastest first; "reference" supports everything and ends the list. "ring" is not in it: it runs
# only inside a sequence-parallel context, where auto means ring.
PRIORITY: list[str] = ["blocksparse", "sdpa", "flex", "chunked", "reference"]


class _Budget:
    """The memory a plan for ``inputs`` may use, read once per dispatch and only when some
    estimate is large enough to be checked (reading it costs ~20 µs)."""

    def __init__(self, inputs: AttentionInputs) -> None:
        self.device = inputs.query.device
        self.available: int | None = None
        self.budget: int | None = None
        self._inputs = inputs
        self._tiny: bool | None = None

    @property
    def tiny(self) -> bool:
        """No built-in plan for these inputs can need checking (tiny calls skip the estimates)."""
        if self._tiny is None:
            self._tiny = memory.below_check(self._inputs)
        return self._tiny

    def fits(self, needed: int | None) -> bool:
        if needed is None or needed <= memory.MIN_CHECKED_BYTES:
            return True
        if self.budget is None:
            self.available, self.budget = device_budget.budget_bytes(self.device)
        return needed <= self.budget


@dataclass
class _Verdict:
    """Why a backend will not run: it cannot (``unsupported``), auto prefers another one for
    speed (``slower``), or its plan does not fit in memory (``memory``)."""

    unsupported: list[str]
    slower: list[str] = field(default_factory=list)
    memory: list[str] = field(default_factory=list)
    needed: int | None = None

    @property
    def reasons(self) -> list[str]:
        return self.unsupported + self.slower + self.memory

    @property
    def can_run(self) -> bool:
        """It supports the inputs and its plan fits (auto's speed preferences aside)."""
        return not self.unsupported and not self.memory


def _verdict(
    name: str, inputs: AttentionInputs, auto: bool, budget: _Budget, *, full: bool = True
) -> _Verdict:
    """What stops backend ``name``: what it cannot do, (for auto) what it should not, and
    whether its memory plan fits: estimated for a backend that supports the inputs, and (unless
    ``full``) that auto does not already pass over for speed."""
    backend = BACKENDS[name]
    verdict = _Verdict(unsupported=backend.supports(inputs))
    if verdict.unsupported:
        return verdict
    if auto:
        verdict.slower = backend.auto_skip(inputs)
        if verdict.slower and not full:
            return verdict
    if budget.tiny:  # no built-in estimate can reach MIN_CHECKED_BYTES (memory.below_check)
        return verdict
    verdict.needed = memory.estimate_bytes(backend, inputs)
    if not budget.fits(verdict.needed):
        verdict.memory = [
            f"memory: needs about {memory.format_bytes(verdict.needed)}, "
            f"{memory.format_bytes(budget.available)} available "
            f"(plans use at most {device_budget.SAFETY_FRACTION:.0%})"
        ]
    return verdict


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        valid = ", ".join(["auto", *BACKENDS])
        raise ValueError(f"backend: unknown name {name!r}; valid names: {valid}")
    return BACKENDS[name]


@dataclass(frozen=True)
class DispatchReport:
    """Which backend ``auto`` (or the requested one) picks, and why each other was not taken.

    Attributes:
        reasons: backend name -> why it does not run (empty: it could).
        memory: backend name -> its estimated peak bytes (None where unsupported, unknown, or
            too small to check).
        available: the bytes available on the device, when some plan was large enough to
            check (None otherwise).
    """

    requested: str
    chosen: str | None
    reasons: dict[str, list[str]]
    memory: dict[str, int | None] = field(default_factory=dict)
    available: int | None = None

    def __str__(self) -> str:
        lines = [f"requested: {self.requested}; runs: {self.chosen or 'nothing (see reasons)'}"]
        for name in self.reasons:
            why = self.reasons[name]
            mark = "; ".join(why) if why else "ok"
            if name == self.chosen:  # with reasons: auto's fallback when memory is short
                mark += " <- runs: the backends auto prefers do not fit in memory" if why else " <- runs"
            lines.append(f"  {name:<12} {mark}")
        return "\n".join(lines)


def _pick(verdicts: dict[str, _Verdict]) -> str | None:
    """auto's pick: the first backend with no reason at all, else the first that can run and
    fits in memory (auto's speed preferences give way to memory)."""
    return next((n for n, v in verdicts.items() if not v.reasons), None) or next(
        (n for n, v in verdicts.items() if v.can_run), None
    )


def _in_context(requested: str) -> str:
    """``ring`` for ``auto`` inside a sequence-parallel context, else ``requested``."""
    return "ring" if requested == "auto" and sequence_parallel_active() is not None else requested


def report(inputs: AttentionInputs, requested: str) -> DispatchReport:
    budget = _Budget(inputs)
    requested = _in_context(requested)
    auto = requested == "auto"
    if not auto:
        get_backend(requested)  # an unknown name: a clear error
    names = PRIORITY if requested in PRIORITY or auto else [*PRIORITY, requested]
    verdicts = {name: _verdict(name, inputs, auto, budget) for name in names}
    if auto:
        chosen = _pick(verdicts)
    else:
        chosen = requested if requested in verdicts and not verdicts[requested].reasons else None
    return DispatchReport(
        requested=requested,
        chosen=chosen,
        reasons={name: v.reasons for name, v in verdicts.items()},
        memory={name: v.needed for name, v in verdicts.items()},
        available=budget.available,
    )


_CHOICES = BoundedCache(512)  # (inputs.signature, requested, registry) -> backend name


def registry_token() -> tuple:
    """What a cached choice depends on besides the call: the priority order and the backend
    objects registered (a swapped backend is a new object)."""
    return tuple(PRIORITY), tuple(map(id, BACKENDS.values()))


def resolves_elsewhere(requested: str) -> bool:
    """Whether ``requested`` means another backend here (``auto`` inside a sequence-parallel
    context means ``ring``)."""
    return requested == "auto" and sequence_parallel_active() is not None


def _choice_key(inputs: AttentionInputs, requested: str) -> tuple | None:
    if inputs.signature is None or requested == "ring":  # ring depends on the context's group
        return None
    return (inputs.signature, requested, *registry_token())


def cached_choice(inputs: AttentionInputs, requested: str) -> Backend | None:
    """The backend :func:`choose` cached for ``inputs`` (a choice that read no free memory),
    or None."""
    key = _choice_key(inputs, _in_context(requested))
    name = None if key is None else _CHOICES.get(key)
    return None if name is None else BACKENDS.get(name)


def choose(inputs: AttentionInputs, requested: str) -> Backend:
    """The backend to run: auto's pick (see the module docstring), else the requested one.

    A choice made without reading the device's free memory (every plan too small to check)
    depends only on ``inputs.signature`` (shapes, dtypes, devices, arguments) and the
    registry: it is cached under them (bounded, thread-safe) and not made again. A choice
    that read the memory, and every error, are made anew on each call.

    Raises:
        BackendNotSupportedError: the requested backend cannot run these inputs.
        MemoryPlanError: its plan (or, for auto, every plan) does not fit in memory.
    """
    in_context = requested == "auto" and _in_context(requested) == "ring"
    requested = _in_context(requested)  # inside a sequence-parallel context, auto means ring
    key = _choice_key(inputs, requested)
    if key is not None:
        name = _CHOICES.get(key)
        if name is not None and name in BACKENDS:
            return BACKENDS[name]
    budget = _Budget(inputs)
    backend = _choose(inputs, requested, budget, in_context)
    if key is not None and budget.budget is None:
        _CHOICES.put(key, backend.name)
    return backend


def _choose(inputs: AttentionInputs, requested: str, budget: _Budget, in_context: bool) -> Backend:
    """:func:`choose` without its cache (``requested`` already resolved for the context)."""
    if requested == "auto":
        verdicts: dict[str, _Verdict] = {}
        for name in PRIORITY:  # first pass: memory is estimated only where speed allows
            verdicts[name] = _verdict(name, inputs, True, budget, full=False)
            if not verdicts[name].reasons:
                return BACKENDS[name]
        for name, v in verdicts.items():  # nothing preferred fits: the others' plans
            if v.slower:
                verdicts[name] = _verdict(name, inputs, True, budget)
        name = _pick(verdicts)
        if name is not None:
            return BACKENDS[name]
        needs = ", ".join(
            f"{n} {memory.format_bytes(v.needed)}" for n, v in verdicts.items() if v.needed is not None
        )
        raise MemoryPlanError(
            f"no backend fits these inputs in memory (needs about: {needs}; "
            f"{memory.format_bytes(budget.available or 0)} available, plans use at most "
            f"{device_budget.SAFETY_FRACTION:.0%}): shorten the sequences or split the batch",
            needed=min((v.needed for v in verdicts.values() if v.needed is not None), default=0),
            available=budget.available or 0,
        )
    backend = get_backend(requested)
    verdict = _verdict(requested, inputs, False, budget)
    if verdict.unsupported:
        hint = (
            " (inside qkv.distributed.context_parallel, auto means ring: a local backend would "
            "attend only within this rank's shard)"
            if in_context
            else " (use backend='auto' to pick one that can)"
        )
        raise BackendNotSupportedError(
            f"backend {requested!r} cannot run these inputs: " + "; ".join(verdict.unsupported) + hint
        )
    if verdict.memory:
        fits = []  # (name, bytes) of the other backends that can run and fit
        for name in PRIORITY:
            other = _verdict(name, inputs, False, budget) if name != requested else None
            if other is not None and other.can_run and other.needed is not None:
                fits.append((name, other.needed))
        raise memory.backend_error(requested, inputs, verdict.needed, budget.available, fits)
    return backend


def check_weights_fit(inputs: AttentionInputs) -> None:
    """Raise :class:`MemoryPlanError` when the weights ``inputs`` asks for (all of them with
    ``need_weights=True``, or a ``weights_for=`` part) cannot fit in memory; the message
    proposes a ``weights_for=`` that does. Called by :func:`qkv.attention` before it runs."""
    if inputs.need_weights:
        memory.check_weights(inputs)
