"""One mask convention: boolean, ``True`` = may attend, broadcastable to ``(B, H, Tq, Tk)``.

A mask is either a bool tensor or a :class:`Mask`: a length-agnostic pattern defined by a
function ``fn(b, h, q_idx, kv_idx) -> bool tensor`` over broadcastable index tensors (the
``mask_mod`` shape of FlexAttention). Masks combine with ``&``, ``|`` and ``~``, with each other
and with bool tensors::

    mask = qkv.masks.causal() & qkv.masks.from_lengths(valid_lens, T)

Other conventions are converted at the edge by named helpers: :func:`from_lengths` (d2l's
``valid_lens``) and :func:`key_padding` (torch's ``key_padding_mask``, where True = ignore).
Additive float biases are never masks: pass them as ``bias=``.

Every mask also describes its **block layout** (:class:`BlockLayout`): for a tiling of the
``(Tq, Tk)`` plane into ``q_block x kv_block`` tiles, which tiles may hold an allowed pair
(``any``) and which are entirely allowed (``all``). Block-sparse backends skip the tiles that
are not ``any`` and skip the in-tile mask where ``all``. Patterns compute it analytically from
block boundaries in ``O(nQB * nKB)``, never building ``Tq x Tk``; bool tensors and masks without
an analytic layout reduce their dense matrix per tile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import PADDING_MEANING, check_bool_mask, check_int

__all__ = [
    "PADDING_MEANING",
    "BlockLayout",
    "Mask",
    "MaskLike",
    "causal",
    "check_ambiguous_layout",
    "check_bool_mask",
    "from_lengths",
    "full",
    "key_padding",
    "materialize",
]

MaskFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
Device = torch.device | str | None


@dataclass(frozen=True)
class BlockLayout:
    """Which ``q_block x kv_block`` tiles of the ``(Tq, Tk)`` plane a mask touches.

    ``nQB = ceil(Tq / q_block)`` and ``nKB = ceil(Tk / kv_block)``; the last tiles of each axis
    may be partial and only their real positions count. Aggregated over batch and heads
    (``any`` is the union over ``(b, h)``, ``all`` the intersection).

    Attributes:
        any: bool ``(nQB, nKB)``: the tile MAY hold an allowed ``(q, kv)`` pair. Never False
            where some pair is allowed (a superset of the exact answer is legal: it only costs
            time). Exact for every single built-in pattern.
        all: bool ``(nQB, nKB)``: EVERY real pair of the tile is allowed (the in-tile mask can
            be skipped). Never True where some pair is masked (a subset is legal). ``all``
            implies ``any``.
    """

    q_len: int
    kv_len: int
    q_block: int
    kv_block: int
    any: Tensor
    all: Tensor

    @property
    def shape(self) -> tuple[int, int]:
        """``(nQB, nKB)``."""
        return (self.any.shape[0], self.any.shape[1])

    def density(self) -> float:
        """Fraction of tiles that must be computed: ``any.sum() / any.numel()`` (0.0 if empty)."""
        n = self.any.numel()
        return float(self.any.sum()) / n if n else 0.0

    def kv_counts(self) -> Tensor:
        """long ``(nQB,)``: the number of ``any`` key blocks of each query block."""
        return self.any.sum(dim=1, dtype=torch.long)

    def kv_indices(self) -> Tensor:
        """long ``(nQB, max_count)``: the ``any`` key-block indices of each query block,
        ascending, padded on the right with -1."""
        n_qb, n_kb = self.shape
        width = int(self.kv_counts().max()) if n_qb else 0
        cols = torch.arange(n_kb, device=self.any.device).expand(n_qb, n_kb)
        keys = torch.where(self.any, cols, torch.full_like(cols, n_kb))  # absent -> n_kb, sorts last
        idx = keys.sort(dim=1).values[:, :width]
        return torch.where(idx == n_kb, torch.full_like(idx, -1), idx)

    def __repr__(self) -> str:
        n_qb, n_kb = self.shape
        return (
            f"BlockLayout(Tq={self.q_len}, Tk={self.kv_len}, blocks={self.q_block}x{self.kv_block}, "
            f"grid={n_qb}x{n_kb}, any={int(self.any.sum())}, all={int(self.all.sum())})"
        )


def block_bounds(length: int, block: int, device: Device = None) -> tuple[Tensor, Tensor]:
    """First and last (inclusive) real index of each of the ``ceil(length / block)`` blocks."""
    n = -(-length // block)
    first = torch.arange(n, device=device) * block
    last = torch.clamp(first + (block - 1), max=max(length - 1, 0))
    return first, last  # (n,), (n,)


def pool_blocks(x: Tensor, length: int, block: int, dim: int, reduce_all: bool) -> Tensor:
    """Reduce axis ``dim`` (size ``length``, or 1 = broadcast) of a bool tensor per block of
    ``block`` positions: ``all`` (every position allowed) or ``any``; the axis becomes
    ``ceil(length / block)`` long. A partial last block counts its real positions only."""
    n = -(-length // block)
    if x.shape[dim] == 1:  # broadcast axis: every block sees the same value
        return x.expand(*(n if d == dim else s for d, s in enumerate(x.shape)))
    pad = n * block - length
    if pad:  # only real positions count: pad with the neutral element
        shape = list(x.shape)
        shape[dim] = pad
        x = torch.cat([x, x.new_full(shape, reduce_all)], dim=dim)
    x = x.unflatten(dim, (n, block))
    return x.all(dim=dim + 1) if reduce_all else x.any(dim=dim + 1)


def reduce_dense(
    dense: Tensor, q_len: int, kv_len: int, q_block: int, kv_block: int
) -> tuple[Tensor, Tensor]:
    """Exact ``(any, all)`` per tile of a dense bool mask broadcastable to ``(..., Tq, Tk)``.

    Size-1 (broadcast) query or key axes are never expanded, so a padding mask ``(B, 1, 1, Tk)``
    costs ``O(B * Tk)``.
    """
    d = dense
    while d.dim() < 2:
        d = d.unsqueeze(0)
    d = d.reshape(-1, d.shape[-2], d.shape[-1])  # (N, Tq or 1, Tk or 1)
    if d.shape[0] == 0:  # an empty batch allows nothing
        d = d.new_zeros(1, d.shape[1], d.shape[2])
    union, inter = d.any(dim=0), d.all(dim=0)  # over batch and heads
    any_ = pool_blocks(pool_blocks(union, q_len, q_block, 0, False), kv_len, kv_block, 1, False)
    all_ = pool_blocks(pool_blocks(inter, q_len, q_block, 0, True), kv_len, kv_block, 1, True)
    return any_.contiguous(), all_.contiguous()


def band_layout(
    q_len: int, kv_len: int, q_block: int, kv_block: int, lo: int | None, hi: int | None, device: Device
) -> tuple[Tensor, Tensor]:
    """Exact tiles of the band ``lo <= kv - q <= hi`` (``None`` = unbounded on that side).

    In a tile the differences ``kv - q`` take every integer value in
    ``[k_first - q_last, k_last - q_first]``: it meets the band (any) or lies inside it (all).
    """
    qf, ql = block_bounds(q_len, q_block, device)
    kf, kl = block_bounds(kv_len, kv_block, device)
    d_min = kf[None, :] - ql[:, None]  # (nQB, nKB) smallest kv - q in the tile
    d_max = kl[None, :] - qf[:, None]  # (nQB, nKB) largest
    any_ = torch.ones_like(d_min, dtype=torch.bool)
    all_ = torch.ones_like(d_min, dtype=torch.bool)
    if lo is not None:
        any_ &= d_max >= lo
        all_ &= d_min >= lo
    if hi is not None:
        any_ &= d_min <= hi
        all_ &= d_max <= hi
    return any_, all_


class Mask:
    """A boolean attention pattern that knows how to build itself for any ``(Tq, Tk)``.

    Subclasses implement :meth:`mask_mod`, which returns ``fn(b, h, q_idx, kv_idx)``; the
    indices are integer tensors of any broadcastable shapes (e.g. ``q_idx (nQB, bq, 1)``,
    ``kv_idx (nQB, 1, span)``, ``b = h = tensor(0)``) and the result is a bool tensor of the
    broadcast shape of ``q_idx`` and ``kv_idx`` (and of ``b``, ``h`` when the mask depends on
    them). Indices are always in range: callers clamp and mask their own padding.

    Subclasses with an analytic block layout override :meth:`_layout`; the default reduces the
    dense matrix per tile.
    """

    name = "mask"

    def mask_mod(self, q_len: int, kv_len: int) -> MaskFn:
        raise NotImplementedError

    @property
    def depends_on_batch_head(self) -> bool:
        """True when ``mask_mod``'s result may vary with ``b`` or ``h``; when False, callers
        may evaluate it once with ``b = h = 0``. Unknown subclasses are assumed to depend."""
        return True

    @property
    def batch_head_shape(self) -> tuple[int, int] | None:
        """``(b, h)``: the batch and head sizes this pattern is defined for (1 = the same for
        all), or None when unknown. :func:`qkv.attention` checks it against its inputs so that a
        pattern built for another batch is refused before any backend runs."""
        return (1, 1) if not self.depends_on_batch_head else None

    def is_plain_causal(self, q_len: int, kv_len: int) -> bool:
        """Whether this pattern is exactly the square causal mask at ``(Tq, Tk)`` (``Tq == Tk``,
        query ``i`` sees keys ``j <= i``): the case fused kernels run from a flag
        (SDPA's ``is_causal=True``) without building a ``Tq x Tk`` matrix."""
        return False

    @property
    def is_full(self) -> bool:
        """Whether every query may attend every key (:func:`full`)."""
        return False

    def block_layout(
        self, q_len: int, kv_len: int, q_block: int, kv_block: int, *, device: Device = None
    ) -> BlockLayout:
        """The :class:`BlockLayout` of this mask for ``q_block x kv_block`` tiles of ``(Tq, Tk)``.

        Union over batch and heads for ``any``, intersection for ``all``. Built-in patterns
        compute it in ``O(nQB * nKB)`` without a ``Tq x Tk`` tensor.
        """
        check_int("block_layout: q_len", q_len, 0)
        check_int("block_layout: kv_len", kv_len, 0)
        check_int("block_layout: q_block", q_block, 1)
        check_int("block_layout: kv_block", kv_block, 1)
        # Masks are immutable: remember the last few layouts (forward and backward, training
        # steps and the fast backends all ask for the same one).
        cache = self.__dict__.setdefault("_layout_cache", {})
        key = (q_len, kv_len, q_block, kv_block, str(device))
        if key in cache:
            return cache[key]
        n_qb, n_kb = -(-q_len // q_block), -(-kv_len // kv_block)
        if n_qb == 0 or n_kb == 0:
            empty = torch.zeros(n_qb, n_kb, dtype=torch.bool, device=device)
            layout = BlockLayout(q_len, kv_len, q_block, kv_block, empty, empty.clone())
        else:
            any_, all_ = self._layout(q_len, kv_len, q_block, kv_block, device)
            any_ = any_.to(device=device, dtype=torch.bool).expand(n_qb, n_kb).contiguous()
            all_ = all_.to(device=device, dtype=torch.bool).expand(n_qb, n_kb) & any_
            layout = BlockLayout(q_len, kv_len, q_block, kv_block, any_, all_)
        if len(cache) >= 8:
            cache.pop(next(iter(cache)))
        cache[key] = layout
        return layout

    def _layout(self, q_len: int, kv_len: int, q_block: int, kv_block: int, device: Device):
        """``(any, all)`` bool ``(nQB, nKB)`` (default: dense reduction of :meth:`materialize`)."""
        dense = self.materialize(q_len, kv_len, device=device)
        return reduce_dense(dense, q_len, kv_len, q_block, kv_block)

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

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        """``tensor & pattern`` and ``tensor | pattern`` (either order): torch asks the pattern
        when a tensor meets it, and ``torch.compile`` sends every operator with a tensor
        operand here. Any other torch function refuses a pattern (``NotImplemented``)."""
        op = _TENSOR_OPERATORS.get(func)
        if op is None or kwargs or len(args) != 2:
            return NotImplemented
        left, right = args
        if func in _REFLECTED:  # ``a.__rand__(b)`` is ``b & a``
            left, right = right, left
        return _Combined(op, _wrap(left), _wrap(right))

    def __repr__(self) -> str:
        return self.name


MaskLike = Mask | Tensor

_TENSOR_OPERATORS = {
    Tensor.__and__: "&", Tensor.__rand__: "&", Tensor.__or__: "|", Tensor.__ror__: "|",
    # what torch.compile turns ``&`` and ``|`` into (operands possibly swapped: both commute)
    torch._C.TensorBase.bitwise_and: "&", torch._C.TensorBase.bitwise_or: "|",
    torch.bitwise_and: "&", torch.bitwise_or: "|",
}  # fmt: skip
_REFLECTED = (Tensor.__rand__, Tensor.__ror__)


class _TensorMask(Mask):
    """A bool tensor seen as a pattern (it must already fit the lengths it is used with)."""

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = check_ambiguous_layout("mask", check_bool_mask(tensor, "mask"), 4)
        self.name = f"tensor{tuple(tensor.shape)}"

    @property
    def batch_head_shape(self) -> tuple[int, int]:
        lead = (1,) * (4 - self.tensor.dim()) + tuple(self.tensor.shape[:-2])
        return lead[-2], lead[-1]

    def materialize(self, q_len, kv_len, *, device=None):
        t = self.tensor
        if t.dim() >= 2 and (t.shape[-2] not in (1, q_len) or t.shape[-1] not in (1, kv_len)):
            raise ValueError(
                f"mask: a tensor mask of shape {tuple(t.shape)} does not fit (Tq, Tk) = ({q_len}, {kv_len})"
            )
        return t if device is None else t.to(device)

    @property
    def depends_on_batch_head(self) -> bool:
        return any(s > 1 for s in self.tensor.shape[:-2])

    def _layout(self, q_len, kv_len, q_block, kv_block, device):
        any_, all_ = reduce_dense(self.materialize(q_len, kv_len), q_len, kv_len, q_block, kv_block)
        return any_.to(device), all_.to(device)

    def mask_mod(self, q_len, kv_len):
        t = self.materialize(q_len, kv_len)
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

    @property
    def depends_on_batch_head(self) -> bool:
        return self.left.depends_on_batch_head or self.right.depends_on_batch_head

    @property
    def batch_head_shape(self) -> tuple[int, int] | None:
        a, b = self.left.batch_head_shape, self.right.batch_head_shape
        if a is None or b is None:
            return None
        try:
            return tuple(torch.broadcast_shapes(a, b))
        except RuntimeError as err:
            raise ValueError(
                f"mask: {self.left.name} is for (B, H) = {a} and {self.right.name} for {b}: they do not combine"
            ) from err

    def _layout(self, q_len, kv_len, q_block, kv_block, device):
        # & : any(a)&any(b) is a superset, all(a)&all(b) exact; | : any exact, all a subset.
        a_any, a_all = self.left._layout(q_len, kv_len, q_block, kv_block, device)
        b_any, b_all = self.right._layout(q_len, kv_len, q_block, kv_block, device)
        if self.op == "&":
            return a_any & b_any, a_all & b_all
        return a_any | b_any, a_all | b_all

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

    @property
    def depends_on_batch_head(self) -> bool:
        return self.inner.depends_on_batch_head

    @property
    def batch_head_shape(self) -> tuple[int, int] | None:
        return self.inner.batch_head_shape

    def _layout(self, q_len, kv_len, q_block, kv_block, device):
        # some pair allowed by ~a <=> not all allowed by a; all allowed by ~a <=> none by a
        a_any, a_all = self.inner._layout(q_len, kv_len, q_block, kv_block, device)
        return ~a_all, ~a_any

    def mask_mod(self, q_len, kv_len):
        f = self.inner.mask_mod(q_len, kv_len)
        return lambda b, h, q, kv: ~f(b, h, q, kv)


class _Full(Mask):
    name = "full"

    depends_on_batch_head = False
    is_full = True

    def mask_mod(self, q_len, kv_len):
        return lambda b, h, q, kv: torch.ones_like(q >= kv)

    def _layout(self, q_len, kv_len, q_block, kv_block, device):
        return band_layout(q_len, kv_len, q_block, kv_block, None, None, device)


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

    depends_on_batch_head = False

    def is_plain_causal(self, q_len: int, kv_len: int) -> bool:
        return q_len == kv_len

    def mask_mod(self, q_len, kv_len):
        off = self.offset(q_len, kv_len)
        return lambda b, h, q, kv: kv <= q + off

    def _layout(self, q_len, kv_len, q_block, kv_block, device):
        return band_layout(q_len, kv_len, q_block, kv_block, None, self.offset(q_len, kv_len), device)


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


def check_ambiguous_layout(name: str, t: Tensor, logits_dims: int) -> Tensor:
    """Refuse a mask or bias with fewer dims than the logits ``(..., H, Tq, Tk)`` whose dims
    before ``(Tq, Tk)`` are not all 1: a ``(n, Tq, Tk)`` tensor could be per sample or per head
    (the two coincide when ``B == H``), and a layout that can mean two things is never guessed.
    ``(Tk,)``, ``(Tq, Tk)`` and ``(1, Tq, Tk)`` mean one thing and pass."""
    if logits_dims >= 4 and 3 <= t.dim() < logits_dims and any(s != 1 for s in t.shape[:-2]):
        raise ValueError(
            f"{name}: a {t.dim()}-D {name} {tuple(t.shape)} could be per sample or per head; give all "
            f"{logits_dims} dims: (B, 1, Tq, Tk) per sample, (1, H, Tq, Tk) per head, (B, H, Tq, Tk) for "
            "both, or (Tq, Tk) / (1, Tq, Tk) for every sample and head"
        )
    return t


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
    check_bool_mask(pad_mask, "key_padding_mask", PADDING_MEANING)
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
