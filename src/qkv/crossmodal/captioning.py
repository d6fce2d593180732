"""Training a captioner on digit strips: its :class:`CaptionTask`, the facts its checkpoint
stores and the model they build.

The task feeds the gold caption to the decoder (teacher forcing: ``<start> y_1 .. y_T`` in,
``y_1 .. y_T <end>`` out) and minimizes the cross-entropy per word (plus, for Show, Attend and
Tell, its doubly stochastic penalty and, with ``attention_supervision``, each word's attention
against its gold slots: :meth:`qkv.models.captioner.ShowAttendTell.loss`); validation is that
loss and the exact match of greedy captions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..models.builders import build_caption_model
from .caption_metrics import exact_match
from .captions import CAPTION_MARKS, END_ID, PAD_ID, START_ID, CaptionTokenizer
from .config import DataConfig, RunConfig
from .data import MAX_DIGITS, MAX_WORDS, SLOT_WIDTH, DigitStrips, caption_vocabulary
from .decode import greedy
from .images import slot_attention

__all__ = ["CaptionTask", "build_captioner_from_facts", "caption_facts", "caption_texts", "caption_tokenizer"]


def caption_facts(d: DataConfig) -> dict[str, Any]:
    """What a captioner's checkpoint stores about its data: the language, the vocabulary
    (``<start>`` and ``<end>`` first), the images and the strip slots."""
    return {"lang": d.lang, "vocabulary": [*CAPTION_MARKS, *caption_vocabulary(d.lang)], "max_words": MAX_WORDS,
            "image_size": 8, "image_width": MAX_DIGITS * SLOT_WIDTH, "channels": 1,
            "slot_width": SLOT_WIDTH}  # fmt: skip


def caption_tokenizer(facts: dict[str, Any]) -> CaptionTokenizer:
    """The tokenizer of stored facts (``vocabulary``, ``max_words``) of a model that writes
    words after ``<start>`` and until ``<end>``.

    Raises:
        ValueError: a vocabulary that does not start with :data:`CAPTION_MARKS`.
    """
    tokenizer = CaptionTokenizer(facts["vocabulary"], max_words=facts["max_words"])
    if tokenizer.ids.get("<start>") != START_ID or tokenizer.ids.get("<end>") != END_ID:
        raise ValueError(
            f"facts: expected a vocabulary starting with {CAPTION_MARKS}, got {facts['vocabulary'][:2]}"
        )
    return tokenizer


def build_captioner_from_facts(
    model_cfg: dict[str, Any], facts: dict[str, Any], *, build: Callable[..., nn.Module] = build_caption_model,
    **more_facts: Any,
) -> tuple[nn.Module, CaptionTokenizer]:  # fmt: skip
    """The captioner of a ``[model]`` table and the tokenizer of the stored facts; ``build`` and
    ``more_facts``: another model that writes words on images (a builder of
    :mod:`qkv.models.builders` and the facts it takes beyond a captioner's)."""
    tokenizer = caption_tokenizer(facts)
    model = build(model_cfg, vocab_size=len(tokenizer), image_size=facts["image_size"],
                  image_width=facts["image_width"], channels=facts["channels"], max_words=facts["max_words"],
                  pad_id=PAD_ID, start_id=START_ID, end_id=END_ID, **more_facts)  # fmt: skip
    return model, tokenizer


def caption_texts(tokenizer: CaptionTokenizer, hypotheses) -> list[str]:
    """The captions of decoded hypotheses, words joined by spaces."""
    return [" ".join(tokenizer.decode(h.tokens)) for h in hypotheses]


class CaptionTask:
    """The captioning side of the :class:`~qkv.train.loop.Trainer`: batches of a seeded
    permutation of the training strips (a pure function of ``(seed, epoch)``), teacher-forced
    loss, validation by loss and greedy exact match.

    A batch is the tuple :meth:`inputs` gives for a set, indexed: ``(images, words)`` here,
    ``model.loss(*batch)`` its loss; a task on other sets overrides :meth:`inputs`,
    :meth:`references` and :meth:`decode` (:class:`qkv.crossmodal.grounding.GroundedTask`).
    Given ``patch_slot`` ``(N,)``, the slot of each of the model's patches, a batch also holds
    each word's gold attention (supervised attention)."""

    count_unit = "strip"

    def __init__(self, cfg: RunConfig, sets: dict[str, Any], tokenizer: CaptionTokenizer, *,
                 patch_slot: Tensor | None = None):  # fmt: skip
        self.cfg, self.tokenizer, self.patch_slot = cfg, tokenizer, patch_slot
        self.batch_size = cfg.train.batch_size
        self.train_images = sets["train"].images
        self.train_inputs = self.inputs(sets["train"])
        self.valid = sets.get("valid")
        if self.valid is not None and not len(self.references(self.valid)):
            self.valid = None
        self.valid_inputs = self.inputs(self.valid) if self.valid is not None else None
        self.batches_per_epoch = -(-len(self.train_images) // self.batch_size)

    def inputs(self, strips: DigitStrips) -> tuple[Tensor, ...]:
        """What ``model.loss`` takes for a set: ``(images (N, C, H, W), words (N, T))``, and with
        a ``patch_slot`` the words' gold attention ``(N, T, patches)``
        (:func:`qkv.crossmodal.images.slot_attention`)."""
        words = self.tokenizer.encode(strips.captions)
        if self.patch_slot is None:
            return strips.images, words
        return strips.images, words, slot_attention(strips.slots, self.patch_slot, words.shape[1])

    def references(self, strips: DigitStrips) -> list[str]:
        """The texts greedy decoding is scored against: the captions."""
        return strips.captions

    def decode(self, model: nn.Module, strips: DigitStrips) -> list[str]:
        """Greedy captions of a set."""
        return caption_texts(self.tokenizer, greedy(model, strips.images))

    def batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, ...]]:
        g = torch.Generator().manual_seed(self.cfg.train.seed * 100_003 + epoch)
        order = torch.randperm(len(self.train_images), generator=g)
        for b in range(start, self.batches_per_epoch):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield tuple(t[index] for t in self.train_inputs)

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, int]:
        return model.loss(*batch), int(batch[0].shape[0])

    def validate(self, model: nn.Module) -> dict[str, float | None]:
        if self.valid is None:
            return {"valid_loss": None}
        was = model.training
        model.eval()
        with torch.no_grad():
            loss = float(model.loss(*self.valid_inputs))
            texts = self.decode(model, self.valid)
        model.train(was)
        return {"valid_loss": loss, "valid_exact_match": exact_match(texts, self.references(self.valid))}
