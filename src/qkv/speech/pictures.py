"""Where a recognizer listens: an utterance's log-mel spectrogram above each word's attention.

:func:`alignment_figure` draws the features ``(frames, n_mels)`` on top and, under them on the
same time axis, one panel per model: a row per emitted word (and ``<eos>``), its attention over
the model's states spread over the frames each state covers (``frames_per_state``), each row
scaled to its own peak (dark: where that word listens most). When the
alignment works the rows' bright cells step down and to the right with the words: monotonic
(:func:`qkv.speech.recognizer.is_monotonic` of the words' rows; the <eos> row is drawn but not
counted).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from ..viz import figure_path, new_figure, save_figure
from .recognizer import Transcript, is_monotonic

__all__ = ["alignment_figure"]


def alignment_figure(
    features: Tensor, transcripts: Sequence[tuple[str, Transcript]], *, title: str, path: str | Path
) -> Path:
    """The spectrogram of ``features`` ``(frames, n_mels)`` above each named transcript's
    attention (words + 1, states), written to ``path`` (``.png``, ``.svg`` or ``.pdf``).

    Raises:
        ValueError: ``features`` not 2-D, no transcripts, or ``path`` not a figure file name.
        ImportError: matplotlib is missing (naming the extra).
    """
    out = figure_path(path)
    if features.dim() != 2:
        raise ValueError(f"features: expected (frames, n_mels), got shape {tuple(features.shape)}")
    if not transcripts:
        raise ValueError("transcripts: expected at least one (name, Transcript), got none")
    frames = features.shape[0]
    heights = [2.0] + [0.5 + 0.2 * t.attention.shape[0] for _, t in transcripts]
    fig = new_figure((7.5, sum(heights)))
    axes = fig.subplots(len(heights), 1, sharex=True, gridspec_kw={"height_ratios": heights})
    axes[0].imshow(features.T.float().numpy(), aspect="auto", origin="lower", cmap="magma",
                   extent=(0, frames, 0, features.shape[1]), interpolation="nearest")  # fmt: skip
    axes[0].set_ylabel("mel band")
    axes[0].set_title(title, fontsize=10)
    for ax, (name, t) in zip(axes[1:], transcripts, strict=True):
        att = t.attention.float()  # (words + 1, S)
        att = att / att.amax(-1, keepdim=True).clamp_min(1e-12)  # each row against its own peak
        span = att.shape[1] * t.frames_per_state  # the frames the states cover
        ax.imshow(att.numpy(), aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest",
                  extent=(0, span, att.shape[0] - 0.5, -0.5))  # fmt: skip
        words = t.text.split() + (["<eos>"] if t.stop == "eos" else [])
        ax.set_yticks(range(len(words)), words, fontsize=8)
        order = "monotonic" if is_monotonic(t.word_attention) else "not monotonic"
        ax.set_title(f"{name}: \u201c{t.text}\u201d ({order})", fontsize=9, loc="left")
    axes[-1].set_xlim(0, frames)
    axes[-1].set_xlabel("frame (10 ms)")
    save_figure(fig, out)
    return out
