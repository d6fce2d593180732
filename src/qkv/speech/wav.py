"""WAV files read with the standard library's :mod:`wave` and numpy: mono float waveforms.

:func:`read_wav` takes a path or the bytes of a file and returns ``(waveform, sample_rate)``:
``waveform`` float32 ``(T,)`` in [-1, 1]. 8-bit (unsigned), 16-, 24- and 32-bit integer PCM are
read; several channels are averaged to one; an empty file, a file that is not a RIFF/WAVE file
and a compressed or floating-point one are refused with a :class:`ValueError` naming the file.
"""

from __future__ import annotations

import io
import wave
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["read_wav"]


def read_wav(source: str | PathLike | bytes) -> tuple[Tensor, int]:
    """``(waveform (T,) float32 in [-1, 1], sample_rate)`` of a WAV file (a path or its bytes);
    channels averaged to mono.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a PCM WAV file, an unsupported sample width, or no samples.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes):
        if not Path(source).is_file():
            raise FileNotFoundError(f"wav: no such file {name!r}")
        source = Path(source).read_bytes()
    try:
        with wave.open(io.BytesIO(source), "rb") as w:
            channels, width, rate, frames = (
                w.getnchannels(),
                w.getsampwidth(),
                w.getframerate(),
                w.getnframes(),
            )
            raw = w.readframes(frames)
    except (wave.Error, EOFError) as e:
        raise ValueError(
            f"wav: {name!r} is not a PCM WAV file ({e or 'too short to hold a WAV header'})"
        ) from None
    if frames == 0 or not raw:
        raise ValueError(f"wav: {name!r} holds no samples (an empty recording)")
    samples = _pcm(raw, width, name).reshape(-1, channels).mean(axis=1)  # (T, C) -> (T,)
    return torch.from_numpy(samples.astype(np.float32)), rate


def _pcm(raw: bytes, width: int, name: str) -> np.ndarray:
    """Interleaved integer PCM samples as float64 in [-1, 1]."""
    if width == 1:  # 8-bit WAV is unsigned
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    if width == 3:  # 24-bit little-endian: sign-extend three bytes into an int32
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        return np.where(value >= 1 << 23, value - (1 << 24), value).astype(np.float64) / float(1 << 23)
    if width == 4:
        return np.frombuffer(raw, dtype="<i4").astype(np.float64) / float(1 << 31)
    raise ValueError(f"wav: {name!r} has {8 * width}-bit samples; expected 8, 16, 24 or 32-bit integer PCM")
