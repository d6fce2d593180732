"""Image-grounded translation pairs: an English sentence whose number is hidden, a digit strip
showing the number, and the French sentence with the number in French words.

::

    "she wrote [?] on the board"  +  [4][2][ ][ ]   ->   "elle a écrit quarante deux au tableau"

The number exists only in the image: a translator that does not look at the strip can get the
sentence right but not the number. The strips are :func:`qkv.crossmodal.data.digit_strips`
with French captions (the same handwriting and number splits: ``test`` is handwriting never
seen in training, ``zero_shot`` numbers never seen in training); each pair's sentence is one of
:data:`TEMPLATES`, drawn by the pair's own seeded generator. No template word is a French
number word, so the number words of a translation are the words it holds from the number
vocabulary (:func:`number_words_of`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .data import MAX_WORDS, STRIP_SPLITS, caption_vocabulary, digit_strips

__all__ = [
    "HIDDEN",
    "MAX_SOURCE_WORDS",
    "MAX_TARGET_WORDS",
    "TEMPLATES",
    "GroundedPairs",
    "grounded_pairs",
    "grounded_vocabulary",
    "number_word_match",
    "number_words_of",
]

#: The word that stands for the hidden number in a source sentence.
HIDDEN = "[?]"

#: (English with :data:`HIDDEN`, French with ``{}`` where the number's words go): sentences
#: grammatical with any number from zéro to 9 999.
TEMPLATES: tuple[tuple[str, str], ...] = (
    ("she wrote [?] on the board", "elle a écrit {} au tableau"),
    ("the answer is [?]", "la réponse est {}"),
    ("my room number is [?]", "le numéro de ma chambre est {}"),
    ("he counted to [?]", "il a compté jusqu'à {}"),
    ("the code is [?]", "le code est {}"),
    ("please write [?] here", "écrivez {} ici s'il vous plaît"),
    ("the total was [?]", "le total était {}"),
    ("she repeated [?]", "elle a répété {}"),
    ("we chose [?]", "nous avons choisi {}"),
    ("this is page [?]", "c'est la page {}"),
    ("he read [?] aloud", "il a lu {} à voix haute"),
    ("the score is [?]", "le score est {}"),
    ("the winning number is [?]", "le numéro gagnant est {}"),
    ("the door code is [?]", "le code de la porte est {}"),
    ("they called number [?]", "ils ont appelé le numéro {}"),
)

#: The longest source sentence, and the longest target (its template's words and a number's).
MAX_SOURCE_WORDS = max(len(en.split()) for en, _ in TEMPLATES)
MAX_TARGET_WORDS = max(len(fr.format("").split()) for _, fr in TEMPLATES) + MAX_WORDS


class GroundedPairs(NamedTuple):
    """What :func:`grounded_pairs` returns.

    Attributes:
        images: ``(N, 1, 8, 32)`` float32 in [0, 1], the strips.
        sources: ``N`` English sentences, the number hidden as :data:`HIDDEN`.
        targets: ``N`` French sentences with the strip's number in words.
        numbers: ``N`` French number words of the strips (their ``fr`` captions).
        templates: ``(N,)`` int64, each pair's index in :data:`TEMPLATES`.
    """

    images: Tensor
    sources: list[str]
    targets: list[str]
    numbers: list[str]
    templates: Tensor

    def take(self, n: int) -> GroundedPairs:
        """The first ``n`` pairs."""
        return GroundedPairs(self.images[:n], self.sources[:n], self.targets[:n], self.numbers[:n],
                             self.templates[:n])  # fmt: skip


def grounded_pairs(n: int, *, seed: int, split: str = "train", split_seed: int = 0) -> GroundedPairs:
    """``n`` grounded translation pairs (see the module docstring).

    Args:
        n: pairs to draw.
        seed: the draw; the same ``(n, seed, split, split_seed)``, the same pairs; the strips are
            ``digit_strips(n, seed=seed, lang="fr", split=split, split_seed=split_seed)``.
        split: ``"train"``, ``"valid"``, ``"test"`` (handwriting never in train) or
            ``"zero_shot"`` (numbers never in train).
        split_seed: how the handwriting and the numbers are split.

    Raises:
        ValueError: a bad ``n``, ``seed`` or ``split``.
    """
    strips = digit_strips(n, seed=seed, lang="fr", split=split, split_seed=split_seed)
    g = torch.Generator().manual_seed(seed * 1_000_003 + 7 * STRIP_SPLITS.index(split) + 5)
    templates = torch.randint(len(TEMPLATES), (n,), generator=g)
    sources = [TEMPLATES[t][0] for t in templates.tolist()]
    targets = [TEMPLATES[t][1].format(c) for t, c in zip(templates.tolist(), strips.captions)]
    return GroundedPairs(strips.images, sources, targets, list(strips.captions), templates)


@functools.cache
def grounded_vocabulary() -> tuple[str, ...]:
    """Every word of a source or target sentence (both languages, one vocabulary), sorted."""
    words = {w for en, fr in TEMPLATES for w in f"{en} {fr.format('')}".split()}
    return tuple(sorted(words | set(caption_vocabulary("fr"))))


def number_words_of(sentence: str) -> str:
    """The French number words of a sentence, in order, joined by spaces
    (``"elle a écrit quarante deux au tableau"`` -> ``"quarante deux"``)."""
    numbers = set(caption_vocabulary("fr"))
    return " ".join(w for w in sentence.split() if w in numbers)


def number_word_match(hypotheses: Sequence[str], numbers: Sequence[str]) -> float:
    """The share of translations whose number words (:func:`number_words_of`) are exactly the
    gold number's.

    Raises:
        ValueError: not two non-empty lists of one length.
    """
    if (
        isinstance(hypotheses, str)
        or isinstance(numbers, str)
        or not len(hypotheses)
        or len(hypotheses) != len(numbers)
    ):
        raise ValueError("hypotheses, numbers: expected two non-empty lists of one length, "
                         f"got {len(hypotheses)} and {len(numbers)}")  # fmt: skip
    return sum(number_words_of(h) == n for h, n in zip(hypotheses, numbers)) / len(hypotheses)
