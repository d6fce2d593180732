"""Backend registry and the ``auto`` choice.

``auto`` walks :data:`PRIORITY` and runs the first backend whose ``supports`` returns no
reasons; the result's ``backend`` field names it. An explicitly requested backend that cannot
run raises :class:`BackendNotSupportedError` listing its reasons: never a silent fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import AttentionInputs, Backend, BackendNotSupportedError
from .reference import ReferenceBackend
from .sdpa import SdpaBackend

__all__ = ["BACKENDS", "PRIORITY", "DispatchReport", "choose", "get_backend", "register_backend"]

BACKENDS: dict[str, Backend] = {"reference": ReferenceBackend(), "sdpa": SdpaBackend()}
# Fastest first; "reference" supports everything and ends the list.
PRIORITY: list[str] = ["sdpa", "reference"]


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
            mark = "ok" if not why else "; ".join(why)
            lines.append(f"  {name:<10} {mark}")
        return "\n".join(lines)


def report(inputs: AttentionInputs, requested: str) -> DispatchReport:
    reasons = {name: BACKENDS[name].supports(inputs) for name in PRIORITY}
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
            backend = BACKENDS[name]
            if not backend.supports(inputs):
                return backend
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
