"""Hard (discrete) attention: attend to one key, or a few, instead of a soft average.

Shape legend (see :mod:`qkv._types`)::

    B   batch                    Dq  query (decoder state) features
    Tq  query length             Dk  key features
    Tk  key (source) length      Dv  value features (default: values = keys)
    A   hidden size of the additive score

    query (B, Tq, Dq) or (B, Dq) for one step, keys (B, Tk, Dk), values (B, Tk, Dv)
    -> out (B, Tq, Dv) or (B, Dv), weights (B, Tq, Tk) or (B, Tk),
       log_prob and entropy (B, Tq) or (B,)

Stochastic hard attention (Xu et al. 2015, "Show, Attend and Tell", section 4.1) samples a
location ``s ~ Multinoulli(p)``, ``p = softmax(score(q, k))``, and takes its value. The sample
is not differentiable, so the score learns through the score-function (REINFORCE, Williams
1992) estimator; :class:`ReinforceBaseline` and :func:`reinforce_loss` build that loss. The
Gumbel-softmax straight-through mode is the low-variance, biased alternative (Jang et al. 2017).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._checks import check_dim, check_positive
from ..api import attention
from ..functional.normalize import sample_hard
from ..masks.core import MaskLike
from .additive import _step_inputs
from .scores import score_module

__all__ = ["HardAttention", "HardAttentionOutput", "ReinforceBaseline", "reinforce_loss"]

_MODES = ("reinforce", "gumbel", "argmax", "topk")
_SCORES = ("dot", "general", "additive")


@dataclass(frozen=True)
class HardAttentionOutput:
    """What :class:`HardAttention` returns.

    Attributes:
        out: the attended values ``(B, Tq, Dv)`` (``(B, Dv)`` for a 2-D query).
        weights: ``(B, Tq, Tk)`` (``(B, Tk)``) when asked: one-hot rows (the chosen key), or
            the top-k softmax weights; rows with no visible key are zeros.
        log_prob: ``log p(s)`` of each sampled location ``(B, Tq)`` (``(B,)``), differentiable
            w.r.t. the score's parameters; only in ``"reinforce"`` mode while training, else
            None. 0 for rows with no visible key.
        entropy: ``H(p) = -sum_j p_j log p_j`` of each row's distribution, same shape and
            availability as ``log_prob``.
        backend: the backend that ran (always ``"reference"``: only it runs these normalizers).
    """

    out: Tensor
    weights: Tensor | None = None
    log_prob: Tensor | None = None
    entropy: Tensor | None = None
    backend: str = "reference"

    def __iter__(self):
        # ``out, weights = hard_attention(...)`` like the other modules.
        yield self.out
        yield self.weights


class HardAttention(nn.Module):
    """Hard attention: a score, then a discrete choice of keys, then their values.

    Modes (training / eval):

    ``"reinforce"``
        Xu et al. 2015 stochastic hard attention. Training samples one key per query,
        ``s ~ Multinoulli(p)``, ``p = softmax_j(score(q, k_j))``, and returns ``out = v_s``
        with ``log_prob = log p_s`` and ``entropy = H(p)``. With ``log p(y | s)`` the task
        log-likelihood, the objective ``L_s = sum_s p(s) log p(y | s) <= log p(y)`` has the
        gradient ``E_s[d log p(y|s)/dW + log p(y|s) d log p(s)/dW]``; the first term flows
        through ``out`` (the task loss), the second needs the score-function estimator, which
        :func:`reinforce_loss` builds from ``log_prob`` (with a moving-average baseline
        :class:`ReinforceBaseline` and an entropy bonus, as in the paper). Eval: the argmax.
    ``"gumbel"``
        Training: straight-through Gumbel-softmax (forward exactly one-hot, backward the
        gradient of ``softmax((z + g) / tau)``); eval: the argmax.
    ``"argmax"``
        One-hot at the largest score, always (Xu et al.'s test-time rule). The score gets no
        gradient through the choice; values still do.
    ``"topk"``
        Softmax over the ``k`` largest scores, 0 elsewhere, always (deterministic).

    Scores (as :class:`qkv.modules.LuongAttention`, unscaled)::

        dot       q^T k
        general   q^T W k                      (a GeneralScore)
        additive  v^T tanh(W_q q + W_k k)      (an AdditiveScore; Bahdanau / Luong "concat")

    Args:
        mode: ``"reinforce"`` (default), ``"gumbel"``, ``"argmax"`` or ``"topk"``.
        score: ``"dot"``, ``"general"`` (default) or ``"additive"``.
        query_dim: ``Dq``; key_dim: ``Dk`` (default ``Dq``; ``"dot"`` needs ``Dk == Dq``).
        hidden_dim: ``A`` for ``"additive"`` (default ``Dq``).
        k: the number of keys for ``"topk"`` (required there, refused elsewhere).
        tau: the Gumbel-softmax temperature for ``"gumbel"`` (default 1.0).

    Raises:
        ValueError: an unknown mode or score (lists the valid ones), a dim that is not a
            positive int, ``k``/``tau``/``hidden_dim`` given to a mode or score that does not
            use them, ``"topk"`` without ``k``, ``key_dim != query_dim`` for ``"dot"``.
    """

    def __init__(
        self,
        *,
        mode: str = "reinforce",
        score: str = "general",
        query_dim: int,
        key_dim: int | None = None,
        hidden_dim: int | None = None,
        k: int | None = None,
        tau: float | None = None,
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode: expected one of {', '.join(_MODES)}, got {mode!r}")
        if score not in _SCORES:
            raise ValueError(f"score: expected one of {', '.join(_SCORES)}, got {score!r}")
        self.mode = mode
        self.score_name = score
        self.query_dim = check_dim("query_dim", query_dim)
        self.key_dim = query_dim if key_dim is None else check_dim("key_dim", key_dim)
        if (k is not None) != (mode == "topk"):
            raise ValueError(f"k: required by mode='topk' and only used there, got k={k!r} with {mode!r}")
        self.k = None if k is None else check_dim("k", k)
        if tau is not None and mode != "gumbel":
            raise ValueError(f"tau: only used by mode='gumbel', got tau={tau!r} with {mode!r}")
        self.tau = 1.0 if tau is None else check_positive("tau", tau)
        if hidden_dim is not None and score != "additive":
            raise ValueError(
                f"hidden_dim: only used by score='additive', got hidden_dim={hidden_dim!r} with {score!r}"
            )
        hidden = query_dim if hidden_dim is None else check_dim("hidden_dim", hidden_dim)
        self.score: str | nn.Module = score_module(
            score, query_dim=self.query_dim, key_dim=self.key_dim, hidden_dim=hidden
        )

    def forward(
        self,
        query: Tensor,
        keys: Tensor,
        values: Tensor | None = None,
        *,
        valid_lens: Tensor | None = None,
        mask: MaskLike | None = None,
        need_weights: bool = False,
        generator: torch.Generator | None = None,
    ) -> HardAttentionOutput:
        """Args:
            query: ``(B, Tq, Dq)``, or ``(B, Dq)`` for one step.
            keys: ``(B, Tk, Dk)``; values: ``(B, Tk, Dv)``, default ``keys``.
            valid_lens: integer ``(B,)`` or ``(B, Tq)`` key lengths.
            mask: an extra bool mask (True = may attend) ANDed with ``valid_lens``.
            need_weights: also return the (one-hot or top-k) weights.
            generator: a ``torch.Generator`` for reproducible sampling (training only).

        Returns:
            :class:`HardAttentionOutput`; ``log_prob``/``entropy`` in ``"reinforce"`` mode
            while training. Rows with no visible key give zeros.

        Raises:
            ValueError: wrong dims or feature sizes, mismatched batch sizes or lengths.
        """
        query, values, one_step, attn_mask = _step_inputs(
            query, keys, values, valid_lens, mask, query_dim=self.query_dim, key_dim=self.key_dim
        )

        sampled: dict[str, Tensor] = {}
        if self.mode == "reinforce" and self.training:

            def normalize(logits: Tensor, keep: Tensor | None) -> Tensor:
                # logits (B, 1, Tq, Tk): a 3-D call is one head
                one_hot, sampled["log_prob"], sampled["entropy"] = sample_hard(
                    logits, keep, generator=generator
                )
                return one_hot

            kwargs = None
        elif self.mode == "gumbel" and self.training:
            normalize, kwargs = "gumbel", {"tau": self.tau, "hard": True, "generator": generator}
        elif self.mode == "topk":
            normalize, kwargs = "topk", {"k": self.k}
        else:
            normalize, kwargs = "hard", None
        res = attention(
            query,
            keys,
            values,
            score=self.score,
            mask=attn_mask,
            need_weights=need_weights,
            normalize=normalize,
            normalize_kwargs=kwargs,
        )
        log_prob = sampled["log_prob"].squeeze(1) if sampled else None  # (B, 1, Tq) -> (B, Tq)
        entropy = sampled["entropy"].squeeze(1) if sampled else None
        out, weights = res.out, res.weights
        if one_step:  # (B, 1, ...) -> (B, ...)
            out = out.squeeze(1)
            weights = None if weights is None else weights.squeeze(1)
            log_prob = None if log_prob is None else log_prob.squeeze(1)
            entropy = None if entropy is None else entropy.squeeze(1)
        return HardAttentionOutput(
            out=out, weights=weights, log_prob=log_prob, entropy=entropy, backend=res.backend
        )

    def extra_repr(self) -> str:
        extra = (
            f", k={self.k}" if self.mode == "topk" else f", tau={self.tau}" if self.mode == "gumbel" else ""
        )
        return f"mode={self.mode!r}, score={self.score_name!r}{extra}"


class ReinforceBaseline(nn.Module):
    """Moving-average reward baseline for REINFORCE (Xu et al. 2015, section 4.1)::

        b_k = decay * b_{k-1} + (1 - decay) * mean(reward_k)        (Xu et al.: decay = 0.9)

    Subtracting a baseline that does not depend on the current sample keeps the
    score-function estimator unbiased, ``E[(R - b) d log p(s)] = E[R d log p(s)]`` since
    ``E[d log p(s)] = 0``, and lowers its variance when ``b`` is close to ``E[R]``.

    Calling ``baseline(reward)`` returns ``b_{k-1}`` (a detached 0-dim tensor, computed
    before seeing this batch) and, in training mode, updates the average with ``reward``
    (the first batch sets it to its mean). In eval mode nothing is updated.

    Args:
        decay: in ``[0, 1)``.

    Attributes:
        value: the current baseline, a 0-dim float buffer (saved in the state dict).
        steps: how many batches it has seen, a 0-dim int64 buffer.

    Raises:
        ValueError: ``decay`` outside ``[0, 1)``.
    """

    def __init__(self, *, decay: float = 0.9) -> None:
        super().__init__()
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"decay: expected a number in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.register_buffer("value", torch.zeros((), dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def forward(self, reward: Tensor) -> Tensor:
        if not isinstance(reward, Tensor) or not reward.is_floating_point():
            got = reward.dtype if isinstance(reward, Tensor) else type(reward).__name__
            raise TypeError(f"reward: expected a float tensor, got {got}")
        current = self.value.to(device=reward.device, dtype=reward.dtype).clone()
        if self.training and reward.numel():
            with torch.no_grad():
                mean = reward.detach().double().mean().to(self.value.device)
                if int(self.steps) == 0:
                    self.value.copy_(mean)
                else:
                    self.value.mul_(self.decay).add_((1.0 - self.decay) * mean)
                self.steps += 1
        return current

    def extra_repr(self) -> str:
        return f"decay={self.decay}"


def reinforce_loss(
    reward: Tensor,
    log_prob: Tensor,
    baseline: Tensor | float | None = None,
    entropy: Tensor | None = None,
    entropy_weight: float = 0.0,
) -> Tensor:
    """The REINFORCE surrogate loss: minimizing it ascends ``E[reward] + entropy_weight * H``.

    Williams 1992; Xu et al. 2015, eq. (12)::

        loss = -mean_b[(R_b - baseline) * log p(s_b)] - entropy_weight * mean_b[H_b]

    ``(R - baseline)`` is detached, so ``-d loss / d theta = mean_b (R_b - b) d log p(s_b) +
    entropy_weight * d H`` is the score-function estimate of ``d E[R] / d theta`` (unbiased
    for a baseline that does not depend on the current sample) plus the entropy bonus. The
    part of the gradient that flows through the attended values (Xu et al.'s
    ``d log p(y|s) / dW``) comes from the task loss, which the caller adds.

    Args:
        reward: ``(B,)`` one reward per sample, or the shape of ``log_prob`` (one per
            choice). A ``(B,)`` reward credits all of its sample's choices: ``log_prob`` and
            ``entropy`` are summed over their trailing dims (the joint log-probability).
        log_prob: ``(B, ...)`` log-probabilities of the sampled choices (e.g.
            :attr:`HardAttentionOutput.log_prob`).
        baseline: None (0), a number, or a tensor broadcastable to ``reward`` (e.g. the
            value of a :class:`ReinforceBaseline`).
        entropy: like ``log_prob``; required when ``entropy_weight != 0``.
        entropy_weight: ``lambda_e >= 0``.

    Returns:
        a 0-dim tensor: the mean over ``reward``'s elements (samples, or choices).

    Raises:
        TypeError: non-tensor or non-float ``reward``/``log_prob``.
        ValueError: ``reward``'s shape not ``log_prob``'s leading dims, a bad
            ``entropy_weight``, ``entropy`` missing or shaped unlike ``log_prob``.
    """
    for name, t in (("reward", reward), ("log_prob", log_prob)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            got = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"{name}: expected a float tensor, got {got}")
    if reward.dim() == 0 or tuple(reward.shape) != tuple(log_prob.shape[: reward.dim()]):
        raise ValueError(
            f"reward: expected shape (B,) or log_prob's {tuple(log_prob.shape)} (its leading dims), "
            f"got {tuple(reward.shape)}"
        )
    if (
        isinstance(entropy_weight, bool)
        or not isinstance(entropy_weight, (int, float))
        or not math.isfinite(entropy_weight)
        or entropy_weight < 0
    ):
        raise ValueError(f"entropy_weight: expected a finite number >= 0, got {entropy_weight!r}")
    if entropy_weight and entropy is None:
        raise ValueError("entropy: required when entropy_weight > 0 (pass HardAttentionOutput.entropy)")
    if entropy is not None and entropy.shape != log_prob.shape:
        raise ValueError(
            f"entropy: expected log_prob's shape {tuple(log_prob.shape)}, got {tuple(entropy.shape)}"
        )
    trailing = tuple(range(reward.dim(), log_prob.dim()))

    def per_reward(t: Tensor) -> Tensor:  # (B, ...) -> reward's shape
        return t.sum(trailing) if trailing else t

    advantage = reward if baseline is None else reward - baseline
    loss = -(advantage.detach() * per_reward(log_prob)).mean()
    if entropy is not None and entropy_weight:
        loss = loss - entropy_weight * per_reward(entropy).mean()
    return loss
