"""Multi-head attention (Vaswani et al. 2017, "Attention Is All You Need", section 3.2.2), with
grouped-query attention, rotary positions, additive position biases and KV caches.

Shape legend (see :mod:`qkv._types`)::

    B   batch              H   heads              Hkv  key/value heads (num_kv_heads)
    Tq  query length       Tk  key/value length   G    query heads per key/value head = H / Hkv
    E   embed_dim          Dh  head dim = E / H
    Ek  kdim               Ev  vdim

    query (B, Tq, E), key (B, Tk, Ek), value (B, Tk, Ev)
    -> out (B, Tq, E), weights (B, H, Tq, Tk) or, averaged over heads, (B, Tq, Tk)

qkv's convention only: batch-first ``(B, T, E)`` inputs, bool masks with True = may attend,
additive ``bias=``, and an :class:`qkv.AttentionOutput` back. Rows with no key give zeros
instead of NaN, and weights are returned, never stored. torch's calling convention
(``attn_mask``, ``is_causal``, the ``(out, weights)`` pair, ``batch_first=False``, torch's
``state_dict``) is :class:`qkv.TorchMultiheadAttention`'s, the drop-in for
``torch.nn.MultiheadAttention``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import broadcasts_to, check_dim, check_dropout
from .._types import AttentionOutput
from ..masks.core import PADDING_MEANING, Mask, MaskLike, check_ambiguous_layout, check_bool_mask
from ._heads import HeadsAttention
from .kv_cache import CacheStep, KVCache, StaticKVCache
from .positional import PositionalBias, RotaryEmbedding

__all__ = ["MultiHeadAttention"]


class MultiHeadAttention(nn.Module):
    """Multi-head attention ``MultiHead(Q, K, V) = Concat(head_1..head_H) W_O`` with
    ``head_i = softmax(Q W_Q^i (K W_K^i)^T / sqrt(Dh)) V W_V^i``.

    Vaswani et al. 2017, section 3.2.2. The projections are separate ``nn.Linear`` layers;
    :meth:`from_torch` and :meth:`to_torch` copy the weights of a ``torch.nn.MultiheadAttention``
    both ways (the same function of batch-first inputs, within floating-point tolerance). To
    replace the attention inside torch's layers, use :class:`qkv.TorchMultiheadAttention`.

    **Grouped-query attention** (GQA; Ainslie et al. 2023, "GQA: Training Generalized
    Multi-Query Transformer Models from Multi-Head Checkpoints"): with ``num_kv_heads = Hkv <
    H`` the key and value projections have ``Hkv * Dh`` outputs and query head ``h`` uses
    key/value head ``h // G`` (``G = H / Hkv``), the ``repeat_interleave`` grouping of
    ``F.scaled_dot_product_attention(..., enable_gqa=True)``. ``Hkv = 1`` is multi-query
    attention (Shazeer 2019). The result equals multi-head attention with each key/value head
    repeated ``G`` times. Key/value heads are never copied: the ``G`` query heads of a group
    are stacked as extra query rows of one ``(B, Hkv, G*Tq, Dh)`` call (each row attends
    independently, so this is exact); with a lazy :class:`qkv.masks.Mask` pattern the key/value
    heads are repeated instead, so block-sparse backends still see the pattern.

    **Rotary positions** (``rotary=``): queries and keys are rotated by their positions
    (:class:`qkv.modules.RotaryEmbedding`) after projection; without a cache the positions are
    ``0 .. Tq - 1`` and ``0 .. Tk - 1``, with a cache they come from it.

    Args:
        embed_dim: ``E``, the model dim (query and output features).
        num_heads: ``H``; ``E`` must be divisible by it.
        kdim, vdim: feature dims of key and value (default ``E``).
        bias: add biases to the four projections.
        dropout: dropout probability on the attention weights, applied only in training
            mode (``self.training``).
        backend: passed to :func:`qkv.attention`: ``"auto"`` or one of ``"reference"``,
                ``"sdpa"``, ``"chunked"``, ``"blocksparse"``, ``"flex"``.
        num_kv_heads: ``Hkv``, a divisor of ``H`` (default ``H``: multi-head attention).
        rotary: a :class:`qkv.modules.RotaryEmbedding` over ``Dh`` features, or True for
            ``RotaryEmbedding(Dh)``; None or False: no rotation.
        device, dtype: where and how the parameters are created, as in torch.

    Attributes:
        q_proj, k_proj, v_proj, out_proj: ``Linear(E, E)``, ``Linear(Ek, Hkv*Dh)``,
            ``Linear(Ev, Hkv*Dh)``, ``Linear(E, E)``. Projection weights are Xavier-uniform and
            biases zero, as in torch.
        rotary: the rotary module or None (no parameters).

    Raises:
        ValueError: a dim that is not a positive int, ``embed_dim`` not divisible by
            ``num_heads``, ``num_heads`` not divisible by ``num_kv_heads``, ``dropout``
            outside ``[0, 1)``, a rotary module whose head dim is not ``Dh``.
        TypeError: ``rotary`` not a RotaryEmbedding, bool or None.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        backend: str = "auto",
        num_kv_heads: int | None = None,
        rotary: RotaryEmbedding | bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.embed_dim = check_dim("embed_dim", embed_dim)
        self.num_heads = check_dim("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim: expected a multiple of num_heads={num_heads}, got {embed_dim} "
                f"(head dim would be {embed_dim / num_heads:.3g})"
            )
        self.head_dim = embed_dim // num_heads
        self.num_kv_heads = num_heads if num_kv_heads is None else check_dim("num_kv_heads", num_kv_heads)
        if num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads: expected a divisor of num_heads={num_heads} (each key/value head "
                f"serves num_heads / num_kv_heads query heads), got {num_kv_heads}"
            )
        self.kdim = embed_dim if kdim is None else check_dim("kdim", kdim)
        self.vdim = embed_dim if vdim is None else check_dim("vdim", vdim)
        self.dropout = check_dropout(dropout)
        if not isinstance(backend, str):
            raise TypeError(f"backend: expected a name (str), got {type(backend).__name__}")
        self.backend = backend
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        kv_dim = self.num_kv_heads * self.head_dim
        self.k_proj = nn.Linear(self.kdim, kv_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, kv_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.rotary = self._make_rotary(rotary)
        self.attend = HeadsAttention()  # the attention step (where qkv.capture reads weights)
        self.reset_parameters()
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def _make_rotary(self, rotary: object) -> RotaryEmbedding | None:
        if rotary is None or rotary is False:
            return None
        if rotary is True:
            if self.head_dim % 2:
                raise ValueError(f"rotary: needs an even head dim, got Dh = {self.head_dim}")
            return RotaryEmbedding(self.head_dim)
        if not isinstance(rotary, RotaryEmbedding):
            raise TypeError(f"rotary: expected a RotaryEmbedding, True or None, got {type(rotary).__name__}")
        if rotary.head_dim != self.head_dim:
            raise ValueError(
                f"rotary: expected a RotaryEmbedding over the head dim Dh={self.head_dim}, "
                f"got head_dim={rotary.head_dim}"
            )
        return rotary

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
        gqa = f", num_kv_heads={self.num_kv_heads}" if self.num_kv_heads != self.num_heads else ""
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}{gqa}, kdim={self.kdim}, "
            f"vdim={self.vdim}, bias={self.has_bias}, dropout={self.dropout}, backend={self.backend!r}"
        )

    # ------------------------------------------------------------------------- forward

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *torch_args: object,
        mask: MaskLike | None = None,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
        average_weights: bool = False,
        bias: Tensor | PositionalBias | None = None,
        cache: KVCache | StaticKVCache | None = None,
        backend: str | None = None,
        **torch_kwargs: object,
    ) -> AttentionOutput:
        """Attend from ``query`` to ``key``/``value``, all batch first.

        Masks, biases and the tensors' dtypes and devices are checked once, by
        :func:`qkv.attention`; this method checks what it owns: the feature dims, the batch and
        key/value lengths, ``key_padding_mask`` and the cache's state.

        Args:
            query: ``(B, Tq, E)``.
            key: ``(B, Tk, Ek)``; default ``query`` (self-attention).
            value: ``(B, Tk, Ev)``; default ``key``.
            mask: bool, True = may attend, or a :class:`qkv.masks.Mask` such as
                ``qkv.masks.causal()``. Accepted tensor shapes (each can mean only one
                thing): ``(Tq, Tk)``, ``(1, Tq, Tk)``, and 4-D ``(B or 1, H or 1, Tq, Tk)``; a
                per-sample mask is ``(B, 1, Tq, Tk)``, a per-head one ``(1, H, Tq, Tk)``. A
                3-D ``(n, Tq, Tk)`` with ``n > 1`` is refused (per sample or per head?).
            key_padding_mask: ``(B, Tk)`` bool, True = padding (never attended), the padding
                argument of every qkv sequence layer; combined with ``mask``.
            need_weights: also return the attention weights (before dropout).
            average_weights: return the weights averaged over heads, ``(B, Tq, Tk)``, instead
                of per head, ``(B, H, Tq, Tk)``. Requires ``need_weights=True``.
            bias: added to the scaled logits: a float tensor broadcastable to
                ``(B, H, Tq, Tk)`` (e.g. :func:`qkv.modules.alibi_bias`), or a position-bias
                module (:class:`qkv.modules.ALiBi`, :class:`qkv.modules.T5RelativeBias`) that
                is called with the query and key positions (``0 .. Tq-1`` and ``0 .. Tk-1``
                without a cache, the cache's positions with one).
            cache: incremental decoding (:mod:`qkv.modules.kv_cache`).

                - :class:`qkv.modules.KVCache` / :class:`qkv.modules.SlidingWindowKVCache`:
                  causal self-attention over the new tokens ``query (B, Tq, E)`` (``key`` and
                  ``value`` default to it and must have ``Tq`` rows). Their keys/values are
                  appended to the cache; the queries attend every cached key at a position
                  ``<=`` their own (within the window). ``key_padding_mask`` is ``(B, Tq)``
                  bool for the new tokens; the cache remembers earlier padding. ``mask``, if
                  any, must be a bool tensor broadcastable to ``(B, H, Tq, Tk)`` with ``Tk``
                  the keys attended after the update (``cache.length`` afterwards for a
                  ``KVCache``).
                - :class:`qkv.modules.StaticKVCache`: cross-attention to a fixed memory. The
                  first call projects ``key``/``value`` (and ``key_padding_mask (B, Tk)``) into
                  it; later calls reuse them and may pass ``key=None``. No rotary, and ``bias``
                  must be a tensor.
            backend: this call's backend instead of the module's (None: the module's).

        Returns:
            :class:`qkv.AttentionOutput` with ``out (B, Tq, E)``, ``weights`` (or None),
            ``lse (B, H, Tq)`` when the backend gives it, and the backend's name. Queries with
            no key to attend get a zero attention vector, so their ``out`` is
            ``out_proj.bias`` (zeros without bias); their weights are zero, never NaN.

        Raises:
            TypeError: torch's arguments (``attn_mask``, ``is_causal``,
                ``average_attn_weights``, or more than three positional arguments): they are
                :class:`qkv.TorchMultiheadAttention`'s; a bias that is neither a float tensor
                nor a position-bias module; a cache of another type; anything
                :func:`qkv.attention` refuses.
            ValueError: inputs of the wrong rank, feature dims other than ``E``/``Ek``/``Ev``,
                batch or key/value lengths that differ, a ``key_padding_mask`` of another
                shape, ``average_weights`` without ``need_weights``; with a cache: key/value
                rows other than ``Tq``, a :class:`qkv.masks.Mask` pattern (the cache builds the
                causal mask itself), rotary or a bias module with a ``StaticKVCache``; anything
                :func:`qkv.attention` refuses.
        """
        if torch_args or torch_kwargs:
            _refuse_torch_call(len(torch_args), torch_kwargs)
        if average_weights and not need_weights:
            raise ValueError("average_weights: True needs need_weights=True")
        if cache is not None and not isinstance(cache, (KVCache, StaticKVCache)):
            raise TypeError(
                f"cache: expected a KVCache, SlidingWindowKVCache or StaticKVCache, got {type(cache).__name__}"
            )
        if cache is None:
            key = query if key is None else key
            value = key if value is None else value
            self._check_inputs(query, key, value)
            bsz, q_len, _ = query.shape
            kv_len = key.shape[1]
            keep = self._keep(key_padding_mask, bsz, kv_len, "Tk")
            target = (bsz, self.num_heads, q_len, kv_len)
            attn_mask = mask if keep is None else _with_keep(mask, keep[:, None, None, :], target)
            q, k, v = self._project(query, key, value)

            def positions() -> tuple[Tensor, Tensor]:
                dev = query.device
                return torch.arange(q_len, device=dev), torch.arange(kv_len, device=dev)

            if self.rotary is not None:  # positions 0 .. Tq - 1 and 0 .. Tk - 1
                q, k = self.rotary.rotate(q), self.rotary.rotate(k)
        else:
            q, k, v, attn_mask, positions = self._cached(
                query, key, value, mask, key_padding_mask, bias, cache
            )
        bias_t = self._resolve_bias(bias, positions, q.dtype)
        res = self.attend(
            q, k, v, mask=attn_mask, bias=bias_t,
            dropout_p=self.dropout, need_weights=need_weights,
            backend=self.backend if backend is None else backend,
        )  # fmt: skip
        bsz, q_len = query.shape[:2]
        out = res.out.transpose(1, 2).reshape(bsz, q_len, self.embed_dim)  # (B, H, Tq, Dh) -> (B, Tq, E)
        weights = res.weights
        if weights is not None and average_weights:
            weights = weights.mean(dim=1)  # (B, H, Tq, Tk) -> (B, Tq, Tk)
        return AttentionOutput(out=self.out_proj(out), weights=weights, lse=res.lse, backend=res.backend)

    def _cached(self, query, key, value, mask, key_padding_mask, bias, cache):
        """The cache path of :meth:`forward`: ``(q, k, v, mask, positions)``, checking what can be
        checked before the cache changes."""
        if isinstance(mask, Mask):
            raise ValueError(
                "mask: with a cache pass extra masks as bool tensors (B, H, Tq, Tk); the cache builds "
                f"the causal mask from positions itself, got the pattern {mask!r}"
            )
        self._check_inputs(query, None, None)
        bsz, q_len, _ = query.shape
        if isinstance(cache, KVCache):  # a bad mask or bias must not leave the cache updated
            target = (bsz, self.num_heads, q_len, cache.attended_length(q_len))
            if mask is not None:
                _check_fits("mask", check_bool_mask(mask, "mask"), target)
            if isinstance(bias, Tensor):
                _check_fits("bias", bias, target, float_dtype=True)
        step, q = self._cached_step(query, key, value, key_padding_mask, cache, bias)
        attn_mask = step.mask()
        if mask is not None:
            _check_fits(
                "mask", check_bool_mask(mask, "mask"), (bsz, self.num_heads, q_len, step.key.shape[2])
            )
            attn_mask = mask if attn_mask is None else attn_mask & mask

        def positions() -> tuple[Tensor, Tensor]:
            return step.q_positions, step.k_positions

        return q, step.key, step.value, attn_mask, positions

    # ------------------------------------------------------------------------- forward parts

    def _project(self, query: Tensor, key: Tensor | None, value: Tensor | None):
        """q ``(B, H, Tq, Dh)`` and, when key is given, k, v ``(B, Hkv, Tk, Dh)``."""
        bsz, q_len, _ = query.shape
        heads, kv_heads, dh = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(query).view(bsz, q_len, heads, dh).transpose(1, 2)  # (B, H, Tq, Dh)
        if key is None:
            return q, None, None
        kv_len = key.shape[1]
        k = self.k_proj(key).view(bsz, kv_len, kv_heads, dh).transpose(1, 2)  # (B, Hkv, Tk, Dh)
        v = self.v_proj(value).view(bsz, kv_len, kv_heads, dh).transpose(1, 2)  # (B, Hkv, Tk, Dh)
        return q, k, v

    def _cached_step(self, query, key, value, key_padding_mask, cache, bias) -> tuple[CacheStep, Tensor]:
        """Project the new tokens, update the cache, return its step and the (rotated) queries."""
        if isinstance(cache, StaticKVCache):
            if self.rotary is not None:
                raise ValueError("rotary: not defined for cross-attention to a StaticKVCache memory")
            if bias is not None and not isinstance(bias, Tensor):
                raise ValueError(
                    "bias: a position-bias module needs self-attention positions; with a StaticKVCache "
                    "pass a bias tensor"
                )
            if cache.filled:
                self._check_inputs(query, None, None)
                keep = self._keep(key_padding_mask, query.shape[0], cache.length, "Tk")
                q, _, _ = self._project(query, None, None)
                return cache.step(query.shape[1], keep=keep), q
            if key is None:
                raise ValueError("key: the first call with an empty StaticKVCache must pass the memory")
            value = key if value is None else value
            self._check_inputs(query, key, value)
            keep = self._keep(key_padding_mask, query.shape[0], key.shape[1], "Tk")
            q, k, v = self._project(query, key, value)
            cache.fill(k, v, keep=keep)
            return cache.step(query.shape[1]), q
        key = query if key is None else key
        value = key if value is None else value
        self._check_inputs(query, key, value)
        bsz, q_len, _ = query.shape
        if key.shape[1] != q_len:
            raise ValueError(
                f"key: with a KVCache the keys are the new tokens, expected Tq={q_len} rows like query, "
                f"got {tuple(key.shape)}"
            )
        keep = self._keep(key_padding_mask, bsz, q_len, "Tq")
        q, k, v = self._project(query, key, value)
        if self.rotary is not None:  # the new tokens sit at positions offset .. offset + Tq - 1
            q = self.rotary.rotate(q, offset=cache.offset)
            k = self.rotary.rotate(k, offset=cache.offset)
        return cache.update(k, v, keep=keep), q

    @staticmethod
    def _keep(key_padding_mask: Tensor | None, bsz: int, length: int, label: str) -> Tensor | None:
        """torch's ``key_padding_mask`` (True = padding) -> keep (True = may attend)."""
        if key_padding_mask is None:
            return None
        check_bool_mask(key_padding_mask, "key_padding_mask", PADDING_MEANING)
        if tuple(key_padding_mask.shape) != (bsz, length):
            raise ValueError(
                f"key_padding_mask: expected shape (B, {label}) = ({bsz}, {length}) with True = padding, "
                f"got {tuple(key_padding_mask.shape)}"
            )
        return ~key_padding_mask

    @staticmethod
    def _resolve_bias(bias, positions, dtype: torch.dtype) -> Tensor | None:
        """A bias tensor (checked by :func:`qkv.attention`; a float one cast to the inputs'
        ``dtype``), or None; a position-bias module is called with
        ``positions() -> (q_positions (Tq,), k_positions (Tk,))``."""
        if bias is None:
            return None
        if not isinstance(bias, Tensor):
            if not isinstance(bias, PositionalBias):
                raise TypeError(
                    "bias: expected a float tensor or a position-bias module (ALiBi, T5RelativeBias), "
                    f"got {type(bias).__name__}"
                )
            bias = bias.from_positions(*positions())[None]  # (1, H, Tq, Tk): per head
        return bias.to(dtype) if bias.is_floating_point() else bias

    def _check_inputs(self, query: Tensor, key: Tensor | None, value: Tensor | None) -> None:
        for name, t, dim, label in (
            ("query", query, self.embed_dim, "E"),
            ("key", key, self.kdim, "kdim"),
            ("value", value, self.vdim, "vdim"),
        ):
            if t is None:  # a filled StaticKVCache: only the query comes in
                return
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

    # ------------------------------------------------------------------------- torch interop

    @classmethod
    def from_torch(cls, m: nn.MultiheadAttention, *, backend: str = "auto") -> MultiHeadAttention:
        """The weights of ``torch.nn.MultiheadAttention`` ``m`` in a qkv-convention module (same
        device and dtype): called on batch-first inputs with ``mask=`` (True = may attend) it gives
        ``m``'s outputs within floating-point tolerance. ``m.batch_first`` is not kept (this
        module is batch first); the drop-in that keeps torch's calling convention is
        :meth:`qkv.TorchMultiheadAttention.from_torch`.

        Raises:
            TypeError: ``m`` is not an ``nn.MultiheadAttention``.
            ValueError: ``m`` uses ``add_bias_kv`` or ``add_zero_attn`` (unsupported).
        """
        if not isinstance(m, nn.MultiheadAttention):
            raise TypeError(f"m: expected a torch.nn.MultiheadAttention, got {type(m).__name__}")
        if m.bias_k is not None or m.bias_v is not None:
            raise ValueError("m: add_bias_kv=True is not supported by qkv.modules.MultiHeadAttention")
        if m.add_zero_attn:
            raise ValueError("m: add_zero_attn=True is not supported by qkv.modules.MultiHeadAttention")
        ref = m.out_proj.weight
        has_bias = m.in_proj_bias is not None
        new = cls(
            embed_dim=m.embed_dim, num_heads=m.num_heads, kdim=m.kdim, vdim=m.vdim,
            bias=has_bias, dropout=m.dropout, backend=backend,
            device=ref.device, dtype=ref.dtype,
        )  # fmt: skip
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
        """An equivalent ``torch.nn.MultiheadAttention`` (weights copied, ``batch_first=True``).

        Its weights are packed into ``in_proj_weight`` when ``kdim == vdim == E``, else kept
        as ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``, as torch does.

        Raises:
            ValueError: grouped-query attention (``num_kv_heads < num_heads``) or rotary
                positions, which torch's module does not have.
        """
        if self.num_kv_heads != self.num_heads:
            raise ValueError(
                f"num_kv_heads: torch.nn.MultiheadAttention has no grouped-query attention "
                f"(num_kv_heads={self.num_kv_heads} < num_heads={self.num_heads})"
            )
        if self.rotary is not None:
            raise ValueError("rotary: torch.nn.MultiheadAttention has no rotary positions")
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


# torch.nn.MultiheadAttention's keywords, refused with a pointer to the adapter.
_TORCH_KEYWORDS = ("attn_mask", "is_causal", "average_attn_weights")
_ADAPTER = (
    "qkv.MultiHeadAttention speaks qkv's convention (mask= bool with True = may attend, "
    "average_weights=, an AttentionOutput back); for torch's calling convention use "
    "qkv.TorchMultiheadAttention, the drop-in for torch.nn.MultiheadAttention"
)


def _refuse_torch_call(n_args: int, kwargs: dict[str, object]) -> None:
    """A call in torch's convention (extra positional arguments or torch's keywords) -> TypeError."""
    torch_names = [k for k in kwargs if k in _TORCH_KEYWORDS]
    if torch_names:
        raise TypeError(f"{', '.join(torch_names)}: torch.nn.MultiheadAttention's argument; {_ADAPTER}")
    if n_args:
        raise TypeError(
            f"forward: takes query, key, value positionally and the rest by keyword, got {3 + n_args} "
            f"positional arguments; {_ADAPTER}"
        )
    raise TypeError(f"forward: got an unexpected keyword argument {next(iter(kwargs))!r}")


def _check_fits(name: str, t: Tensor, target: tuple[int, ...], *, float_dtype: bool = False) -> Tensor:
    """Raise unless the mask or bias ``t`` fits ``target = (B, H, Tq, Tk)`` (one layout only)."""
    if float_dtype and not t.is_floating_point():
        raise TypeError(f"{name}: expected a float tensor (additive; masks go to mask=), got {t.dtype}")
    check_ambiguous_layout(name, t, 4)
    if not broadcasts_to(t.shape, target, max_dims=4):
        raise ValueError(
            f"{name}: expected a shape broadcastable to (B, H, Tq, Tk) = {target}, got {tuple(t.shape)}"
        )
    return t


def _with_keep(mask: MaskLike | None, keep: Tensor, target: tuple[int, ...]) -> MaskLike:
    """``mask`` and the padding ``keep (B, 1, 1, Tk)`` (True = may attend) as one mask. A tensor
    mask is checked against ``target = (B, H, Tq, Tk)`` first: combining would broadcast a
    layout :func:`qkv.attention` refuses."""
    if mask is None:
        return keep
    if isinstance(mask, Tensor):
        _check_fits("mask", check_bool_mask(mask, "mask"), target)
    return mask & keep
