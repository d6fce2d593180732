"""Digit clips: short videos of real handwriting, with questions whose answer needs the right frames.

``digit_clips(n, seed=0)`` draws ``n`` clips of 6 to 12 frames. A frame is a ``12 x 12`` canvas
holding one of scikit-learn's 8x8 handwritten digits at an offset that moves across the clip:
it starts at ``(y0, x0)`` in ``0..4`` and steps by ``(vy, vx)`` in ``{-1, 0, 1}`` per frame,
bouncing off the edges. Frames after the clip's length are blank (``lengths`` says how many
are real). Each clip carries one templated question (:data:`QUESTION_KINDS`), answered by a
digit 0-9 (a count is 0-4, so the answers are the ten digits, :data:`ANSWERS`)::

    kind       question                              answer                       gold frames
    position   "what is the third digit"             the digit of frame 2         (2,)
    count      "how many sevens"                     the frames showing a 7       those frames
    after      "which digit comes after the five"    the digit of the frame after (p + 1,)
                                                     the one 5 (p)

:func:`clip_answer` is the definition: the answer and gold frames of a question about a digit
sequence (an ``after`` question about a digit that is not shown exactly once, or shown last,
has no answer). Positions ask for frames 1 to 6 (every clip has 6); a count clip shows its digit
0 to 4 times (uniform), an after clip its digit exactly once; each question kind is a third of
the clips (``kinds=`` asks fewer kinds, each equally often). The gold frames of a question are the frames holding its answer (a count of zero
has none).

Splits: the handwriting of :func:`qkv.crossmodal.data.handwriting` (fixed by ``split_seed``):
test clips only show handwriting never seen in training.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..number_words import number_tokens
from .data import handwriting

__all__ = [
    "ANSWERS",
    "CLIP_SPLITS",
    "FRAME_CLASSES",
    "FRAME_SIZE",
    "MAX_COUNT",
    "MAX_FRAMES",
    "MAX_QUESTION_WORDS",
    "MIN_FRAMES",
    "ORDINALS",
    "QUESTION_KINDS",
    "DigitClips",
    "check_kinds",
    "clip_answer",
    "digit_clips",
    "question_kind",
    "question_vocabulary",
]

#: Frames a clip holds, at least and at most; the side of a frame in pixels.
MIN_FRAMES, MAX_FRAMES, FRAME_SIZE = 6, 12, 12
#: The question kinds, one template each (see the module docstring).
QUESTION_KINDS = ("position", "count", "after")
#: The answers: a digit, or a count (at most :data:`MAX_COUNT`); answer id ``a`` is ``ANSWERS[a]``.
ANSWERS = tuple(str(d) for d in range(10))
MAX_COUNT = 4
#: The labels a frame can have (``DigitClips.digits``): the digits 0-9.
FRAME_CLASSES = 10
#: The frames a position question may ask for (every clip has at least six).
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")
#: The longest question, in words ("which digit comes after the five").
MAX_QUESTION_WORDS = 6
CLIP_SPLITS = ("train", "valid", "test")
_MAX_OFFSET = FRAME_SIZE - 8
_DIGIT_NAMES = tuple(number_tokens(d, "en")[0] for d in range(10))
_PLURALS = tuple(name + ("es" if name.endswith("x") else "s") for name in _DIGIT_NAMES)


class DigitClips(NamedTuple):
    """What :func:`digit_clips` returns.

    Attributes:
        frames: ``(N, MAX_FRAMES, 1, FRAME_SIZE, FRAME_SIZE)`` float32 in [0, 1], blank after
            each clip's length.
        lengths: ``(N,)`` int64, the real frames of each clip (6 to 12).
        digits: ``(N, MAX_FRAMES)`` int64, the digit of each frame (-1 after the length).
        questions: ``N`` questions, words separated by single spaces.
        answers: ``(N,)`` int64, the answer ids (:data:`ANSWERS`).
        gold: per question, the sorted frames holding its answer.
    """

    frames: Tensor
    lengths: Tensor
    digits: Tensor
    questions: list[str]
    answers: Tensor
    gold: list[tuple[int, ...]]

    def kinds(self) -> list[str]:
        """The kind of each question (:func:`question_kind`)."""
        return [question_kind(q) for q in self.questions]

    def take(self, count: int) -> DigitClips:
        """The first ``count`` clips."""
        return DigitClips(self.frames[:count], self.lengths[:count], self.digits[:count],
                          self.questions[:count], self.answers[:count], self.gold[:count])  # fmt: skip


def question_vocabulary() -> tuple[str, ...]:
    """Every word a question can hold, sorted."""
    words = {"what", "is", "the", "digit", "how", "many", "which", "comes", "after"}
    return tuple(sorted(words | set(ORDINALS) | set(_DIGIT_NAMES) | set(_PLURALS)))


def _parse(question: object) -> tuple[str, int]:
    """``(kind, argument)`` of a templated question: the frame asked for, or the digit named."""
    words = question.split() if isinstance(question, str) else None
    if (
        words
        and len(words) == 5
        and words[:3] == ["what", "is", "the"]
        and words[4] == "digit"
        and words[3] in ORDINALS
    ):
        return "position", ORDINALS.index(words[3])
    if words and len(words) == 3 and words[:2] == ["how", "many"] and words[2] in _PLURALS:
        return "count", _PLURALS.index(words[2])
    if (
        words
        and len(words) == 6
        and words[:5] == ["which", "digit", "comes", "after", "the"]
        and words[5] in _DIGIT_NAMES
    ):
        return "after", _DIGIT_NAMES.index(words[5])
    raise ValueError(
        "question: expected 'what is the <first..sixth> digit', 'how many <zeros..nines>' or "
        f"'which digit comes after the <zero..nine>', got {question!r}"
    )


def question_kind(question: str) -> str:
    """The kind of a templated question, one of :data:`QUESTION_KINDS`.

    Raises:
        ValueError: not one of the three templates.
    """
    return _parse(question)[0]


def clip_answer(digits: list[int], question: str) -> tuple[int, tuple[int, ...]]:
    """The answer id and the gold frames of ``question`` about a clip showing ``digits``.

    >>> clip_answer([3, 5, 7, 7, 1, 0], "how many sevens")
    (2, (2, 3))
    >>> clip_answer([3, 5, 7, 7, 1, 0], "which digit comes after the five")
    (7, (2,))

    Raises:
        ValueError: an unknown question; a position past the clip; an ``after`` question about
            a digit the clip does not show exactly once, or shows last.
    """
    kind, arg = _parse(question)
    if kind == "position":
        if arg >= len(digits):
            raise ValueError(f"question: {question!r} asks for frame {arg + 1} of a clip of {len(digits)}")
        return int(digits[arg]), (arg,)
    where = tuple(i for i, d in enumerate(digits) if d == arg)
    if kind == "count":
        return len(where), where
    if len(where) != 1 or where[0] == len(digits) - 1:
        raise ValueError(f"question: {question!r} needs the {_DIGIT_NAMES[arg]} shown exactly once and not "
                         f"last, got digits {list(digits)}")  # fmt: skip
    return int(digits[where[0] + 1]), (where[0] + 1,)


def _randint(high: int, g: torch.Generator) -> int:
    return int(torch.randint(high, (1,), generator=g))


def _other_digits(count: int, avoid: int, g: torch.Generator) -> list[int]:
    """``count`` digits uniform among the nine that are not ``avoid``."""
    return [(avoid + 1 + d) % 10 for d in torch.randint(9, (count,), generator=g).tolist()]


def _draw_question(length: int, kinds: tuple[str, ...], g: torch.Generator) -> tuple[list[int], str]:
    """A clip's digits and its question (each of ``kinds`` equally often; see the module docstring)."""
    kind = kinds[_randint(len(kinds), g)]
    if kind == "position":
        digits = torch.randint(10, (length,), generator=g).tolist()
        return digits, f"what is the {ORDINALS[_randint(len(ORDINALS), g)]} digit"
    named = _randint(10, g)
    digits = _other_digits(length, named, g)
    if kind == "count":
        for i in torch.randperm(length, generator=g)[: _randint(MAX_COUNT + 1, g)].tolist():
            digits[i] = named
        return digits, f"how many {_PLURALS[named]}"
    digits[_randint(length - 1, g)] = named
    return digits, f"which digit comes after the {_DIGIT_NAMES[named]}"


def _bounce(start: int, step: int, frames: int) -> list[int]:
    """Offsets ``start + step * t`` reflected into ``0.._MAX_OFFSET``."""
    period = 2 * _MAX_OFFSET
    return [min(p, period - p) for p in ((start + step * t) % period for t in range(frames))]


def check_kinds(kinds: object) -> tuple[str, ...]:
    """``kinds`` as a tuple: distinct question kinds of :data:`QUESTION_KINDS`, at least one.

    Raises:
        ValueError: anything else, naming the valid kinds.
    """
    ok = isinstance(kinds, list | tuple) and kinds and all(k in QUESTION_KINDS for k in kinds)
    if not ok or len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds: expected distinct question kinds among {', '.join(QUESTION_KINDS)} "
                         f"(at least one), got {kinds!r}")  # fmt: skip
    return tuple(kinds)


def digit_clips(
    n: int, *, seed: int, split: str = "train", split_seed: int = 0, kinds: tuple[str, ...] = QUESTION_KINDS
) -> DigitClips:
    """``n`` clips of moving handwritten digits, each with a question (see the module docstring).

    Args:
        n: clips to draw.
        seed: the draw; the same ``(n, seed, split, split_seed)``, the same clips.
        split: ``"train"``, ``"valid"`` or ``"test"`` (handwriting never in train).
        split_seed: how the handwriting is split (fixed across a run's splits).
        kinds: the question kinds asked, each equally often (:data:`QUESTION_KINDS`: the same
            clips as without the argument).

    Raises:
        ValueError: a bad ``n``, ``seed``, ``split``, ``split_seed`` or ``kinds``.
        ImportError: scikit-learn missing (``pip install 'qkv[vision]'``).
    """
    for name, value in (("n", n), ("seed", seed), ("split_seed", split_seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
    if split not in CLIP_SPLITS:
        raise ValueError(f"split: expected one of {', '.join(map(repr, CLIP_SPLITS))}, got {split!r}")
    kinds = check_kinds(kinds)
    images, by_digit = handwriting(split, split_seed)
    g = torch.Generator().manual_seed(seed * 1_000_003 + 17 + CLIP_SPLITS.index(split))
    frames = torch.zeros(n, MAX_FRAMES, 1, FRAME_SIZE, FRAME_SIZE)
    lengths = torch.randint(MIN_FRAMES, MAX_FRAMES + 1, (n,), generator=g)
    all_digits = torch.full((n, MAX_FRAMES), -1, dtype=torch.int64)
    questions, answers, gold = [], [], []
    for i, length in enumerate(lengths.tolist()):
        digits, question = _draw_question(length, kinds, g)
        motion = torch.randint(_MAX_OFFSET + 1, (2,), generator=g).tolist()
        steps = (torch.randint(3, (2,), generator=g) - 1).tolist()
        ys, xs = _bounce(motion[0], steps[0], length), _bounce(motion[1], steps[1], length)
        for t, d in enumerate(digits):
            pick = by_digit[d][_randint(len(by_digit[d]), g)]
            frames[i, t, 0, ys[t] : ys[t] + 8, xs[t] : xs[t] + 8] = images[pick]
        all_digits[i, :length] = torch.tensor(digits)
        answer, frames_of_answer = clip_answer(digits, question)
        questions.append(question)
        answers.append(answer)
        gold.append(frames_of_answer)
    return DigitClips(frames, lengths, all_digits, questions, torch.tensor(answers, dtype=torch.int64), gold)
