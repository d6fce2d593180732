"""Training video question answering on digit clips: its :class:`VideoQATask`, the facts its
checkpoint stores, the model they build, and how answers are scored.

The task minimizes the cross-entropy of the answer plus ``[model] frame_loss_weight`` times the
cross-entropy of each real frame's digit (the clips' ``digits``;
:meth:`qkv.models.video_qa.VideoQA.loss`); validation is the answer's loss, the accuracy and
:func:`frame_accuracy` (the share of real frames whose digit the frame head reads right).
:func:`answer_metrics` scores answers per question kind and says how often the question's
cross-attention peaks on a gold frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..models.builders import build_video_qa_model
from .captions import PAD_ID, CaptionTokenizer
from .clips import (
    ANSWERS,
    FRAME_CLASSES,
    FRAME_SIZE,
    MAX_FRAMES,
    MAX_QUESTION_WORDS,
    QUESTION_KINDS,
    DigitClips,
    digit_clips,
    question_vocabulary,
)
from .config import DataConfig, RunConfig

__all__ = [
    "VideoQATask",
    "answer_clips",
    "answer_metrics",
    "build_video_qa_from_facts",
    "frame_accuracy",
    "load_clips",
    "video_qa_facts",
]


def load_clips(d: DataConfig, splits: tuple[str, ...] = ("train", "valid")) -> dict[str, DigitClips]:
    """The clips of a ``[data]`` table's splits (the same config, the same clips)."""
    sizes = {"train": d.train_size, "valid": d.valid_size, "test": d.test_size}
    return {
        s: digit_clips(sizes[s], seed=d.seed, split=s, split_seed=d.split_seed, kinds=d.question_kinds)
        for s in splits
    }


def video_qa_facts(d: DataConfig) -> dict[str, Any]:
    """What a checkpoint stores about its data: the question vocabulary, the answers, the frames."""
    return {"lang": d.lang, "vocabulary": list(question_vocabulary()), "max_words": MAX_QUESTION_WORDS,
            "answers": list(ANSWERS), "frame_classes": FRAME_CLASSES, "max_frames": MAX_FRAMES,
            "frame_size": FRAME_SIZE, "channels": 1}  # fmt: skip


def build_video_qa_from_facts(
    model_cfg: dict[str, Any], facts: dict[str, Any]
) -> tuple[nn.Module, CaptionTokenizer]:
    """The model of a ``[model]`` table and the question tokenizer of the stored facts."""
    tokenizer = CaptionTokenizer(facts["vocabulary"], max_words=facts["max_words"])
    model = build_video_qa_model(model_cfg, vocab_size=len(tokenizer), num_answers=len(facts["answers"]),
                                 frame_classes=facts["frame_classes"], max_words=facts["max_words"], pad_id=PAD_ID, max_frames=facts["max_frames"],
                                 frame_size=facts["frame_size"], channels=facts["channels"])  # fmt: skip
    return model, tokenizer


@torch.no_grad()
def answer_clips(
    model: nn.Module, frames: Tensor, lengths: Tensor, tokens: Tensor, *, batch_size: int = 256
) -> tuple[Tensor, Tensor | None]:
    """The predicted answer ids ``(N,)`` and, per clip, the question's cross-attention over the
    frames ``(N, F)`` (the last cross-attention layer, heads averaged, the null frame left out;
    None for a model that attends to no frames), in eval mode, ``batch_size`` clips at a time."""
    was = model.training
    model.eval()
    preds, weights = [], []
    for i in range(0, len(frames), batch_size):
        part = slice(i, i + batch_size)
        logits, maps = model(frames[part], lengths[part], tokens[part], need_weights=True)
        preds.append(logits.argmax(-1))
        if maps.video.cross and maps.video.cross[-1].shape[-1] == frames.shape[1] + 1:
            weights.append(maps.video.cross[-1].mean(1)[:, 0, 1:])  # (B, heads, 1, 1+F) -> (B, F)
    model.train(was)
    return torch.cat(preds), torch.cat(weights) if weights else None


def answer_metrics(clips: DigitClips, predicted: Tensor, frame_weights: Tensor | None) -> dict[str, Any]:
    """Accuracy overall and per question kind (``accuracy_position``, ...), and ``gold_peak``:
    the share of questions with gold frames whose attention peak (the argmax of ``frame_weights
    (N, F)``) is a gold frame (None without weights); ``n`` and ``n_<kind>`` count questions."""
    correct = (predicted == clips.answers).tolist()
    kinds = clips.kinds()
    out: dict[str, Any] = {"n": len(correct), "accuracy": sum(correct) / max(len(correct), 1)}
    for kind in QUESTION_KINDS:
        mine = [c for c, k in zip(correct, kinds) if k == kind]
        out[f"accuracy_{kind}"] = sum(mine) / len(mine) if mine else None
        out[f"n_{kind}"] = len(mine)
    out["gold_peak"] = None
    if frame_weights is not None:
        peaks = frame_weights.argmax(-1).tolist()
        hits = [p in g for p, g in zip(peaks, clips.gold) if g]
        out["gold_peak"] = sum(hits) / len(hits) if hits else None
    return out


@torch.no_grad()
def frame_accuracy(model: nn.Module, clips: DigitClips, *, batch_size: int = 256) -> float | None:
    """The share of the clips' real frames whose digit the model's frame head reads right, in
    eval mode (None for a model without a frame loss or that reads no frame: its head is untrained)."""
    cfg = model.config
    if cfg.frame_loss_weight == 0 or cfg.variant == "question_only":
        return None
    was = model.training
    model.eval()
    right = [
        model.frame_logits(clips.frames[i : i + batch_size]).argmax(-1) == clips.digits[i : i + batch_size]
        for i in range(0, len(clips.frames), batch_size)
    ]
    model.train(was)
    real = clips.digits >= 0
    return float(torch.cat(right)[real].float().mean())


class VideoQATask:
    """The video question answering side of the :class:`~qkv.train.loop.Trainer`: batches of a
    seeded permutation of the training clips (a pure function of ``(seed, epoch)``) with each
    frame's digit, the cross-entropy of the answers plus the weighted frame loss, validation by
    the answers' loss and accuracy and the frames' digit accuracy."""

    count_unit = "clip"

    def __init__(self, cfg: RunConfig, clips: dict[str, DigitClips], tokenizer: CaptionTokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.batch_size = cfg.train.batch_size
        self.train = clips["train"]
        self.train_tokens = tokenizer.encode(self.train.questions)
        self.valid = clips.get("valid")
        if self.valid is not None and not len(self.valid.questions):
            self.valid = None
        self.valid_tokens = tokenizer.encode(self.valid.questions) if self.valid is not None else None
        self.batches_per_epoch = -(-len(self.train.questions) // self.batch_size)

    def batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]:
        g = torch.Generator().manual_seed(self.cfg.train.seed * 100_003 + epoch)
        order = torch.randperm(len(self.train.questions), generator=g)
        for b in range(start, self.batches_per_epoch):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield (
                self.train.frames[index],
                self.train.lengths[index],
                self.train_tokens[index],
                self.train.answers[index],
                self.train.digits[index],
            )

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, int]:
        return model.loss(*batch), int(batch[0].shape[0])

    def validate(self, model: nn.Module) -> dict[str, float | None]:
        if self.valid is None:
            return {"valid_loss": None}
        was = model.training
        model.eval()
        with torch.no_grad():
            logits = model(self.valid.frames, self.valid.lengths, self.valid_tokens)
            loss = float(nn.functional.cross_entropy(logits, self.valid.answers))
        model.train(was)
        out = {
            "valid_loss": loss,
            "valid_accuracy": float((logits.argmax(-1) == self.valid.answers).float().mean()),
        }
        read = frame_accuracy(model, self.valid)  # left out without a frame loss
        return out if read is None else {**out, "valid_frame_accuracy": read}
