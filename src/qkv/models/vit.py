"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"), one readable file.

An image is cut into ``P x P`` patches, each patch is a token (a strided convolution is the
linear patch projection), a class token is prepended (or the patch tokens are mean-pooled),
positions are added, pre-LN encoder blocks on :class:`qkv.MultiHeadAttention` mix the tokens,
and a linear head reads the class token (or the mean)::

    input   image = (image - pixel_mean) / pixel_std     (images come in [0, 1])
    tokens  x = [cls; patches(image)] + positions
    block   x = x + Drop(SelfAttn(LN(x)))
            x = x + Drop(MLP(LN(x)))
    head    logits = Linear(LN(x)[:, 0])            pool="cls"
            logits = Linear(LN(x).mean(dim=1))      pool="mean"

Patch order is **row-major**: the patch in grid row ``r`` and column ``c`` (pixels
``r*P .. r*P+P-1`` down, ``c*P .. c*P+P-1`` across) is patch token ``r * w + c``, and sequence
token ``num_prefix_tokens + r * w + c`` (the class token, when there is one, is token 0). An
explainer finds the grid from the public attributes ``grid = (h, w)``, ``num_prefix_tokens`` and
``patch_size``, never from a user's reshape.

Stems: ``stem="patch"`` (the paper's) is the linear patch projection above. ``stem="conv"`` is the
convolutional stem of Xiao et al. 2021, "Early Convolutions Help Transformers See Better" (and
the "hybrid architecture" of the ViT paper, sec. 3.1: tokens read from a CNN feature map):
``log2(P)`` stride-2 ``3 x 3`` convolutions, each followed by BatchNorm and ReLU and doubling
the channels up to ``E`` (``E/2^(k-1), ..., E/2, E`` for ``k = log2(P)`` convolutions), then a
``1 x 1`` convolution to ``E``::

    stem "conv"  x = Conv1x1(ReLU(BN(Conv3x3/2( ... ReLU(BN(Conv3x3/2(image))) ... ))))

Each halving of the image is one stride-2 convolution, so ``P`` must be a power of 2 and the
grid is the same ``h x w = H/P x W/P`` as the patch stem's: token ``r * w + c`` is still the
feature of the ``P x P`` pixels at grid row ``r``, column ``c`` (its receptive field is wider:
``2P - 1`` pixels plus the borders' overlap), and every explanation that reads ``grid`` and
``patch_size`` works unchanged. Xiao et al. found small ViTs with it converge faster and are less
sensitive to the optimizer's settings; they take one block away to keep the compute equal (the
stem costs about one block). BatchNorm makes a training step depend on the whole batch; in
``eval()`` mode (prediction, explanation) each image's output is its own.

Positions: ``"learned"`` (a trained vector per patch and one for the class token, as in the
paper) or ``"sincos2d"`` (fixed; the first half of the features encode the patch's row, the second
half its column with :func:`qkv.modules.sinusoidal_table`, the class token gets zeros, as in MAE,
He et al. 2022).

Shapes (B batch, C channels, H x W image, P patch size, h x w = H/P x W/P patch grid,
N = h*w patches, T = N + num_prefix_tokens tokens, E dim, K classes)::

    images (B, C, H, W) -> logits (B, K); with need_weights an AttentionMaps whose
    ``encoder`` holds per layer the self-attention weights (B, heads, T, T)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .._types import AttentionMaps
from ..modules import MultiHeadAttention
from ..modules.positional import sinusoidal_table

__all__ = ["POOLS", "POSITIONS", "STEMS", "ConvStem", "PatchEmbedding", "ViT", "ViTConfig"]

#: The values of :attr:`ViTConfig.pool`, :attr:`ViTConfig.positions` and :attr:`ViTConfig.stem`.
POOLS = ("cls", "mean")
POSITIONS = ("learned", "sincos2d")
STEMS = ("patch", "conv")


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of :class:`ViT` (keyword-only, JSON-serializable).

    Attributes:
        image_size: ``H`` in pixels (``H = W``: square images), a multiple of ``patch_size``.
        image_width: ``W`` when the images are not square (a strip of digits), a multiple of
            ``patch_size``; None: ``W = image_size``.
        patch_size: ``P``, the side of a square patch.
        channels: ``C`` (1 for grayscale, 3 for RGB).
        num_classes: ``K``.
        dim, depth, heads, mlp_dim: token size ``E``, number of blocks, attention heads
            (``dim % heads == 0``), hidden size of each block's MLP.
        dropout: on the token embeddings, the attention weights, the sub-layer outputs and the MLP.
        pool: one of ``POOLS``: read the class token (``"cls"``) or average the patch tokens
            (``"mean"``, no class token).
        positions: one of ``POSITIONS`` (``"sincos2d"`` needs an even ``dim``).
        stem: one of ``STEMS``: the linear patch projection (``"patch"``) or the convolutional
            stem (``"conv"``, Xiao et al. 2021; ``patch_size`` a power of 2 >= 2).
        pixel_mean, pixel_std: the model's first step, ``(images - pixel_mean) / pixel_std``, so it
            takes images in [0, 1] as they are drawn (0.5 and 0.5 map them to [-1, 1], as Hugging
            Face's ``ViTImageProcessor`` does; centred inputs train several times faster).
    """

    image_size: int
    patch_size: int
    channels: int = 1
    num_classes: int = 10
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_dim: int = 128
    dropout: float = 0.0
    pool: str = "cls"
    positions: str = "learned"
    pixel_mean: float = 0.5
    pixel_std: float = 0.5
    image_width: int | None = None
    stem: str = "patch"

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "channels", "num_classes", "dim", "heads", "mlp_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        if not isinstance(self.depth, int) or isinstance(self.depth, bool) or self.depth < 0:
            raise ValueError(f"depth: expected an int >= 0, got {self.depth!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size: expected a multiple of patch_size={self.patch_size}, got {self.image_size}"
            )
        width = self.image_width
        if width is not None and (not isinstance(width, int) or isinstance(width, bool) or width < 1
                                  or width % self.patch_size):  # fmt: skip
            raise ValueError(f"image_width: expected None or an int >= 1, a multiple of "
                             f"patch_size={self.patch_size}, got {width!r}")  # fmt: skip
        if self.dim % self.heads:
            raise ValueError(f"dim: expected a multiple of heads={self.heads}, got {self.dim}")
        if isinstance(self.dropout, bool) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        for name in ("pixel_mean", "pixel_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
        if self.pixel_std <= 0:
            raise ValueError(f"pixel_std: expected a number > 0, got {self.pixel_std!r}")
        for name, valid in (("pool", POOLS), ("positions", POSITIONS), ("stem", STEMS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name}: expected one of {', '.join(valid)}, got {getattr(self, name)!r}")
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ValueError(f"patch_size: stem='conv' needs a power of 2 >= 2 (one stride-2 convolution "
                             f"per halving), got {self.patch_size}")  # fmt: skip
        if self.positions == "sincos2d" and self.dim % 2:
            raise ValueError(f"dim: positions='sincos2d' needs an even dim, got {self.dim}")

    @property
    def width(self) -> int:
        """``W`` in pixels."""
        return self.image_size if self.image_width is None else self.image_width

    @property
    def grid(self) -> tuple[int, int]:
        """``(h, w)``, the patch grid."""
        return self.image_size // self.patch_size, self.width // self.patch_size

    def to_dict(self) -> dict:
        return {"kind": "vit", **asdict(self)}


def sincos2d_table(h: int, w: int, dim: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Fixed 2-D positions of an ``h x w`` patch grid, row-major: ``(h * w, dim)``.

    Row ``r * w + c`` is ``[sinusoidal(r, dim/2), sinusoidal(c, dim/2)]``
    (:func:`qkv.modules.sinusoidal_table` on each axis; ``dim`` even).
    """
    rows = torch.arange(h).repeat_interleave(w)  # (N,) 0 0 .. 0 1 1 ..
    cols = torch.arange(w).repeat(h)  # (N,) 0 1 .. w-1 0 1 ..
    half = dim // 2
    return torch.cat(
        [sinusoidal_table(rows, half, dtype=dtype), sinusoidal_table(cols, half, dtype=dtype)], dim=-1
    )


class PatchEmbedding(nn.Module):
    """``(B, C, H, W) -> (B, N, E)``: a ``P x P`` convolution with stride ``P`` (one linear map
    per patch), flattened row-major (token ``r * w + c`` is the patch at grid row ``r``, column ``c``)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, images: Tensor) -> Tensor:
        x = self.proj(images)  # (B, E, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, E, h*w) -> (B, N, E), row-major


class ConvStem(nn.Module):
    """``(B, C, H, W) -> (B, N, E)``: the convolutional stem of Xiao et al. 2021 (see the module
    docstring): ``k = log2(P)`` stride-2 ``3 x 3`` convolutions (padding 1, no bias), each with
    BatchNorm and ReLU, widths ``E/2^(k-1), ..., E``, then a ``1 x 1`` convolution to ``E``;
    flattened row-major like :class:`PatchEmbedding`, on the same ``h x w`` grid."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        k = cfg.patch_size.bit_length() - 1  # P = 2^k
        layers: list[nn.Module] = []
        width_in = cfg.channels
        for i in range(k):
            width = max(1, cfg.dim >> (k - 1 - i))  # E/2^(k-1), ..., E/2, E
            layers += [nn.Conv2d(width_in, width, kernel_size=3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU()]  # fmt: skip
            width_in = width
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(width_in, cfg.dim, kernel_size=1)

    def forward(self, images: Tensor) -> Tensor:
        x = self.proj(self.convs(images))  # (B, C, H, W) -> (B, E/2^(k-1), H/2, W/2) ... -> (B, E, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, E, h*w) -> (B, N, E), row-major


class MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class Block(nn.Module):
    """A pre-LN encoder block (Xiong et al. 2020): attention then MLP, each on ``LN(x)`` with a residual."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.attn = MultiHeadAttention(embed_dim=cfg.dim, num_heads=cfg.heads, dropout=cfg.dropout)
        self.mlp = MLP(cfg.dim, cfg.mlp_dim, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, need_weights: bool, *, key_padding_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """``x (B, T, E)`` -> ``(B, T, E)`` and, with ``need_weights``, ``(B, heads, T, T)``;
        ``key_padding_mask`` ``(B, T)``, True = padding, never attended."""
        a = self.attn(self.norm1(x), key_padding_mask=key_padding_mask, need_weights=need_weights)
        x = x + self.drop(a.out)
        return x + self.drop(self.mlp(self.norm2(x))), a.weights


class ViT(nn.Module):
    """Vision Transformer classifier; see the module docstring.

    Attributes:
        config: the :class:`ViTConfig`.
        grid: ``(h, w)``, the patch grid (row-major token order).
        num_prefix_tokens: tokens before the patches: 1 with a class token (``pool="cls"``), 0 with
            mean pooling.
        patch_size: ``P`` in pixels.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        cfg = self.config = config
        self.grid = cfg.grid
        self.patch_size = cfg.patch_size
        self.num_prefix_tokens = 1 if cfg.pool == "cls" else 0
        num_patches = self.grid[0] * self.grid[1]
        self.patch_embed = ConvStem(cfg) if cfg.stem == "conv" else PatchEmbedding(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if self.num_prefix_tokens else None
        if cfg.positions == "learned":  # one vector per token, the class token's included
            self.pos_embed = nn.Parameter(
                torch.randn(1, self.num_prefix_tokens + num_patches, cfg.dim) * 0.02
            )
        else:  # fixed; the class token's position is zeros
            table = sincos2d_table(*self.grid, cfg.dim, dtype=torch.get_default_dtype())  # (N, E)
            table = torch.cat([torch.zeros(self.num_prefix_tokens, cfg.dim), table])[None]  # (1, T, E)
            self.register_buffer("pos_embed", table, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def _check_images(self, images: Tensor) -> None:
        cfg = self.config
        expected = (cfg.channels, cfg.image_size, cfg.width)
        if images.dim() != 4:
            raise ValueError(f"images: expected a 4-D tensor (B, C, H, W) = (B, {', '.join(map(str, expected))}), "
                             f"got shape {tuple(images.shape)}")  # fmt: skip
        if images.shape[1] != cfg.channels:
            raise ValueError(f"images: expected {cfg.channels} channel(s) (B, C, H, W), got {images.shape[1]} "
                             f"in shape {tuple(images.shape)}")  # fmt: skip
        if tuple(images.shape[2:]) != expected[1:]:
            raise ValueError(f"images: expected {cfg.image_size}x{cfg.width} pixels (B, C, H, W), "
                             f"got {images.shape[2]}x{images.shape[3]}")  # fmt: skip

    def tokens(self, images: Tensor) -> Tensor:
        """The input tokens ``(B, T, E)`` of images in [0, 1]: class token (if any) and patches,
        positions added, before attention."""
        self._check_images(images)
        cfg = self.config
        x = self.patch_embed((images - cfg.pixel_mean) / cfg.pixel_std)  # (B, C, H, W) -> (B, N, E)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, E)
        return self.drop(x + self.pos_embed)

    def forward(self, images: Tensor, *, need_weights: bool = False) -> Tensor | tuple[Tensor, AttentionMaps]:
        """Logits ``(B, K)`` (and an :class:`qkv.AttentionMaps` with per layer ``encoder`` weights
        ``(B, heads, T, T)`` when ``need_weights``).

        Raises:
            ValueError: ``images`` is not ``(B, channels, image_size, width)``.
        """
        x = self.tokens(images)  # (B, T, E)
        maps = AttentionMaps() if need_weights else None
        for block in self.blocks:
            x, w = block(x, need_weights)
            if maps is not None:
                maps.encoder.append(w)
        x = self.norm(x)
        pooled = x[:, 0] if self.num_prefix_tokens else x.mean(dim=1)  # (B, E)
        logits = self.head(pooled)  # (B, K)
        return (logits, maps) if need_weights else logits
