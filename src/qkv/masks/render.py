"""Text drawings of masks, for docs, tests and ``qkv explain``."""

from __future__ import annotations

from .core import MaskLike, materialize

__all__ = ["to_string"]


def to_string(mask: MaskLike, q_len: int, kv_len: int, *, attend: str = "x", ignore: str = ".") -> str:
    """Draw the ``(Tq, Tk)`` pattern, one query row per line (batch 0, head 0)::

    >>> print(to_string(causal(), 3, 3))
    x . .
    x x .
    x x x
    """
    dense = materialize(mask, q_len, kv_len)
    while dense.dim() > 2:
        dense = dense[0]
    dense = dense.expand(q_len, kv_len)
    return "\n".join(" ".join(attend if v else ignore for v in row.tolist()) for row in dense)
