"""Gradient-based attributions: gradient-weighted attention rollout and integrated gradients.

Shape legend (see :mod:`qkv._types`)::

    B   batch     H   heads     T   tokens     E   embedding dim     L   layers

Gradient-weighted rollout (Chefer, Gur, Wolf 2021, "Generic Attention-model Explainability for
Interpreting Bi-Modal and Encoder-Decoder Transformers", eqs. 5-6): for a scalar target ``y``
and each self-attention layer's weights ``A_l (B, H, T, T)``::

    Abar_l = mean_h( relu( dy/dA_l * A_l ) )        (B, T, T)
    R = I;  R <- R + Abar_l @ R   for l = 1..L       (input side first)

``R[b, i, j]`` is the relevance of input token ``j`` for output position ``i``; ``R >= I``
elementwise, and ``R = I`` exactly when the target does not depend on the attention.

Integrated gradients (Sundararajan, Taly, Yan 2017, "Axiomatic Attribution for Deep
Networks"), through Captum: ``IG_i = (x_i - x'_i) * int_0^1 df(x' + a (x - x'))/dx_i da``,
summed over the embedding dim per token; completeness: ``sum IG = f(x) - f(x')`` up to the
quadrature error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..capture import capture

__all__ = ["grad_rollout", "gradient_relevance", "integrated_gradients"]


def _call(model: nn.Module, inputs):
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def grad_rollout(
    model: nn.Module,
    inputs,
    target_fn: Callable[[object], Tensor],
    *,
    kind: str = "encoder",
) -> Tensor:
    """Gradient-weighted attention rollout (Chefer et al. 2021); see the module docstring.

    Args:
        model: a model holding qkv attention modules (e.g. :class:`qkv.models.BertModel`), or
            a Hugging Face ``transformers`` model (run with eager attention for the call).
        inputs: what the model takes: a mapping (``model(**inputs)``), a tuple
            (``model(*inputs)``) or one tensor.
        target_fn: ``output -> scalar tensor`` to explain (a logit, a similarity...).
        kind: the self-attention maps to use (``"encoder"`` or ``"decoder"``).

    Returns:
        ``R (B, T, T)``, detached; ``R[b, i, j]`` = relevance of token ``j`` for output ``i``.
        :func:`qkv.interpret.token_scores` turns a row (or the mean of rows) into ``(T,)``.

    Raises:
        ValueError: ``target_fn`` did not return a scalar; no maps of ``kind`` recorded.
        RuntimeError: attention weights not connected to the target's graph.

    Runs one forward and one backward pass with gradients on (parameters that do not require
    gradients are switched on for the call, then back); the parameters' ``.grad`` are untouched.
    """
    if kind not in ("encoder", "decoder"):
        raise ValueError(f"kind: expected 'encoder' or 'decoder' (self-attention), got {kind!r}")
    params = list(model.parameters())
    frozen = [p for p in params if not p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad(), capture(model, kinds=kind, detach=False) as maps:
            target = target_fn(_call(model, inputs))
        if not isinstance(target, Tensor) or target.numel() != 1:
            got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
            raise ValueError(f"target_fn: expected a scalar tensor, got {got}")
        names = maps.names(kind)
        if not names:
            raise ValueError(f"kind: no {kind} self-attention was recorded during the forward pass")
        layers = [maps.merged(n) for n in names]  # each (B, H, T, T)
        bad = [n for n, a in zip(names, layers) if not a.requires_grad]
        if bad:
            raise RuntimeError(
                f"grad_rollout: the weights of {', '.join(bad)} are not differentiable (computed apart "
                "from the output); use a backend that returns them (the reference)"
            )
        grads = torch.autograd.grad(target.reshape(()), layers, allow_unused=True)
    finally:
        for p in frozen:
            p.requires_grad_(False)
    return gradient_relevance(layers, grads)


def gradient_relevance(layers: Sequence[Tensor], grads: Sequence[Tensor | None]) -> Tensor:
    """Chefer et al.'s relevance from each layer's weights ``A_l (B, H, T, T)`` (input side
    first) and their gradients ``dy/dA_l`` (``None``: the target does not reach that layer)::

        R = I;  R <- R + mean_h( relu(dy/dA_l * A_l) ) @ R

    Returns ``R (B, T, T)``, detached."""
    a0 = layers[0]
    t = a0.shape[-1]
    relevance = torch.eye(t, dtype=a0.dtype, device=a0.device).expand(a0.shape[0], t, t).clone()  # (B, T, T)
    for a, g in zip(layers, grads):
        if g is None:
            continue
        abar = (g * a).clamp_min(0).mean(dim=1).detach()  # (B, H, T, T) -> (B, T, T)
        relevance = relevance + abar @ relevance
    return relevance


def integrated_gradients(
    model_fn: Callable[[Tensor], Tensor],
    embeddings: Tensor,
    baseline: Tensor | None = None,
    *,
    steps: int = 32,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    return_delta: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Integrated gradients per token, through Captum (``pip install 'qkv[interpret]'``).

    Args:
        model_fn: ``(N, T, E) -> (N,)``: one scalar per example (e.g. a similarity or a
            logit computed from ``BertModel(inputs_embeds=...)``). It is called on batches of
            interpolated inputs (``N = steps * B``, or ``internal_batch_size`` at a time).
        embeddings: ``(B, T, E)`` or ``(T, E)`` input embeddings (e.g. the word embeddings).
        baseline: same shape; default zeros (a ``[PAD]`` embedding is a common choice).
        steps: integration points; method: Captum's rule (``"gausslegendre"``,
            ``"riemann_trapezoid"``...).
        return_delta: also return the completeness gap ``sum IG - (f(x) - f(baseline))`` per
            example.

    Returns:
        scores ``(B, T)`` (``(T,)`` for 2-D input): attributions summed over ``E``; with
        ``return_delta``, ``(scores, delta (B,))``.

    Raises:
        ImportError: Captum missing.
        ValueError: shapes that disagree; ``model_fn`` not returning ``(N,)``; ``steps < 1``.
    """
    try:
        from captum.attr import IntegratedGradients
    except ImportError as exc:
        raise ImportError("integrated_gradients needs Captum: pip install 'qkv[interpret]'") from exc
    if (
        not isinstance(embeddings, Tensor)
        or embeddings.dim() not in (2, 3)
        or not embeddings.is_floating_point()
    ):
        got = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
        raise ValueError(f"embeddings: expected a float tensor (B, T, E) or (T, E), got {got}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    single = embeddings.dim() == 2
    x = embeddings.detach().unsqueeze(0) if single else embeddings.detach()  # (B, T, E)
    if baseline is None:
        base = torch.zeros_like(x)
    else:
        base = baseline.detach().unsqueeze(0) if single and baseline.dim() == 2 else baseline.detach()
        if base.shape != x.shape:
            raise ValueError(
                f"baseline: expected shape {tuple(x.shape)} like embeddings, got {tuple(baseline.shape)}"
            )
    with torch.no_grad():
        probe = model_fn(x)
    if not isinstance(probe, Tensor) or tuple(probe.shape) != (x.shape[0],):
        got = tuple(probe.shape) if isinstance(probe, Tensor) else type(probe).__name__
        raise ValueError(f"model_fn: expected one scalar per example, shape ({x.shape[0]},), got {got}")
    ig = IntegratedGradients(model_fn)
    with torch.enable_grad():
        attr, delta = ig.attribute(
            x,
            baselines=base,
            n_steps=steps,
            method=method,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
    scores = attr.detach().sum(dim=-1)  # (B, T, E) -> (B, T)
    if single:
        scores, delta = scores[0], delta.reshape(-1)[:1]
    return (scores, delta.detach()) if return_delta else scores
