"""Vocal tract length perturbation (Jaitly and Hinton 2013, "Vocal Tract Length Perturbation
(VTLP) improves speech recognition"): the frequency axis warped by a factor ``alpha`` near 1,
as a longer or shorter vocal tract would move the formants.

The warp is piecewise linear: ``f -> alpha * f`` up to a boundary, then the straight line that
ends at the Nyquist frequency, so ``0`` and ``nyquist`` stay where they are and the axis stays
increasing. The boundary is ``f_hi * min(alpha, 1) / alpha`` (``f_hi``: by default
:data:`F_HI_SHARE` of the Nyquist frequency, the paper's 4,800 Hz at 16 kHz), so the warped boundary ``f_hi * min(alpha, 1)`` is never past ``f_hi``.
:func:`qkv.speech.features.mel_filterbank` applies it to its filters' edges (Kaldi's VTLN does
the same): filter ``m`` then gathers, from the spectrum of the speech, what filter ``m`` would
gather from a speaker whose formants sit ``alpha`` times higher.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["F_HI_SHARE", "warp_frequencies"]

#: The default ``f_hi`` as a share of the Nyquist frequency (the paper's 4,800 Hz at 16 kHz).
F_HI_SHARE = 0.6


def warp_frequencies(freqs: Tensor, alpha: float, nyquist: float, *, f_hi: float | None = None) -> Tensor:
    """``freqs`` (Hz, any shape, in ``[0, nyquist]``) warped by ``alpha`` (see the module
    docstring); ``alpha == 1`` returns them unchanged.

    Raises:
        ValueError: ``alpha`` outside ``(0.5, 2)`` or ``f_hi`` outside ``(0, nyquist)``.
    """
    if not 0.5 < alpha < 2.0:
        raise ValueError(f"alpha: expected a warp factor in (0.5, 2), got {alpha!r}")
    f_hi = F_HI_SHARE * nyquist if f_hi is None else f_hi
    if not 0 < f_hi < nyquist:
        raise ValueError(f"f_hi: expected a frequency in (0, {nyquist}), got {f_hi!r}")
    if alpha == 1.0:
        return freqs
    boundary = f_hi * min(alpha, 1.0) / alpha
    slope = (nyquist - alpha * boundary) / (nyquist - boundary)
    return freqs.where(freqs <= boundary, nyquist - slope * (nyquist - freqs)).where(
        freqs > boundary, alpha * freqs
    )
