"""A trained captioner loaded from its run directory: captions with each word's attention over
the image, and its scores on a set of strips."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..models.builders import CAPTION_KINDS
from ..models.captioner import caption_targets
from .caption_metrics import attention_correctness, bleu_chrf, exact_match
from .captioning import build_captioner_from_facts, caption_texts
from .captions import CaptionTokenizer
from .checkpoints import load_model
from .data import DigitStrips
from .decode import beam_search
from .images import attention_pixels, check_images, patch_slots

__all__ = ["Caption", "Captioner"]


@dataclass
class Caption:
    """One image's caption.

    Attributes:
        text: the words joined by spaces.
        words: the words.
        attention: ``(len(words), N)``, each word's weights over the ``N`` patches (row-major).
        pixels: ``(len(words), H, W)``, the same as pixel maps (each pixel its patch's weight).
        peak_slots: per word, the strip slot its attention peaks on.
        score: the caption's log-probability; stop: ``"end"``, or ``"limit"`` (cut at the cap).
    """

    text: str
    words: list[str]
    attention: Tensor
    pixels: Tensor
    peak_slots: list[int]
    score: float
    stop: str


class Captioner:
    """A captioner with its tokenizer and image facts, loaded by :meth:`load` (the ``best/``
    checkpoint of a run when there is one, else the latest).

    Attributes:
        model: the :class:`~qkv.models.captioner.ShowAttendTell` or
            :class:`~qkv.models.captioner.CaptionTransformer`, in eval mode.
        config: the run's config (``data``, ``model``, ``train`` tables).
        lang: the caption language it was trained on.
        image_shape: what images must be, ``(channels, height, width)``.
        patch_slot: ``(N,)`` the strip slot of each patch.
        path: the checkpoint directory it was loaded from.
    """

    def __init__(self, model: nn.Module, tokenizer: CaptionTokenizer, config: dict[str, Any], facts: dict[str, Any],
                 *, path: Path | None = None):  # fmt: skip
        self.model, self.tokenizer, self.config, self.path = model.eval(), tokenizer, config, path
        self.lang = facts["lang"]
        self.image_shape = (int(facts["channels"]), int(facts["image_size"]), int(facts["image_width"]))
        self.patch_slot = patch_slots(model.grid, model.patch_size, int(facts["slot_width"]))

    @classmethod
    def load(cls, checkpoint: str | Path, *, best: bool = True) -> Captioner:
        """The captioner of a ``qkv train --model captioner`` run directory (or of one checkpoint).

        Raises:
            ValueError: the checkpoint is not a captioner's.
        """
        model, tokenizer, config, facts, path = load_model(
            checkpoint, best=best, kinds=CAPTION_KINDS, needs="slot_width", what="a captioner's",
            build=build_captioner_from_facts,
        )  # fmt: skip
        return cls(model, tokenizer, config, facts, path=path)

    def caption(self, images: Tensor, *, beam: int = 3, max_words: int | None = None) -> list[Caption]:
        """The caption of each image ``(N, C, H, W)`` (or one ``(C, H, W)``) in [0, 1], by beam
        search (``beam=1``: greedy), always one per image (:mod:`qkv.crossmodal.decode`).

        Raises:
            ValueError: images of the wrong shape, a bad ``beam`` or ``max_words``.
        """
        hyps = beam_search(self.model, check_images(images, self.image_shape), beam=beam, max_words=max_words)
        out = []
        for h, text in zip(hyps, caption_texts(self.tokenizer, hyps)):
            pixels = attention_pixels(h.attention, self.model.grid, self.model.patch_size)
            peaks = self.patch_slot[h.attention.argmax(-1)].tolist() if len(h.tokens) else []
            out.append(Caption(text, text.split(), h.attention, pixels, peaks, h.score, h.stop))
        return out

    @torch.no_grad()
    def teacher_attention(self, images: Tensor, captions: Sequence[str]) -> list[Tensor]:
        """Each word's attention ``(words, N)`` when the decoder is fed the given captions
        (teacher forcing; ``<end>``'s step left out)."""
        tokens = self.tokenizer.encode(captions)  # (B, T)
        cfg = self.model.config
        inputs, _ = caption_targets(tokens, pad_id=cfg.pad_id, start_id=cfg.start_id, end_id=cfg.end_id)
        _, attention = self.model(check_images(images, self.image_shape), inputs)  # (B, T+1, N)
        lengths = (tokens != cfg.pad_id).sum(1).tolist()
        return [attention[i, :n] for i, n in enumerate(lengths)]

    def evaluate(self, strips: DigitStrips, *, beam: int = 1, batch_size: int = 500) -> dict[str, float]:
        """``{"exact_match", "bleu", "chrf", "attention_correctness", "n"}`` on a set of strips
        (:mod:`qkv.crossmodal.caption_metrics`; captions by beam search of ``beam``)."""
        texts, attention = [], []
        for i in range(0, len(strips.captions), batch_size):
            images, captions = strips.images[i : i + batch_size], strips.captions[i : i + batch_size]
            texts += [c.text for c in self.caption(images, beam=beam)]
            attention += self.teacher_attention(images, captions)
        bleu, chrf = bleu_chrf(texts, strips.captions)
        return {"exact_match": exact_match(texts, strips.captions), "bleu": bleu, "chrf": chrf,
                "attention_correctness": attention_correctness(attention, strips.slots, self.patch_slot),
                "n": len(texts)}  # fmt: skip
