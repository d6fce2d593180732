"""Seeing attention: static figures (matplotlib) and one self-contained offline HTML viewer.

Everything here takes tensors, numpy arrays or nested lists plus token strings; nothing imports
a model, nothing touches the network. matplotlib is imported only when a figure is drawn
(``pip install 'qkv[viz]'``); the HTML viewer needs nothing beyond torch.

Figures (:mod:`qkv.viz.heatmap`): :func:`heatmap`, :func:`grid`, :func:`alignment`,
:func:`kernel_regression`, :func:`mask`.
Images (:mod:`qkv.viz.image`): :func:`image_overlay` (one map over an image),
:func:`image_attention_grid` (one query's attention, layers x heads), :func:`image_methods`
(explanations side by side), :func:`image_word_maps` (one overlay per caption word),
:func:`upsample_map` (a patch map spread over the pixels).
Viewer (:mod:`qkv.viz.html`): :func:`render_html`, :func:`save_html`; its image page
(:mod:`qkv.viz.image_page`): :func:`render_image_html`, :func:`save_image_html`; its cross-modal
page (:mod:`qkv.viz.crossmodal_page`: each caption word's attention over the image's patches):
:func:`render_crossmodal_html`, :func:`save_crossmodal_html`.
A figure of one's own (what an application draws beyond these): :func:`new_figure` (an Agg
figure no pyplot state knows about, matplotlib imported then), :func:`figure_path` (a ``.png``,
``.svg`` or ``.pdf`` path checked), :func:`save_figure`.
Text: :func:`visible_text` writes bidi control characters (U+202E, ...) as ``⟨U+202E⟩``; the
figures and the viewer show every token and title through it.

Note: ``qkv.viz.heatmap`` is the function; its module is reached with
``from qkv.viz.heatmap import grid`` (or ``sys.modules["qkv.viz.heatmap"]``).
"""

from ._figure import check_path as figure_path
from ._figure import new_figure
from ._figure import save as save_figure
from ._inputs import visible_text
from .crossmodal_page import render_crossmodal_html, save_crossmodal_html
from .heatmap import alignment, grid, heatmap, kernel_regression, mask
from .html import render_html, save_html
from .image import image_attention_grid, image_methods, image_overlay, image_word_maps, upsample_map
from .image_page import render_image_html, save_image_html

__all__ = [
    "alignment",
    "figure_path",
    "grid",
    "heatmap",
    "image_attention_grid",
    "image_methods",
    "image_overlay",
    "image_word_maps",
    "kernel_regression",
    "mask",
    "new_figure",
    "render_crossmodal_html",
    "render_html",
    "render_image_html",
    "save_crossmodal_html",
    "save_figure",
    "save_html",
    "save_image_html",
    "upsample_map",
    "visible_text",
]
