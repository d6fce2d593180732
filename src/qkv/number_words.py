"""Numbers in words: num2words' wording split into tokens, each token annotated with the digits it expresses.

Shared by the applications that write numbers (the translation numbers corpus, the digit
strips of cross-modal matching); imported by name (``import qkv.number_words``). Words come from ``num2words`` (``pip install 'qkv[train]'``): the
tokens of a number are exactly ``num2words(n, lang=lang)`` lowercased, with hyphens and commas
turned into token boundaries, and German, Dutch and Italian compounds split into morphemes
(``"vierunddreißig"`` -> ``"vier und dreißig"``), so joining the morphemes of each word gives
the word back.

Gold alignment from the number's structure
------------------------------------------
Each token is annotated with the digit places it expresses (place 0 = units, 1 = tens, ...)
and a role: ``value`` for words that give a digit (``thirty``, ``vier``, ``doscientos``), or a
scale (``hundred``, ``thousand``, ``million``) for the words that multiply. A scale word covers
the places of the digits it scales (``thousand`` in 34 000 covers places 3 and 4). Then

- digits <-> words: digit ``d`` (place ``p``) is linked to every word that covers ``p``;
- words <-> words: two words are linked when they share a (place, role): ``thirty`` and
  ``dreißig`` both give the tens digit, ``thousand`` and ``tausend`` both scale places 3-4;
- connectives (``and``, ``und``, ``et``, ``y``, ``e``, ``en``) stay unaligned.

A scale word standing alone for "one" (``cent``, ``mille``, ``mil``, ``cien``) also gives the
digit 1. English ``thirty four`` against German ``vier und dreißig`` has crossing links
``(0, 2)`` and ``(1, 0)``::

            vier und dreißig
    thirty    .   .     x
    four      x   .     .
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import re
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "MAX_VALUE",
    "NUMBER_LANGUAGES",
    "check_language",
    "num2words_version",
    "number_alignment",
    "number_annotation",
    "number_places",
    "number_tokens",
    "paired_tokens",
]

_EXTRA = "pip install 'qkv[train]'"
#: The largest number written here (the scales known here stop at "million").
MAX_VALUE = 999_999_999
VALUE = "value"
_SCALE_ROLES = {100: "hundred", 1000: "thousand", 1_000_000: "million"}


@dataclass(frozen=True)
class _Lexicon:
    """The words num2words uses for a language, with what each one means."""

    values: dict[str, int]  # additive words: units, teens, tens, whole hundreds (es "doscientos")
    scales: dict[str, int]  # multiplying words: 100, 1000, 10**6
    connectives: frozenset[str]  # "and"-like words, unaligned
    compound: bool = False  # words are written together and split into morphemes here
    # words that multiply the unit right before them (French quatre-vingts = 4 x 20)
    times_unit: frozenset[str] = frozenset()
    morphemes: tuple[str, ...] = field(init=False, default=())  # longest first
    pattern: re.Pattern = field(init=False, default=re.compile(""))  # the morphemes, longest first

    def __post_init__(self) -> None:
        words = sorted({*self.values, *self.scales, *self.connectives}, key=lambda w: (-len(w), w))
        object.__setattr__(self, "morphemes", tuple(words))
        object.__setattr__(self, "pattern", re.compile("|".join(map(re.escape, words))))


def _seq(words: str, start: int = 0, step: int = 1) -> dict[str, int]:
    return {w: start + i * step for i, w in enumerate(words.split())}


_LEXICONS: dict[str, _Lexicon] = {
    "en": _Lexicon(
        values={
            **_seq("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                   "fourteen fifteen sixteen seventeen eighteen nineteen"),
            **_seq("twenty thirty forty fifty sixty seventy eighty ninety", 20, 10),
        },
        scales={"hundred": 100, "thousand": 1000, "million": 1_000_000},
        connectives=frozenset({"and"}),
    ),
    "fr": _Lexicon(
        values={
            **_seq("zéro un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze "
                   "quinze seize"),
            "une": 1, "vingts": 20,
            **_seq("vingt trente quarante cinquante soixante", 20, 10),
        },
        scales={"cent": 100, "cents": 100, "mille": 1000, "million": 1_000_000, "millions": 1_000_000},
        connectives=frozenset({"et"}),
        times_unit=frozenset({"vingt", "vingts"}),
    ),
    "de": _Lexicon(
        values={
            **_seq("null eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf dreizehn "
                   "vierzehn fünfzehn sechzehn siebzehn achtzehn neunzehn"),
            "ein": 1, "eine": 1,
            **_seq("zwanzig dreißig vierzig fünfzig sechzig siebzig achtzig neunzig", 20, 10),
        },
        scales={"hundert": 100, "tausend": 1000, "million": 1_000_000, "millionen": 1_000_000},
        connectives=frozenset({"und"}),
        compound=True,
    ),
    "es": _Lexicon(
        values={
            **_seq("cero uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce "
                   "quince dieciséis diecisiete dieciocho diecinueve veinte veintiuno veintidós "
                   "veintitrés veinticuatro veinticinco veintiséis veintisiete veintiocho veintinueve"),
            "un": 1, "una": 1, "veintiún": 21,
            **_seq("treinta cuarenta cincuenta sesenta setenta ochenta noventa", 30, 10),
            "cien": 100, "ciento": 100,
            **_seq("doscientos trescientos cuatrocientos quinientos seiscientos setecientos "
                   "ochocientos novecientos", 200, 100),
        },
        scales={"mil": 1000, "millón": 1_000_000, "millones": 1_000_000},
        connectives=frozenset({"y"}),
    ),
    "pt": _Lexicon(
        values={
            **_seq("zero um dois três quatro cinco seis sete oito nove dez onze doze treze catorze "
                   "quinze dezasseis dezassete dezoito dezanove vinte"),
            "uma": 1, "duas": 2, "dezesseis": 16, "dezessete": 17, "dezenove": 19,
            **_seq("trinta quarenta cinquenta sessenta setenta oitenta noventa", 30, 10),
            "cem": 100, "cento": 100,
            **_seq("duzentos trezentos quatrocentos quinhentos seiscentos setecentos oitocentos "
                   "novecentos", 200, 100),
        },
        scales={"mil": 1000, "milhão": 1_000_000, "milhões": 1_000_000},
        connectives=frozenset({"e"}),
    ),
    "it": _Lexicon(
        values={
            **_seq("zero uno due tre quattro cinque sei sette otto nove dieci undici dodici tredici "
                   "quattordici quindici sedici diciassette diciotto diciannove"),
            "un": 1, "una": 1, "tré": 3, "dicotto": 18,
            **_seq("venti trenta quaranta cinquanta sessanta settanta ottanta novanta", 20, 10),
            # elided tens before "uno" and "otto": vent-uno, trent-otto
            **_seq("vent trent quarant cinquant sessant settant ottant novant", 20, 10),
        },
        scales={"cento": 100, "cent": 100, "mille": 1000, "mila": 1000, "milione": 1_000_000,
                "milioni": 1_000_000},
        connectives=frozenset({"e"}),
        compound=True,
    ),
    "nl": _Lexicon(
        values={
            **_seq("nul een twee drie vier vijf zes zeven acht negen tien elf twaalf dertien veertien "
                   "vijftien zestien zeventien achttien negentien"),
            "één": 1,
            **_seq("twintig dertig veertig vijftig zestig zeventig tachtig negentig", 20, 10),
        },
        scales={"honderd": 100, "duizend": 1000, "miljoen": 1_000_000, "miljoenen": 1_000_000},
        connectives=frozenset({"en", "ën"}),
        compound=True,
    ),
}  # fmt: skip

#: The languages known here: ``"digits"`` and the num2words languages whose words are annotated.
NUMBER_LANGUAGES = ("digits", *_LEXICONS)


def _require_num2words():
    try:
        import num2words
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"numbers in words need num2words: {_EXTRA}") from e
    return num2words


def num2words_version() -> str | None:
    """The installed num2words version (None when it has no package metadata)."""
    try:
        return importlib.metadata.version("num2words")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - vendored copies
        return None


def _num2words_call(lang: str) -> Callable[[int], str]:
    """``n -> num2words(n, lang=lang)``, about 10x faster where that is provably the same.

    num2words' generic converter scans its whole table of number words (up to 10**600) on
    every call. Dropping the entries above ``MAX_VALUE`` cannot change the output for smaller
    numbers (the scan skips them); the copy is still checked against ``num2words`` itself on
    probes, and the plain call is used if anything differs.
    """
    num2words = _require_num2words()

    def plain(n: int) -> str:
        return num2words.num2words(n, lang=lang)

    conv = num2words.CONVERTER_CLASSES.get(lang)
    cards = getattr(conv, "cards", None)
    if conv is None or not cards:
        return plain
    fast = copy.copy(conv)
    fast.cards = type(cards)((k, v) for k, v in cards.items() if k <= MAX_VALUE)
    probes = [*range(0, 130), 180, 181, 199, 200, 999, 1000, 1001, 1100, 1234, 2000, 10_001, 21_000,
              80_000, 100_000, 101_000, 999_999, 1_000_000, 1_001_000, 2_000_000, 21_000_000,
              123_456_789, MAX_VALUE]  # fmt: skip
    try:
        if all(fast.to_cardinal(p) == plain(p) for p in probes):
            return fast.to_cardinal
    except Exception:  # the copy is only an optimization
        pass
    return plain


# thousands tried when learning how a language joins "t thousand" and "u" (see _cardinal)
_JOIN_PROBES = (1, 2, 11, 21, 80, 100, 101, 999)


@functools.cache
def _cardinal(lang: str) -> Callable[[int], str]:
    """``n -> num2words(n, lang=lang)``, with the num2words calls cached by thousands.

    Below a million, ``num2words(1000 * t + u)`` is ``num2words(1000 * t)``, a junction, then
    ``num2words(u)`` in every language here ("one thousand" + ", " + "two hundred and
    thirty-four", "eintausend" + "" + "eins"). The junction of each ``u`` is read off
    num2words' own output for several ``t``; where they disagree (or the output is not such a
    concatenation) that ``u`` is always sent to num2words. So every string is num2words' own,
    from about 2 000 calls per language instead of one per number.
    """
    call = _num2words_call(lang)
    small = [call(u) for u in range(1000)]
    heads: dict[int, str] = {t: call(1000 * t) for t in _JOIN_PROBES}
    joins: list[str | None] = [None] * 1000
    for u in range(1, 1000):
        join: str | None = None
        for t in _JOIN_PROBES:
            full, head, tail = call(1000 * t + u), heads[t], small[u]
            ok = len(full) >= len(head) + len(tail) and full.startswith(head) and full.endswith(tail)
            piece = full[len(head) : len(full) - len(tail)] if ok else None
            if piece is None or (join is not None and piece != join):
                join = None
                break
            join = piece
        joins[u] = join

    def cardinal(n: int) -> str:
        if n < 1000:
            return small[n]
        if n >= 1_000_000:
            return call(n)
        t, u = divmod(n, 1000)
        head = heads.get(t)
        if head is None:
            head = heads[t] = call(1000 * t)
        if u == 0:
            return head
        join = joins[u]
        return call(n) if join is None else head + join + small[u]

    return cardinal


def _lexicon(lang: str) -> _Lexicon:
    try:
        return _LEXICONS[lang]
    except KeyError:
        raise ValueError(f"language: expected one of {', '.join(NUMBER_LANGUAGES)}, got {lang!r}") from None


def _segment(word: str, lex: _Lexicon) -> list[str]:
    """Split a compound number word into morphemes (longest match first, backtracking if stuck)."""
    parts = lex.pattern.findall(word)
    if "".join(parts) == word:
        return parts

    @functools.cache
    def rest(i: int) -> tuple[str, ...] | None:  # a segmentation of word[i:], or None
        if i == len(word):
            return ()
        for m in lex.morphemes:
            if word.startswith(m, i):
                tail = rest(i + len(m))
                if tail is not None:
                    return (m, *tail)
        return None

    found = rest(0)
    if found is None:
        raise ValueError(f"cannot split {word!r} into number morphemes")
    return list(found)


def _split_words(text: str, lex: _Lexicon) -> list[str]:
    words = text.lower().replace("-", " ").replace(",", " ").split()
    if not lex.compound:
        return words
    return [m for w in words for m in _segment(w, lex)]


_Keys = tuple[frozenset, ...]  # per token: a frozenset of (place, role) atoms, or of places


@functools.cache
def _parse_group(lang: str, tokens: tuple[str, ...], k: int) -> tuple[int, _Keys, _Keys]:
    """Value, atoms and places of the tokens of one group below 1000, scaled by ``1000**k``.

    Cached: a corpus has about a thousand distinct groups per language and position.
    """
    lex = _LEXICONS[lang]
    cur = 0
    # records: [token index, kind, value]; kinds: "v" a value word below 100, "hm" the multiplier
    # before a hundred word, "h" a whole-hundreds word (es "doscientos"), "hs" a hundred word
    # (value 1 when it stands alone for "one hundred"), "t" a tens word multiplying the unit
    # right before it and "tm" that unit (fr "quatre vingts"), "c" a connective
    records: list[list] = []
    for i, tok in enumerate(tokens):
        if tok in lex.connectives:
            records.append([i, "c", 0])
            continue
        v = lex.values.get(tok)
        if v is not None:
            prev = records[-1] if records else None
            if tok in lex.times_unit and prev is not None and prev[1] == "v" and prev[2] < 10:
                cur += prev[2] * v - prev[2]
                prev[1] = "tm"
                records.append([i, "t", v])
            else:
                cur += v
                records.append([i, "h" if v >= 100 else "v", v])
            continue
        if lex.scales.get(tok) != 100:
            raise ValueError(f"unknown number word {tok!r}")
        if cur >= 10 or any(r[1] not in ("v", "c") for r in records):
            raise ValueError(f"unexpected hundred word {tok!r} after {cur}")
        for r in records:
            if r[1] == "v":
                r[1] = "hm"
        records.append([i, "hs", int(cur == 0)])
        cur = max(cur, 1) * 100
    base = 3 * k
    atoms = []
    for _, kind, v in records:
        if kind == "v":
            a = set()
            if v >= 10:
                a.add((base + 1, VALUE))
            if v % 10 or v == 0:
                a.add((base, VALUE))
        elif kind == "hm":
            a = {(base + 2, VALUE)}
        elif kind == "h":
            a = {(base + 2, VALUE), (base + 2, "hundred")}
        elif kind == "hs":
            a = {(base + 2, "hundred")} | ({(base + 2, VALUE)} if v else set())
        elif kind == "c":
            a = set()
        else:  # "t", "tm"
            a = {(base + 1, VALUE)}
        atoms.append(frozenset(a))
    return cur, tuple(atoms), tuple(frozenset(p for p, _ in a) for a in atoms)


@functools.cache
def _scale_keys(k: int, ndigits: int, implicit_one: bool) -> tuple[frozenset, frozenset]:
    role = _SCALE_ROLES[1000**k]
    atoms = {(p, role) for p in range(3 * k, min(3 * k + 3, ndigits))}
    if implicit_one:
        atoms.add((3 * k, VALUE))
    return frozenset(atoms), frozenset(p for p, _ in atoms)


def _parse(tokens: list[str], n: int, lang: str) -> tuple[_Keys, _Keys]:
    """Atoms and places of each token of the number ``n``; checks that the tokens add up to ``n``."""
    lex = _LEXICONS[lang]
    ndigits = len(str(n))
    atoms: list[frozenset] = []
    places: list[frozenset] = []
    total, start = 0, 0
    for i, tok in enumerate(tokens):
        s = lex.scales.get(tok, 0)
        if s < 1000:
            continue
        k = 1 if s == 1000 else 2
        value, a, p = _parse_group(lang, tuple(tokens[start:i]), k)
        sa, sp = _scale_keys(k, ndigits, value == 0)
        atoms += (*a, sa)
        places += (*p, sp)
        total += max(value, 1) * s
        start = i + 1
    value, a, p = _parse_group(lang, tuple(tokens[start:]), 0)
    atoms += a
    places += p
    total += value
    if total != n:
        raise ValueError(f"the words add up to {total}")
    return tuple(atoms), tuple(places)


@functools.cache
def _digit_keys(ndigits: int) -> tuple[_Keys, _Keys]:
    places = tuple(frozenset({ndigits - 1 - i}) for i in range(ndigits))
    return tuple(frozenset({(next(iter(p)), VALUE)}) for p in places), places


def _annotate(n: int, lang: str) -> tuple[tuple[str, ...], _Keys, _Keys]:
    """Tokens, atoms and places of ``n`` in ``lang`` (no argument checks)."""
    if lang == "digits":
        digits = str(n)
        return (tuple(digits), *_digit_keys(len(digits)))
    text = _cardinal(lang)(n)
    try:
        tokens = _split_words(text, _LEXICONS[lang])
        atoms, places = _parse(tokens, n, lang)
    except ValueError as e:
        raise RuntimeError(
            f"numbers: cannot read num2words' {lang!r} wording of {n}, {text!r}: {e} "
            f"(num2words {num2words_version()})"
        ) from None
    return tuple(tokens), atoms, places


def check_language(lang: object, name: str = "language") -> str:
    """``lang`` if it is one of :data:`NUMBER_LANGUAGES`, its num2words wording ready (cached).

    Raises:
        ValueError: another language (the message names ``name``). ImportError: no num2words.
    """
    if lang not in NUMBER_LANGUAGES:
        raise ValueError(f"{name}: expected one of {', '.join(NUMBER_LANGUAGES)}, got {lang!r}")
    if lang != "digits":
        _cardinal(lang)
    return str(lang)


def _check_number(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_VALUE:
        raise ValueError(f"n: expected an int in [0, {MAX_VALUE}], got {n!r}")


def number_annotation(n: int, lang: str) -> tuple[tuple[str, ...], tuple[frozenset, ...]]:
    """The tokens of ``n`` in ``lang`` and, for each, its atoms ``{(place, role)}``.

    ``place`` is the digit position (0 = units); ``role`` is ``"value"`` or the scale it
    applies (``"hundred"``, ``"thousand"``, ``"million"``). A digit token of ``"digits"`` has
    the single atom ``(place, "value")``; connectives have none.

    Raises:
        ValueError: an unknown language or ``n`` outside ``[0, 999_999_999]``.
        RuntimeError: num2words wrote a word this module does not know (a num2words version
            whose wording differs; the message names the word and the version).
    """
    _check_number(n)
    if lang != "digits":
        _lexicon(lang)
    tokens, atoms, _ = _annotate(n, lang)
    return tokens, atoms


def number_places(n: int, lang: str) -> tuple[tuple[str, ...], tuple[frozenset[int], ...]]:
    """The tokens of ``n`` in ``lang`` and, for each, the digit places it expresses (0 =
    units; a teen covers two places, a scale word the places it scales, a connective none).

    >>> number_places(34, "de")  # vier und dreißig
    (('vier', 'und', 'dreißig'), (frozenset({0}), frozenset(), frozenset({1})))

    Raises:
        ValueError: an unknown language or ``n`` outside ``[0, 999_999_999]``.
    """
    _check_number(n)
    if lang != "digits":
        _lexicon(lang)
    tokens, _, places = _annotate(n, lang)
    return tokens, places


def number_tokens(n: int, lang: str) -> list[str]:
    """The tokens of ``n`` in ``lang``: ``number_tokens(34, "de") == ["vier", "und", "dreißig"]``.

    For a word language, ``" ".join`` of the tokens is ``num2words(n, lang=lang)`` lowercased
    with hyphens and commas made token boundaries, except that compounds (de, nl, it) are split
    into morphemes (``"".join`` of a word's morphemes gives the word back). ``"digits"`` gives
    the decimal digits, most significant first.

    Raises:
        ValueError: an unknown language or ``n`` outside ``[0, 999_999_999]``.
    """
    return list(number_annotation(n, lang)[0])


def _links(src: _Keys, tgt: _Keys) -> tuple[tuple[int, int], ...]:
    """Links ``(i, j)`` where token ``i`` of ``src`` and token ``j`` of ``tgt`` share a key."""
    index: dict[object, list[int]] = {}
    for j, keys in enumerate(tgt):
        for key in keys:
            index.setdefault(key, []).append(j)
    links = {(i, j) for i, keys in enumerate(src) for key in keys for j in index.get(key, ())}
    return tuple(sorted(links))


def paired_tokens(
    n: int, source: str, target: str
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[int, int], ...]]:
    """The tokens of ``n`` in ``source`` and in ``target`` and their gold links (as
    :func:`number_alignment`), with no argument checks: the generator of a corpus checks once."""
    s_tok, s_atoms, s_places = _annotate(n, source)
    t_tok, t_atoms, t_places = _annotate(n, target)
    if "digits" in (source, target):
        return s_tok, t_tok, _links(s_places, t_places)
    return s_tok, t_tok, _links(s_atoms, t_atoms)


def number_alignment(n: int, source: str, target: str) -> tuple[tuple[int, int], ...]:
    """Gold links ``(source token, target token)`` between ``n`` written in two languages.

    Digits are linked to the words that cover their place; two word languages are linked
    where their words share a (place, role) (see the module docstring).

    >>> number_alignment(34, "en", "de")  # thirty four / vier und dreißig
    ((0, 2), (1, 0))

    Raises:
        ValueError: an unknown language or ``n`` outside ``[0, 999_999_999]``.
    """
    _check_number(n)
    for lang in (source, target):
        if lang != "digits":
            _lexicon(lang)
    return paired_tokens(n, source, target)[2]
