"""``LruCache``: a bounded, thread-safe map that forgets its least recently used entries.

What qkv caches per call (the checks and the backend choice of a call signature, what a kernel
does with NaN at a size) depends only on shapes, dtypes and devices: a key is a tuple of those,
never a tensor. Reads and writes take one lock; at most ``maxsize`` entries are kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

__all__ = ["LruCache"]

_MISSING = object()


class LruCache:
    """At most ``maxsize`` entries; :meth:`get` returns ``default`` for a key it does not hold."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize: expected >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            value = self._data.get(key, _MISSING)
            if value is _MISSING:
                return default
            self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)
