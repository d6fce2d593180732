"""The attention step shared by :class:`qkv.MultiHeadAttention` and
:class:`qkv.TorchMultiheadAttention`: projected heads in, per-head results out.

Shape legend (see :mod:`qkv._types`)::

    q (B, H, Tq, Dh), k (B, Hkv, Tk, Dh), v (B, Hkv, Tk, Dh), G = H / Hkv
    mask, bias broadcastable to (B, H, Tq, Tk)
    -> out (B, H, Tq, Dh), weights (B, H, Tq, Tk) per head, lse (B, H, Tq)

It is a parameter-free child module (``attend``) of both multi-head modules so that
:func:`qkv.capture` has one place to read weights from, whatever convention the outer module
speaks: a forward hook on ``attend`` sees every call's ``need_weights=`` and ``backend=``
keywords and its per-head :class:`qkv.AttentionOutput`.
"""

from __future__ import annotations

from torch import Tensor, nn

from .._types import AttentionOutput
from ..api import attention
from ..masks.core import MaskLike

__all__ = ["HeadsAttention"]


class HeadsAttention(nn.Module):
    """``attention(q, k, v)`` over the heads of a multi-head module, with grouped-query
    attention: query head ``h`` uses key/value head ``h // G``, as :func:`qkv.attention` takes
    it (key/value heads are not copied; see :mod:`qkv.api.grouped`)."""

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        mask: MaskLike | None = None,
        bias: Tensor | None = None,
        dropout_p: float = 0.0,
        need_weights: bool = False,
        backend: str = "auto",
    ) -> AttentionOutput:
        """Args: ``q (B, H, Tq, Dh)``, ``k``/``v (B, Hkv, Tk, Dh)`` with ``Hkv`` dividing ``H``;
        ``mask``/``bias`` as :func:`qkv.attention` takes them; ``dropout_p`` on the weights in
        training mode (``self.training``); ``need_weights``: return per-head weights; ``backend``
        as :func:`qkv.attention`.

        Returns:
            :class:`qkv.AttentionOutput` in the ``(B, H, ...)`` layout.
        """
        return attention(
            q, k, v, mask=mask, bias=bias, score="scaled_dot", dropout_p=dropout_p, training=self.training,
            backend=backend, need_weights=need_weights,
        )  # fmt: skip
