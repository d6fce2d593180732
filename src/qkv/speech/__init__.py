"""Attention in speech recognition, an application of the qkv library: spoken numbers from real
speech synthesizers, recognized by Listen, Attend and Spell. Imported only when used (``import
qkv.speech``; ``import qkv`` does not load it).

- :mod:`qkv.speech.synthesizers`: espeak-ng and flite voices, :func:`synthesize`.
- :mod:`qkv.speech.wav`: :func:`read_wav` (standard library ``wave`` + numpy).
- :mod:`qkv.speech.features`: :func:`resample` (windowed sinc), :func:`mel_filterbank`, :func:`log_mel`.
- :mod:`qkv.speech.data`: :func:`spoken_numbers`, splits holding out whole voices, cached.
"""

from .data import SPLITS, SpokenSet, Utterance, features_of, spoken_numbers, utterances, voice_splits
from .features import SAMPLE_RATE, log_mel, mel_filterbank, resample
from .synthesizers import INSTALL, SynthesizerMissing, Voice, synthesize
from .wav import read_wav

__all__ = [
    "INSTALL",
    "SAMPLE_RATE",
    "SPLITS",
    "SpokenSet",
    "SynthesizerMissing",
    "Utterance",
    "Voice",
    "features_of",
    "log_mel",
    "mel_filterbank",
    "read_wav",
    "resample",
    "spoken_numbers",
    "synthesize",
    "utterances",
    "voice_splits",
]
