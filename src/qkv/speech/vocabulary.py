"""The output units of the recognizer: words, with <pad> <sos> <eos> as ids 0, 1, 2.

Spoken numbers are written with a closed set of words (``zero`` .. ``nineteen``, the tens,
``hundred``, ``and``), so a word is one output token: a transcript of "seven hundred and forty
two" is five tokens, and a word the vocabulary lacks cannot be emitted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ..number_words import number_tokens

__all__ = ["SPECIALS", "WordVocabulary", "number_vocabulary"]

#: The special tokens, ids 0, 1, 2 (:data:`qkv.models.las.PAD`, ``SOS``, ``EOS``).
SPECIALS = ("<pad>", "<sos>", "<eos>")


def number_vocabulary(max_number: int = 999) -> list[str]:
    """Every word of the English numbers ``0 .. max_number``, sorted."""
    return sorted({w for n in range(max_number + 1) for w in number_tokens(n, "en")})


class WordVocabulary:
    """Words <-> ids; ``encode`` pads a batch, ``decode`` stops at <eos>."""

    def __init__(self, words: Iterable[str]) -> None:
        self.words = list(words)
        if len(set(self.words)) != len(self.words) or set(self.words) & set(SPECIALS):
            raise ValueError("words: expected distinct words without the special tokens")
        self.itos = [*SPECIALS, *self.words]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def ids(self, text: str) -> list[int]:
        """The ids of a transcript's words, then <eos>.

        Raises:
            ValueError: a word outside the vocabulary (named).
        """
        unknown = [w for w in text.split() if w not in self.stoi or w in SPECIALS]
        if unknown:
            raise ValueError(f"transcript {text!r}: words outside the vocabulary: {unknown}")
        return [self.stoi[w] for w in text.split()] + [2]

    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Teacher-forcing pairs ``(tgt_in, tgt_out)``, each ``(B, U)`` padded with 0:
        ``<sos> y_1 .. y_n`` and ``y_1 .. y_n <eos>``."""
        seqs = [self.ids(t) for t in texts]
        width = max(len(s) for s in seqs)
        tgt_out = torch.zeros(len(seqs), width, dtype=torch.long)
        tgt_in = torch.zeros(len(seqs), width, dtype=torch.long)
        for b, s in enumerate(seqs):
            tgt_out[b, : len(s)] = torch.tensor(s)
            tgt_in[b, : len(s)] = torch.tensor([1, *s[:-1]])
        return tgt_in, tgt_out

    def decode(self, ids: Iterable[int]) -> str:
        """The words of ``ids`` up to the first <eos> (specials dropped)."""
        words = []
        for i in ids:
            if i == 2:
                break
            if i >= len(SPECIALS):
                words.append(self.itos[i])
        return " ".join(words)
