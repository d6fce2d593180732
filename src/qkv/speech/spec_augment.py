"""SpecAugment's masks (Park et al. 2019, "SpecAugment: a simple data augmentation method for
automatic speech recognition"), the frequency and time masking of a batch of log-mel features.

A frequency mask zeroes ``f`` consecutive mel bands ``[f0, f0 + f)`` of an utterance, ``f``
drawn uniformly from ``0 .. freq_width`` and ``f0`` from ``0 .. M - f``; a time mask zeroes
``t`` consecutive frames ``[t0, t0 + t)``, ``t`` drawn from ``0 .. min(time_width, length)`` and
``t0`` from ``0 .. length - t``, so it stays inside the utterance (padding is never touched).
Each utterance draws its own masks, ``freq_masks`` of one kind and ``time_masks`` of the other
(they may overlap). Zero is the mean of a band: :func:`qkv.speech.features.log_mel` normalises
each band per utterance. Time warping, the paper's third policy, is left out (the paper found
it the least useful).

Every draw comes from the ``generator`` passed in, so a batch's masks are a pure function of
its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SpecAugment", "draw_spans"]


def draw_spans(count: int, max_width: int, extent: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """``count`` spans ``(start, width)`` inside ``[0, extent)``: ``width`` uniform in
    ``0 .. min(max_width, extent)``, then ``start`` uniform in ``0 .. extent - width``."""
    spans = []
    for _ in range(count):
        width = int(torch.randint(min(max_width, extent) + 1, (1,), generator=generator))
        start = int(torch.randint(extent - width + 1, (1,), generator=generator))
        spans.append((start, width))
    return spans


@dataclass(frozen=True)
class SpecAugment:
    """The masking policy: how many masks of each kind, and the widest of each (0 masks: off)."""

    freq_masks: int = 0
    freq_width: int = 0  # F: the widest frequency mask, in mel bands
    time_masks: int = 0
    time_width: int = 0  # T: the widest time mask, in frames

    def __post_init__(self) -> None:
        for name in ("freq_masks", "freq_width", "time_masks", "time_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"SpecAugment.{name}: expected an int >= 0, got {value!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.freq_masks * self.freq_width or self.time_masks * self.time_width)

    def __call__(self, features: Tensor, lengths: Tensor, generator: torch.Generator) -> Tensor:
        """A masked copy of ``features`` ``(B, T, M)`` (``lengths`` ``(B,)``: each utterance's
        real frames); the input is left as it was."""
        if features.dim() != 3 or lengths.shape != features.shape[:1]:
            raise ValueError(f"features, lengths: expected (B, T, M) and (B,), got {tuple(features.shape)} "
                             f"and {tuple(lengths.shape)}")  # fmt: skip
        out = features.clone()
        for b, length in enumerate(lengths.tolist()):
            for f0, f in draw_spans(self.freq_masks, self.freq_width, features.shape[2], generator):
                out[b, :length, f0 : f0 + f] = 0
            for t0, t in draw_spans(self.time_masks, self.time_width, length, generator):
                out[b, t0 : t0 + t] = 0
        return out
