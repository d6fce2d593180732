"""Translation, an application of the qkv library: its data, training recipe, inference,
evaluation metrics, pictures and demo. Imported only when used (``import qkv.translation``;
``import qkv`` does not load it).

- :mod:`qkv.translation.config`: the run config (:class:`RunConfig`: ``[data]``, ``[model]``,
  ``[train]``), model presets, :func:`resolve` and :func:`resume_config`.
- :mod:`qkv.translation.data`: the corpora (built-in numbers and dates, TSV files), text
  normalization, tokenizers and batches that the translation models read.
- :mod:`qkv.translation.training`: :func:`train` (what ``qkv train`` runs) builds the corpus,
  tokenizers, model and a :class:`TranslationTask` from a config and runs the model-agnostic
  :class:`qkv.train.loop.Trainer`.
- :mod:`qkv.translation.decode`: greedy and beam-search decoding, and :func:`decode_limit`, the
  one rule for how long an output may get.
- :mod:`qkv.translation.translator`: :class:`Translator`, a trained model loaded from a
  checkpoint: translate, align, evaluate.
- :mod:`qkv.translation.metrics`: BLEU, chrF, exact match (sacrebleu), attention-derived word
  alignments and the alignment error rate.
- :mod:`qkv.translation.pictures`: :func:`translation_picture`, a model's attention on its own
  translation (``qkv viz --checkpoint``).
- :mod:`qkv.translation.demo`: ``qkv demo``, attention versus the fixed-context bottleneck.

The layers: :mod:`qkv.translation` builds on :mod:`qkv.train` and the library
(:mod:`qkv.models`, :mod:`qkv.interpret`, :mod:`qkv.viz`); none of those imports it.
"""

from .config import MODEL_PRESETS, DataConfig, RunConfig, TranslationTrainConfig, resolve, resume_config
from .decode import Hypothesis, beam_search, decode_limit, greedy
from .demo import run_demo
from .metrics import aer, alignment_from_weights, bleu, bleu_signed, chrf, corpus_scores, exact_match
from .pictures import translation_picture
from .training import TranslationTask, load_corpus, prepare_data, train, validation_loss
from .translator import Translation, TranslationWarning, Translator, decode_examples

__all__ = [
    "MODEL_PRESETS",
    "DataConfig",
    "Hypothesis",
    "RunConfig",
    "Translation",
    "TranslationTask",
    "TranslationTrainConfig",
    "TranslationWarning",
    "Translator",
    "aer",
    "alignment_from_weights",
    "beam_search",
    "bleu",
    "bleu_signed",
    "chrf",
    "corpus_scores",
    "decode_examples",
    "decode_limit",
    "exact_match",
    "greedy",
    "load_corpus",
    "prepare_data",
    "resolve",
    "resume_config",
    "run_demo",
    "train",
    "translation_picture",
    "validation_loss",
]
