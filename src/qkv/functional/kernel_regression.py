"""Deprecated: moved to :mod:`qkv.api.kernel_regression` (attention compositions sit above the backends); import
from there. Names are looked up there on first use, with a ``DeprecationWarning``."""

from .._moved import moved_module

__getattr__ = moved_module(__name__, "qkv.api.kernel_regression")
