"""Nadaraya-Watson kernel regression as a module, with a learnable bandwidth.

Shape legend::

    Nq  number of queries      N   number of training points
    D   input features         Dy  target features

    fit: x (N,) or (N, D), y (N,) or (N, Dy)
    forward: x_query (Nq,) or (Nq, D) -> out (Nq,) or (Nq, Dy), weights (Nq, N)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._types import AttentionOutput
from ..api.kernel_regression import KERNELS, check_bandwidth, nadaraya_watson
from .scores import _as_float

__all__ = ["NadarayaWatson"]


class NadarayaWatson(nn.Module):
    """Nadaraya-Watson regression ``f(x) = sum_i softmax_i(log K(||x - x_i|| / h)) y_i``
    (Nadaraya 1964, Watson 1964; d2l.ai section 11.2), computed by
    :func:`qkv.api.kernel_regression.nadaraya_watson`.

    With ``learnable=True`` the bandwidth ``h`` is a parameter (stored as ``log_bandwidth``
    so it stays positive) that :meth:`fit` trains by leave-one-out mean squared error: each
    training point is predicted from the others, as in d2l's parametric Nadaraya-Watson.

    Args:
        kernel: ``"gaussian"``, ``"boxcar"`` or ``"epanechnikov"``.
        bandwidth: initial ``h > 0``.
        learnable: learn ``h`` in :meth:`fit`. Not possible with ``"boxcar"``, whose
            prediction is piecewise constant in ``h`` (zero gradient).

    Buffers:
        x_train ``(N, D)`` / ``y_train`` as given to :meth:`fit` (None before).

    Raises:
        ValueError: unknown kernel, ``bandwidth <= 0``, ``learnable`` with ``"boxcar"``.
    """

    def __init__(self, *, kernel: str = "gaussian", bandwidth: float = 1.0, learnable: bool = False) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel: expected one of {', '.join(KERNELS)}, got {kernel!r}")
        if isinstance(bandwidth, Tensor):
            raise TypeError("bandwidth: expected a number (the initial value), got a Tensor")
        bandwidth = check_bandwidth(bandwidth)
        if learnable and kernel == "boxcar":
            raise ValueError(
                "learnable: the boxcar kernel's prediction has zero gradient w.r.t. the bandwidth; "
                "use kernel='gaussian' or 'epanechnikov', or learnable=False"
            )
        self.kernel = kernel
        self.learnable = bool(learnable)
        if self.learnable:
            self.log_bandwidth = nn.Parameter(torch.tensor(math.log(bandwidth)))
        else:
            self._bandwidth = bandwidth
        self.register_buffer("x_train", None)
        self.register_buffer("y_train", None)

    @property
    def bandwidth(self) -> float | Tensor:
        """``h``: a 0-dim tensor when learnable, else a float."""
        return self.log_bandwidth.exp() if self.learnable else self._bandwidth

    def extra_repr(self) -> str:
        n = None if self.x_train is None else self.x_train.shape[0]
        return f"kernel={self.kernel!r}, bandwidth={_as_float(self.bandwidth):.4g}, learnable={self.learnable}, N={n}"

    def forward(
        self, x_query: Tensor, *, mask: Tensor | None = None, need_weights: bool = False
    ) -> AttentionOutput:
        """Predict at ``x_query`` ``(Nq,)`` or ``(Nq, D)`` from the fitted data.

        Args:
            mask: optional bool ``(Nq, N)``, True = training point may be used.
            need_weights: also return the weights ``(Nq, N)``.

        Returns:
            :class:`qkv.AttentionOutput` with ``out`` ``(Nq,)`` or ``(Nq, Dy)``; queries with
            no training point in the kernel's support give 0.

        Raises:
            RuntimeError: called before :meth:`fit`.
        """
        if self.x_train is None:
            raise RuntimeError("NadarayaWatson: no training data; call fit(x, y) first")
        return nadaraya_watson(
            x_query, self.x_train, self.y_train, kernel=self.kernel, bandwidth=self.bandwidth,
            mask=mask, need_weights=need_weights,
        )  # fmt: skip

    def loo_loss(self) -> Tensor:
        """Leave-one-out mean squared error on the training data: each ``y_i`` predicted from
        the other points (differentiable w.r.t. the bandwidth)."""
        if self.x_train is None:
            raise RuntimeError("NadarayaWatson: no training data; call fit(x, y) first")
        n = self.x_train.shape[0]
        others = ~torch.eye(n, dtype=torch.bool, device=self.x_train.device)  # (N, N)
        pred = self(self.x_train, mask=others).out
        return (pred - self.y_train).pow(2).mean()

    def fit(
        self,
        x: Tensor,
        y: Tensor,
        *,
        epochs: int = 100,
        lr: float = 0.05,
        exclude_self: bool = True,
        progress: Callable[[int, float], None] | None = None,
    ) -> list[float]:
        """Store the training data and, when learnable, train the bandwidth.

        Training minimizes the mean squared error of predicting each training ``y_i`` from
        the training points (all but ``x_i`` itself when ``exclude_self``: otherwise
        ``h -> 0`` trivially interpolates) with Adam on ``log h``, full batch.

        Args:
            x: ``(N,)`` or ``(N, D)``; y: ``(N,)`` or ``(N, Dy)``.
            epochs: optimizer steps (ignored unless learnable).
            lr: Adam learning rate on ``log h``.
            exclude_self: leave-one-out training (recommended).
            progress: called as ``progress(epoch, loss)`` after each step; None = quiet.

        Returns:
            The loss before each step (``epochs`` floats; empty when not learnable).

        Raises:
            ValueError: bad shapes (as :func:`nadaraya_watson`), ``epochs < 0``, ``lr <= 0``.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs: expected an int >= 0, got {epochs!r}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"lr: expected a finite number > 0, got {lr!r}")
        # Validate shapes once (and fail before storing anything).
        nadaraya_watson(x[:1], x, y, kernel=self.kernel, bandwidth=_as_float(self.bandwidth))
        self.x_train = x.detach()
        self.y_train = y.detach()
        history: list[float] = []
        if not self.learnable:
            return history
        n = x.shape[0]
        mask = ~torch.eye(n, dtype=torch.bool, device=x.device) if exclude_self else None  # (N, N)
        opt = torch.optim.Adam([self.log_bandwidth], lr=lr)
        for epoch in range(epochs):
            opt.zero_grad()
            pred = self(self.x_train, mask=mask).out
            loss = (pred - self.y_train).pow(2).mean()
            loss.backward()
            opt.step()
            value = float(loss.detach())
            history.append(value)
            if progress is not None:
                progress(epoch, value)
        return history
