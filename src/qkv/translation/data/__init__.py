"""Data for qkv's translation models: built-in corpora, a TSV loader, tokenizers, batches.

- :class:`Example` (a sentence pair with an optional gold alignment) and :class:`Corpus`
  (``train``/``valid``/``test``/``test_long`` splits and JSON-serializable ``meta``);
- built-in corpora generated offline and deterministically: :func:`numbers_corpus`
  (num2words), :func:`dates_corpus` (babel), by name with :func:`builtin` /
  :data:`BUILTIN_CORPORA`;
- :func:`load_tsv` for Tatoeba/Anki-style ``source<TAB>target`` files, :func:`normalize_text`
  and :class:`TextFormat` (a model's normalization of inputs and detokenization of outputs);
- tokenizers with fixed special ids (``<pad>`` 0, ``<sos>`` 1, ``<eos>`` 2, ``<unk>`` 3):
  :class:`WordTokenizer`, :class:`CharTokenizer`, :class:`BPETokenizer`;
- :func:`encode_pairs` and :func:`batches` (padded :class:`Batch` tensors, an order that is a
  pure function of ``(seed, epoch)``).

num2words, babel and tokenizers are imported when first needed (``pip install 'qkv[train]'``).
"""

from .batching import Batch, EncodedPair, batches, collate, encode_pairs, num_batches, plan_batches
from .builtin import BUILTIN_CORPORA, builtin
from .corpus import SPLITS, Corpus, Example, long_threshold
from .dates import date_example, dates_corpus
from .numbers import numbers_corpus
from .text import TextFormat, normalize_text, split_punct_tokens
from .tokenize import (
    SPECIALS,
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    WordTokenizer,
    build_tokenizer,
    tokenizer_from_dict,
)
from .tsv import DataWarning, load_tsv

__all__ = [
    "BUILTIN_CORPORA",
    "SPECIALS",
    "SPLITS",
    "BPETokenizer",
    "Batch",
    "CharTokenizer",
    "Corpus",
    "DataWarning",
    "EncodedPair",
    "Example",
    "TextFormat",
    "Tokenizer",
    "WordTokenizer",
    "batches",
    "build_tokenizer",
    "builtin",
    "collate",
    "date_example",
    "dates_corpus",
    "encode_pairs",
    "load_tsv",
    "long_threshold",
    "normalize_text",
    "num_batches",
    "numbers_corpus",
    "plan_batches",
    "split_punct_tokens",
    "tokenizer_from_dict",
]
