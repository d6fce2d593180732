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

from .._checks import broadcasts_to
from .._types import AttentionOutput
from ..api import attention
from ..masks.core import Mask, MaskLike, check_ambiguous_layout

__all__ = ["HeadsAttention"]


class HeadsAttention(nn.Module):
    """``attention(q, k, v)`` over the heads of a multi-head module, with grouped-query
    attention: query head ``h`` uses key/value head ``h // G``.

    Key/value heads are never copied: the ``G`` query heads of a group are stacked as extra
    query rows of one ``(B, Hkv, G*Tq, Dh)`` call (each row attends independently, so this is
    exact); with a lazy :class:`qkv.masks.Mask` pattern the key/value heads are repeated
    instead, so block-sparse backends still see the pattern. Masks and biases are checked by
    :func:`qkv.attention` when ``G == 1``; when ``G > 1`` this module checks that they fit
    ``(B, H, Tq, Tk)`` before folding them (the folded shape would name the wrong dims).
    """

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
        kwargs = dict(
            score="scaled_dot", dropout_p=dropout_p, training=self.training, backend=backend,
            need_weights=need_weights,
        )  # fmt: skip
        heads, kv_heads = q.shape[1], k.shape[1]
        g = heads // kv_heads
        if g == 1:
            return attention(q, k, v, mask=mask, bias=bias, **kwargs)
        if isinstance(mask, Mask):
            # A lazy pattern indexes rows by position: repeat the key/value heads instead.
            k = k.repeat_interleave(g, dim=1)  # (B, Hkv, Tk, Dh) -> (B, H, Tk, Dh)
            v = v.repeat_interleave(g, dim=1)
            return attention(q, k, v, mask=mask, bias=bias, **kwargs)
        bsz, _, q_len, dh = q.shape
        target = (bsz, heads, q_len, k.shape[2])
        qg = q.reshape(bsz, kv_heads, g * q_len, dh)  # (B, H, Tq, Dh) -> (B, Hkv, G*Tq, Dh)
        res = attention(
            qg,
            k,
            v,
            mask=None if mask is None else _fold_heads("mask", mask, target, kv_heads),
            bias=None if bias is None else _fold_heads("bias", bias, target, kv_heads),
            **kwargs,
        )
        return AttentionOutput(
            out=res.out.reshape(bsz, heads, q_len, v.shape[-1]),  # (B, Hkv, G*Tq, Dh) -> (B, H, Tq, Dh)
            weights=None if res.weights is None else res.weights.reshape(target),
            lse=None if res.lse is None else res.lse.reshape(bsz, heads, q_len),
            backend=res.backend,
        )


def _fold_heads(name: str, t: Tensor, target: tuple[int, int, int, int], kv_heads: int) -> Tensor:
    """A mask or bias broadcastable to ``target = (B, H, Tq, Tk)`` in the grouped layout
    ``(B, Hkv or 1, G*Tq or 1, Tk)``, row ``j * Tq + i`` being query ``i`` of head ``kvh * G + j``."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a tensor or a qkv.masks.Mask, got {type(t).__name__}")
    check_ambiguous_layout(name, t, 4)
    if not broadcasts_to(t.shape, target, max_dims=4):
        raise ValueError(
            f"{name}: expected a shape broadcastable to (B, H, Tq, Tk) = {target}, got {tuple(t.shape)}"
        )
    _, heads, q_len, _ = target
    g = heads // kv_heads
    t = t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))  # (b, h, tq, tk), each maybe 1
    b, h, tq, tk = t.shape
    if tq == 1 and h == 1:  # the same for every row of every head
        return t
    if h == 1:  # (b, 1, Tq, tk) -> (b, 1, G, Tq, tk) -> (b, 1, G*Tq, tk)
        return t.expand(b, 1, q_len, tk).unsqueeze(2).expand(b, 1, g, q_len, tk).reshape(b, 1, g * q_len, tk)
    return t.expand(b, heads, q_len, tk).reshape(b, kv_heads, g * q_len, tk)  # (b, H, Tq, tk) -> grouped
