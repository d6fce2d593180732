"""A trained grounded translator loaded from its run directory: French translations of English
sentences whose number is read from a digit strip, each word's attention over the sentence and
the image, and its scores on a set of pairs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..application.run import load_trained
from ..models.builders import GROUNDED_KINDS
from .caption_metrics import exact_match
from .captioning import caption_texts
from .captions import CaptionTokenizer
from .grounded import HIDDEN, GroundedPairs, number_word_match, number_words_of
from .grounding import build_grounded_from_facts, translate_ids
from .images import check_images

__all__ = ["GroundedTranslator", "Translation"]


@dataclass
class Translation:
    """One sentence's translation.

    Attributes:
        text: the French words joined by spaces; words: the words.
        number: its number words (:func:`~qkv.crossmodal.grounded.number_words_of`).
        attention: ``(len(words), S [+ N])``, each word's weights over the source words (``S``,
            padding included, never attended) then the ``N`` patches (the last decoder layer's
            cross-attention averaged over heads; no patches for the text-only control).
        image_attention: ``(len(words),)``, each word's weight on the patches (0 for the control).
    """

    text: str
    words: list[str]
    number: str
    attention: Tensor
    image_attention: Tensor


class GroundedTranslator:
    """A grounded translator with its tokenizer and image facts, loaded by :meth:`load` (the
    ``best/`` checkpoint of a run when there is one, else the latest).

    Attributes:
        model: the :class:`~qkv.models.grounded.GroundedTransformer`, in eval mode.
        config: the run's config (``data``, ``model``, ``train`` tables).
        use_image: False for the text-only control.
        image_shape: what images must be, ``(channels, height, width)``.
        path: the checkpoint directory it was loaded from.
    """

    def __init__(self, model: nn.Module, tokenizer: CaptionTokenizer, config: dict[str, Any], facts: dict[str, Any],
                 *, path: Path | None = None):  # fmt: skip
        self.model, self.tokenizer, self.config, self.path = model.eval(), tokenizer, config, path
        self.use_image = bool(model.config.use_image)
        self.image_shape = (int(facts["channels"]), int(facts["image_size"]), int(facts["image_width"]))

    @classmethod
    def load(cls, checkpoint: str | Path, *, best: bool = True) -> GroundedTranslator:
        """The translator of a ``qkv train --model grounded`` run directory (or of one checkpoint).

        Raises:
            ValueError: the checkpoint is not a grounded translator's.
        """
        ck = load_trained(checkpoint, best=best)
        kind = ck.config.get("model", {}).get("kind")
        if kind not in GROUNDED_KINDS or not isinstance(ck.vocab, dict) or "max_source_words" not in ck.vocab:
            raise ValueError(
                f"checkpoint: {str(ck.path)!r} is not a grounded translator's (its model kind is {kind!r})"
            )
        model, tokenizer = build_grounded_from_facts(ck.config["model"], ck.vocab)
        ck.restore(model, rng=False)
        return cls(model, tokenizer, ck.config, ck.vocab, path=ck.path)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> str:
        """``"grounded, 192,803 parameters, with the image"`` (or ``"text only"``)."""
        return f"grounded, {self.num_parameters:,} parameters, {'with the image' if self.use_image else 'text only'}"

    def _sources(self, sources: Sequence[str]) -> Tensor:
        if isinstance(sources, str) or not len(sources):
            got = repr(sources) if isinstance(sources, str) else "an empty list"
            raise ValueError(f"sources: expected a non-empty list of sentences, got {got}")
        for i, s in enumerate(sources):
            if not isinstance(s, str) or CaptionTokenizer.split(s).count(HIDDEN) != 1:
                raise ValueError(f"sources[{i}]: expected a sentence with one {HIDDEN!r} where the number "
                                 f"goes, got {s!r}")  # fmt: skip
        return self.tokenizer.encode(sources)

    @torch.no_grad()
    def translate(
        self, sources: Sequence[str], images: Tensor, *, batch_size: int = 500
    ) -> list[Translation]:
        """Greedy translations of English ``sources`` (each with one ``[?]``), the number read
        from ``images`` ``(N, C, H, W)`` in [0, 1] (one per sentence).

        Raises:
            ValueError: a source without exactly one ``[?]``, images of the wrong shape or count.
        """
        ids, images = self._sources(sources), check_images(images, self.image_shape)
        if len(images) != len(ids):
            raise ValueError(f"images: expected {len(ids)} images, one per source, got {len(images)}")
        hyps = translate_ids(self.model, ids, images, batch_size=batch_size)
        out = []
        for h, text in zip(hyps, caption_texts(self.tokenizer, hyps)):
            on_image = h.attention[:, ids.shape[1] :].sum(-1)  # (words,)
            out.append(Translation(text, text.split(), number_words_of(text), h.attention, on_image))
        return out

    def evaluate(self, pairs: GroundedPairs) -> dict[str, float]:
        """``{"exact_match", "number_match", "number_image_attention", "other_image_attention",
        "n"}`` on a set of pairs: sentence exact match, number-word exact match
        (:func:`~qkv.crossmodal.grounded.number_word_match`), and the mean weight on the image of
        the number words and of the other words of the translations."""
        out = self.translate(pairs.sources, pairs.images)
        texts = [t.text for t in out]
        number = [
            float(w) for t in out for word, w in zip(t.words, t.image_attention) if number_words_of(word)
        ]
        other = [
            float(w) for t in out for word, w in zip(t.words, t.image_attention) if not number_words_of(word)
        ]
        return {"exact_match": exact_match(texts, pairs.targets),
                "number_match": number_word_match(texts, pairs.numbers),
                "number_image_attention": sum(number) / max(len(number), 1),
                "other_image_attention": sum(other) / max(len(other), 1), "n": len(texts)}  # fmt: skip
