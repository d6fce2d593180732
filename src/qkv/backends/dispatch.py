"""Backend registry and the ``auto`` choice.

``auto`` walks :data:`PRIORITY` and runs the first backend whose ``supports`` returns no
reasons; the result's ``backend`` field names it. An explicitly requested backend that cannot
run raises :class:`BackendNotSupportedError` listing its reasons: never a silent fallback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .base import AttentionInputs, Backend, BackendNotSupportedError
from .blocksparse import BlockSparseBackend
from .chunked import ChunkedBackend
from .flex import FlexBackend
from .reference import ReferenceBackend
from .sdpa import SdpaBackend

__all__ = ["BACKENDS", "PRIORITY", "DispatchReport", "choose", "get_backend", "register_backend"]

BACKENDS: dict[str, Backend] = {
    "reference": ReferenceBackend(),
    "sdpa": SdpaBackend(),
    "chunked": ChunkedBackend(),
    "blocksparse": BlockSparseBackend(),
    "flex": FlexBackend(),
}
# Fastest first; "reference" supports everything and ends the list.
PRIORITY: list[str] = ["blocksparse", "sdpa", "flex", "chunked", "reference"]


# With all weights asked for on a problem this small, the reference (which builds them
# anyway) beats a fast backend plus a second pass.
WEIGHTS_IN_ONE_PASS_MAX = 1 << 22


def _reasons(name: str, inputs: AttentionInputs, auto: bool) -> list[str]:
    """Why backend ``name`` will not run: what it cannot do, and (for auto) what it should not."""
    backend = BACKENDS[name]
    reasons = backend.supports(inputs)
    if not auto or reasons or name == "reference":
        return reasons
    if inputs.need_weights and inputs.weights_for is None:
        size = math.prod(inputs.logits_shape)
        if size <= WEIGHTS_IN_ONE_PASS_MAX:
            return [
                f"need_weights on a small problem ({size} logits): the reference returns them in one pass"
            ]
    skip = getattr(backend, "auto_skip", None)
    return skip(inputs) if skip is not None else []


def register_backend(backend: Backend, *, before: str = "reference") -> None:
    """Add a backend to the registry, tried by ``auto`` just before ``before``."""
    BACKENDS[backend.name] = backend
    if backend.name in PRIORITY:
        PRIORITY.remove(backend.name)
    PRIORITY.insert(PRIORITY.index(before), backend.name)


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        valid = ", ".join(["auto", *BACKENDS])
        raise ValueError(f"backend: unknown name {name!r}; valid names: {valid}")
    return BACKENDS[name]


@dataclass(frozen=True)
class DispatchReport:
    """Which backend ``auto`` (or the requested one) picks, and why each other was not taken."""

    requested: str
    chosen: str | None
    reasons: dict[str, list[str]]

    def __str__(self) -> str:
        lines = [f"requested: {self.requested}; runs: {self.chosen or 'nothing (see reasons)'}"]
        for name in PRIORITY:
            why = self.reasons.get(name, [])
            mark = "; ".join(why) if why else ("ok <- runs" if name == self.chosen else "ok")
            lines.append(f"  {name:<12} {mark}")
        return "\n".join(lines)


def report(inputs: AttentionInputs, requested: str) -> DispatchReport:
    reasons = {name: _reasons(name, inputs, requested == "auto") for name in PRIORITY}
    if requested == "auto":
        chosen = next((n for n in PRIORITY if not reasons[n]), None)
    else:
        get_backend(requested)
        chosen = requested if not reasons.get(requested) else None
    return DispatchReport(requested=requested, chosen=chosen, reasons=reasons)


def choose(inputs: AttentionInputs, requested: str) -> Backend:
    """The backend to run: the first supported one for ``auto``, else the requested one."""
    if requested == "auto":
        for name in PRIORITY:
            if not _reasons(name, inputs, auto=True):
                return BACKENDS[name]
        raise BackendNotSupportedError("no backend supports these inputs")  # pragma: no cover
    backend = get_backend(requested)
    reasons = backend.supports(inputs)
    if reasons:
        raise BackendNotSupportedError(
            f"backend {requested!r} cannot run these inputs: "
            + "; ".join(reasons)
            + " (use backend='auto' to pick one that can)"
        )
    return backend
