"""The sequence-parallel context the ``ring`` backend runs in: which process group holds the
sequence, how it is sharded, and what the ring has sent so far.

The context is per thread and per task (a :mod:`contextvars` variable), never process-wide:
``qkv.distributed.context_parallel`` sets it for the duration of a ``with`` block, and only
calls made inside that block see it. The layouts (``T`` global positions, ``world`` ranks,
``n = T / world`` positions per rank):

- ``"contiguous"``: rank ``r`` holds positions ``[r n, (r + 1) n)``;
- ``"zigzag"``: the sequence is cut into ``2 world`` chunks of ``n / 2``; rank ``r`` holds
  chunks ``r`` and ``2 world - 1 - r`` (one early and one late chunk: under a causal mask every
  rank then has the same amount of work).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "LAYOUTS",
    "RingStats",
    "SequenceParallel",
    "activate",
    "active",
    "global_length",
    "positions",
    "shard_positions",
]

LAYOUTS = ("contiguous", "zigzag")


@dataclass
class RingStats:
    """What this rank's ring exchanged: point-to-point receives (one per block: its keys and
    values, or their gradients, however many pieces carried it) and the bytes they carried,
    forward and backward (the metadata check at the start of each call is not counted)."""

    forward_recvs: int = 0
    backward_recvs: int = 0
    forward_bytes: int = 0
    backward_bytes: int = 0
    peers: set[int] = field(default_factory=set)  # the ranks this rank received from

    def add(self, backward: bool, tensors: list[Tensor], src: int, receives: int = 1) -> None:
        """Count the bytes of ``tensors`` received from rank ``src`` as ``receives`` receives
        (a block that travels in pieces counts once: 1 for its first piece, 0 for the rest)."""
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        if backward:
            self.backward_recvs += receives
            self.backward_bytes += nbytes
        else:
            self.forward_recvs += receives
            self.forward_bytes += nbytes
        self.peers.add(src)


@dataclass(frozen=True)
class SequenceParallel:
    """An active sequence-parallel context.

    Attributes:
        group: the ``torch.distributed`` process group over which the sequence is sharded
            (None: the default group).
        layout: ``"contiguous"`` or ``"zigzag"`` (see the module docstring).
        rank, world: this process's rank in ``group`` and the group's size.
        stats: the communication counted so far (:class:`RingStats`).
    """

    group: Any
    layout: str
    rank: int
    world: int
    stats: RingStats = field(default_factory=RingStats)


_ACTIVE: contextvars.ContextVar[SequenceParallel | None] = contextvars.ContextVar(
    "qkv_sequence_parallel", default=None
)
# How many ``activate`` blocks are open, in every thread. While none is, ``active`` reads no
# context variable: a plain int that ``torch.compile`` traces and guards on (it cannot trace
# ``ContextVar.get``), so a compiled call is traced again once a context opens.
_OPEN = 0
_OPEN_LOCK = threading.Lock()


def active() -> SequenceParallel | None:
    """The context of the current thread/task, or None."""
    if _OPEN == 0:
        return None
    return _ACTIVE.get()


@contextlib.contextmanager
def activate(context: SequenceParallel) -> Iterator[SequenceParallel]:
    """Make ``context`` the active one inside the ``with`` block (nested blocks restore it)."""
    global _OPEN
    with _OPEN_LOCK:
        _OPEN += 1
    token = _ACTIVE.set(context)
    try:
        yield context
    finally:
        _ACTIVE.reset(token)
        with _OPEN_LOCK:
            _OPEN -= 1


def positions(layout: str, rank: int, world: int, local_len: int, device: Any = None) -> Tensor:
    """The global positions ``(local_len,)`` of rank ``rank``'s shard under ``layout``."""
    if layout == "contiguous":
        return torch.arange(rank * local_len, (rank + 1) * local_len, device=device)
    if layout == "zigzag":
        if local_len % 2:
            raise ValueError(
                f"layout 'zigzag': expected an even number of positions per rank (two chunks each), "
                f"got {local_len}"
            )
        c = local_len // 2
        late = 2 * world - 1 - rank
        return torch.cat(
            [
                torch.arange(rank * c, (rank + 1) * c, device=device),
                torch.arange(late * c, (late + 1) * c, device=device),
            ]
        )
    raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")


def shard_positions(length: int, device: Any = None) -> Tensor:
    """The global positions ``(length,)`` of the ``length`` rows of a sequence this process
    holds: its shard's under the active context (:func:`positions` of its layout and rank),
    ``0 .. length - 1`` outside one. What a model's absolute and rotary positions read."""
    sp = active()
    if sp is None:
        return torch.arange(length, device=device)
    return positions(sp.layout, sp.rank, sp.world, length, device)


def global_length(length: int) -> int:
    """The length of the whole sequence of which this process holds ``length`` rows
    (``length x world`` under the active context, ``length`` outside one)."""
    sp = active()
    return length if sp is None else length * sp.world
