"""Tokenizers: text <-> token ids, with four special tokens at fixed ids.

===========  ====  =========================================
token        id    use
===========  ====  =========================================
``<pad>``    0     padding (``Tokenizer.PAD``)
``<sos>``    1     start of a target sequence (``SOS``)
``<eos>``    2     end of a target sequence (``EOS``)
``<unk>``    3     a token not in the vocabulary (``UNK``)
===========  ====  =========================================

Three kinds share one interface: :class:`WordTokenizer` (whitespace-separated words),
:class:`CharTokenizer` (characters, spaces included) and :class:`BPETokenizer` (byte-pair
encoding trained with the Hugging Face ``tokenizers`` library, ``pip install 'qkv[train]'``).
Build them on the training texts only: ``build_tokenizer("word", corpus.texts("train",
"source"))``. ``encode`` never adds special tokens (batching does); ``decode`` stops at the
first ``<eos>`` and skips ``<pad>`` and ``<sos>``. ``to_dict()`` gives a JSON-serializable dict
that :func:`tokenizer_from_dict` turns back into an equal tokenizer (checkpoints store it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from torch import Tensor

__all__ = [
    "SPECIALS",
    "BPETokenizer",
    "CharTokenizer",
    "Tokenizer",
    "WordTokenizer",
    "build_tokenizer",
    "tokenizer_from_dict",
]

SPECIALS = ("<pad>", "<sos>", "<eos>", "<unk>")
_EXTRA = "pip install 'qkv[train]'"
_BPE_DEFAULT_SIZE = 4000


def _texts(texts: Iterable[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts: expected a sequence of str, got a single str")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}]: expected a str, got {type(t).__name__}")
    return out


def _check_build_args(min_freq: object, max_size: object) -> None:
    if isinstance(min_freq, bool) or not isinstance(min_freq, int) or min_freq < 1:
        raise ValueError(f"min_freq: expected an int >= 1, got {min_freq!r}")
    if max_size is not None and (
        isinstance(max_size, bool) or not isinstance(max_size, int) or max_size <= len(SPECIALS)
    ):
        raise ValueError(
            f"max_size: expected None or an int > {len(SPECIALS)} (the vocabulary size, specials "
            f"included), got {max_size!r}"
        )


class Tokenizer:
    """The interface every tokenizer has (see the module docstring)."""

    PAD: ClassVar[int] = 0
    SOS: ClassVar[int] = 1
    EOS: ClassVar[int] = 2
    UNK: ClassVar[int] = 3
    SPECIALS: ClassVar[tuple[str, ...]] = SPECIALS
    kind: ClassVar[str] = ""

    def tokens(self, text: str) -> list[str]:
        """The tokens of ``text`` (no special tokens)."""
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens; unknown tokens become ``UNK``."""
        raise NotImplementedError

    def id_to_token(self, i: int) -> str:
        """The token of id ``i``. Raises ``ValueError`` outside ``[0, len(self))``."""
        raise NotImplementedError

    def token_to_id(self, token: str) -> int:
        """The id of ``token``, ``UNK`` if it is not in the vocabulary."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable description; :func:`tokenizer_from_dict` rebuilds the tokenizer."""
        raise NotImplementedError

    def _join(self, tokens: list[str], ids: list[int]) -> str:
        raise NotImplementedError

    def _ids(self, ids: Sequence[int] | Tensor) -> list[int]:
        """``ids`` up to the first EOS, without PAD and SOS, checked against the vocabulary."""
        if isinstance(ids, Tensor):
            if ids.dim() != 1:
                raise ValueError(f"ids: expected a 1-D tensor, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        out: list[int] = []
        size = len(self)
        for i in ids:
            i = int(i)
            if i == self.EOS:
                break
            if i in (self.PAD, self.SOS):
                continue
            if not 0 <= i < size:
                raise ValueError(f"ids: expected ids in [0, {size}), got {i}")
            out.append(i)
        return out

    def decode_tokens(self, ids: Sequence[int] | Tensor) -> list[str]:
        """The tokens of ``ids``, stopping at the first EOS and skipping PAD and SOS."""
        return [self.id_to_token(i) for i in self._ids(ids)]

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """The text of ``ids`` (a list or a 1-D tensor), stopping at the first EOS and skipping
        PAD and SOS; unknown tokens show as ``<unk>``."""
        ids = self._ids(ids)
        return self._join([self.id_to_token(i) for i in ids], ids)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={len(self)})"


class _VocabTokenizer(Tokenizer):
    """A tokenizer with an explicit vocabulary list (word and char)."""

    _sep: ClassVar[str] = ""

    def __init__(self, *, vocab: Sequence[str]) -> None:
        vocab = list(vocab)
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocab: expected to start with {list(SPECIALS)}, got {vocab[: len(SPECIALS)]}")
        if len(vocab) == len(SPECIALS):
            raise ValueError(
                "vocab: expected at least one token besides the specials, got an empty vocabulary"
            )
        index = {t: i for i, t in enumerate(vocab)}
        if len(index) != len(vocab):
            dup = next(t for t, c in Counter(vocab).items() if c > 1)
            raise ValueError(f"vocab: expected distinct tokens, got {dup!r} twice")
        self.vocab: list[str] = vocab
        self._index = index

    @classmethod
    def build(
        cls, texts: Iterable[str], *, min_freq: int = 1, max_size: int | None = None
    ) -> _VocabTokenizer:
        """The vocabulary of ``texts``: tokens seen at least ``min_freq`` times, most frequent first
        (ties in code-point order), at most ``max_size`` ids in all (specials included).

        Raises:
            TypeError: ``texts`` is not a sequence of str.
            ValueError: bad ``min_freq``/``max_size``, or no token left (empty vocabulary).
        """
        _check_build_args(min_freq, max_size)
        texts = _texts(texts)
        counts: Counter[str] = Counter()
        tokens = cls._split
        for t in texts:
            counts.update(tokens(t))
        for s in SPECIALS:
            counts.pop(s, None)
        kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[: max_size - len(SPECIALS)]
        if not kept:
            raise ValueError(
                f"texts: empty vocabulary: no token occurs at least min_freq={min_freq} times in "
                f"{len(texts)} texts"
            )
        return cls(vocab=[*SPECIALS, *kept])

    @staticmethod
    def _split(text: str) -> list[str]:
        raise NotImplementedError

    def tokens(self, text: str) -> list[str]:
        return self._split(text)

    def encode(self, text: str) -> list[int]:
        get, unk = self._index.get, self.UNK
        return [get(t, unk) for t in self._split(text)]

    def id_to_token(self, i: int) -> str:
        if not 0 <= i < len(self.vocab):
            raise ValueError(f"id: expected an int in [0, {len(self.vocab)}), got {i}")
        return self.vocab[i]

    def token_to_id(self, token: str) -> int:
        return self._index.get(token, self.UNK)

    def __len__(self) -> int:
        return len(self.vocab)

    def _join(self, tokens: list[str], ids: list[int]) -> str:
        return self._sep.join(tokens)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab": list(self.vocab)}


class WordTokenizer(_VocabTokenizer):
    """Whitespace-separated words: ``tokens("thirty four") == ["thirty", "four"]``.

    ``decode`` joins tokens with single spaces, so it inverts ``encode`` on text whose words
    are all known and separated by single spaces (what the built-in corpora and
    :func:`qkv.translation.data.load_tsv` give).
    """

    kind = "word"
    _sep = " "

    @staticmethod
    def _split(text: str) -> list[str]:
        return text.split()


class CharTokenizer(_VocabTokenizer):
    """Characters, spaces included: ``decode(encode(text)) == text`` when every character is known."""

    kind = "char"
    _sep = ""

    @staticmethod
    def _split(text: str) -> list[str]:
        return list(text)


def _require_tokenizers():
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"BPETokenizer needs the Hugging Face tokenizers library: {_EXTRA}") from e
    return tokenizers


class BPETokenizer(Tokenizer):
    """Byte-pair encoding (Sennrich et al., 2016) trained with Hugging Face ``tokenizers``.

    Words are marked with a leading ``"▁"`` (Metaspace pre-tokenizer), so ``decode`` restores the
    spaces: ``decode(encode(text)) == text`` when every character of ``text`` was seen in
    training; unseen characters become ``<unk>``.
    """

    kind = "bpe"

    def __init__(self, *, tokenizer: Any) -> None:
        for i, s in enumerate(SPECIALS):
            got = tokenizer.token_to_id(s)
            if got != i:
                raise ValueError(f"tokenizer: expected {s!r} at id {i}, got id {got}")
        self._tok = tokenizer

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        *,
        min_freq: int = 1,
        max_size: int | None = None,
        vocab_size: int | None = None,
    ) -> BPETokenizer:
        """Train BPE on ``texts`` (training texts only).

        Args:
            min_freq: a pair is merged only if it occurs at least this often.
            max_size: the vocabulary size, specials and alphabet included (``vocab_size`` is
                the same argument under the ``tokenizers`` name); default 4000. Training stops
                earlier when no pair is frequent enough.

        Raises:
            TypeError: ``texts`` is not a sequence of str.
            ValueError: bad arguments or no text.
            ImportError: ``tokenizers`` is missing (``pip install 'qkv[train]'``).
        """
        if vocab_size is not None and max_size is not None and vocab_size != max_size:
            raise ValueError(
                f"vocab_size: expected the same as max_size={max_size} or None, got {vocab_size}"
            )
        size = max_size if max_size is not None else vocab_size
        _check_build_args(min_freq, size)
        texts = _texts(texts)
        if not any(t.strip() for t in texts):
            raise ValueError(
                f"texts: empty vocabulary: expected some non-blank text, got {len(texts)} blank texts"
            )
        tk = _require_tokenizers()
        tok = tk.Tokenizer(tk.models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = tk.pre_tokenizers.Metaspace()
        tok.decoder = tk.decoders.Metaspace()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=size or _BPE_DEFAULT_SIZE,
            min_frequency=min_freq,
            special_tokens=list(SPECIALS),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tokenizer=tok)

    def tokens(self, text: str) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def id_to_token(self, i: int) -> str:
        token = self._tok.id_to_token(i) if i >= 0 else None
        if token is None:
            raise ValueError(f"id: expected an int in [0, {len(self)}), got {i}")
        return token

    def token_to_id(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        return self.UNK if i is None else i

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def _join(self, tokens: list[str], ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "json": self._tok.to_str()}


_KINDS: dict[str, type[Tokenizer]] = {"word": WordTokenizer, "char": CharTokenizer, "bpe": BPETokenizer}


def build_tokenizer(kind: str, texts: Iterable[str], **kw: Any) -> Tokenizer:
    """``WordTokenizer.build``, ``CharTokenizer.build`` or ``BPETokenizer.build`` by name.

    Raises:
        ValueError: an unknown kind (lists ``word``, ``char``, ``bpe``).
    """
    try:
        cls = _KINDS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"kind: expected one of {', '.join(_KINDS)}, got {kind!r}") from None
    return cls.build(texts, **kw)  # type: ignore[attr-defined]


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """The tokenizer a ``to_dict()`` described.

    Raises:
        ValueError: not such a dict (unknown kind, missing fields, specials not at their ids).
    """
    if not isinstance(d, dict) or d.get("kind") not in _KINDS:
        got = d.get("kind") if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"d: expected a tokenizer dict with kind in {', '.join(_KINDS)}, got {got!r}")
    if d["kind"] == "bpe":
        if not isinstance(d.get("json"), str):
            raise ValueError("d: expected a 'json' string (the tokenizers JSON) for kind 'bpe'")
        tk = _require_tokenizers()
        return BPETokenizer(tokenizer=tk.Tokenizer.from_str(d["json"]))
    vocab = d.get("vocab")
    if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
        raise ValueError(f"d: expected a 'vocab' list of str for kind {d['kind']!r}")
    return _KINDS[d["kind"]](vocab=vocab)  # type: ignore[call-arg]
