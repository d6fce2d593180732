"""The pictures and page pieces of ``qkv demo cross-modal``: a caption with, per word, its
attention over the strip; a matcher's similarity matrix; a clip's frames with a question's
attention over them; PNGs inlined as data URIs, tables.

The figures use :func:`qkv.viz.image_overlay` and :func:`qkv.viz.heatmap` on a matplotlib
figure outside pyplot (the ``viz`` extra); each drawing function returns ``None`` when
matplotlib is missing, and the page says so instead of showing it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["caption_figure", "clip_figure", "inline_png", "similarity_figure", "table_html"]

#: Inches per attention row of a caption figure (a strip is four times wider than high).
_ROW = 0.9


def _agg_figure(figsize: tuple[float, float]):
    """A matplotlib figure outside pyplot (ImportError without matplotlib)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def caption_figure(strip: Tensor, words: Sequence[str], attention: Tensor, grid: tuple[int, int], *,
                   title: str, path: Path) -> Path | None:  # fmt: skip
    """The strip ``(C, H, W)`` alone, then one overlay per generated word: its attention
    ``(len(words), h * w)`` over the ``grid`` of patches (row-major), all on one colour scale
    from 0 to 1. Writes ``path`` (a PNG) and returns it; ``None`` without matplotlib.

    Raises:
        ValueError: ``attention`` is not ``(len(words), h * w)``.
    """
    if attention.shape != (len(words), grid[0] * grid[1]):
        raise ValueError(f"attention: expected ({len(words)} words, {grid[0] * grid[1]} patches), "
                         f"got {tuple(attention.shape)}")  # fmt: skip
    from ..viz import image_overlay

    try:
        fig = _agg_figure((3.6, _ROW * (len(words) + 1) + 0.5))
    except ImportError:
        return None
    axes = fig.subplots(len(words) + 1, 1, squeeze=False)[:, 0]
    image_overlay(strip, torch.zeros(grid), ax=axes[0], alpha=0.0, colorbar=False, vmin=0.0, vmax=1.0)
    axes[0].set_title(title, fontsize=9)
    for i, (ax, word) in enumerate(zip(axes[1:], words), 1):
        image_overlay(
            strip, attention[i - 1].reshape(grid), ax=ax, alpha=0.7, colorbar=False, vmin=0.0, vmax=1.0
        )
        ax.set_title(f"{i}. {word}", fontsize=9)
    fig.savefig(path, format="png", dpi=100)
    return path


def similarity_figure(
    images: Tensor, similarity: Tensor, captions: Sequence[str], *, path: Path
) -> Path | None:
    """Strips ``(n, 1, H, W)`` stacked on the left, numbered; on the right their cosine
    similarities ``(n, n)`` with the captions ``n`` (caption ``j`` is strip ``j``'s), annotated.
    Writes ``path`` (a PNG) and returns it; ``None`` without matplotlib."""
    from ..viz import heatmap

    try:
        fig = _agg_figure((8.0, 4.2))
    except ImportError:
        return None
    n, _, h, w = images.shape
    gap = torch.ones(n, 1, 2, w)  # (n, 1, 2, W) white lines between the strips
    montage = torch.cat([images, gap], dim=2).reshape(n * (h + 2), w)[: n * (h + 2) - 2]  # (n*(H+2)-2, W)
    left, right = fig.subplots(1, 2, width_ratios=[1, 2.2])
    left.imshow(montage.numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    left.set_yticks([i * (h + 2) + h / 2 - 0.5 for i in range(n)], [str(i + 1) for i in range(n)])
    left.set_xticks([])
    left.set_title("test strips", fontsize=10)
    heatmap(similarity, [str(i + 1) for i in range(n)], list(captions), ax=right, annotate=True,
            title="cosine similarity: strip x caption")  # fmt: skip
    fig.savefig(path, format="png", dpi=100)
    return path


def clip_figure(
    frames: Tensor, weights: Tensor, gold: Sequence[int], *, title: str, path: Path
) -> Path | None:
    """A clip's real frames ``(F, 1, S, S)`` side by side, each over a bar of the question's
    attention on it ``(F,)`` (0 to 1; the gold frames' bars in orange, the others in grey).
    Writes ``path`` (a PNG) and returns it; ``None`` without matplotlib.

    Raises:
        ValueError: ``weights`` is not ``(F,)``.
    """
    f = frames.shape[0]
    if weights.shape != (f,):
        raise ValueError(f"weights: expected ({f},), one per frame, got {tuple(weights.shape)}")
    try:
        fig = _agg_figure((0.62 * f + 0.6, 1.9))
    except ImportError:
        return None
    top, bottom = fig.subplots(2, 1, height_ratios=[1, 1.1])
    side = frames.shape[-1]
    gap = torch.zeros(side, 2)  # white columns between the frames (ink is dark: gray_r)
    strip = torch.cat([torch.cat([fr[0], gap], 1) for fr in frames], 1)[:, :-2]  # (S, F*(S+2)-2)
    top.imshow(strip.numpy(), cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    top.set_axis_off()
    top.set_title(title, fontsize=9)
    colours = ["tab:orange" if t in gold else "tab:gray" for t in range(f)]
    bottom.bar(range(f), weights.tolist(), color=colours)
    bottom.set_xlim(-0.5, f - 0.5)
    bottom.set_ylim(0.0, 1.0)
    bottom.set_xticks(range(f), [str(t + 1) for t in range(f)], fontsize=8)
    bottom.tick_params(axis="y", labelsize=7)
    fig.savefig(path, format="png", dpi=100)
    return path


def inline_png(path: Path, alt: str) -> str:
    """An ``<img>`` holding the PNG at ``path`` as a base64 data URI: the page needs no other file."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table_html(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table: floats with 3 decimals, every cell escaped."""

    def cell(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>"
