"""Normalizers: turn logits into attention weights along the key axis.

Every normalizer returns weights whose rows sum to 1, except rows whose keys are all masked:
those are all zeros, with zero gradients and no NaN (as SDPA and FlexAttention do, and unlike
a plain ``softmax`` over ``-inf``, which gives NaN, or d2l's ``-1e6`` fill, which gives uniform
weights). A ``mask`` is bool, True = keep, broadcastable to the logits; ``-inf`` logits count
as masked too. Masked entries never reach the arithmetic: NaN or inf there changes nothing.

| name           | weights of a row ``z``                                 | paper                         |
|----------------|--------------------------------------------------------|-------------------------------|
| softmax        | ``exp(z_j) / sum_i exp(z_i)``                          | Bridle 1990                   |
| sparsemax      | ``[z_j - tau]_+``, the projection onto the simplex     | Martins & Astudillo 2016      |
| entmax15       | ``[z_j / 2 - tau]_+ ** 2`` (1.5-entmax)                | Peters, Niculae, Martins 2019 |
| entmax_bisect  | ``[(alpha - 1) z_j - tau]_+ ** (1 / (alpha - 1))``     | Peters, Niculae, Martins 2019 |
| topk           | softmax over the ``k`` largest entries, 0 elsewhere    | (top-k attention)             |
| gumbel         | ``softmax((z + g) / t)``, ``g ~ Gumbel(0, 1)``; hard:  | Jang, Gu, Poole 2017;         |
|                | one-hot forward, the soft gradient backward            | Maddison, Mnih, Teh 2017      |
| hard           | one-hot at the argmax (no gradient to ``z``)           | Xu et al. 2015 (at test time) |

``tau`` is the row's threshold, chosen so that the row sums to 1. Sparsemax and entmax give
exactly zero weight to entries below the threshold; their backward passes are the exact
Jacobian-vector products (custom autograd): with ``s_j = p_j ** (2 - alpha)`` on the support
(``s_j = 1`` for sparsemax, ``sqrt(p_j)`` for 1.5-entmax, 0 off the support)::

    dL/dz = s * g - s * (s . g) / sum(s)                                  (g = dL/dp)

:func:`sample_hard` draws one key per row for REINFORCE (Williams 1992) and returns the
log-probability and entropy a score-function loss needs (see :mod:`qkv.modules.hard`).

Half-precision logits are normalized in float32 and the weights cast back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._checks import broadcasts_to

__all__ = [
    "NORMALIZERS",
    "entmax15",
    "entmax_bisect",
    "gumbel_softmax_weights",
    "hard_argmax",
    "masked_softmax",
    "resolve_normalizer",
    "sample_hard",
    "sparsemax",
    "topk_keep",
    "topk_softmax",
]


def masked_softmax(logits: Tensor, mask: Tensor | None = None, *, dim: int = -1) -> tuple[Tensor, Tensor]:
    """Softmax over ``dim`` that ignores masked entries and returns ``(weights, lse)``.

    Args:
        logits: any float tensor; ``-inf`` entries count as masked.
        mask: optional bool tensor broadcastable to ``logits``; True = keep.

    Returns:
        ``weights`` (same shape and dtype as ``logits``) and ``lse``, the log-sum-exp over
        ``dim`` (``-inf`` for rows with nothing to attend). Half-precision logits are
        normalized in float32 and the weights cast back.

    Entries that are masked never reach ``exp``: NaN or inf there changes nothing. A row with
    nothing to attend gets weights 0 and, under autograd, gradients 0 (never NaN).

    It is torch's fused ``torch.softmax`` on the logits with the masked entries set to
    ``-inf`` (bitwise). The rows with nothing to attend are found from ``lse`` (one test over
    ``(..., 1)``, not over the mask); only when there is one are their weights set to 0 (and,
    when autograd records, their ``-inf`` logits replaced by 0 before the softmax, so that its
    backward stays finite). Under ``torch.compile`` the repair always runs (no value test).
    """
    in_dtype = logits.dtype
    grad = torch.is_grad_enabled() and logits.requires_grad
    x = logits.float() if in_dtype in _HALF else logits  # (..., Tk) in the compute dtype
    if mask is not None:
        x = x.masked_fill_(~mask, float("-inf")) if x is not logits else x.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(x, dim, keepdim=True)  # -inf: a row with nothing to attend
    empty = lse == float("-inf")  # (..., 1)
    if not torch.compiler.is_compiling() and not bool(empty.any()):
        weights = torch.softmax(x, dim)  # every row has a key: nothing to repair
    elif grad:
        weights = torch.softmax(x.masked_fill(empty, 0.0), dim).masked_fill(empty, 0.0)
    else:
        weights = torch.softmax(x, dim).masked_fill_(empty, 0.0)  # NaN in the empty rows -> 0
    if weights.dtype != in_dtype:
        weights = weights.to(in_dtype)
    return weights, lse.squeeze(dim)


# ----------------------------------------------------------------------------- shared plumbing

_HALF = (torch.float16, torch.bfloat16)


def _check_logits(logits: Any, mask: Any, dim: Any) -> int:
    """Validate ``(logits, mask, dim)``; return ``dim`` as a non-negative int."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits: expected a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() == 0:
        raise ValueError("logits: expected at least 1 dim (the keys), got a 0-dim tensor")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -logits.dim() <= dim < logits.dim():
        raise ValueError(f"dim: expected an int in [{-logits.dim()}, {logits.dim()}), got {dim!r}")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"mask: expected a bool tensor (True = keep), got {got}")
        if not broadcasts_to(mask.shape, logits.shape):
            raise ValueError(
                f"mask: shape {tuple(mask.shape)} is not broadcastable to the logits' shape {tuple(logits.shape)}"
            )
    return dim % logits.dim()


def _check_k(k: Any, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {k!r}")
    return k


def _finite_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def _check_alpha(alpha: Any, name: str = "alpha") -> float:
    if not _finite_number(alpha) or alpha <= 1:
        raise ValueError(f"{name}: expected a finite number > 1 (alpha = 1 is softmax), got {alpha!r}")
    return float(alpha)


def _check_tau(tau: Any, name: str = "tau") -> float:
    if not _finite_number(tau) or tau <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {tau!r}")
    return float(tau)


def _masked_rows(logits: Tensor, mask: Tensor | None, dim: int) -> tuple[Tensor, torch.dtype]:
    """The logits in the compute dtype (float32 for half), masked entries set to ``-inf``,
    with ``dim`` moved last: ``(..., Tk)``."""
    in_dtype = logits.dtype
    z = logits.float() if in_dtype in _HALF else logits
    if mask is not None:
        z = z.masked_fill(~mask, float("-inf"))  # masked_fill's backward gives 0 there
    return z.movedim(dim, -1), in_dtype


def _finish(weights: Tensor, dim: int, in_dtype: torch.dtype) -> Tensor:
    return weights.movedim(-1, dim).to(in_dtype)


def _shifted(z: Tensor, fill: float) -> tuple[Tensor, Tensor]:
    """``(x, keep)``: ``x = z - max(z)`` over the kept entries of each row (last dim) and
    ``fill`` where ``z`` is ``-inf`` (masked); ``keep`` marks the other entries.

    ``fill`` lies below the lowest possible threshold, so a filled entry never joins the
    support, and the arithmetic never sees ``-inf`` (no ``inf - inf``).
    """
    keep = z != float("-inf")
    row_max = z.amax(-1, keepdim=True)
    row_max = row_max.masked_fill(row_max == float("-inf"), 0.0)
    return torch.where(keep, z - row_max, torch.full_like(z, fill)), keep


class _SimplexMap(torch.autograd.Function):
    """Backward of a sparse simplex map ``p`` (sparsemax / entmax) from its output alone.

    ``s = p ** (2 - alpha)`` on the support (``p > 0``), 0 elsewhere; the Jacobian is
    ``diag(s) - s s^T / sum(s)``, symmetric, so the vector-Jacobian product is
    ``s * g - s * (s . g) / sum(s)``. Rows with an empty support (fully masked) get 0.
    """

    @staticmethod
    def forward(ctx, z: Tensor, solve: Callable[[Tensor], Tensor], alpha: float) -> Tensor:
        p = solve(z)  # (..., Tk), exact zeros off the support
        ctx.save_for_backward(p)
        ctx.alpha = alpha
        return p

    @staticmethod
    def backward(ctx, grad: Tensor):
        (p,) = ctx.saved_tensors
        support = p > 0
        if ctx.alpha == 2.0:
            s = support.to(p.dtype)
        elif ctx.alpha == 1.5:
            s = p.sqrt()
        else:
            s = torch.where(support, p.clamp_min(torch.finfo(p.dtype).tiny) ** (2.0 - ctx.alpha), 0.0)
        gs = grad * s
        total = s.sum(-1, keepdim=True)
        coef = gs.sum(-1, keepdim=True) / torch.where(total > 0, total, torch.ones_like(total))
        return gs - s * coef, None, None


# ----------------------------------------------------------------------------- sparsemax / entmax


def _sparsemax_solve(z: Tensor) -> Tensor:
    """Sparsemax of each row of ``z`` (last dim, ``-inf`` = masked) by sorting.

    Sorted descending, ``x_(1) >= ... >= x_(n)``; the support size is the largest ``k`` with
    ``1 + k x_(k) > sum_{j <= k} x_(j)``, and ``tau = (sum_{j <= k} x_(j) - 1) / k``.
    """
    # tau >= max - 1 (the largest weight is at most 1): a fill of -2 is never in the support.
    x, keep = _shifted(z, -2.0)
    srt = x.sort(-1, descending=True).values
    csum = srt.cumsum(-1)
    k = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
    size = (1 + k * srt > csum).sum(-1, keepdim=True)  # >= 1: the first entry always qualifies
    tau = (csum.gather(-1, size - 1) - 1) / size.to(x.dtype)
    return (x - tau).clamp_min(0).masked_fill(~keep, 0.0)


def _entmax15_solve(z: Tensor) -> Tensor:
    """1.5-entmax of each row of ``z`` (last dim, ``-inf`` = masked) by sorting.

    With ``x = z / 2`` sorted descending, a support of size ``k`` needs
    ``sum_{j <= k} (x_(j) - tau)^2 = 1``, i.e. ``tau_k = m_k - sqrt((1 - ss_k) / k)`` with
    ``m_k`` the mean and ``ss_k`` the centered sum of squares of the top ``k``. The support
    is the set of ``k`` with ``tau_k <= x_(k)`` (Peters et al. 2019, Algorithm 2). When
    ``ss_k > 1`` no threshold fits ``k`` entries; the clamp then gives ``tau_k = m_k > x_(k)``,
    which correctly rejects ``k``.
    """
    # tau >= max/2 - 1 (the largest weight is at most 1): x = -2 (z = -4) never joins.
    x, keep = _shifted(z, -4.0)
    x = x / 2
    srt = x.sort(-1, descending=True).values
    k = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
    mean = srt.cumsum(-1) / k
    ss = (srt * srt).cumsum(-1) - k * mean * mean
    tau_k = mean - ((1 - ss) / k).clamp_min(0).sqrt()
    size = (tau_k <= srt).sum(-1, keepdim=True)
    tau = tau_k.gather(-1, size - 1)
    return ((x - tau).clamp_min(0) ** 2).masked_fill(~keep, 0.0)


def _bisect_solve(z: Tensor, alpha: float, n_iter: int) -> Tensor:
    """alpha-entmax of each row of ``z`` (last dim, ``-inf`` = masked) by bisection on tau.

    ``p(tau) = [x - tau]_+ ** (1 / (alpha - 1))`` with ``x = (alpha - 1)(z - max z)``;
    ``sum p(tau)`` decreases in ``tau`` and equals 1 between ``tau = -1`` (where the largest
    weight alone is 1) and ``tau = -(1/n) ** (alpha - 1)`` (where every weight is at most
    ``1/n``). The result is renormalized to sum to 1 exactly.
    """
    x, keep = _shifted(z, -2.0 / (alpha - 1))  # x = -2 < tau: never in the support
    x = x * (alpha - 1)
    power = 1.0 / (alpha - 1)
    n = keep.sum(-1, keepdim=True).clamp_min(1).to(x.dtype)
    lo = torch.full_like(n, -1.0)
    hi = -((1.0 / n) ** (alpha - 1))
    for _ in range(n_iter):
        mid = (lo + hi) / 2
        too_much = ((x - mid).clamp_min(0) ** power).sum(-1, keepdim=True) >= 1
        lo = torch.where(too_much, mid, lo)
        hi = torch.where(too_much, hi, mid)
    p = ((x - (lo + hi) / 2).clamp_min(0) ** power).masked_fill(~keep, 0.0)
    total = p.sum(-1, keepdim=True)
    return p / torch.where(total > 0, total, torch.ones_like(total))


def _simplex_map(logits, mask, dim, solve, alpha) -> Tensor:
    dim = _check_logits(logits, mask, dim)
    z, in_dtype = _masked_rows(logits, mask, dim)
    if z.shape[-1] == 0:
        return logits.new_zeros(logits.shape)
    return _finish(_SimplexMap.apply(z, solve, alpha), dim, in_dtype)


def sparsemax(logits: Tensor, mask: Tensor | None = None, *, dim: int = -1) -> Tensor:
    """Sparsemax: the Euclidean projection of the logits onto the probability simplex.

    Martins & Astudillo 2016, "From Softmax to Sparsemax: A Sparse Model of Attention and
    Multi-Label Classification"::

        sparsemax(z) = argmin_{p >= 0, sum p = 1} ||p - z||^2 = [z - tau(z)]_+

    Every entry ``z_j <= tau`` gets exactly 0; an entry at least 1 below the row maximum is
    always 0. Example:
    ``sparsemax([1, 0.5, -1]) = [0.75, 0.25, 0]`` (``tau = 0.25``).

    Args:
        logits: float tensor; ``-inf`` entries count as masked.
        mask: optional bool tensor broadcastable to ``logits``; True = keep.
        dim: the key axis.

    Returns:
        weights, same shape and dtype as ``logits`` (computed in float32 for half inputs).
        Rows sum to 1; masked entries and fully masked rows are exactly 0 (zero gradients).
        The backward is exact: ``dz = S (g - mean_S(g))`` on the support ``S``, 0 elsewhere.

    Raises:
        TypeError: non-float logits, a mask that is not bool.
        ValueError: a mask that does not broadcast to ``logits``, a bad ``dim``.
    """
    return _simplex_map(logits, mask, dim, _sparsemax_solve, 2.0)


def entmax15(logits: Tensor, mask: Tensor | None = None, *, dim: int = -1) -> Tensor:
    """1.5-entmax: between softmax (alpha = 1) and sparsemax (alpha = 2), sparse and smooth.

    Peters, Niculae, Martins 2019, "Sparse Sequence-to-Sequence Models", exact sort-based
    algorithm for ``alpha = 1.5``::

        entmax15(z) = argmax_{p in simplex} p . z + H_1.5(p) = [z / 2 - tau(z)]_+ ** 2

    with ``H_1.5`` the Tsallis 1.5-entropy. Entries at least 2 below the row maximum are
    always exactly 0.

    Args, returns and raises: as :func:`sparsemax`. Backward:
    ``dz = s g - s (s . g) / sum(s)`` with ``s = sqrt(p)``.
    """
    return _simplex_map(logits, mask, dim, _entmax15_solve, 1.5)


def entmax_bisect(
    logits: Tensor, alpha: float = 1.5, mask: Tensor | None = None, *, dim: int = -1, n_iter: int = 50
) -> Tensor:
    """alpha-entmax for any ``alpha > 1`` by bisection on the threshold.

    Peters, Niculae, Martins 2019 (and Blondel, Martins, Niculae 2019 for the bisection)::

        entmax_alpha(z) = [(alpha - 1) z - tau]_+ ** (1 / (alpha - 1)),  tau such that sum = 1

    ``alpha -> 1`` tends to softmax, ``alpha = 1.5`` is :func:`entmax15`, ``alpha = 2`` is
    :func:`sparsemax` (up to the bisection's resolution, ``2 ** -n_iter``). The result is
    renormalized to sum to 1. The backward is exact at the returned point:
    ``dz = s g - s (s . g) / sum(s)`` with ``s = p ** (2 - alpha)`` on the support.

    Args:
        alpha: a number > 1 (not differentiated).
        n_iter: bisection steps (>= 1); 50 reach float64 resolution on ``tau``'s bracket.
        logits, mask, dim: as :func:`sparsemax`.

    Raises:
        ValueError: ``alpha <= 1`` (use :func:`masked_softmax` for alpha = 1), ``n_iter < 1``;
            and as :func:`sparsemax`.
    """
    alpha = _check_alpha(alpha)
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter: expected an int >= 1, got {n_iter!r}")

    def solve(z: Tensor) -> Tensor:
        return _bisect_solve(z, alpha, n_iter)

    return _simplex_map(logits, mask, dim, solve, alpha)


# ----------------------------------------------------------------------------- top-k and hard


def _one_hot_at(index: Tensor, like: Tensor, has_key: Tensor) -> Tensor:
    """One-hot rows (last dim) at ``index (..., 1)``; rows without a key are all zeros."""
    hot = torch.zeros_like(like).scatter_(-1, index, 1.0)
    return hot * has_key.to(hot.dtype)


def topk_keep(logits: Tensor, k: int, mask: Tensor | None = None, *, dim: int = -1) -> Tensor:
    """Bool tensor like ``logits``: True at the ``k`` largest allowed entries of each row.

    Ties are broken toward the lower index (a stable sort), so the choice is deterministic.
    Rows with fewer than ``k`` allowed entries keep all of them.
    """
    dim = _check_logits(logits, mask, dim)
    k = _check_k(k)
    z, _ = _masked_rows(logits.detach(), mask, dim)
    keep = z != float("-inf")
    if k < z.shape[-1]:
        order = z.sort(dim=-1, descending=True, stable=True).indices  # ties: lower index first
        top = torch.zeros_like(keep).scatter_(-1, order[..., :k], True)
        keep = keep & top
    return keep.movedim(-1, dim)


def topk_softmax(logits: Tensor, k: int, mask: Tensor | None = None, *, dim: int = -1) -> Tensor:
    """Softmax over the ``k`` largest allowed logits of each row; every other weight is 0.

    ``w_j = exp(z_j) / sum_{i in top_k} exp(z_i)`` for ``j`` in the top ``k``, else 0. Ties at
    the ``k``-th place go to the lower index. With ``k >= Tk`` this is :func:`masked_softmax`.
    The gradient is softmax's on the kept entries and 0 elsewhere (the selection is
    piecewise constant).

    Raises:
        ValueError: ``k`` not an int >= 1; and as :func:`sparsemax`.
    """
    keep = topk_keep(logits, k, mask, dim=dim)
    return masked_softmax(logits, keep, dim=dim)[0]


def _gumbel_noise(shape, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard Gumbel noise ``-log(-log U)``, ``U ~ Uniform(0, 1)``, finite everywhere."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    u = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
    u = u.clamp(torch.finfo(like.dtype).tiny, 1.0 - torch.finfo(like.dtype).eps)
    return -torch.log(-torch.log(u))


class _StraightThrough(torch.autograd.Function):
    """Forward: the one-hot argmax of ``soft`` (exactly, no ``hard - soft + soft`` rounding);
    backward: the gradient of ``soft`` unchanged."""

    @staticmethod
    def forward(ctx, soft: Tensor) -> Tensor:
        return _one_hot_at(soft.argmax(-1, keepdim=True), soft, (soft > 0).any(-1, keepdim=True))

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad


def gumbel_softmax_weights(
    logits: Tensor,
    *,
    tau: float = 1.0,
    hard: bool = True,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    dim: int = -1,
) -> Tensor:
    """Gumbel-softmax weights (Jang, Gu, Poole 2017; Maddison, Mnih, Teh 2017).

        y = softmax((z + g) / tau),  g_j ~ Gumbel(0, 1) i.i.d.   (masked entries excluded)

    ``argmax_j (z_j + g_j)`` is an exact sample of ``softmax(z)`` (the Gumbel-max trick); ``y``
    is its differentiable relaxation, approaching the one-hot sample as ``tau -> 0``.
    With ``hard=True`` (straight-through) the forward is exactly the one-hot ``argmax y`` and
    the backward is the gradient of the soft ``y``.

    Args:
        tau: temperature > 0.
        hard: straight-through one-hot (default) or the soft relaxation.
        generator: a ``torch.Generator`` for reproducible noise.
        logits, mask, dim: as :func:`sparsemax`.

    Returns:
        weights like ``logits``; fully masked rows are zeros with zero gradients.

    Raises:
        ValueError: ``tau`` not a finite number > 0; and as :func:`sparsemax`.
    """
    dim = _check_logits(logits, mask, dim)
    tau = _check_tau(tau)
    if not isinstance(hard, bool):
        raise TypeError(f"hard: expected a bool, got {type(hard).__name__}")
    z, in_dtype = _masked_rows(logits, mask, dim)
    soft = masked_softmax((z + _gumbel_noise(z.shape, z, generator)) / tau)[0]  # -inf stays -inf
    weights = _StraightThrough.apply(soft) if hard else soft
    return _finish(weights, dim, in_dtype)


def hard_argmax(logits: Tensor, mask: Tensor | None = None, *, dim: int = -1) -> Tensor:
    """One-hot weights at each row's largest allowed logit (hard attention at test time).

    Ties go to the lower index. Fully masked rows are zeros. The result carries no gradient
    to ``logits`` (the argmax is piecewise constant: its derivative is 0 where it exists);
    the attention output still differentiates through the values.
    """
    dim = _check_logits(logits, mask, dim)
    z, in_dtype = _masked_rows(logits.detach(), mask, dim)
    has_key = (z != float("-inf")).any(-1, keepdim=True)
    return _finish(_one_hot_at(z.argmax(-1, keepdim=True), z, has_key), dim, in_dtype)


def sample_hard(
    logits: Tensor,
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    dim: int = -1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample one key per row from ``p = softmax(z)`` (stochastic hard attention, REINFORCE).

    Xu et al. 2015, "Show, Attend and Tell", section 4.1: the location ``s ~ Multinoulli(p)``
    and the context is the value at ``s``. The sample is drawn with the Gumbel-max trick
    (``argmax_j z_j + g_j``, exact).

    Returns:
        ``(one_hot, log_prob, entropy)``: ``one_hot`` like ``logits`` (no gradient),
        ``log_prob = log p_s`` and ``entropy = -sum_j p_j log p_j``, both of shape ``logits``
        without ``dim``, differentiable w.r.t. ``logits`` (``d log p_s / dz = onehot_s - p``),
        float32 for half inputs. Fully masked rows give a zero row, ``log_prob = 0`` and
        ``entropy = 0``, with zero gradients.

    Raises:
        TypeError, ValueError: as :func:`sparsemax`.
    """
    dim = _check_logits(logits, mask, dim)
    z, in_dtype = _masked_rows(logits, mask, dim)  # (..., Tk), masked = -inf
    keep = z != float("-inf")
    has_key = keep.any(-1, keepdim=True)
    # log softmax without NaN in either pass: masked entries enter as the row max (exp = 1,
    # no overflow whose 0 * inf could reach the backward) and are selected away.
    row_max = z.detach().amax(-1, keepdim=True)
    row_max = row_max.masked_fill(row_max == float("-inf"), 0.0)
    z_safe = torch.where(keep, z, row_max)
    total = torch.where(keep, torch.exp(z_safe - row_max), 0.0).sum(-1, keepdim=True)
    lse = torch.log(torch.where(has_key, total, torch.ones_like(total))) + row_max
    log_p = torch.where(keep, z_safe - lse, 0.0)  # (..., Tk)
    p = torch.where(keep, log_p.exp(), 0.0)
    with torch.no_grad():
        perturbed = z.detach() + _gumbel_noise(z.shape, z, generator)
        one_hot = _one_hot_at(perturbed.argmax(-1, keepdim=True), z, has_key)
    log_prob = (one_hot * log_p).sum(-1)
    entropy = -(p * log_p).sum(-1) + 0.0  # + 0.0: empty rows give 0, not -0
    return _finish(one_hot, dim, in_dtype), log_prob, entropy


# ----------------------------------------------------------------------------- registry

NormalizerFn = Callable[[Tensor, Tensor | None], Tensor]

#: name -> (function, required keyword parameters, optional keyword parameters). Every
#: function is called as ``fn(logits, mask, **params)`` along the last dim.
NORMALIZERS: dict[str, tuple[Callable[..., Tensor], tuple[str, ...], tuple[str, ...]]] = {
    "softmax": (lambda logits, mask: masked_softmax(logits, mask)[0], (), ()),
    "sparsemax": (sparsemax, (), ()),
    "entmax15": (entmax15, (), ()),
    "entmax_bisect": (
        lambda logits, mask, *, alpha, n_iter=50: entmax_bisect(logits, alpha, mask, n_iter=n_iter),
        ("alpha",),
        ("n_iter",),
    ),
    "topk": (lambda logits, mask, *, k: topk_softmax(logits, k, mask), ("k",), ()),
    "gumbel": (
        lambda logits, mask, **kw: gumbel_softmax_weights(logits, mask=mask, **kw),
        (),
        ("tau", "hard", "generator"),
    ),
    "hard": (hard_argmax, (), ()),
}


def resolve_normalizer(
    normalize: str | NormalizerFn, normalize_kwargs: dict[str, Any] | None = None
) -> tuple[str, NormalizerFn]:
    """``(name, fn)`` for ``qkv.attention``'s ``normalize=``: a name of :data:`NORMALIZERS`
    with its ``normalize_kwargs`` bound, or a callable ``(logits, mask) -> weights`` (named
    ``"custom"``).

    Raises:
        ValueError: an unknown name (lists the valid ones), missing or unknown parameters,
            ``normalize_kwargs`` given with a callable.
    """
    kwargs = dict(normalize_kwargs or {})
    if callable(normalize) and not isinstance(normalize, str):
        if kwargs:
            raise ValueError(
                "normalize_kwargs: only valid with a named normalizer; bind them into your callable"
            )
        return "custom", normalize
    if not isinstance(normalize, str) or normalize not in NORMALIZERS:
        valid = ", ".join(NORMALIZERS)
        raise ValueError(
            f"normalize: unknown normalizer {normalize!r}; valid names: {valid}, "
            "or a callable (logits, mask) -> weights"
        )
    fn, required, optional = NORMALIZERS[normalize]
    missing = [p for p in required if p not in kwargs]
    if missing:
        raise ValueError(f"normalize {normalize!r} needs parameters {missing} in normalize_kwargs")
    unknown = [p for p in kwargs if p not in required + optional]
    if unknown:
        raise ValueError(
            f"normalize_kwargs: {unknown} are not parameters of normalize {normalize!r} "
            f"(expected {list(required + optional) or 'none'})"
        )
    # Fail at the call, naming the argument, not deep inside the backend.
    checks = {"k": _check_k, "alpha": _check_alpha, "tau": _check_tau}
    for name, check in checks.items():
        if name in kwargs:
            check(kwargs[name], f"normalize_kwargs[{name!r}]")
    if not kwargs:
        return normalize, fn
    return normalize, lambda logits, mask: fn(logits, mask, **kwargs)
