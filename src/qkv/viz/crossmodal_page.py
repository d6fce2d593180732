"""The viewer's cross-modal page: one self-contained HTML file to see where a captioner looked
for each word it wrote.

The image is drawn with its patch grid and the caption's words above it. Hover a word (click
to pin it) to lay its attention over the patches; hover a patch (click to pin it) to colour the
words by the weight each gave that patch. Layer and head selectors pick one cross-attention
map or the mean of the heads (a Transformer decoder has several; Show, Attend and Tell one).
Like the other pages (:mod:`qkv.viz.html`, :mod:`qkv.viz.image_page`) it needs nothing but
itself: JavaScript and CSS inlined from the package's ``templates/``, no network.

Data contract
-------------

- ``image``: ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)``; uint8 pixels, floats in ``[0, 1]`` or
  normalized floats (rescaled from their own range); embedded as uint8.
- ``attention``: each word's weights over the patches, per layer ``(heads, n, N)``: a list
  over layers of ``(heads, n, N)`` or ``(B, heads, n, N)`` (batch ``batch_index``), one array
  ``(L, heads, n, N)``, or ``(n, N)`` for one map; ``n`` words, ``N = h * w`` patches read row
  by row (no prefix token); finite; 16-bit quantized per head as in the other pages.
- ``words``: the ``n`` words, shown as text (never as markup).
- ``grid``: ``(h, w)``; default inferred from the image with square patches.

Test hook: ``window.qkvViewer`` (``ready``, ``mode`` = ``"crossmodal"``, ``draws``, ``timings``,
``state()``, ``setLayer/setHead/setWord/setPatch/setOpacity``, ``shownMap()`` (the ``N``
weights of the shown word), ``wordWeights()`` (the ``n`` weights on the shown patch, or null),
``weight(layer, head, word, patch)``, ``patchCenter(row, col)``, ``wordCenter(i)``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ._inputs import labels, stack_layers, visible_text
from ._page import image_payload, quantize, render_page
from ._patches import check_grid

__all__ = ["render_crossmodal_html", "save_crossmodal_html"]


def _attention_payload(attention: object, words: int, batch_index: int) -> dict:
    w = stack_layers("attention", attention, batch_index=batch_index)  # (L, heads, n, N)
    if min(w.shape) == 0:
        raise ValueError(
            f"attention: expected at least one layer, head, word and patch, got {tuple(w.shape)}"
        )
    if w.shape[2] != words:
        raise ValueError(f"attention: expected one row per word ({words} words), got {w.shape[2]} rows "
                         f"in {tuple(w.shape)}")  # fmt: skip
    bad = ~torch.isfinite(w)
    if bad.any():
        layer, head = (int(i) for i in bad.nonzero()[0][:2])
        raise ValueError(f"attention: non-finite weight (NaN or inf) in layer {layer}, head {head}")
    lo, hi, blob = quantize(w)
    return {"layers": w.shape[0], "heads": w.shape[1], "words": w.shape[2], "patches": w.shape[3],
            "lo": lo, "hi": hi, "data": blob}  # fmt: skip


def _payload(image, attention, words, *, grid=None, title: str, batch_index: int = 0) -> dict:
    """The JSON the cross-modal page embeds (see the module docstring for the contract)."""
    shown = [visible_text(w) for w in labels("words", words)]
    if not shown:
        raise ValueError("words: expected at least one word, got none")
    picture = image_payload(image)
    weights = _attention_payload(attention, len(shown), batch_index)
    size = (picture["height"], picture["width"])
    h, w = check_grid(grid, weights["patches"], size, what=f" (N={weights['patches']} patches)")
    return {"version": 1, "mode": "crossmodal", "title": str(title), "image": picture,
            "grid": {"h": h, "w": w}, "words": shown, "attention": weights}  # fmt: skip


def render_crossmodal_html(
    image,
    attention,
    words,
    *,
    grid: tuple[int, int] | None = None,
    title: str = "qkv cross-modal attention",
    batch_index: int = 0,
) -> str:
    """The cross-modal page as a string (see the module docstring for the data contract).

    Args:
        image: ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)`` pixels.
        attention: ``(L, heads, n, N)`` weights (or a list over layers, or one ``(n, N)`` map).
        words: the ``n`` words.
        grid: the patch grid ``(h, w)``, ``h * w = N``; default inferred (square patches).
        title: page title (shown as text, never as markup).
        batch_index: which batch element to show when the weights carry a batch dim.

    Raises:
        ValueError: shapes that disagree (the message names the argument), no words,
            non-finite weights.
        TypeError: inputs that are not arrays, ``words`` not a sequence of strings.
    """
    payload = _payload(image, attention, words, grid=grid, title=title, batch_index=batch_index)
    return render_page("crossmodal.html", title=title, css=["viewer.css", "image.css", "crossmodal.css"],
                       js=["common.js", "crossmodal.js"], payload=payload)  # fmt: skip


def save_crossmodal_html(path: str | Path, image, attention, words, **kwargs) -> Path:
    """Write :func:`render_crossmodal_html` ``(image, attention, words, **kwargs)`` to ``path``.

    Raises:
        ValueError: ``path`` does not end in ``.html`` or ``.htm`` (and what
            :func:`render_crossmodal_html` raises).
    """
    p = Path(path)
    if p.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"path: expected a file name ending in .html or .htm, got {str(path)!r}")
    p.write_text(render_crossmodal_html(image, attention, words, **kwargs), encoding="utf-8")
    return p
