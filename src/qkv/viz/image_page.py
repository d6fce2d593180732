"""The viewer's image page: one self-contained HTML file to see where a vision transformer looks.

The image is drawn with its patch grid. Hover a patch to see its attention over the patches
(click to pin it; the Query selector picks the class token or another prefix token), for one
layer and one head or the mean of the heads; or overlay a map given with the data (a rollout, a
Grad-CAM, integrated gradients, ...): the page computes none of them. Like the text page
(:mod:`qkv.viz.html`) it needs nothing but itself: JavaScript and CSS inlined from the package's
``templates/``, no network.

Data contract
-------------

- ``image``: ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)``; uint8 pixels, floats in ``[0, 1]`` or
  normalized floats (rescaled from their own range); embedded as uint8.
- ``attention``: per layer ``(heads, T, T)``: a list over layers of ``(H, T, T)`` or
  ``(B, H, T, T)`` (batch ``batch_index``, as :class:`qkv.AttentionMaps` holds them), or one
  array ``(L, H, T, T)``; finite; 16-bit quantized per head as in the text page.
- ``prefix``: tokens before the patches (the class token, registers); ``T = prefix + h * w``.
- ``grid``: the patch grid ``(h, w)``, patches read row by row; default inferred from the
  image with square patches.
- ``maps``: ``{name: (h, w) map}``, e.g. ``{"rollout": ..., "gradcam": ...}``; finite, any scale.

Test hook: ``window.qkvViewer`` (``ready``, ``mode`` = ``"image"``, ``draws``, ``timings``,
``state()``, ``setLayer/setHead/setQuery/setOverlay/setOpacity``, ``shownMap()`` (the ``h * w``
values overlaid), ``weight(layer, head, i, j)``, ``patchCenter(row, col)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ._inputs import as_float, stack_layers
from ._page import image_payload, quantize, render_page
from ._patches import check_grid

__all__ = ["render_image_html", "save_image_html"]


def _attention_payload(attention: object, batch_index: int) -> dict:
    w = stack_layers("attention", attention, batch_index=batch_index)  # (L, H, T, T)
    if min(w.shape) == 0:
        raise ValueError(f"attention: expected at least one layer, head and token, got {tuple(w.shape)}")
    if w.shape[2] != w.shape[3]:
        raise ValueError(
            f"attention: expected self-attention (heads, T, T) per layer, got {tuple(w.shape[1:])}"
        )
    bad = ~torch.isfinite(w)
    if bad.any():
        layer, head = (int(i) for i in bad.nonzero()[0][:2])
        raise ValueError(f"attention: non-finite weight (NaN or inf) in layer {layer}, head {head}")
    lo, hi, blob = quantize(w)
    return {"layers": w.shape[0], "heads": w.shape[1], "tokens": w.shape[2], "lo": lo, "hi": hi, "data": blob}


def _maps_payload(maps: object, grid: tuple[int, int]) -> list[dict]:
    if maps is None:
        return []
    if not isinstance(maps, Mapping):
        raise TypeError(
            f"maps: expected a mapping from method name to an (h, w) map, got {type(maps).__name__}"
        )
    out = []
    for name, value in maps.items():
        if str(name) == "attention":
            raise ValueError("maps: 'attention' names the page's own overlay; give the map another name")
        m = as_float(f"maps[{name!r}]", value)
        if tuple(m.shape) != grid:
            raise ValueError(f"maps[{name!r}]: expected the patch grid's shape {grid}, got {tuple(m.shape)}")
        if not torch.isfinite(m).all():
            raise ValueError(f"maps[{name!r}]: expected finite values, got NaN or inf")
        out.append({"name": str(name), "values": [round(x, 7) for x in m.flatten().tolist()]})
    return out


def _payload(
    image,
    attention,
    *,
    prefix: int = 1,
    grid=None,
    maps: Mapping | None = None,
    title: str,
    batch_index: int = 0,
) -> dict:
    """The JSON the image page embeds (see the module docstring for the contract)."""
    picture = image_payload(image)
    weights = _attention_payload(attention, batch_index)
    tokens = weights["tokens"]
    if isinstance(prefix, bool) or not isinstance(prefix, int) or not 0 <= prefix < tokens:
        raise ValueError(
            f"prefix: expected an int in [0, {tokens}) (tokens before the patches), got {prefix!r}"
        )
    size = (picture["height"], picture["width"])
    h, w = check_grid(grid, tokens - prefix, size, what=f" (T={tokens} minus prefix={prefix})")
    return {
        "version": 1,
        "mode": "image",
        "title": str(title),
        "image": picture,
        "grid": {"h": h, "w": w},
        "prefix": prefix,
        "attention": weights,
        "maps": _maps_payload(maps, (h, w)),
    }


def render_image_html(
    image,
    attention,
    *,
    prefix: int = 1,
    grid: tuple[int, int] | None = None,
    maps: Mapping | None = None,
    title: str = "qkv image attention",
    batch_index: int = 0,
) -> str:
    """The image page as a string (see the module docstring for the data contract).

    Args:
        image: ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)`` pixels.
        attention: ``(L, H, T, T)`` weights (or a list over layers), ``T = prefix + h * w``.
        prefix: tokens before the patches (1: the class token; 0: none; more: registers).
        grid: the patch grid ``(h, w)``; default inferred (square patches).
        maps: named ``(h, w)`` maps offered as overlays beside the attention.
        title: page title (shown as text, never as markup).
        batch_index: which batch element to show when the weights carry a batch dim.

    Raises:
        ValueError: shapes that disagree (the message names the argument), non-finite values,
            ``prefix`` out of range, a map named ``"attention"``.
        TypeError: inputs that are not arrays, ``maps`` not a mapping.
    """
    payload = _payload(
        image, attention, prefix=prefix, grid=grid, maps=maps, title=title, batch_index=batch_index
    )
    return render_page(
        "image.html",
        title=title,
        css=["viewer.css", "image.css"],
        js=["common.js", "image.js"],
        payload=payload,
    )


def save_image_html(path: str | Path, image, attention, **kwargs) -> Path:
    """Write :func:`render_image_html` ``(image, attention, **kwargs)`` to ``path`` (UTF-8).

    Raises:
        ValueError: ``path`` does not end in ``.html`` or ``.htm`` (and what
            :func:`render_image_html` raises).
    """
    p = Path(path)
    if p.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"path: expected a file name ending in .html or .htm, got {str(path)!r}")
    p.write_text(render_image_html(image, attention, **kwargs), encoding="utf-8")
    return p
