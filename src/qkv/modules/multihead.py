"""Multi-head attention (Vaswani et al. 2017, "Attention Is All You Need", section 3.2.2), with
grouped-query attention, rotary positions, additive position biases and KV caches.

Shape legend (see :mod:`qkv._types`)::

    B   batch              H   heads              Hkv  key/value heads (num_kv_heads)
    Tq  query length       Tk  key/value length   G    query heads per key/value head = H / Hkv
    E   embed_dim          Dh  head dim = E / H
    Ek  kdim               Ev  vdim

    query (B, Tq, E), key (B, Tk, Ek), value (B, Tk, Ev)
    -> out (B, Tq, E), weights (B, H, Tq, Tk) or, averaged over heads, (B, Tq, Tk)

A drop-in for ``torch.nn.MultiheadAttention``: called with torch's arguments (``attn_mask``,
``is_causal``, ...) it follows torch's conventions and returns torch's ``(out, weights)`` pair,
so it replaces the attention inside ``nn.TransformerEncoderLayer``/``DecoderLayer``. Called
the qkv way, masks are bool with True = may attend (``key_padding_mask`` keeps torch's True =
padding). Either way rows with no key give zeros instead of NaN, and weights are returned,
never stored.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import broadcasts_to, check_dim, check_dropout
from .._types import AttentionOutput
from ..api import attention
from ..masks.core import (
    PADDING_MEANING,
    Mask,
    MaskLike,
    causal,
    check_ambiguous_layout,
    check_bool_mask,
)
from ..masks.torch_masks import from_torch_attn_mask, from_torch_key_padding, is_causal_matrix
from .kv_cache import CacheStep, KVCache, StaticKVCache
from .positional import PositionalBias, RotaryEmbedding

__all__ = ["MultiHeadAttention"]


class MultiHeadAttention(nn.Module):
    """Multi-head attention ``MultiHead(Q, K, V) = Concat(head_1..head_H) W_O`` with
    ``head_i = softmax(Q W_Q^i (K W_K^i)^T / sqrt(Dh)) V W_V^i``.

    Vaswani et al. 2017, section 3.2.2. Parameters are laid out as in
    ``torch.nn.MultiheadAttention`` with separate projections, so :meth:`from_torch` and
    :meth:`to_torch` copy weights both ways and give equal outputs within tolerance.

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
        backend: passed to :func:`qkv.attention` (``"auto"``, ``"reference"``, ``"sdpa"``).
        num_kv_heads: ``Hkv``, a divisor of ``H`` (default ``H``: multi-head attention).
        rotary: a :class:`qkv.modules.RotaryEmbedding` over ``Dh`` features, or True for
            ``RotaryEmbedding(Dh)``; None or False: no rotation.
        batch_first: inputs are ``(B, T, E)`` (default, unlike torch's ``False``) or, when
            False, ``(T, B, E)``.
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
        *,
        embed_dim: int,
        num_heads: int,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        backend: str = "auto",
        num_kv_heads: int | None = None,
        rotary: RotaryEmbedding | bool | None = None,
        batch_first: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first: expected a bool, got {type(batch_first).__name__}")
        self.batch_first = batch_first
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
            + ("" if self.batch_first else ", batch_first=False")
        )

    # ------------------------------------------------------------------------- forward

    # What torch's Transformer layers read before choosing their fused fast path. qkv keeps
    # separate projections, so the fused kernel (which would bypass qkv) is never taken.
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None
    bias_k = None
    bias_v = None
    add_zero_attn = False

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        need_weights: bool | None = None,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool | None = None,
        is_causal: bool | None = None,
        *,
        mask: MaskLike | None = None,
        average_weights: bool = False,
        bias: Tensor | PositionalBias | None = None,
        cache: KVCache | StaticKVCache | None = None,
        backend: str | None = None,
    ) -> AttentionOutput | tuple[Tensor, Tensor | None]:
        """Attend from ``query`` to ``key``/``value``.

        Two calling conventions meet here and are converted at this edge:

        - **qkv's** (``mask=``, True = may attend): returns an :class:`qkv.AttentionOutput`.
        - **torch's** (``nn.MultiheadAttention.forward``, positional order included): a call
          that names ``attn_mask``, ``is_causal`` or ``average_attn_weights`` returns torch's
          pair ``(out, weights)``, with torch's defaults ``need_weights=True`` and
          ``average_attn_weights=True``. This is what ``nn.TransformerEncoderLayer``,
          ``nn.TransformerDecoderLayer`` and ``nn.Transformer`` do, so the module can replace
          their attention (see :meth:`from_torch`).

        Passing both ``mask`` and ``attn_mask`` raises. Layout: ``(B, T, E)`` with
        ``batch_first=True`` (the default), ``(T, B, E)`` with ``batch_first=False``, or an
        unbatched ``(T, E)``; outputs and weights come back in the same layout.

        Args:
            query: ``(B, Tq, E)``.
            key: ``(B, Tk, Ek)``; default ``query`` (self-attention).
            value: ``(B, Tk, Ev)``; default ``key``.
            key_padding_mask: ``(B, Tk)`` with torch's convention: bool True = padding (never
                attended), or float added to the scores (``-inf`` = padding). Combined with
                the other masks.
            need_weights: also return the attention weights (before dropout). Default False
                (qkv call), True (torch call).
            attn_mask: torch's attention mask: bool with True = *not* allowed, or float added
                to the scores; ``(Tq, Tk)`` or ``(B * num_heads, Tq, Tk)`` (row ``b * H + h``).
            average_attn_weights: torch's name of ``average_weights`` (default True in a torch
                call).
            is_causal: the causal mask (query ``i`` sees keys ``j <= i``). With ``attn_mask``
                it is torch's hint that the mask is causal: the mask is checked, and a mask
                that is not causal raises instead of being silently replaced.
            mask: bool, True = may attend, or a :class:`qkv.masks.Mask` such as
                ``qkv.masks.causal()``. Accepted tensor shapes (each can mean only one
                thing): ``(Tq, Tk)``, ``(1, Tq, Tk)``, and 4-D ``(B or 1, H or 1, Tq, Tk)``; a
                per-sample mask is ``(B, 1, Tq, Tk)``, a per-head one ``(1, H, Tq, Tk)``. A
                3-D ``(n, Tq, Tk)`` with ``n > 1`` is refused (per sample or per head?).
            average_weights: return the weights averaged over heads, ``(B, Tq, Tk)``, instead
                of per head, ``(B, H, Tq, Tk)``. Requires ``need_weights=True``.
            bias: added to the scaled logits: a float tensor broadcastable to
                ``(B, H, Tq, Tk)`` (e.g. :func:`qkv.modules.alibi_bias`), or a position-bias
                module (:class:`qkv.modules.ALiBi`, :class:`qkv.modules.T5RelativeBias`) that
                is called with the query and key positions (``0 .. Tq-1`` and ``0 .. Tk-1``
                without a cache, the cache's positions with one).
            cache: incremental decoding (:mod:`qkv.modules.kv_cache`), qkv calls only.

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
            backend: this call's backend instead of the module's (None: the module's); e.g.
                :func:`qkv.capture` with ``detach=False`` runs its hooked calls with
                ``"reference"``, whose weights are the tensor the output is computed from.

        Returns:
            qkv call: :class:`qkv.AttentionOutput` with ``out (B, Tq, E)``, ``weights`` (or
            None), ``lse (B, H, Tq)`` when the backend gives it, and the backend's name.
            torch call: the tuple ``(out, weights or None)``. Queries with no key to attend
            get a zero attention vector, so their ``out`` is ``out_proj.bias`` (zeros without
            bias; torch gives NaN there); their weights are zero, never NaN.

        Raises:
            ValueError: inputs of the wrong rank, feature dims other than ``E``/``Ek``/``Ev``,
                batch or key/value lengths that differ, a mask of a shape that is refused or
                not broadcastable, ``mask`` with ``attn_mask``, ``is_causal`` with an
                ``attn_mask`` that is not causal, ``average_weights`` without
                ``need_weights``; with a cache: key/value rows other than ``Tq``, a
                :class:`qkv.masks.Mask` pattern (the cache builds the causal mask itself), a
                torch-style mask, rotary or a bias module with a ``StaticKVCache``.
            TypeError: masks of another dtype, a bias that is neither a float tensor nor a
                position-bias module, a cache of another type.
        """
        torch_call = attn_mask is not None or average_attn_weights is not None or is_causal is not None
        if mask is not None and attn_mask is not None:
            raise ValueError(
                "mask/attn_mask: pass one, not both: mask= is qkv's convention (True = may attend), "
                "attn_mask= is torch's (bool True = not allowed, or float added to the scores)"
            )
        if average_attn_weights is not None and average_weights:
            raise ValueError(
                "average_weights/average_attn_weights: the same option under two names: pass one"
            )
        average = bool(average_attn_weights) if average_attn_weights is not None else average_weights
        if need_weights is None:
            need_weights = torch_call
            average = average if average_attn_weights is not None or not torch_call else True
        if average and not need_weights:
            raise ValueError("average_weights: True needs need_weights=True")
        if cache is not None and not isinstance(cache, (KVCache, StaticKVCache)):
            raise TypeError(
                f"cache: expected a KVCache, SlidingWindowKVCache or StaticKVCache, got {type(cache).__name__}"
            )
        if cache is not None and (attn_mask is not None or is_causal):
            raise ValueError(
                "attn_mask/is_causal: with a cache the causal mask comes from the cache; pass other masks "
                "as mask= (bool, True = may attend)"
            )
        query, key, value, key_padding_mask, to_layout = self._to_batch_first(
            query, key, value, key_padding_mask
        )
        extra = None
        if cache is None:
            key = query if key is None else key
            value = key if value is None else value
            self._check_inputs(query, key, value)
            mask, extra = self._torch_masks(
                mask, attn_mask, bool(is_causal), key_padding_mask, *query.shape[:2], key.shape[1]
            )
            key_padding_mask = None  # folded into mask
        res = self._forward_batch_first(
            query, key, value, mask, key_padding_mask, bool(need_weights), bias, cache, extra, backend
        )
        weights = res.weights
        if weights is not None and average:
            weights = weights.mean(dim=1)  # (B, H, Tq, Tk) -> (B, Tq, Tk)
        out, weights = to_layout(res.out, weights)
        if torch_call:
            return out, weights
        return AttentionOutput(out=out, weights=weights, lse=res.lse, backend=res.backend)

    # ------------------------------------------------------------------------- the edge

    def _to_batch_first(self, query, key, value, key_padding_mask):
        """Inputs in the module's layout -> ``(B, T, E)`` (and their ``key_padding_mask``), and
        the function that brings the output ``(B, Tq, E)`` and weights ``(B, [H,] Tq, Tk)``
        back. Layouts: batch first, ``(T, B, E)``, unbatched ``(T, E)``, and the nested
        tensors torch's ``TransformerEncoder`` makes of padded batches in inference."""
        if not isinstance(query, Tensor):
            raise TypeError(f"query: expected a torch.Tensor, got {type(query).__name__}")
        if query.is_nested:
            return self._unnest(query, key, value, key_padding_mask)
        unbatched = query.dim() == 2 and all(t is None or t.dim() == 2 for t in (key, value))
        if unbatched:  # (T, E) -> (1, T, E)
            query, key, value = (None if t is None else t.unsqueeze(0) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)  # (Tk,) -> (1, Tk)
        elif not self.batch_first and query.dim() == 3:  # (T, B, E) -> (B, T, E)
            query, key, value = (
                t.transpose(0, 1) if isinstance(t, Tensor) and t.dim() == 3 else t
                for t in (query, key, value)
            )

        def back(out: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor | None]:
            if unbatched:
                return out.squeeze(0), None if weights is None else weights.squeeze(0)
            if not self.batch_first:
                out = out.transpose(0, 1)  # (B, Tq, E) -> (Tq, B, E); weights stay batch first
            return out, weights

        return query, key, value, key_padding_mask, back

    @staticmethod
    def _unnest(query, key, value, key_padding_mask):
        """A nested ``query`` (self-attention) -> padded ``(B, T, E)`` and its padding; the
        output goes back to a nested tensor of the same lengths."""
        if any(t is not None and t is not query for t in (key, value)) or key_padding_mask is not None:
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

    def _torch_masks(self, mask, attn_mask, is_causal, key_padding_mask, bsz, q_len, kv_len):
        """torch's ``attn_mask``/``is_causal``/``key_padding_mask`` and qkv's ``mask`` -> one
        qkv ``mask`` (True = may attend) and an additive bias from float masks (or None)."""
        extra = []
        mask = self._check_user_mask(mask)
        if attn_mask is not None:
            mask, add = from_torch_attn_mask(attn_mask, bsz, self.num_heads, q_len, kv_len)
            if is_causal:
                if not is_causal_matrix(mask, add):
                    raise ValueError(
                        "is_causal: True says attn_mask is the causal mask, but it is not (without "
                        "is_causal the mask is used as given; torch would silently ignore it)"
                    )
                mask = causal()  # the lazy pattern: fast causal kernels, no dense mask
            extra.append(add)
        elif is_causal:
            mask = causal() if mask is None else causal() & mask
        if key_padding_mask is not None:
            keep, add = from_torch_key_padding(key_padding_mask, bsz, kv_len)  # (B, 1, 1, Tk)
            mask = keep if mask is None else mask & keep
            extra.append(add)
        extra = [t for t in extra if t is not None]
        return mask, (sum(extra[1:], extra[0]) if extra else None)

    @staticmethod
    def _check_user_mask(mask: MaskLike | None) -> MaskLike | None:
        """qkv's ``mask=``: refuse the 3-D layout that could be per sample or per head."""
        if isinstance(mask, Tensor) and mask.dim() == 3 and mask.shape[0] != 1:
            raise ValueError(
                f"mask: a 3-D mask {tuple(mask.shape)} could be per sample (B, Tq, Tk) or per head "
                "(H, Tq, Tk); pass (B, 1, Tq, Tk) per sample, (1, H, Tq, Tk) per head, (Tq, Tk) or "
                "(1, Tq, Tk) for all, or torch's attn_mask= with (B * num_heads, Tq, Tk)"
            )
        return mask

    # ------------------------------------------------------------------------- forward, batch first

    def _forward_batch_first(
        self, query, key, value, mask, key_padding_mask, need_weights, bias, cache, extra, backend=None
    ):
        """The attention of ``(B, T, E)`` inputs with qkv's masks; ``extra`` is an additive
        bias from torch's float masks (or None). Weights are per head."""
        if cache is None:
            bsz, q_len, _ = query.shape
            attn_mask = self._check_mask(mask, bsz, q_len, key.shape[1])
            q, k, v = self._project(query, key, value)

            def positions() -> tuple[Tensor, Tensor]:
                dev = query.device
                return torch.arange(q_len, device=dev), torch.arange(key.shape[1], device=dev)

            if self.rotary is not None:  # positions 0 .. Tq - 1 and 0 .. Tk - 1
                q, k = self.rotary.rotate(q), self.rotary.rotate(k)
        else:
            if isinstance(mask, Mask):
                raise ValueError(
                    "mask: with a cache pass extra masks as bool tensors (B, H, Tq, Tk); the cache builds "
                    f"the causal mask from positions itself, got the pattern {mask!r}"
                )
            mask = self._check_user_mask(mask)
            self._check_inputs(query, None, None)
            bsz, q_len, _ = query.shape
            if isinstance(cache, KVCache):  # check what can be checked before the cache changes
                kv_len = cache.attended_length(q_len)
                self._check_mask(mask, bsz, q_len, kv_len)
                if isinstance(bias, Tensor):
                    self._resolve_bias(bias, None, (bsz, self.num_heads, q_len, kv_len))
            step, q = self._cached_step(query, key, value, key_padding_mask, cache, bias)
            k, v = step.key, step.value

            def positions() -> tuple[Tensor, Tensor]:
                return step.q_positions, step.k_positions

            user = self._check_mask(mask, bsz, q_len, k.shape[2])
            attn_mask = step.mask()
            if user is not None:
                attn_mask = user if attn_mask is None else attn_mask & user
        bias_t = self._resolve_bias(bias, positions, (bsz, self.num_heads, q_len, k.shape[2]))
        if extra is not None:
            bias_t = extra if bias_t is None else bias_t + extra
        if bias_t is not None:
            bias_t = bias_t.to(q.dtype)
        res = self._attend(q, k, v, attn_mask, bias_t, need_weights, backend)
        out = res.out.transpose(1, 2).reshape(bsz, q_len, self.embed_dim)  # (B, Tq, E)
        return AttentionOutput(out=self.out_proj(out), weights=res.weights, lse=res.lse, backend=res.backend)

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
    def _resolve_bias(bias, positions, target: tuple[int, ...]) -> Tensor | None:
        """A float bias tensor broadcastable to ``(B, H, Tq, Tk)``, or None; a position-bias
        module is called with ``positions() -> (q_positions (Tq,), k_positions (Tk,))``."""
        if bias is None:
            return None
        if not isinstance(bias, Tensor):
            if not isinstance(bias, PositionalBias):
                raise TypeError(
                    "bias: expected a float tensor or a position-bias module (ALiBi, T5RelativeBias), "
                    f"got {type(bias).__name__}"
                )
            bias = bias.from_positions(*positions())[None]  # (1, H, Tq, Tk): per head
        if not bias.is_floating_point():
            raise TypeError(f"bias: expected a float tensor (additive; masks go to mask=), got {bias.dtype}")
        if not broadcasts_to(bias.shape, target, max_dims=4):
            raise ValueError(
                f"bias: expected a shape broadcastable to (B, H, Tq, Tk) = {target}, got {tuple(bias.shape)}"
            )
        return check_ambiguous_layout("bias", bias, 4)

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        attn_mask: MaskLike | None,
        bias: Tensor | None,
        need_weights: bool,
        backend: str | None = None,
    ) -> AttentionOutput:
        """``attention(q (B, H, Tq, Dh), k, v (B, Hkv, Tk, Dh))`` with key/value heads shared by
        groups of ``G`` query heads; results in the ``(B, H, ...)`` layout."""
        g = self.num_heads // self.num_kv_heads
        kwargs = dict(
            score="scaled_dot", dropout_p=self.dropout, training=self.training,
            backend=self.backend if backend is None else backend,
            need_weights=need_weights,
        )  # fmt: skip
        if g == 1:
            return attention(q, k, v, mask=attn_mask, bias=bias, **kwargs)
        if isinstance(attn_mask, Mask):
            # A lazy pattern indexes rows by position: repeat the key/value heads instead.
            k = k.repeat_interleave(g, dim=1)  # (B, Hkv, Tk, Dh) -> (B, H, Tk, Dh)
            v = v.repeat_interleave(g, dim=1)
            return attention(q, k, v, mask=attn_mask, bias=bias, **kwargs)
        bsz, heads, q_len, dh = q.shape
        kv_heads = self.num_kv_heads
        # Query head h = kvh * G + j attends with key/value head kvh: stack the G heads of a
        # group as rows, row j * Tq + i.
        qg = q.reshape(bsz, kv_heads, g * q_len, dh)  # (B, H, Tq, Dh) -> (B, Hkv, G*Tq, Dh)
        res = attention(
            qg,
            k,
            v,
            mask=None if attn_mask is None else _fold_heads(attn_mask, heads, kv_heads, q_len),
            bias=None if bias is None else _fold_heads(bias, heads, kv_heads, q_len),
            **kwargs,
        )
        tk = k.shape[2]
        return AttentionOutput(
            out=res.out.reshape(bsz, heads, q_len, v.shape[-1]),  # (B, Hkv, G*Tq, Dh) -> (B, H, Tq, Dh)
            weights=None if res.weights is None else res.weights.reshape(bsz, heads, q_len, tk),
            lse=None if res.lse is None else res.lse.reshape(bsz, heads, q_len),
            backend=res.backend,
        )

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

    def _check_mask(self, mask: MaskLike | None, bsz: int, q_len: int, kv_len: int) -> MaskLike | None:
        """A bool ``mask`` checked against ``(B, H, Tq, Tk)`` (patterns pass as they are); torch's
        ``key_padding_mask`` is already folded in at the edge (:meth:`_torch_masks`) or taken by
        the cache."""
        if mask is not None and not isinstance(mask, Mask):
            check_bool_mask(mask, "mask")
            target = (bsz, self.num_heads, q_len, kv_len)
            if not broadcasts_to(mask.shape, target, max_dims=4):
                raise ValueError(
                    f"mask: expected a shape broadcastable to (B, H, Tq, Tk) = {target}, got {tuple(mask.shape)}"
                )
        return mask

    # ------------------------------------------------------------------------- torch interop

    @classmethod
    def from_torch(cls, m: nn.MultiheadAttention, *, backend: str = "auto") -> MultiHeadAttention:
        """A copy of ``torch.nn.MultiheadAttention`` ``m`` (same weights, device and dtype).

        Called with torch's arguments, the copy gives ``m``'s outputs within floating-point
        tolerance, so it can replace ``m`` inside torch's layers::

            layer = nn.TransformerEncoderLayer(64, 4, batch_first=True)
            layer.self_attn = qkv.MultiHeadAttention.from_torch(layer.self_attn)

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
            bias=has_bias, dropout=m.dropout, backend=backend, batch_first=m.batch_first,
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
        """An equivalent ``torch.nn.MultiheadAttention`` (weights and ``batch_first`` copied).

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
            kdim=self.kdim, vdim=self.vdim, batch_first=self.batch_first, device=ref.device, dtype=ref.dtype,
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


def _fold_heads(t: Tensor, heads: int, kv_heads: int, q_len: int) -> Tensor:
    """A mask or bias broadcastable to ``(B, H, Tq, Tk)`` in the grouped layout
    ``(B, Hkv or 1, G*Tq or 1, Tk)``, row ``j * Tq + i`` being query ``i`` of head ``kvh * G + j``."""
    g = heads // kv_heads
    t = t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))  # (b, h, tq, tk), each maybe 1
    b, h, tq, tk = t.shape
    if tq == 1 and h == 1:  # the same for every row of every head
        return t
    if h == 1:  # (b, 1, Tq, tk) -> (b, 1, G, Tq, tk) -> (b, 1, G*Tq, tk)
        return t.expand(b, 1, q_len, tk).unsqueeze(2).expand(b, 1, g, q_len, tk).reshape(b, 1, g * q_len, tk)
    return t.expand(b, heads, q_len, tk).reshape(b, kv_heads, g * q_len, tk)  # (b, H, Tq, tk) -> grouped
