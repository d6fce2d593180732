"""``BoundedCache``: a thread-safe map of at most ``maxsize`` entries, the oldest forgotten first.

What qkv caches per call (the checks and the backend choice of a call signature, what a kernel
does with NaN at a size) depends only on shapes, dtypes and devices: a key is a tuple of those,
never a tensor. A read is one dict lookup (atomic, no lock: it sits on every call's path); a
write takes a lock and evicts the oldest entries beyond ``maxsize``. Two threads may compute
the same entry at once: both store the same value.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any

__all__ = ["BoundedCache"]


class BoundedCache:
    """At most ``maxsize`` entries; :meth:`get` returns ``default`` for a key it does not hold."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize: expected >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._data: dict[Hashable, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, default: Any = None) -> Any:
        return self._data.get(key, default)

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data.pop(key, None)
            self._data[key] = value
            while len(self._data) > self.maxsize:
                del self._data[next(iter(self._data))]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
