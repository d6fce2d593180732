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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "SCORES",
    "SPECS",
    "Score",
    "ScoreFn",
    "ScoreLike",
    "ScoreParameter",
    "ScoreSpec",
    "additive",
    "additive_from_keys",
    "cosine",
    "default_scale",
    "dot",
    "gaussian",
    "general",
    "resolve_score",
    "scaled_dot",
]

ScoreFn = Callable[[Tensor, Tensor], Tensor]
ScoreLike = str | ScoreFn


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
    return additive_from_keys(query, key @ w_key.T, w_query, v)  # W_k k: (..., Tk, A)


def additive_from_keys(query: Tensor, projected_keys: Tensor, w_query: Tensor, v: Tensor) -> Tensor:
    """The additive score of keys already projected: ``v^T tanh(W_q q + k')`` with
    ``k' = W_k k`` ``(..., Tk, A)``, so that ``W_k k`` is computed once per sequence and reused by
    every query (every decoder step), as Bahdanau et al. precompute ``U_a h_j`` (appendix A.1.2).

    Args:
        w_query: ``(A, Dq)``; v: ``(A,)``; projected_keys: ``(..., Tk, A)``.
    """
    q = query @ w_query.T  # (..., Tq, A)
    features = torch.tanh(q.unsqueeze(-2) + projected_keys.unsqueeze(-3))  # (..., Tq, Tk, A)
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
    """The factor ``qkv.attention`` multiplies the logits by when ``scale=None``: ``1/sqrt(D)``
    for a score whose :class:`ScoreSpec` says ``scaled`` (``scaled_dot``), else 1."""
    spec = SPECS.get(score)
    return 1.0 / math.sqrt(head_dim) if spec is not None and spec.scaled else 1.0


@dataclass(frozen=True)
class ScoreParameter:
    """How ``qkv explain`` shows one parameter of a score.

    Attributes:
        name: the parameter's name in ``score_kwargs`` (``"w_query"``).
        symbol: its symbol in the formulas (``"W_q"``).
        shape: the symbolic shape of a tensor parameter, from ``"D_q"``, ``"D_k"`` (the query
            and key feature dims) and ``"A"`` (a hidden size), e.g. ``("A", "D_q")``; None for
            a scalar the caller gives (``sigma``).
        title: the heading of a scalar's step (a tensor's is "Parameter W_q (seeded random)").
    """

    name: str
    symbol: str
    shape: tuple[str, ...] | None = None
    title: str = ""


@dataclass(frozen=True)
class ScoreSpec:
    """What a named score is: its function, parameters, the properties backends read and the
    text ``qkv explain`` prints, so a new score touches this file only.

    Attributes:
        name: the name ``qkv.attention(score=...)`` takes.
        fn: ``(query, key, **params) -> logits``.
        required, optional: names of its parameters (``score_kwargs``).
        dot_like: the logits are ``q . k`` (times the scale): fused dot-product kernels
            (SDPA, the block-sparse kernel) run it.
        same_dim: query and key must have the same feature dim ``D``.
        scaled: the default scale is ``1/sqrt(D)`` (else 1).
        width: the size of the per-logit intermediate the score builds (1, or the hidden size
            of additive, or ``D`` of the difference-based scores): how much memory a block of
            logits costs to score.
        formula: the score of one pair, ``e_ij = ...`` (``qkv explain``'s scores step).
        source: where the score comes from (paper or name), for the same step.
        shown: the parameters ``qkv explain`` shows, as :class:`ScoreParameter` records:
            tensors drawn seeded, in this order, scalars from the caller.
        module: the ``qkv`` module that owns the required parameters (named in the error when
            they are missing), or ``""``.
    """

    name: str
    fn: Callable[..., Tensor]
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    dot_like: bool = False
    same_dim: bool = False
    scaled: bool = False
    width: Callable[[dict[str, Any], int], int] = field(default=lambda params, d: 1, repr=False)
    formula: str = ""
    source: str = ""
    shown: tuple[ScoreParameter, ...] = ()
    module: str = ""


SPECS: dict[str, ScoreSpec] = {
    spec.name: spec
    for spec in (
        ScoreSpec(
            "dot", dot, dot_like=True, same_dim=True,
            formula="e_ij = q_i . k_j", source="dot-product score (Luong et al. 2015)",
        ),
        # the 1/sqrt(D) of scaled_dot is applied as its default ``scale``
        ScoreSpec(
            "scaled_dot", dot, dot_like=True, same_dim=True, scaled=True,
            formula="e_ij = q_i . k_j", source="scaled dot-product score (Vaswani et al. 2017)",
        ),
        ScoreSpec(
            "general", general, required=("weight",),
            formula="e_ij = q_i^T W k_j", source="Luong's 'general' bilinear score",
            shown=(ScoreParameter("weight", "W", ("D_q", "D_k")),), module="GeneralScore",
        ),
        ScoreSpec(
            "additive", additive, required=("w_query", "w_key", "v"),
            width=lambda params, d: int(params["w_query"].shape[0]),
            formula="e_ij = v^T tanh(W_q q_i + W_k k_j)", source="Bahdanau's additive score",
            shown=(
                ScoreParameter("w_query", "W_q", ("A", "D_q")),
                ScoreParameter("w_key", "W_k", ("A", "D_k")),
                ScoreParameter("v", "v", ("A",)),
            ),
            module="AdditiveScore",
        ),
        ScoreSpec(
            "gaussian", gaussian, optional=("sigma",), same_dim=True, width=lambda params, d: d,
            formula="e_ij = -||q_i - k_j||^2 / (2 sigma^2)", source="Gaussian-kernel score (Nadaraya-Watson)",
            shown=(ScoreParameter("sigma", "sigma", title="Kernel width"),),
        ),
        ScoreSpec(
            "cosine", cosine, optional=("temperature", "eps"), same_dim=True,
            formula="e_ij = cos(q_i, k_j) / tau = (q_i . k_j) / (|q_i| |k_j| tau)",
            source="cosine-similarity score",
            shown=(ScoreParameter("temperature", "tau", title="Temperature"),),
        ),
    )
}  # fmt: skip

# name -> (function, names of required parameters, names of optional parameters)
SCORES: dict[str, tuple[object, tuple[str, ...], tuple[str, ...]]] = {
    name: (spec.fn, spec.required, spec.optional) for name, spec in SPECS.items()
}


@dataclass(frozen=True)
class Score:
    """A score resolved once, at the public entry: the record every backend reads.

    Attributes:
        spec: the named score's :class:`ScoreSpec`, or None for a callable.
        fn: ``(q, k) -> logits (..., Tq, Tk)`` with the parameters bound (before ``scale``).
        params: the bound parameters (``score_kwargs``).
    """

    spec: ScoreSpec | None
    fn: ScoreFn
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The score's name, ``"custom"`` for a callable."""
        return "custom" if self.spec is None else self.spec.name

    @property
    def dot_like(self) -> bool:
        return self.spec is not None and self.spec.dot_like

    @property
    def same_dim(self) -> bool:
        return self.spec is not None and self.spec.same_dim

    @property
    def is_module(self) -> bool:
        """A callable that is an ``nn.Module`` (its parameters are reachable for gradients)."""
        return isinstance(self.fn, nn.Module)

    def default_scale(self, head_dim: int) -> float:
        return default_scale(self.name, head_dim)

    def width(self, head_dim: int) -> int:
        """Size of the per-logit intermediate (a callable module counts as ``D``)."""
        if self.spec is None:
            return head_dim if self.is_module else 1
        return self.spec.width(self.params, head_dim)

    def __str__(self) -> str:
        return self.name


def resolve_score(score: ScoreLike, score_kwargs: dict[str, Any] | None = None) -> Score:
    """A name (with ``score_kwargs``) or a callable ``(q, k) -> logits`` -> a :class:`Score`.

    Raises:
        ValueError: an unknown name (the valid ones are listed), missing or unknown
            parameters, ``score_kwargs`` with a callable.
    """
    kwargs = dict(score_kwargs or {})
    if callable(score) and not isinstance(score, str):
        if kwargs:
            raise ValueError("score_kwargs: only valid with a named score; bind them into your callable")
        return Score(None, score)
    if not isinstance(score, str) or score not in SPECS:
        valid = ", ".join(SPECS)
        raise ValueError(
            f"score: unknown score {score!r}; valid names: {valid}, or a callable (q, k) -> logits"
        )
    spec = SPECS[score]
    missing = [p for p in spec.required if p not in kwargs]
    if missing:
        module = f" (or use the module qkv.{spec.module})" if spec.module else ""
        raise ValueError(f"score {score!r} needs parameters {missing} in score_kwargs{module}")
    unknown = [p for p in kwargs if p not in spec.required + spec.optional]
    if unknown:
        raise ValueError(
            f"score_kwargs: {unknown} are not parameters of score {score!r} "
            f"(expected {list(spec.required + spec.optional) or 'none'})"
        )
    fn = spec.fn
    bound = (lambda q, k: fn(q, k, **kwargs)) if kwargs else fn
    return Score(spec, bound, kwargs)
