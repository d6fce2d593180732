"""Training a cross-modal model from a config: what ``qkv train --model clip`` (or
``captioner``, ``captioner-transformer``, ``grounded``, ``video-qa``) runs.

:func:`train` turns a config (:func:`qkv.crossmodal.config.resolve`) into the pieces of the
model-agnostic :class:`qkv.train.loop.Trainer`: the strips of each split (:func:`load_strips`),
the model, AdamW, and a task. A matcher (:func:`qkv.models.builders.build_matching_model`)
learns with a :class:`MatchingTask`: shuffled batches of (strip, caption) pairs (fresh strips
every epoch), the symmetric InfoNCE loss (pairs of the same caption in a batch are all
positives), validation by loss and recall@1; a captioner with a :class:`qkv.crossmodal.captioning.CaptionTask`;
a grounded translator with a :class:`qkv.crossmodal.grounding.GroundedTask` on grounded pairs;
video question answering with a :class:`qkv.crossmodal.answering.VideoQATask` on digit clips.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..application.run import fit_run
from ..models.builders import (
    CAPTION_KINDS,
    GROUNDED_KINDS,
    MATCHING_KINDS,
    VIDEO_QA_KINDS,
    build_matching_model,
)
from ..models.clip import info_nce_logits, info_nce_rows
from ..parallel.gather import gather_rows
from ..parallel.sampler import Share, share_of
from ..train.loop import Trainer, TrainResult
from .answering import VideoQATask, build_video_qa_from_facts, load_clips, video_qa_facts
from .captioning import CaptionTask, build_captioner_from_facts, caption_facts
from .captions import PAD_ID, CaptionTokenizer
from .config import DataConfig, RunConfig
from .data import MAX_DIGITS, MAX_WORDS, SLOT_WIDTH, DigitStrips, caption_vocabulary, digit_strips
from .grounding import GroundedTask, build_grounded_from_facts, grounded_facts, load_pairs
from .images import patch_slots, shift_slots
from .minilm_text import MiniLMCaptions, minilm_text
from .retrieval import caption_positives, retrieval_recalls

__all__ = [
    "DATA_PARALLEL_KINDS",
    "MatchingTask",
    "load_strips",
    "matching_facts",
    "similarity_matrix",
    "train",
]


def load_strips(d: DataConfig, splits: tuple[str, ...] = ("train", "valid")) -> dict[str, DigitStrips]:
    """The strips of a ``[data]`` table's splits (the same config, the same strips)."""
    sizes = {"train": d.train_size, "valid": d.valid_size, "test": d.test_size, "zero_shot": d.test_size}
    return {
        s: digit_strips(sizes[s], seed=d.seed, lang=d.lang, split=s, split_seed=d.split_seed) for s in splits
    }


def matching_facts(d: DataConfig) -> dict[str, Any]:
    """What a checkpoint stores about its data: the caption language and vocabulary, the images."""
    return {"lang": d.lang, "vocabulary": list(caption_vocabulary(d.lang)), "max_words": MAX_WORDS,
            "image_size": 8, "image_width": MAX_DIGITS * SLOT_WIDTH, "channels": 1}  # fmt: skip


def build_from_facts(
    model_cfg: dict[str, Any], facts: dict[str, Any]
) -> tuple[nn.Module, CaptionTokenizer | MiniLMCaptions]:
    """The model of a ``[model]`` table and the tokenizer of the stored facts; with
    ``text_tower = "minilm"`` the locked MiniLM tower and its tokenizer
    (:func:`~qkv.crossmodal.minilm_text.minilm_text`: the ``minilm`` extra)."""
    words = CaptionTokenizer(facts["vocabulary"], max_words=facts["max_words"])
    text, tokenizer = minilm_text() if model_cfg.get("text_tower") == "minilm" else (None, words)
    model = build_matching_model(model_cfg, text=text, vocab_size=len(words), image_size=facts["image_size"],
                                 image_width=facts["image_width"], channels=facts["channels"],
                                 max_words=facts["max_words"], pad_id=PAD_ID)  # fmt: skip
    return model, tokenizer


@torch.no_grad()
def similarity_matrix(model: nn.Module, images: Tensor, tokens: Tensor, *, batch_size: int = 512) -> Tensor:
    """Cosine similarities ``(N, C)`` of images and word ids, in eval mode, ``batch_size`` at a time."""
    was = model.training
    model.eval()
    v = torch.cat([model.encode_image(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    t = torch.cat([model.encode_text(tokens[i : i + batch_size]) for i in range(0, len(tokens), batch_size)])
    model.train(was)
    return v @ t.T


class _StepRows(NamedTuple):
    """What a rank's share of a data-parallel matching step knows of the whole step: each rank's
    number of pairs (``sizes``; 0 for a stand-in share), and ``positives (n, N)``: its pairs
    against every pair of the step, in rank order (the order :func:`gather_rows` gives)."""

    sizes: tuple[int, ...]
    positives: Tensor


class MatchingTask:
    """The matching side of the :class:`~qkv.train.loop.Trainer`: batches of a seeded
    permutation of the epoch's training pairs (:meth:`epoch_pairs`: with ``[data] redraw``
    fresh strips every epoch), a pure function of ``(seed, epoch)``; with ``[data]
    augment_shift`` each batch's digits moved in their slots by the batch's own seeded draw
    (:func:`~qkv.crossmodal.images.shift_slots`). A batch is thus a pure function of the config,
    the epoch and the step, and a resumed run sees the same batches. :func:`info_nce` with every
    same-caption pair of a batch a positive, validation by loss and recall@1. :meth:`shard`
    gives the task of one rank of a data-parallel run."""

    count_unit = "pair"
    rank, world = 0, 1

    def __init__(self, cfg: RunConfig, strips: dict[str, DigitStrips], tokenizer: CaptionTokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.batch_size = cfg.train.batch_size
        self.train_images = strips["train"].images
        self._epoch_pairs = (0, *self._pairs(strips["train"]))  # (epoch, images, tokens, caption ids)
        self.valid = strips.get("valid")
        self.valid_tokens = (
            tokenizer.encode(self.valid.captions) if self.valid and len(self.valid.captions) else None
        )
        self.batches_per_epoch = -(-len(self.train_images) // self.batch_size)

    def shard(self, rank: int, world: int) -> MatchingTask:
        """This task on rank ``rank`` of ``world``: batches of ``world x batch_size`` pairs (the
        one-process plan, shifted as one), each cut by :func:`~qkv.parallel.sampler.share_of`;
        its batches are :class:`~qkv.parallel.sampler.Share` objects whose loss gathers every
        rank's embeddings (:func:`~qkv.parallel.gather.gather_rows`), so the step's loss is the
        InfoNCE of the whole ``world x batch_size`` batch."""
        sharded = copy.copy(self)
        sharded.rank, sharded.world = rank, world
        sharded.batch_size = self.batch_size * world
        sharded.batches_per_epoch = -(-len(self.train_images) // sharded.batch_size)
        return sharded

    def batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor, Tensor] | Share]:
        seed, shift = self.cfg.train.seed, self.cfg.data.augment_shift
        all_images, all_tokens, all_ids = self.epoch_pairs(epoch)
        order = torch.randperm(
            len(all_images), generator=torch.Generator().manual_seed(seed * 100_003 + epoch)
        )
        for b in range(start, self.batches_per_epoch):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            images, ids = all_images[index], all_ids[index]
            if shift:
                g = torch.Generator().manual_seed((seed * 100_003 + epoch) * 100_003 + b)
                images = shift_slots(images, slot_width=SLOT_WIDTH, max_shift=shift, generator=g)
            if self.world == 1:
                yield images, all_tokens[index], ids[:, None] == ids[None, :]
            else:
                yield self._share(images, all_tokens[index], ids)

    def _share(self, images: Tensor, tokens: Tensor, ids: Tensor) -> Share:
        """This rank's share of a step's pairs, with what its loss needs of the others'."""
        shares = [share_of(range(len(ids)), r, self.world) for r in range(self.world)]
        sizes = tuple(len(s.batch) if s.real else 0 for s in shares)
        order = torch.tensor([i for s in shares if s.real for i in s.batch])  # rank order
        mine = shares[self.rank].batch
        step = _StepRows(sizes, ids[mine][:, None] == ids[order][None, :])
        return Share((images[mine], tokens[mine], step), shares[self.rank].real)

    def epoch_pairs(self, epoch: int) -> tuple[Tensor, Tensor, Tensor]:
        """The training pairs of an epoch: ``(images, word ids, caption ids)``. Epoch 0 (and
        every epoch without ``[data] redraw``) has the loaded strips; with ``redraw`` epoch ``e``
        draws ``train_size`` fresh ones from the same training handwriting and numbers,
        :func:`~qkv.crossmodal.data.digit_strips` with seed ``data.seed + e * 1_000_003`` (a
        pure function of the config and the epoch, so a resumed run sees the same strips)."""
        if not self.cfg.data.redraw:
            epoch = 0
        if self._epoch_pairs[0] != epoch:
            d = self.cfg.data
            strips = digit_strips(d.train_size, seed=d.seed + epoch * _REDRAW_STRIDE, lang=d.lang,
                                  split="train", split_seed=d.split_seed)  # fmt: skip
            self._epoch_pairs = (epoch, *self._pairs(strips))
        return self._epoch_pairs[1:]

    def _pairs(self, strips: DigitStrips) -> tuple[Tensor, Tensor, Tensor]:
        ids = torch.tensor(_caption_ids(strips.captions))
        return strips.images, self.tokenizer.encode(strips.captions), ids

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor, Tensor | _StepRows]) -> tuple[Tensor, int]:
        """The batch's InfoNCE and its pairs; a data-parallel share's part of the step's
        InfoNCE (:func:`~qkv.models.clip.info_nce_rows` over the gathered embeddings; a
        stand-in share: 0, still in the graph and in the gathers)."""
        images, tokens, positives = batch
        emb = model(images, tokens, embeddings=True)  # through forward: what DDP wraps
        if not isinstance(positives, _StepRows):
            return info_nce_logits(emb.scale * emb.image @ emb.text.T, positives), int(images.shape[0])
        sizes, n = positives.sizes, positives.sizes[self.rank]
        all_image, all_text = (gather_rows(e, sizes, self.rank) for e in (emb.image, emb.text))
        if not n:
            return (all_image.sum() + all_text.sum() + emb.scale) * 0.0, 0
        loss = info_nce_rows(emb.image, emb.text, all_image, all_text, emb.scale, positives.positives)
        return loss, n

    def validate(self, model: nn.Module) -> dict[str, float | None]:
        if self.valid_tokens is None:
            return {"valid_loss": None}
        sim = similarity_matrix(model, self.valid.images, self.valid_tokens)  # (N, N)
        positives = caption_positives(self.valid.captions, self.valid.captions)
        with torch.no_grad():
            loss = info_nce_logits(model.scale() * sim, positives)
        return {
            "valid_loss": float(loss),
            "valid_i2t_r1": retrieval_recalls(sim, positives, ks=(1,))["i2t_r1"],
        }


_REDRAW_STRIDE = 1_000_003

#: The model kinds whose task trains data-parallel (has ``shard``): the matcher. The captioners,
#: the grounded translator and video QA compute their loss in the model's ``loss`` method, which
#: ``DistributedDataParallel`` does not see (it synchronizes the gradients of ``forward`` only):
#: they train in one process.
DATA_PARALLEL_KINDS = frozenset(MATCHING_KINDS)


def _words_of(facts: dict[str, Any], unit: str) -> str:
    """What the model reads or writes, for the announcement."""
    if "lang" not in facts:
        return "English to French with the number read"
    return f"{'questions' if unit == 'clip' else 'captions'} in {facts['lang']}"


def _caption_ids(captions: list[str]) -> list[int]:
    index: dict[str, int] = {}
    return [index.setdefault(c, len(index)) for c in captions]


def train(cfg: RunConfig | None, out_dir: str | Path, **options: Any) -> TrainResult:
    """Train the matcher, captioner or grounded translator a config describes (:func:`qkv.crossmodal.config.resolve`):
    the strips (or pairs), the model, AdamW and its task in a :class:`~qkv.train.loop.Trainer`.
    ``options``: ``resume``, ``progress``, ``stream``, ``stop_after_steps``, ``announce``, as
    :func:`qkv.application.run.fit_run` says."""
    return fit_run(cfg, out_dir, _trainer, config_type=RunConfig, **options)


def _pieces(cfg: RunConfig) -> tuple[nn.Module, Any, dict[str, Any], int]:
    """The model, task and data facts of a config, and how many training examples it has."""
    kind = cfg.model.get("kind", RunConfig.DEFAULT_KIND)
    if kind in VIDEO_QA_KINDS:
        facts = video_qa_facts(cfg.data)
        model, tokenizer = build_video_qa_from_facts(cfg.model, facts)
        task = VideoQATask(cfg, load_clips(cfg.data), tokenizer)
        return model, task, facts, len(task.train.questions)
    if kind in GROUNDED_KINDS:
        facts = grounded_facts(cfg.data)
        model, tokenizer = build_grounded_from_facts(cfg.model, facts)
        task = GroundedTask(cfg, load_pairs(cfg.data), tokenizer)
        return model, task, facts, len(task.train_images)
    strips = load_strips(cfg.data)
    if kind in CAPTION_KINDS:
        facts = caption_facts(cfg.data)
        model, tokenizer = build_captioner_from_facts(cfg.model, facts)
        supervised = getattr(model.config, "attention_supervision", 0)
        slot_of = patch_slots(model.grid, model.patch_size, SLOT_WIDTH) if supervised else None
        task = CaptionTask(cfg, strips, tokenizer, patch_slot=slot_of)
    else:
        facts = matching_facts(cfg.data)
        model, tokenizer = build_from_facts(cfg.model, facts)
        task = MatchingTask(cfg, strips, tokenizer)
    return model, task, facts, len(task.train_images)


def _trainer(cfg: RunConfig, ckpt, *, out: Path, progress: bool, stream, announce: bool) -> Trainer:
    """Data, model, optimizer and task of a config, in a Trainer (a resumed run's ``ckpt``
    restores it after)."""
    kind = cfg.model.get("kind", RunConfig.DEFAULT_KIND)
    model, task, facts, count = _pieces(cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]  # a locked text tower is not
    opt = torch.optim.AdamW(trainable, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if announce:
        params, frozen = sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters())
        locked = f" (+{frozen - params:,} locked)" if frozen > params else ""
        print(f"model: {kind}, {params:,} parameters{locked}; {count:,} training {task.count_unit}s, "
              f"{_words_of(facts, task.count_unit)} ({len(facts['vocabulary'])} words)", file=stream)  # fmt: skip
    return Trainer(model, opt, task, config=cfg.train, out_dir=out, run_config=cfg.to_dict(),
                   vocab=facts, desc=f"train {kind}", progress=progress, stream=stream)  # fmt: skip
