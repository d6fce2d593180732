"""A trained image-text matcher loaded from a run directory: embeddings, similarities, recalls."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..models.builders import MATCHING_KINDS
from .captions import CaptionTokenizer
from .checkpoints import load_model
from .data import DigitStrips
from .images import check_images
from .retrieval import caption_positives, retrieval_recalls
from .training import build_from_facts, similarity_matrix

__all__ = ["Matcher"]


class Matcher:
    """A CLIP model with its caption tokenizer and image facts, loaded by :meth:`load` (the
    ``best/`` checkpoint of a run when there is one, else the latest).

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
