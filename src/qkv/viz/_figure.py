"""The plumbing every static figure of :mod:`qkv.viz` shares: matplotlib imported on first use,
Agg figures outside pyplot, the output file, colour ranges and index selections."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["DPI", "FORMATS", "check_path", "indices", "limits", "new_figure", "require_matplotlib", "save"]

FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
#: dots per inch of saved figures; shown at 96 CSS px per inch (``width: Win``), a figure's
#: points are the reader's points
DPI = 150


def require_matplotlib():
    """The ``matplotlib`` module, or an ImportError naming the extra that installs it."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("qkv.viz figures need matplotlib: pip install 'qkv[viz]'") from exc
    return matplotlib


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A new Agg-backed figure that no pyplot state knows about."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def check_path(path: str | Path | None) -> Path | None:
    """``path`` as a Path when its extension is a figure format (``.png``, ``.svg``, ``.pdf``)."""
    if path is None:
        return None
    p = Path(path)
    if p.suffix.lower() not in FORMATS:
        raise ValueError(f"path: expected a file name ending in .png, .svg or .pdf, got {str(path)!r}")
    return p


def save(fig: Figure, path: Path | None) -> None:
    """Write ``fig`` to ``path`` (checked by :func:`check_path`) at :data:`DPI`; nothing if None."""
    if path is not None:
        fig.savefig(path, format=FORMATS[path.suffix.lower()], dpi=DPI)


def limits(values: torch.Tensor) -> tuple[float, float]:
    """Colour range: from ``min(0, min)`` to ``max`` (NaN ignored), never empty."""
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return 0.0, 1.0
    lo, hi = min(0.0, float(finite.min())), float(finite.max())
    return lo, (hi if hi > lo else lo + 1.0)


def indices(name: str, chosen: Iterable[int] | int | None, count: int, what: str) -> list[int]:
    """``chosen`` (one int, several, or None = all ``count``) as non-negative indices, checked."""
    if chosen is None:
        return list(range(count))
    if isinstance(chosen, int):
        chosen = [chosen]
    out = []
    for i in chosen:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"{name}: expected int indices, got {type(i).__name__}")
        if not -count <= i < count:
            raise ValueError(f"{name}: index {i} is out of range for {count} {what}")
        out.append(i % count)
    if not out:
        raise ValueError(f"{name}: expected at least one index, got none")
    return out
