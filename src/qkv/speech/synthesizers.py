"""The speech synthesizers spoken numbers come from: Debian's ``espeak-ng`` and ``flite``.

A :class:`Voice` names one synthesizer voice: ``espeak-ng`` voices are a language voice and a
variant (``en-gb-scotland+f3``: the Scottish English phonemes in variant f3's pitch and
formants); ``flite`` voices are its built-in speakers (``awb``, ``rms``, ``slt``, ``kal16``).
:func:`synthesize` runs one synthesizer in a subprocess and returns the WAV bytes it wrote.

Without the programs, :func:`require` raises :class:`SynthesizerMissing` naming the install
command (``make speech`` runs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ESPEAK_LANGUAGES",
    "ESPEAK_VARIANTS",
    "FLITE_VOICES",
    "INSTALL",
    "SynthesizerMissing",
    "Voice",
    "require",
    "synthesize",
]

#: The command that installs both synthesizers on Debian (root).
INSTALL = "apt-get install -y espeak-ng flite"
#: espeak-ng's English voices (its phoneme sets and accents).
ESPEAK_LANGUAGES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-rp",
    "en-gb-x-gbcwmd",
    "en-029",
)
#: espeak-ng's variants (pitch, formants, breath): ``m1``..``m7``, ``f1``..``f5``, and a few others.
ESPEAK_VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "klatt",
    "Andy",
    "Annie",
)
#: flite's built-in general-purpose speakers (``kal`` is kal16's speaker at 8 kHz: not used).
FLITE_VOICES = ("awb", "rms", "slt", "kal16")


class SynthesizerMissing(FileNotFoundError):
    """A synthesizer program is not installed; the message names the install command."""


@dataclass(frozen=True, order=True)
class Voice:
    """One voice: ``engine`` ``"espeak-ng"`` (``name`` = language + ``"+"`` + variant) or
    ``"flite"`` (``name`` = a speaker of :data:`FLITE_VOICES`)."""

    engine: str
    name: str

    def __post_init__(self) -> None:
        if self.engine not in ("espeak-ng", "flite"):
            raise ValueError(f"voice engine: expected 'espeak-ng' or 'flite', got {self.engine!r}")
        if self.engine == "flite" and self.name not in FLITE_VOICES:
            raise ValueError(f"flite voice: expected one of {', '.join(FLITE_VOICES)}, got {self.name!r}")

    def __str__(self) -> str:
        return f"{self.engine}:{self.name}"


def require(engine: str) -> str:
    """The path of ``engine``'s program.

    Raises:
        SynthesizerMissing: it is not on ``PATH`` (the message gives :data:`INSTALL`).
    """
    path = shutil.which(engine)
    if path is None:
        raise SynthesizerMissing(
            f"speech synthesizer {engine!r} not found on PATH: spoken numbers are generated with Debian's "
            f"espeak-ng and flite; install them with `{INSTALL}` (as root) or `make speech`"
        )
    return path


def synthesize(text: str, voice: Voice, *, speed: float = 1.0, pitch: int = 50) -> bytes:
    """The WAV bytes of ``voice`` speaking ``text``; ``speed`` scales the speaking rate (1.0:
    espeak-ng's 175 words per minute, flite's natural durations) and ``pitch`` (0-99, espeak-ng's
    scale; flite maps it to a mean F0 of 70 + 1.6 * pitch Hz) sets the voice's pitch.

    Raises:
        SynthesizerMissing: the program is not installed.
        RuntimeError: it failed (its stderr in the message).
    """
    program = require(voice.engine)
    with tempfile.TemporaryDirectory(prefix="qkv-speech-") as tmp:
        out = Path(tmp) / "out.wav"
        if voice.engine == "espeak-ng":
            cmd = [
                program,
                "-v",
                voice.name,
                "-s",
                str(round(175 * speed)),
                "-p",
                str(int(pitch)),
                "-w",
                str(out),
                text,
            ]
        else:
            cmd = [program, "-voice", voice.name, "--setf", f"duration_stretch={1 / speed:.3f}",
                   "--setf", f"int_f0_target_mean={70 + 1.6 * pitch:.0f}", "-t", text, "-o", str(out)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{voice.engine} failed on {text!r} ({voice}): {done.stderr.strip()[:300]}")
        return out.read_bytes()
