"""Treebank sentences through a BERT encoder: each sentence's word-level attention of every layer
and head, and its words' input embeddings (:func:`encode_treebank`).

The model is a :class:`qkv.models.BertModel` (``qkv.interop.load_bert``) and its tokenizer (an
:class:`qkv.interop.HFTokenizer`, whose offsets align words and pieces). Sentences are run in
batches of similar length; a sentence whose pieces do not fit the tokenizer's ``max_length`` is
skipped and counted, never truncated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .syntax_predict import head_predictions
from .treebank import Sentence
from .word_attention import align_pieces, pooled_attention, sentence_text, word_pooling

__all__ = ["EncodedSentence", "EncodedTreebank", "encode_treebank"]


@dataclass(frozen=True)
class EncodedSentence:
    """One sentence as the model saw it.

    Attributes:
        sentence: the treebank record.
        attention: ``(L * H, n, n)`` word-level attention (:mod:`qkv.interpret.word_attention`),
            channel ``layer * H + head``.
        embeddings: ``(n, E)`` each word's input embedding: the mean of its pieces' rows of the
            model's word-embedding table.
        predictions: ``(2, L * H, n)`` each word's predicted head by each map in both directions
            (:func:`qkv.interpret.syntax_predict.head_predictions`).
    """

    sentence: Sentence
    attention: Tensor
    embeddings: Tensor
    predictions: Tensor


@dataclass(frozen=True)
class EncodedTreebank:
    """The encoded sentences (in treebank order), the model's shape and what was skipped.

    Attributes:
        too_long: sentences whose pieces exceed ``max_length`` (skipped).
        unaligned: sentences with a word the tokenizer gives no piece (skipped).
    """

    sentences: list[EncodedSentence]
    num_layers: int
    num_heads: int
    max_length: int
    too_long: int
    unaligned: int


def _aligned(tokenizer, sentences: Sequence[Sentence]):
    """``(index, pieces, owner)`` of the sentences that fit, and the two skip counts."""
    texts = [sentence_text(s.words) for s in sentences]
    batch = tokenizer([t for t, _ in texts]) if texts else None
    kept, too_long, unaligned = [], 0, 0
    for i, (_, spans) in enumerate(texts):
        n_pieces = int(batch.attention_mask[i].sum())
        try:
            owner = align_pieces(batch.offsets[i][:n_pieces], spans)
        except ValueError:
            if n_pieces >= tokenizer.max_length:
                too_long += 1
            else:
                unaligned += 1
            continue
        kept.append((i, batch.input_ids[i, :n_pieces], owner))
    return kept, too_long, unaligned


@torch.inference_mode()
def encode_treebank(
    model,
    tokenizer,
    sentences: Sequence[Sentence],
    *,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> EncodedTreebank:
    """Run ``sentences`` through ``model`` and keep each one's word-level attention and word
    embeddings.

    Args:
        model: a :class:`qkv.models.BertModel` (eval mode).
        tokenizer: its :class:`qkv.interop.HFTokenizer`.
        sentences: treebank sentences (:func:`qkv.interpret.treebank.read_conllu`).
        batch_size: sentences per forward pass.
        progress: called with the number of sentences just done (skipped ones included).

    Raises:
        TypeError: ``model`` is not a BERT encoder with ``config.num_layers``/``num_heads``.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "num_heads") or not hasattr(model, "embeddings"):
        raise TypeError(
            f"model: expected a qkv BertModel (qkv.interop.load_bert), got {type(model).__name__}"
        )
    kept, too_long, unaligned = _aligned(tokenizer, sentences)
    if progress is not None and too_long + unaligned:
        progress(too_long + unaligned)
    kept.sort(key=lambda item: len(item[1]))
    out: dict[int, EncodedSentence] = {}
    for start in range(0, len(kept), batch_size):
        chunk = kept[start : start + batch_size]
        for (i, _, _), encoded in zip(chunk, _encode_batch(model, chunk, sentences)):
            out[i] = encoded
        if progress is not None:
            progress(len(chunk))
    return EncodedTreebank(
        sentences=[out[i] for i in sorted(out)],
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        max_length=tokenizer.max_length,
        too_long=too_long,
        unaligned=unaligned,
    )


def _encode_batch(model, chunk, sentences: Sequence[Sentence]) -> list[EncodedSentence]:
    """One forward pass; every sentence's word-level attention in one batched product."""
    t = max(len(ids) for _, ids, _ in chunk)
    n = max(len(sentences[i]) for i, _, _ in chunk)
    ids = torch.zeros(len(chunk), t, dtype=torch.long)
    mask = torch.zeros(len(chunk), t, dtype=torch.long)
    mean = torch.zeros(len(chunk), n, t)
    total = torch.zeros(len(chunk), n, t)
    for b, (i, piece_ids, owner) in enumerate(chunk):
        tb, nb = len(piece_ids), len(sentences[i])
        ids[b, :tb] = piece_ids
        mask[b, :tb] = 1
        mean[b, :nb, :tb], total[b, :nb, :tb] = word_pooling(owner, nb)
    maps = model(ids, attention_mask=mask, need_weights=True).attentions.encoder
    stacked = torch.stack(maps, 1).flatten(1, 2).float()  # (B, L * H, T, T)
    words = pooled_attention(stacked, mean[:, None], total[:, None])  # (B, L * H, n, n)
    embeddings = mean @ model.embeddings.word(ids).float()  # (B, n, E)
    lengths = torch.tensor([len(sentences[i]) for i, _, _ in chunk])
    predictions = head_predictions(words, lengths)  # (B, 2, L * H, n)
    out = []
    for b, (i, _, _) in enumerate(chunk):
        nb = len(sentences[i])
        out.append(
            EncodedSentence(
                sentence=sentences[i],
                attention=words[b, :, :nb, :nb].clone(),
                embeddings=embeddings[b, :nb].clone(),
                predictions=predictions[b, :, :, :nb].clone(),
            )
        )
    return out
