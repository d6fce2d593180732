"""Attention scores: how well each query matches each key.

Every score is a pure function ``(query, key, *params) -> logits`` with

    query (..., Tq, Dq), key (..., Tk, Dk)  ->  logits (..., Tq, Tk)

Higher means "attend more". ``qkv.attention`` multiplies the logits by ``scale`` (default
``1/sqrt(D)`` for ``scaled_dot``, ``1`` otherwise), adds ``bias``, masks and normalizes them.

| name         | formula                                   | paper / source                  |
|--------------|-------------------------------------------|---------------------------------|
| dot          | q . k                                     | Luong et al. 2015 ("dot")       |
| scaled_dot   | q . k / sqrt(D)                           | Vaswani et al. 2017             |
| general      | q^T W k                                   | Luong et al. 2015 ("general")   |
| additive     | v^T tanh(W_q q + W_k k)                   | Bahdanau et al. 2014 ("concat") |
| gaussian     | -||q - k||^2 / (2 sigma^2)                | Nadaraya 1964, Watson 1964      |
| cosine       | cos(q, k) / temperature                   | Graves et al. 2014 (NTM)        |
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "SCORES",
    "additive",
    "cosine",
    "default_scale",
    "dot",
    "gaussian",
    "general",
    "scaled_dot",
]


def dot(query: Tensor, key: Tensor) -> Tensor:
    """``q . k``: (..., Tq, D), (..., Tk, D) -> (..., Tq, Tk)."""
    return query @ key.transpose(-2, -1)


def scaled_dot(query: Tensor, key: Tensor, scale: float | None = None) -> Tensor:
    """``q . k * scale`` with ``scale = 1/sqrt(D)`` by default (Vaswani et al. 2017)."""
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    return dot(query, key) * scale


def general(query: Tensor, key: Tensor, weight: Tensor) -> Tensor:
    """Luong's bilinear score ``q^T W k`` with ``weight`` of shape ``(Dq, Dk)``."""
    if weight.dim() != 2 or weight.shape != (query.shape[-1], key.shape[-1]):
        raise ValueError(
            f"general score: weight must have shape (Dq, Dk) = "
            f"({query.shape[-1]}, {key.shape[-1]}), got {tuple(weight.shape)}"
        )
    return (query @ weight) @ key.transpose(-2, -1)


def additive(query: Tensor, key: Tensor, w_query: Tensor, w_key: Tensor, v: Tensor) -> Tensor:
    """Bahdanau's additive (MLP) score ``v^T tanh(W_q q + W_k k)``.

    Args:
        w_query: ``(A, Dq)``; w_key: ``(A, Dk)``; v: ``(A,)`` where ``A`` is the hidden size.

    Memory is ``(..., Tq, Tk, A)``: the reference formula, written as the paper does.
    """
    hidden = w_query.shape[0]
    if w_query.shape != (hidden, query.shape[-1]) or w_key.shape != (hidden, key.shape[-1]):
        raise ValueError(
            f"additive score: w_query must be (A, Dq) and w_key (A, Dk); got "
            f"{tuple(w_query.shape)} and {tuple(w_key.shape)} for Dq={query.shape[-1]}, "
            f"Dk={key.shape[-1]}"
        )
    if v.shape != (hidden,):
        raise ValueError(f"additive score: v must have shape (A,) = ({hidden},), got {tuple(v.shape)}")
    q = query @ w_query.T  # (..., Tq, A)
    k = key @ w_key.T  # (..., Tk, A)
    features = torch.tanh(q.unsqueeze(-2) + k.unsqueeze(-3))  # (..., Tq, Tk, A)
    return features @ v  # (..., Tq, Tk)


def gaussian(query: Tensor, key: Tensor, sigma: float | Tensor = 1.0) -> Tensor:
    """Gaussian kernel score ``-||q - k||^2 / (2 sigma^2)`` (any feature dim).

    Softmax over these logits is the Nadaraya-Watson Gaussian-kernel weight.
    """
    diff = query.unsqueeze(-2) - key.unsqueeze(-3)  # (..., Tq, Tk, D)
    return -diff.pow(2).sum(-1) / (2 * sigma**2)


def cosine(query: Tensor, key: Tensor, temperature: float | Tensor = 1.0, eps: float = 1e-8) -> Tensor:
    """Cosine similarity divided by ``temperature``; zero vectors score 0."""
    qn = query / query.norm(dim=-1, keepdim=True).clamp_min(eps)
    kn = key / key.norm(dim=-1, keepdim=True).clamp_min(eps)
    return (qn @ kn.transpose(-2, -1)) / temperature


def default_scale(score: str, head_dim: int) -> float:
    """The factor ``qkv.attention`` multiplies the logits by when ``scale=None``."""
    return 1.0 / math.sqrt(head_dim) if score == "scaled_dot" else 1.0


# name -> (function, names of required parameters, names of optional parameters)
SCORES: dict[str, tuple[object, tuple[str, ...], tuple[str, ...]]] = {
    "dot": (dot, (), ()),
    "scaled_dot": (dot, (), ()),  # the 1/sqrt(D) is applied as the default ``scale``
    "general": (general, ("weight",), ()),
    "additive": (additive, ("w_query", "w_key", "v"), ()),
    "gaussian": (gaussian, (), ("sigma",)),
    "cosine": (cosine, (), ("temperature", "eps")),
}
