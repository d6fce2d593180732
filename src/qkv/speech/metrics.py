"""Word and character error rates of transcripts, with ``jiwer`` (the ``speech`` extra).

WER = (substitutions + deletions + insertions) / reference words, over the whole set (not a
mean of per-utterance rates); CER the same over characters (spaces included).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["error_rates"]

_EXTRA = "pip install 'qkv[speech]'"


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """``{"wer": ..., "cer": ...}`` of ``hypotheses`` against ``references`` (fractions, 0 = perfect).

    Raises:
        ValueError: different counts, no references, or an empty reference.
        ModuleNotFoundError: jiwer is not installed (naming the install command).
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"hypotheses: expected {len(references)} (one per reference), got {len(hypotheses)}")
    if not references or any(not r.strip() for r in references):
        raise ValueError("references: expected at least one, each with a word")
    try:
        import jiwer
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"word error rates need jiwer: {_EXTRA}") from None
    refs, hyps = list(references), list(hypotheses)
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}
