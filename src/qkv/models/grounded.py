"""Image-grounded translation, one readable file: a Transformer encoder-decoder whose decoder
cross-attends over the concatenation of the source sentence's encoder states and an image's
patch states (multimodal translation in the style of Libovický and Helcl 2017's flat
attention combination: one softmax over both modalities' tokens).

The source sentence is encoded by ``source_depth`` pre-LN Transformer blocks (the ViT's
:class:`~qkv.models.vit.Block`, with a padding mask) over word embeddings and learned
positions; the image by the captioners' :class:`~qkv.models.captioner.PatchEncoder` (the ViT's
patch embedding, fixed 2-D positions, ``encoder_depth`` blocks). A learned modality vector is
added to every token of each (``modality[0]`` text, ``modality[1]`` image), and the decoder is
the captioner-transformer's (:class:`~qkv.models.captioner.CaptionTransformer`): causal
self-attention, then cross-attention over the memory, then an MLP, per block::

    s = Blocks_src(Embed(source) + pos + m_text)               (B, S, D)   padding masked
    a = PatchEncoder(image) + m_image                           (B, N, D)
    memory = [s ; a]                                            (B, S + N, D)
    y = Embed(words) + pos
    y = y + SelfAttn(LN(y), causal); y = y + CrossAttn(LN(y), memory); y = y + MLP(LN(y))
    p(y_t) = softmax(W_o LN(y_t))

**The control** (``use_image=False``) is the same architecture with the image tokens dropped:
the memory is ``s`` alone, so the output cannot depend on the image (the image encoder is
built but never called, so both variants have the same parameters).

Memory key ``j < S`` is source word ``j`` (padding included, never attended), key ``S + i`` is
patch ``i`` (row-major): the cross-attention maps :meth:`GroundedTransformer.forward` returns
with ``need_weights=True`` show where each target word looked, the number words at the patches.

Shapes (B batch, S source words, N patches, T target steps, V vocabulary, D features)::

    sources (B, S) int64, images (B, C, H, W) in [0, 1], words_in (B, T) = <start> y_1 .. y_{T-1}
    -> logits (B, T, V); with need_weights, AttentionMaps: encoder (B, heads, S, S) per source
       block, cross (B, heads, T, S [+ N]) per decoder block
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .._types import AttentionMaps
from .captioner import CaptionTransformer, CaptionTransformerConfig, caption_targets
from .vit import Block

__all__ = ["GroundedConfig", "GroundedTransformer"]


@dataclass(frozen=True)
class GroundedConfig(CaptionTransformerConfig):
    """Hyper-parameters of :class:`GroundedTransformer`: the captioner-transformer's (the image
    encoder, the decoder, ``max_words`` target words) and the source side.

    Attributes:
        max_source_words: the longest source sentence in words (the data decides it).
        source_depth: source encoder blocks (``encoder_heads`` heads, ``encoder_mlp_dim``; 0:
            embeddings and positions alone).
        use_image: False for the text-only control: the decoder's memory is the source alone.
    """

    max_source_words: int = 8
    source_depth: int = 2
    use_image: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, least in (("max_source_words", 1), ("source_depth", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name}: expected an int >= {least}, got {value!r}")
        if not isinstance(self.use_image, bool):
            raise ValueError(f"use_image: expected true or false, got {self.use_image!r}")

    def to_dict(self) -> dict:
        return {"kind": "grounded", **asdict(self)}


class GroundedTransformer(CaptionTransformer):
    """The grounded translator; see the module docstring. Decoding uses the captioners' step
    interface (:mod:`qkv.crossmodal.decode`): ``encode(sources, images)`` -> ``init_state`` ->
    ``step``, the memory ``{"features": (B, S [+ N], D), "padding": (B, S [+ N])}``.

    Attributes:
        config: the :class:`GroundedConfig`.
        grid, patch_size: the image's patch grid (patch ``i`` is memory key ``S + i``).
    """

    config: GroundedConfig

    def __init__(self, config: GroundedConfig) -> None:
        super().__init__(config)
        cfg = self.config
        self.source_embed = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=cfg.pad_id)
        self.source_pos = nn.Parameter(torch.randn(1, cfg.max_source_words, cfg.dim) * 0.02)
        self.source_blocks = nn.ModuleList([Block(cfg.vision_config()) for _ in range(cfg.source_depth)])
        self.source_norm = nn.LayerNorm(cfg.dim)
        self.modality = nn.Parameter(torch.randn(2, cfg.dim) * 0.02)  # text, image

    def _check_sources(self, sources: object) -> Tensor:
        if not isinstance(sources, Tensor) or sources.dim() != 2 or sources.dtype != torch.int64:
            got = (
                f"{sources.dtype} {tuple(sources.shape)}"
                if isinstance(sources, Tensor)
                else type(sources).__name__
            )
            raise ValueError(f"sources: expected int64 word ids (B, S), got {got}")
        if not 1 <= sources.shape[1] <= self.config.max_source_words:
            raise ValueError(f"sources: expected 1 to max_source_words={self.config.max_source_words} "
                             f"words, got {sources.shape[1]}")  # fmt: skip
        if bool((sources == self.config.pad_id).all(1).any()):
            raise ValueError("sources: expected every sentence to hold a word, got an empty one")
        return sources

    def encode_source(self, sources: Tensor, *, need_weights: bool = False) -> tuple[Tensor, Tensor, list]:
        """Source states ``(B, S, D)``, their padding ``(B, S)`` (True = padding) and each
        block's self-attention ``(B, heads, S, S)`` (with ``need_weights``)."""
        cfg = self.config
        padding = self._check_sources(sources) == cfg.pad_id  # (B, S)
        s = self.source_embed(sources) + self.source_pos[:, : sources.shape[1]] + self.modality[0]
        maps = []
        for block in self.source_blocks:
            s, w = block(s, need_weights, key_padding_mask=padding)
            maps.append(w)
        return self.source_norm(s), padding, maps

    def encode(self, sources: Tensor, images: Tensor) -> dict[str, Tensor]:
        """The decoder's memory: source states, then (unless ``use_image`` is False) the patch
        states, ``{"features": (B, S [+ N], D), "padding": (B, S [+ N])}``."""
        s, padding, _ = self.encode_source(sources)
        return self._memory(s, padding, images)

    def _memory(self, s: Tensor, padding: Tensor, images: Tensor) -> dict[str, Tensor]:
        if not self.config.use_image:  # the control: the image is never read
            return {"features": s, "padding": padding}
        if images.shape[0] != s.shape[0]:
            raise ValueError(f"images: expected {s.shape[0]} images, one per source, got {images.shape[0]}")
        a = self.encoder(images) + self.modality[1]  # (B, N, D)
        no_padding = torch.zeros(a.shape[:2], dtype=torch.bool, device=a.device)
        return {"features": torch.cat([s, a], 1), "padding": torch.cat([padding, no_padding], 1)}

    def forward(
        self, sources: Tensor, images: Tensor, words_in: Tensor, *, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, AttentionMaps]:
        """Teacher forcing: logits ``(B, T, V)``; with ``need_weights`` also the
        :class:`~qkv._types.AttentionMaps` (``encoder``: the source blocks', ``cross``: every
        decoder block's ``(B, heads, T, S [+ N])``)."""
        s, padding, source_maps = self.encode_source(sources, need_weights=need_weights)
        memory = self._memory(s, padding, images)
        logits, maps = self.decode(words_in, memory["features"], memory["padding"])
        if not need_weights:
            return logits
        maps.encoder.extend(source_maps)
        return logits, maps

    def loss(self, sources: Tensor, images: Tensor, words: Tensor) -> Tensor:
        """Mean cross-entropy per target word (``<end>`` included) of the right-padded target
        word ids ``words (B, T)``."""
        cfg = self.config
        inputs, targets = caption_targets(words, pad_id=cfg.pad_id, start_id=cfg.start_id, end_id=cfg.end_id)
        logits = self(sources, images, inputs)
        return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=cfg.pad_id)
