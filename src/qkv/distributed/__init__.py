"""Scale-out on ``torch.distributed``: exact ring attention over a sequence sharded across the
ranks of a process group (context parallelism).

- :func:`ring_attention`: this rank's shards of query, key and value in, its rows of the
  attention out; masks, patterns and biases in global coordinates.
- :func:`context_parallel`: inside ``with context_parallel(group):``,
  ``qkv.attention(..., backend="ring")`` (and ``auto``) runs the ring.
- :func:`shard_sequence`, :func:`gather_sequence`, :func:`sequence_positions`: a sequence
  split into the shards of a layout (``"contiguous"`` or ``"zigzag"``) and put back together.

Inside ``context_parallel``, :class:`qkv.MultiHeadAttention` (self- and cross-attention), the
Transformer translator and BERT take this rank's shards and return its rows of the
single-process result: they read the active context for their rows' global positions
(absolute and rotary positions), masks and padding are in global coordinates.

Imported by name (``import qkv.distributed``), as ``torch.distributed`` is. The kernel is the
``ring`` backend (:mod:`qkv.backends.ring`).
"""

from ..backends.ring import RingCommunicationError
from ..backends.sequence_parallel import LAYOUTS, RingStats, SequenceParallel
from .context import context_parallel
from .ring_attention import ring_attention
from .sharding import gather_sequence, sequence_positions, shard_sequence

__all__ = [
    "LAYOUTS",
    "RingCommunicationError",
    "RingStats",
    "SequenceParallel",
    "context_parallel",
    "gather_sequence",
    "ring_attention",
    "sequence_positions",
    "shard_sequence",
]
