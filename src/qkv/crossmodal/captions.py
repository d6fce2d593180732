"""Captions as word ids: the fixed word vocabulary of a caption language.

Id 0 is padding and id 1 an unknown word; the language's words follow in sorted order
(:func:`qkv.crossmodal.data.caption_vocabulary`). A captioner's vocabulary starts with
:data:`CAPTION_MARKS`, so ``<start>`` is id 2 and ``<end>`` id 3 (:data:`START_ID`, :data:`END_ID`). A caption is lowercased, hyphens become
spaces, and it is split on white space: ``"Forty-two"`` is ``["forty", "two"]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["CAPTION_MARKS", "END_ID", "PAD_ID", "START_ID", "UNK_ID", "CaptionTokenizer"]

PAD_ID, UNK_ID = 0, 1
#: The words a captioner's vocabulary starts with, and their ids.
CAPTION_MARKS = ("<start>", "<end>")
START_ID, END_ID = 2, 3


class CaptionTokenizer:
    """Word ids of captions over a fixed vocabulary.

    Attributes:
        words: ``("<pad>", "<unk>", *vocabulary)``; a word's id is its index.
        max_words: the longest caption it encodes.
    """

    def __init__(self, vocabulary: Sequence[str], *, max_words: int) -> None:
        self.words = ("<pad>", "<unk>", *vocabulary)
        self.ids = {w: i for i, w in enumerate(self.words)}
        self.max_words = max_words

    def __len__(self) -> int:
        return len(self.words)

    @staticmethod
    def split(caption: str) -> list[str]:
        """The words of a caption: lowercased, hyphens as spaces, split on white space."""
        return caption.lower().replace("-", " ").split()

    def encode(self, captions: Sequence[str]) -> Tensor:
        """``(C, T)`` int64 word ids, padded with :data:`PAD_ID` to the longest caption
        (unknown words are :data:`UNK_ID`).

        Raises:
            ValueError: ``captions`` is a single string or empty, a caption is not a string, has
                no word, or has more than ``max_words`` words.
        """
        if isinstance(captions, str) or not len(captions):
            got = repr(captions) if isinstance(captions, str) else "an empty list"
            raise ValueError(f"captions: expected a non-empty list of strings, got {got}")
        rows = []
        for i, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise ValueError(f"captions[{i}]: expected a string, got {type(caption).__name__}")
            words = self.split(caption)
            if not words:
                raise ValueError(f"captions[{i}]: expected at least one word, got {caption!r}")
            if len(words) > self.max_words:
                raise ValueError(f"captions[{i}]: expected at most {self.max_words} words, got {len(words)}")
            rows.append([self.ids.get(w, UNK_ID) for w in words])
        out = torch.full((len(rows), max(map(len, rows))), PAD_ID, dtype=torch.int64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row)
        return out

    def decode(self, ids: Sequence[int]) -> list[str]:
        """The words of word ids (``<pad>`` dropped).

        Raises:
            ValueError: an id outside the vocabulary.
        """
        bad = [i for i in ids if not 0 <= i < len(self.words)]
        if bad:
            raise ValueError(f"ids: expected ids in [0, {len(self.words)}), got {bad[0]}")
        return [self.words[i] for i in ids if i != PAD_ID]
