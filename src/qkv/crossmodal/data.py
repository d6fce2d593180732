"""Digit strips: real handwriting side by side, captioned in real language.

``digit_strips(n, seed=0, lang="en")`` draws ``n`` strips of 1 to 4 of scikit-learn's 8x8
handwritten digits, left-aligned in a fixed ``8 x 32`` canvas (slot ``s`` is pixels ``8s ..
8s+7`` across; the slots after the last digit are blank), each captioned by the number it shows::

    [4][2][ ][ ]   "forty two"            en      slots ((0,), (1,))
                   "quarante deux"        fr
                   "zwei und vierzig"     de      slots ((1,), (), (0,))   units before tens
                   "four two"             digits  slots ((0,), (1,))

Captions are :func:`qkv.number_words.number_tokens` joined by spaces (num2words' wording,
lowercased, hyphens as spaces, German compounds split into morphemes); ``"digits"`` names the
digits one by one in English. Each caption word carries its gold slots: the slots of the digits
it names (a teen names two, ``thousand`` the slot it scales, a connective such as ``and`` none).
The strips show numbers as they are written: no leading zero (``0`` alone is a strip).

Splits (fixed by ``split_seed``, whatever ``seed`` draws):

- handwriting: the 1,797 digit images are cut once into train (70%), valid (10%) and test (20%);
  a strip of a split only shows that split's images, so test strips are handwriting never seen
  in training;
- numbers: 10% of the numbers of 2 to 4 digits are held out: ``train``, ``valid`` and ``test``
  strips never show them, ``zero_shot`` strips (test handwriting) show only them: compositional
  zero-shot, numbers never seen as captions in training.

The number of digits is uniform in 1..4, then the number uniform among the split's numbers of
that length (so a set has repeated captions, single digits most; retrieval counts any strip of
the same caption as a match).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

from ..number_words import number_places, number_tokens

__all__ = [
    "CAPTION_LANGUAGES",
    "MAX_DIGITS",
    "MAX_WORDS",
    "SLOT_WIDTH",
    "STRIP_SPLITS",
    "DigitStrips",
    "caption_vocabulary",
    "digit_strips",
    "handwriting",
    "held_out_numbers",
    "number_caption",
]

#: The caption languages of :func:`digit_strips`.
CAPTION_LANGUAGES = ("en", "fr", "de", "digits")
#: The splits of :func:`digit_strips`.
STRIP_SPLITS = ("train", "valid", "test", "zero_shot")
#: Digits a strip holds at most, and the width of one slot in pixels (a strip is 8 x 32).
MAX_DIGITS, SLOT_WIDTH = 4, 8
#: The most words a caption may hold (the longest is 9: fr "sept mille sept cent quatre vingt dix sept").
MAX_WORDS = 12
_HELD_OUT_FRAC = 0.1
_HANDWRITING_FRACS = {"train": 0.7, "valid": 0.1}  # test: the rest


class DigitStrips(NamedTuple):
    """What :func:`digit_strips` returns.

    Attributes:
        images: ``(N, 1, 8, 32)`` float32 in [0, 1].
        captions: ``N`` captions, words separated by single spaces.
        slots: per caption, per word, the sorted digit slots the word names (``()`` for a
            connective); slot 0 is the leftmost digit.
    """

    images: Tensor
    captions: list[str]
    slots: list[tuple[tuple[int, ...], ...]]


def _check_lang(lang: object) -> str:
    if lang not in CAPTION_LANGUAGES:
        raise ValueError(f"lang: expected one of {', '.join(map(repr, CAPTION_LANGUAGES))}, got {lang!r}")
    return str(lang)


def number_caption(number: int, lang: str) -> tuple[str, tuple[tuple[int, ...], ...]]:
    """The caption of a strip showing ``number`` (0 <= number < 10**4) and each word's slots.

    >>> number_caption(42, "de")
    ('zwei und vierzig', ((1,), (), (0,)))

    Raises:
        ValueError: an unknown ``lang`` or a number outside ``[0, 9999]``.
    """
    lang = _check_lang(lang)
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < 10**MAX_DIGITS:
        raise ValueError(f"number: expected an int in [0, {10**MAX_DIGITS - 1}], got {number!r}")
    digits = str(number)
    if lang == "digits":
        words = [number_tokens(int(d), "en")[0] for d in digits]
        return " ".join(words), tuple((i,) for i in range(len(digits)))
    tokens, places = number_places(number, lang)
    slots = tuple(tuple(sorted(len(digits) - 1 - p for p in ps)) for ps in places)
    return " ".join(tokens), slots


@functools.cache
def caption_vocabulary(lang: str) -> tuple[str, ...]:
    """Every word a caption in ``lang`` can hold (the numbers 0..9999), sorted."""
    lang = _check_lang(lang)
    words = {w for n in range(10**MAX_DIGITS) for w in number_caption(n, lang)[0].split()}
    return tuple(sorted(words))


@functools.cache
def held_out_numbers(split_seed: int = 0) -> frozenset[int]:
    """The numbers only ``zero_shot`` strips show: a seeded 10% of those with 2 to 4 digits."""
    g = torch.Generator().manual_seed(split_seed * 7919 + 1)
    held = set()
    for d in range(2, MAX_DIGITS + 1):
        pool = torch.arange(10 ** (d - 1), 10**d)
        pick = torch.randperm(len(pool), generator=g)[: round(len(pool) * _HELD_OUT_FRAC)]
        held.update(pool[pick].tolist())
    return frozenset(held)


@functools.cache
def handwriting(split: str, split_seed: int = 0) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The digit images of a handwriting split (``"train"``, ``"valid"`` or ``"test"``: the
    1,797 images cut once by ``split_seed``), ``(M, 8, 8)``, and per digit 0..9 their indices in it."""
    from ..vision.data import load_digits

    digits = load_digits()
    n = len(digits)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    n_train, n_valid = round(n * _HANDWRITING_FRACS["train"]), round(n * _HANDWRITING_FRACS["valid"])
    cut = {"train": order[:n_train], "valid": order[n_train : n_train + n_valid],
           "test": order[n_train + n_valid :]}[split]  # fmt: skip
    images, labels = digits.images[cut, 0], digits.labels[cut]
    return images, tuple((labels == d).nonzero().flatten() for d in range(10))


@functools.cache
def _numbers(split: str, split_seed: int) -> tuple[tuple[int, ...], ...]:
    """Per digit count 1..4, the numbers a split's strips may show."""
    held = held_out_numbers(split_seed)
    keep = (lambda x: x in held) if split == "zero_shot" else (lambda x: x not in held)
    pools = []
    for d in range(1, MAX_DIGITS + 1):
        lo = 0 if d == 1 else 10 ** (d - 1)
        pools.append(tuple(x for x in range(lo, 10**d) if keep(x)))
    return tuple(pools)


def _check_args(n: object, seed: object, split: object) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected an int >= 0, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    if split not in STRIP_SPLITS:
        raise ValueError(f"split: expected one of {', '.join(map(repr, STRIP_SPLITS))}, got {split!r}")


def digit_strips(
    n: int, *, seed: int, lang: str = "en", split: str = "train", split_seed: int = 0
) -> DigitStrips:
    """``n`` captioned strips of handwritten digits (see the module docstring).

    Args:
        n: strips to draw.
        seed: the draw; the same ``(n, seed, lang, split, split_seed)``, the same strips.
        lang: the caption language, one of :data:`CAPTION_LANGUAGES`; the images do not depend
            on it (the same seed draws the same strips in every language).
        split: ``"train"``, ``"valid"``, ``"test"`` (handwriting never in train) or
            ``"zero_shot"`` (test handwriting showing only :func:`held_out_numbers`).
        split_seed: how the handwriting and the numbers are split (fixed across a run's splits).

    Returns:
        :class:`DigitStrips` ``(images (n, 1, 8, 32), captions, slots)``.

    Raises:
        ValueError: a bad ``n``, ``seed``, ``lang`` or ``split``.
        ImportError: scikit-learn or num2words missing (``pip install 'qkv[train,vision]'``).
    """
    _check_args(n, seed, split)
    lang = _check_lang(lang)
    hand_split = "test" if split == "zero_shot" else split
    images, by_digit = handwriting(hand_split, split_seed)
    pools = [p for p in _numbers(split, split_seed) if p]
    g = torch.Generator().manual_seed(seed * 1_000_003 + STRIP_SPLITS.index(split))
    canvas = torch.zeros(n, 1, 8, MAX_DIGITS * SLOT_WIDTH)
    captions, slots = [], []
    for i in range(n):
        pool = pools[int(torch.randint(len(pools), (1,), generator=g))]
        number = pool[int(torch.randint(len(pool), (1,), generator=g))]
        for s, d in enumerate(str(number)):
            choices = by_digit[int(d)]
            pick = choices[int(torch.randint(len(choices), (1,), generator=g))]
            canvas[i, 0, :, s * SLOT_WIDTH : (s + 1) * SLOT_WIDTH] = images[pick]
        caption, word_slots = number_caption(number, lang)
        captions.append(caption)
        slots.append(word_slots)
    return DigitStrips(canvas, captions, slots)
