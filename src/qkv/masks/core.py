"""One mask convention: boolean, ``True`` = may attend, broadcastable to ``(B, H, Tq, Tk)``.

A mask is either a bool tensor or a :class:`Mask`: a length-agnostic pattern defined by a
function ``fn(b, h, q_idx, kv_idx) -> bool tensor`` over broadcastable index tensors (the
``mask_mod`` shape of FlexAttention). Masks combine with ``&``, ``|`` and ``~``, with each other
and with bool tensors::

    mask = qkv.masks.causal() & qkv.masks.from_lengths(valid_lens, T)

Other conventions are converted at the edge by named helpers: :func:`from_lengths` (d2l's
``valid_lens``) and :func:`key_padding` (torch's ``key_padding_mask``, where True = ignore).
Additive float biases are never masks: pass them as ``bias=``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "Mask",
    "MaskLike",
    "causal",
    "check_bool_mask",
    "from_lengths",
    "full",
    "key_padding",
    "materialize",
]

MaskFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


class Mask:
    """A boolean attention pattern that knows how to build itself for any ``(Tq, Tk)``.

    Subclasses implement :meth:`mask_mod`, which returns ``fn(b, h, q_idx, kv_idx)``; the
    indices are integer tensors that broadcast against each other and the result is a bool
    tensor of their broadcast shape (True = may attend).
    """

    name = "mask"

    def mask_mod(self, q_len: int, kv_len: int) -> MaskFn:
        raise NotImplementedError

    def materialize(self, q_len: int, kv_len: int, *, device: torch.device | str | None = None) -> Tensor:
        """The dense bool matrix ``(1, 1, Tq, Tk)`` (or ``(B, H, Tq, Tk)`` if it depends on them)."""
        fn = self.mask_mod(q_len, kv_len)
        zero = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=device)
        q_idx = torch.arange(q_len, device=device).view(1, 1, q_len, 1)
        kv_idx = torch.arange(kv_len, device=device).view(1, 1, 1, kv_len)
        out = fn(zero, zero, q_idx, kv_idx)
        return out.expand(*out.shape[:-2], q_len, kv_len)

    def __and__(self, other: MaskLike) -> Mask:
        return _Combined("&", self, _wrap(other))

    def __rand__(self, other: MaskLike) -> Mask:
        return _Combined("&", _wrap(other), self)

    def __or__(self, other: MaskLike) -> Mask:
        return _Combined("|", self, _wrap(other))

    def __ror__(self, other: MaskLike) -> Mask:
        return _Combined("|", _wrap(other), self)

    def __invert__(self) -> Mask:
        return _Not(self)

    def __repr__(self) -> str:
        return self.name


MaskLike = Mask | Tensor


class _TensorMask(Mask):
    """A bool tensor seen as a pattern (it must already fit the lengths it is used with)."""

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = check_bool_mask(tensor, "mask")
        self.name = f"tensor{tuple(tensor.shape)}"

    def materialize(self, q_len, kv_len, *, device=None):
        t = self.tensor
        if t.dim() >= 2 and (t.shape[-2] not in (1, q_len) or t.shape[-1] not in (1, kv_len)):
            raise ValueError(
                f"mask: a tensor mask of shape {tuple(t.shape)} does not fit (Tq, Tk) = ({q_len}, {kv_len})"
            )
        return t if device is None else t.to(device)

    def mask_mod(self, q_len, kv_len):
        t = self.tensor
        while t.dim() < 4:
            t = t.unsqueeze(0)
        t4 = t.expand(*t.shape[:2], q_len, kv_len)

        def fn(b, h, q_idx, kv_idx):
            bb = b if t4.shape[0] > 1 else torch.zeros_like(b)
            hh = h if t4.shape[1] > 1 else torch.zeros_like(h)
            return t4.to(q_idx.device)[bb, hh, q_idx, kv_idx]

        return fn


class _Combined(Mask):
    def __init__(self, op: str, left: Mask, right: Mask) -> None:
        self.op, self.left, self.right = op, left, right
        self.name = f"({left.name} {op} {right.name})"

    def materialize(self, q_len, kv_len, *, device=None):
        a = self.left.materialize(q_len, kv_len, device=device)
        b = self.right.materialize(q_len, kv_len, device=device)
        return a & b if self.op == "&" else a | b

    def mask_mod(self, q_len, kv_len):
        fa, fb = self.left.mask_mod(q_len, kv_len), self.right.mask_mod(q_len, kv_len)
        if self.op == "&":
            return lambda b, h, q, kv: fa(b, h, q, kv) & fb(b, h, q, kv)
        return lambda b, h, q, kv: fa(b, h, q, kv) | fb(b, h, q, kv)


class _Not(Mask):
    def __init__(self, inner: Mask) -> None:
        self.inner = inner
        self.name = f"~{inner.name}"

    def materialize(self, q_len, kv_len, *, device=None):
        return ~self.inner.materialize(q_len, kv_len, device=device)

    def mask_mod(self, q_len, kv_len):
        f = self.inner.mask_mod(q_len, kv_len)
        return lambda b, h, q, kv: ~f(b, h, q, kv)


class _Full(Mask):
    name = "full"

    def mask_mod(self, q_len, kv_len):
        return lambda b, h, q, kv: torch.ones_like(q >= kv)


class _Causal(Mask):
    """Query i may attend key j when j <= i (+ offset for bottom-right alignment)."""

    def __init__(self, alignment: str | None) -> None:
        if alignment not in (None, "top_left", "bottom_right"):
            raise ValueError(
                f"causal: alignment must be 'top_left', 'bottom_right' or None, got {alignment!r}"
            )
        self.alignment = alignment
        self.name = "causal" if alignment is None else f"causal({alignment})"

    def offset(self, q_len: int, kv_len: int) -> int:
        if self.alignment is None:
            if q_len != kv_len:
                raise ValueError(
                    f"causal: Tq={q_len} != Tk={kv_len} makes causal ambiguous; pass "
                    "alignment='top_left' (query i sees keys 0..i) or 'bottom_right' (the last "
                    "query sees every key, as in decoding with a cache)"
                )
            return 0
        return 0 if self.alignment == "top_left" else kv_len - q_len

    def mask_mod(self, q_len, kv_len):
        off = self.offset(q_len, kv_len)
        return lambda b, h, q, kv: kv <= q + off


def causal(alignment: str | None = None) -> Mask:
    """Causal mask: query ``i`` may attend key ``j`` when ``j <= i``.

    With ``Tq != Tk`` the meaning depends on alignment, which must then be given:

        top_left (Tq=2, Tk=4)    bottom_right (Tq=2, Tk=4)
          x . . .                  x x x .
          x x . .                  x x x x

    ``top_left`` is torch's ``is_causal``; ``bottom_right`` is decoding with a KV cache (the
    last query sees every key). Used with ``Tq != Tk`` and no alignment, it raises.
    """
    return _Causal(alignment)


def full() -> Mask:
    """Every query may attend every key (the identity of ``&``)."""
    return _Full()


def check_bool_mask(mask: Tensor, name: str = "mask") -> Tensor:
    """Raise a clear error unless ``mask`` is a bool tensor."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name}: expected a bool tensor or a qkv.masks.Mask, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        hint = (
            " (float masks are additive biases: pass them as bias=)"
            if mask.is_floating_point()
            else " (convert with mask.bool(); True = may attend)"
        )
        raise TypeError(f"{name}: expected dtype torch.bool (True = may attend), got {mask.dtype}{hint}")
    return mask


def from_lengths(valid_lens: Tensor, kv_len: int) -> Tensor:
    """Key mask from d2l-style ``valid_lens``: key ``j`` is visible when ``j < valid_lens``.

    Args:
        valid_lens: ``(B,)`` one length per sequence, or ``(B, Tq)`` one per query.
        kv_len: ``Tk``, the number of keys.

    Returns:
        bool ``(B, 1, 1, Tk)`` for 1-D lengths, ``(B, 1, Tq, Tk)`` for 2-D ones. A length of 0
        masks the whole row (its output is 0, unlike d2l's uniform weights).
    """
    if not isinstance(valid_lens, Tensor):
        valid_lens = torch.as_tensor(valid_lens)
    if valid_lens.is_floating_point() or valid_lens.dtype == torch.bool:
        raise TypeError(f"from_lengths: valid_lens must be an integer tensor, got {valid_lens.dtype}")
    if valid_lens.dim() not in (1, 2):
        raise ValueError(
            f"from_lengths: valid_lens must be (B,) or (B, Tq), got shape {tuple(valid_lens.shape)}"
        )
    if (valid_lens < 0).any():
        raise ValueError("from_lengths: valid_lens must be >= 0")
    kv = torch.arange(kv_len, device=valid_lens.device)
    if valid_lens.dim() == 1:
        return (kv < valid_lens[:, None])[:, None, None, :]  # (B, 1, 1, Tk)
    return (kv < valid_lens[..., None])[:, None, :, :]  # (B, 1, Tq, Tk)


def key_padding(pad_mask: Tensor) -> Tensor:
    """Convert torch's ``key_padding_mask`` (``(B, Tk)``, True = padding, ignore) to qkv's
    convention: bool ``(B, 1, 1, Tk)`` with True = may attend."""
    check_bool_mask(pad_mask, "key_padding_mask")
    if pad_mask.dim() != 2:
        raise ValueError(f"key_padding_mask: expected shape (B, Tk), got {tuple(pad_mask.shape)}")
    return ~pad_mask[:, None, None, :]


def _wrap(m: MaskLike) -> Mask:
    if isinstance(m, Mask):
        return m
    return _TensorMask(m)


def materialize(mask: MaskLike, q_len: int, kv_len: int, *, device=None) -> Tensor:
    """A dense bool tensor for any mask-like (Mask or bool tensor) at lengths ``(Tq, Tk)``."""
    if isinstance(mask, Mask):
        return mask.materialize(q_len, kv_len, device=device)
    return check_bool_mask(mask)
