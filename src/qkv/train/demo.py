"""Deprecated: moved to :mod:`qkv.translation.demo`; import from there (this shim will be removed).

Names are looked up in the new module on first use, with a ``DeprecationWarning`` (see
:mod:`qkv._moved`).
"""

from .._moved import moved_module

__getattr__ = moved_module(__name__, "qkv.translation.demo")
