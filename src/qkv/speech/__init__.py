"""Attention in speech recognition, an application of the qkv library: spoken numbers from real
speech synthesizers, recognized by Listen, Attend and Spell. Imported only when used (``import
qkv.speech``; ``import qkv`` does not load it).

- :mod:`qkv.speech.synthesizers`: espeak-ng and flite voices, :func:`synthesize`.
- :mod:`qkv.speech.wav`: :func:`read_wav` (standard library ``wave`` + numpy).
- :mod:`qkv.speech.features`: :func:`resample` (windowed sinc), :func:`speed_perturb`, :func:`mel_filterbank`, :func:`log_mel`.
- :mod:`qkv.speech.vtlp`: :func:`warp_frequencies`, vocal tract length perturbation of the filterbank.
- :mod:`qkv.speech.data`: :func:`spoken_numbers`, splits holding out whole voices, cached.
- :mod:`qkv.speech.vocabulary`: :class:`WordVocabulary`, the output words.
- :mod:`qkv.speech.config`: the run config (``[data]``, ``[model]``, ``[train]``), :func:`resolve`.
- :mod:`qkv.speech.training`: :func:`train` (what ``qkv train --model las`` runs), :class:`SpeechTask`.
- :mod:`qkv.speech.ctc_prefix`: :class:`CTCPrefixScorer`, the CTC prefix and end scores of hypotheses.
- :mod:`qkv.speech.decode`: :func:`greedy` and :func:`beam_search` (never less probable than greedy;
  ``ctc_weight``: joint CTC/attention ranking for a model with a CTC head).
- :mod:`qkv.speech.recognizer`: :class:`Recognizer`, a trained model: ``transcribe`` with attention, ``evaluate``.
- :mod:`qkv.speech.metrics`: :func:`error_rates` (WER, CER with jiwer).

The layers: :mod:`qkv.speech` builds on :mod:`qkv.application`, :mod:`qkv.train`,
:mod:`qkv.number_words` and the library (:class:`qkv.models.las.LAS`); none of those imports it.
"""

from .config import DATASETS, MODEL_PRESETS, DataConfig, RunConfig, SpeechTrainConfig, resolve, resume_config
from .ctc_prefix import CTCPrefixScorer
from .data import SPLITS, SpokenSet, Utterance, features_of, spoken_numbers, utterances, voice_splits
from .decode import Hypothesis, beam_search, greedy
from .features import SAMPLE_RATE, log_mel, mel_filterbank, resample, speed_perturb
from .metrics import error_rates
from .recognizer import Recognizer, Transcript
from .synthesizers import INSTALL, SynthesizerMissing, Voice, synthesize
from .training import SpeechTask, load_splits, train
from .vocabulary import WordVocabulary, number_vocabulary
from .vtlp import warp_frequencies
from .wav import read_wav

__all__ = [
    "DATASETS",
    "INSTALL",
    "MODEL_PRESETS",
    "SAMPLE_RATE",
    "SPLITS",
    "CTCPrefixScorer",
    "DataConfig",
    "Hypothesis",
    "Recognizer",
    "RunConfig",
    "SpeechTask",
    "SpeechTrainConfig",
    "SpokenSet",
    "SynthesizerMissing",
    "Transcript",
    "Utterance",
    "Voice",
    "WordVocabulary",
    "beam_search",
    "error_rates",
    "features_of",
    "greedy",
    "load_splits",
    "log_mel",
    "mel_filterbank",
    "number_vocabulary",
    "read_wav",
    "resample",
    "resolve",
    "resume_config",
    "speed_perturb",
    "spoken_numbers",
    "synthesize",
    "train",
    "utterances",
    "voice_splits",
    "warp_frequencies",
]
