"""Attention and explanations over an image, drawn with matplotlib: one overlay, a layer x head
grid of one query's attention, methods side by side, one overlay per caption word.

The image is shown at its own pixels and the map is laid over it with transparency, at the same
pixels: a map over the ``(h, w)`` patch grid is spread over its patches first
(:func:`upsample_map`: each patch one flat block, or bilinear with ``smooth=True``). Every
function returns a :class:`matplotlib.figure.Figure` built without pyplot and saves it when
given ``path=`` (``.png``, ``.svg`` or ``.pdf``), like :mod:`qkv.viz.heatmap`.

Image forms (see :func:`qkv.viz._patches.as_image`): ``(H, W)`` or ``(1, H, W)`` grayscale,
``(3, H, W)`` RGB; uint8 pixels, floats in ``[0, 1]``, or normalized floats (rescaled).

Shape legend::

    C  channels   H, W  image pixels   h, w  patch grid   T  tokens   L  layers
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ._figure import check_path, indices, limits, new_figure, require_matplotlib, save
from ._inputs import as_float, visible_text
from ._patches import as_image, patch_maps, upsample_map

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["image_attention_grid", "image_methods", "image_overlay", "image_word_maps", "upsample_map"]

# inches per panel side of the multi-panel figures
_PANEL = 2.0


def _draw(
    ax: Axes,
    picture: torch.Tensor,
    pixels: torch.Tensor,
    *,
    cmap: str,
    alpha: float,
    vmin: float,
    vmax: float,
):
    """The image (C, H, W) and, over it, the (H, W) map with opacity ``alpha``; no ticks."""
    if picture.shape[0] == 1:
        ax.imshow(picture[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(picture.permute(1, 2, 0).numpy(), interpolation="nearest")  # (3, H, W) -> (H, W, 3)
    layer = ax.imshow(pixels.numpy(), cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return layer


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a number in [0, 1] (the map's opacity), got {alpha!r}")
    return float(alpha)


def image_overlay(
    image,
    heatmap,
    *,
    ax: Axes | None = None,
    alpha: float = 0.5,
    cmap: str = "inferno",
    smooth: bool = False,
    title: str | None = None,
    colorbar: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
    path: str | Path | None = None,
) -> Figure:
    """One map over an image.

    Args:
        image: ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)`` pixels.
        heatmap: the map over the patch grid ``(h, w)`` (``H % h == W % w == 0``) or over the
            pixels ``(H, W)``; e.g. one head's attention of the class token, a rollout, a
            Grad-CAM.
        ax: draw into this axes (its figure is returned) instead of a new figure.
        alpha: opacity of the map (0: the image alone, 1: the map alone).
        cmap: a matplotlib colormap name for the map.
        smooth: interpolate a patch map bilinearly instead of one flat block per patch.
        title: axes title.
        colorbar: add a colour bar for the map.
        vmin, vmax: colour range; default ``min(0, min(map))`` to ``max(map)``.
        path: save to this ``.png``, ``.svg`` or ``.pdf`` file.

    The drawn map is ``fig.axes[0].images[1]``; its array is :func:`upsample_map` of ``heatmap``.

    Raises:
        ValueError: an image or map shape that does not fit (the message names the argument),
            non-finite values, ``alpha`` outside ``[0, 1]``, a bad ``path`` extension.
        ImportError: matplotlib is missing.
    """
    target = check_path(path)
    picture = as_image("image", image)  # (C, H, W)
    pixels = upsample_map(heatmap, tuple(picture.shape[1:]), smooth=smooth)  # (H, W)
    opacity = _check_alpha(alpha)
    auto_lo, auto_hi = limits(pixels)
    lo = auto_lo if vmin is None else float(vmin)
    hi = auto_hi if vmax is None else float(vmax)
    if ax is None:
        height, width = picture.shape[1:]
        side = 4.0
        fig = new_figure((side * width / max(height, width) + (1.0 if colorbar else 0.2), side + 0.4))
        ax = fig.add_subplot()
    else:
        require_matplotlib()
        fig = ax.figure
    layer = _draw(ax, picture, pixels, cmap=cmap, alpha=opacity, vmin=lo, vmax=hi)
    if title is not None:
        ax.set_title(visible_text(title))
    if colorbar:
        fig.colorbar(layer, ax=ax, shrink=0.85)
    save(fig, target)
    return fig


def _query_name(query: int, prefix: int, grid_w: int) -> str:
    if query >= prefix:
        row, col = divmod(query - prefix, grid_w)
        return f"patch ({row}, {col})"
    return "the class token" if query == 0 else f"prefix token {query}"


def image_attention_grid(
    image,
    attention,
    *,
    query: int = 0,
    prefix: int = 1,
    grid: tuple[int, int] | None = None,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
    batch_index: int = 0,
    alpha: float = 0.6,
    cmap: str = "inferno",
    smooth: bool = False,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """A layer x head grid: where one query token looks among the patches, over the image.

    Args:
        image: ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)`` pixels.
        attention: ``(L, H, T, T)`` weights (or a list over layers of ``(B, H, T, T)``, as in
            :class:`qkv.AttentionMaps`; batch ``batch_index`` is drawn), ``T = prefix + h * w``.
        query: the token whose attention is drawn: 0 = the class token (default); a patch
            ``(r, c)`` is token ``prefix + r * w + c`` (outlined in every panel).
        prefix: tokens before the patches (class token, registers); their weights are left out.
        grid: the patch grid ``(h, w)``; default: inferred from the image with square patches.
        layers, heads: which layers and heads to draw (default all), in that order.
        alpha, cmap, smooth: as in :func:`image_overlay`; one colour range for every panel.
        title: figure title; default ``"attention of <the query>"``.
        path: save to this ``.png``, ``.svg`` or ``.pdf`` file.

    Panels: ``fig.axes[r * len(heads) + c]`` is layer ``layers[r]``, head ``heads[c]`` (titled
    ``"head h"`` on the top row, ``"layer l"`` on the left); the colour bar is the last axes.

    Raises:
        ValueError: shapes that do not fit (the message names the argument), ``query``,
            ``prefix`` or indices out of range, a bad ``path`` extension.
    """
    target = check_path(path)
    picture = as_image("image", image)  # (C, H, W)
    size = tuple(picture.shape[1:])
    maps = patch_maps(attention, size, query=query, prefix=prefix, grid=grid, batch_index=batch_index)
    layer_ids = indices("layers", layers, maps.shape[0], "layers")
    head_ids = indices("heads", heads, maps.shape[1], "heads")
    shown = maps[layer_ids][:, head_ids]  # (len(layers), len(heads), h, w)
    lo, hi = limits(shown)
    opacity = _check_alpha(alpha)
    fig = new_figure((0.8 + _PANEL * len(head_ids), 0.6 + _PANEL * len(layer_ids)))
    axes = fig.subplots(len(layer_ids), len(head_ids), squeeze=False)
    grid_h, grid_w = shown.shape[2:]
    layer = None
    for r, layer_id in enumerate(layer_ids):
        for c, head_id in enumerate(head_ids):
            ax = axes[r][c]
            pixels = upsample_map(shown[r, c], size, smooth=smooth, name="attention")
            layer = _draw(ax, picture, pixels, cmap=cmap, alpha=opacity, vmin=lo, vmax=hi)
            if query >= prefix:
                _outline_patch(ax, query - prefix, (grid_h, grid_w), size)
            if r == 0:
                ax.set_title(f"head {head_id}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"layer {layer_id}", fontsize=9)
    fig.colorbar(layer, ax=axes, shrink=0.6)
    fig.suptitle(
        visible_text(title) if title is not None else f"attention of {_query_name(query, prefix, grid_w)}"
    )
    save(fig, target)
    return fig


def _outline_patch(ax: Axes, patch: int, grid: tuple[int, int], size: tuple[int, int]) -> None:
    from matplotlib.patches import Rectangle

    row, col = divmod(patch, grid[1])
    ph, pw = size[0] // grid[0], size[1] // grid[1]
    ax.add_patch(
        Rectangle((col * pw - 0.5, row * ph - 0.5), pw, ph, fill=False, edgecolor="#00e5ff", linewidth=1.5)
    )


def image_methods(
    image,
    maps: Mapping[str, object],
    *,
    show_image: bool = True,
    alpha: float = 0.5,
    cmap: str = "inferno",
    smooth: bool = False,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Explanations of one image side by side, one panel per method, titled by its name.

    Args:
        image: ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)`` pixels.
        maps: ``{method name: map}``, each map ``(h, w)`` over the patches or ``(H, W)`` over
            the pixels (they may differ); e.g. ``{"rollout": ..., "gradcam": ...}``. Each
            panel has its own colour range (methods have their own scales).
        show_image: a first panel with the image alone, titled ``"image"``.
        alpha, cmap, smooth: as in :func:`image_overlay`.
        title: figure title.
        path: save to this ``.png``, ``.svg`` or ``.pdf`` file.

    Raises:
        ValueError: no maps, a map that does not fit the image (named ``maps['<method>']``),
            a bad ``path`` extension.
        TypeError: ``maps`` is not a mapping.
    """
    target = check_path(path)
    if not isinstance(maps, Mapping):
        raise TypeError(f"maps: expected a mapping from method name to map, got {type(maps).__name__}")
    if not maps:
        raise ValueError("maps: expected at least one method's map, got none")
    picture = as_image("image", image)  # (C, H, W)
    size = tuple(picture.shape[1:])
    pixels = {str(k): upsample_map(v, size, smooth=smooth, name=f"maps[{k!r}]") for k, v in maps.items()}
    opacity = _check_alpha(alpha)
    columns = len(pixels) + int(show_image)
    fig = new_figure((0.4 + _PANEL * columns, 0.7 + _PANEL))
    axes = fig.subplots(1, columns, squeeze=False)[0]
    if show_image:
        _draw(
            axes[0], picture, torch.zeros(size, dtype=torch.float64), cmap=cmap, alpha=0.0, vmin=0.0, vmax=1.0
        )
        axes[0].set_title("image", fontsize=10)
    for ax, (method, m) in zip(axes[int(show_image) :], pixels.items(), strict=True):
        lo, hi = limits(m)
        _draw(ax, picture, m, cmap=cmap, alpha=opacity, vmin=lo, vmax=hi)
        ax.set_title(visible_text(method), fontsize=10)
    if title is not None:
        fig.suptitle(visible_text(title))
    save(fig, target)
    return fig


def image_word_maps(
    image,
    maps,
    words,
    *,
    alpha: float = 0.6,
    cmap: str = "inferno",
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """One overlay per word of a caption, stacked top to bottom in the caption's order: where
    each word's attention fell on the image, one colour range for all of them.

    Args:
        image: ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)`` pixels.
        maps: ``(n, h, w)`` over the patch grid (or ``(n, H, W)`` over the pixels), map ``i``
            for word ``i`` (e.g. a captioner's attention per word).
        words: the ``n`` words (panel titles; repeated words are fine).
        alpha, cmap: as in :func:`image_overlay`.
        title: figure title.
        path: save to this ``.png``, ``.svg`` or ``.pdf`` file.

    Panel ``fig.axes[i]`` is word ``i``; the colour bar is the last axes.

    Raises:
        ValueError: no words, not one map per word, a map that does not fit the image, a bad
            ``path`` extension.
    """
    target = check_path(path)
    picture = as_image("image", image)  # (C, H, W)
    size = tuple(picture.shape[1:])
    values = as_float("maps", maps)
    names = [str(w) for w in words]
    if not names or values.dim() != 3 or values.shape[0] != len(names):
        raise ValueError(f"maps: expected one (h, w) map per word, ({len(names)}, h, w) with at least one word, "
                         f"got {tuple(values.shape)}")  # fmt: skip
    pixels = torch.stack(
        [upsample_map(m, size, name=f"maps[{i}]") for i, m in enumerate(values)]
    )  # (n, H, W)
    lo, hi = limits(pixels)
    opacity = _check_alpha(alpha)
    height, width = size
    panel_w = min(8.0, max(2.0, 1.0 * width / max(height, 1)))
    fig = new_figure((panel_w + 1.2, 0.5 + (panel_w * height / width + 0.45) * len(names)))
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    layer = None
    for ax, word, m in zip(axes, names, pixels, strict=True):
        layer = _draw(ax, picture, m, cmap=cmap, alpha=opacity, vmin=lo, vmax=hi)
        ax.set_title(visible_text(word), fontsize=10)
    fig.colorbar(layer, ax=list(axes), shrink=0.8)
    if title is not None:  # wrapped to the figure's width (a caption can be long)
        fig.suptitle(textwrap.fill(visible_text(title), width=int(12 * (panel_w + 1.2))), fontsize=10)
    save(fig, target)
    return fig
