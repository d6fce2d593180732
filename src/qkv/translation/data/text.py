"""Text in and out of a translation model: the normalization of training, and its undoing for reading.

:func:`normalize_text` is what :func:`qkv.translation.data.load_tsv` does to each side of a pair (Unicode
NFC, optionally lowercase, optionally punctuation split off words, white space collapsed).
A model only ever sees that form, so whatever it is asked to translate must be normalized
the same way, and what it writes is in that form too (``"tom est malade ?"``).

A :class:`TextFormat` holds both directions, learned from the training pairs when a model is
trained and stored in its checkpoint (``qkv train``), so that ``qkv translate``,
``qkv evaluate`` and :class:`qkv.translation.Translator` apply exactly the training steps:

- :meth:`TextFormat.normalize`: the training normalization of an input;
- :meth:`TextFormat.detokenize`: the model's output made text again. Punctuation split off in
  training is reattached with the spacing the training *targets* use around each mark, learned
  from them (English ``"ill?"``, French ``"malade\\u202f?"`` and ``"« Oui »"``; a
  symmetric quote ``"`` opens, then closes). When training lowercased, the case comes back
  too: each word takes the form it mostly has inside training sentences (``"tom"`` ->
  ``"Tom"``), and a sentence starts with a capital when most training targets do.

>>> fmt = TextFormat.learn(["Tom est malade\\u202f?", "Je vois Tom."], lowercase=True, split_punct=True)
>>> fmt.normalize("Tom est-il malade ?")
'tom est-il malade ?'
>>> fmt.detokenize("tom est-il malade ?")
'Tom est-il malade\\u202f?'
"""

from __future__ import annotations

import itertools
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TextFormat", "normalize_text", "split_punct_tokens"]

_JOINERS = "'’-‐"  # kept between letters: "don't", "well-known"
_DIGIT_SEPARATORS = ".,:"  # kept between digits: "3.14", "1,000", "10:30"
_QUOTES = "\"'"  # symmetric quotes: the first of a sentence opens, the next closes
_SENTENCE_END = ".!?…"
_WORD = "w"  # the class of every token that is not a punctuation mark split off
_FORMAT_VERSION = 1


def _is_punct(c: str) -> bool:
    return unicodedata.category(c)[0] in "PS"


def _kept_inside(text: str, i: int) -> bool:
    """Whether the punctuation mark ``text[i]`` stays inside its word (``don't``, ``3.14``)."""
    c = text[i]
    prev = text[i - 1] if i > 0 else ""
    nxt = text[i + 1] if i + 1 < len(text) else ""
    if c in _JOINERS and prev.isalnum() and nxt.isalpha():
        return True
    return c in _DIGIT_SEPARATORS and prev.isdigit() and nxt.isdigit()


def split_punct_tokens(text: str) -> tuple[list[str], list[str]]:
    """The tokens of ``split_punct`` and the white space before each in ``text``.

    Every punctuation mark or symbol becomes a token of its own, except apostrophes and
    hyphens between letters and ``. , :`` between digits; white space separates tokens.
    ``gaps[k]`` is the first white-space character between token ``k - 1`` and token ``k``
    (``""`` when they touch; ``gaps[0]`` is always ``""``).

    >>> split_punct_tokens("«Oui», dit-il\\u202f!")
    (['«', 'Oui', '»', ',', 'dit-il', '!'], ['', '', '', '', ' ', '\\u202f'])
    """
    tokens: list[str] = []
    gaps: list[str] = []
    word: list[str] = []
    space = ""  # white space seen since the last token
    word_gap = ""  # the white space before the word being read

    def end_word() -> None:
        if word:
            tokens.append("".join(word))
            gaps.append(word_gap if len(tokens) > 1 else "")
            word.clear()

    for i, c in enumerate(text):
        if c.isspace():
            end_word()
            space = space or c
        elif _is_punct(c) and not _kept_inside(text, i):
            end_word()
            gaps.append(space if tokens else "")
            tokens.append(c)
            space = ""
        else:
            if not word:
                word_gap, space = space, ""
            word.append(c)
    end_word()
    return tokens, gaps


def normalize_text(
    text: str, *, lowercase: bool = False, split_punct: bool = False, normalize_spaces: bool = True
) -> str:
    """Normalize one side of a pair; always Unicode NFC.

    Args:
        lowercase: ``str.lower()``.
        split_punct: surround punctuation and symbols with spaces (``"Hello!"`` -> ``"Hello !"``,
            ``"«Oui»"`` -> ``"« Oui »"``), except apostrophes and hyphens inside words
            (``"don't"``, ``"Qu'est-ce"``) and ``. , :`` between digits (``"3.14"``); see
            :func:`split_punct_tokens`.
        normalize_spaces: every run of Unicode white space (tabs, no-break space U+00A0,
            narrow no-break space U+202F, ...) becomes one ASCII space; ends are stripped.

    >>> normalize_text("Bonjour\\u202f!  Ça va ?", lowercase=True, split_punct=True)
    'bonjour ! ça va ?'
    """
    text = unicodedata.normalize("NFC", text)
    if lowercase:
        text = text.lower()
    if split_punct:
        return " ".join(split_punct_tokens(text)[0])
    if normalize_spaces:
        text = " ".join(text.split())
    return text


def _classes(tokens: list[str]) -> list[str]:
    """``"w"`` for a word, the mark itself for a punctuation token; a symmetric quote is
    ``'"<'`` where it opens and ``'">'`` where it closes."""
    out, open_quotes = [], set()
    for t in tokens:
        if len(t) != 1 or not _is_punct(t):
            out.append(_WORD)
        elif t in _QUOTES:
            out.append(t + (">" if t in open_quotes else "<"))
            open_quotes ^= {t}
        else:
            out.append(t)
    return out


def _default_gap(before: str, after: str) -> str:
    """The spacing between two token classes when training never showed it: English-like
    rules from the Unicode category (no space before a closing mark, none after an opening one)."""

    def closing(c: str) -> bool:
        return c.endswith(">") or (c != _WORD and unicodedata.category(c[0]) in ("Pe", "Pf", "Po"))

    if _opening(before) or closing(after):
        return ""
    return " "


def _opening(cls: str) -> bool:
    return cls.endswith("<") or (cls != _WORD and unicodedata.category(cls[0]) in ("Ps", "Pi"))


def _sentence_starts(tokens: list[str], *, strict: bool = False) -> list[bool]:
    """For each token: whether it is the first word of a sentence: the first word of the text,
    the first after a token ending in ``. ! ? …``, the first inside quotes opened at the start,
    after ``:`` or after ``,`` (``Tom said, "I'm ill."``, ``Tom a dit : « Je suis malade. »``).
    ``strict``: the first word after any opening quote counts too (learning the case of words
    leaves out every position that may be a start)."""
    classes = _classes(tokens)
    out, start, prev = [], True, ""
    for t, cls in zip(tokens, classes):
        is_word = any(ch.isalpha() for ch in t)
        out.append(start and is_word)
        if is_word:
            start = False
        if t[-1] in _SENTENCE_END or (_opening(cls) and (strict or prev in ("", ":", ","))):
            start = True
        prev = t
    return out


def _capitalize(word: str) -> str:
    for i, ch in enumerate(word):
        if ch.isalpha():
            return word[:i] + ch.upper() + word[i + 1 :]
    return word


@dataclass(frozen=True)
class TextFormat:
    """The text steps of a trained model: how inputs are normalized and outputs made text.

    Attributes:
        lowercase, split_punct, normalize_spaces: the options of :func:`normalize_text` that
            training applied to both sides.
        spacing: ``"A B" -> gap``: the white space (``""`` when none) that the training targets
            put between a token of class ``A`` and one of class ``B`` (``"w"`` a word, else the
            mark; ``'"<'``/``'">'`` an opening/closing symmetric quote), the most frequent one.
            Pairs never seen fall back to English-like rules. Used when ``split_punct``.
        cases: lowercased word -> the form it mostly has inside training target sentences,
            for words whose usual form is not lowercase (``"tom" -> "Tom"``). Used when
            ``lowercase``.
        sentence_case: capitalize the first word of each output sentence (most training
            targets start with a capital). Used when ``lowercase``.
    """

    lowercase: bool = False
    split_punct: bool = False
    normalize_spaces: bool = True
    spacing: dict[str, str] = field(default_factory=dict)
    cases: dict[str, str] = field(default_factory=dict)
    sentence_case: bool = False

    @classmethod
    def learn(
        cls,
        targets: Iterable[str],
        *,
        lowercase: bool = False,
        split_punct: bool = False,
        normalize_spaces: bool = True,
    ) -> TextFormat:
        """Learn the spacing around punctuation and the case of words from training targets
        as written (before :func:`normalize_text`; NFC is applied here)."""
        spacing: dict[str, Counter[str]] = {}
        forms: dict[str, Counter[str]] = {}
        capitals = total = 0
        for raw in targets:
            raw = unicodedata.normalize("NFC", raw).strip()
            if not raw:
                continue
            if split_punct:
                tokens, gaps = split_punct_tokens(raw)
                classes = _classes(tokens)
                for k, pair in enumerate(itertools.pairwise(classes)):
                    if pair != (_WORD, _WORD):
                        spacing.setdefault(" ".join(pair), Counter())[gaps[k + 1]] += 1
            else:
                tokens = raw.split()
            if lowercase:
                first = next((ch for ch in raw if ch.isalpha()), "")
                total += bool(first)
                capitals += first.isupper()
                for t, start in zip(tokens, _sentence_starts(tokens, strict=True)):
                    if not start and any(ch.isalpha() for ch in t):
                        forms.setdefault(t.lower(), Counter())[t] += 1
        cases = {}
        for low, counts in forms.items():
            best = max(counts.items(), key=lambda kv: (kv[1], kv[0] == low))[0]
            if best != low:
                cases[low] = best
        return cls(
            lowercase=lowercase,
            split_punct=split_punct,
            normalize_spaces=normalize_spaces,
            spacing={k: c.most_common(1)[0][0] for k, c in sorted(spacing.items())},
            cases=dict(sorted(cases.items())),
            sentence_case=bool(lowercase and total and capitals * 2 >= total),
        )

    def normalize(self, text: str) -> str:
        """``text`` as the model saw its training text (:func:`normalize_text` with the
        training options)."""
        return normalize_text(
            text,
            lowercase=self.lowercase,
            split_punct=self.split_punct,
            normalize_spaces=self.normalize_spaces,
        )

    def detokenize(self, text: str) -> str:
        """A model output (in the normalized form) as text: case restored where training
        lowercased, punctuation reattached where training split it off."""
        tokens = text.split()
        if not tokens:
            return ""
        if self.lowercase:
            tokens = [
                _capitalize(self.cases.get(t, t)) if start and self.sentence_case else self.cases.get(t, t)
                for t, start in zip(tokens, _sentence_starts(tokens))
            ]
        if not self.split_punct:
            return " ".join(tokens)
        classes = _classes(tokens)
        out = [tokens[0]]
        for k in range(1, len(tokens)):
            out.append(self._gap(classes[k - 1], classes[k]))
            out.append(tokens[k])
        return "".join(out)

    def _gap(self, before: str, after: str) -> str:
        if before == _WORD and after == _WORD:
            return " "
        gap = self.spacing.get(f"{before} {after}")
        if gap is not None:
            return gap
        if before != _WORD and after != _WORD:  # two marks never seen side by side
            left, right = self.spacing.get(f"{before} {_WORD}"), self.spacing.get(f"{_WORD} {after}")
            if left is not None and right is not None:
                return "" if "" in (left, right) else right
        return _default_gap(before, after)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable description (checkpoints store it); :meth:`from_dict` inverts it."""
        return {
            "version": _FORMAT_VERSION,
            "lowercase": self.lowercase,
            "split_punct": self.split_punct,
            "normalize_spaces": self.normalize_spaces,
            "spacing": dict(self.spacing),
            "cases": dict(self.cases),
            "sentence_case": self.sentence_case,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextFormat:
        """The format a :meth:`to_dict` described.

        Raises:
            ValueError: not such a dict.
        """
        if not isinstance(d, dict) or d.get("version") != _FORMAT_VERSION:
            raise ValueError(f"text format: expected a dict with version {_FORMAT_VERSION}, got {d!r:.80}")
        return cls(
            lowercase=bool(d.get("lowercase", False)),
            split_punct=bool(d.get("split_punct", False)),
            normalize_spaces=bool(d.get("normalize_spaces", True)),
            spacing=dict(d.get("spacing", {})),
            cases=dict(d.get("cases", {})),
            sentence_case=bool(d.get("sentence_case", False)),
        )
