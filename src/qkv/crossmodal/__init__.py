"""Cross-modal attention, an application of the qkv library: handwriting matched to words.
Imported only when used (``import qkv.crossmodal``; ``import qkv`` does not load it).

- :mod:`qkv.crossmodal.data`: :func:`digit_strips`, strips of 1-4 handwritten digits captioned
  in English, French, German or digit by digit, each word with its gold digit slots; splits with
  handwriting never seen in training and held-out numbers (zero-shot).
- :mod:`qkv.crossmodal.captions`: :class:`CaptionTokenizer`, captions as word ids.
- :mod:`qkv.crossmodal.config`: the run config (``[data]``, ``[model]``, ``[train]``),
  :func:`resolve`, :func:`resume_config`.
- :mod:`qkv.crossmodal.training`: :func:`train` (what ``qkv train --model clip`` runs) and its
  :class:`MatchingTask`.
- :mod:`qkv.crossmodal.matcher`: :class:`Matcher`, a trained CLIP model loaded from a checkpoint:
  embeddings, similarities, probabilities, recalls.
- :mod:`qkv.crossmodal.retrieval`: recall@K both ways of a similarity matrix.

The layers: :mod:`qkv.crossmodal` builds on :mod:`qkv.vision` (the digits), :mod:`qkv.train`
and the library; none of those imports it.
"""

from .captions import CaptionTokenizer
from .config import (
    DATASETS,
    MODEL_PRESETS,
    DataConfig,
    MatchingTrainConfig,
    RunConfig,
    resolve,
    resume_config,
)
from .data import CAPTION_LANGUAGES, DigitStrips, digit_strips, held_out_numbers, number_caption
from .matcher import Matcher
from .retrieval import caption_positives, retrieval_recalls
from .training import MatchingTask, load_strips, train

__all__ = [
    "CAPTION_LANGUAGES",
    "DATASETS",
    "MODEL_PRESETS",
    "CaptionTokenizer",
    "DataConfig",
    "DigitStrips",
    "Matcher",
    "MatchingTask",
    "MatchingTrainConfig",
    "RunConfig",
    "caption_positives",
    "digit_strips",
    "held_out_numbers",
    "load_strips",
    "number_caption",
    "resolve",
    "resume_config",
    "retrieval_recalls",
    "train",
]
