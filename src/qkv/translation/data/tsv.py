"""Parallel text from a TSV file (the Tatoeba / manythings.org Anki format).

One pair per line: ``source<TAB>target[<TAB>anything...]``; extra columns (Tatoeba's
attribution) are ignored. The file is UTF-8 (a byte-order mark is tolerated). Lines without a
tab or with an empty side are skipped and reported (a :class:`DataWarning`, a ``UserWarning``
naming the first line numbers, and ``meta["malformed"]``); blank lines are skipped silently.
Normalization (:func:`normalize_text`) lives in :mod:`qkv.translation.data.text`.
"""

from __future__ import annotations

import os
import unicodedata
import warnings
from pathlib import Path

from ._rng import SeededRandom
from .corpus import Corpus, Example, _check_frac, long_threshold, split_counts
from .text import normalize_text

__all__ = ["DataWarning", "load_tsv", "normalize_text"]

_SHOWN = 10  # malformed line numbers named in the warning
_KEPT = 100  # malformed line numbers recorded in meta


class DataWarning(UserWarning):
    """Something in the data was skipped or looks wrong (malformed TSV lines); a ``UserWarning``.

    The ``qkv`` command prints these as ``warning: <message>`` on stderr.
    """


def _report(path: Path, lines: list[int], count: int) -> str:
    shown = ", ".join(map(str, lines[:_SHOWN]))
    more = f" and {count - _SHOWN} more" if count > _SHOWN else ""
    return (
        f"load_tsv: skipped {count} malformed line(s) of '{path}' (expected 'source<TAB>target', "
        f"both non-empty): line {shown}{more}"
    )


def load_tsv(
    path: str | os.PathLike,
    *,
    lowercase: bool = False,
    split_punct: bool = False,
    normalize_spaces: bool = True,
    max_len: int | None = None,
    valid_frac: float = 0.05,
    test_frac: float = 0.05,
    seed: int = 0,
    long_quantile: float = 0.75,
    reverse: bool = False,
    dedupe: bool = True,
    name: str | None = None,
) -> Corpus:
    """Read a TSV of sentence pairs into a :class:`Corpus` (no gold alignment).

    Each side goes through :func:`normalize_text`; each example also keeps both sides as
    written (``raw_source``, ``raw_target``: Unicode NFC, ends stripped, columns swapped with
    ``reverse``), the text references are scored against. Pairs are then split at random (seeded)
    into train/valid/test by source sentence: all translations of one source sentence land
    in the same split, so no test source is seen in training. ``test_long`` is the part of
    test at or above :func:`qkv.translation.data.corpus.long_threshold` (source tokens).

    Args:
        path: the file.
        lowercase, split_punct, normalize_spaces: see :func:`normalize_text`.
        max_len: drop pairs with more than ``max_len`` whitespace tokens on either side.
        valid_frac, test_frac: fractions of the source sentences held out.
        seed: the split's seed.
        long_quantile: ``test_long`` keeps at most the longest ``1 - long_quantile`` of test.
        reverse: swap the columns (translate from the second column to the first).
        dedupe: drop repeated pairs (after normalization), keeping the first.
        name: the corpus name (default: the file name without extension).

    Returns:
        A :class:`Corpus`; ``meta`` has ``lines``, ``blank``, ``malformed`` (count),
        ``malformed_lines`` (the first 100 line numbers), ``too_long``, ``duplicates``, the
        options, ``long_threshold`` and ``sizes``.

    Raises:
        FileNotFoundError: no such file. OSError: the file cannot be read (both name the path).
        ValueError: not UTF-8 (names the path and the line), an empty file, a file without
            any valid line, bad options.

    Warns:
        DataWarning: (a ``UserWarning``) malformed lines were skipped (first line numbers and
            the count).
    """
    path = Path(path)
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
        raise ValueError(f"max_len: expected None or an int >= 1, got {max_len!r}")
    _check_frac("long_quantile", long_quantile)
    raw_lines = _read_lines(path)
    norm = {"lowercase": lowercase, "split_punct": split_punct, "normalize_spaces": normalize_spaces}
    pairs, counts, malformed = _parse_pairs(
        path, raw_lines, norm, max_len=max_len, reverse=reverse, dedupe=dedupe
    )
    if counts["malformed"]:
        warnings.warn(_report(path, malformed, counts["malformed"]), DataWarning, stacklevel=2)
    if not pairs:
        raise ValueError(
            f"load_tsv: '{path}' has no usable pair ({len(raw_lines)} lines: {counts['malformed']} malformed, "
            f"{counts['blank']} blank, {counts['too_long']} longer than max_len={max_len})"
        )
    splits, threshold = _split_by_source(pairs, seed, valid_frac, test_frac, long_quantile)
    meta = {
        "generator": "tsv",
        "path": str(path),
        "lines": len(raw_lines),
        "blank": counts["blank"],
        "malformed": counts["malformed"],
        "malformed_lines": malformed,
        "too_long": counts["too_long"],
        "duplicates": counts["duplicates"],
        "pairs": len(pairs),
        **norm,
        "max_len": max_len,
        "reverse": reverse,
        "dedupe": dedupe,
        "valid_frac": valid_frac,
        "test_frac": test_frac,
        "seed": seed,
        "long_quantile": long_quantile,
        "long_threshold": threshold,
        "sizes": {k: len(v) for k, v in splits.items()},
    }
    return Corpus(name=name or path.stem, splits=splits, meta=meta)


def _read_lines(path: Path) -> list[bytes]:
    """The lines of the file as bytes (a UTF-8 byte-order mark dropped, the final newline too)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"load_tsv: no such file: '{path}'") from None
    except OSError as e:
        raise OSError(f"load_tsv: cannot read '{path}': {e.strerror or e}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        raise ValueError(f"load_tsv: '{path}' is empty")
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()  # the final newline ends the last line
    return raw_lines


def _parse_pairs(
    path: Path,
    raw_lines: list[bytes],
    norm: dict[str, bool],
    *,
    max_len: int | None,
    reverse: bool,
    dedupe: bool,
) -> tuple[list[tuple[str, str, str, str]], dict[str, int], list[int]]:
    """The pairs kept (normalized source and target, then both as written), the counts of lines skipped (``blank``, ``malformed``,
    ``too_long``, ``duplicates``) and the first malformed line numbers."""
    pairs: list[tuple[str, str, str, str]] = []
    seen: set[tuple[str, str]] = set()
    malformed: list[int] = []
    counts = dict.fromkeys(("blank", "malformed", "too_long", "duplicates"), 0)
    for lineno, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"load_tsv: '{path}' line {lineno} is not valid UTF-8 "
                f"(byte 0x{raw[e.start]:02x} at column {e.start + 1})"
            ) from None
        if not line.strip():
            counts["blank"] += 1
            continue
        cols = line.split("\t")
        src, tgt = (cols[0], cols[1]) if len(cols) >= 2 else ("", "")
        if reverse:
            src, tgt = tgt, src
        raw_src, raw_tgt = (unicodedata.normalize("NFC", x).strip() for x in (src, tgt))
        src, tgt = normalize_text(src, **norm).strip(), normalize_text(tgt, **norm).strip()
        if not src or not tgt:
            counts["malformed"] += 1
            if len(malformed) < _KEPT:
                malformed.append(lineno)
        elif max_len is not None and (len(src.split()) > max_len or len(tgt.split()) > max_len):
            counts["too_long"] += 1
        elif dedupe and (src, tgt) in seen:
            counts["duplicates"] += 1
        else:
            if dedupe:
                seen.add((src, tgt))
            pairs.append((src, tgt, raw_src, raw_tgt))
    return pairs, counts, malformed


def _split_by_source(
    pairs: list[tuple[str, str, str, str]],
    seed: int,
    valid_frac: float,
    test_frac: float,
    long_quantile: float,
) -> tuple[dict[str, list[Example]], int | None]:
    """train/valid/test/test_long split by source sentence (groups in order of first
    appearance, then a seeded shuffle; file order inside a split), and the long threshold."""
    groups: dict[str, list[int]] = {}
    for i, (src, *_) in enumerate(pairs):
        groups.setdefault(src, []).append(i)
    order = list(groups)
    SeededRandom(seed, "tsv-split").shuffle(order)
    _, n_valid, n_test = split_counts(len(order), valid_frac, test_frac)
    parts = {
        "train": order[n_test + n_valid :],
        "valid": order[n_test : n_test + n_valid],
        "test": order[:n_test],
    }
    splits: dict[str, list[Example]] = {}
    for split, sources in parts.items():
        idx = sorted(i for s in sources for i in groups[s])
        splits[split] = [Example(*pairs[i][:2], None, *pairs[i][2:]) for i in idx]
    threshold = None
    splits["test_long"] = []
    if splits["test"]:
        threshold = long_threshold([len(e.source.split()) for e in splits["test"]], long_quantile)
        splits["test_long"] = [e for e in splits["test"] if len(e.source.split()) >= threshold]
    return splits, threshold
