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
  embeddings, similarities, probabilities, recalls, and :meth:`Matcher.explain`: which patches
  and words made a pair match.
- :mod:`qkv.crossmodal.retrieval`: recall@K both ways of a similarity matrix.
- :mod:`qkv.crossmodal.captioning`: :class:`CaptionTask` (what ``qkv train --model captioner``
  trains with).
- :mod:`qkv.crossmodal.decode`: greedy and beam-search captioning that always returns a caption.
- :mod:`qkv.crossmodal.captioner`: :class:`Captioner`, a trained captioner loaded from a
  checkpoint: captions with each word's attention, their scores.
- :mod:`qkv.crossmodal.caption_metrics`: exact match, BLEU, chrF, attention correctness.
- :mod:`qkv.crossmodal.pictures`: :func:`~qkv.crossmodal.pictures.caption_picture`, a caption
  with every cross-attention map of its words (``qkv viz`` on a captioner's checkpoint).
- :mod:`qkv.crossmodal.grounded`: :func:`grounded_pairs`, image-grounded translation pairs (an
  English sentence with its number hidden, a strip, the French sentence with the number in
  words); :func:`number_words_of`, :func:`number_word_match`.
- :mod:`qkv.crossmodal.grounding`: :class:`GroundedTask` (what ``qkv train --model grounded``
  trains with), :func:`load_pairs`.
- :mod:`qkv.crossmodal.grounded_translator`: :class:`GroundedTranslator`, a trained grounded
  translator loaded from a checkpoint: translations with each word's attention over the
  sentence and the image, their scores.
- :mod:`qkv.crossmodal.clips`: :func:`digit_clips`, short videos of handwritten digits moving
  across the frame, each with a templated question (position, count, after) and its gold frames;
  :func:`clip_answer`, the answer's definition.
- :mod:`qkv.crossmodal.answering`: :class:`VideoQATask` (what ``qkv train --model video-qa``
  trains with), answers scored per question kind and by where the attention peaks.
- :mod:`qkv.crossmodal.answerer`: :class:`Answerer`, a trained video question answerer loaded
  from a checkpoint: answers with their attention over the frames, scores.
- :mod:`qkv.crossmodal.images`: images checked, patches' slots, attention as pixel maps,
  digits shifted in their slots.

The layers: :mod:`qkv.crossmodal` builds on :mod:`qkv.vision` (the digits), :mod:`qkv.train`
and the library; none of those imports it.
"""

from .answerer import Answerer
from .answering import VideoQATask
from .caption_metrics import attention_correctness, bleu_chrf, exact_match
from .captioner import Caption, Captioner
from .captioning import CaptionTask
from .captions import CaptionTokenizer
from .clips import DigitClips, clip_answer, digit_clips
from .config import (
    DATASETS,
    MODEL_PRESETS,
    CrossModalTrainConfig,
    DataConfig,
    RunConfig,
    resolve,
    resume_config,
)
from .data import CAPTION_LANGUAGES, DigitStrips, digit_strips, held_out_numbers, number_caption
from .decode import CaptionHypothesis, beam_search, greedy
from .grounded import GroundedPairs, grounded_pairs, number_word_match, number_words_of
from .grounded_translator import GroundedTranslator, Translation
from .grounding import GroundedTask, load_pairs
from .matcher import Matcher, MatchExplanation
from .retrieval import caption_positives, retrieval_recalls
from .training import MatchingTask, load_strips, train

__all__ = [
    "CAPTION_LANGUAGES",
    "DATASETS",
    "MODEL_PRESETS",
    "Answerer",
    "Caption",
    "CaptionHypothesis",
    "CaptionTask",
    "CaptionTokenizer",
    "Captioner",
    "CrossModalTrainConfig",
    "DataConfig",
    "DigitClips",
    "DigitStrips",
    "GroundedPairs",
    "GroundedTask",
    "GroundedTranslator",
    "MatchExplanation",
    "Matcher",
    "MatchingTask",
    "RunConfig",
    "Translation",
    "VideoQATask",
    "attention_correctness",
    "beam_search",
    "bleu_chrf",
    "caption_positives",
    "clip_answer",
    "digit_clips",
    "digit_strips",
    "exact_match",
    "greedy",
    "grounded_pairs",
    "held_out_numbers",
    "load_pairs",
    "load_strips",
    "number_caption",
    "number_word_match",
    "number_words_of",
    "resolve",
    "resume_config",
    "retrieval_recalls",
    "train",
]
