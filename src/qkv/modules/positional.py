"""Position information for attention: absolute encodings added to the input, rotary embeddings
applied to queries and keys, and additive biases on the logits.

Shape legend (see :mod:`qkv._types`)::

    B   batch              H   heads
    T   sequence length    Tq  query length       Tk  key length
    E   model dim          D   head dim (RoPE)

Where each kind acts (the ``role`` attribute of each module, used by :func:`positional`):

    role "input"   SinusoidalPositionalEncoding, LearnedPositionalEncoding
                   x (B, T, E) -> x + P[positions]                 before the first layer
    role "rotary"  RotaryEmbedding
                   q, k (B, H, T, D) -> rotated q, k               MultiHeadAttention(rotary=...)
    role "bias"    ALiBi, T5RelativeBias
                   -> bias (H, Tq, Tk) added to the logits         MultiHeadAttention(..., bias=...)
                                                                   or qkv.attention(..., bias=b[None])

Positions are integers ``0, 1, ...``; ``offset=`` shifts them for incremental decoding (the
first new token of step ``t`` of a KV-cached decoder is at position ``t``).
"""

from __future__ import annotations

import math
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .._checks import check_dim, check_dropout

__all__ = [
    "ALiBi",
    "LearnedPositionalEncoding",
    "PositionalBias",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "T5RelativeBias",
    "alibi_bias",
    "alibi_slopes",
    "apply_rotary",
    "positional",
    "sinusoidal_table",
    "t5_relative_buckets",
]

Kind = Literal["sinusoidal", "learned", "rope", "alibi", "t5", "none"]
KINDS: tuple[str, ...] = ("sinusoidal", "learned", "rope", "alibi", "t5", "none")


# ----------------------------------------------------------------------------- argument checks


def _check_base(base: object) -> float:
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not math.isfinite(base) or base <= 1:
        raise ValueError(f"base: expected a finite number > 1, got {base!r}")
    return float(base)


def _check_offset(offset: object) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset: expected an int >= 0, got {offset!r}")
    return offset


def _positions(
    length: int, *, offset: int, positions: Tensor | None, batch: int | None, device: torch.device
) -> Tensor:
    """Integer positions ``(T,)`` (``offset + arange(T)``) or the caller's ``(T,)``/``(B, T)``."""
    if positions is None:
        return torch.arange(_check_offset(offset), offset + length, device=device)
    if offset != 0:
        raise ValueError(f"offset: give either offset or positions, got offset={offset!r} and positions")
    if not isinstance(positions, Tensor) or positions.is_floating_point() or positions.dtype == torch.bool:
        got = positions.dtype if isinstance(positions, Tensor) else type(positions).__name__
        raise TypeError(f"positions: expected an integer tensor, got {got}")
    ok = positions.dim() == 1 or (
        positions.dim() == 2 and batch is not None and positions.shape[0] in (1, batch)
    )
    if not ok or positions.shape[-1] != length:
        want = f"(T,) or (B, T) = ({batch}, {length})" if batch is not None else f"(T,) = ({length},)"
        raise ValueError(f"positions: expected shape {want}, got {tuple(positions.shape)}")
    if positions.numel() and int(positions.min()) < 0:
        raise ValueError("positions: expected positions >= 0")
    return positions.to(device)


# ----------------------------------------------------------------------------- sinusoidal


def sinusoidal_table(
    positions: Tensor, dim: int, *, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The sinusoidal encodings of integer ``positions`` (Vaswani et al. 2017, section 3.5)::

        P[pos, 2i]     = sin(pos / base^(2i / dim))
        P[pos, 2i + 1] = cos(pos / base^(2i / dim))

    Computed in float64 and cast to ``dtype``. An odd ``dim`` ends with a sine column.

    Shapes: ``positions (...)`` -> ``(..., dim)``.
    """
    check_dim("dim", dim)
    base = _check_base(base)
    pos = positions.to(torch.float64).unsqueeze(-1)  # (..., 1)
    two_i = torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device)  # (ceil(dim/2),)
    angle = pos / base ** (two_i / dim)  # (..., ceil(dim/2))
    table = torch.empty(*positions.shape, dim, dtype=torch.float64, device=positions.device)
    table[..., 0::2] = torch.sin(angle)
    table[..., 1::2] = torch.cos(angle[..., : dim // 2])
    return table.to(dtype)


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal positions added to the input, ``x + P[offset : offset + T]``.

    Vaswani et al. 2017, "Attention Is All You Need", section 3.5 (formula in
    :func:`sinusoidal_table`). The first ``max_len`` rows are precomputed (a non-persistent
    buffer: checkpoints do not store it); positions beyond are computed from the formula.

    Args:
        dim: ``E``, the feature dim of the input.
        max_len: rows to precompute.
        base: the wavelength base (10000 in the paper).
        dropout: dropout on the sum, in training mode only (0.1 in the paper).

    Shapes: ``x (B, T, E)`` -> ``(B, T, E)``; ``positions (T,)`` or ``(B, T)``.

    Raises:
        ValueError: ``dim``/``max_len`` not a positive int, ``base`` not > 1, ``dropout``
            outside ``[0, 1)``; in forward, a feature dim other than ``E``, a bad offset or
            positions.
    """

    role = "input"

    def __init__(self, dim: int, *, max_len: int = 4096, base: float = 10000.0, dropout: float = 0.0):
        super().__init__()
        self.dim = check_dim("dim", dim)
        self.max_len = check_dim("max_len", max_len)
        self.base = _check_base(base)
        self.drop = nn.Dropout(check_dropout(dropout))
        table = sinusoidal_table(torch.arange(max_len), dim, base=self.base, dtype=torch.float32)
        self.register_buffer("table", table, persistent=False)  # (max_len, E)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_len={self.max_len}, base={self.base}"

    def encodings(self, positions: Tensor, dtype: torch.dtype) -> Tensor:
        """``P[positions]``: ``(...)`` -> ``(..., E)`` in ``dtype``."""
        if dtype == torch.float64 or (positions.numel() and int(positions.max()) >= self.max_len):
            return sinusoidal_table(positions, self.dim, base=self.base, dtype=dtype)
        return self.table.to(positions.device)[positions].to(dtype)

    def forward(self, x: Tensor, *, offset: int = 0, positions: Tensor | None = None) -> Tensor:
        """``dropout(x + P[positions])``, positions ``offset + arange(T)`` unless given."""
        _check_input(x, self.dim)
        pos = _positions(x.shape[1], offset=offset, positions=positions, batch=x.shape[0], device=x.device)
        return self.drop(x + self.encodings(pos, x.dtype))  # (T, E) or (B, T, E) broadcast


class LearnedPositionalEncoding(nn.Module):
    """A learned vector per position added to the input, ``x + P[offset : offset + T]``.

    As in BERT (Devlin et al. 2019) and GPT-2; the table is ``nn.Embedding(max_len, E)``,
    initialized ``N(0, 0.02^2)``. Positions ``>= max_len`` have no vector and raise.

    Shapes: ``x (B, T, E)`` -> ``(B, T, E)``; ``positions (T,)`` or ``(B, T)``.

    Raises:
        ValueError: ``dim``/``max_len`` not a positive int, ``dropout`` outside ``[0, 1)``; in
            forward, a feature dim other than ``E``, positions beyond ``max_len - 1``.
    """

    role = "input"

    def __init__(self, dim: int, *, max_len: int = 1024, dropout: float = 0.0):
        super().__init__()
        self.dim = check_dim("dim", dim)
        self.max_len = check_dim("max_len", max_len)
        self.embedding = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(check_dropout(dropout))
        nn.init.normal_(self.embedding.weight, std=0.02)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_len={self.max_len}"

    def forward(self, x: Tensor, *, offset: int = 0, positions: Tensor | None = None) -> Tensor:
        """``dropout(x + P[positions])``, positions ``offset + arange(T)`` unless given."""
        _check_input(x, self.dim)
        pos = _positions(x.shape[1], offset=offset, positions=positions, batch=x.shape[0], device=x.device)
        if pos.numel() and int(pos.max()) >= self.max_len:
            raise ValueError(
                f"positions: expected positions < max_len={self.max_len}, got up to {int(pos.max())}"
            )
        return self.drop(x + self.embedding(pos).to(x.dtype))


def _check_input(x: Tensor, dim: int) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"x: expected shape (B, T, E={dim}), got {tuple(x.shape)}")


# ----------------------------------------------------------------------------- rotary


def _rotate_pairs(x: Tensor, interleaved: bool) -> Tensor:
    """The 90-degree turn of each rotated pair: ``(a, b) -> (-b, a)``."""
    if interleaved:  # pairs (x0, x1), (x2, x3), ...
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack((-b, a), dim=-1).flatten(-2)  # (..., D/2, 2) -> (..., D)
    a, b = x.chunk(2, dim=-1)  # pairs (x_i, x_{i + D/2})
    return torch.cat((-b, a), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, *, interleaved: bool = False) -> Tensor:
    """Rotate each pair of features of ``x`` by its angle: ``x * cos + rot(x) * sin``.

    For pair ``(a, b)`` at angle ``theta``: ``(a cos theta - b sin theta, b cos theta + a sin theta)``.
    ``cos``/``sin`` come from :meth:`RotaryEmbedding.cos_sin` (each angle repeated for both
    members of its pair). Pairs are ``(x_i, x_{i + D/2})`` (GPT-NeoX, Llama in Hugging Face), or
    ``(x_{2i}, x_{2i+1})`` with ``interleaved=True`` (the paper's layout).

    Shapes: ``x (..., T, D)``, ``cos``/``sin`` broadcastable to it (``(T, D)``,
    ``(B, 1, T, D)``) -> ``(..., T, D)``. Differentiable in all three.

    Raises:
        ValueError: an odd ``D``, or ``cos``/``sin`` whose last dim is not ``D``.
    """
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"x: expected an even feature dim D to rotate pairs, got {tuple(x.shape)}")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.shape[-1] != d:
            raise ValueError(f"{name}: expected last dim D={d} like x {tuple(x.shape)}, got {tuple(t.shape)}")
        if x.dim() >= 4 and 3 <= t.dim() < x.dim() and any(n != 1 for n in t.shape[:-2]):
            raise ValueError(
                f"{name}: a {t.dim()}-D {tuple(t.shape)} next to x {tuple(x.shape)} could be per sample "
                "or per head; give (T, D), or 4-D (B, 1, T, D) per sample / (1, H, T, D) per head"
            )
    return x * cos + _rotate_pairs(x, interleaved) * sin


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE; Su et al. 2021, "RoFormer: Enhanced Transformer with
    Rotary Position Embedding").

    Feature pair ``i`` of a query or key at position ``m`` is rotated by the angle
    ``m * theta_i`` with ``theta_i = base^(-2i / D)``, ``i = 0 .. D/2 - 1``. Rotations preserve
    norms, and ``<R_m q, R_n k>`` depends on ``m - n`` only: the logits see relative positions.
    Angles are computed in float64 and cast (so large positions stay exact in float32). No
    parameters; ``inv_freq`` is a non-persistent buffer.

    Args:
        head_dim: ``D``, even.
        base: 10000 in the paper.
        interleaved: rotate pairs ``(x_{2i}, x_{2i+1})`` (the paper) instead of
            ``(x_i, x_{i + D/2})`` (default, GPT-NeoX and Hugging Face Llama).

    Shapes: ``q``/``k``/``x (B, H, T, D)``; ``positions (T,)`` or ``(B, T)``.

    Raises:
        ValueError: ``head_dim`` not a positive even int, ``base`` not > 1; in forward, a last
            dim other than ``D``, bad offset or positions.
    """

    role = "rotary"

    def __init__(self, head_dim: int, *, base: float = 10000.0, interleaved: bool = False):
        super().__init__()
        check_dim("head_dim", head_dim)
        if head_dim % 2:
            raise ValueError(f"head_dim: expected an even int (features rotate in pairs), got {head_dim}")
        self.head_dim = head_dim
        self.base = _check_base(base)
        self.interleaved = bool(interleaved)
        inv_freq = self.base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (D/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        # cos/sin of positions 0 .. n-1 by (dtype, device), grown by doubling: a decoding step
        # slices it instead of computing its angles again.
        self._tables: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}, interleaved={self.interleaved}"

    def cos_sin(self, positions: Tensor, *, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """``cos``/``sin`` of the angles of ``positions``: ``(T,)`` -> ``(T, D)`` each, ``(B, T)``
        -> ``(B, 1, T, D)`` each (ready to broadcast over heads)."""
        inv_freq = self.inv_freq.to(positions.device)  # (D/2,)
        angle = positions.to(torch.float64).unsqueeze(-1) * inv_freq  # (..., T, D/2)
        # (..., T, D): theta_0, theta_0, theta_1, ... (interleaved) or theta_0 .. theta_{D/2-1} twice
        pair = (angle.repeat_interleave(2, dim=-1),) if self.interleaved else (angle, angle)
        angle = torch.cat(pair, dim=-1)
        if positions.dim() == 2:
            angle = angle.unsqueeze(1)  # (B, 1, T, D)
        return angle.cos().to(dtype), angle.sin().to(dtype)

    def rotate(self, x: Tensor, *, offset: int = 0, positions: Tensor | None = None) -> Tensor:
        """``x (B, H, T, D)`` rotated at positions ``offset + arange(T)`` (or ``positions``)."""
        if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[-1] != self.head_dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected shape (B, H, T, D={self.head_dim}), got {got}")
        batch = x.shape[0] if x.dim() == 4 else None
        if positions is None:
            cos, signed_sin = self._table_slice(_check_offset(offset), x.shape[-2], x.dtype, x.device)
        else:
            pos = _positions(x.shape[-2], offset=offset, positions=positions, batch=batch, device=x.device)
            cos, signed_sin = self._cos_signed_sin(pos, x.dtype)
        # apply_rotary with rot(x) * sin = swap(x) * signed_sin: three kernels instead of five
        if self.interleaved:
            swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # pairs (a, b) -> (b, a)
        else:
            swapped = x.roll(self.head_dim // 2, dims=-1)  # halves (a | b) -> (b | a)
        return torch.addcmul(x * cos, swapped, signed_sin)

    def _cos_signed_sin(self, positions: Tensor, dtype) -> tuple[Tensor, Tensor]:
        """``cos`` and ``sin`` with the sign of ``rot``'s first member folded in: ``-sin`` on
        ``a`` of each pair ``(a, b)``."""
        cos, sin = self.cos_sin(positions, dtype=torch.float64)
        first = slice(0, None, 2) if self.interleaved else slice(0, self.head_dim // 2)
        sin[..., first] = -sin[..., first]
        return cos.to(dtype), sin.to(dtype)

    def _table_slice(self, offset: int, length: int, dtype, device) -> tuple[Tensor, Tensor]:
        """cos/signed sin ``(T, D)`` of positions ``offset .. offset + T - 1`` from the cached table."""
        end = offset + length
        key = (dtype, torch.device(device))
        table = self._tables.get(key)
        if table is None or table[0].shape[0] < end:
            n = max(end, 2 * table[0].shape[0] if table is not None else 256)
            table = self._cos_signed_sin(torch.arange(n, device=device), dtype)
            self._tables[key] = table
        return table[0][offset:end], table[1][offset:end]

    def _apply(self, fn, recurse=True):
        self._tables = {}  # inv_freq may change device or dtype: rebuild the tables lazily
        return super()._apply(fn, recurse)

    def forward(
        self, q: Tensor, k: Tensor, *, offset: int = 0, positions: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Rotate ``q`` and ``k`` (both ``(B, H, T, D)``, same positions). For queries and keys at
        different positions (a KV cache) call :meth:`rotate` on each."""
        return (
            self.rotate(q, offset=offset, positions=positions),
            self.rotate(k, offset=offset, positions=positions),
        )


# ----------------------------------------------------------------------------- biases


@runtime_checkable
class PositionalBias(Protocol):
    """A bias that depends on query and key positions (ALiBi, T5). ``MultiHeadAttention``
    calls it with the positions it knows (from its KV cache, if any)."""

    def from_positions(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        """``(Tq,)``, ``(Tk,)`` -> bias ``(H, Tq, Tk)``."""
        ...


def _check_positions_1d(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor) or t.is_floating_point() or t.dtype == torch.bool or t.dim() != 1:
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
        raise TypeError(f"{name}: expected a 1-D integer tensor, got {got}")
    return t


def _default_q_positions(q_len: int, kv_len: int, q_offset: int | None, device) -> tuple[Tensor, Tensor]:
    """Query positions ``q_offset + arange(Tq)`` (default bottom-right: ``Tk - Tq``), keys ``arange(Tk)``."""
    _check_dim_or_zero("q_len", q_len)
    _check_dim_or_zero("kv_len", kv_len)
    if q_offset is None:
        q_offset = max(kv_len - q_len, 0)
    elif isinstance(q_offset, bool) or not isinstance(q_offset, int):
        raise TypeError(f"q_offset: expected an int or None, got {q_offset!r}")
    return (
        torch.arange(q_offset, q_offset + q_len, device=device),
        torch.arange(kv_len, device=device),
    )


def _check_dim_or_zero(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
    return value


def alibi_slopes(num_heads: int, *, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """The head slopes ``m_h`` of ALiBi (Press et al. 2021, "Train Short, Test Long", section 3).

    For ``n`` a power of two: the geometric sequence starting at ``2^(-8/n)`` with that ratio,
    ``m_h = 2^(-8 (h + 1) / n)`` (8 heads: 1/2, 1/4, ..., 1/256). Otherwise, as in the paper:
    the ``2^floor(log2 n)`` slopes of the closest power of two, then every other slope of
    ``2 * 2^floor(log2 n)`` heads (the odd terms ``2^(-4 (2j + 1) / 2^floor(log2 n))``) for the
    remaining heads. Computed in float64, returned ``(H,)`` in ``dtype``.

    Raises:
        ValueError: ``num_heads`` not a positive int.
    """
    check_dim("num_heads", num_heads)

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    low = 1 << (num_heads.bit_length() - 1)  # 2^floor(log2 n), exact
    slopes = power_of_two(low)
    if low < num_heads:
        slopes += power_of_two(2 * low)[0::2][: num_heads - low]
    return torch.tensor(slopes, dtype=torch.float64, device=device).to(dtype)


def _alibi_from_positions(slopes: Tensor, q_pos: Tensor, k_pos: Tensor, causal: bool) -> Tensor:
    dist = (q_pos[:, None] - k_pos[None, :]).to(slopes.dtype)  # (Tq, Tk): i - j
    if not causal:
        dist = dist.abs()
    return -slopes[:, None, None] * dist  # (H, Tq, Tk)


def alibi_bias(
    num_heads: int,
    q_len: int,
    kv_len: int,
    *,
    causal: bool = True,
    q_offset: int | None = None,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> Tensor:
    """ALiBi's linear distance penalty ``bias[h, i, j] = -m_h * (pos_i - j)`` (Press et al. 2021).

    ``m_h`` from :func:`alibi_slopes`. ``causal=True`` is the paper's decoder bias: keys after
    the query (``j > pos_i``) get a positive value and must be hidden by a causal mask
    (``qkv.masks.causal(...)``), as the paper does; ``causal=False`` is the symmetric
    ``-m_h * |pos_i - j|`` for encoders. Query ``i`` sits at ``pos_i = q_offset + i``, by default
    bottom-right aligned (``q_offset = Tk - Tq``: the last query is the newest token, as in
    KV-cached decoding). Use as ``qkv.attention(q, k, v, bias=alibi_bias(H, Tq, Tk)[None], mask=...)`` (the
    leading 1 says the bias is per head, the same for every sample).

    Shapes: -> ``(H, Tq, Tk)``.

    Raises:
        ValueError: ``num_heads`` not a positive int, lengths not ints >= 0.
        TypeError: ``q_offset`` not an int.
    """
    slopes = alibi_slopes(num_heads, dtype=torch.float64, device=device)
    q_pos, k_pos = _default_q_positions(q_len, kv_len, q_offset, device)
    return _alibi_from_positions(slopes, q_pos, k_pos, bool(causal)).to(dtype)


class ALiBi(nn.Module):
    """Attention with Linear Biases (Press et al. 2021) as a module: the slopes are a
    non-persistent buffer; :meth:`forward` gives :func:`alibi_bias`, :meth:`from_positions` the
    bias for any query/key positions (what ``MultiHeadAttention`` calls under a KV cache).

    Shapes: -> ``(H, Tq, Tk)``, in the slopes' dtype (float32 unless the module is cast).
    """

    role = "bias"

    def __init__(self, num_heads: int, *, causal: bool = True):
        super().__init__()
        self.num_heads = check_dim("num_heads", num_heads)
        self.causal = bool(causal)
        self.register_buffer("slopes", alibi_slopes(num_heads), persistent=False)  # (H,)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, causal={self.causal}"

    def forward(self, q_len: int, kv_len: int | None = None, *, q_offset: int | None = None) -> Tensor:
        """The bias of ``Tq`` queries over ``Tk`` keys (``Tk = Tq`` by default)."""
        kv_len = q_len if kv_len is None else kv_len
        q_pos, k_pos = _default_q_positions(q_len, kv_len, q_offset, self.slopes.device)
        return self.from_positions(q_pos, k_pos)

    def from_positions(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        """``(Tq,)``, ``(Tk,)`` integer positions -> ``(H, Tq, Tk)``."""
        q = _check_positions_1d("q_positions", q_positions)
        k = _check_positions_1d("k_positions", k_positions)
        return _alibi_from_positions(self.slopes, q, k, self.causal)


def t5_relative_buckets(
    relative_position: Tensor, *, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True
) -> Tensor:
    """T5's bucket of each relative position ``j - i`` (key minus query; Raffel et al. 2020,
    "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer", 2.1).

    With ``bidirectional``, half the buckets are for keys after the query (``j > i``, offset by
    ``num_buckets / 2``) and half for keys at or before it; otherwise keys after the query share
    bucket 0. Within a half of ``n`` buckets and distance ``d = |j - i|``: ``d`` itself for
    ``d < n/2`` (exact), then logarithmically spaced up to ``max_distance``,
    ``n/2 + floor(log(d / (n/2)) / log(max_distance / (n/2)) * (n - n/2))``, capped at ``n - 1``
    (the log is taken in float32, as in T5, so buckets at exact boundaries match its weights).

    Shapes: ``relative_position (...)`` integer -> ``(...)`` long in ``[0, num_buckets)``.

    Raises:
        ValueError: ``num_buckets`` < 2 (bidirectional: < 4 or odd), ``max_distance`` not
            greater than the exact range.
    """
    n = _check_buckets(num_buckets, max_distance, bidirectional)
    rel = relative_position.long()
    bucket = torch.zeros_like(rel)
    if bidirectional:
        bucket = bucket + (rel > 0).long() * n  # keys after the query: upper half
        dist = rel.abs()
    else:
        dist = (-rel).clamp(min=0)  # keys after the query collapse to distance 0
    exact = n // 2
    log_ratio = torch.log(dist.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    far = exact + (log_ratio * (n - exact)).long()
    far = far.clamp(max=n - 1)
    return bucket + torch.where(dist < exact, dist, far)


def _check_buckets(num_buckets: object, max_distance: object, bidirectional: bool) -> int:
    """Buckets per direction, after checking the arguments."""
    need = 4 if bidirectional else 2
    if isinstance(num_buckets, bool) or not isinstance(num_buckets, int) or num_buckets < need:
        raise ValueError(f"num_buckets: expected an int >= {need}, got {num_buckets!r}")
    if bidirectional and num_buckets % 2:
        raise ValueError(f"num_buckets: expected an even int when bidirectional, got {num_buckets}")
    n = num_buckets // 2 if bidirectional else num_buckets
    if isinstance(max_distance, bool) or not isinstance(max_distance, int) or max_distance <= n // 2:
        raise ValueError(
            f"max_distance: expected an int > {n // 2} (the exact range, half of {n} buckets), "
            f"got {max_distance!r}"
        )
    return n


class T5RelativeBias(nn.Module):
    """T5's learned relative position bias: one scalar per (bucket, head) added to the logits,
    ``bias[h, i, j] = w[bucket(j - i), h]`` (Raffel et al. 2020; buckets in
    :func:`t5_relative_buckets`).

    Args:
        num_heads: ``H``.
        num_buckets, max_distance: bucketing (T5: 32 and 128).
        bidirectional: encoder (True) or causal decoder (False) bucketing.

    Attributes:
        embedding: ``nn.Embedding(num_buckets, H)`` (T5 shares it across the layers of a stack).

    Shapes: -> ``(H, Tq, Tk)`` in the embedding's dtype.
    """

    role = "bias"

    def __init__(
        self, num_heads: int, *, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True
    ):
        super().__init__()
        self.num_heads = check_dim("num_heads", num_heads)
        _check_buckets(num_buckets, max_distance, bidirectional)
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.bidirectional = bool(bidirectional)
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, num_buckets={self.num_buckets}, "
            f"max_distance={self.max_distance}, bidirectional={self.bidirectional}"
        )

    def forward(self, q_len: int, kv_len: int | None = None, *, q_offset: int | None = None) -> Tensor:
        """The bias of ``Tq`` queries over ``Tk`` keys (``Tk = Tq`` by default; queries
        bottom-right aligned unless ``q_offset``)."""
        kv_len = q_len if kv_len is None else kv_len
        q_pos, k_pos = _default_q_positions(q_len, kv_len, q_offset, self.embedding.weight.device)
        return self.from_positions(q_pos, k_pos)

    def from_positions(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        """``(Tq,)``, ``(Tk,)`` integer positions -> ``(H, Tq, Tk)``."""
        q = _check_positions_1d("q_positions", q_positions)
        k = _check_positions_1d("k_positions", k_positions)
        buckets = t5_relative_buckets(
            k[None, :] - q[:, None],  # (Tq, Tk): j - i
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
            bidirectional=self.bidirectional,
        )
        return self.embedding(buckets).permute(2, 0, 1)  # (Tq, Tk, H) -> (H, Tq, Tk)


# ----------------------------------------------------------------------------- builder


def positional(
    kind: Kind,
    *,
    dim: int | None = None,
    num_heads: int | None = None,
    max_len: int = 2048,
    base: float = 10000.0,
    dropout: float = 0.0,
    causal: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> nn.Module | None:
    """The position module a Transformer config names, or None for ``"none"``.

    ============  ==========================================  ======================  =======
    kind          module                                      needs                   role
    ============  ==========================================  ======================  =======
    sinusoidal    SinusoidalPositionalEncoding(dim, ...)      dim                     input
    learned       LearnedPositionalEncoding(dim, ...)         dim                     input
    rope          RotaryEmbedding(dim // num_heads, ...)      dim, num_heads          rotary
    alibi         ALiBi(num_heads, causal=...)                num_heads               bias
    t5            T5RelativeBias(num_heads, ...)              num_heads               bias
    none          None (no position information)              -                       -
    ============  ==========================================  ======================  =======

    The module's ``role`` says where it goes: ``"input"`` is applied to the token embeddings
    ``(B, T, E)`` before the first layer; ``"rotary"`` is passed as
    ``MultiHeadAttention(rotary=...)``; ``"bias"`` is passed to each self-attention call as
    ``bias=`` (``causal`` maps to T5's ``bidirectional = not causal``).

    Args:
        dim: ``E``, the model dim. num_heads: ``H``.
        max_len: positions of the input tables. base: sinusoidal/RoPE base.
        dropout: dropout of the input encodings. causal: decoder (True) or encoder biases.
        num_buckets, max_distance: T5 bucketing.

    Raises:
        ValueError: an unknown kind (the valid ones are listed), or a needed argument missing
            or invalid (e.g. ``dim`` not divisible by ``num_heads`` for rope).
    """
    if kind not in KINDS:
        raise ValueError(f"kind: unknown positional kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if kind == "none":
        return None

    def need(name: str, value):
        if value is None:
            raise ValueError(f"{name}: positional({kind!r}) needs {name}, got None")
        return check_dim(name, value)

    if kind == "sinusoidal":
        return SinusoidalPositionalEncoding(need("dim", dim), max_len=max_len, base=base, dropout=dropout)
    if kind == "learned":
        return LearnedPositionalEncoding(need("dim", dim), max_len=max_len, dropout=dropout)
    if kind == "rope":
        e, h = need("dim", dim), need("num_heads", num_heads)
        if e % h:
            raise ValueError(f"dim: expected a multiple of num_heads={h} for rope, got {e}")
        return RotaryEmbedding(e // h, base=base)
    if kind == "alibi":
        return ALiBi(need("num_heads", num_heads), causal=causal)
    return T5RelativeBias(
        need("num_heads", num_heads),
        num_buckets=num_buckets,
        max_distance=max_distance,
        bidirectional=not causal,
    )
