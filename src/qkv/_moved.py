"""Deprecation shims for names that moved to another module (to be removed after 0.2).

An old import path keeps working for a while: it imports the new home lazily, by name, and
warns with a ``DeprecationWarning``. The import is by name (``importlib``) on purpose: an old
home may sit below the new one in the layers (``qkv.functional`` below ``qkv.api``,
``qkv.train`` below ``qkv.translation``) and must not import it; only these shims, on first use
of an old path, ever do.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["moved_attribute", "moved_module"]


def moved_attribute(module: str, name: str, moved: dict[str, str]) -> Any:
    """``module.name`` from its new home ``moved[name]``, with a DeprecationWarning; for a
    module's ``__getattr__``."""
    target = moved.get(name)
    if target is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warnings.warn(
        f"{module}.{name} moved to {target}.{name}; import it from there (the old path will be removed)",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(importlib.import_module(target), name)


def moved_module(module: str, target: str) -> Callable[[str], Any]:
    """The ``__getattr__`` of a module that moved to ``target`` as a whole."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new = importlib.import_module(target)
        if not hasattr(new, name):
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        return moved_attribute(module, name, {name: target})

    return __getattr__
