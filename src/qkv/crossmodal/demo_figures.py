"""The pictures and page pieces of ``qkv demo cross-modal``: a caption with, per word, its
attention over the strip; a matcher's similarity matrix; PNGs inlined as data URIs, tables.

The figures use :func:`qkv.viz.image_overlay` and :func:`qkv.viz.heatmap` (matplotlib, the
``viz`` extra); each drawing function returns ``None`` when matplotlib is missing, and the page
says so instead of showing it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["caption_figure", "inline_png", "similarity_figure", "table_html"]

#: Inches per attention row of a caption figure (a strip is four times wider than high).
_ROW = 0.9


def caption_figure(strip: Tensor, words: Sequence[str], attention: Tensor, grid: tuple[int, int], *,
                   title: str, path: Path) -> Path | None:  # fmt: skip
    """The strip ``(C, H, W)`` alone, then one overlay per generated word: its attention
    ``(len(words), h * w)`` over the ``grid`` of patches (row-major), all on one colour scale
    from 0 to 1. Writes ``path`` (a PNG) and returns it; ``None`` without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from ..viz import image_overlay
    except ImportError:
        return None
    if attention.shape != (len(words), grid[0] * grid[1]):
        raise ValueError(f"attention: expected ({len(words)} words, {grid[0] * grid[1]} patches), "
                         f"got {tuple(attention.shape)}")  # fmt: skip
    fig = Figure(figsize=(4.2, _ROW * (len(words) + 1) + 0.3), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(words) + 1, 1, squeeze=False)[:, 0]
    blank = torch.zeros(grid)
    image_overlay(strip, blank, ax=axes[0], alpha=0.0, colorbar=False, title=title, vmin=0.0, vmax=1.0)
    for i, (ax, word) in enumerate(zip(axes[1:], words), 1):
        image_overlay(strip, attention[i - 1].reshape(grid), ax=ax, alpha=0.6, colorbar=False,
                      title=f"{i}. {word}", vmin=0.0, vmax=1.0)  # fmt: skip
    fig.savefig(path, format="png", dpi=100)
    return path


def similarity_figure(similarity: Tensor, strips: Sequence[str], captions: Sequence[str], *,
                      path: Path) -> Path | None:  # fmt: skip
    """The cosine similarities ``(strips, captions)`` as an annotated heatmap, rows named by the
    strips' own captions. Writes ``path`` (a PNG) and returns it; ``None`` without matplotlib."""
    from ..viz import heatmap

    try:
        heatmap(similarity, [f"strip: {s}" for s in strips], list(captions), annotate=True, cmap="viridis",
                title="cosine similarity, strips x captions", path=path)  # fmt: skip
    except ImportError:
        return None
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
