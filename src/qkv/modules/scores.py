"""Score modules: ``nn.Module`` owners of the parameters of the pure scores in
:mod:`qkv.functional.scores`.

Shape legend (see :mod:`qkv._types`)::

    ...  any leading dims (batch, heads)
    Tq   query length      Tk  key length
    Dq   query feature dim Dk  key feature dim
    A    hidden size of the additive score

Each module maps ``(query (..., Tq, Dq), key (..., Tk, Dk)) -> logits (..., Tq, Tk)``, so an
instance can be passed as ``score=`` to :func:`qkv.attention`::

    score = qkv.modules.GeneralScore(query_dim=16, key_dim=16)
    out = qkv.attention(q, k, v, score=score).out

The modules hold parameters only; the math lives in :mod:`qkv.functional.scores`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_dim, check_positive
from ..functional import scores as _scores

check_dim, check_positive = check_dim, check_positive  # the names this package uses

__all__ = ["AdditiveScore", "CosineScore", "GaussianScore", "GeneralScore"]


def _as_float(x: float | Tensor) -> float:
    """A plain float from a number or a (possibly learnable) 0-dim tensor."""
    return float(x.detach()) if isinstance(x, Tensor) else float(x)


class GeneralScore(nn.Module):
    """Luong's bilinear ("general") score ``q^T W k`` with a learned ``W``.

    Luong, Pham, Manning 2015, "Effective Approaches to Attention-based Neural Machine
    Translation", eq. (8).

    Args:
        query_dim: ``Dq``; key_dim: ``Dk``.

    Attributes:
        weight: ``(Dq, Dk)``, Xavier-uniform initialized.

    Shapes: ``query (..., Tq, Dq), key (..., Tk, Dk) -> logits (..., Tq, Tk)``.

    Raises:
        ValueError: a dim that is not a positive int.
    """

    def __init__(self, *, query_dim: int, key_dim: int) -> None:
        super().__init__()
        self.query_dim = check_dim("query_dim", query_dim)
        self.key_dim = check_dim("key_dim", key_dim)
        self.weight = nn.Parameter(torch.empty(query_dim, key_dim))  # (Dq, Dk)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        return _scores.general(query, key, self.weight)

    def extra_repr(self) -> str:
        return f"query_dim={self.query_dim}, key_dim={self.key_dim}"


class AdditiveScore(nn.Module):
    """Bahdanau's additive (MLP) score ``v^T tanh(W_q q + W_k k)``.

    Bahdanau, Cho, Bengio 2014, "Neural Machine Translation by Jointly Learning to Align and
    Translate", appendix A.1.1. It is also Luong's "concat" score
    ``v^T tanh(W [q; k]) = v^T tanh(W_q q + W_k k)`` with ``W = [W_q, W_k]``.

    Args:
        query_dim: ``Dq``; key_dim: ``Dk``; hidden_dim: ``A``.

    Attributes:
        w_query: ``nn.Linear(Dq, A, bias=False)``; its weight is ``(A, Dq)``.
        w_key: ``nn.Linear(Dk, A, bias=False)``; its weight is ``(A, Dk)``.
        v: ``(A,)``, uniform in ``±1/sqrt(A)`` (as ``nn.Linear(A, 1)`` would be).

    Shapes: ``query (..., Tq, Dq), key (..., Tk, Dk) -> logits (..., Tq, Tk)``; memory is
    ``(..., Tq, Tk, A)``.

    Raises:
        ValueError: a dim that is not a positive int.
    """

    def __init__(self, *, query_dim: int, key_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.query_dim = check_dim("query_dim", query_dim)
        self.key_dim = check_dim("key_dim", key_dim)
        self.hidden_dim = check_dim("hidden_dim", hidden_dim)
        self.w_query = nn.Linear(query_dim, hidden_dim, bias=False)
        self.w_key = nn.Linear(key_dim, hidden_dim, bias=False)
        self.v = nn.Parameter(torch.empty(hidden_dim))  # (A,)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.w_query.reset_parameters()
        self.w_key.reset_parameters()
        bound = 1.0 / math.sqrt(self.hidden_dim)
        nn.init.uniform_(self.v, -bound, bound)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        return _scores.additive(query, key, self.w_query.weight, self.w_key.weight, self.v)

    def project_keys(self, key: Tensor) -> Tensor:
        """``W_k k``: keys ``(..., Tk, Dk)`` -> ``(..., Tk, A)``, what :meth:`from_projected_keys`
        takes; computed once per sequence, it serves every query (every decoder step)."""
        return self.w_key(key)

    def from_projected_keys(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        """The score of keys from :meth:`project_keys`: ``(query (..., Tq, Dq), projected_keys
        (..., Tk, A)) -> logits (..., Tq, Tk)``, equal to ``self(query, key)``. This bound
        method is itself a score callable of :func:`qkv.attention` (its checks cached per module)."""
        return _scores.additive_from_keys(query, projected_keys, self.w_query.weight, self.v)

    def extra_repr(self) -> str:
        return f"query_dim={self.query_dim}, key_dim={self.key_dim}, hidden_dim={self.hidden_dim}"


class GaussianScore(nn.Module):
    """Gaussian-kernel score ``-||q - k||^2 / (2 sigma^2)`` (Nadaraya 1964, Watson 1964).

    Softmax over these logits gives the Nadaraya-Watson Gaussian-kernel weights.

    Args:
        sigma: the kernel width (> 0).
        learnable: learn ``sigma``; it is then stored as the parameter ``log_sigma`` so that
            it stays positive. Otherwise ``sigma`` is a plain float (exact, not a buffer).

    Shapes: ``query (..., Tq, D), key (..., Tk, D) -> logits (..., Tq, Tk)``.

    Raises:
        ValueError: ``sigma`` not a finite number > 0.
    """

    def __init__(self, *, sigma: float = 1.0, learnable: bool = False) -> None:
        super().__init__()
        sigma = check_positive("sigma", sigma)
        self.learnable = bool(learnable)
        if self.learnable:
            self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))
        else:
            self._sigma = sigma

    @property
    def sigma(self) -> float | Tensor:
        """The kernel width: a 0-dim tensor when learnable, else a float."""
        return self.log_sigma.exp() if self.learnable else self._sigma

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        return _scores.gaussian(query, key, self.sigma)

    def extra_repr(self) -> str:
        return f"sigma={_as_float(self.sigma):.4g}, learnable={self.learnable}"


class CosineScore(nn.Module):
    """Cosine-similarity score ``cos(q, k) / temperature`` (Graves et al. 2014, Neural Turing
    Machines, content addressing with ``beta = 1 / temperature``).

    Args:
        temperature: > 0; smaller is sharper.
        learnable: learn it, stored as the parameter ``log_temperature`` (stays positive).

    Shapes: ``query (..., Tq, D), key (..., Tk, D) -> logits (..., Tq, Tk)``; zero vectors
    score 0.

    Raises:
        ValueError: ``temperature`` not a finite number > 0.
    """

    def __init__(self, *, temperature: float = 1.0, learnable: bool = False) -> None:
        super().__init__()
        temperature = check_positive("temperature", temperature)
        self.learnable = bool(learnable)
        if self.learnable:
            self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        else:
            self._temperature = temperature

    @property
    def temperature(self) -> float | Tensor:
        """A 0-dim tensor when learnable, else a float."""
        return self.log_temperature.exp() if self.learnable else self._temperature

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        return _scores.cosine(query, key, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={_as_float(self.temperature):.4g}, learnable={self.learnable}"


def score_module(kind: str, *, query_dim: int, key_dim: int, hidden_dim: int) -> str | nn.Module:
    """The score of a one-head attention module by kind: ``"dot"`` (needs ``key_dim ==
    query_dim``), ``"general"`` (a :class:`GeneralScore`) or ``"additive"`` (an
    :class:`AdditiveScore` with ``hidden_dim``); dims already checked by the caller."""
    if kind == "dot":
        if key_dim != query_dim:
            raise ValueError(
                f"key_dim: score='dot' needs key_dim == query_dim={query_dim}, got {key_dim} (use score='general')"
            )
        return "dot"
    if kind == "general":
        return GeneralScore(query_dim=query_dim, key_dim=key_dim)
    return AdditiveScore(query_dim=query_dim, key_dim=key_dim, hidden_dim=hidden_dim)
