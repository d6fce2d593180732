"""Deprecated: renamed :mod:`qkv.backends.attention_weights`; import from there. Names are
looked up there on first use, with a ``DeprecationWarning``."""

from .._moved import moved_module

__getattr__ = moved_module(__name__, "qkv.backends.attention_weights")
