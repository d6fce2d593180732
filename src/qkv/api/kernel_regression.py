"""Nadaraya-Watson kernel regression as attention (Nadaraya 1964, Watson 1964).

    f(x) = sum_i K((x - x_i) / h) y_i / sum_j K((x - x_j) / h)

is attention with the query ``x``, the keys ``x_i`` and the values ``y_i``: the weights
``K(u_i) / sum_j K(u_j)`` are a softmax over the logits ``log K(u_i)`` (d2l.ai section 11.2).
Each kernel is written as a score plus a mask (``u = ||x - x_i|| / h``, radial in any dim):

    | kernel        | K(u)                 | logits            | mask (support)  |
    |---------------|----------------------|-------------------|-----------------|
    | gaussian      | exp(-u^2 / 2)        | -||x - x_i||^2 / (2 h^2) (qkv's gaussian score) | all |
    | boxcar        | 1 on |u| <= 1        | 0                 | u <= 1          |
    | epanechnikov  | 1 - u^2 on |u| < 1   | log(1 - u^2)      | u < 1           |

Constant factors of ``K`` cancel in the ratio. A query with no training point inside the
kernel's support is a fully masked row: its prediction is 0 (not NaN).

Shape legend::

    Nq  number of queries      N   number of training points
    D   input features         Dy  target features

    x_query (Nq,) or (Nq, D), x_train (N,) or (N, D), y_train (N,) or (N, Dy)
    -> out (Nq,) or (Nq, Dy), weights (Nq, N)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_bool_mask
from .._types import AttentionOutput
from .attention import attention

__all__ = ["KERNELS", "check_bandwidth", "nadaraya_watson", "squared_distances"]

KERNELS = ("gaussian", "boxcar", "epanechnikov")


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """``||a_i - b_j||^2``: (..., Nq, D), (..., N, D) -> (..., Nq, N). Exact differences (no
    ``|a|^2 + |b|^2 - 2ab`` cancellation), no square root (so gradients stay finite at 0)."""
    diff = a.unsqueeze(-2) - b.unsqueeze(-3)  # (..., Nq, N, D)
    return diff.pow(2).sum(-1)


def _as_2d(name: str, t: object, want: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    if t.dim() == 1:
        return t.unsqueeze(-1)  # (N,) -> (N, 1)
    if t.dim() != 2:
        raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
    return t


def check_bandwidth(bandwidth: object) -> float | Tensor:
    if isinstance(bandwidth, Tensor):
        if bandwidth.numel() != 1 or not bandwidth.is_floating_point():
            raise ValueError(
                f"bandwidth: expected a float scalar tensor, got shape {tuple(bandwidth.shape)} "
                f"dtype {bandwidth.dtype}"
            )
        value = float(bandwidth.detach())
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"bandwidth: expected a finite value > 0, got {value!r}")
        return bandwidth.reshape(())
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)):
        raise TypeError(f"bandwidth: expected a number or a scalar tensor, got {type(bandwidth).__name__}")
    if not math.isfinite(bandwidth) or bandwidth <= 0:
        raise ValueError(f"bandwidth: expected a finite number > 0, got {bandwidth!r}")
    return float(bandwidth)


def nadaraya_watson(
    x_query: Tensor,
    x_train: Tensor,
    y_train: Tensor,
    *,
    kernel: str = "gaussian",
    bandwidth: float | Tensor = 1.0,
    mask: Tensor | None = None,
    need_weights: bool = False,
) -> AttentionOutput:
    """Nadaraya-Watson prediction ``f(x) = sum_i w_i(x) y_i`` with kernel weights, computed by
    :func:`qkv.attention` (reference backend).

    Example (d2l): keys ``[56, 58]``, values ``[43, 48]``, query ``57`` -> ``45.5``.

    Args:
        x_query: ``(Nq,)`` or ``(Nq, D)``.
        x_train: ``(N,)`` or ``(N, D)``, the keys.
        y_train: ``(N,)`` or ``(N, Dy)``, the values.
        kernel: ``"gaussian"``, ``"boxcar"`` or ``"epanechnikov"`` (see the module table).
        bandwidth: ``h > 0``, a number or a scalar tensor (differentiable: learn it).
        mask: optional bool ``(Nq, N)``, True = training point ``i`` may be used for query
            ``q`` (e.g. ``~eye(N)`` for leave-one-out); ANDed with the kernel's support.
        need_weights: also return the weights ``(Nq, N)``.

    Returns:
        :class:`qkv.AttentionOutput` with ``out`` ``(Nq,)`` for 1-D ``y_train`` or
        ``(Nq, Dy)``, ``weights`` ``(Nq, N)`` when asked, ``lse`` ``(Nq,)`` = the log of the
        (unnormalized) kernel sum. Queries with no training point in the support give 0.

    Raises:
        ValueError: unknown kernel (lists the valid ones), ``bandwidth <= 0``, shapes that are
            not 1-D/2-D, different feature dims of ``x_query`` and ``x_train``, ``N``
            differing between ``x_train`` and ``y_train``, a mask not ``(Nq, N)``.
        TypeError: non-float inputs, a non-bool mask.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel: expected one of {', '.join(KERNELS)}, got {kernel!r}")
    h = check_bandwidth(bandwidth)
    xq = _as_2d("x_query", x_query, "(Nq,) or (Nq, D)")  # (Nq, D)
    xt = _as_2d("x_train", x_train, "(N,) or (N, D)")  # (N, D)
    yt = _as_2d("y_train", y_train, "(N,) or (N, Dy)")  # (N, Dy)
    if xq.shape[-1] != xt.shape[-1]:
        raise ValueError(
            f"x_query: expected feature dim D={xt.shape[-1]} like x_train {tuple(x_train.shape)}, "
            f"got {tuple(x_query.shape)}"
        )
    if yt.shape[0] != xt.shape[0]:
        raise ValueError(
            f"y_train: expected N={xt.shape[0]} rows like x_train {tuple(x_train.shape)}, got {tuple(y_train.shape)}"
        )
    for name, t in (("x_train", xt), ("y_train", yt)):
        if t.dtype != xq.dtype:
            raise TypeError(f"{name}: expected dtype {xq.dtype} like x_query, got {t.dtype}")
    n_q, n = xq.shape[0], xt.shape[0]
    if mask is not None:
        check_bool_mask(mask, "mask")
        if tuple(mask.shape) != (n_q, n):
            raise ValueError(f"mask: expected shape (Nq, N) = ({n_q}, {n}), got {tuple(mask.shape)}")

    h2 = h * h
    if kernel == "gaussian":
        score, score_kwargs = "gaussian", {"sigma": h}  # -||x - x_i||^2 / (2 h^2)
        support = None
    else:
        d2 = squared_distances(xq.detach(), xt.detach())  # (Nq, N)
        h2_val = float(h2.detach()) if isinstance(h2, Tensor) else h2
        support = d2 <= h2_val if kernel == "boxcar" else d2 < h2_val  # (Nq, N)
        score_kwargs = None
        if kernel == "boxcar":

            def score(q: Tensor, k: Tensor) -> Tensor:  # equal logits inside the support
                return q.new_zeros(*q.shape[:-1], k.shape[-2])  # (..., Nq, N)

        else:

            def score(q: Tensor, k: Tensor) -> Tensor:  # log(1 - u^2), u^2 = ||q - k||^2 / h^2
                one_minus_u2 = 1 - squared_distances(q, k) / h2  # (..., Nq, N)
                # Outside the support log() would give NaN/-inf and, in backward, 0 * inf:
                # take log(1) there instead (those entries are masked anyway).
                return torch.log(torch.where(one_minus_u2 > 0, one_minus_u2, torch.ones_like(one_minus_u2)))

    if support is not None and mask is not None:
        attn_mask = support & mask
    else:
        attn_mask = support if support is not None else mask
    res = attention(
        xq, xt, yt, score=score, score_kwargs=score_kwargs, mask=attn_mask, need_weights=need_weights
    )  # 2-D (T, D) inputs: one sequence, one head
    out = res.out.squeeze(-1) if y_train.dim() == 1 else res.out  # (Nq, Dy) -> (Nq,) for 1-D y
    return AttentionOutput(out=out, weights=res.weights, lse=res.lse, backend=res.backend)
