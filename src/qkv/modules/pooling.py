"""Attention pooling: a sequence ``(B, T, U)`` becomes one vector ``(B, U)`` by attention.

Shape legend (see :mod:`qkv._types`)::

    B   batch     T   sequence length     U   units (features)     H   heads
    A   hidden size of the "query" form's key projection (default U)

    x (B, T, U), mask (B, T) bool, True = real token
    -> out (B, U), weights (B, T) (num_heads = 1) or (B, H, T)

Three forms, each a line of the literature:

- ``"shared"``: the layer of the article "Q, K, V in attention" (its section 5, a Keras
  ``AttentionLayer``): one matrix ``W`` makes both queries and keys, the values are the inputs.
- ``"separate"``: queries and keys from their own matrices (self-attention's projections).
- ``"query"``: a learned query vector against ``tanh``-projected keys: Bahdanau-style pooling,
  the word attention of Yang et al. 2016, "Hierarchical Attention Networks for Document
  Classification" (``u_t = tanh(W h_t + b)``, ``alpha_t = softmax_t(u_t . u_w)``,
  ``s = sum_t alpha_t h_t``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_dim
from .._types import AttentionOutput
from ..api import attention

__all__ = ["FORMS", "AttentionPooling", "raw_scores"]

#: The forms of :class:`AttentionPooling`, by ``form=`` name.
FORMS = ("shared", "separate", "query")


def raw_scores(logits: Tensor, mask: Tensor | None) -> Tensor:
    """The normalizer of the article's training path: no normalization at all. The logits
    are the weights (masked ones 0), so they neither sum to 1 nor stay positive."""
    return logits if mask is None else logits.masked_fill(~mask, 0.0)


class AttentionPooling(nn.Module):
    """Pool a sequence into one vector: ``out = sum_t w_t x_t + b``, ``w`` from attention.

    **The article's layer** (``form="shared"``, ``num_heads=1``, the defaults). Its Keras code::

        Q = tf.tensordot(inputs, self.W, axes=[2, 2]); K = (the same); V = inputs
        scores = tf.matmul(Q, K, transpose_b=True)              # (B, T, T)
        if not training: scores = tf.nn.softmax(scores, axis=1)
        output = tf.reduce_sum(scores * V, axis=1) + self.b     # (B, U)

    Here, with ``X = inputs`` ``(B, T, U)``, ``W`` ``(U, U)`` and ``b`` ``(U,)``:
    ``Q = K = X W``, ``V = X``, unscaled scores ``S = Q K^T`` ``(B, T, T)``, each query's
    softmax over the sequence ``A = softmax(S)`` (``S`` is symmetric because Q and K share
    ``W``, so the article's ``axis=1`` and the key axis give the same distributions, one per
    position), the weight of position ``t`` the mean over the (real) queries
    ``w_t = mean_i A[i, t]`` (so ``sum_t w_t = 1``), and ``out = sum_t w_t x_t + b``
    ``(B, U)``. Two things of the printed code are read, not copied: ``axes=[2, 2]`` names
    axis 2 of ``W``, a matrix with axes 0 and 1 (read as ``X W``, Keras's kernel convention);
    and ``scores * V`` multiplies ``(B, T, T)`` by ``(B, T, U)`` element by element, which
    broadcasts only when ``T == U`` and then pools unit ``u`` with position ``u``'s
    distribution (``out[u] = sum_t A[u, t] x_t[u]``), pairing features with positions by
    index. qkv pools every unit with the same weights, the mean of the ``T`` distributions.

    **The article's trap** (``softmax_in_training=False``): its softmax runs only when
    ``training`` is false, so the model trains on raw scores (``w_t = mean_i S[i, t]``, not
    normalized) and predicts with softmax weights: what it learned is not what it runs. Off
    by default; kept to show the bug (``qkv explain --pooling``, ``qkv demo --examples``).

    **Forms**: ``"separate"`` uses ``Q = X W_q``, ``K = X W_k``; ``"query"`` uses one learned
    query per head against ``K = tanh(X W + b_k)`` (``W`` ``(U, A)``) and pools each position
    once (no mean over queries). With ``num_heads = H`` the projections and the values split
    into ``H`` slices (``U`` and ``A`` divisible by ``H``); head ``h`` pools values slice ``h``.

    Every form runs through :func:`qkv.attention` (any backend; ``score="dot"``), and
    :func:`qkv.capture` records its weights as ``(B, H, 1, T)``.

    Args:
        units: ``U``, the feature size of the inputs and the output.
        form: ``"shared"`` (default, the article), ``"separate"`` or ``"query"``.
        num_heads: ``H`` (default 1).
        hidden_dim: ``A`` of the ``"query"`` form (default ``U``); only with ``form="query"``.
        scale: factor on the logits; default 1 for ``"shared"`` (the article scales nothing)
            and ``"query"`` (Yang et al.), ``1/sqrt(U/H)`` for ``"separate"``.
        softmax_in_training: ``True`` (default): softmax always. ``False``: the article's
            bug, raw scores in training mode.
        backend: the :func:`qkv.attention` backend (default ``"auto"``).

    Raises:
        ValueError: ``units``/``num_heads``/``hidden_dim`` not positive ints, not divisible by
            ``num_heads``, an unknown ``form``, ``hidden_dim`` with another form, a ``scale``
            that is not a finite number > 0.
        TypeError: ``softmax_in_training`` not a bool.
    """

    def __init__(
        self,
        units: int,
        *,
        form: str = "shared",
        num_heads: int = 1,
        hidden_dim: int | None = None,
        scale: float | None = None,
        softmax_in_training: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.units, self.num_heads = check_dim("units", units), check_dim("num_heads", num_heads)
        self.form = _check_form(form, hidden_dim)
        self.hidden_dim = units if hidden_dim is None else check_dim("hidden_dim", hidden_dim)
        for name, size in (("units", self.units), ("hidden_dim", self.hidden_dim)):
            if size % self.num_heads:
                raise ValueError(f"{name}: expected a multiple of num_heads={num_heads}, got {size}")
        if not isinstance(softmax_in_training, bool):
            raise TypeError(f"softmax_in_training: expected a bool, got {softmax_in_training!r}")
        self.softmax_in_training, self.backend = softmax_in_training, backend
        self.scale = _check_scale(scale, self.form, self.units // self.num_heads)
        # Keras's 'random_normal' initializer (std 0.05) for W, zeros for b, as in the article.
        if self.form == "query":
            self.w_key = nn.Linear(units, self.hidden_dim)
            self.query = nn.Parameter(torch.randn(self.num_heads, self.hidden_dim // self.num_heads) * 0.05)
        else:
            self.w = nn.Parameter(torch.randn(units, units) * 0.05)
            if self.form == "separate":
                self.w_key = nn.Parameter(torch.randn(units, units) * 0.05)
        self.bias = nn.Parameter(torch.zeros(units))

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, need_weights: bool = False, backend: str | None = None
    ) -> AttentionOutput:
        """Args:
            x: ``(B, T, U)``.
            mask: bool ``(B, T)``, True = real token; padded positions get weight 0 and
                whatever they hold (NaN included) never reaches the result. A row with no
                real token gives output 0 (bias included) and weights 0.
            need_weights: also return the weights, ``(B, T)`` or ``(B, H, T)`` with heads.
            backend: this call's :func:`qkv.attention` backend instead of the module's.

        Returns:
            :class:`qkv.AttentionOutput` with ``out (B, U)``; its ``backend`` names the
            backend that ran.
        """
        real = self._check_inputs(x, mask)
        bsz, t_len, _ = x.shape
        h = self.num_heads
        if mask is not None:
            x = x.masked_fill(~real[..., None], 0.0)  # garbage in padding never reaches a product
        q, k = self._queries_keys(x)  # (B, H, Tq, d), (B, H, T, d); Tq = T, or 1 for "query"
        v = x.view(bsz, t_len, h, self.units // h).transpose(1, 2)  # (B, H, T, U/H)
        res = attention(
            q, k, v, score="dot", scale=self.scale, mask=real[:, None, None, :],
            backend=backend or self.backend, need_weights=need_weights, **self._normalizer(),
        )  # fmt: skip
        # each real query row counts 1/n: the mean over queries ("query" has one row, n = 1)
        n = real.sum(-1).clamp(min=1).to(x.dtype)  # (B,)
        row = (real / n[:, None]).to(x.dtype)[:, None, :, None] if q.shape[2] > 1 else 1.0  # (B, 1, T, 1)
        pooled = (res.out * row).sum(-2)  # (B, H, U/H)
        out = pooled.reshape(bsz, self.units) + self.bias  # (B, H, U/H) -> (B, U)
        out = torch.where(real.any(-1, keepdim=True), out, torch.zeros_like(out))
        weights = None
        if need_weights:
            weights = (res.weights * row).sum(-2)  # (B, H, T)
            weights = weights[:, 0] if h == 1 else weights
        return AttentionOutput(out, weights, backend=res.backend)

    def _queries_keys(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The queries ``(B, H, Tq, d)`` and keys ``(B, H, T, d)`` of this form."""
        bsz, t_len, _ = x.shape
        h = self.num_heads
        if self.form == "query":
            k = (
                torch.tanh(self.w_key(x)).view(bsz, t_len, h, self.hidden_dim // h).transpose(1, 2)
            )  # (B, H, T, A/H)
            return self.query[None, :, None, :].expand(bsz, -1, 1, -1), k  # (B, H, 1, A/H)
        d = self.units // h
        q = (x @ self.w).view(bsz, t_len, h, d).transpose(1, 2)  # (B, T, U) -> (B, H, T, U/H)
        if self.form == "shared":
            return q, q  # one W for both: K is Q
        return q, (x @ self.w_key).view(bsz, t_len, h, d).transpose(1, 2)

    def _normalizer(self) -> dict:
        if self.training and not self.softmax_in_training:
            return {"normalize": raw_scores}
        return {}

    def _check_inputs(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """The ``(B, T)`` bool mask of real tokens (all True without ``mask``)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.units or not x.is_floating_point():
            raise ValueError(
                f"x: expected a float tensor (B, T, units={self.units}), got shape {tuple(x.shape)} "
                f"and dtype {x.dtype}"
            )
        if mask is None:
            return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if (
            not isinstance(mask, Tensor)
            or mask.dtype != torch.bool
            or tuple(mask.shape) != tuple(x.shape[:2])
        ):
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(
                f"mask: expected a bool tensor (B, T) = {tuple(x.shape[:2])}, True = real token, got {got}"
            )
        return mask

    def extra_repr(self) -> str:
        trap = ", softmax_in_training=False" if not self.softmax_in_training else ""
        return f"{self.units}, form={self.form!r}, num_heads={self.num_heads}, scale={self.scale:g}{trap}"


def _check_form(form: object, hidden_dim: object) -> str:
    if form not in FORMS:
        raise ValueError(f"form: expected one of {', '.join(FORMS)}, got {form!r}")
    if hidden_dim is not None and form != "query":
        raise ValueError(
            f"hidden_dim: only used with form='query', got hidden_dim={hidden_dim!r} with {form!r}"
        )
    return str(form)


def _check_scale(scale: object, form: str, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim) if form == "separate" else 1.0
    if (
        isinstance(scale, bool)
        or not isinstance(scale, (int, float))
        or not math.isfinite(scale)
        or scale <= 0
    ):
        raise ValueError(f"scale: expected a finite number > 0, got {scale!r}")
    return float(scale)
