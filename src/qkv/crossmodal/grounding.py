"""Training a grounded translator on digit strips: its :class:`GroundedTask`, the pairs of a
``[data]`` table, the facts its checkpoint stores and the model they build.

The task is the captioning task (:class:`~qkv.crossmodal.captioning.CaptionTask`: seeded
batches, teacher forcing, validation by loss and greedy exact match) on
:func:`~qkv.crossmodal.grounded.grounded_pairs`: a batch is ``(sources, images, targets)``,
``model.loss(sources, images, targets)``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..models.builders import build_grounded_model
from .captioning import CaptionTask, build_captioner_from_facts, caption_texts
from .captions import CAPTION_MARKS, CaptionTokenizer
from .config import DataConfig
from .data import MAX_DIGITS, SLOT_WIDTH
from .decode import CaptionHypothesis, greedy_from_memory
from .grounded import MAX_SOURCE_WORDS, MAX_TARGET_WORDS, GroundedPairs, grounded_pairs, grounded_vocabulary

__all__ = ["GroundedTask", "build_grounded_from_facts", "grounded_facts", "load_pairs", "translate_ids"]


def load_pairs(d: DataConfig, splits: tuple[str, ...] = ("train", "valid")) -> dict[str, GroundedPairs]:
    """The grounded pairs of a ``[data]`` table's splits (``test`` and ``zero_shot``:
    ``test_size`` each); the strips are those of the table's seeds, in French."""
    sizes = {"train": d.train_size, "valid": d.valid_size, "test": d.test_size, "zero_shot": d.test_size}
    return {s: grounded_pairs(sizes[s], seed=d.seed, split=s, split_seed=d.split_seed) for s in splits}


def grounded_facts(d: DataConfig) -> dict[str, Any]:
    """What a grounded translator's checkpoint stores about its data: the one vocabulary of
    both languages (``<start>`` and ``<end>`` first), the sentence lengths, the images."""
    return {"vocabulary": [*CAPTION_MARKS, *grounded_vocabulary()], "max_words": MAX_TARGET_WORDS,
            "max_source_words": MAX_SOURCE_WORDS, "image_size": 8, "image_width": MAX_DIGITS * SLOT_WIDTH,
            "channels": 1, "slot_width": SLOT_WIDTH}  # fmt: skip


def build_grounded_from_facts(
    model_cfg: dict[str, Any], facts: dict[str, Any]
) -> tuple[nn.Module, CaptionTokenizer]:
    """The grounded translator of a ``[model]`` table and the tokenizer of the stored facts."""
    return build_captioner_from_facts(
        model_cfg, facts, build=build_grounded_model, max_source_words=facts["max_source_words"]
    )


def translate_ids(
    model: nn.Module, sources: Tensor, images: Tensor, *, batch_size: int = 500
) -> list[CaptionHypothesis]:
    """Greedy translations of source word ids ``(N, S)`` and images ``(N, C, H, W)``,
    ``batch_size`` at a time, each with its words' attention over the memory ``(words, S [+ N])``."""
    out = []
    for i in range(0, len(sources), batch_size):
        memory = model.encode(sources[i : i + batch_size], images[i : i + batch_size])
        out += greedy_from_memory(model, memory)
    return out


class GroundedTask(CaptionTask):
    """The grounded translation side of the :class:`~qkv.train.loop.Trainer`: the captioning
    task on :class:`~qkv.crossmodal.grounded.GroundedPairs` (see the module docstring)."""

    count_unit = "pair"

    def inputs(self, pairs: GroundedPairs) -> tuple[Tensor, ...]:
        """``(sources (N, S), images (N, C, H, W), targets (N, T))``."""
        return self.tokenizer.encode(pairs.sources), pairs.images, self.tokenizer.encode(pairs.targets)

    def references(self, pairs: GroundedPairs) -> list[str]:
        return pairs.targets

    def decode(self, model: nn.Module, pairs: GroundedPairs) -> list[str]:
        sources, images, _ = self.inputs(pairs)
        return caption_texts(self.tokenizer, translate_ids(model, sources, images))
