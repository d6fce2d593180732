"""A trained speech recognizer loaded from a run directory: transcripts with their attention."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..application.run import load_trained
from .data import SpokenSet, features_of
from .decode import beam_search, greedy
from .metrics import error_rates
from .training import build_from_facts, describe_model, pad_features
from .vocabulary import WordVocabulary
from .wav import read_wav

__all__ = ["Recognizer", "Transcript", "is_monotonic"]

#: The most words a transcript may have (spoken numbers up to 999,999 need at most 12).
MAX_WORDS = 32


@dataclass
class Transcript:
    """One transcript: its ``text``, the ``attention`` of each emitted word over the listener
    (or encoder) states ``(words + 1, S)`` (the last row: when <eos> came), ``frames_per_state``
    (how many 10 ms feature frames one state covers), its log-probability and why decoding stopped."""

    text: str
    attention: Tensor
    frames_per_state: int
    score: float
    stop: str

    @property
    def word_attention(self) -> Tensor:
        """The rows of :attr:`attention` that belong to words ``(words, S)``: without the
        <eos> row (the step deciding to stop listens to no word)."""
        return self.attention[:-1] if self.stop == "eos" else self.attention


def is_monotonic(attention: Tensor) -> bool:
    """Whether each row's most attended listener state ``(rows, S)`` is at or after the
    previous row's: given a transcript's :attr:`Transcript.word_attention`, whether the
    alignment of speech to its words moves forward in time from one word to the next."""
    peaks = attention.argmax(-1).tolist()
    return peaks == sorted(peaks)


class Recognizer:
    """A speech recognizer (:class:`~qkv.models.las.LAS` or
    :class:`~qkv.models.speech_transformer.SpeechTransformer`) with its vocabulary, loaded by :meth:`load` (the ``best/`` checkpoint of a
    run when there is one, else the latest).

    Attributes:
        model: the model, in eval mode.
        vocab: its output words.
        config: the run's config (``data``, ``model``, ``train`` tables).
        path: the checkpoint directory it was loaded from.
    """

    def __init__(self, model: nn.Module, vocab: WordVocabulary, config: dict[str, Any], facts: dict[str, Any],
                 *, path: Path | None = None):  # fmt: skip
        self.model, self.vocab, self.config, self.path = model.eval(), vocab, config, path
        self.n_mels = int(facts["n_mels"])

    @classmethod
    def load(cls, checkpoint: str | PathLike, *, best: bool = True) -> Recognizer:
        """The recognizer of a ``qkv train --model las`` (or ``speech-transformer``) run directory (or of one checkpoint).

        Raises:
            ValueError: the checkpoint is not a speech recognizer's.
        """
        ck = load_trained(checkpoint, best=best)
        facts = ck.vocab
        if not isinstance(facts, dict) or "words" not in facts or "n_mels" not in facts:
            raise ValueError(
                f"checkpoint: {str(ck.path)!r} is not a speech recognizer's (no speech facts stored)"
            )
        model, vocab = build_from_facts(ck.config["model"], facts)
        ck.restore(model, rng=False)
        return cls(model, vocab, ck.config, facts, path=ck.path)

    def features(self, waveforms_or_paths: Any, sample_rate: int | None = None) -> list[Tensor]:
        """The features ``(frames, n_mels)`` of WAV paths (their own rates) or mono waveforms
        (1-D tensors or arrays at ``sample_rate``); one path or waveform is a list of one.

        Raises:
            ValueError: a waveform without ``sample_rate``, not 1-D, or empty; a bad WAV file.
        """
        items = waveforms_or_paths
        if isinstance(items, (str, PathLike, Tensor, np.ndarray)):
            items = [items]
        out = []
        for i, item in enumerate(items):
            if isinstance(item, (str, PathLike)):
                wave, rate = read_wav(item)
            else:
                if sample_rate is None:
                    raise ValueError(f"sample_rate: expected the rate (Hz) of waveform {i}, got None")
                wave, rate = torch.as_tensor(item, dtype=torch.float32), sample_rate
                if wave.dim() != 1 or wave.numel() == 0:
                    raise ValueError(
                        f"waveforms_or_paths[{i}]: expected a non-empty mono waveform (T,), got shape {tuple(wave.shape)}"
                    )
            out.append(features_of(wave, rate, n_mels=self.n_mels))
        return out

    def transcribe(
        self,
        waveforms_or_paths: Any,
        sample_rate: int | None = None,
        *,
        beam: int = 1,
        ctc_weight: float = 0.0,
    ) -> list[Transcript]:
        """Transcripts of WAV files or waveforms (see :meth:`features`), greedy (``beam=1``) or by
        beam search, ranked with ``ctc_weight`` lambda by the joint CTC/attention score (a model
        with a CTC head; :mod:`qkv.speech.decode`); each with its attention over the frames.

        Raises:
            ValueError: ``beam`` < 1, ``ctc_weight`` outside [0, 1] or above 0 without a CTC head.
        """
        return self.transcribe_features(
            self.features(waveforms_or_paths, sample_rate), beam=beam, ctc_weight=ctc_weight
        )

    def transcribe_features(
        self, features: Sequence[Tensor], *, beam: int = 1, batch_size: int = 64, ctc_weight: float = 0.0
    ) -> list[Transcript]:
        """Transcripts of features ``(frames, n_mels)``, ``batch_size`` at a time (``beam=1`` with
        ``ctc_weight`` above 0: a one-hypothesis joint search, not greedy)."""
        out = []
        for i in range(0, len(features), batch_size):
            x, lengths = pad_features(features[i : i + batch_size])
            if beam == 1 and ctc_weight == 0:
                hyps = greedy(self.model, x, lengths, max_len=MAX_WORDS)
            else:
                hyps = beam_search(
                    self.model, x, lengths, beam=beam, max_len=MAX_WORDS, ctc_weight=ctc_weight
                )
            out += [Transcript(self.vocab.decode(h.tokens), h.attention, self.model.config.reduction, h.score, h.stop)
                    for h in hyps]  # fmt: skip
        return out

    def evaluate(self, spoken: SpokenSet, *, beam: int = 1, ctc_weight: float = 0.0) -> dict[str, float]:
        """WER and CER on a set of spoken numbers, and the fraction of transcripts whose
        words' alignment is monotonic (:func:`is_monotonic` of each :attr:`Transcript.word_attention`):
        ``{"wer", "cer", "monotonic", "n"}``; decoded as :meth:`transcribe` does."""
        transcripts = self.transcribe_features(spoken.features, beam=beam, ctc_weight=ctc_weight)
        monotonic = sum(is_monotonic(t.word_attention) for t in transcripts) / max(len(transcripts), 1)
        return {
            **error_rates(spoken.texts, [t.text for t in transcripts]),
            "monotonic": monotonic,
            "n": len(spoken),
        }

    def describe(self) -> str:
        return f"{describe_model(self.config['model'])}, {len(self.vocab) - 3} words"
