"""The drop-in for ``torch.nn.MultiheadAttention``: torch's constructor, call, return and
``state_dict``, computed by qkv's attention.

Shape legend (see :mod:`qkv._types`)::

    batch_first=False (torch's default): query (Tq, B, E), key (Tk, B, Ek), value (Tk, B, Ev)
    batch_first=True:                    query (B, Tq, E), key (B, Tk, Ek), value (B, Tk, Ev)
    unbatched:                           query (Tq, E),    key (Tk, Ek),    value (Tk, Ev)
    -> (out in the query's layout, weights (B, Tq, Tk) head-averaged, (B, H, Tq, Tk) per head,
        or None)

torch's masks are converted at this edge (:mod:`qkv.masks.torch_masks`) to qkv's bool mask
(True = may attend) plus an additive bias; the attention itself is :func:`qkv.attention`
(through the shared step :class:`qkv.modules._heads.HeadsAttention`), so backends, capture
and the fully-masked-row rule (zeros, not NaN) are qkv's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._types import AttentionOutput
from ..masks.core import causal
from ..masks.torch_masks import from_torch_attn_mask, from_torch_key_padding, is_causal_matrix
from ._heads import HeadsAttention

__all__ = ["TorchMultiheadAttention"]


class TorchMultiheadAttention(nn.MultiheadAttention):
    """``torch.nn.MultiheadAttention`` with qkv's attention inside.

    It *is* an ``nn.MultiheadAttention`` (a subclass): the constructor, parameters
    (``in_proj_weight``/``in_proj_bias``, or ``q_proj_weight``/``k_proj_weight``/
    ``v_proj_weight`` when ``kdim``/``vdim`` differ from ``embed_dim``; ``bias_k``/``bias_v``;
    ``out_proj``), their initialization, ``state_dict`` keys and the attributes torch's
    Transformer layers read (``batch_first``, ``_qkv_same_embed_dim``, ``num_heads``...) are
    torch's own, so a torch ``state_dict`` loads into it and its ``state_dict`` loads into
    torch's module. Only :meth:`forward` is qkv's; it equals torch's within floating-point
    tolerance, except that a query with no key to attend gets zeros (torch: NaN).

    Inside ``nn.TransformerEncoderLayer`` in eval mode without gradients, torch may take its
    fused fast path, which reads ``in_proj_weight`` directly and does not call this module (the
    result is the same function); :func:`qkv.capture` attaches hooks, which turns that path off.

    Args:
        embed_dim: ``E``; the other arguments up to ``dtype`` (``num_heads``, ``dropout``,
            ``bias``, ``add_bias_kv``, ``add_zero_attn``, ``kdim``, ``vdim``, ``batch_first``,
            ``device``, ``dtype``) as ``torch.nn.MultiheadAttention``, with its defaults
            (``batch_first=False``).
        backend: keyword only, passed to :func:`qkv.attention` (``"auto"``, ``"reference"``,
            ``"sdpa"``...).

    Raises:
        ValueError, AssertionError: what torch's constructor raises (``embed_dim`` not
            divisible by ``num_heads``...).
        TypeError: ``backend`` not a str.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            embed_dim, num_heads, dropout=dropout, bias=bias, add_bias_kv=add_bias_kv,
            add_zero_attn=add_zero_attn, kdim=kdim, vdim=vdim, batch_first=batch_first,
            device=device, dtype=dtype,
        )  # fmt: skip
        if not isinstance(backend, str):
            raise TypeError(f"backend: expected a name (str), got {type(backend).__name__}")
        self.backend = backend
        self.attend = HeadsAttention()  # the attention step (where qkv.capture reads weights)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, kdim={self.kdim}, vdim={self.vdim}, "
            f"dropout={self.dropout}, batch_first={self.batch_first}, backend={self.backend!r}"
        )

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """torch's ``nn.MultiheadAttention.forward``: same arguments, order and defaults.

        Args:
            query, key, value: in the module's layout (see the module docstring), unbatched
                ``(T, E)``, or (self-attention only) a nested tensor as torch's
                ``TransformerEncoder`` makes of a padded batch.
            key_padding_mask: ``(B, Tk)`` (``(Tk,)`` unbatched): bool, True = padding, or float
                added to the scores.
            need_weights: also return the attention weights (before dropout).
            attn_mask: bool, True = *not* allowed, or float added to the scores; ``(Tq, Tk)``
                or ``(B * num_heads, Tq, Tk)`` (row ``b * H + h``).
            average_attn_weights: average the weights over heads (default) or return them per
                head.
            is_causal: the hint that ``attn_mask`` is the causal mask: it is checked, and a mask
                that is not causal raises (torch would silently use a causal mask instead);
                without ``attn_mask`` it applies the causal mask.

        Returns:
            ``(out, weights)``: ``out`` in the query's layout, ``weights`` ``(B, Tq, Tk)`` or
            ``(B, H, Tq, Tk)`` (batch first whatever ``batch_first``, as torch), or None when
            ``need_weights=False``.

        Raises:
            TypeError: inputs that are not tensors; masks of another dtype.
            ValueError: feature dims other than ``E``/``kdim``/``vdim``, batch or key/value
                lengths that differ, masks of another shape, ``is_causal`` with an
                ``attn_mask`` that is not causal.
        """
        query, key, value, key_padding_mask, back = self._to_batch_first(query, key, value, key_padding_mask)
        self._check_inputs(query, key, value)
        bsz, q_len, _ = query.shape
        kv_len = key.shape[1]
        q, k, v = self._project(query, key, value)
        mask, bias = self._masks(attn_mask, key_padding_mask, bool(is_causal), bsz, q_len, kv_len)
        res: AttentionOutput = self.attend(
            q, k, v, mask=mask, bias=None if bias is None else bias.to(q.dtype), dropout_p=self.dropout,
            need_weights=bool(need_weights), backend=self.backend,
        )  # fmt: skip
        out = res.out.transpose(1, 2).reshape(bsz, q_len, self.embed_dim)  # (B, H, Tq, Dh) -> (B, Tq, E)
        weights = res.weights
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)  # (B, H, Tq, Tk) -> (B, Tq, Tk)
        return back(self.out_proj(out), weights)

    # ------------------------------------------------------------------------- the edge

    def _to_batch_first(self, query, key, value, key_padding_mask):
        """Inputs in the module's layout -> ``(B, T, E)`` (and their ``key_padding_mask``), and
        the function that brings the output ``(B, Tq, E)`` and weights ``(B, [H,] Tq, Tk)``
        back. Layouts: ``batch_first``, ``(T, B, E)``, unbatched ``(T, E)``, nested."""
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if query.is_nested:
            return _unnest(query, key, value, key_padding_mask)
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                f"query/key/value: expected all 3-D (batched) or all 2-D (unbatched), got query "
                f"{tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
            )
        unbatched = query.dim() == 2
        if unbatched:  # (T, E) -> (1, T, E)
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)  # (Tk,) -> (1, Tk)
        elif not self.batch_first:  # (T, B, E) -> (B, T, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))

        def back(out: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor | None]:
            if unbatched:
                return out.squeeze(0), None if weights is None else weights.squeeze(0)
            if not self.batch_first:
                out = out.transpose(0, 1)  # (B, Tq, E) -> (Tq, B, E); weights stay batch first
            return out, weights

        return query, key, value, key_padding_mask, back

    def _check_inputs(self, query: Tensor, key: Tensor, value: Tensor) -> None:
        for name, t, dim, label in (
            ("query", query, self.embed_dim, "embed_dim"),
            ("key", key, self.kdim, "kdim"),
            ("value", value, self.vdim, "vdim"),
        ):
            if t.shape[-1] != dim:
                raise ValueError(f"{name}: expected {label}={dim} features (last dim), got {tuple(t.shape)}")
        if key.shape[0] != query.shape[0] or value.shape[0] != query.shape[0]:
            raise ValueError(
                f"key/value: expected batch size B={query.shape[0]} like query, got key {tuple(key.shape)} "
                f"and value {tuple(value.shape)} (batch first)"
            )
        if value.shape[1] != key.shape[1]:
            raise ValueError(f"value: expected Tk={key.shape[1]} rows like key, got {tuple(value.shape)}")

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q ``(B, H, Tq, Dh)``, k and v ``(B, H, Tk + extra, Dh)``: torch's packed or separate
        projections, then ``bias_k``/``bias_v`` and a zero key/value (``add_zero_attn``)
        appended, in torch's order."""
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)  # 3 x (E, E)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)  # 3 x (E,)
        q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
        bsz = q.shape[0]
        if self.bias_k is not None:  # one more key/value: (B, Tk, E) -> (B, Tk + 1, E)
            k = torch.cat([k, self.bias_k.expand(bsz, 1, self.embed_dim)], dim=1)
            v = torch.cat([v, self.bias_v.expand(bsz, 1, self.embed_dim)], dim=1)
        q, k, v = (t.view(bsz, t.shape[1], self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if self.add_zero_attn:  # one more key/value of zeros: (B, H, Tk', Dh) -> (B, H, Tk' + 1, Dh)
            k = F.pad(k, (0, 0, 0, 1))
            v = F.pad(v, (0, 0, 0, 1))
        return q, k, v

    def _masks(self, attn_mask, key_padding_mask, is_causal: bool, bsz: int, q_len: int, kv_len: int):
        """torch's masks -> qkv's ``(mask, bias)`` over the ``Tk`` keys plus the extra ones
        (``bias_k``, ``add_zero_attn``), which every query may attend."""
        keep = add = None
        if attn_mask is not None:
            keep, add = from_torch_attn_mask(attn_mask, bsz, self.num_heads, q_len, kv_len)
            if is_causal and not is_causal_matrix(keep, add):
                raise ValueError(
                    "is_causal: True says attn_mask is the causal mask, but it is not (without "
                    "is_causal the mask is used as given; torch would silently use a causal mask)"
                )
        elif is_causal:
            keep = torch.ones(q_len, kv_len, dtype=torch.bool, device=self.out_proj.weight.device).tril()
        extra = int(self.bias_k is not None) + int(self.add_zero_attn)
        if is_causal and keep is not None and key_padding_mask is None and not extra:
            return causal(), None  # the lazy pattern: fast causal kernels, no dense mask
        if key_padding_mask is not None:
            pad_keep, pad_add = from_torch_key_padding(key_padding_mask, bsz, kv_len)  # (B, 1, 1, Tk)
            keep = pad_keep if keep is None else keep & pad_keep
            add = pad_add if add is None else (add if pad_add is None else add + pad_add)
        if extra and keep is not None:
            keep = F.pad(keep, (0, extra), value=True)
        if extra and add is not None:
            add = F.pad(add, (0, extra))
        return keep, add

    # ------------------------------------------------------------------------- conversions

    @classmethod
    def from_torch(cls, m: nn.MultiheadAttention, *, backend: str = "auto") -> TorchMultiheadAttention:
        """A copy of ``torch.nn.MultiheadAttention`` ``m``: same constructor arguments, weights
        (its ``state_dict``), device, dtype and training mode. It replaces ``m`` inside torch's
        layers::

            layer = nn.TransformerEncoderLayer(64, 4)
            layer.self_attn = qkv.TorchMultiheadAttention.from_torch(layer.self_attn)

        Raises:
            TypeError: ``m`` is not an ``nn.MultiheadAttention``.
        """
        if not isinstance(m, nn.MultiheadAttention):
            raise TypeError(f"m: expected a torch.nn.MultiheadAttention, got {type(m).__name__}")
        new = cls(**_constructor_args(m), backend=backend)
        new.load_state_dict(m.state_dict())
        return new.train(m.training)

    def to_torch(self) -> nn.MultiheadAttention:
        """The equivalent ``torch.nn.MultiheadAttention`` (same arguments, weights, device,
        dtype and training mode)."""
        m = nn.MultiheadAttention(**_constructor_args(self))
        m.load_state_dict(self.state_dict())
        return m.train(self.training)


def _constructor_args(m: nn.MultiheadAttention) -> dict:
    """The ``nn.MultiheadAttention`` constructor arguments that rebuild ``m``."""
    ref = m.out_proj.weight
    return dict(
        embed_dim=m.embed_dim, num_heads=m.num_heads, dropout=m.dropout, bias=m.out_proj.bias is not None,
        add_bias_kv=m.bias_k is not None, add_zero_attn=m.add_zero_attn, kdim=m.kdim, vdim=m.vdim,
        batch_first=m.batch_first, device=ref.device, dtype=ref.dtype,
    )  # fmt: skip


def _unnest(query, key, value, key_padding_mask):
    """A nested ``query`` (self-attention) -> padded ``(B, T, E)`` and its padding; the output
    goes back to a nested tensor of the same lengths."""
    if any(t is not query for t in (key, value)) or key_padding_mask is not None:
        raise ValueError(
            "query: a nested tensor is supported for self-attention only (key and value the same "
            "nested tensor, no key_padding_mask: the nesting is the padding)"
        )
    lengths = [t.shape[0] for t in query.unbind()]
    padded = query.to_padded_tensor(0.0)  # (B, T, E)
    pad = (
        torch.arange(padded.shape[1], device=padded.device)[None, :]
        >= torch.tensor(lengths, device=padded.device)[:, None]
    )  # (B, T), True = padding

    def back(out: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor | None]:
        parts = [out[b, :n] for b, n in enumerate(lengths)]
        return torch.nested.as_nested_tensor(parts, layout=query.layout), weights

    return padded, padded, padded, pad, back
