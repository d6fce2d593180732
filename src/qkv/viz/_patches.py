"""Images and their patch grids as :mod:`qkv.viz` receives them, turned into tensors.

A vision transformer cuts an ``(H, W)`` image into an ``(h, w)`` grid of patches of
``(H // h, W // w)`` pixels, read row by row (patch ``r * w + c`` is row ``r``, column ``c``),
and puts ``prefix`` tokens (the class token, registers) before them: token ``t >= prefix`` is
patch ``t - prefix``. Its attention is ``(L, H, T, T)`` with ``T = prefix + h * w``.

Shape legend::

    C  channels (1 or 3)   H, W  image pixels   h, w  patch grid   T  tokens   L  layers
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._inputs import as_float, stack_layers

__all__ = ["as_image", "check_grid", "patch_maps", "upsample_map"]


def _is_integer(value: object) -> bool:
    if isinstance(value, Tensor):
        return not (value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool)
    kind = getattr(getattr(value, "dtype", None), "kind", "")
    return kind in ("u", "i")


def as_image(name: str, value: object) -> Tensor:
    """An image as a ``(C, H, W)`` float64 tensor in ``[0, 1]``, ``C`` = 1 (grayscale) or 3 (RGB).

    Accepted: ``(H, W)`` or ``(1, H, W)`` grayscale, ``(3, H, W)`` RGB; integer pixels in
    ``0..255`` (divided by 255); floats in ``[0, 1]`` as they are, other floats (a normalized
    image) rescaled from their own minimum and maximum to ``[0, 1]``.

    Raises:
        ValueError: another shape (channels last is refused with the permute that fixes it),
            an empty image, non-finite values, integer pixels outside ``0..255``.
    """
    t = as_float(name, value)
    if t.dim() == 2:  # (H, W) -> (1, H, W)
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        hint = ""
        if t.dim() == 3 and t.shape[-1] in (1, 3):
            hint = " (channels last? pass image.permute(2, 0, 1))"
        raise ValueError(
            f"{name}: expected an image of shape (H, W), (1, H, W) or (3, H, W), got {tuple(t.shape)}{hint}"
        )
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise ValueError(f"{name}: expected at least one pixel, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: expected finite pixel values, got NaN or inf")
    lo, hi = float(t.min()), float(t.max())
    if _is_integer(value):
        if lo < 0 or hi > 255:
            raise ValueError(f"{name}: expected integer pixels in 0..255, got values from {lo:g} to {hi:g}")
        return t / 255.0
    if lo >= 0.0 and hi <= 1.0:
        return t
    return (t - lo) / (hi - lo)


def check_grid(grid: object, patches: int, image_size: tuple[int, int], *, what: str = "") -> tuple[int, int]:
    """The patch grid ``(h, w)`` of ``patches`` patch tokens over an ``(H, W)`` image.

    ``grid=None`` infers it: square patches of side ``p`` with ``(H // p) * (W // p) ==
    patches`` (28x28 pixels, 49 patches -> (7, 7)). ``what`` says where ``patches`` came from,
    for the error message.

    Raises:
        ValueError: the grid does not hold ``patches`` patches or does not tile the image, or
            no square patch size fits (pass ``grid=(h, w)``).
        TypeError: ``grid`` is not two ints.
    """
    height, width = image_size
    if grid is None:
        side = math.isqrt(height * width // patches) if patches > 0 else 0
        if side == 0 or height % side or width % side or (height // side) * (width // side) != patches:
            raise ValueError(
                f"grid: cannot infer the patch grid: {patches} patch tokens{what} do not tile a "
                f"{height}x{width} image with square patches; pass grid=(h, w)"
            )
        return height // side, width // side
    if (
        not isinstance(grid, (tuple, list))
        or len(grid) != 2
        or not all(isinstance(g, int) and not isinstance(g, bool) for g in grid)
    ):
        raise TypeError(f"grid: expected two ints (h, w), got {grid!r}")
    h, w = grid
    if h <= 0 or w <= 0 or h * w != patches:
        raise ValueError(f"grid: expected h * w == {patches} patch tokens{what}, got (h, w) = ({h}, {w})")
    if height % h or width % w:
        raise ValueError(f"grid: ({h}, {w}) patches do not tile the {height}x{width} image evenly")
    return h, w


def upsample_map(
    heatmap: object, size: tuple[int, int], *, smooth: bool = False, name: str = "heatmap"
) -> Tensor:
    """A map over the patches ``(h, w)`` or the pixels ``(H, W)`` as an ``(H, W)`` float64 tensor.

    A patch map is spread over its patches: pixel ``(y, x)`` takes
    ``heatmap[y // (H // h), x // (W // w)]`` (each patch one flat block, what the model saw);
    ``smooth=True`` interpolates bilinearly instead (``align_corners=False``). A pixel map is
    returned as it is.

    Raises:
        ValueError: not 2-D, non-finite values, or a shape that neither equals ``(H, W)`` nor
            divides it.
    """
    m = as_float(name, heatmap)
    height, width = size
    if m.dim() != 2:
        raise ValueError(
            f"{name}: expected a 2-D map of shape (h, w) (patches) or ({height}, {width}) (pixels), "
            f"got {tuple(m.shape)}"
        )
    if not torch.isfinite(m).all():
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    h, w = m.shape
    if (h, w) == (height, width):
        return m
    if h == 0 or w == 0 or h > height or w > width or height % h or width % w:
        raise ValueError(
            f"{name}: expected the patch grid (h, w) dividing the image's ({height}, {width}) or the "
            f"pixel size ({height}, {width}), got {(h, w)}"
        )
    if smooth:
        return torch.nn.functional.interpolate(
            m[None, None], size=(height, width), mode="bilinear", align_corners=False
        )[0, 0]  # (1, 1, h, w) -> (H, W)
    return m.repeat_interleave(height // h, dim=0).repeat_interleave(width // w, dim=1)  # (h, w) -> (H, W)


def patch_maps(
    attention: object,
    image_size: tuple[int, int],
    *,
    query: int = 0,
    prefix: int = 1,
    grid: object = None,
    batch_index: int = 0,
) -> Tensor:
    """One query's attention over the patches, ``(L, H, h, w)``, from weights ``(L, H, T, T)``.

    ``attention`` takes the forms of :func:`qkv.viz.grid` (a list over layers of
    ``(B, H, T, T)``, as :class:`qkv.AttentionMaps` holds them, or one array). The weights on
    the ``prefix`` tokens are left out: the map shows the patches only.

    Raises:
        ValueError: ``prefix`` or ``query`` out of range, a grid that does not fit (see
            :func:`check_grid`), non-finite weights.
    """
    w = stack_layers("attention", attention, batch_index=batch_index)  # (L, H, Tq, T)
    n_tokens = w.shape[3]
    if isinstance(prefix, bool) or not isinstance(prefix, int) or not 0 <= prefix < n_tokens:
        raise ValueError(
            f"prefix: expected an int in [0, {n_tokens}) (tokens before the patches), got {prefix!r}"
        )
    if isinstance(query, bool) or not isinstance(query, int):
        raise TypeError(f"query: expected an int token index, got {type(query).__name__}")
    if not 0 <= query < w.shape[2]:
        raise ValueError(f"query: expected a token index in [0, {w.shape[2]}), got {query}")
    if not torch.isfinite(w).all():
        raise ValueError("attention: expected finite weights, got NaN or inf")
    patches = n_tokens - prefix
    h, wd = check_grid(grid, patches, image_size, what=f" (T={n_tokens} minus prefix={prefix})")
    return w[:, :, query, prefix:].reshape(w.shape[0], w.shape[1], h, wd)  # (L, H, h*w) -> (L, H, h, w)
