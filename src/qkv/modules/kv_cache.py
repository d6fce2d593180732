"""Key/value caches for incremental decoding with :class:`qkv.modules.MultiHeadAttention`.

Shape legend (see :mod:`qkv._types`)::

    B    batch             Hkv  key/value heads (num_kv_heads)     Dh  head dim
    Tq   new tokens of this call (queries)
    Tk   keys attended by this call (cached + new)

A decoder generating token by token calls its causal self-attention on the new tokens only,
``mha(x_t, cache=cache)``: the cache appends their projected (and, with RoPE, rotated) keys and
values to the earlier ones, knows the position of every key, and gives the mask that makes the
result equal to recomputing the whole causal attention from scratch:

    KVCache                   every key so far (grown by concatenation, or in a preallocated
                              buffer with ``max_len=``)
    SlidingWindowKVCache(W)   only the last W keys: equals full attention under
                              ``qkv.masks.causal() & qkv.masks.sliding_window(W - 1)``
    StaticKVCache             cross-attention: the encoder memory is projected once, on the
                              first call, and reused by every later step

One cache object per attention layer; a cache holds one generation (``reset()`` to reuse it).
Caches are plain objects, not modules: they hold activations, not parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_dim

__all__ = ["CacheStep", "KVCache", "SlidingWindowKVCache", "StaticKVCache"]


@dataclass(frozen=True)
class CacheStep:
    """What one call attends to, as a cache hands it to the attention.

    Positions are consecutive: the ``Tq`` new tokens sit at ``q_start .. q_start + Tq - 1``
    and the ``Tk`` rows of ``key`` at ``k_start .. k_start + Tk - 1``.

    Attributes:
        key, value: ``(B, Hkv, Tk, Dh)``, the cached keys/values followed by the new ones.
        q_len: ``Tq``, the number of new tokens (queries).
        q_start: position of the first new token.
        k_start: position of ``key``'s first row.
        keep: ``(B, Tk)`` bool, False at padding keys, or None (no padding).
        window: the sliding window ``W`` (a query sees keys at positions ``p - W + 1 .. p``),
            or None.
        causal: whether queries see only keys at positions ``<=`` their own.
    """

    key: Tensor
    value: Tensor
    q_len: int
    q_start: int
    k_start: int
    keep: Tensor | None = None
    window: int | None = None
    causal: bool = True

    @property
    def q_positions(self) -> Tensor:
        """``(Tq,)`` long."""
        return torch.arange(self.q_start, self.q_start + self.q_len, device=self.key.device)

    @property
    def k_positions(self) -> Tensor:
        """``(Tk,)`` long, ascending."""
        return torch.arange(self.k_start, self.k_start + self.key.shape[2], device=self.key.device)

    def mask(self) -> Tensor | None:
        """Bool ``(B or 1, 1, Tq, Tk)``, True = may attend, or None when every key is allowed:
        causal by position (``k_pos <= q_pos``), inside the window, and not padding."""
        allowed = None
        q_len, k_len = self.q_len, self.key.shape[2]
        if q_len and k_len:
            q_last, k_last = self.q_start + q_len - 1, self.k_start + k_len - 1
            needs_causal = self.causal and k_last > self.q_start
            needs_window = self.window is not None and q_last - self.k_start >= self.window
            if needs_causal or needs_window:
                d = self.q_positions[:, None] - self.k_positions[None, :]  # (Tq, Tk): query - key position
                allowed = torch.ones_like(d, dtype=torch.bool)
                if self.causal:
                    allowed = allowed & (d >= 0)
                if self.window is not None:
                    allowed = allowed & (d < self.window)
                allowed = allowed[None, None]  # (1, 1, Tq, Tk)
        if self.keep is not None:
            pad = self.keep[:, None, None, :]  # (B, 1, 1, Tk)
            allowed = pad if allowed is None else allowed & pad
        return allowed


def _check_new(key: Tensor, value: Tensor, keep: Tensor | None) -> None:
    if not isinstance(key, Tensor) or not isinstance(value, Tensor):
        raise TypeError("key/value: expected torch.Tensors")
    if key.dim() != 4 or value.dim() != 4 or key.shape[:3] != value.shape[:3]:
        raise ValueError(
            f"key/value: expected (B, Hkv, T, Dh) with matching (B, Hkv, T), got key "
            f"{tuple(key.shape)} and value {tuple(value.shape)}"
        )
    if keep is not None and (keep.dtype != torch.bool or tuple(keep.shape) != (key.shape[0], key.shape[2])):
        raise ValueError(
            f"keep: expected a bool (B, T) = ({key.shape[0]}, {key.shape[2]}) tensor, got "
            f"{keep.dtype} {tuple(keep.shape)}"
        )


class KVCache:
    """The keys and values of every step so far, for causal self-attention.

    Each :meth:`update` appends ``Tq`` new steps at positions ``offset .. offset + Tq - 1``
    (``offset`` = steps seen so far) and returns a :class:`CacheStep` over all of them. With
    ``max_len=None`` the tensors grow by concatenation (works under autograd); with ``max_len``
    they live in a buffer allocated on the first update and written in place (inference only:
    decode under ``torch.no_grad()``).

    Padding (``key_padding_mask`` of ``MultiHeadAttention``, per new token) is remembered, so a
    padded prompt stays masked in every later step.

    Args:
        max_len: preallocate room for this many steps, or None to grow.

    Raises:
        ValueError: ``max_len`` not a positive int; an update beyond ``max_len``, or whose
            batch, heads, head dim, dtype or device differ from the cached ones.
        RuntimeError: an update that requires grad into a preallocated buffer.
    """

    window: int | None = None

    def __init__(self, *, max_len: int | None = None) -> None:
        self.max_len = None if max_len is None else check_dim("max_len", max_len)
        self.reset()

    def reset(self) -> None:
        """Forget everything (offset back to 0)."""
        self._key: Tensor | None = None  # (B, Hkv, capacity or length, Dh)
        self._value: Tensor | None = None
        self._keep: Tensor | None = None  # (B, capacity or length) bool, or None: no padding yet
        self._length = 0  # cached steps
        self.offset = 0  # position of the next new step = steps seen so far

    def __repr__(self) -> str:
        extra = f", max_len={self.max_len}" if self.max_len is not None else ""
        extra += f", window={self.window}" if self.window is not None else ""
        return f"{type(self).__name__}(length={self._length}, offset={self.offset}{extra})"

    @property
    def length(self) -> int:
        """Number of cached steps."""
        return self._length

    @property
    def key(self) -> Tensor | None:
        """Cached keys ``(B, Hkv, length, Dh)`` (None before the first update)."""
        return None if self._key is None else self._key[:, :, : self._length]

    @property
    def value(self) -> Tensor | None:
        """Cached values ``(B, Hkv, length, Dh)``."""
        return None if self._value is None else self._value[:, :, : self._length]

    def positions(self) -> Tensor:
        """Positions of the cached steps, ``(length,)`` long."""
        device = None if self._key is None else self._key.device
        return torch.arange(self.offset - self._length, self.offset, device=device)

    def attended_length(self, n: int) -> int:
        """``Tk``, the keys the next update of ``n`` steps will attend (cached + new)."""
        return self._length + n

    def _check_compatible(self, key: Tensor) -> None:
        if self._key is None:
            return
        ref = self._key
        got = (key.shape[0], key.shape[1], key.shape[3], key.dtype, key.device)
        want = (ref.shape[0], ref.shape[1], ref.shape[3], ref.dtype, ref.device)
        if got != want:
            raise ValueError(
                f"key: expected (B, Hkv, Dh, dtype, device) = {want} like the cached keys, got {got} "
                "(call reset() to start a new sequence)"
            )

    def update(self, key: Tensor, value: Tensor, *, keep: Tensor | None = None) -> CacheStep:
        """Append new keys/values ``(B, Hkv, Tq, Dh)`` (``keep (B, Tq)``: False = padding) and
        return what the new queries attend: every cached step, then the new ones."""
        _check_new(key, value, keep)
        self._check_compatible(key)
        n = key.shape[2]
        q_start = self.offset
        if self.max_len is None:
            self._append_cat(key, value, keep)
        else:
            self._append_buffer(key, value, keep)
        self.offset += n
        k_len = self._length
        return CacheStep(
            key=self._key[:, :, :k_len],
            value=self._value[:, :, :k_len],
            q_len=n,
            q_start=q_start,
            k_start=self.offset - k_len,
            keep=None if self._keep is None else self._keep[:, :k_len],
            window=self.window,
        )

    def _keep_so_far(self, batch: int, length: int, device) -> Tensor:
        if self._keep is not None:
            return self._keep[:, :length]
        return torch.ones(batch, length, dtype=torch.bool, device=device)

    def _append_cat(self, key: Tensor, value: Tensor, keep: Tensor | None) -> None:
        n = key.shape[2]
        if self._key is None:
            self._key, self._value = key, value
        else:
            self._key = torch.cat((self._key, key), dim=2)  # (B, Hkv, length + Tq, Dh)
            self._value = torch.cat((self._value, value), dim=2)
        if keep is not None or self._keep is not None:
            new = (
                keep if keep is not None else torch.ones(key.shape[0], n, dtype=torch.bool, device=key.device)
            )
            old = self._keep_so_far(key.shape[0], self._length, key.device)
            self._keep = torch.cat((old, new), dim=1)  # (B, length + Tq)
        self._length += n

    def _append_buffer(self, key: Tensor, value: Tensor, keep: Tensor | None) -> None:
        n, cap = key.shape[2], self.max_len
        if torch.is_grad_enabled() and (key.requires_grad or value.requires_grad):
            raise RuntimeError(
                "KVCache(max_len=...): the preallocated buffer is written in place; decode under "
                "torch.no_grad(), or use KVCache() (max_len=None) to keep gradients"
            )
        if self._length + n > cap:
            raise ValueError(
                f"max_len: the cache holds {self._length} steps and {n} more would exceed max_len={cap}"
            )
        b, h, _, d = key.shape
        if self._key is None:
            self._key = key.new_empty(b, h, cap, d)  # (B, Hkv, max_len, Dh)
            self._value = value.new_empty(b, h, cap, value.shape[3])
        self._key[:, :, self._length : self._length + n] = key
        self._value[:, :, self._length : self._length + n] = value
        if keep is not None and self._keep is None:
            self._keep = torch.ones(b, cap, dtype=torch.bool, device=key.device)
        if self._keep is not None and keep is not None:
            self._keep[:, self._length : self._length + n] = keep
        self._length += n


class SlidingWindowKVCache(KVCache):
    """A cache that keeps only the last ``window`` steps (Mistral-style local attention).

    A query at position ``p`` attends keys at positions ``p - W + 1 .. p`` (at most ``W`` keys,
    itself included): step-by-step decoding equals full recomputation under
    ``qkv.masks.causal() & qkv.masks.sliding_window(W - 1)``. Memory stays ``W`` steps however
    long the generation; a multi-token update (a prompt) briefly holds ``W - 1 + Tq`` steps and
    gets the matching mask. Grows by concatenation (works under autograd).

    Raises:
        ValueError: ``window`` not a positive int.
    """

    def __init__(self, window: int) -> None:
        self.window = check_dim("window", window)
        super().__init__(max_len=None)

    def __repr__(self) -> str:
        return f"SlidingWindowKVCache(window={self.window}, length={self._length}, offset={self.offset})"

    def attended_length(self, n: int) -> int:
        return min(self._length, self.window - 1) + n

    def update(self, key: Tensor, value: Tensor, *, keep: Tensor | None = None) -> CacheStep:
        _check_new(key, value, keep)
        self._check_compatible(key)
        b, _, n, _ = key.shape
        w = self.window
        # Keys no new query can see (position <= offset - W) are dropped before concatenating.
        old = min(self._length, w - 1)
        start = self._length - old
        q_start = self.offset
        if self._key is None or old == 0:
            k_all, v_all = key, value
        else:
            k_all = torch.cat((self._key[:, :, start:], key), dim=2)  # (B, Hkv, old + Tq, Dh)
            v_all = torch.cat((self._value[:, :, start:], value), dim=2)
        keep_all = None
        if keep is not None or self._keep is not None:
            new = keep if keep is not None else torch.ones(b, n, dtype=torch.bool, device=key.device)
            keep_all = torch.cat((self._keep_so_far(b, self._length, key.device)[:, start:], new), dim=1)
        self.offset += n
        total = old + n
        step = CacheStep(
            key=k_all,
            value=v_all,
            q_len=n,
            q_start=q_start,
            k_start=self.offset - total,
            keep=keep_all,
            window=w,
        )
        # Store the last W steps; a copy only when more than W arrived (memory stays W).
        if total > w:
            k_all = k_all[:, :, total - w :].contiguous()
            v_all = v_all[:, :, total - w :].contiguous()
            keep_all = None if keep_all is None else keep_all[:, total - w :].contiguous()
        self._key, self._value, self._keep = k_all, v_all, keep_all
        self._length = min(total, w)
        return step


class StaticKVCache:
    """Projected keys/values of a fixed memory (an encoder's output) for cross-attention.

    The first call of ``mha(x_t, memory, cache=cache)`` projects ``memory`` and stores the
    result (with its padding); every later call reuses it and ``memory`` may be None. No causal
    mask: every query sees every (non-padding) memory key.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the memory (the next call projects a new one)."""
        self.key: Tensor | None = None  # (B, Hkv, Tk, Dh)
        self.value: Tensor | None = None
        self.keep: Tensor | None = None  # (B, Tk) bool or None

    @property
    def filled(self) -> bool:
        return self.key is not None

    @property
    def length(self) -> int:
        return 0 if self.key is None else self.key.shape[2]

    def __repr__(self) -> str:
        return f"StaticKVCache(length={self.length})"

    def fill(self, key: Tensor, value: Tensor, *, keep: Tensor | None = None) -> None:
        """Store the projected memory ``(B, Hkv, Tk, Dh)`` and its ``keep (B, Tk)``."""
        _check_new(key, value, keep)
        self.key, self.value, self.keep = key, value, keep

    def step(self, q_len: int, *, keep: Tensor | None = None) -> CacheStep:
        """The stored memory as a :class:`CacheStep` for ``q_len`` queries (``keep`` replaces
        the stored padding when given)."""
        if self.key is None:
            raise ValueError("StaticKVCache: empty; the first call must pass the memory as key")
        return CacheStep(
            key=self.key,
            value=self.value,
            q_len=q_len,
            q_start=0,
            k_start=0,
            keep=self.keep if keep is None else keep,
            causal=False,
        )
