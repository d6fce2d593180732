"""A trained video question answering model loaded from a run directory: answers, their
attention over the frames, scores per question kind."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..models.builders import VIDEO_QA_KINDS
from .answering import answer_clips, answer_metrics, build_video_qa_from_facts, frame_accuracy
from .captions import CaptionTokenizer
from .checkpoints import load_model
from .clips import DigitClips

__all__ = ["Answerer"]


class Answerer:
    """A :class:`~qkv.models.video_qa.VideoQA` with its question tokenizer and answers, loaded
    by :meth:`load` (the ``best/`` checkpoint of a run when there is one, else the latest).

    Attributes:
        model: the model, in eval mode.
        config: the run's config (``data``, ``model``, ``train`` tables).
        answers: the answer of each answer id.
        path: the checkpoint directory it was loaded from.
    """

    def __init__(self, model: nn.Module, tokenizer: CaptionTokenizer, config: dict[str, Any],
                 facts: dict[str, Any], *, path: Path | None = None):  # fmt: skip
        self.model, self.tokenizer, self.config, self.path = model.eval(), tokenizer, config, path
        self.answers = tuple(facts["answers"])

    @classmethod
    def load(cls, checkpoint: str | Path, *, best: bool = True) -> Answerer:
        """The answerer of a ``qkv train --model video-qa`` run directory (or of one checkpoint)."""
        model, tokenizer, config, facts, path = load_model(
            checkpoint, best=best, kinds=VIDEO_QA_KINDS, needs="answers", what="a video question answerer's",
            build=build_video_qa_from_facts,
        )  # fmt: skip
        return cls(model, tokenizer, config, facts, path=path)

    @property
    def variant(self) -> str:
        """``"full"``, or the control it is (``"question_only"``, ``"frames_averaged"``)."""
        return self.model.config.variant

    def answer(
        self, frames: Tensor, lengths: Tensor, questions: Sequence[str]
    ) -> tuple[list[str], Tensor | None]:
        """The answers of ``questions`` about clips ``frames (N, F, 1, S, S)`` of ``lengths``, and
        each question's attention over the frames ``(N, F)`` (None for a control that attends
        to no frame order).

        Raises:
            ValueError: frames, lengths or questions of the wrong shape, or an empty question.
        """
        predicted, weights = answer_clips(self.model, frames, lengths, self.tokenizer.encode(questions))
        return [self.answers[i] for i in predicted.tolist()], weights

    def evaluate(self, clips: DigitClips) -> dict[str, Any]:
        """Accuracy overall and per question kind, the share of questions whose attention peaks
        on a gold frame (:func:`qkv.crossmodal.answering.answer_metrics`), and ``frame_accuracy``:
        the share of real frames whose digit the frame head reads right (None without a frame
        loss; :func:`qkv.crossmodal.answering.frame_accuracy`)."""
        tokens = self.tokenizer.encode(clips.questions)
        predicted, weights = answer_clips(self.model, clips.frames, clips.lengths, tokens)
        return {
            **answer_metrics(clips, predicted, weights),
            "frame_accuracy": frame_accuracy(self.model, clips),
        }
