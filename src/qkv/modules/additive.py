"""Additive (Bahdanau) attention with d2l's shapes.

Named as in d2l.ai (``queries``, ``keys``, ``values``, ``valid_lens``), the one exception to
qkv's torch vocabulary (``query``, ``key``, ``value``, ``embed_dim``); ``valid_lens`` is
keyword-only, as everywhere in qkv.

Shape legend (see :mod:`qkv._types`)::

    B   batch          A   hidden size of the score MLP
    Tq  query length   Dq  query features
    Tk  key length     Dk  key features      Dv  value features

    queries (B, Tq, Dq), keys (B, Tk, Dk), values (B, Tk, Dv), valid_lens (B,) or (B, Tq)
    -> out (B, Tq, Dv), weights (B, Tq, Tk)
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .._checks import check_dropout
from .._types import AttentionOutput
from ..api import attention
from ..functional.normalize import NormalizerFn, resolve_normalizer
from ..masks.core import MaskLike
from ._lengths import lengths_mask
from .scores import AdditiveScore

__all__ = ["AdditiveAttention"]


class AdditiveAttention(nn.Module):
    """Bahdanau attention: ``softmax_j(v^T tanh(W_q q_i + W_k k_j))`` weights over ``values``.

    The softmax is the default normalizer; ``normalize="sparsemax"``, ``"entmax15"``, ... (any
    name or callable of :func:`qkv.attention`'s ``normalize=``) replaces it.

    Bahdanau, Cho, Bengio 2014, "Neural Machine Translation by Jointly Learning to Align and
    Translate"; the module of d2l.ai section 11.3 ("Attention Scoring Functions"), with its
    ``valid_lens`` masking. Keys and queries may have different feature dims.

    One deliberate difference from d2l: a row with ``valid_len = 0`` has no key to attend, so
    its output and weights are 0 (d2l's ``-1e6`` fill gives uniform weights instead).

    Args:
        query_dim: ``Dq``; key_dim: ``Dk``; hidden_dim: ``A``.
        dropout: dropout on the weights, only in training mode.
        normalize: how logits become weights (default ``"softmax"``): a name of
            :data:`qkv.functional.normalize.NORMALIZERS` or a callable ``(logits, mask) -> weights``.
        normalize_kwargs: parameters of a named normalizer (e.g. ``{"k": 2}`` for ``"topk"``).

    Attributes:
        score: the :class:`qkv.modules.AdditiveScore` (``w_query``, ``w_key``, ``v``).

    Raises:
        ValueError: a dim that is not a positive int, ``dropout`` outside ``[0, 1)``, an unknown
            normalizer or parameters it does not take.
    """

    def __init__(
        self,
        *,
        query_dim: int,
        key_dim: int,
        hidden_dim: int,
        dropout: float = 0.0,
        normalize: str | NormalizerFn = "softmax",
        normalize_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.score = AdditiveScore(query_dim=query_dim, key_dim=key_dim, hidden_dim=hidden_dim)
        self.dropout = check_dropout(dropout)
        self.normalize, self.normalize_kwargs = _check_normalize(normalize, normalize_kwargs)

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        *,
        valid_lens: Tensor | None = None,
        mask: MaskLike | None = None,
        need_weights: bool = False,
        normalize: str | NormalizerFn | None = None,
        normalize_kwargs: dict[str, Any] | None = None,
        keys_projected: bool = False,
    ) -> AttentionOutput:
        """Args:
            queries, keys, values: ``(B, Tq, Dq)``, ``(B, Tk, Dk)``, ``(B, Tk, Dv)``.
            keys_projected: ``keys`` are ``self.score.project_keys(keys)``, ``(B, Tk, A)``:
                ``W_k k`` made once per sequence and reused by every decoder step (Bahdanau et
                al., appendix A.1.2); the result equals the call on the unprojected keys.
            valid_lens: integer ``(B,)`` or ``(B, Tq)``: key ``j`` is visible when
                ``j < valid_len``.
            mask: an extra bool mask (True = may attend) ANDed with ``valid_lens``,
                broadcastable to ``(B, Tq, Tk)``.
            need_weights: also return the weights ``(B, Tq, Tk)``.
            normalize, normalize_kwargs: this call's normalizer instead of the module's (None:
                the module's). A callable gets the logits ``(B, 1, Tq, Tk)`` and the mask.

        Returns:
            :class:`qkv.AttentionOutput` with ``out (B, Tq, Dv)``.

        Raises:
            ValueError: inputs that are not 3-D, feature dims other than ``Dq``/``Dk``,
                mismatched batch sizes or key/value lengths, bad ``valid_lens`` shapes.
        """
        key_dim = self.score.hidden_dim if keys_projected else self.score.key_dim
        _check_d2l_inputs(queries, keys, values, query_dim=self.score.query_dim, key_dim=key_dim)
        bsz, q_len, kv_len = queries.shape[0], queries.shape[1], keys.shape[1]
        attn_mask = lengths_mask(valid_lens, mask, batch=bsz, q_len=q_len, kv_len=kv_len)
        return attention(
            queries,
            keys,
            values,
            score=self.score.from_projected_keys if keys_projected else self.score,
            mask=attn_mask,
            dropout_p=self.dropout,
            training=self.training,
            need_weights=need_weights,
            **_normalize_args(self, normalize, normalize_kwargs),
        )

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}{_normalize_repr(self)}"


def _check_normalize(
    normalize: str | NormalizerFn, normalize_kwargs: dict[str, Any] | None
) -> tuple[str | NormalizerFn, dict[str, Any] | None]:
    """Validate a module's normalizer at construction (clear errors now, not at the first call)."""
    resolve_normalizer(normalize, normalize_kwargs)
    return normalize, (dict(normalize_kwargs) if normalize_kwargs else None)


def _normalize_args(
    module: nn.Module, normalize: str | NormalizerFn | None, normalize_kwargs: dict[str, Any] | None
) -> dict[str, Any]:
    """The ``normalize=``/``normalize_kwargs=`` of one call: the call's, else the module's.
    Nothing for the default softmax, so the default call is exactly the softmax one."""
    if normalize is None:
        if normalize_kwargs is not None:
            raise ValueError("normalize_kwargs: given without normalize=; pass both (or neither)")
        normalize, normalize_kwargs = module.normalize, module.normalize_kwargs
    if isinstance(normalize, str) and normalize == "softmax" and not normalize_kwargs:
        return {}
    return {"normalize": normalize, "normalize_kwargs": normalize_kwargs}


def _normalize_repr(module: nn.Module) -> str:
    norm = module.normalize
    if isinstance(norm, str) and norm == "softmax":
        return ""
    name = norm if isinstance(norm, str) else getattr(norm, "__name__", type(norm).__name__)
    return f", normalize={name!r}" + (
        f", normalize_kwargs={module.normalize_kwargs}" if module.normalize_kwargs else ""
    )


def _step_inputs(
    query: Tensor, keys: Tensor, values: Tensor | None, valid_lens, mask, *, query_dim: int, key_dim: int
) -> tuple[Tensor, Tensor, bool, MaskLike | None]:
    """The shared start of the one-head modules that also take one decoder step: a ``(B, Dq)``
    query becomes ``(B, 1, Dq)`` (``one_step``), ``values`` defaults to ``keys``, inputs are
    checked and ``valid_lens``/``mask`` combined. Returns ``(query, values, one_step, mask)``."""
    values = keys if values is None else values
    one_step = isinstance(query, Tensor) and query.dim() == 2
    if one_step:
        query = query.unsqueeze(1)  # (B, Dq) -> (B, 1, Dq)
    _check_d2l_inputs(query, keys, values, query_dim=query_dim, key_dim=key_dim)
    bsz, q_len, kv_len = query.shape[0], query.shape[1], keys.shape[1]
    return query, values, one_step, lengths_mask(valid_lens, mask, batch=bsz, q_len=q_len, kv_len=kv_len)


def _check_d2l_inputs(
    queries: Tensor, keys: Tensor, values: Tensor, *, query_dim: int | None, key_dim: int | None
) -> None:
    """3-D ``(B, T, D)`` inputs with matching batch and key/value lengths (clear errors)."""
    for name, t, dim in (("queries", queries, query_dim), ("keys", keys, key_dim), ("values", values, None)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"{name}: expected shape (B, T, D), got {tuple(t.shape)}")
        if dim is not None and t.shape[-1] != dim:
            raise ValueError(f"{name}: expected feature dim {dim}, got shape {tuple(t.shape)}")
    if not queries.shape[0] == keys.shape[0] == values.shape[0]:
        raise ValueError(
            f"keys/values: expected batch size B={queries.shape[0]} like queries, got "
            f"keys {tuple(keys.shape)} and values {tuple(values.shape)}"
        )
    if values.shape[1] != keys.shape[1]:
        raise ValueError(
            f"values: expected Tk={keys.shape[1]} rows like keys {tuple(keys.shape)}, got {tuple(values.shape)}"
        )
