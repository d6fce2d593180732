"""Adaptive attention span (Sukhbaatar, Grave, Bojanowski, Joulin 2019, "Adaptive Attention Span
in Transformers"), as a functional op.

Each head ``h`` learns a span ``z_h``. A key at distance ``x`` from the query is weighted by the
soft ramp

    m_z(x) = clamp((R + z - x) / R, 0, 1)          R = ramp width

(1 up to distance ``z``, falling linearly to 0 at ``z + R``), and the weights are the paper's
equation (renormalized over the masked keys):

    a_ij = m_z(x_ij) exp(s_ij) / sum_l m_z(x_il) exp(s_il),    s = q k^T * scale

This is ``softmax(s + log m_z)``, so the op runs :func:`qkv.attention` with the additive bias
``log m_z`` on the keys where ``m_z > 0`` (the others are masked out). It is exact: the paper's
released code instead multiplies ``softmax(s)`` by ``m_z`` and divides by the row sum plus
``1e-8``; the two agree up to that epsilon. The gradient reaches ``z`` through ``m_z``
(``dm/dz = 1/R`` on the ramp, 0 elsewhere).

Distances: ``causal=True`` uses past keys only, ``x = i - j >= 0`` (as the paper's language
models); ``causal=False`` is the symmetric variant, ``x = |i - j|``.

Real savings. Every key beyond the window ``W = ceil(max_h z_h + R) - 1`` has ``m_z = 0`` for
every head, so those keys are cropped *before* any score is computed: queries are cut into
blocks of ``block_size`` and each block attends to its strip of ``block_size + W`` keys
(``+ W`` more on the right when not causal). The strips are overlapping strided views of the
keys (no copy); the blocks are the batch of one :func:`qkv.attention` call (three near the
sequence ends, where strips reach past it), so the fused SDPA kernel runs them when the span
needs no gradient. The work is ``O(T (block_size + W) D)`` instead of ``O(T^2 D)``, and equals
the uncropped computation (``crop=False``) within floating-point tolerance. When every span
reaches past the sequence (``min_h z_h > T - 1``) the mask is all ones and plain (causal)
attention runs; ``z`` then gets no gradient (it is 0).

Gradients for ``z`` need a differentiable bias, which SDPA's kernels do not give. With ``span``
requiring grad (backend ``auto``, no weights asked, no active dropout, on the CPU), the strips
run through :func:`qkv.api.span_strips.span_strips`: torch's fused flash kernels forward *and*
backward, the bias ``log m_z`` a constant mask, giving ``q``, ``k`` and ``v`` their gradients;
``z`` gets its own from :mod:`qkv.api.span_ramp`, which sums the logits' gradient over the
ramp's band alone (``d log m_z / dz = 1 / (R m_z)`` for ``z <= x < z + R``, 0 elsewhere),
``O(T R D)`` per head. The fused strips take query blocks of at least :func:`fused_block`
(``W / 4`` rounded up to a power of two, at most 256): torch's backward writes a gradient per
strip, which longer blocks keep small. Otherwise (an explicit backend, weights, dropout)
:func:`qkv.attention` runs the strips with the differentiable bias (``reference`` or
``chunked``). See the benchmark, ``benchmarks/results/adaptive_span.md``.

Shape legend (see :mod:`qkv._types`)::

    B batch   H heads   T sequence length (Tq = Tk)   D head dim   Dv value dim
    query (B, H, T, D), key (B, H, T, D), value (B, H, T, Dv), span (H,)
    -> out (B, H, T, Dv), weights (B, H, T, T), lse (B, H, T)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_bool_mask
from .._types import AttentionOutput
from .attention import attention
from .span_ramp import with_span_gradient
from .span_strips import fused_strips_available, key_strips, span_strips

__all__ = [
    "FUSED_BLOCK_MAX",
    "adaptive_span_attention",
    "check_ramp",
    "fused_block",
    "soft_span_mask",
    "span_penalty",
    "span_window",
]

FUSED_BLOCK_MAX = 256  # the longest query block fused_block picks


def soft_span_mask(distance: Tensor, span: Tensor | float, ramp: float) -> Tensor:
    """The paper's soft mask ``m_z(x) = clamp((R + z - x) / R, 0, 1)``.

    Args:
        distance: ``x``, any shape (float; integer tensors are converted to ``span``'s dtype).
        span: ``z``, broadcastable against ``distance`` (e.g. ``(H, 1, 1)`` against ``(T, T)``).
        ramp: ``R > 0``, the width of the linear ramp.

    Returns:
        ``m`` of the broadcast shape, in ``[0, 1]``: 1 for ``x <= z``, 0 for ``x >= z + R``.
    """
    ramp = check_ramp(ramp)
    if isinstance(span, Tensor) and not distance.is_floating_point():
        distance = distance.to(span.dtype)
    return ((ramp + span - distance) / ramp).clamp(0.0, 1.0)


def span_window(span: Tensor | float, ramp: float) -> int:
    """The largest distance any head can see: ``W = ceil(max_h z_h + R) - 1`` (``m_z(x) > 0``
    exactly when ``x < z + R``). Not differentiable (an int); keys beyond it have zero weight
    and zero gradient."""
    ramp = check_ramp(ramp)
    z = float(span.detach().max()) if isinstance(span, Tensor) else float(span)
    return max(0, math.ceil(z + ramp) - 1)


def span_penalty(span: Tensor, coefficient: float) -> Tensor:
    """The paper's span loss ``coefficient * mean_h(z_h)`` (added to the task loss so spans only
    grow where they pay off). ``span`` holds the spans in positions, any shape."""
    if isinstance(coefficient, bool) or not isinstance(coefficient, (int, float)) or coefficient < 0:
        raise ValueError(f"coefficient: expected a number >= 0, got {coefficient!r}")
    return coefficient * span.mean()


def adaptive_span_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    span: Tensor,
    *,
    ramp: float,
    causal: bool = True,
    key_mask: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
    need_weights: bool = False,
    crop: bool = True,
    block_size: int = 64,
    backend: str = "auto",
) -> AttentionOutput:
    """Self-attention whose head ``h`` sees keys within its soft span ``z_h`` (module docstring).

    Args:
        query, key: ``(B, H, T, D)``; value: ``(B, H, T, Dv)`` (the same ``T``: self-attention).
        span: ``z``, ``(H,)`` or a scalar, float, ``>= 0``, in positions (differentiable).
        ramp: ``R > 0``.
        causal: past keys only (``x = i - j``); False: symmetric (``x = |i - j|``).
        key_mask: ``(B, T)`` bool, True = the key may be attended (False = padding).
        scale: multiplies ``q k^T``; default ``1/sqrt(D)``.
        dropout_p, training: dropout on the weights, only when ``training=True``.
        need_weights: also return the weights ``(B, H, T, T)`` (zeros outside the span).
        crop: compute only the keys inside the window (see the module docstring). False
            computes all ``T x T`` scores; the results are equal within tolerance.
        block_size: query block length of the cropped computation (raised to
            :func:`fused_block` for a learned span on the fused strips).
        backend: passed to :func:`qkv.attention`.

    Returns:
        :class:`qkv.AttentionOutput` with ``out (B, H, T, Dv)``, ``weights`` when asked,
        ``lse (B, H, T)`` of ``s + log m_z`` when the backend gives it (not with a learned span
        on the strips), and the backend that ran (the forward's).
        A query with no key left (all masked) gets output 0, weights 0, no NaN.

    Raises:
        ValueError: tensors that are not 4-D or whose batch, heads or lengths differ; a span that
            is not ``(H,)`` or scalar, negative or not finite; ``ramp <= 0``; a key mask that is
            not ``(B, T)``; ``block_size < 1``.
        TypeError: non-float tensors, a non-bool key mask.
    """
    q, k, v = _check_qkv(query, key, value)
    bsz, heads, t, _ = q.shape
    z = _check_span(span, heads, q)  # (H,)
    ramp = check_ramp(ramp)
    if key_mask is not None:
        check_bool_mask(key_mask, "key_mask")
        if tuple(key_mask.shape) != (bsz, t):
            raise ValueError(
                f"key_mask: expected shape (B, T) = ({bsz}, {t}) with True = may attend, "
                f"got {tuple(key_mask.shape)}"
            )
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size: expected an int >= 1, got {block_size!r}")
    kwargs = dict(
        scale=scale, dropout_p=dropout_p, training=training, need_weights=need_weights, backend=backend
    )
    window = min(span_window(z, ramp), max(t - 1, 0))
    if _learned_span(z, q, kwargs):
        block_size = fused_block(block_size, window)
    plan = _Plan(t, block_size, window, 0 if causal else window)
    if crop and plan.cropped_pairs < t * t:
        return _cropped(q, k, v, z, ramp, causal, key_mask, plan, **kwargs)
    return _dense(q, k, v, z, ramp, causal, key_mask, **kwargs)


class _Plan:
    """How the cropped computation cuts the queries into blocks of ``Qb`` (the last one padded):
    block ``n`` scores the strip of keys ``[n*Qb - left, (n+1)*Qb + right)``, ``L = Qb + left +
    right`` keys. Blocks ``[lo, hi)`` ("interior") have strips inside ``[0, T)``."""

    def __init__(self, t: int, block: int, left: int, right: int) -> None:
        self.t, self.block, self.left, self.right = t, block, left, right
        self.strip = block + left + right
        self.n_blocks = -(-t // block)
        self.t_pad = self.n_blocks * block
        self.lo = min(-(-left // block), self.n_blocks)
        self.hi = max(self.lo, (t - right) // block)
        self.cropped_pairs = self.t_pad * self.strip


# ----------------------------------------------------------------------------- the two paths


def _span_bias(offset: Tensor, z: Tensor, ramp: float, causal: bool) -> tuple[Tensor, Tensor]:
    """``(log m_z, allowed)`` per head, ``(H, Tq, Tk)``, for the signed offsets key - query
    ``offset`` (Tq, Tk); ``allowed`` = ``m_z > 0`` (and a past key when ``causal``). The bias is
    ``-inf`` where not allowed (qkv.attention treats ``-inf`` logits as masked)."""
    x = -offset if causal else offset.abs()  # the distance: i - j, or |i - j|
    m = soft_span_mask(x.to(z.dtype), z.view(-1, 1, 1), ramp)  # (H, Tq, Tk)
    allowed = m > 0
    if causal:
        allowed = allowed & (offset <= 0)
    # log(m) where m > 0; log(1) elsewhere keeps the gradient finite (those entries are -inf).
    log_m = torch.log(torch.where(allowed, m, torch.ones_like(m)))
    return log_m.masked_fill(~allowed, float("-inf")), allowed


def _strip_bias(z: Tensor, ramp: float, causal: bool, block: int, strip: int, left: int) -> Tensor:
    """The span bias of a block's strip, ``(H, Qb, L)``, contiguous (the fused kernels copy any
    other layout): row ``r``, column ``c`` is key - query offset ``c - left - r``, so it is one
    row of ``Qb + L - 1`` offsets per head, computed once and gathered (row ``r`` starts
    ``Qb - 1 - r`` into it)."""
    dev = z.device
    offsets = torch.arange(-(left + block - 1), strip - left, device=dev)  # (Qb + L - 1,)
    table, _ = _span_bias(offsets[None, :], z, ramp, causal)  # (H, 1, Qb + L - 1)
    index = torch.arange(strip, device=dev) - torch.arange(block, device=dev)[:, None] + block - 1
    return table[:, 0, index]  # (H, Qb, L)


def _dense(q, k, v, z, ramp, causal, key_mask, **kwargs) -> AttentionOutput:
    t = q.shape[-2]
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, T)
    if float(z.detach().min()) > t - 1:  # m_z = 1 at every distance: plain attention
        if causal:
            causal_mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()  # (T, T)
            mask = causal_mask if mask is None else mask & causal_mask
        return attention(q, k, v, mask=mask, **kwargs)
    pos = torch.arange(t, device=q.device)
    offset = pos[None, :] - pos[:, None]  # (T, T): key j - query i
    bias, _ = _span_bias(offset, z, ramp, causal)  # (H, T, T)
    return attention(q, k, v, mask=mask, bias=bias[None], **kwargs)


def _cropped(q, k, v, z, ramp, causal, key_mask, plan: _Plan, **kwargs) -> AttentionOutput:
    """Only the keys within ``left``/``right`` of each query block (see :class:`_Plan`).

    The strips are overlapping strided *views* of the (zero-padded) keys, never copied: the
    blocks become the batch dim of :func:`qkv.attention` and the batch joins the heads,
    ``(nb, B*H, L, D)``, so the fused kernels read them in place. Interior blocks share one span
    bias ``(B*H, Qb, L)``; edge blocks (and all blocks, with padding) get theirs with ``-inf``
    on the keys that do not exist. Up to three calls: edge, interior, edge.
    """
    bsz, heads, t, d = q.shape
    dv = v.shape[-1]
    block, left, right, strip = plan.block, plan.left, plan.right, plan.strip
    n_blocks, t_pad = plan.n_blocks, plan.t_pad
    width = left + t_pad + right  # padded key positions
    if key_mask is not None:  # padded keys become zeros (their weight is 0 below): no NaN leaks
        keep = key_mask[:, None, :, None]  # (B, 1, T, 1)
        k, v = k.masked_fill(~keep, 0.0), v.masked_fill(~keep, 0.0)
    qp = F.pad(q, (0, 0, 0, t_pad - t)).reshape(bsz * heads, n_blocks, block, d)  # (B*H, nb, Qb, D)
    kp, vp = (
        F.pad(x, (0, 0, left, width - left - t)).reshape(bsz * heads, width, x.shape[-1]) for x in (k, v)
    )

    learned = _learned_span(z, q, kwargs)
    # (H, Qb, L): key - query is the same in every block; a constant for the fused strips
    bias = _strip_bias(z.detach() if learned else z, ramp, causal, block, strip, left)
    bias = bias if bsz == 1 else bias.repeat(bsz, 1, 1)  # (B*H, Qb, L), batch-major like the strips
    real = torch.zeros(bsz, width, dtype=torch.bool, device=q.device)  # keys that exist
    real[:, left : left + t] = True if key_mask is None else key_mask

    # with padding every block has its own keys: one call; else edge, interior, edge
    ranges = (
        [(0, n_blocks)] if key_mask is not None else [(0, plan.lo), (plan.lo, plan.hi), (plan.hi, n_blocks)]
    )
    results = []
    for n0, n1 in ranges:
        if n0 == n1:
            continue
        if key_mask is None and (n0, n1) == (plan.lo, plan.hi):
            block_bias = bias[None]  # (1, B*H, Qb, L): every key exists
        else:
            keys = key_strips(real[:, :, None], n0, n1 - n0, block, strip)[..., 0]  # (n, B, L)
            keys = keys.repeat_interleave(heads, dim=1)  # (n, B*H, L)
            block_bias = torch.where(keys[:, :, None, :], bias, float("-inf"))  # (n, B*H, Qb, L)
        qb = qp[:, n0:n1].transpose(0, 1)  # (n, B*H, Qb, D)
        if learned:  # torch's fused forward and backward; the span's gradient from its ramp below
            out, lse = span_strips(qb, kp, vp, block_bias, first=n0, strip=strip, scale=kwargs["scale"])
            results.append(AttentionOutput(out=out, weights=None, lse=lse, backend="sdpa"))
        else:
            ks, vs = (key_strips(x, n0, n1 - n0, block, strip) for x in (kp, vp))  # (n, B*H, L, d): views
            results.append(attention(qb, ks, vs, bias=block_bias, **kwargs))

    res = _joined(results, plan, q, dv)
    if not learned:
        return res
    scale = d**-0.5 if kwargs["scale"] is None else kwargs["scale"]
    out = with_span_gradient(
        res.out, z, q, k, v, res.lse, key_mask=key_mask, ramp=ramp, causal=causal, scale=scale
    )
    return AttentionOutput(out=out, weights=None, lse=None, backend=res.backend)


def fused_block(block_size: int, window: int) -> int:
    """The query block of the fused strips: ``block_size``, raised to the power of two at least
    ``W / 4`` (at most :data:`FUSED_BLOCK_MAX`). Torch's fused backward writes a gradient per
    strip, ``(T / Qb) (Qb + W)`` key rows per head, then added back: longer blocks keep that
    near ``T`` at the price of ``Qb`` more scores per query."""
    wanted = 1 << max(0, math.ceil(math.log2(max(window, 1) / 4)))
    return max(block_size, min(wanted, FUSED_BLOCK_MAX))


def _learned_span(z: Tensor, q: Tensor, kwargs: dict) -> bool:
    """Whether the strips run :func:`~qkv.api.span_strips.span_strips` (torch's fused forward
    and backward, the span's gradient from :mod:`~qkv.api.span_ramp`): the span takes a
    gradient, the backend is ``auto``, neither weights nor active dropout are asked, and the
    fused CPU kernels are there (otherwise :func:`qkv.attention` runs the strips with a
    differentiable bias)."""
    dropout = kwargs["dropout_p"] > 0 and kwargs["training"]
    plain = kwargs["backend"] == "auto" and not kwargs["need_weights"] and not dropout
    return plain and torch.is_grad_enabled() and z.requires_grad and fused_strips_available(q)


def _joined(results: list[AttentionOutput], plan: _Plan, q: Tensor, dv: int) -> AttentionOutput:
    """The block calls of :func:`_cropped` (in block order, each ``(n, B*H, Qb, ...)``) as one
    output for the queries ``q (B, H, T, D)``: out ``(B, H, T, Dv)`` and lse unpadded, weights
    (when every call gave them) scattered from their strips ``(nb, B*H, Qb, L)`` into a dense
    ``(B, H, T, T)`` in ``q``'s dtype."""
    bsz, heads, t, _ = q.shape
    block, strip, t_pad = plan.block, plan.strip, plan.t_pad
    width = plan.left + t_pad + plan.right  # padded key positions

    def joined(parts: list[Tensor]) -> Tensor:  # (nb, B*H, ...) in block order
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    # (nb, B*H, Qb, Dv) -> (B*H, nb, Qb, Dv) -> (B, H, T, Dv)
    out = joined([r.out for r in results]).transpose(0, 1).reshape(bsz, heads, t_pad, dv)[:, :, :t]
    lse = None
    if all(r.lse is not None for r in results):
        lse = joined([r.lse for r in results]).transpose(0, 1).reshape(bsz, heads, t_pad)[..., :t]
    weights = None
    if all(r.weights is not None for r in results):
        dense = q.new_zeros(bsz, heads, t_pad, width)
        # Row i = n*Qb + r holds padded keys [n*Qb, n*Qb + L): rows of different blocks never
        # share memory, so this strided view is written in one copy.
        view = dense.as_strided(
            (plan.n_blocks, bsz * heads, block, strip), (block * width + block, t_pad * width, width, 1)
        )
        view.copy_(joined([r.weights for r in results]))
        weights = dense[:, :, :t, plan.left : plan.left + t]
    backends = dict.fromkeys(r.backend for r in results)  # distinct, in call order
    return AttentionOutput(out=out, weights=weights, lse=lse, backend="+".join(backends))


# ----------------------------------------------------------------------------- validation


def check_ramp(ramp: object) -> float:
    if isinstance(ramp, bool) or not isinstance(ramp, (int, float)) or not math.isfinite(ramp) or ramp <= 0:
        raise ValueError(f"ramp: expected a finite number > 0, got {ramp!r}")
    return float(ramp)


def _check_qkv(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != 4:
            raise ValueError(f"{name}: expected shape (B, H, T, D), got {tuple(x.shape)}")
    if key.shape != query.shape:
        raise ValueError(
            f"key: expected shape {tuple(query.shape)} like query (self-attention, Tq = Tk), "
            f"got {tuple(key.shape)}"
        )
    if value.shape[:-1] != query.shape[:-1]:
        raise ValueError(
            f"value: expected shape (B, H, T, Dv) = {(*query.shape[:-1], 'Dv')}, got {tuple(value.shape)}"
        )
    return query, key, value


def _check_span(span: object, heads: int, ref: Tensor) -> Tensor:
    if not isinstance(span, Tensor):
        raise TypeError(f"span: expected a float tensor (H,) = ({heads},), got {type(span).__name__}")
    if not span.is_floating_point():
        raise TypeError(f"span: expected a floating-point tensor, got dtype {span.dtype}")
    if span.dim() > 1 or (span.dim() == 1 and span.shape[0] not in (1, heads)):
        raise ValueError(f"span: expected shape (H,) = ({heads},) or a scalar, got {tuple(span.shape)}")
    if span.device != ref.device:
        raise ValueError(f"span: expected device {ref.device} like query, got {span.device}")
    detached = span.detach()
    if not bool(torch.isfinite(detached).all()) or bool((detached < 0).any()):
        raise ValueError(f"span: expected finite values >= 0 (positions), got {detached.tolist()}")
    return span.to(ref.dtype).reshape(-1).expand(heads)
