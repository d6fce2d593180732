"""What depends only on a model's module tree, computed once per model and kept until the tree
changes: :class:`TreeCache` (what :func:`qkv.capture` reads from a model's structure: its
attention modules, their names and kinds, the sub-models and their settings).

    ATTENTION = TreeCache(walk)        # walk(model) -> a value that holds no module strongly
    value = ATTENTION.get(model)       # walk(model) on the first call, then only after a change

The tree is the same when every module's children are the same objects under the same names in
the same order (:func:`tree_signature`: the modules' child dicts read without building
qualified names, about 15 us for a hundred modules). A layer replaced, added, removed, renamed
or moved is a change. Everything else a walk reads must be fixed by the tree (class attributes,
names, types); what a model may change without touching its tree (a config's settings) is read
on each call instead.

Models are held weakly: an entry goes with its model. The signature holds its modules through
weak references, so a module freed and another one allocated at its address is a change too.
A value holds modules as ``weakref.ref`` (a value holding its model strongly would keep the
model alive): while the signature matches, every module of the tree is alive.

Thread-safe: lookups and stores take a lock; two threads walking the same new model at once both
store the same value. No process-wide switch: an entry is read only for its own model.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from torch import nn

__all__ = ["TreeCache", "tree_signature"]

T = TypeVar("T")


def tree_signature(model: nn.Module) -> list:
    """Every module's children below ``model``, depth first: for each module its number of
    children, then each child's name and a weak reference to it (None for a ``None`` child).
    Two signatures are equal exactly when the trees hold the same live modules under the same
    names in the same order (a dead module's reference equals only itself)."""
    signature: list = []
    seen = {id(model)}
    todo = [model]
    while todo:
        children = todo.pop()._modules
        signature.append(len(children))
        for name, child in children.items():
            signature.append(name)
            if child is None:
                signature.append(None)
                continue
            signature.append(weakref.ref(child))  # the one plain reference CPython keeps per object
            if id(child) not in seen:  # a module shared by several parents is walked once
                seen.add(id(child))
                todo.append(child)
    return signature


class TreeCache(Generic[T]):
    """``walk(model)`` per model, recomputed when the model's module tree changes.

    Attributes:
        walks: how many times ``walk`` ran (a first call per model, and each change).
    """

    def __init__(self, walk: Callable[[nn.Module], T]) -> None:
        self._walk = walk
        self._entries: weakref.WeakKeyDictionary[nn.Module, tuple[list, T]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.walks = 0

    def get(self, model: nn.Module) -> T:
        """``walk(model)``, from the cache while ``model``'s tree is the one it was walked on."""
        signature = tree_signature(model)
        with self._lock:
            entry = self._entries.get(model)
        if entry is not None and entry[0] == signature:
            return entry[1]
        value = self._walk(model)
        with self._lock:
            self._entries[model] = (signature, value)
            self.walks += 1
        return value

    def clear(self) -> None:
        """Forget every model."""
        with self._lock:
            self._entries.clear()
