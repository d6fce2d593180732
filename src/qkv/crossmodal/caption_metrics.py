"""How good captions are: exact match, BLEU and chrF (sacrebleu), and attention correctness.

**Attention correctness** is the share of caption words whose attention maximum falls on a
patch of one of their gold digit slots (:func:`qkv.crossmodal.data.digit_strips` gives each word
its slots; a word with none, such as ``und``, is left out; German's units-before-tens crossings
count like every other word). It is measured on the gold captions fed to the decoder (teacher
forcing), as Liu et al. 2017 ("Attention Correctness in Neural Image Captioning") measure it,
so every word of every strip counts whatever the model would have written.

A scale word (*hundred*, *thousand*, *cent*, *mille*, *hundert*, *tausend*) has the slot of the
digit it scales: *three hundred* names the 3 in the hundreds place. The digits after it decide
that the word is *hundred* and not *thousand*, as the units digit decides that a tens digit is
*forty* and not *four*; both words still name their own digit. A Show, Attend and Tell captioner
trained on the captions alone peaks on those later digits when it writes a scale word (0 of 457
*hundred* on English test strips); supervised attention
(:func:`qkv.models.captioner.supervised_attention_loss`) puts it on its digit. For a model
trained so, the score says whether the alignment carries to new handwriting and new numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

__all__ = ["attention_correctness", "attention_hits", "bleu_chrf", "exact_match"]


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references) or not len(references):
        raise ValueError(f"hypotheses, references: expected two non-empty lists of one length, got "
                         f"{len(hypotheses)} and {len(references)}")  # fmt: skip


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """The share of captions equal to their reference (after joining white space)."""
    _check_pairs(hypotheses, references)
    return sum(" ".join(h.split()) == " ".join(r.split()) for h, r in zip(hypotheses, references)) / len(
        references
    )


def bleu_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, float]:
    """sacrebleu's corpus BLEU and chrF, in [0, 100], one reference per caption."""
    _check_pairs(hypotheses, references)
    import sacrebleu

    refs = [list(references)]
    return sacrebleu.corpus_bleu(list(hypotheses), refs).score, sacrebleu.corpus_chrf(
        list(hypotheses), refs
    ).score


def attention_hits(
    attention: Sequence[Tensor], slots: Sequence[Sequence[Sequence[int]]], patch_slot: Tensor
) -> list[list[bool | None]]:
    """Per caption, per word: does its attention maximum lie in one of its gold slots (None: a
    word without a slot)?

    Args:
        attention: per caption ``(words, N)``, each word's weights over the ``N`` patches.
        slots: per caption, per word, its gold slots (``()``: none).
        patch_slot: ``(N,)`` the slot of each patch (:func:`qkv.crossmodal.images.patch_slots`).

    Raises:
        ValueError: the captions or their words do not match in number, or a map that is not
            ``(words, N)``.
    """
    if len(attention) != len(slots):
        raise ValueError(
            f"attention, slots: expected one entry per caption each, got {len(attention)} and {len(slots)}"
        )
    out = []
    for i, (att, word_slots) in enumerate(zip(attention, slots)):
        if att.dim() != 2 or att.shape != (len(word_slots), patch_slot.shape[0]):
            raise ValueError(f"attention[{i}]: expected ({len(word_slots)} words, {patch_slot.shape[0]} patches), "
                             f"got {tuple(att.shape)}")  # fmt: skip
        peaks = patch_slot[att.argmax(-1)].tolist()  # (words,) the slot of each word's peak
        out.append([peak in gold if gold else None for peak, gold in zip(peaks, word_slots)])
    return out


def attention_correctness(
    attention: Sequence[Tensor], slots: Sequence[Sequence[Sequence[int]]], patch_slot: Tensor
) -> float:
    """The share of words with a gold slot whose attention maximum lies in one of them
    (:func:`attention_hits`, the words without a slot left out).

    Raises:
        ValueError: as :func:`attention_hits`, or no word has a slot.
    """
    hits = [h for caption in attention_hits(attention, slots, patch_slot) for h in caption if h is not None]
    if not hits:
        raise ValueError("slots: expected at least one word with a gold slot, got none")
    return sum(hits) / len(hits)
