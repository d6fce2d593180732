"""Luong ("global") attention: the dot, general and concat scores.

Named as in d2l.ai (``queries``, ``keys``, ``values``, ``valid_lens``), the one exception to
qkv's torch vocabulary (``query``, ``key``, ``value``, ``embed_dim``); ``valid_lens`` is
keyword-only, as everywhere in qkv.

Shape legend (see :mod:`qkv._types`)::

    B   batch                    Dq  query (decoder state) features
    Tq  query length (decoder)   Dk  key (encoder state) features
    Tk  source length            Dv  value features (default: values = keys)
    A   hidden size of the concat score

    query (B, Tq, Dq) or (B, Dq) for one decoder step, keys (B, Tk, Dk), values (B, Tk, Dv)
    -> out (context) (B, Tq, Dv) or (B, Dv), weights (B, Tq, Tk) or (B, Tk)
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .._checks import check_dim
from .._types import AttentionOutput
from ..api import attention
from ..functional.normalize import NormalizerFn
from ..masks.core import MaskLike
from .additive import _check_normalize, _normalize_args, _normalize_repr, _step_inputs
from .scores import score_module

__all__ = ["LuongAttention"]

_LUONG_SCORES = ("dot", "general", "concat")


class LuongAttention(nn.Module):
    """Luong, Pham, Manning 2015, "Effective Approaches to Attention-based Neural Machine
    Translation", eq. (8): alignment ``a_t(s) = softmax_s(score(h_t, h_s))`` and context
    ``c_t = sum_s a_t(s) h_s`` with

        dot      h_t^T h_s
        general  h_t^T W_a h_s                     (W_a: Dq x Dk, a GeneralScore)
        concat   v_a^T tanh(W_a [h_t; h_s])        (= v^T tanh(W_q h_t + W_k h_s): an AdditiveScore)

    No scaling is applied. The attentional state ``tanh(W_c [c_t; h_t])`` belongs to the
    decoder that uses this module, not here. ``normalize=`` replaces the softmax (e.g.
    ``"sparsemax"``: Martins & Astudillo 2016; ``"entmax15"``: Peters et al. 2019).

    Args:
        score: ``"dot"``, ``"general"`` or ``"concat"``.
        query_dim: ``Dq``.
        key_dim: ``Dk`` (default ``Dq``); ``"dot"`` needs ``Dk == Dq``.
        hidden_dim: ``A`` for ``"concat"`` (default ``Dq``); not accepted by other scores.
        normalize: how logits become weights (default ``"softmax"``): a name of
            :data:`qkv.functional.normalize.NORMALIZERS` or a callable ``(logits, mask) -> weights``.
        normalize_kwargs: parameters of a named normalizer.

    Attributes:
        score: ``"dot"`` (a string) or the score module (GeneralScore / AdditiveScore).

    Raises:
        ValueError: an unknown score (lists the valid ones), a dim that is not a positive int,
            ``key_dim != query_dim`` for ``"dot"``, ``hidden_dim`` with a score other than
            ``"concat"``, an unknown normalizer or parameters it does not take.
    """

    def __init__(
        self,
        *,
        score: str = "general",
        query_dim: int,
        key_dim: int | None = None,
        hidden_dim: int | None = None,
        normalize: str | NormalizerFn = "softmax",
        normalize_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.normalize, self.normalize_kwargs = _check_normalize(normalize, normalize_kwargs)
        if score not in _LUONG_SCORES:
            raise ValueError(f"score: expected one of {', '.join(_LUONG_SCORES)}, got {score!r}")
        self.score_name = score
        self.query_dim = check_dim("query_dim", query_dim)
        self.key_dim = query_dim if key_dim is None else check_dim("key_dim", key_dim)
        if hidden_dim is not None and score != "concat":
            raise ValueError(
                f"hidden_dim: only used by score='concat', got hidden_dim={hidden_dim!r} with {score!r}"
            )
        if score == "concat":
            self.hidden_dim = query_dim if hidden_dim is None else check_dim("hidden_dim", hidden_dim)
        self.score: str | nn.Module = score_module(
            "additive" if score == "concat" else score,
            query_dim=self.query_dim,
            key_dim=self.key_dim,
            hidden_dim=getattr(self, "hidden_dim", query_dim),
        )

    def forward(
        self,
        query: Tensor,
        keys: Tensor,
        values: Tensor | None = None,
        *,
        valid_lens: Tensor | None = None,
        mask: MaskLike | None = None,
        need_weights: bool = False,
        normalize: str | NormalizerFn | None = None,
        normalize_kwargs: dict[str, Any] | None = None,
    ) -> AttentionOutput:
        """Args:
            query: decoder states ``(B, Tq, Dq)``, or ``(B, Dq)`` for one step.
            keys: encoder states ``(B, Tk, Dk)``.
            values: ``(B, Tk, Dv)``; default ``keys`` (Luong's ``h_s``).
            valid_lens: integer ``(B,)`` or ``(B, Tq)`` source lengths.
            mask: an extra bool mask (True = may attend) ANDed with ``valid_lens``.
            need_weights: also return the alignment weights.
            normalize, normalize_kwargs: this call's normalizer instead of the module's (None:
                the module's). A callable gets the logits ``(B, 1, Tq, Tk)`` and the mask.

        Returns:
            :class:`qkv.AttentionOutput`: ``out`` is the context ``(B, Tq, Dv)`` (``(B, Dv)``
            for a 2-D query), ``weights`` ``(B, Tq, Tk)`` (``(B, Tk)``). Rows with no
            visible source position give zeros.

        Raises:
            ValueError: wrong dims or feature sizes, mismatched batch sizes or lengths.
        """
        query, values, one_step, attn_mask = _step_inputs(
            query, keys, values, valid_lens, mask, query_dim=self.query_dim, key_dim=self.key_dim
        )
        res = attention(
            query,
            keys,
            values,
            score=self.score,
            mask=attn_mask,
            need_weights=need_weights,
            **_normalize_args(self, normalize, normalize_kwargs),
        )
        if not one_step:
            return res
        weights = None if res.weights is None else res.weights.squeeze(1)  # (B, 1, Tk) -> (B, Tk)
        lse = None if res.lse is None else res.lse.squeeze(1)  # (B, 1) -> (B,)
        return AttentionOutput(out=res.out.squeeze(1), weights=weights, lse=lse, backend=res.backend)

    def extra_repr(self) -> str:
        return f"score={self.score_name!r}{_normalize_repr(self)}"
