"""Dynamic routing between capsules (Sabour, Frosst, Hinton 2017, "Dynamic Routing Between
Capsules"), as functional ops.

A capsule is a vector whose length is the probability that an entity is present and whose
direction describes it. Input capsule ``i`` predicts output capsule ``j`` as
``u_hat_{j|i} = W_ij u_i``; routing by agreement decides how much of each prediction goes where
(the paper's Procedure 1):

    b_ij = 0
    repeat r times:
        c_i  = softmax_j(b_i)                        coupling coefficients (over OUTPUT capsules)
        s_j  = sum_i c_ij u_hat_{j|i}
        v_j  = squash(s_j) = |s_j|^2 / (1 + |s_j|^2) * s_j / |s_j|
        b_ij = b_ij + u_hat_{j|i} . v_j              (not after the last iteration)

The coupling coefficients are the "attention" of routing, with one difference: each *input*
capsule distributes a unit of weight over the outputs (rows of ``c`` sum to 1 over ``j``),
where attention has each query distribute it over the keys.

Shape legend::

    B batch   Ni input capsules   No output capsules   Di, Do their dims
    u_hat (B, Ni, No, Do) -> out v (B, No, Do), coupling c (B, Ni, No)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._types import AttentionOutput

__all__ = ["capsule_predictions", "dynamic_routing", "margin_loss", "squash"]


def squash(s: Tensor, *, dim: int = -1) -> Tensor:
    """``squash(s) = |s|^2 / (1 + |s|^2) * s / |s|`` along ``dim`` (Sabour et al., eq. 1).

    Keeps the direction, maps the length ``n`` to ``n^2 / (1 + n^2)`` in ``[0, 1)``. Computed
    as ``s * n / (1 + n^2)``: ``squash(0) = 0`` with finite (zero) gradients.
    """
    n = torch.linalg.vector_norm(s, dim=dim, keepdim=True)
    return s * (n / (1.0 + n * n))


def capsule_predictions(u: Tensor, weight: Tensor) -> Tensor:
    """``u_hat_{j|i} = W_ij u_i``: u ``(B, Ni, Di)``, weight ``(Ni, No, Do, Di)`` ->
    ``(B, Ni, No, Do)``."""
    if u.dim() != 3:
        raise ValueError(f"u: expected shape (B, Ni, Di), got {tuple(u.shape)}")
    if weight.dim() != 4 or weight.shape[0] != u.shape[1] or weight.shape[3] != u.shape[2]:
        raise ValueError(
            f"weight: expected shape (Ni, No, Do, Di) with Ni={u.shape[1]}, Di={u.shape[2]}, "
            f"got {tuple(weight.shape)}"
        )
    return torch.einsum("ijdk,bik->bijd", weight, u)


def dynamic_routing(u_hat: Tensor, *, iterations: int = 3) -> AttentionOutput:
    """Routing by agreement over the predictions ``u_hat`` (module docstring).

    Args:
        u_hat: ``(B, Ni, No, Do)``, the predictions of every input capsule for every output.
        iterations: ``r >= 1``; the paper uses 3. With 1 the coupling stays uniform,
            ``c_ij = 1 / No``.

    Returns:
        :class:`qkv.AttentionOutput` with ``out`` = the output capsules ``v (B, No, Do)`` and
        ``weights`` = the final coupling coefficients ``c (B, Ni, No)`` (rows sum to 1 over the
        outputs), ``backend="routing"``.

    Raises:
        ValueError: ``u_hat`` not 4-D, ``iterations < 1``.
        TypeError: ``u_hat`` not a float tensor.
    """
    if not isinstance(u_hat, Tensor) or not u_hat.is_floating_point():
        got = u_hat.dtype if isinstance(u_hat, Tensor) else type(u_hat).__name__
        raise TypeError(f"u_hat: expected a float tensor (B, Ni, No, Do), got {got}")
    if u_hat.dim() != 4:
        raise ValueError(f"u_hat: expected shape (B, Ni, No, Do), got {tuple(u_hat.shape)}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations: expected an int >= 1, got {iterations!r}")
    logits = u_hat.new_zeros(u_hat.shape[:3])  # b (B, Ni, No)
    for it in range(iterations):
        c = torch.softmax(logits, dim=-1)  # (B, Ni, No): each input over the outputs
        s = torch.einsum("bij,bijd->bjd", c, u_hat)  # (B, No, Do)
        v = squash(s)
        if it + 1 < iterations:
            logits = logits + torch.einsum("bijd,bjd->bij", u_hat, v)  # agreement
    return AttentionOutput(out=v, weights=c, backend="routing")


def margin_loss(
    lengths: Tensor, target: Tensor, *, m_plus: float = 0.9, m_minus: float = 0.1, down_weight: float = 0.5
) -> Tensor:
    """The paper's margin loss (eq. 4), averaged over the batch:

        L_k = T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2

    Args:
        lengths: ``|v_k|``, ``(B, No)``.
        target: ``(B,)`` class indices.
        m_plus, m_minus, down_weight: ``m+``, ``m-``, ``lambda`` (0.9, 0.1, 0.5 in the paper).
    """
    if lengths.dim() != 2 or target.shape != lengths.shape[:1]:
        raise ValueError(
            f"target: expected shape (B,) = ({lengths.shape[0]},) for lengths (B, No), "
            f"got lengths {tuple(lengths.shape)} and target {tuple(target.shape)}"
        )
    t = torch.nn.functional.one_hot(target, lengths.shape[1]).to(lengths.dtype)  # (B, No)
    present = t * (m_plus - lengths).clamp_min(0) ** 2
    absent = down_weight * (1 - t) * (lengths - m_minus).clamp_min(0) ** 2
    return (present + absent).sum(-1).mean()
