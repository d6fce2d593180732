"""Where an image transformer's patches are: the grid, the prefix tokens, the row to explain.

Shape legend::

    N   images     C   channels     H, W   image height and width (pixels)
    h, w   patch grid (rows, columns)     ph, pw   patch height and width     P   prefix tokens
    T = P + h * w   tokens: the prefix (class token, registers...) first, then the patches row
    by row (patch ``(r, c)`` is token ``P + r * w + c``), as ``Conv2d(...).flatten(2)`` orders them

The grid is read from the model, never from a user's ``reshape_transform``:

- qkv's ViT (:mod:`qkv.models.vit`): its ``patch_size``, ``grid`` and ``num_prefix_tokens``
  (0: no class token, the patches are mean-pooled);
- Hugging Face ViTs (``ViTModel``, ``ViTForImageClassification`` and kin): ``config.patch_size``;
  the prefix is what the tokens hold beyond the patches (``[CLS]``, DeiT's distillation token,
  registers), the class token is token 0;
- timm's ``VisionTransformer``: ``patch_embed.patch_size``, ``num_prefix_tokens``,
  ``global_pool`` (``"avg"``: mean pooling);
- any other model: the one ``Conv2d`` whose kernel equals its stride (the patch embedding), and
  ``P = T - h * w`` from the tokens its attention sees, the class token first when ``P > 0``.

The image fixes ``h = H // ph`` and ``w = W // pw`` (a size the patches do not divide is an
error): models that interpolate their positions work at any size.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["PatchGrid", "check_channels", "check_images", "patch_grid"]


@dataclass(frozen=True)
class PatchGrid:
    """The patch layout of one image size.

    Attributes:
        h, w: patches per column and per row.
        patch: ``(ph, pw)`` pixels per patch.
        prefix: tokens before the patches (0 when not known yet: see :meth:`with_tokens`).
        query: the token whose row is explained (the class token), or ``None`` for a
            mean-pooled model (the mean of the patch rows).
    """

    h: int
    w: int
    patch: tuple[int, int]
    prefix: int
    query: int | None

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` covered by the grid."""
        return self.h * self.patch[0], self.w * self.patch[1]

    @property
    def tokens(self) -> int:
        """``T = prefix + h * w``."""
        return self.prefix + self.h * self.w

    def with_tokens(self, tokens: int, *, known_prefix: bool) -> PatchGrid:
        """This grid checked against the ``tokens`` an attention layer sees; with
        ``known_prefix=False`` the prefix is taken as ``tokens - h * w`` (class token first).

        Raises:
            ValueError: the tokens cannot be prefix + patches.
        """
        if not known_prefix:
            prefix = tokens - self.h * self.w
            if prefix < 0:
                raise ValueError(
                    f"model: its attention sees {tokens} tokens, fewer than the {self.h}x{self.w} patches"
                )
            return PatchGrid(self.h, self.w, self.patch, prefix, 0 if prefix else None)
        if tokens != self.tokens:
            raise ValueError(
                f"model: its attention sees {tokens} tokens, expected {self.prefix} prefix + "
                f"{self.h}x{self.w} patches = {self.tokens}"
            )
        return self

    def rows(self, matrix: Tensor) -> Tensor:
        """The explained row of a token matrix over the patch columns:
        ``(..., T, T) -> (..., h, w)`` (the query's row, or the mean of the patch rows)."""
        p = self.prefix
        row = matrix[..., self.query, :] if self.query is not None else matrix[..., p:, :].mean(dim=-2)
        return self.patches(row)

    def patches(self, tokens: Tensor) -> Tensor:
        """Per-token values as a grid: ``(..., T) -> (..., h, w)``, the prefix dropped."""
        return tokens[..., self.prefix :].unflatten(-1, (self.h, self.w))  # (..., h*w) -> (..., h, w)

    def to_pixels(self, patches: Tensor) -> Tensor:
        """``(..., h, w) -> (..., H, W)``: each patch's value on each of its pixels."""
        ph, pw = self.patch
        return patches.repeat_interleave(ph, dim=-2).repeat_interleave(pw, dim=-1)

    def pool(self, pixels: Tensor) -> Tensor:
        """``(..., H, W) -> (..., h, w)``: the sum over each patch's pixels."""
        ph, pw = self.patch
        return pixels.unflatten(-1, (self.w, pw)).unflatten(-3, (self.h, ph)).sum(dim=(-3, -1))


def _pair(value, what: str) -> tuple[int, int]:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"model: {what} should be a positive int or a pair of them, got {value!r}")
    return pair


def _patch_conv(model: nn.Module) -> nn.Conv2d | None:
    """The one ``Conv2d`` with ``kernel_size == stride`` (a patch embedding), if there is one."""
    convs = [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == m.stride and m.kernel_size != (1, 1)
    ]
    return convs[0] if len(convs) == 1 else None


def _patch_embedding(model: nn.Module) -> tuple[int, int] | None:
    """The patch size of the model's patch-embedding ``Conv2d``."""
    conv = _patch_conv(model)
    return tuple(conv.kernel_size) if conv is not None else None


def check_channels(model: nn.Module, channels: int) -> None:
    """Raise ``ValueError`` when the model's patch embedding reads another number of channels."""
    conv = _patch_conv(model)
    if conv is not None and conv.in_channels != channels:
        raise ValueError(
            f"images: {type(model).__name__} takes {conv.in_channels}-channel images, got {channels} channels"
        )


def _model_layout(model: nn.Module) -> tuple[tuple[int, int], int | None, bool]:
    """``(patch size, prefix or None when read from the tokens, mean pooled)``.

    Raises:
        ValueError: no rule finds the patch size.
    """
    if hasattr(model, "grid") and hasattr(model, "num_prefix_tokens") and hasattr(model, "patch_size"):
        # qkv's ViT: a class token, or none and the patches mean-pooled
        return _pair(model.patch_size, "patch_size"), int(model.num_prefix_tokens), False
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "patch_size") and hasattr(config, "image_size"):
        return _pair(config.patch_size, "config.patch_size"), None, False
    embed = getattr(model, "patch_embed", None)
    if embed is not None and hasattr(embed, "patch_size") and hasattr(model, "num_prefix_tokens"):
        pooled = getattr(model, "global_pool", "token") == "avg"
        return _pair(embed.patch_size, "patch_embed.patch_size"), int(model.num_prefix_tokens), pooled
    patch = _patch_embedding(model)
    if patch is not None:
        return patch, None, False
    raise ValueError(
        f"model: cannot find the patch grid of {type(model).__name__}: expected qkv's ViT "
        "(patch_size, grid, num_prefix_tokens), a Hugging Face ViT (config.patch_size), timm's "
        "VisionTransformer (patch_embed.patch_size, num_prefix_tokens) or one Conv2d patch "
        "embedding (kernel_size == stride)"
    )


def patch_grid(model: nn.Module, image_size: tuple[int, int]) -> tuple[PatchGrid, bool]:
    """The patch grid of ``model`` on images of ``image_size = (H, W)``, and whether its prefix
    is known (otherwise :meth:`PatchGrid.with_tokens` reads it from the attention's tokens).

    Raises:
        ValueError: a model whose grid cannot be found; an image size the patches do not divide,
            or that disagrees with a fixed grid.
    """
    (ph, pw), prefix, pooled = _model_layout(model)
    height, width = image_size
    if height % ph or width % pw:
        raise ValueError(f"images: size {height}x{width} is not divisible by the patch size {ph}x{pw}")
    h, w = height // ph, width // pw
    fixed = getattr(model, "grid", None)
    if fixed is not None and tuple(fixed) != (h, w):
        fh, fw = tuple(fixed)
        raise ValueError(
            f"images: size {height}x{width} gives a {h}x{w} patch grid; the model's grid is "
            f"{fh}x{fw} (images of {fh * ph}x{fw * pw})"
        )
    query = None if pooled or not prefix else 0
    return PatchGrid(h, w, (ph, pw), prefix or 0, query), prefix is not None


def check_images(images: object) -> Tensor:
    """``images`` as a float ``(N, C, H, W)`` tensor (one ``(C, H, W)`` image gets N = 1).

    Raises:
        ValueError: another type, rank or dtype.
    """
    if not isinstance(images, Tensor) or images.dim() not in (3, 4) or not images.is_floating_point():
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images: expected a float tensor (N, C, H, W) or (C, H, W), got {got}")
    return images if images.dim() == 4 else images.unsqueeze(0)
