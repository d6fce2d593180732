"""Spoken numbers: real synthesizer speech of numbers in words, as log-mel features, cached.

Each utterance is one number ``0 .. max_number`` in English words (:func:`qkv.number_words.
number_tokens`: ``742`` -> ``"seven hundred and forty two"``), spoken by one voice of
``espeak-ng`` (a language voice and a variant, at a drawn speed and pitch) or ``flite`` (awb,
rms, slt; kal16 only in its own split), read from the WAV the synthesizer wrote, resampled to
16 kHz (:func:`qkv.speech.features.resample`), perturbed (training: a speed factor in [0.9,
1.1] by resampling, :func:`qkv.speech.features.speed_perturb`; every split: white noise at
20-40 dB SNR, seeded per utterance), and turned into a log-mel spectrogram (training, when
``warp`` > 0: its filterbank warped by a factor in ``[1 - warp, 1 + warp]``, vocal tract length
perturbation, :mod:`qkv.speech.vtlp`) normalised per utterance (each mel band's mean 0 and
variance 1). ``flite_share`` sets how much of the training speech is flite's.

Splits hold out whole voices (:func:`voice_splits`): the espeak-ng voices are shuffled by
``split_seed``; ``test`` voices (about 10%) and ``valid`` voices (about 5%) are never heard in
``train``. ``kal16`` is flite's kal16 alone, held out entirely (its 8 kHz twin ``kal`` is never
used). Everything is a pure function of the arguments: the same arguments give the same
utterances, and :func:`spoken_numbers` caches each split's features in ``cache_dir`` so the
synthesizers run once (a few seconds per thousand utterances, in parallel subprocesses).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..application.run import torch_threads
from ..number_words import number_tokens
from .features import SAMPLE_RATE, log_mel, resample, speed_perturb
from .synthesizers import ESPEAK_LANGUAGES, ESPEAK_VARIANTS, Voice, require, synthesize
from .wav import read_wav

__all__ = [
    "SPLITS",
    "SpokenSet",
    "Utterance",
    "cache_key",
    "features_of",
    "spoken_numbers",
    "utterances",
    "voice_splits",
]

#: The splits: training voices, two sets of voices never heard in training, flite's kal16.
SPLITS = ("train", "valid", "test", "kal16")
#: Bumped whenever what a cached split holds changes.
_FORMAT = 1


@dataclass(frozen=True)
class Utterance:
    """What one utterance is: its words, its voice, how it is spoken and perturbed."""

    text: str
    voice: Voice
    speed: float
    pitch: int
    tempo: float  # resampling factor after synthesis (1.0: none)
    noise_db: float  # signal-to-noise ratio of the added white noise
    seed: int
    warp: float = 1.0  # vocal tract length perturbation of the mel filterbank (1.0: none)


@dataclass
class SpokenSet:
    """One split's features: ``features[i]`` ``(frames_i, n_mels)``, its transcript and voice."""

    features: list[Tensor]
    texts: list[str]
    voices: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def voice_splits(split_seed: int = 0) -> dict[str, list[Voice]]:
    """The voices of each split: espeak-ng's language x variant voices shuffled by ``split_seed``
    (``test``: 10%, ``valid``: 5%, ``train``: the rest, with flite's awb, rms and slt);
    ``kal16``: flite's kal16."""
    espeak = [Voice("espeak-ng", f"{lang}+{v}") for lang in ESPEAK_LANGUAGES for v in ESPEAK_VARIANTS]
    random.Random(f"voices-{split_seed}").shuffle(espeak)
    n_test, n_valid = round(0.10 * len(espeak)), round(0.05 * len(espeak))
    flite = [Voice("flite", name) for name in ("awb", "rms", "slt")]
    return {
        "test": sorted(espeak[:n_test]),
        "valid": sorted(espeak[n_test : n_test + n_valid]),
        "train": sorted(espeak[n_test + n_valid :]) + flite,
        "kal16": [Voice("flite", "kal16")],
    }


def utterances(split: str, size: int, *, seed: int = 0, split_seed: int = 0, max_number: int = 999,
               warp: float = 0.0, flite_share: float = 0.25) -> list[Utterance]:  # fmt: skip
    """The ``size`` utterances of ``split`` (a pure function of the arguments): numbers drawn
    uniformly from ``0 .. max_number``; in training a share ``flite_share`` of the utterances
    are flite's, and each draws a vocal tract length perturbation uniform in ``[1 - warp,
    1 + warp]`` (from its own random stream: ``warp`` changes no other draw; 0: none)."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    if not 0 <= warp < 0.5:
        raise ValueError(f"warp: expected a largest warp deviation in [0, 0.5), got {warp!r}")
    if not 0 <= flite_share <= 1:
        raise ValueError(f"flite_share: expected a share in [0, 1], got {flite_share!r}")
    voices = voice_splits(split_seed)[split]
    espeak = [v for v in voices if v.engine == "espeak-ng"]
    flite = [v for v in voices if v.engine == "flite"]
    rng, warps = random.Random(f"{split}-{seed}"), random.Random(f"{split}-{seed}-warp")
    out = []
    for _ in range(size):
        text = " ".join(number_tokens(rng.randint(0, max_number), "en"))
        use_flite = not espeak or (flite and rng.random() < flite_share)
        voice = rng.choice(flite if use_flite else espeak)
        natural = split == "kal16"
        speed = (
            1.0
            if natural
            else rng.uniform(0.8, 1.25)
            if voice.engine == "espeak-ng"
            else rng.uniform(0.85, 1.15)
        )
        pitch = 50 if natural else rng.randint(20, 80)
        tempo = rng.uniform(0.9, 1.1) if split == "train" else 1.0
        out.append(
            Utterance(
                text,
                voice,
                round(speed, 3),
                pitch,
                round(tempo, 3),
                rng.uniform(20, 40),
                rng.randrange(2**31),
                round(warps.uniform(1 - warp, 1 + warp), 3) if split == "train" and warp else 1.0,
            )
        )
    return out


def features_of(waveform: Tensor, sample_rate: int, *, n_mels: int = 40, warp: float = 1.0) -> Tensor:
    """The model's input ``(frames, n_mels)`` of a mono waveform at any rate: resampled to 16 kHz,
    log-mel (its filterbank warped by ``warp``), each band normalised over time (mean 0, variance 1)."""
    x = log_mel(resample(waveform, sample_rate, SAMPLE_RATE), n_mels=n_mels, warp=warp)  # (frames, M)
    return (x - x.mean(0)) / (x.std(0) + 1e-5)


def _render(u: Utterance, n_mels: int) -> Tensor:
    """One utterance synthesized, perturbed and turned into features."""
    wave, rate = read_wav(synthesize(u.text, u.voice, speed=u.speed, pitch=u.pitch))
    wave = resample(wave, rate, SAMPLE_RATE)
    wave = speed_perturb(wave, u.tempo, SAMPLE_RATE)
    g = torch.Generator().manual_seed(u.seed)
    power = wave.pow(2).mean().clamp_min(1e-10)
    wave = wave + torch.randn(wave.shape, generator=g) * (power / 10 ** (u.noise_db / 10)).sqrt()
    return features_of(wave, SAMPLE_RATE, n_mels=n_mels, warp=u.warp)


def default_cache_dir() -> Path:
    """``$QKV_CACHE/speech``, else ``~/.cache/qkv/speech``."""
    root = os.environ.get("QKV_CACHE") or Path.home() / ".cache" / "qkv"
    return Path(root) / "speech"


def cache_key(split: str, size: int, *, seed: int = 0, split_seed: int = 0, max_number: int = 999,
              n_mels: int = 40, warp: float = 0.0, flite_share: float = 0.25) -> str:  # fmt: skip
    """The name of a split's cache file: a hash of every argument that changes what it holds.
    ``warp`` and ``flite_share`` change only ``train`` (the other splits keep their files)."""
    recipe = [warp, flite_share] if split == "train" and (warp, flite_share) != (0.0, 0.25) else []
    key = json.dumps(
        [_FORMAT, split, size, seed, split_seed, max_number, n_mels, *recipe], separators=(",", ":")
    )
    return f"{split}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def spoken_numbers(split: str, size: int, *, seed: int = 0, split_seed: int = 0, max_number: int = 999,
                   n_mels: int = 40, warp: float = 0.0, flite_share: float = 0.25,
                   cache_dir: str | Path | None = None, workers: int | None = None) -> SpokenSet:  # fmt: skip
    """One split of the spoken numbers (see the module docstring and :func:`utterances` for
    ``warp`` and ``flite_share``), from ``cache_dir`` (:func:`default_cache_dir` when None) or
    generated and cached there under :func:`cache_key`.

    Raises:
        SynthesizerMissing: espeak-ng or flite is not installed (naming the install command).
    """
    recipe = {"warp": warp, "flite_share": flite_share}
    plan = utterances(split, size, seed=seed, split_seed=split_seed, max_number=max_number, **recipe)
    name = cache_key(
        split, size, seed=seed, split_seed=split_seed, max_number=max_number, n_mels=n_mels, **recipe
    )
    path = Path(cache_dir or default_cache_dir()) / name
    if path.is_file():
        stored = torch.load(path, weights_only=True)
        feats = list(torch.split(stored["features"], stored["lengths"].tolist()))
        return SpokenSet(feats, stored["texts"], stored["voices"])
    for engine in sorted({u.voice.engine for u in plan}):
        require(engine)
    # One torch thread per worker: the synthesizer subprocesses are the parallel part.
    with torch_threads(1), ThreadPoolExecutor(max_workers=workers or 2 * (os.cpu_count() or 2)) as pool:
        feats = list(pool.map(lambda u: _render(u, n_mels), plan))
    texts, voices = [u.text for u in plan], [str(u.voice) for u in plan]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"features": torch.cat(feats) if feats else torch.zeros(0, n_mels),
                "lengths": torch.tensor([len(f) for f in feats], dtype=torch.long),
                "texts": texts, "voices": voices}, tmp)  # fmt: skip
    os.replace(tmp, path)
    return SpokenSet(feats, texts, voices)
