"""The device budget: how many bytes a memory plan may use on a device, read when it runs.

:func:`available_bytes` reads what a new allocation may take now (``/proc/meminfo`` under the
cgroup limit on CPU, the free memory plus the caching allocator's unused share on CUDA);
:func:`budget_bytes` keeps :data:`SAFETY_FRACTION` of it for one plan. Where the free memory
cannot be read, :data:`UNKNOWN_AVAILABLE` (plans are then never refused).

Tests lower the limit by monkeypatching ``qkv.backends.device_budget.available_bytes`` (every
reader looks it up here at call time), or pass ``available=`` to :func:`budget_bytes`; nothing
is switched process-wide.
"""

from __future__ import annotations

import os

import torch

__all__ = ["SAFETY_FRACTION", "UNKNOWN_AVAILABLE", "available_bytes", "budget_bytes"]

SAFETY_FRACTION = 0.8  # a plan may use at most this share of the available memory
UNKNOWN_AVAILABLE = 1 << 62  # when the free memory cannot be read: never refuse


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


def budget_bytes(device: torch.device | str, available: int | None = None) -> tuple[int, int]:
    """``(available, budget)``: the bytes available on ``device`` (or ``available``) and the
    share of them a plan may use (:data:`SAFETY_FRACTION`)."""
    if available is None:
        available = available_bytes(device)
    return available, int(available * SAFETY_FRACTION)


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
