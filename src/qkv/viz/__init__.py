"""Seeing attention: static figures (matplotlib) and one self-contained offline HTML viewer.

Everything here takes tensors, numpy arrays or nested lists plus token strings; nothing imports
a model, nothing touches the network. matplotlib is imported only when a figure is drawn
(``pip install 'qkv[viz]'``); the HTML viewer needs nothing beyond torch.

Figures (:mod:`qkv.viz.heatmap`): :func:`heatmap`, :func:`grid`, :func:`alignment`,
:func:`kernel_regression`, :func:`mask`.
Viewer (:mod:`qkv.viz.html`): :func:`render_html`, :func:`save_html`.
Text: :func:`visible_text` writes bidi control characters (U+202E, ...) as ``⟨U+202E⟩``; the
figures and the viewer show every token and title through it.

Note: ``qkv.viz.heatmap`` is the function; its module is reached with
``from qkv.viz.heatmap import grid`` (or ``sys.modules["qkv.viz.heatmap"]``).
"""

from ._inputs import visible_text
from .heatmap import alignment, grid, heatmap, kernel_regression, mask
from .html import render_html, save_html

__all__ = [
    "alignment",
    "grid",
    "heatmap",
    "kernel_regression",
    "mask",
    "render_html",
    "save_html",
    "visible_text",
]
