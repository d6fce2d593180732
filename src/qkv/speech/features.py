"""Speech features in torch: resampling and log-mel spectrograms (torchaudio is not needed).

Resampling (:func:`resample`) is band-limited interpolation with a Hann-windowed sinc, the
algorithm of torchaudio's ``sinc_interp_hann`` (Smith's "Digital Audio Resampling"): the rates
are reduced by their gcd to ``orig -> new``, and each of the ``new`` output phases is one
``conv1d`` kernel of stride ``orig``, the ideal low-pass ``sinc`` at ``rolloff * min(orig, new)``
windowed to ``lowpass_width`` zero crossings each side. :func:`speed_perturb` is a resampling
played back at the old rate.

The log-mel spectrogram (:func:`log_mel`): ``torch.stft`` (Hann window, 25 ms, hop 10 ms at
16 kHz), the power spectrum, a triangular filterbank on the HTK mel scale (:func:`mel_filterbank`:
``mel(f) = 2595 log10(1 + f / 700)``, filters' edges equally spaced in mel, no area
normalisation; its edges optionally warped by :func:`qkv.speech.vtlp.warp_frequencies`),
``log(x + 1e-6)``.

Shapes: waveform ``(T,)`` or ``(B, T)``; features ``(frames, n_mels)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from .vtlp import warp_frequencies

__all__ = ["SAMPLE_RATE", "hz_to_mel", "log_mel", "mel_filterbank", "mel_to_hz", "resample", "speed_perturb"]

#: The rate every waveform is resampled to before its features are computed.
SAMPLE_RATE = 16_000


def resample(
    waveform: Tensor, orig_rate: int, new_rate: int, *, lowpass_width: int = 6, rolloff: float = 0.99
) -> Tensor:
    """``waveform`` ``(..., T)`` at ``orig_rate`` Hz resampled to ``new_rate`` Hz:
    ``ceil(T * new / orig)`` samples (see the module docstring).

    Raises:
        ValueError: a rate that is not a positive int.
    """
    for name, rate in (("orig_rate", orig_rate), ("new_rate", new_rate)):
        if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
            raise ValueError(f"{name}: expected a positive int (Hz), got {rate!r}")
    if orig_rate == new_rate:
        return waveform
    g = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // g, new_rate // g
    base = min(orig, new) * rolloff  # the low-pass cutoff, in units of the reduced rates
    width = math.ceil(lowpass_width * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig  # (1, 1, K)
    t = (torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx) * base  # (new, 1, K)
    t = t.clamp(-lowpass_width, lowpass_width)
    window = torch.cos(t * math.pi / lowpass_width / 2) ** 2
    t = t * math.pi
    kernels = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (base / orig)
    shape = waveform.shape
    x = waveform.reshape(-1, shape[-1])  # (N, T)
    length = x.shape[-1]
    x = F.pad(x.to(torch.float64), (width, width + orig))
    y = F.conv1d(x[:, None], kernels, stride=orig)  # (N, new, frames)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, : math.ceil(new * length / orig)]  # (N, T')
    return y.to(waveform.dtype).reshape(*shape[:-1], -1)


def speed_perturb(waveform: Tensor, factor: float, rate: int) -> Tensor:
    """``waveform`` ``(..., T)`` at ``rate`` Hz spoken ``factor`` times faster, still at ``rate``
    (speed perturbation, Ko et al. 2015, "Audio augmentation for speech recognition"): resampled
    to ``rate / factor`` (rounded to 100 Hz), about ``T / factor`` samples, played back at
    ``rate``: tempo, pitch and formants all ``factor`` times higher, like a tape played fast.

    Raises:
        ValueError: ``factor`` outside ``(0.5, 2)``.
    """
    if not 0.5 < factor < 2.0:
        raise ValueError(f"factor: expected a speed factor in (0.5, 2), got {factor!r}")
    if factor == 1.0:
        return waveform
    return resample(waveform, rate, round(rate / factor / 100) * 100)


def hz_to_mel(f: Tensor | float) -> Tensor | float:
    """The HTK mel scale: ``2595 * log10(1 + f / 700)``."""
    if isinstance(f, Tensor):
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    return 2595.0 * math.log10(1.0 + f / 700.0)


def mel_to_hz(m: Tensor | float) -> Tensor | float:
    """The inverse of :func:`hz_to_mel`: ``700 * (10 ** (m / 2595) - 1)``."""
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(
    n_freqs: int,
    n_mels: int,
    sample_rate: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    *,
    warp: float = 1.0,
) -> Tensor:
    """Triangular mel filters ``(n_freqs, n_mels)`` over the ``n_freqs`` linear frequency bins
    ``0 .. sample_rate / 2`` of an STFT: filter ``m`` rises from edge ``m`` to ``m + 1`` and falls
    to ``m + 2``, the ``n_mels + 2`` edges equally spaced on the mel scale from ``f_min`` to
    ``f_max`` (default ``sample_rate / 2``); peak 1, no area normalisation (torchaudio's
    ``melscale_fbanks(norm=None, mel_scale="htk")``). ``warp`` moves every edge by
    :func:`qkv.speech.vtlp.warp_frequencies` (1.0: none): still ``n_mels`` triangles of peak 1, their
    edges increasing."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(
            f"f_min, f_max: expected 0 <= f_min < f_max <= {sample_rate / 2}, got {f_min}, {f_max}"
        )
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)  # (F,)
    edges = mel_to_hz(torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64))
    edges = warp_frequencies(edges, warp, sample_rate / 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]  # (M,) each
    rise = (freqs[:, None] - lower) / (center - lower)  # (F, M)
    fall = (upper - freqs[:, None]) / (upper - center)
    return torch.clamp(torch.minimum(rise, fall), min=0.0).float()


def log_mel(
    waveform: Tensor, *, sample_rate: int = SAMPLE_RATE, n_mels: int = 40, warp: float = 1.0
) -> Tensor:
    """The log-mel spectrogram ``(frames, n_mels)`` of a mono waveform ``(T,)`` at ``sample_rate``
    (25 ms Hann windows every 10 ms, centred; see the module docstring), its filterbank's
    frequencies warped by ``warp`` (vocal tract length perturbation; 1.0: none)."""
    if waveform.dim() != 1:
        raise ValueError(f"waveform: expected a mono waveform (T,), got shape {tuple(waveform.shape)}")
    n_fft, hop = round(0.025 * sample_rate), round(0.010 * sample_rate)
    spec = torch.stft(waveform.float(), n_fft=n_fft, hop_length=hop, window=torch.hann_window(n_fft),
                      center=True, return_complex=True)  # (F, frames)  # fmt: skip
    power = spec.abs() ** 2
    mels = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, 20.0, warp=warp)  # (F, M)
    return torch.log(power.T @ mels + 1e-6)  # (frames, M)
