"""Explain an attention computation step by step: inputs, scores, scaled scores, weights, output.

The library side of ``qkv explain``: each function returns an :class:`Explanation`, a list of
named :class:`Step` s (name, formula, value) that renders as a plain-text walk-through
(:meth:`Explanation.to_text`) or as JSON (:meth:`Explanation.to_dict`). Three examples follow
the source articles:

* :func:`explain_seq2seq`: the Seq2Seq decoder step (encoder states ``h1 = [1, 2]``,
  ``h2 = [3, 4]``, decoder state ``s0 = [0.5, 0.5]``; dot score gives weights
  ``[0.1192, 0.8808]`` and context ``[2.7616, 3.7616]``).
* :func:`explain_self_attention`: ``X -> Q, K, V -> QK^T -> / sqrt(d_k) -> softmax -> AV`` on a
  small seeded example with integer entries.
* :func:`explain_kernel_regression`: Nadaraya-Watson with a Gaussian kernel (waists
  ``[56, 58]``, weights ``[43, 48]``; waist 57 predicts 45.5).
* :func:`explain_pooling`: the attention pooling layer of the article "Q, K, V in attention"
  (``qkv.AttentionPooling``, ``form="shared"``) on a tiny seeded sequence, and its trap side by
  side: the raw scores its training mode uses against the softmax of its inference mode.

:func:`explain` is the general form: any query/keys/values and any named score.

Every number shown comes from qkv itself: scores from :mod:`qkv.functional.scores`, weights
and output from :func:`qkv.attention` (``backend="reference"``, ``need_weights=True``). The
steps are then re-chained (``masked_softmax(scaled scores)`` and ``weights @ values``) and
checked against that call; a mismatch raises ``RuntimeError``. Everything runs in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .api import attention
from .functional import scores as _scores
from .functional.normalize import masked_softmax

__all__ = [
    "SCORE_NAMES",
    "Explanation",
    "Step",
    "explain",
    "explain_kernel_regression",
    "explain_pooling",
    "explain_self_attention",
    "explain_seq2seq",
]

SCORE_NAMES: tuple[str, ...] = tuple(_scores.SPECS)  # every named score (its text lives in its ScoreSpec)

# The worked example of the Seq2Seq article: encoder states (keys = values), decoder state.
SEQ2SEQ_KEYS = ((1.0, 2.0), (3.0, 4.0))
SEQ2SEQ_QUERY = (0.5, 0.5)
# The waist/weight example of the kernel-regression article.
KERNEL_KEYS = (56.0, 58.0)
KERNEL_VALUES = (43.0, 48.0)
KERNEL_QUERY = 57.0

_DTYPE = torch.float64
_CHECK_TOL = 1e-9


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Step:
    """One step of an explanation.

    Attributes:
        name: a short machine name (``"query"``, ``"scores"``, ``"weights"``, ...).
        title: the heading shown in the text layout.
        formula: how the value is computed, in plain text.
        value: the numbers, a 0-D, 1-D or 2-D float64 tensor.
        rows, cols: labels of the value's rows and columns (a 1-D value uses ``cols``).
        note: one optional line of commentary.
    """

    name: str
    title: str
    formula: str
    value: Tensor
    rows: tuple[str, ...] | None = None
    cols: tuple[str, ...] | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "formula": self.formula,
            "value": _to_list(self.value),
            "note": self.note,
        }


@dataclass(frozen=True)
class Explanation:
    """A step-by-step account of one attention computation.

    Attributes:
        example: ``"seq2seq"``, ``"self_attention"``, ``"kernel_regression"`` or ``"custom"``.
        title: a one-line heading.
        score: the score's name; ``scale``: the factor applied to the scores.
        steps: every step, in order.
        inputs: query, keys and values (and, for self-attention, ``x``) as given.
        parameters: score or projection parameters (``weight``, ``sigma``, ``w_q``, ...).
        scores, scaled_scores, weights, output: the results (1-D per query vector when the
            query was a single vector, else one row per query).
        backend: the backend of the checked :func:`qkv.attention` call.
        max_abs_diff: largest difference between the re-chained steps and that call.
    """

    example: str
    title: str
    score: str
    scale: float
    steps: tuple[Step, ...]
    inputs: dict[str, Tensor]
    parameters: dict[str, Tensor | float]
    scores: Tensor
    scaled_scores: Tensor
    weights: Tensor
    output: Tensor
    backend: str = "reference"
    max_abs_diff: float = 0.0
    tokens: tuple[str, ...] | None = field(default=None)

    def step(self, name: str) -> Step:
        """The step called ``name`` (raises ``KeyError`` if there is none)."""
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"no step named {name!r}; steps: {[s.name for s in self.steps]}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: plain lists of floats (full precision), the steps, the check."""
        d: dict[str, Any] = {
            "example": self.example,
            "title": self.title,
            "score": self.score,
            "scale": self.scale,
            "inputs": {k: _to_list(v) for k, v in self.inputs.items()},
            "parameters": {k: _to_list(v) for k, v in self.parameters.items()},
            "scores": _to_list(self.scores),
            "scaled_scores": _to_list(self.scaled_scores),
            "weights": _to_list(self.weights),
            "output": _to_list(self.output),
            "steps": [s.to_dict() for s in self.steps],
            "check": {
                "function": "qkv.attention",
                "backend": self.backend,
                "max_abs_diff": self.max_abs_diff,
                "ok": True,
            },
        }
        if self.tokens is not None:
            d["tokens"] = list(self.tokens)
        return d

    def to_text(self, precision: int = 4) -> str:
        """The textbook layout: numbered steps, each with its formula and a labelled table."""
        lines = [self.title, "=" * len(self.title), ""]
        for i, s in enumerate(self.steps, 1):
            lines.append(f"Step {i}. {s.title}")
            lines.append(f"    {s.formula}")
            if s.note:
                lines.append(f"    ({s.note})")
            lines.append("")
            lines.extend("        " + row for row in format_table(s.value, s.rows, s.cols, precision))
            lines.append("")
        lines.append(
            f"Check: qkv.attention(score={self.score!r}, backend={self.backend!r}, need_weights=True) "
            f"gives the same weights and output (max |difference| = {self.max_abs_diff:.1e})."
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


# ----------------------------------------------------------------------------- formatting


def _to_list(v: Tensor | float) -> Any:
    if isinstance(v, Tensor):
        return v.detach().cpu().to(_DTYPE).tolist()
    return float(v)


def _fmt(x: float, precision: int) -> str:
    s = f"{x:.{precision}f}"
    # "-0.0000" reads as a sign error in a textbook table
    return s[1:] if s.startswith("-") and float(s) == 0.0 else s


def format_table(
    value: Tensor,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    precision: int = 4,
) -> list[str]:
    """A 0-D, 1-D or 2-D tensor as right-aligned text lines with optional row/column labels.

    >>> print("\\n".join(format_table(torch.tensor([[1.0, 2.5]]), ["s0"], ["h1", "h2"], 2)))
            h1    h2
    s0    1.00  2.50
    """
    v = value.detach().cpu().to(_DTYPE)
    if v.dim() == 0:
        return [_fmt(float(v), precision)]
    if v.dim() == 1:
        v = v.unsqueeze(0)
        if rows is not None and len(rows) != 1:
            rows = None
    if v.dim() != 2:
        raise ValueError(f"format_table: expected at most 2 dims, got {tuple(value.shape)}")
    cells = [[_fmt(float(x), precision) for x in row] for row in v]
    n_cols = v.shape[1]
    col_labels = list(cols) if cols is not None else [""] * n_cols
    width = max([len(c) for r in cells for c in r] + [len(c) for c in col_labels] + [1])
    row_labels = list(rows) if rows is not None else [""] * v.shape[0]
    lw = max([len(r) for r in row_labels] + [0])
    pad = lw + 2 if lw else 0
    out = []
    if cols is not None:
        out.append(" " * pad + "  ".join(c.rjust(width) for c in col_labels))
    for label, r in zip(row_labels, cells):
        prefix = label.ljust(lw) + "  " if lw else ""
        out.append(prefix + "  ".join(c.rjust(width) for c in r))
    return [line.rstrip() for line in out]


# ----------------------------------------------------------------------------- helpers


def _as_matrix(name: str, x: Tensor | Sequence[Any] | float) -> tuple[Tensor, bool]:
    """float64 ``(T, D)`` tensor and whether the input was one vector (1-D)."""
    t = torch.as_tensor(x, dtype=_DTYPE).detach().cpu()
    if t.dim() == 1:
        return t.unsqueeze(0), True
    if t.dim() == 2:
        return t, False
    raise ValueError(f"{name}: expected a vector (D,) or a matrix (T, D), got shape {tuple(t.shape)}")


def _labels(prefix: str, n: int, start: int = 1) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(start, start + n))


def _dims(n: int) -> tuple[str, ...]:
    return _labels("d", n)


def _seeded(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Small random numbers rounded to one decimal, so the printed values are the used ones."""
    return torch.round(torch.randn(shape, generator=generator, dtype=_DTYPE) * 0.5, decimals=1)


def _score_parameters(
    spec: _scores.ScoreSpec, d_q: int, d_k: int, *, seed: int, hidden: int, scalars: dict[str, float]
) -> dict[str, Tensor | float]:
    """The parameters ``spec.shown`` lists: tensors drawn seeded in that order (``D_q``, ``D_k``,
    ``A`` = ``hidden``), scalars from ``scalars`` (checked > 0)."""
    g = torch.Generator().manual_seed(seed)
    sizes = {"D_q": d_q, "D_k": d_k, "A": hidden}
    params: dict[str, Tensor | float] = {}
    for p in spec.shown:
        if p.shape is None:
            _check_positive(p.name, scalars[p.name])
            params[p.name] = float(scalars[p.name])
        else:
            params[p.name] = _seeded(tuple(sizes[d] for d in p.shape), g)
    return params


def _check_positive(name: str, x: float) -> None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {x!r}")


# ----------------------------------------------------------------------------- the core


@dataclass
class _Core:
    scores: Tensor
    scaled: Tensor
    weights: Tensor
    output: Tensor
    backend: str
    max_abs_diff: float


def _compute(q: Tensor, k: Tensor, v: Tensor, score: str, params: dict, scale: float) -> _Core:
    """Scores from qkv.functional.scores, weights/output from qkv.attention, cross-checked."""
    fn = _scores.SPECS[score].fn  # scaled_dot's raw score is dot: its 1/sqrt(D) is the scale
    raw = fn(q, k, **params)  # (Tq, Tk)
    scaled = raw * scale if scale != 1.0 else raw
    result = attention(
        q, k, v, score=score, scale=scale, backend="reference", need_weights=True,
        score_kwargs=params or None,
    )  # fmt: skip
    assert result.weights is not None
    # Re-chain the shown steps and hold them to the library call.
    weights_again, _ = masked_softmax(scaled)
    out_again = result.weights @ v
    diff = max(
        float((weights_again - result.weights).abs().max()),
        float((out_again - result.out).abs().max()),
    )
    if not diff <= _CHECK_TOL:
        raise RuntimeError(
            f"explain: the step-by-step values differ from qkv.attention by {diff:.3e} "
            f"(score {score!r}); this is a bug in qkv"
        )
    return _Core(raw, scaled, result.weights, result.out, result.backend, diff)


def _attention_steps(
    core: _Core,
    *,
    score: str,
    scale: float,
    scale_text: str,
    q_rows: tuple[str, ...],
    k_rows: tuple[str, ...],
    v_cols: tuple[str, ...],
    squeeze: bool,
    score_formula: str | None = None,
    weights_formula: str = "alpha_ij = softmax_j(s_ij) = exp(s_ij) / sum_k exp(s_ik)",
    output_formula: str = "c_i = sum_j alpha_ij v_j",
    output_title: str = "Output: weighted sum of the values",
    scaled_formula: str | None = None,
) -> list[Step]:
    def sq(t: Tensor) -> Tensor:
        return t[0] if squeeze else t

    if scaled_formula is None:
        scaled_formula = f"s_ij = e_ij * scale, scale = {scale_text}"
    scaled_note = "" if scale != 1.0 else f"scale is 1 for the {score} score: the scores pass unchanged"
    return [
        Step(
            "scores",
            f"Scores: {_scores.SPECS[score].source}",
            score_formula or _scores.SPECS[score].formula,
            sq(core.scores),
            q_rows,
            k_rows,
        ),
        Step("scaled_scores", "Scaled scores", scaled_formula, sq(core.scaled), q_rows, k_rows, scaled_note),
        Step(
            "weights",
            "Attention weights: softmax over the keys",
            weights_formula,
            sq(core.weights),
            q_rows,
            k_rows,
            "each row sums to 1",
        ),
        Step("output", output_title, output_formula, sq(core.output), q_rows, v_cols),
    ]


def _scale_text(score: str, scale: float | None, d: int) -> tuple[float, str]:
    if scale is not None:
        return float(scale), f"{float(scale):g} (given)"
    s = _scores.default_scale(score, d)
    return s, (f"1/sqrt(d) = 1/sqrt({d}) = {s:.6g}" if _scores.SPECS[score].scaled else "1")


def _parameter_steps(
    spec: _scores.ScoreSpec, params: dict[str, Tensor | float], q_dims, k_dims, hidden: int
) -> list[Step]:
    """One step per parameter the score shows: a seeded tensor with its symbolic shape, or a
    scalar with its title."""
    labels = {"D_q": q_dims, "D_k": k_dims, "A": _labels("a", hidden)}
    steps = []
    for p in spec.shown:
        if p.shape is None:
            value = torch.tensor(float(params[p.name]), dtype=_DTYPE)
            steps.append(Step(p.name, p.title, p.symbol, value))
            continue
        shape = ", ".join(p.shape) + ("," if len(p.shape) == 1 else "")
        rows = labels[p.shape[0]] if len(p.shape) == 2 else None
        title = f"Parameter {p.symbol} (seeded random)"
        steps.append(
            Step(p.symbol, title, f"{p.symbol}: ({shape})", params[p.name], rows, labels[p.shape[-1]])
        )
    return steps


def _checked_inputs(query, keys, values, score: str, hidden: int):
    """``(spec, q, squeeze, k, v)`` of :func:`explain`'s arguments, or a ValueError naming the
    argument: an unknown score, no keys, values that do not match the keys, dims a
    ``same_dim`` score refuses, a ``hidden`` size that is not an int >= 1 where one is used."""
    if score not in _scores.SPECS:
        raise ValueError(f"score: unknown score {score!r}; valid names: {', '.join(_scores.SPECS)}")
    spec = _scores.SPECS[score]
    q, squeeze = _as_matrix("query", query)
    k, _ = _as_matrix("keys", keys)
    v = k if values is None else _as_matrix("values", values)[0]
    if k.shape[0] == 0:
        raise ValueError("keys: expected at least one key")
    if v.shape[0] != k.shape[0]:
        raise ValueError(f"values: expected {k.shape[0]} rows (one per key), got {v.shape[0]}")
    if spec.same_dim and q.shape[1] != k.shape[1]:
        raise ValueError(
            f"keys: score {score!r} needs keys of the query's dimension {q.shape[1]}, got {k.shape[1]}"
        )
    if any(p.shape and "A" in p.shape for p in spec.shown) and (
        isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1
    ):
        raise ValueError(f"hidden: expected an integer >= 1, got {hidden!r}")
    return spec, q, squeeze, k, v


def _self_attention_input(
    x, tokens: Sequence[str] | None, d_model: int, d_k: int | None, generator: torch.Generator
) -> tuple[Tensor, tuple[str, ...], int]:
    """``(X (n, d_model), labels (n,), d_k)`` of :func:`explain_self_attention`'s arguments:
    ``x`` as a float64 matrix, or (when None) drawn from ``generator`` with entries in {0, 1, 2}
    and one row per token (3 without tokens); a ValueError names a size that is not >= 1 or
    labels that do not count the rows."""
    if x is None:
        n = len(tokens) if tokens is not None else 3
        if n < 1:
            raise ValueError("tokens: expected at least one token")
        if d_model < 1:
            raise ValueError(f"d_model: expected an integer >= 1, got {d_model}")
        X = torch.randint(0, 3, (n, d_model), generator=generator).to(_DTYPE)
    else:
        X, _ = _as_matrix("x", x)
        d_model = X.shape[1]
    n = X.shape[0]
    d_k = d_model if d_k is None else d_k
    if d_k < 1:
        raise ValueError(f"d_k: expected an integer >= 1, got {d_k}")
    labels = tuple(tokens) if tokens is not None else _labels("x", n)
    if len(labels) != n:
        raise ValueError(f"tokens: expected {n} labels (one per row of x), got {len(labels)}")
    return X, labels, d_k


def _kernel_regression_inputs(query, keys, values, sigma: float) -> tuple[Tensor, Tensor, Tensor, bool]:
    """``(xq (Tq, 1), xk (Tk, 1), yv (Tk, 1), squeeze)`` of :func:`explain_kernel_regression`'s
    numbers as float64 scalar features (``squeeze``: the query was one number), or a ValueError
    naming the argument: ``sigma`` not > 0, a matrix, no keys, values that do not count the keys."""
    _check_positive("sigma", sigma)
    for name, t in (("query", query), ("keys", keys), ("values", values)):
        if torch.as_tensor(t).dim() > 1:
            raise ValueError(f"{name}: expected plain numbers (one feature each), got a matrix")
    x = torch.as_tensor(query, dtype=_DTYPE).detach().cpu()
    xq = x.reshape(-1, 1)  # (Tq, 1): scalar features
    xk = torch.as_tensor(keys, dtype=_DTYPE).detach().cpu().reshape(-1, 1)  # (Tk, 1)
    yv = torch.as_tensor(values, dtype=_DTYPE).detach().cpu().reshape(-1, 1)  # (Tk, 1)
    if xk.shape[0] == 0:
        raise ValueError("keys: expected at least one key")
    if yv.shape[0] != xk.shape[0]:
        raise ValueError(f"values: expected {xk.shape[0]} numbers (one per key), got {yv.shape[0]}")
    return xq, xk, yv, x.dim() == 0


# ----------------------------------------------------------------------------- public API


def explain(
    query: Tensor | Sequence[Any],
    keys: Tensor | Sequence[Any],
    values: Tensor | Sequence[Any] | None = None,
    *,
    score: str = "dot",
    scale: float | None = None,
    seed: int = 0,
    sigma: float = 1.0,
    temperature: float = 1.0,
    hidden: int = 3,
    query_labels: Sequence[str] | None = None,
    key_labels: Sequence[str] | None = None,
    title: str | None = None,
    example: str = "custom",
) -> Explanation:
    """Explain ``attention(query, keys, values)`` with a named score, step by step.

    Args:
        query: one vector ``(D,)`` or a matrix ``(Tq, D)`` (one query per row).
        keys: ``(Tk, Dk)``; ``values``: ``(Tk, Dv)``, default ``keys``.
        score: one of :data:`SCORE_NAMES`. ``general`` and ``additive`` use seeded random
            parameters (``seed``, additive hidden size ``hidden``) shown as steps; ``gaussian``
            uses ``sigma``, ``cosine`` uses ``temperature``.
        scale: overrides the factor on the scores (default ``1/sqrt(D)`` for ``scaled_dot``,
            else 1, as in :func:`qkv.attention`).

    Returns:
        An :class:`Explanation`; the results are 1-D when ``query`` is one vector.

    Raises:
        ValueError: unknown score, shapes that do not fit, non-positive ``sigma`` or
            ``temperature``.
    """
    spec, q, squeeze, k, v = _checked_inputs(query, keys, values, score, hidden)

    q_rows = (
        tuple(query_labels) if query_labels is not None else (("q",) if squeeze else _labels("q", len(q)))
    )
    k_rows = tuple(key_labels) if key_labels is not None else _labels("k", len(k))
    if len(q_rows) != len(q) or len(k_rows) != len(k):
        raise ValueError("query_labels/key_labels: expected one label per query/key row")
    scalars = {"sigma": sigma, "temperature": temperature}
    params = _score_parameters(spec, q.shape[1], k.shape[1], seed=seed, hidden=hidden, scalars=scalars)
    scale_value, scale_text = _scale_text(score, scale, q.shape[1])
    core = _compute(q, k, v, score, params, scale_value)

    q_dims, k_dims, v_dims = _dims(q.shape[1]), _dims(k.shape[1]), _dims(v.shape[1])
    same = values is None
    steps = [
        Step("query", "Query", "q_i: one row per query", q[0] if squeeze else q, q_rows, q_dims),
        Step(
            "keys",
            "Keys" + (" (also the values)" if same else ""),
            "k_j: one row per key" + ("; v_j = k_j" if same else ""),
            k,
            k_rows,
            k_dims,
        ),
    ]
    if not same:
        steps.append(Step("values", "Values", "v_j: one row per key", v, k_rows, v_dims))
    steps += _parameter_steps(spec, params, q_dims, k_dims, hidden)
    score_formula = spec.formula + "".join(
        f", {p.symbol} = {params[p.name]:g}" for p in spec.shown if p.shape is None
    )
    steps += _attention_steps(
        core, score=score, scale=scale_value, scale_text=scale_text, q_rows=q_rows, k_rows=k_rows,
        v_cols=v_dims, squeeze=squeeze, score_formula=score_formula,
    )  # fmt: skip
    sq = (lambda t: t[0]) if squeeze else (lambda t: t)
    return Explanation(
        example=example,
        title=title or f"Attention with the {score} score, step by step",
        score=score,
        scale=scale_value,
        steps=tuple(steps),
        inputs={"query": sq(q), "keys": k, "values": v},
        parameters=params,
        scores=sq(core.scores),
        scaled_scores=sq(core.scaled),
        weights=sq(core.weights),
        output=sq(core.output),
        backend=core.backend,
        max_abs_diff=core.max_abs_diff,
    )


def explain_seq2seq(
    query: Tensor | Sequence[Any] = SEQ2SEQ_QUERY,
    keys: Tensor | Sequence[Any] = SEQ2SEQ_KEYS,
    values: Tensor | Sequence[Any] | None = None,
    *,
    score: str = "dot",
    **kwargs: Any,
) -> Explanation:
    """The Seq2Seq decoder step of the article: decoder state ``s0`` attends to encoder states.

    Defaults: ``h1 = [1, 2]``, ``h2 = [3, 4]`` (keys = values), ``s0 = [0.5, 0.5]``. With the
    dot score: scores ``[1.5, 3.5]``, weights ``[0.1192, 0.8808]``, context
    ``c1 = [2.7616, 3.7616]``. Other arguments as in :func:`explain`.
    """
    q, squeeze = _as_matrix("query", query)
    k, _ = _as_matrix("keys", keys)
    q_labels = ("s0",) if squeeze else _labels("s", len(q), start=0)
    title = f"Seq2Seq attention ({score} score): decoder state s0 attends to encoder states h_j"
    ex = explain(
        query, keys, values, score=score, query_labels=q_labels, key_labels=_labels("h", len(k)),
        title=title, example="seq2seq", **kwargs,
    )  # fmt: skip
    steps = list(ex.steps)
    steps[0] = _replace(steps[0], title="Query: decoder state s0", formula="q = s0 (previous decoder state)")
    keys_formula = "k_j = h_j (encoder states)" + ("; values v_j = h_j too" if values is None else "")
    steps[1] = _replace(steps[1], title="Keys: encoder hidden states", formula=keys_formula)
    out_i = steps.index(ex.step("output"))
    steps[out_i] = _replace(
        steps[out_i], title="Context vector c1: weighted sum of the encoder states",
        formula="c1 = sum_j alpha_j h_j" if values is None else "c1 = sum_j alpha_j v_j",
    )  # fmt: skip
    return _with_steps(ex, steps)


def explain_self_attention(
    x: Tensor | Sequence[Any] | None = None,
    *,
    tokens: Sequence[str] | None = None,
    d_model: int = 4,
    d_k: int | None = None,
    seed: int = 0,
) -> Explanation:
    """Single-head self-attention, ``Z = softmax(Q K^T / sqrt(d_k)) V``, every step shown.

    Steps: ``X``, ``W^Q``, ``W^K``, ``W^V``, ``Q = X W^Q``, ``K = X W^K``, ``V = X W^V``,
    ``Q K^T``, ``Q K^T / sqrt(d_k)``, ``A = softmax(...)``, ``Z = A V``.

    Args:
        x: the inputs ``(n, d_model)``; default a seeded example with entries in {0, 1, 2}.
        tokens: labels of the ``n`` positions (their number sets ``n`` when ``x`` is None,
            default 3 tokens ``x1, x2, x3``).
        d_model, d_k: sizes (``d_k = d_v``, default ``d_model`` as with one head).
        seed: seeds ``X`` (when not given) and the projections (entries in {-1, 0, 1}).
    """
    g = torch.Generator().manual_seed(seed)
    X, labels, d_k = _self_attention_input(x, tokens, d_model, d_k, g)
    n, d_model = X.shape
    W_q, W_k, W_v = (torch.randint(-1, 2, (d_model, d_k), generator=g).to(_DTYPE) for _ in range(3))
    Q, K, V = X @ W_q, X @ W_k, X @ W_v  # (n, d_k): the projections of the article's step 2

    scale = 1.0 / math.sqrt(d_k)
    raw = _scores.dot(Q, K)  # Q K^T
    scaled = _scores.scaled_dot(Q, K, scale)  # Q K^T / sqrt(d_k)
    core = _compute(Q, K, V, "scaled_dot", {}, scale)
    if not torch.allclose(scaled, core.scaled, rtol=0, atol=_CHECK_TOL):  # pragma: no cover
        raise RuntimeError("explain: scaled_dot and dot * scale disagree; this is a bug in qkv")
    core.scores, core.scaled = raw, scaled

    dm, dk = _dims(d_model), _dims(d_k)
    steps = [
        Step("x", "Input X: one row per token", "X: (n, d_model)", X, labels, dm),
        Step("W_q", "Query weights W^Q (seeded)", "W^Q: (d_model, d_k)", W_q, dm, dk),
        Step("W_k", "Key weights W^K (seeded)", "W^K: (d_model, d_k)", W_k, dm, dk),
        Step("W_v", "Value weights W^V (seeded)", "W^V: (d_model, d_v)", W_v, dm, dk),
        Step("query", "Queries Q = X W^Q", "q_i = x_i W^Q: what token i looks for", Q, labels, dk),
        Step("keys", "Keys K = X W^K", "k_j = x_j W^K: what token j offers to be matched on", K, labels, dk),
        Step("values", "Values V = X W^V", "v_j = x_j W^V: what token j contributes", V, labels, dk),
    ]
    steps += _attention_steps(
        core, score="scaled_dot", scale=scale, scale_text=f"1/sqrt({d_k})", q_rows=labels, k_rows=labels,
        v_cols=dk, squeeze=False, score_formula="Scores = Q K^T, s_ij = q_i . k_j",
        scaled_formula=f"Scaled = Q K^T / sqrt(d_k) = Q K^T / sqrt({d_k}) = Q K^T * {scale:.6g}",
        weights_formula="A = softmax(Q K^T / sqrt(d_k)), row by row",
        output_formula="Z = A V: z_i = sum_j a_ij v_j",
        output_title="Output Z = A V: each token's new representation",
    )  # fmt: skip
    steps[-4] = _replace(steps[-4], title="Scores Q K^T: every query against every key")
    return Explanation(
        example="self_attention",
        title=f"Self-attention, step by step ({n} tokens, d_model = {d_model}, d_k = {d_k})",
        score="scaled_dot",
        scale=scale,
        steps=tuple(steps),
        inputs={"x": X, "query": Q, "keys": K, "values": V},
        parameters={"w_q": W_q, "w_k": W_k, "w_v": W_v},
        scores=core.scores,
        scaled_scores=core.scaled,
        weights=core.weights,
        output=core.output,
        backend=core.backend,
        max_abs_diff=core.max_abs_diff,
        tokens=labels,
    )


def explain_kernel_regression(
    query: float | Sequence[float] | Tensor = KERNEL_QUERY,
    keys: Sequence[float] | Tensor = KERNEL_KEYS,
    values: Sequence[float] | Tensor = KERNEL_VALUES,
    *,
    sigma: float = 1.0,
) -> Explanation:
    """Nadaraya-Watson kernel regression as attention (the waist/weight example).

    ``f(x) = sum_i softmax_i(-(x - x_i)^2 / (2 sigma^2)) y_i``: keys are the known waists
    ``x_i``, values their weights ``y_i``, the query the new waist ``x``. Waist 57 lies halfway
    between 56 and 58, so both get weight 0.5 and the prediction is ``(43 + 48) / 2 = 45.5``.

    Args:
        query: one number or several (one prediction each); keys, values: numbers, same count.
        sigma: the kernel width (> 0).
    """
    xq, xk, yv, squeeze = _kernel_regression_inputs(query, keys, values, sigma)
    core = _compute(xq, xk, yv, "gaussian", {"sigma": float(sigma)}, 1.0)

    q_rows = tuple(f"x={_short(float(t))}" for t in xq[:, 0])
    k_rows = tuple(f"x{i}={_short(float(t))}" for i, t in enumerate(xk[:, 0], 1))
    out = core.output[:, 0]  # (Tq,)

    def sq(t: Tensor) -> Tensor:
        return t[0] if squeeze else t

    diffs = xq - xk.T  # (Tq, Tk): x - x_i, shown to read the scores
    steps = [
        Step(
            "query",
            "Query: the new waist x",
            "x (what we want a weight for)",
            sq(xq[:, 0]),
            None,
            ("x",) if squeeze else _labels("q", len(xq)),
        ),
        Step("keys", "Keys: known waists x_i", "x_i", xk[:, 0], None, _labels("x", len(xk))),
        Step("values", "Values: their weights y_i", "y_i", yv[:, 0], None, _labels("y", len(yv))),
        Step("sigma", "Kernel width", "sigma", torch.tensor(float(sigma), dtype=_DTYPE)),
        Step("differences", "Differences x - x_i", "x - x_i", sq(diffs), q_rows, k_rows),
    ]
    steps += _attention_steps(
        core, score="gaussian", scale=1.0, scale_text="1", q_rows=q_rows, k_rows=k_rows, v_cols=("y",),
        squeeze=squeeze, score_formula=f"e_i = -(x - x_i)^2 / (2 sigma^2), sigma = {_short(sigma)}",
        scaled_formula="s_i = e_i * scale, scale = 1",
        weights_formula="alpha_i = exp(s_i) / sum_k exp(s_k)  (Gaussian kernel, normalized)",
        output_formula="f(x) = sum_i alpha_i y_i",
        output_title="Prediction: kernel-weighted average of the y_i",
    )  # fmt: skip
    steps[-1] = _replace(steps[-1], value=sq(out), rows=None, cols=q_rows)
    return Explanation(
        example="kernel_regression",
        title="Kernel regression (Nadaraya-Watson) as attention: predict weight from waist",
        score="gaussian",
        scale=1.0,
        steps=tuple(steps),
        inputs={"query": sq(xq[:, 0]), "keys": xk[:, 0], "values": yv[:, 0]},
        parameters={"sigma": float(sigma)},
        scores=sq(core.scores),
        scaled_scores=sq(core.scaled),
        weights=sq(core.weights),
        output=out,
        backend=core.backend,
        max_abs_diff=core.max_abs_diff,
    )


def explain_pooling(*, length: int = 4, units: int = 3, seed: int = 0) -> Explanation:
    """The article's attention pooling layer step by step, its trap side by side.

    ``Q = K = X W`` (one ``W``), ``S = Q K^T`` (unscaled), ``A = softmax(S)`` per query over
    the sequence, ``w_t = mean_i A[i, t]``, ``out = sum_t w_t x_t + b``: what
    ``qkv.AttentionPooling(units)`` computes (see its docstring for how this reads the
    article's Keras code). The trap: the article's ``call`` runs the softmax only when
    ``training`` is false, so training sees ``w_t = mean_i S[i, t]``; the last steps show both
    outputs and their difference.

    Args:
        length, units: the sizes of the seeded ``X`` ``(length, units)``; ``X``, ``W`` and
            ``b`` are small seeded numbers rounded to one decimal.
        seed: seeds ``X``, ``W`` and ``b``.
    """
    g = torch.Generator().manual_seed(seed)
    X = _seeded((_check_size("length", length), _check_size("units", units)), g) * 2  # (T, U)
    W, b = _seeded((units, units), g), _seeded((units,), g)
    Q = X @ W  # (T, U); K is the same tensor: one W for both
    S = Q @ Q.T  # (T, T), symmetric
    core = _compute(Q, Q, X, "dot", {}, 1.0)
    w_soft = core.weights.mean(0)  # (T,): the mean over the queries
    w_raw = S.mean(0)  # the trap's training-mode "weights": no softmax
    out, out_train = w_soft @ X + b, w_raw @ X + b  # (U,)
    raw = attention(Q, Q, X, score="dot", scale=1.0, backend="reference", normalize=lambda z, m: z)
    diff = max(core.max_abs_diff, float((core.output.mean(0) + b - out).abs().max()),
               float((raw.out.mean(0) + b - out_train).abs().max()))  # fmt: skip
    if not diff <= _CHECK_TOL:  # pragma: no cover
        raise RuntimeError(f"explain: pooling differs from qkv.attention by {diff:.3e}; this is a bug in qkv")
    pos, dims = _labels("x", length), _dims(units)
    both = ("inference (softmax)", "training (raw scores)", "difference")
    steps = [
        Step("x", "Input X: one row per position", "X: (T, units), a Dense layer's output in the article", X, pos, dims),
        Step("w", "Weight W (seeded), shared by Q and K", "W: (units, units)", W, dims, dims),
        Step("bias", "Bias b (seeded; the article starts it at 0)", "b: (units,)", b, None, dims),
        Step("query", "Queries = keys: Q = K = X W", "q_t = k_t = x_t W (one W for both)", Q, pos, dims),
        Step("scores", "Scores S = Q K^T, unscaled", "s_it = q_i . k_t (symmetric: s_it = s_ti)", S, pos, pos),
        Step("weights", "Softmax over the sequence", "a_it = exp(s_it) / sum_j exp(s_ij)", core.weights, pos, pos,
             "each row sums to 1; S is symmetric, so the article's axis=1 gives the same distributions"),
        Step("pool_weights", "One weight per position: the mean over the queries", "w_t = mean_i a_it",
             w_soft, None, pos, "sums to 1"),
        Step("output", "Output: weighted sum of the inputs plus the bias", "out = sum_t w_t x_t + b", out, None, dims),
        Step("trap_weights", "The trap: in training the article skips the softmax", "w_t = mean_i s_it (raw)",
             w_raw, None, pos, "`if not training: scores = softmax(scores)`: training never normalizes"),
        Step("trap", "Training output vs inference output, same weights", "out = sum_t w_t x_t + b, each w",
             torch.stack([out, out_train, out_train - out]), both, dims,
             "the model is fitted on the second row and predicts with the first"),
    ]  # fmt: skip
    return Explanation(
        example="pooling",
        title=f"Attention pooling (the article's layer), step by step ({length} positions, {units} units)",
        score="dot", scale=1.0, steps=tuple(steps), inputs={"x": X},
        parameters={"w": W, "b": b}, scores=S, scaled_scores=S, weights=core.weights, output=out,
        backend=core.backend, max_abs_diff=diff, tokens=pos,
    )  # fmt: skip


def _check_size(name: str, n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 16:
        raise ValueError(f"{name}: expected an int from 1 to 16, got {n!r}")
    return n


def _short(x: float) -> str:
    return f"{x:g}"


def _replace(step: Step, **changes: Any) -> Step:
    return replace(step, **changes)


def _with_steps(ex: Explanation, steps: list[Step]) -> Explanation:
    return replace(ex, steps=tuple(steps))
