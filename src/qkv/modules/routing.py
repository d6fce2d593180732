"""A capsule layer with dynamic routing (Sabour, Frosst, Hinton 2017, "Dynamic Routing Between
Capsules"), the routing counterpart of an attention layer.

Shape legend::

    B batch   Ni in_capsules   No out_capsules   Di in_dim   Do out_dim
    u (B, Ni, Di) -> out v (B, No, Do), weights = coupling c (B, Ni, No)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_dim
from .._types import AttentionOutput
from ..functional.routing import capsule_predictions, dynamic_routing

__all__ = ["CapsuleRouting"]


class CapsuleRouting(nn.Module):
    """Capsules ``u (B, Ni, Di)`` to capsules ``v (B, No, Do)``: every pair ``(i, j)`` has its
    own matrix ``W_ij (Do, Di)``, ``u_hat_{j|i} = W_ij u_i``, and ``iterations`` rounds of
    routing by agreement (:func:`qkv.functional.routing.dynamic_routing`) decide the coupling
    coefficients ``c_ij`` (softmax over the outputs ``j``) and ``v_j = squash(sum_i c_ij u_hat_{j|i})``.

    The lengths ``|v_j|`` lie in ``[0, 1)``: use them as class scores with
    :func:`qkv.functional.routing.margin_loss`, as the paper's DigitCaps do.

    Args:
        in_capsules, in_dim: ``Ni``, ``Di``.
        out_capsules, out_dim: ``No``, ``Do``.
        iterations: routing iterations ``r >= 1`` (the paper uses 3).

    Attributes:
        weight: ``(Ni, No, Do, Di)``, normal with std ``1 / sqrt(Di)``.

    Raises:
        ValueError: dims or ``iterations`` that are not positive ints.
    """

    def __init__(
        self, *, in_capsules: int, in_dim: int, out_capsules: int, out_dim: int, iterations: int = 3
    ) -> None:
        super().__init__()
        self.in_capsules = check_dim("in_capsules", in_capsules)
        self.in_dim = check_dim("in_dim", in_dim)
        self.out_capsules = check_dim("out_capsules", out_capsules)
        self.out_dim = check_dim("out_dim", out_dim)
        self.iterations = check_dim("iterations", iterations)
        self.weight = nn.Parameter(torch.empty(in_capsules, out_capsules, out_dim, in_dim))
        nn.init.normal_(self.weight, std=in_dim**-0.5)

    def extra_repr(self) -> str:
        return (
            f"in_capsules={self.in_capsules}, in_dim={self.in_dim}, out_capsules={self.out_capsules}, "
            f"out_dim={self.out_dim}, iterations={self.iterations}"
        )

    def forward(self, u: Tensor) -> AttentionOutput:
        """Args: ``u (B, Ni, Di)``, the input capsules (usually squashed).

        Returns:
            :class:`qkv.AttentionOutput` with ``out`` = ``v (B, No, Do)`` and ``weights`` = the
            coupling coefficients ``c (B, Ni, No)``; ``backend="routing"``.

        Raises:
            ValueError: ``u`` not ``(B, Ni, Di)``.
        """
        if not isinstance(u, Tensor) or u.dim() != 3 or tuple(u.shape[1:]) != (self.in_capsules, self.in_dim):
            got = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
            raise ValueError(f"u: expected shape (B, Ni={self.in_capsules}, Di={self.in_dim}), got {got}")
        u_hat = capsule_predictions(u, self.weight.to(u.dtype))  # (B, Ni, No, Do)
        return dynamic_routing(u_hat, iterations=self.iterations)
