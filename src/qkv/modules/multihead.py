"""Multi-head attention (Vaswani et al. 2017, "Attention Is All You Need", section 3.2.2).

Shape legend (see :mod:`qkv._types`)::

    B   batch              H   heads
    Tq  query length       Tk  key/value length
    E   embed_dim          Dh  head dim = E / H
    Ek  kdim               Ev  vdim

    query (B, Tq, E), key (B, Tk, Ek), value (B, Tk, Ev)
    -> out (B, Tq, E), weights (B, H, Tq, Tk) or, averaged over heads, (B, Tq, Tk)

A drop-in for ``torch.nn.MultiheadAttention(batch_first=True)`` with qkv's conventions: masks
are bool with True = may attend (``key_padding_mask`` keeps torch's True = padding), rows with
no key give zeros instead of NaN, and weights are returned, never stored.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._types import AttentionOutput
from ..functional.attention import attention
from ..masks.core import Mask, MaskLike, check_bool_mask, key_padding
from .scores import _check_dim

__all__ = ["MultiHeadAttention"]


def _check_dropout(dropout: object) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: expected a number in [0, 1), got {dropout!r}")
    return float(dropout)


class MultiHeadAttention(nn.Module):
    """Multi-head attention ``MultiHead(Q, K, V) = Concat(head_1..head_H) W_O`` with
    ``head_i = softmax(Q W_Q^i (K W_K^i)^T / sqrt(Dh)) V W_V^i``.

    Vaswani et al. 2017, section 3.2.2. Parameters are laid out as in
    ``torch.nn.MultiheadAttention`` with separate projections, so :meth:`from_torch` and
    :meth:`to_torch` copy weights both ways and give equal outputs within tolerance.

    Args:
        embed_dim: ``E``, the model dim (query and output features).
        num_heads: ``H``; ``E`` must be divisible by it.
        kdim, vdim: feature dims of key and value (default ``E``).
        bias: add biases to the four projections.
        dropout: dropout probability on the attention weights, applied only in training
            mode (``self.training``).
        backend: passed to :func:`qkv.attention` (``"auto"``, ``"reference"``, ``"sdpa"``).

    Attributes:
        q_proj ``Linear(E, E)``, k_proj ``Linear(Ek, E)``, v_proj ``Linear(Ev, E)``,
        out_proj ``Linear(E, E)``. Projection weights are Xavier-uniform and biases zero, as
        in torch.

    Raises:
        ValueError: a dim that is not a positive int, ``embed_dim`` not divisible by
            ``num_heads``, ``dropout`` outside ``[0, 1)``.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        num_heads: int,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.embed_dim = _check_dim("embed_dim", embed_dim)
        self.num_heads = _check_dim("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim: expected a multiple of num_heads={num_heads}, got {embed_dim} "
                f"(head dim would be {embed_dim / num_heads:.3g})"
            )
        self.head_dim = embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else _check_dim("kdim", kdim)
        self.vdim = embed_dim if vdim is None else _check_dim("vdim", vdim)
        self.dropout = _check_dropout(dropout)
        if not isinstance(backend, str):
            raise TypeError(f"backend: expected a name (str), got {type(backend).__name__}")
        self.backend = backend
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(proj.weight)
        self.out_proj.reset_parameters()
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

    @property
    def has_bias(self) -> bool:
        return self.q_proj.bias is not None

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, kdim={self.kdim}, "
            f"vdim={self.vdim}, bias={self.has_bias}, dropout={self.dropout}, backend={self.backend!r}"
        )

    # ------------------------------------------------------------------------- forward

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *,
        mask: MaskLike | None = None,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
        average_weights: bool = False,
    ) -> AttentionOutput:
        """Attend from ``query`` to ``key``/``value``.

        Args:
            query: ``(B, Tq, E)``.
            key: ``(B, Tk, Ek)``; default ``query`` (self-attention).
            value: ``(B, Tk, Ev)``; default ``key``.
            mask: bool, True = may attend, broadcastable to ``(B, H, Tq, Tk)`` (a ``(Tq, Tk)``
                matrix, ``(B, 1, Tq, Tk)``...), or a :class:`qkv.masks.Mask` such as
                ``qkv.masks.causal()``. A per-sample ``(B, Tq, Tk)`` mask must be passed as
                ``(B, 1, Tq, Tk)`` (a 3-D mask broadcasts as ``(H, Tq, Tk)``). Note: torch's
                bool ``attn_mask`` is the opposite (True = not allowed): pass ``~attn_mask``;
                torch's ``(B*H, Tq, Tk)`` masks become ``(~m).view(B, H, Tq, Tk)``.
            key_padding_mask: ``(B, Tk)`` bool with torch's convention, True = padding
                (ignored). Combined with ``mask`` by AND.
            need_weights: also return the attention weights (before dropout).
            average_weights: return them averaged over heads, ``(B, Tq, Tk)``, instead of per
                head, ``(B, H, Tq, Tk)``. Requires ``need_weights=True``.

        Returns:
            :class:`qkv.AttentionOutput` with ``out (B, Tq, E)``, ``weights`` (or None),
            ``lse (B, H, Tq)`` when the backend gives it, and the backend's name. Queries with
            no key to attend get a zero attention vector, so their ``out`` is
            ``out_proj.bias`` (zeros without bias); their weights are zero, never NaN.

        Raises:
            ValueError: inputs that are not 3-D, feature dims other than ``E``/``Ek``/``Ev``,
                batch or key/value lengths that differ, a ``key_padding_mask`` that is not
                ``(B, Tk)``, a mask not broadcastable to ``(B, H, Tq, Tk)``,
                ``average_weights`` without ``need_weights``.
            TypeError: masks that are not bool.
        """
        key = query if key is None else key
        value = key if value is None else value
        self._check_inputs(query, key, value)
        if average_weights and not need_weights:
            raise ValueError("average_weights: True needs need_weights=True")
        bsz, q_len, _ = query.shape
        kv_len = key.shape[1]
        attn_mask = self._combine_masks(mask, key_padding_mask, bsz, q_len, kv_len)

        heads, dh = self.num_heads, self.head_dim
        q = self.q_proj(query).view(bsz, q_len, heads, dh).transpose(1, 2)  # (B, H, Tq, Dh)
        k = self.k_proj(key).view(bsz, kv_len, heads, dh).transpose(1, 2)  # (B, H, Tk, Dh)
        v = self.v_proj(value).view(bsz, kv_len, heads, dh).transpose(1, 2)  # (B, H, Tk, Dh)
        res = attention(
            q,
            k,
            v,
            score="scaled_dot",
            mask=attn_mask,
            dropout_p=self.dropout,
            training=self.training,
            backend=self.backend,
            need_weights=need_weights,
        )
        out = res.out.transpose(1, 2).reshape(bsz, q_len, self.embed_dim)  # (B, Tq, E)
        out = self.out_proj(out)
        weights = res.weights
        if weights is not None and average_weights:
            weights = weights.mean(dim=1)  # (B, H, Tq, Tk) -> (B, Tq, Tk)
        return AttentionOutput(out=out, weights=weights, lse=res.lse, backend=res.backend)

    def _check_inputs(self, query: Tensor, key: Tensor, value: Tensor) -> None:
        for name, t, dim, label in (
            ("query", query, self.embed_dim, "E"),
            ("key", key, self.kdim, "kdim"),
            ("value", value, self.vdim, "vdim"),
        ):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 3 or t.shape[-1] != dim:
                raise ValueError(
                    f"{name}: expected shape (B, T, {label}={dim}) (batch first), got {tuple(t.shape)}"
                )
        if key.shape[0] != query.shape[0] or value.shape[0] != query.shape[0]:
            raise ValueError(
                f"key/value: expected batch size B={query.shape[0]} like query, got "
                f"key {tuple(key.shape)} and value {tuple(value.shape)}"
            )
        if value.shape[1] != key.shape[1]:
            raise ValueError(
                f"value: expected Tk={key.shape[1]} rows like key {tuple(key.shape)}, got {tuple(value.shape)}"
            )

    def _combine_masks(
        self, mask: MaskLike | None, key_padding_mask: Tensor | None, bsz: int, q_len: int, kv_len: int
    ) -> MaskLike | None:
        """``mask & key_padding(key_padding_mask)``, checked against ``(B, H, Tq, Tk)``."""
        if mask is not None and not isinstance(mask, Mask):
            check_bool_mask(mask, "mask")
            target = (bsz, self.num_heads, q_len, kv_len)
            try:
                fits = mask.dim() <= 4 and torch.broadcast_shapes(mask.shape, target) == target
            except RuntimeError:
                fits = False
            if not fits:
                raise ValueError(
                    f"mask: expected a shape broadcastable to (B, H, Tq, Tk) = {target}, got {tuple(mask.shape)}"
                )
        if key_padding_mask is None:
            return mask
        check_bool_mask(key_padding_mask, "key_padding_mask")
        if tuple(key_padding_mask.shape) != (bsz, kv_len):
            raise ValueError(
                f"key_padding_mask: expected shape (B, Tk) = ({bsz}, {kv_len}) with True = padding, "
                f"got {tuple(key_padding_mask.shape)}"
            )
        keep = key_padding(key_padding_mask)  # (B, 1, 1, Tk), True = may attend
        return keep if mask is None else mask & keep

    # ------------------------------------------------------------------------- torch interop

    @classmethod
    def from_torch(cls, m: nn.MultiheadAttention, *, backend: str = "auto") -> MultiHeadAttention:
        """A copy of ``torch.nn.MultiheadAttention`` ``m`` (same weights, device and dtype).

        Outputs equal ``m``'s within floating-point tolerance, given the same inputs and the
        mask conventions translated (``mask = ~attn_mask`` for a bool ``attn_mask``).

        Raises:
            TypeError: ``m`` is not an ``nn.MultiheadAttention``.
            ValueError: ``m.batch_first`` is False, or ``m`` uses ``add_bias_kv`` or
                ``add_zero_attn`` (unsupported).
        """
        if not isinstance(m, nn.MultiheadAttention):
            raise TypeError(f"m: expected a torch.nn.MultiheadAttention, got {type(m).__name__}")
        if not m.batch_first:
            raise ValueError(
                "m: expected batch_first=True (qkv modules take (B, T, E)), got batch_first=False"
            )
        if m.bias_k is not None or m.bias_v is not None:
            raise ValueError("m: add_bias_kv=True is not supported by qkv.modules.MultiHeadAttention")
        if m.add_zero_attn:
            raise ValueError("m: add_zero_attn=True is not supported by qkv.modules.MultiHeadAttention")
        ref = m.out_proj.weight
        has_bias = m.in_proj_bias is not None
        new = cls(
            embed_dim=m.embed_dim, num_heads=m.num_heads, kdim=m.kdim, vdim=m.vdim,
            bias=has_bias, dropout=m.dropout, backend=backend,
        ).to(device=ref.device, dtype=ref.dtype)  # fmt: skip
        e = m.embed_dim
        if m._qkv_same_embed_dim:
            w_q, w_k, w_v = m.in_proj_weight.detach().split(e, dim=0)  # 3 x (E, E)
        else:
            w_q, w_k, w_v = (t.detach() for t in (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight))
        with torch.no_grad():
            new.q_proj.weight.copy_(w_q)
            new.k_proj.weight.copy_(w_k)
            new.v_proj.weight.copy_(w_v)
            new.out_proj.weight.copy_(m.out_proj.weight)
            if has_bias:
                b_q, b_k, b_v = m.in_proj_bias.detach().split(e)  # 3 x (E,)
                new.q_proj.bias.copy_(b_q)
                new.k_proj.bias.copy_(b_k)
                new.v_proj.bias.copy_(b_v)
                new.out_proj.bias.copy_(m.out_proj.bias)
        new.train(m.training)
        return new

    def to_torch(self) -> nn.MultiheadAttention:
        """An equivalent ``torch.nn.MultiheadAttention(batch_first=True)`` (weights copied).

        Its weights are packed into ``in_proj_weight`` when ``kdim == vdim == E``, else kept
        as ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``, as torch does.
        """
        ref = self.out_proj.weight
        m = nn.MultiheadAttention(
            self.embed_dim, self.num_heads, dropout=self.dropout, bias=self.has_bias,
            kdim=self.kdim, vdim=self.vdim, batch_first=True, device=ref.device, dtype=ref.dtype,
        )  # fmt: skip
        with torch.no_grad():
            if m._qkv_same_embed_dim:
                m.in_proj_weight.copy_(
                    torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
                )
            else:
                m.q_proj_weight.copy_(self.q_proj.weight)
                m.k_proj_weight.copy_(self.k_proj.weight)
                m.v_proj_weight.copy_(self.v_proj.weight)
            m.out_proj.weight.copy_(self.out_proj.weight)
            if self.has_bias:
                m.in_proj_bias.copy_(torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]))
                m.out_proj.bias.copy_(self.out_proj.bias)
        m.train(self.training)
        return m
