"""The adding problem: the article's attention pooling layer, its trap and mean pooling, trained.

The worked example of the article "Q, K, V in attention" (its section 5) is a sequence
regression: ``inputs (batch, sequence_length, units) -> Dense(units) -> AttentionLayer(units)
-> Dense(1)``, trained with mean squared error. Its data is not given; the adding problem
(Hochreiter & Schmidhuber 1997) has that shape and a known answer: each position holds a
``(value, marker)`` pair, values uniform in ``[-1, 1]``, exactly two markers set, and the target
is the sum of the two marked values. Attention can solve it by putting its weight on the two
marked positions; mean pooling cannot, since the mean of a linear map of the inputs carries
only the mean value, not the marked ones.

Three models, same data and seeds (shape legend: B batch, T length, U units)::

    x (B, T, 2) -> Linear(2, U) -> pooling -> Linear(U, 1) -> (B, 1)

- ``"fixed"``: :class:`qkv.AttentionPooling` ``(U)``, the article's layer with its softmax
  always on;
- ``"article"``: the layer as the article writes it, ``softmax_in_training=False``: fitted on
  raw scores, evaluated with the softmax;
- ``"mean"``: the mean over the sequence.

Each is measured on held-out sequences in training mode (what the optimizer saw) and in
inference mode (what a user gets); ``mismatch`` is their difference, and ``marked_mass`` the
mean attention weight on the two marked positions at inference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..modules.pooling import AttentionPooling

__all__ = [
    "MODELS",
    "AddingBatch",
    "AddingComparison",
    "PoolingRegressor",
    "PoolingRun",
    "adding_problem",
    "compare_pooling",
    "train_regressor",
]

#: The compared models: name -> what it is.
MODELS = {
    "fixed": "AttentionPooling, softmax always (the article's layer, fixed)",
    "article": "AttentionPooling(softmax_in_training=False): the article's code as written",
    "mean": "mean pooling",
}


@dataclass(frozen=True)
class AddingBatch:
    """``x (B, T, 2)`` (value, marker), ``y (B, 1)`` the sum of the marked values,
    ``marked (B, T)`` bool."""

    x: Tensor
    y: Tensor
    marked: Tensor


def adding_problem(n: int, length: int, *, generator: torch.Generator) -> AddingBatch:
    """``n`` sequences of ``length >= 2`` positions; two distinct marked positions each."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"length: expected an int >= 2 (two marked positions), got {length!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    values = torch.rand(n, length, generator=generator) * 2 - 1  # (B, T) in [-1, 1)
    picked = torch.rand(n, length, generator=generator).argsort(-1)[:, :2]  # (B, 2) distinct
    marked = torch.zeros(n, length, dtype=torch.bool).scatter_(1, picked, True)
    x = torch.stack([values, marked.float()], -1)  # (B, T, 2)
    return AddingBatch(x, (values * marked).sum(-1, keepdim=True), marked)


class PoolingRegressor(nn.Module):
    """The article's model: ``Linear(2, U) -> pooling -> Linear(U, 1)``.

    Args:
        units: ``U``.
        pooling: ``"fixed"``, ``"article"`` or ``"mean"`` (:data:`MODELS`).
    """

    def __init__(self, units: int, *, pooling: str) -> None:
        super().__init__()
        if pooling not in MODELS:
            raise ValueError(f"pooling: expected one of {', '.join(MODELS)}, got {pooling!r}")
        self.inp = nn.Linear(2, units)
        self.pool = (
            None if pooling == "mean" else AttentionPooling(units, softmax_in_training=pooling == "fixed")
        )
        self.head = nn.Linear(units, 1)

    def forward(self, x: Tensor, *, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """``x (B, T, 2)`` -> ``(prediction (B, 1), weights (B, T) or None)``."""
        h = self.inp(x)  # (B, T, U)
        if self.pool is None:
            return self.head(h.mean(1)), None
        res = self.pool(h, need_weights=need_weights)
        return self.head(res.out), res.weights


def train_regressor(
    model: PoolingRegressor, *, length: int, steps: int, batch_size: int, lr: float, seed: int
) -> float:
    """Adam on fresh batches of the adding problem (seeded); returns the last step's loss."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        b = adding_problem(batch_size, length, generator=g)
        loss = nn.functional.mse_loss(model(b.x)[0], b.y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


@dataclass(frozen=True)
class PoolingRun:
    """One model's numbers on the held-out sequences.

    Attributes:
        name: a key of :data:`MODELS`. mse_training_mode: MSE with ``model.train()`` (the
            article's layer then skips its softmax). mse_inference: MSE with ``model.eval()``.
        marked_mass: mean inference weight on the two marked positions (None: mean pooling).
        seconds: training time.
    """

    name: str
    mse_training_mode: float
    mse_inference: float
    marked_mass: float | None
    seconds: float

    @property
    def mismatch(self) -> float:
        """``mse_inference - mse_training_mode``: what switching to inference costs."""
        return self.mse_inference - self.mse_training_mode


@dataclass(frozen=True)
class AddingComparison:
    """The runs of :func:`compare_pooling` and what they were trained on."""

    length: int
    steps: int
    seed: int
    baseline_mse: float  # predicting the mean target: the variance of y on the test set
    runs: tuple[PoolingRun, ...]

    def run(self, name: str) -> PoolingRun:
        return next(r for r in self.runs if r.name == name)

    def to_dict(self) -> dict:
        return {
            "task": "adding problem", "length": self.length, "steps": self.steps, "seed": self.seed,
            "baseline_mse": self.baseline_mse,
            "models": {r.name: {"what": MODELS[r.name], "mse_training_mode": r.mse_training_mode,
                                "mse_inference": r.mse_inference, "mismatch": r.mismatch,
                                "marked_mass": r.marked_mass, "seconds": r.seconds} for r in self.runs},
        }  # fmt: skip

    def to_text(self, precision: int = 4) -> str:
        head = f"{'model':<9}{'MSE train mode':>16}{'MSE inference':>15}{'mismatch':>11}{'marked mass':>13}"
        lines = [
            f"The adding problem, length {self.length}: {self.steps} Adam steps, seed {self.seed} "
            f"(predicting the mean: MSE {self.baseline_mse:.{precision}f})",
            "",
            head,
        ]
        for r in self.runs:
            mass = "-" if r.marked_mass is None else f"{r.marked_mass:.{precision}f}"
            lines.append(
                f"{r.name:<9}{r.mse_training_mode:>16.{precision}f}{r.mse_inference:>15.{precision}f}"
                f"{r.mismatch:>11.{precision}f}{mass:>13}"
            )
        lines += ["", *(f"{name:<9}{what}" for name, what in MODELS.items())]
        return "\n".join(lines)


def _measure(model: PoolingRegressor, test: AddingBatch, name: str, seconds: float) -> PoolingRun:
    with torch.no_grad():
        model.train()
        mse_train = float(nn.functional.mse_loss(model(test.x)[0], test.y))
        model.eval()
        pred, weights = model(test.x, need_weights=True)
    mass = None if weights is None else float((weights * test.marked).sum(-1).mean())
    return PoolingRun(name, mse_train, float(nn.functional.mse_loss(pred, test.y)), mass, seconds)


def compare_pooling(
    *,
    length: int = 100,
    steps: int = 600,
    units: int = 8,
    batch_size: int = 32,
    lr: float = 0.01,
    seed: int = 0,
    test_size: int = 1000,
    models: tuple[str, ...] = tuple(MODELS),
    threads: int = 1,
) -> AddingComparison:
    """Train each of ``models`` on the adding problem (same batches, same initial seed) and
    measure it on ``test_size`` held-out sequences (generator seeded ``seed + 1``).

    ``threads``: torch CPU threads for the block (default 1: models this small run several
    times faster on one thread than on two busy cores); the previous count is restored."""
    test = adding_problem(test_size, length, generator=torch.Generator().manual_seed(seed + 1))
    runs = []
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name in models:
            torch.manual_seed(seed)
            model = PoolingRegressor(units, pooling=name)
            start = time.perf_counter()
            train_regressor(model, length=length, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
            runs.append(_measure(model, test, name, time.perf_counter() - start))
    finally:
        torch.set_num_threads(before)
    baseline = float(test.y.var(unbiased=False))
    return AddingComparison(length, steps, seed, baseline, tuple(runs))
