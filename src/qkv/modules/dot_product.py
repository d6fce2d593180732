"""(Scaled) dot-product attention with d2l's shapes.

Named as in d2l.ai (``queries``, ``keys``, ``values``, ``valid_lens``), the one exception to
qkv's torch vocabulary (``query``, ``key``, ``value``, ``embed_dim``); ``valid_lens`` is
keyword-only, as everywhere in qkv.

Shape legend (see :mod:`qkv._types`)::

    B   batch          D   query/key features
    Tq  query length   Tk  key length          Dv  value features

    queries (B, Tq, D), keys (B, Tk, D), values (B, Tk, Dv), valid_lens (B,) or (B, Tq)
    -> out (B, Tq, Dv), weights (B, Tq, Tk)
"""

from __future__ import annotations

from torch import Tensor, nn

from .._checks import check_dropout
from .._types import AttentionOutput
from ..api import attention
from ..masks.core import MaskLike
from ._lengths import lengths_mask
from .additive import _check_d2l_inputs

__all__ = ["DotProductAttention"]


class DotProductAttention(nn.Module):
    """``softmax(Q K^T / sqrt(D)) V`` (``scaled=True``, Vaswani et al. 2017) or
    ``softmax(Q K^T) V`` (``scaled=False``, Luong et al. 2015 "dot").

    The module of d2l.ai section 11.3 with its ``valid_lens`` masking; it has no parameters.
    One deliberate difference from d2l: a row with ``valid_len = 0`` has no key to attend, so
    its output and weights are 0 (d2l's ``-1e6`` fill gives uniform weights instead).

    Args:
        dropout: dropout on the weights, only in training mode.
        scaled: divide the logits by ``sqrt(D)``.
        backend: passed to :func:`qkv.attention`.

    Raises:
        ValueError: ``dropout`` outside ``[0, 1)``.
    """

    def __init__(self, *, dropout: float = 0.0, scaled: bool = True, backend: str = "auto") -> None:
        super().__init__()
        self.dropout = check_dropout(dropout)
        self.scaled = bool(scaled)
        self.backend = backend

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        *,
        valid_lens: Tensor | None = None,
        mask: MaskLike | None = None,
        need_weights: bool = False,
        backend: str | None = None,
    ) -> AttentionOutput:
        """Args:
            queries, keys, values: ``(B, Tq, D)``, ``(B, Tk, D)``, ``(B, Tk, Dv)``.
            valid_lens: integer ``(B,)`` or ``(B, Tq)``: key ``j`` is visible when
                ``j < valid_len``.
            mask: an extra bool mask (True = may attend) ANDed with ``valid_lens``.
            need_weights: also return the weights ``(B, Tq, Tk)``.
            backend: this call's backend instead of the module's (None: the module's).

        Returns:
            :class:`qkv.AttentionOutput` with ``out (B, Tq, Dv)``.

        Raises:
            ValueError: inputs that are not 3-D, query and key feature dims that differ,
                mismatched batch sizes or key/value lengths, bad ``valid_lens`` shapes.
        """
        if isinstance(queries, Tensor) and queries.dim() == 3:
            _check_d2l_inputs(queries, keys, values, query_dim=None, key_dim=queries.shape[-1])
        else:
            _check_d2l_inputs(queries, keys, values, query_dim=None, key_dim=None)
        bsz, q_len, kv_len = queries.shape[0], queries.shape[1], keys.shape[1]
        attn_mask = lengths_mask(valid_lens, mask, batch=bsz, q_len=q_len, kv_len=kv_len)
        return attention(
            queries,
            keys,
            values,
            score="scaled_dot" if self.scaled else "dot",
            mask=attn_mask,
            dropout_p=self.dropout,
            training=self.training,
            backend=self.backend if backend is None else backend,
            need_weights=need_weights,
        )

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}, scaled={self.scaled}"
