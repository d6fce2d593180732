"""CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision"): a dual encoder matching images and captions, one readable file.

Two towers map an image and a caption into the same space; a matching pair should be closer
than every other pair of the batch::

    image tower   v = normalize(ViT(image))                 the ViT's head is the projection
    text tower    x = [cls; Embed(words)] + positions
                  x = x + SelfAttn(LN(x))  (padding never attended)
                  x = x + MLP(LN(x))
                  t = normalize(W_t LN(x)[:, 0])
      or locked   t = normalize(W_t MeanPool(MiniLM(tokens)))   (text_tower = "minilm": frozen)
    similarity    logits = exp(min(s, ln 100)) * v @ t^T     s learnable, starts at ln(1/0.07)
    loss          InfoNCE both ways: (CE(logits, match) + CE(logits^T, match^T)) / 2

The temperature is clamped as open_clip clamps ``logit_scale``: ``exp(s)`` never exceeds
:attr:`CLIPConfig.max_logit_scale` (100), so the softmax cannot become arbitrarily sharp.
:func:`info_nce` takes a ``positives`` matrix when a batch holds several pairs of the same
caption (each row's target is then spread evenly over its positives).

With ``text_tower = "minilm"`` the text tower is a pretrained encoder, locked as open_clip's
``--lock-text`` locks it (Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text
Tuning", the other way round): a :class:`~qkv.models.locked_text.LockedText` the caller builds
and hands in (``CLIP(config, text=...)``); only the image tower, ``text_proj`` and the
temperature train.

Zero-shot classification (the paper's section 3.1.2): each class is a caption prompt; an
image's class probabilities are ``softmax(logits)`` over the prompts.

Shapes (B images, C captions, T words, E embed_dim)::

    images (B, channels, H, W), tokens (C, T) int64 (pad_id = padding)
    -> encode_image (B, E), encode_text (C, E), unit length; forward: logits (B, C)
    with need_weights: AttentionMaps of each tower, ``encoder`` per layer (N, heads, T', T')
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .._types import AttentionMaps
from ..modules import MultiHeadAttention
from .vit import MLP, ViT, ViTConfig

__all__ = [
    "CLIP",
    "TEXT_TOWERS",
    "CLIPConfig",
    "CLIPEmbeddings",
    "CLIPMaps",
    "info_nce",
    "info_nce_logits",
    "info_nce_rows",
]

#: ``[model] text_tower``: ``transformer`` (trained from scratch on the caption words) or
#: ``minilm`` (all-MiniLM-L6-v2, locked; its own WordPiece tokenizer).
TEXT_TOWERS = ("transformer", "minilm")


@dataclass(frozen=True)
class CLIPConfig:
    """Hyper-parameters of :class:`CLIP` (keyword-only, JSON-serializable).

    Attributes:
        vocab_size: caption word ids ``0 .. vocab_size - 1`` (``pad_id`` among them).
        image_size, image_width, channels: the images, ``(channels, image_size, image_width)``
            (``image_width`` None: square).
        max_words: the longest caption, in words.
        pad_id: the padding id of the captions.
        embed_dim: ``E``, the shared space.
        patch_size, vision_dim, vision_depth, vision_heads, vision_mlp_dim: the ViT image tower.
        text_dim, text_depth, text_heads, text_mlp_dim: the Transformer text tower.
        text_tower: one of :data:`TEXT_TOWERS`; ``"minilm"``: a locked pretrained tower
            handed to :class:`CLIP` (the ``text_*`` sizes and ``max_words`` then unused).
        dropout: in both towers.
        init_temperature: the softmax temperature at the start (``logit_scale = ln(1/T)``).
        max_logit_scale: the clamp of ``exp(logit_scale)``.
    """

    vocab_size: int
    image_size: int = 8
    image_width: int | None = None
    channels: int = 1
    max_words: int = 16
    pad_id: int = 0
    embed_dim: int = 64
    patch_size: int = 4
    vision_dim: int = 64
    vision_depth: int = 3
    vision_heads: int = 4
    vision_mlp_dim: int = 128
    text_dim: int = 64
    text_depth: int = 2
    text_heads: int = 4
    text_mlp_dim: int = 128
    dropout: float = 0.0
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    text_tower: str = "transformer"

    def __post_init__(self) -> None:
        if self.text_tower not in TEXT_TOWERS:
            raise ValueError(f"text_tower: expected {' | '.join(TEXT_TOWERS)}, got {self.text_tower!r}")
        for name in ("vocab_size", "max_words", "embed_dim", "text_dim", "text_heads", "text_mlp_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        if not isinstance(self.text_depth, int) or isinstance(self.text_depth, bool) or self.text_depth < 0:
            raise ValueError(f"text_depth: expected an int >= 0, got {self.text_depth!r}")
        if not isinstance(self.pad_id, int) or not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(
                f"pad_id: expected an int in [0, vocab_size={self.vocab_size}), got {self.pad_id!r}"
            )
        if self.text_dim % self.text_heads:
            raise ValueError(
                f"text_dim: expected a multiple of text_heads={self.text_heads}, got {self.text_dim}"
            )
        for name in ("init_temperature", "max_logit_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
        if 1 / self.init_temperature > self.max_logit_scale:
            raise ValueError(f"init_temperature: expected at least 1/max_logit_scale="
                             f"{1 / self.max_logit_scale:g}, got {self.init_temperature!r}")  # fmt: skip
        self.vision_config()  # checks the image tower's fields

    def vision_config(self) -> ViTConfig:
        """The image tower's :class:`ViTConfig` (its ``num_classes`` is ``embed_dim``: the head projects)."""
        return ViTConfig(image_size=self.image_size, image_width=self.image_width, patch_size=self.patch_size,
                         channels=self.channels, num_classes=self.embed_dim, dim=self.vision_dim,
                         depth=self.vision_depth, heads=self.vision_heads, mlp_dim=self.vision_mlp_dim,
                         dropout=self.dropout)  # fmt: skip

    def to_dict(self) -> dict:
        return {"kind": "clip", **asdict(self)}


class CLIPMaps(NamedTuple):
    """The attention maps of both towers: each an :class:`~qkv.AttentionMaps` whose ``encoder``
    holds per layer ``(N, heads, T', T')`` (images: class token + patches; captions: class
    token + words)."""

    image: AttentionMaps
    text: AttentionMaps


class CLIPEmbeddings(NamedTuple):
    """What ``CLIP(images, tokens, embeddings=True)`` returns: unit-length ``image (B, E)``,
    ``text (C, E)`` and the clamped ``scale`` (a data-parallel loss gathers the first two)."""

    image: Tensor
    text: Tensor
    scale: Tensor


def info_nce(
    image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float, positives: Tensor | None = None
) -> Tensor:
    """The symmetric InfoNCE loss of CLIP: cross entropy of ``logits = scale * image_emb @
    text_emb^T`` over the captions of each image and over the images of each caption, averaged.

    Args:
        image_emb, text_emb: ``(B, E)`` each, pair ``i`` is row ``i`` of both (unit length
            as :class:`CLIP` makes them; the loss does not normalize).
        logit_scale: the multiplier ``exp(s)`` (already clamped).
        positives: ``(B, B)`` bool, True where image ``i`` matches caption ``j`` (the diagonal
            must be True); default the identity. Each row's (and column's) target is spread
            evenly over its positives.

    Returns:
        the scalar loss.
    """
    if text_emb.shape[0] != image_emb.shape[0]:
        raise ValueError(
            f"text_emb: expected {image_emb.shape[0]} rows, one per image, got {text_emb.shape[0]}"
        )
    return info_nce_logits(logit_scale * image_emb @ text_emb.T, positives)


def info_nce_logits(logits: Tensor, positives: Tensor | None = None) -> Tensor:
    """:func:`info_nce` of the ``(B, B)`` logits ``scale * image_emb @ text_emb^T``."""
    b = logits.shape[0]
    if logits.dim() != 2 or logits.shape[1] != b:
        raise ValueError(f"logits: expected a square (B, B) matrix, got {tuple(logits.shape)}")
    if positives is None:
        labels = torch.arange(b, device=logits.device)
        return (
            nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.T, labels)
        ) / 2
    if positives.shape != (b, b) or not bool(positives.diagonal().all()):
        raise ValueError(f"positives: expected a ({b}, {b}) bool matrix with a True diagonal, "
                         f"got shape {tuple(positives.shape)}")  # fmt: skip
    p = positives.to(logits.dtype)
    rows = -(p / p.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    cols = -(p / p.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (rows + cols) / 2


def info_nce_rows(
    image_emb: Tensor, text_emb: Tensor, all_image: Tensor, all_text: Tensor, logit_scale: Tensor | float,
    positives: Tensor,
) -> Tensor:  # fmt: skip
    """The part of :func:`info_nce` that ``n`` of the ``N`` pairs carry (open_clip's
    ``local_loss``): each of these images over all ``N`` captions and each of these captions
    over all ``N`` images, ``(row_i + col_i) / 2`` averaged over the ``n`` pairs. Over all pairs
    it is :func:`info_nce`; the mean over shares, weighted by their sizes, is too.

    Args:
        image_emb, text_emb: ``(n, E)``: the pairs of this share.
        all_image, all_text: ``(N, E)``: every pair of the batch (these among them).
        logit_scale: the multiplier ``exp(s)``.
        positives: ``(n, N)`` bool, True where pair ``i`` of the share has the caption of pair
            ``j`` of the batch (symmetric matching: the same matrix serves rows and columns).
    """
    if positives.shape != (image_emb.shape[0], all_text.shape[0]) or not bool(positives.any(1).all()):
        raise ValueError(f"positives: expected a ({image_emb.shape[0]}, {all_text.shape[0]}) bool matrix with "
                         f"a True in every row, got shape {tuple(positives.shape)}")  # fmt: skip
    p = positives.to(image_emb.dtype)
    p = p / p.sum(1, keepdim=True)
    rows = -(p * (logit_scale * image_emb @ all_text.T).log_softmax(1)).sum(1)  # (n,)
    cols = -(p * (logit_scale * text_emb @ all_image.T).log_softmax(1)).sum(1)  # (n,)
    return ((rows + cols) / 2).mean()


class PaddedBlock(nn.Module):
    """A pre-LN encoder block over a padded sequence (words, frames): ``padding (N, T)``, True
    where a token is padding, whose keys are never attended."""

    def __init__(self, *, dim: int, heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(embed_dim=dim, num_heads=heads, dropout=dropout)
        self.mlp = MLP(dim, mlp_dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, padding: Tensor, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        a = self.attn(self.norm1(x), key_padding_mask=padding, need_weights=need_weights)
        x = x + self.drop(a.out)
        return x + self.drop(self.mlp(self.norm2(x))), a.weights


class TextEncoder(nn.Module):
    """Words ``(C, T)`` -> the class token's features ``(C, text_dim)``: a learned class token
    before the words, learned positions, pre-LN blocks, a final LayerNorm."""

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.text_dim, padding_idx=cfg.pad_id)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.text_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + cfg.max_words, cfg.text_dim) * 0.02)
        block = {
            "dim": cfg.text_dim,
            "heads": cfg.text_heads,
            "mlp_dim": cfg.text_mlp_dim,
            "dropout": cfg.dropout,
        }
        self.blocks = nn.ModuleList([PaddedBlock(**block) for _ in range(cfg.text_depth)])
        self.norm = nn.LayerNorm(cfg.text_dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, tokens: Tensor, maps: AttentionMaps | None) -> Tensor:
        cfg = self.config
        if tokens.dim() != 2 or tokens.dtype != torch.int64:
            raise ValueError(
                f"tokens: expected int64 (C, T) word ids, got {tokens.dtype} {tuple(tokens.shape)}"
            )
        if not 1 <= tokens.shape[1] <= cfg.max_words:
            raise ValueError(f"tokens: expected 1 to max_words={cfg.max_words} words, got {tokens.shape[1]}")
        if tokens.numel() and not 0 <= int(tokens.min()) <= int(tokens.max()) < cfg.vocab_size:
            raise ValueError(f"tokens: expected ids in [0, {cfg.vocab_size}), got "
                             f"{int(tokens.min())}..{int(tokens.max())}")  # fmt: skip
        padding = tokens == cfg.pad_id  # (C, T)
        if bool(padding.all(1).any()):
            raise ValueError(
                "tokens: expected every caption to hold a word, got an empty (all padding) caption"
            )
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), self.embed(tokens)], 1)  # (C, 1+T, D)
        x = self.drop(x + self.pos_embed[:, : x.shape[1]])
        padding = torch.cat(
            [torch.zeros_like(padding[:, :1]), padding], 1
        )  # the class token is never padding
        for block in self.blocks:
            x, w = block(x, padding, maps is not None)
            if maps is not None:
                maps.encoder.append(w)
        return self.norm(x)[:, 0]


class CLIP(nn.Module):
    """The dual encoder; see the module docstring.

    Attributes:
        config: the :class:`CLIPConfig`.
        visual: the image tower, a :class:`ViT` (``grid``, ``num_prefix_tokens``, ``patch_size``
            say where each patch's token is).
        text: the text tower (a :class:`TextEncoder`, or the locked tower handed in);
            ``text_proj``: its projection to ``embed_dim``.
        logit_scale: the learnable ``s`` (``exp(s)`` clamped at ``max_logit_scale``).

    Args:
        config: the :class:`CLIPConfig`.
        text: with ``text_tower = "minilm"``, the locked tower (a module mapping ``(C, T)``
            token ids to ``(C, out_dim)`` with an ``out_dim`` attribute, such as
            :class:`~qkv.models.locked_text.LockedText`); None for the trained transformer.

    Raises:
        ValueError: a tower handed in for ``"transformer"``, or none for ``"minilm"``.
    """

    def __init__(self, config: CLIPConfig, *, text: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.visual = ViT(config.vision_config())
        if (text is None) != (config.text_tower == "transformer"):
            raise ValueError(f"text: expected a locked tower module for text_tower='minilm' and None for "
                             f"'transformer'; got {type(text).__name__} with text_tower={config.text_tower!r}")  # fmt: skip
        self.text = TextEncoder(config) if text is None else text
        width = config.text_dim if text is None else int(text.out_dim)
        self.text_proj = nn.Linear(width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))

    def scale(self) -> Tensor:
        """``exp(logit_scale)`` clamped to ``[1, max_logit_scale]`` (open_clip's clamp at ln 100)."""
        return self.logit_scale.clamp(0.0, math.log(self.config.max_logit_scale)).exp()

    def encode_image(
        self, images: Tensor, *, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, AttentionMaps]:
        """Unit-length image embeddings ``(B, E)`` of ``images (B, channels, H, W)`` in [0, 1]
        (and the tower's :class:`~qkv.AttentionMaps` when ``need_weights``).

        Raises:
            ValueError: images of another shape or channel count.
        """
        if need_weights:
            emb, maps = self.visual(images, need_weights=True)
            return nn.functional.normalize(emb, dim=-1), maps
        return nn.functional.normalize(self.visual(images), dim=-1)

    def encode_text(
        self, tokens: Tensor, *, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, AttentionMaps]:
        """Unit-length caption embeddings ``(C, E)`` of word ids ``(C, T)`` (``pad_id`` pads).

        Raises:
            ValueError: not int64 ``(C, T)``, more than ``max_words`` words, ids out of the
                vocabulary, or an empty caption.
        """
        maps = AttentionMaps() if need_weights else None
        emb = nn.functional.normalize(self.text_proj(self.text(tokens, maps)), dim=-1)
        return (emb, maps) if need_weights else emb

    def forward(
        self, images: Tensor, tokens: Tensor, *, need_weights: bool = False, embeddings: bool = False
    ) -> Tensor | tuple[Tensor, CLIPMaps] | CLIPEmbeddings:
        """``logits (B, C) = scale * image_emb @ text_emb^T`` (and :class:`CLIPMaps` when
        ``need_weights``); with ``embeddings``, the :class:`CLIPEmbeddings` the logits are made
        of (what a loss over several processes needs: ``forward`` is what
        ``DistributedDataParallel`` wraps)."""
        if embeddings:
            return CLIPEmbeddings(self.encode_image(images), self.encode_text(tokens), self.scale())
        if need_weights:
            v, image_maps = self.encode_image(images, need_weights=True)
            t, text_maps = self.encode_text(tokens, need_weights=True)
            return self.scale() * v @ t.T, CLIPMaps(image_maps, text_maps)
        return self.scale() * self.encode_image(images) @ self.encode_text(tokens).T

    def loss(self, images: Tensor, tokens: Tensor, positives: Tensor | None = None) -> Tensor:
        """:func:`info_nce` of a batch of pairs (image ``i`` with caption ``i``)."""
        return info_nce(*self(images, tokens, embeddings=True), positives)

    @torch.no_grad()
    def zero_shot(self, images: Tensor, prompts: Tensor) -> tuple[Tensor, Tensor]:
        """With ``text_tower = "minilm"`` the text tower is a pretrained encoder, locked as open_clip's
        ``--lock-text`` locks it (Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text
        Tuning", the other way round): a :class:`~qkv.models.locked_text.LockedText` the caller builds
        and hands in (``CLIP(config, text=...)``); only the image tower, ``text_proj`` and the
        temperature train.

        Zero-shot classification: the predicted prompt ``(B,)`` and the probabilities
                ``(B, K)`` of each image over ``K`` caption prompts ``(K, T)``."""
        probs = self(images, prompts).softmax(-1)
        return probs.argmax(-1), probs
