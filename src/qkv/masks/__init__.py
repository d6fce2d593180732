"""Boolean attention masks: True = may attend, broadcastable to ``(B, H, Tq, Tk)``.

Sparse patterns (:func:`sliding_window`, :func:`dilated`, :func:`block_local`,
:func:`global_tokens`, :func:`random_blocks`, :func:`document`, :func:`causal`) combine with
``&``, ``|`` and ``~``; :func:`longformer` and :func:`bigbird` are such combinations. Every mask
draws itself (:func:`to_string`), materializes (:func:`materialize`) and describes its
:class:`BlockLayout` without building ``Tq x Tk``.
"""

from .core import (
    BlockLayout,
    Mask,
    MaskLike,
    causal,
    check_bool_mask,
    from_lengths,
    full,
    key_padding,
    materialize,
)
from .document import document
from .global_tokens import global_tokens
from .presets import bigbird, longformer
from .random_blocks import random_blocks
from .render import to_string
from .shifted import shifted
from .window import block_local, dilated, sliding_window

__all__ = [
    "BlockLayout",
    "Mask",
    "MaskLike",
    "bigbird",
    "block_local",
    "causal",
    "check_bool_mask",
    "dilated",
    "document",
    "from_lengths",
    "full",
    "global_tokens",
    "key_padding",
    "longformer",
    "materialize",
    "random_blocks",
    "shifted",
    "sliding_window",
    "to_string",
]
