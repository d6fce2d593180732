"""Dependency treebanks in CoNLL-U (Universal Dependencies), read into :class:`Sentence` records.

A sentence is its **syntactic words** (the lines with an integer ID), each with the index of its
head word (``-1`` for the root) and its dependency relation:

- Multiword tokens (``3-4  don't``) are surface forms spanning several words; the words inside
  them (``3 do``, ``4 n't``) are what the tree links, so the sentence is read as those words and
  the range line is kept only as :attr:`Sentence.multiword` (the spans and their surface forms).
- Empty nodes (``8.1``) belong to the enhanced graph (the DEPS column), not to the basic tree:
  no basic HEAD points at them, and they are skipped.
- Relations: the universal label, subtypes folded (``nmod:poss`` is read as ``nmod``,
  ``aux:pass`` as ``aux``) unless ``keep_subtypes=True``.

The columns are parsed by the ``conllu`` package (``pip install 'qkv[syntax]'``), imported when a
file is read; this module adds the line numbers, the tree checks and the records.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Sentence", "TreebankError", "fold_relation", "parse_conllu", "read_conllu"]


class TreebankError(ValueError):
    """A CoNLL-U line that cannot be read; the message starts with ``<source>:<line>:``."""


@dataclass(frozen=True)
class Sentence:
    """One dependency tree.

    Attributes:
        words: the syntactic words' forms.
        heads: for each word, the 0-based index of its head word, ``-1`` for the root.
        relations: each word's relation to its head (folded unless read with subtypes).
        sent_id: the ``# sent_id`` comment, or ``"<source>:<first line>"``.
        multiword: ``(first, last, form)`` of each multiword token, 0-based word indices,
            inclusive.
    """

    words: tuple[str, ...]
    heads: tuple[int, ...]
    relations: tuple[str, ...]
    sent_id: str
    multiword: tuple[tuple[int, int, str], ...] = ()

    def __len__(self) -> int:
        return len(self.words)


def fold_relation(relation: str) -> str:
    """The universal part of a UD relation: ``"nmod:poss"`` -> ``"nmod"``."""
    return relation.split(":", 1)[0]


def _conllu_parser():
    try:
        from conllu.exceptions import ParseException
        from conllu.parser import DEFAULT_FIELD_PARSERS, DEFAULT_FIELDS, parse_line
    except ImportError as exc:
        raise ImportError("reading CoNLL-U needs the conllu package: pip install 'qkv[syntax]'") from exc
    return parse_line, DEFAULT_FIELDS, dict(DEFAULT_FIELD_PARSERS), ParseException


def read_conllu(path: str | Path, *, keep_subtypes: bool = False, limit: int | None = None) -> list[Sentence]:
    """The sentences of a CoNLL-U file (UTF-8), in file order.

    Args:
        path: the ``.conllu`` file.
        keep_subtypes: keep ``nmod:poss`` as is instead of folding it to ``nmod``.
        limit: read only the first ``limit`` sentences (``None``: all).

    Raises:
        ImportError: the conllu package is missing (``pip install 'qkv[syntax]'``).
        FileNotFoundError: no such file.
        TreebankError: a malformed line, named by ``<path>:<line number>:``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: expected a CoNLL-U file, got {str(path)!r} (no such file)")
    with path.open(encoding="utf-8") as lines:
        return parse_conllu(lines, source=str(path), keep_subtypes=keep_subtypes, limit=limit)


def parse_conllu(
    lines: Iterable[str] | str,
    *,
    source: str = "<conllu>",
    keep_subtypes: bool = False,
    limit: int | None = None,
) -> list[Sentence]:
    """The sentences of CoNLL-U text (a string or its lines); see :func:`read_conllu`.

    Raises:
        TreebankError: a malformed line (``<source>:<line>: ...``): not 10 tab-separated
            columns, an ID, HEAD or DEPREL that is not one, a head outside the sentence, a
            sentence whose words are not numbered 1..n or that has no single root.
        ValueError: ``limit`` not a positive int or None.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"limit: expected a positive int or None, got {limit!r}")
    parser = _conllu_parser()
    if isinstance(lines, str):
        lines = lines.splitlines()
    out: list[Sentence] = []
    for block in _blocks(lines):
        if all(line.startswith("#") for _, line in block):
            continue  # comments only (a file header)
        out.append(_sentence(block, parser, source, keep_subtypes))
        if limit is not None and len(out) == limit:
            break
    return out


def _blocks(lines: Iterable[str]) -> Iterator[list[tuple[int, str]]]:
    """Blank-line separated blocks of ``(line number, line)``."""
    block: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if line.strip():
            block.append((number, line))
        elif block:
            yield block
            block = []
    if block:
        yield block


def _token(number: int, line: str, parser, source: str) -> dict:
    parse_line, fields, field_parsers, parse_exception = parser
    columns = line.split("\t")
    if len(columns) != 10:
        raise TreebankError(
            f"{source}:{number}: expected 10 tab-separated columns (ID FORM LEMMA UPOS XPOS FEATS HEAD "
            f"DEPREL DEPS MISC), got {len(columns)}: {line[:80]!r}"
        )
    try:
        return parse_line(line, fields, field_parsers)
    except parse_exception as exc:
        raise TreebankError(f"{source}:{number}: {exc}: {line[:80]!r}") from None


def _sentence(block: list[tuple[int, str]], parser, source: str, keep_subtypes: bool) -> Sentence:
    sent_id = f"{source}:{block[0][0]}"
    words, heads, relations, lines, multiword = [], [], [], [], []
    for number, line in block:
        if line.startswith("#"):
            key, _, value = line[1:].partition("=")
            if key.strip() == "sent_id" and value.strip():
                sent_id = value.strip()
            continue
        token = _token(number, line, parser, source)
        wid = token["id"]
        if isinstance(wid, tuple):
            if wid[1] == "-":
                multiword.append((wid[0] - 1, wid[2] - 1, token["form"]))
            continue  # an empty node: enhanced graph only
        if wid != len(words) + 1:
            raise TreebankError(f"{source}:{number}: expected word ID {len(words) + 1}, got {wid}")
        head, rel = token["head"], token["deprel"]
        if head is None or rel in (None, "_", ""):
            raise TreebankError(f"{source}:{number}: word {wid} has no HEAD or no DEPREL: {line[:80]!r}")
        words.append(token["form"])
        heads.append(head - 1)
        relations.append(rel if keep_subtypes else fold_relation(rel))
        lines.append(number)
    if not words:
        raise TreebankError(f"{source}:{block[0][0]}: expected a sentence's word lines, got none")
    _check_tree(heads, lines, source)
    return Sentence(tuple(words), tuple(heads), tuple(relations), sent_id, tuple(multiword))


def _check_tree(heads: list[int], lines: list[int], source: str) -> None:
    n = len(heads)
    for h, number in zip(heads, lines):
        if not -1 <= h < n:
            raise TreebankError(f"{source}:{number}: HEAD {h + 1} is outside the sentence's words 0..{n}")
    roots = [number for h, number in zip(heads, lines) if h == -1]
    if len(roots) != 1:
        raise TreebankError(
            f"{source}:{lines[0]}: expected exactly one word with HEAD 0 in the sentence, got {len(roots)}"
        )
