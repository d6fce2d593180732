"""Static attention figures with matplotlib: heatmaps, layer x head grids, alignments, masks.

Every function returns a :class:`matplotlib.figure.Figure`. Figures are built without pyplot
(no window, no global figure list, nothing to close): they render with the Agg canvas, so they
work on a machine without a display. In a notebook the returned figure displays itself; to draw
into a pyplot window or an existing layout pass ``ax=``. ``path=`` saves the figure, the format
taken from the extension (``.png``, ``.svg`` or ``.pdf``).

matplotlib is imported when a figure is drawn (``pip install 'qkv[viz]'``), not by
``import qkv.viz``.

Shape legend (see :mod:`qkv._types`)::

    L   layers    H   heads    Tq  queries (rows)    Tk  keys (columns)
    Ts  source tokens          Tt  target tokens
    N   training points        Nq  queries of a kernel regression
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ._figure import check_path, indices, limits, new_figure, require_matplotlib, save
from ._inputs import as_float, labels, stack_layers, visible_text

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["alignment", "grid", "heatmap", "kernel_regression", "mask"]

# above this many tokens an axis is labelled at every k-th position only
_MAX_TICKS = 64
# inches per token of a heatmap (a cell holds an 11 pt label with room to spare)
_CELL = 0.35
# labels up to this many characters stay horizontal along the x axis
_SHORT_LABEL = 3


def _size(n_rows: int, n_cols: int, extra_width: float = 0.0) -> tuple[float, float]:
    width = min(max(2.0 + _CELL * n_cols + extra_width, 3.5), 16.0)
    height = min(max(1.8 + _CELL * n_rows, 2.8), 16.0)
    return width, height


def _tick_fontsize(count: int) -> float:
    """Points of the token labels of an axis with ``count`` tokens: 11 up to 24 tokens, then
    smaller as the cells shrink (a figure grows to 16 inches at most)."""
    return 11.0 if count <= 24 else 9.0 if count <= 40 else 7.0


def _ticks(
    axis,
    names: list[str] | None,
    count: int,
    *,
    rotate: bool,
    top: bool = False,
    fontsize: float | None = None,
) -> None:
    """Label an axis with token strings (never parsed as mathtext, bidi controls shown as code
    points); every k-th one when many. ``rotate``: x-axis labels longer than 3 characters are
    turned 60 degrees (short ones, digits or symbols, stay level)."""
    if names is None:
        return
    step = max(1, math.ceil(count / _MAX_TICKS))
    positions = list(range(0, count, step))
    shown = [visible_text(names[i]) for i in positions]
    size = _tick_fontsize(count) if fontsize is None else fontsize
    axis.set_ticks(positions)
    if rotate and max(len(t) for t in shown) > _SHORT_LABEL:
        align = "left" if top else "right"
        axis.set_ticklabels(
            shown, rotation=60, ha=align, rotation_mode="anchor", parse_math=False, fontsize=size
        )
    else:
        axis.set_ticklabels(shown, parse_math=False, fontsize=size)


def _draw_matrix(
    ax: Axes,
    weights: torch.Tensor,
    rows: list[str] | None,
    cols: list[str] | None,
    *,
    cmap: str,
    vmin: float,
    vmax: float,
    annotate: bool,
    fontsize: float | None = None,
):
    image = ax.imshow(
        weights.numpy(), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", aspect="auto"
    )
    _ticks(ax.xaxis, cols, weights.shape[1], rotate=True, fontsize=fontsize)
    _ticks(ax.yaxis, rows, weights.shape[0], rotate=False, fontsize=fontsize)
    if rows is None:
        ax.set_yticks([])
    if cols is None:
        ax.set_xticks([])
    if annotate:
        colours = image.cmap(image.norm(weights.numpy()))  # (Tq, Tk, 4)
        for i in range(weights.shape[0]):
            for j in range(weights.shape[1]):
                r, g, b = colours[i, j, :3]
                dark = 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5
                ax.text(
                    j,
                    i,
                    f"{float(weights[i, j]):.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                )
    return image


def heatmap(
    weights,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    cmap: str = "viridis",
    colorbar: bool = True,
    annotate: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    path: str | Path | None = None,
) -> Figure:
    """One attention matrix as a heatmap: query tokens down the side, key tokens along the bottom.

    Args:
        weights: ``(Tq, Tk)`` tensor, numpy array or nested list; row ``i`` is how query ``i``
            spreads its attention over the keys.
        rows: ``Tq`` query token labels (y axis), or ``None`` for no labels.
        cols: ``Tk`` key token labels (x axis, rotated), or ``None``.
        ax: draw into this axes (its figure is returned) instead of a new figure.
        title: axes title.
        cmap: a matplotlib colormap name.
        colorbar: add a colour bar.
        annotate: write each weight (2 decimals) in its cell.
        vmin, vmax: colour range; default ``min(0, min(weights))`` to ``max(weights)``.
        path: save to this ``.png``, ``.svg`` or ``.pdf`` file.

    Raises:
        ValueError: ``weights`` is not 2-D, a label list has the wrong length, or ``path`` has
            another extension.
        ImportError: matplotlib is missing.
    """
    target = check_path(path)
    w = as_float("weights", weights, ndim=2, what="(Tq, Tk)")
    tq, tk = w.shape
    row_names = None if rows is None else labels("rows", rows, tq, what="(one per query row of weights)")
    col_names = None if cols is None else labels("cols", cols, tk, what="(one per key column of weights)")
    auto_lo, auto_hi = limits(w)
    lo = auto_lo if vmin is None else float(vmin)
    hi = auto_hi if vmax is None else float(vmax)
    if ax is None:
        fig = new_figure(_size(tq, tk, 1.0 if colorbar else 0.0))
        ax = fig.add_subplot()
    else:
        require_matplotlib()
        fig = ax.figure
    image = _draw_matrix(ax, w, row_names, col_names, cmap=cmap, vmin=lo, vmax=hi, annotate=annotate)
    if title is not None:
        ax.set_title(visible_text(title))
    if colorbar:
        fig.colorbar(image, ax=ax, shrink=0.9)
    save(fig, target)
    return fig


def grid(
    weights,
    tokens: Sequence[str] | None = None,
    *,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
    batch_index: int = 0,
    cmap: str = "viridis",
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """A layer x head grid of attention matrices with one shared colour scale.

    Args:
        weights: ``(L, H, Tq, Tk)``, or a list over layers of ``(H, Tq, Tk)`` or
            ``(B, H, Tq, Tk)`` (as in :class:`qkv.AttentionMaps`; batch ``batch_index`` is
            drawn).
        tokens: labels for both axes (self-attention, ``Tq == Tk``); or give ``rows`` (``Tq``)
            and ``cols`` (``Tk``). Labels are drawn when an axis has at most 32 tokens.
        layers, heads: which layers and heads to draw (default all), in that order.
        title: figure title.
        path: save to this ``.png``, ``.svg`` or ``.pdf`` file.

    Raises:
        ValueError: bad shapes, label counts, indices out of range, ``tokens`` together with
            ``rows``/``cols``, or a bad ``path`` extension.
    """
    target = check_path(path)
    w = stack_layers("weights", weights, batch_index=batch_index)  # (L, H, Tq, Tk)
    n_layers, n_heads, tq, tk = w.shape
    if tokens is not None:
        if rows is not None or cols is not None:
            raise ValueError("tokens: give either tokens (self-attention) or rows and cols, not both")
        if tq != tk:
            raise ValueError(f"tokens: one list labels both axes, but Tq={tq} != Tk={tk}; give rows and cols")
        rows = cols = tokens
    row_names = None if rows is None else labels("rows", rows, tq, what="(one per query row)")
    col_names = None if cols is None else labels("cols", cols, tk, what="(one per key column)")
    layer_ids = indices("layers", layers, n_layers, "layers")
    head_ids = indices("heads", heads, n_heads, "heads")
    shown = w[layer_ids][:, head_ids]  # (len(layers), len(heads), Tq, Tk)
    lo, hi = limits(shown)
    side = 1.9 if max(tq, tk) <= 32 else 1.5
    fig = new_figure((min(1.5 + side * len(head_ids), 24.0), min(0.8 + side * len(layer_ids), 24.0)))
    axes = fig.subplots(len(layer_ids), len(head_ids), squeeze=False, sharex=True, sharey=True)
    image = None
    label_axes = max(tq, tk) <= 32
    label_size = 8.0 if max(tq, tk) <= 12 else 6.0
    for r, layer in enumerate(layer_ids):
        for c, head in enumerate(head_ids):
            ax = axes[r][c]
            # the axes are shared: every panel sets the same labels (a panel without would clear
            # them for all), and only the outer ones show them
            image = _draw_matrix(
                ax,
                shown[r, c],
                row_names if label_axes else None,
                col_names if label_axes else None,
                cmap=cmap,
                vmin=lo,
                vmax=hi,
                annotate=False,
                fontsize=label_size,
            )
            if r == 0:
                ax.set_title(f"head {head}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=9)
            ax.tick_params(labelleft=c == 0, labelbottom=r == len(layer_ids) - 1)
    fig.colorbar(image, ax=axes, shrink=0.6)
    if title is not None:
        fig.suptitle(visible_text(title))
    save(fig, target)
    return fig


def _pairs(gold, n_source: int, n_target: int) -> list[tuple[int, int]]:
    out = []
    for pair in gold:
        try:
            s, t = pair
        except (TypeError, ValueError) as exc:
            raise ValueError(f"gold: expected (source, target) index pairs, got {pair!r}") from exc
        if not (isinstance(s, int) and isinstance(t, int)) or isinstance(s, bool) or isinstance(t, bool):
            raise TypeError(f"gold: expected int index pairs, got {pair!r}")
        if not (0 <= s < n_source and 0 <= t < n_target):
            raise ValueError(
                f"gold: pair {pair!r} is out of range for {n_source} source and {n_target} target tokens"
            )
        out.append((s, t))
    return out


def alignment(
    weights,
    source_tokens: Sequence[str],
    target_tokens: Sequence[str],
    *,
    gold: Iterable[tuple[int, int]] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    cmap: str = "Blues",
    colorbar: bool = True,
    path: str | Path | None = None,
) -> Figure:
    """A translation's cross-attention: target tokens down the side, source tokens along the top.

    Args:
        weights: ``(Tt, Ts)``, row ``t`` = how target token ``t`` attends over the source.
        source_tokens: ``Ts`` labels; target_tokens: ``Tt`` labels.
        gold: reference alignment as ``(source index, target index)`` pairs, drawn as
            outlined cells (red) so the model's attention can be compared with them.
        path: save to this ``.png``, ``.svg`` or ``.pdf`` file.

    Raises:
        ValueError: shapes or label counts disagree, a gold pair is out of range, bad ``path``.
    """
    target = check_path(path)
    w = as_float("weights", weights, ndim=2, what="(Tt, Ts)")
    n_target, n_source = w.shape
    src = labels("source_tokens", source_tokens, n_source, what="(one per column of weights)")
    tgt = labels("target_tokens", target_tokens, n_target, what="(one per row of weights)")
    pairs = _pairs(gold or (), n_source, n_target)
    fig = heatmap(w, tgt, src, ax=ax, title=title, cmap=cmap, colorbar=colorbar)
    ax = ax if ax is not None else fig.axes[0]
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    _ticks(ax.xaxis, src, n_source, rotate=True, top=True)
    ax.set_xlabel("source", fontsize=11)
    ax.set_ylabel("target", fontsize=11)
    from matplotlib.patches import Rectangle

    for s, t in pairs:
        ax.add_patch(Rectangle((s - 0.5, t - 0.5), 1, 1, fill=False, edgecolor="#d62728", linewidth=2))
    save(fig, target)
    return fig


def _vector(name: str, value, length: int | None, what: str) -> torch.Tensor:
    t = as_float(name, value)
    if t.dim() == 2 and t.shape[1] == 1:  # (N, 1) -> (N,)
        t = t[:, 0]
    if t.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D array ({what}), got shape {tuple(t.shape)}")
    if length is not None and t.shape[0] != length:
        raise ValueError(f"{name}: expected {length} values ({what}), got {t.shape[0]}")
    return t


def kernel_regression(
    x_train,
    y_train,
    x_query,
    y_pred,
    weights,
    *,
    y_true=None,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Nadaraya-Watson regression as attention: the data and fit beside the weight matrix.

    Left: training pairs ``(x_i, y_i)`` (the keys and values), the prediction
    ``f(x) = sum_i alpha(x, x_i) y_i`` at the queries, and the true function when given. Right:
    the weights ``alpha`` ``(Nq, N)``, queries and training points each sorted by position, so
    a good bandwidth shows as a bright diagonal band.

    Args:
        x_train, y_train: ``(N,)`` training inputs (keys) and targets (values).
        x_query, y_pred: ``(Nq,)`` query inputs and predictions.
        weights: ``(Nq, N)`` attention weights of the queries over the training points.
        y_true: ``(Nq,)`` the noise-free function at the queries, drawn dashed.
        path: save to this ``.png``, ``.svg`` or ``.pdf`` file.

    Raises:
        ValueError: a shape disagrees with the others (the message names it), bad ``path``.
    """
    target = check_path(path)
    w = as_float("weights", weights, ndim=2, what="(Nq, N)")
    nq, n = w.shape
    xt = _vector("x_train", x_train, n, "one per column of weights")
    yt = _vector("y_train", y_train, n, "one per training input")
    xq = _vector("x_query", x_query, nq, "one per row of weights")
    yp = _vector("y_pred", y_pred, nq, "one per query")
    ytrue = None if y_true is None else _vector("y_true", y_true, nq, "one per query")
    fig = new_figure((11.0, 4.2))
    left, right = fig.subplots(1, 2, width_ratios=[1.25, 1.0])
    q_order = torch.argsort(xq)
    k_order = torch.argsort(xt)
    left.scatter(
        xt.numpy(), yt.numpy(), s=14, alpha=0.6, color="#ff7f0e", label="training pairs (keys, values)"
    )
    left.plot(xq[q_order].numpy(), yp[q_order].numpy(), color="#1f77b4", lw=2, label="prediction")
    if ytrue is not None:
        left.plot(xq[q_order].numpy(), ytrue[q_order].numpy(), "--", color="#2ca02c", lw=1.5, label="truth")
    left.set_xlabel("x")
    left.set_ylabel("y")
    left.legend(loc="best", fontsize=8)
    image = right.imshow(
        w[q_order][:, k_order].numpy(), cmap="viridis", interpolation="nearest", aspect="auto", vmin=0.0
    )
    right.set_xlabel("training inputs (keys, sorted)")
    right.set_ylabel("queries (sorted)")
    fig.colorbar(image, ax=right, shrink=0.9, label="attention weight")
    if title is not None:
        fig.suptitle(visible_text(title))
    save(fig, target)
    return fig


def _bool_matrix(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
    else:
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"mask: expected a boolean (Tq, Tk) matrix, got {type(value).__name__}") from exc
    if t.dtype != torch.bool:
        raise TypeError(f"mask: expected a boolean (Tq, Tk) matrix (True = may attend), got dtype {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"mask: expected a 2-D (Tq, Tk) matrix, got shape {tuple(t.shape)}")
    return t


def mask(
    mask,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """A boolean attention mask as a figure: dark cells may attend (``True``), light cells may not.

    For a pattern from :mod:`qkv.masks` pass its dense matrix
    (``qkv.masks.materialize(pattern, Tq, Tk)``, reduced to 2-D); the text drawing is
    ``qkv.masks.to_string``.

    Args:
        mask: ``(Tq, Tk)`` bool tensor, numpy array or nested list of bools.
        rows, cols: optional query / key labels.
        title: axes title; default ``"k of n allowed"``.
        path: save to this ``.png``, ``.svg`` or ``.pdf`` file.

    Raises:
        TypeError: ``mask`` is not boolean (a float or int "mask" is refused, not guessed).
        ValueError: not 2-D, wrong label counts, bad ``path``.
    """
    target = check_path(path)
    m = _bool_matrix(mask)
    tq, tk = m.shape
    row_names = None if rows is None else labels("rows", rows, tq, what="(one per query row of mask)")
    col_names = None if cols is None else labels("cols", cols, tk, what="(one per key column of mask)")
    if ax is None:
        fig = new_figure(_size(tq, tk))
        ax = fig.add_subplot()
    else:
        require_matplotlib()
        fig = ax.figure
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(["#eeeeee", "#3b528b"])
    ax.imshow(
        m.to(torch.float64).numpy(), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto"
    )
    _ticks(ax.xaxis, col_names, tk, rotate=True)
    _ticks(ax.yaxis, row_names, tq, rotate=False)
    if row_names is None:
        ax.set_ylabel("query")
    if col_names is None:
        ax.set_xlabel("key")
    if max(tq, tk) <= 64:  # thin white lines between cells
        ax.set_xticks([j - 0.5 for j in range(1, tk)], minor=True)
        ax.set_yticks([i - 0.5 for i in range(1, tq)], minor=True)
        ax.grid(which="minor", color="white", linewidth=0.8)
        ax.tick_params(which="minor", length=0)
    ax.set_title(visible_text(title) if title is not None else f"{int(m.sum())} of {tq * tk} allowed")
    save(fig, target)
    return fig
