"""Boolean attention masks: True = may attend, broadcastable to ``(B, H, Tq, Tk)``."""

from .core import (
    Mask,
    MaskLike,
    causal,
    check_bool_mask,
    from_lengths,
    full,
    key_padding,
    materialize,
)
from .render import to_string

__all__ = [
    "Mask",
    "MaskLike",
    "causal",
    "check_bool_mask",
    "from_lengths",
    "full",
    "key_padding",
    "materialize",
    "to_string",
]
