"""Evaluation metrics: translation quality (BLEU, chrF, exact match) and word alignment (AER).

Translation metrics are corpus-level and computed by sacrebleu (Post 2018, "A Call for
Clarity in Reporting BLEU Scores"). With their defaults (:func:`bleu`, :func:`chrf`,
:func:`corpus_scores`: cased, sacrebleu's ``13a`` tokenization of *detokenized* text against
references as written) they are sacrebleu's standard scores, the ones comparable with
published numbers, identified by the signature sacrebleu prints
(``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:...``). Scores of pre-tokenized or
lowercased text are other variants (``tokenize="none"``, ``lowercase=True``): report them
under their own names, with their signatures:

    BLEU = BP * exp(mean_n log p_n),  n = 1..4,  BP = min(1, exp(1 - ref_len / hyp_len))
    chrF = (1 + beta^2) P R / (beta^2 P + R),  P, R averaged over character n-grams 1..6, beta = 2

Alignment links are ``(source index, target index)`` pairs. Attention weights of a decoder
``(Tt, Ts)`` (one row per target token) give links with :func:`alignment_from_weights`, and
:func:`aer` scores them against gold links (Och & Ney 2003, "A Systematic Comparison of
Various Statistical Alignment Models", section 5)::

    AER(A; S, P) = 1 - (|A ∩ S| + |A ∩ P|) / (|A| + |S|),   S ⊆ P

where ``A`` are the predicted links, ``S`` the sure and ``P`` the possible gold links.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["aer", "alignment_from_weights", "bleu", "bleu_signed", "chrf", "corpus_scores", "exact_match"]

Link = tuple[int, int]


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError as e:
        raise ImportError("bleu and chrf need sacrebleu: pip install 'qkv[train]'") from e
    return sacrebleu


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    for name, value in (("hypotheses", hypotheses), ("references", references)):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise TypeError(f"{name}: expected a list of strings, got {type(value).__name__}")
        bad = next((i for i, s in enumerate(value) if not isinstance(s, str)), None)
        if bad is not None:
            raise TypeError(f"{name}[{bad}]: expected a string, got {type(value[bad]).__name__}")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"references: expected one per hypothesis ({len(hypotheses)}), got {len(references)}"
        )
    if not hypotheses:
        raise ValueError("hypotheses: expected at least one sentence, got an empty list")


def bleu(
    hypotheses: Sequence[str], references: Sequence[str], *, tokenize: str = "13a", lowercase: bool = False
) -> float:
    """Corpus BLEU in ``[0, 100]`` (sacrebleu, one reference per hypothesis).

    Args:
        hypotheses: system outputs, detokenized text.
        references: one reference per hypothesis.
        tokenize: sacrebleu tokenizer: ``"13a"`` (default, WMT), ``"zh"`` for Chinese,
            ``"intl"``, ``"char"``, ``"none"`` (text already tokenized: sacrebleu's check for
            tokenized input is then skipped)...
        lowercase: case-insensitive BLEU (not the standard, cased one).

    Zero n-gram counts are smoothed with sacrebleu's default ``exp`` method (each order
    without a match counts as ``1 / (2^k * total)``, ``k = 1, 2, ...``).

    Raises:
        ValueError: lengths differ or the corpus is empty.
        ImportError: sacrebleu is not installed.
    """
    return _bleu(hypotheses, references, tokenize=tokenize, lowercase=lowercase)[0]


def bleu_signed(
    hypotheses: Sequence[str], references: Sequence[str], *, tokenize: str = "13a", lowercase: bool = False
) -> tuple[float, str]:
    """:func:`bleu` and sacrebleu's signature of the variant
    (``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:...`` for the standard one)."""
    return _bleu(hypotheses, references, tokenize=tokenize, lowercase=lowercase)


def _bleu(hypotheses, references, *, tokenize: str, lowercase: bool) -> tuple[float, str]:
    _check_pairs(hypotheses, references)
    metric = _sacrebleu().BLEU(tokenize=tokenize, lowercase=lowercase, force=tokenize == "none")
    score = metric.corpus_score(list(hypotheses), [list(references)]).score
    return float(score), str(metric.get_signature())


def _chrf(hypotheses, references, *, word_order: int = 0, beta: int = 2) -> tuple[float, str]:
    _check_pairs(hypotheses, references)
    metric = _sacrebleu().CHRF(word_order=word_order, beta=beta)
    score = metric.corpus_score(list(hypotheses), [list(references)]).score
    return float(score), str(metric.get_signature())


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float | str]:
    """sacrebleu's standard corpus BLEU and chrF of detokenized text, with their signatures.

    Returns:
        ``{"bleu", "bleu_signature", "chrf", "chrf_signature"}``; a signature reads e.g.
        ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`` (what to print next to
        the score: it says how the number was computed).

    Raises:
        ValueError: lengths differ or the corpus is empty.
        ImportError: sacrebleu is not installed.
    """
    b, b_sig = _bleu(hypotheses, references, tokenize="13a", lowercase=False)
    c, c_sig = _chrf(hypotheses, references)
    return {"bleu": b, "bleu_signature": b_sig, "chrf": c, "chrf_signature": c_sig}


def chrf(
    hypotheses: Sequence[str], references: Sequence[str], *, word_order: int = 0, beta: int = 2
) -> float:
    """Corpus chrF in ``[0, 100]`` (Popović 2015) via sacrebleu; ``word_order=2`` gives chrF++.

    Character n-grams of orders 1..6 (whitespace removed); precision and recall are averaged
    over the orders both sides have, then combined into ``F_beta``.

    Raises:
        ValueError: lengths differ or the corpus is empty.
        ImportError: sacrebleu is not installed.
    """
    return _chrf(hypotheses, references, word_order=word_order, beta=beta)[0]


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Fraction in ``[0, 1]`` of hypotheses equal to their reference after whitespace
    normalization (leading/trailing whitespace dropped, inner runs collapsed to one space).

    Raises:
        ValueError: lengths differ or the corpus is empty.
    """
    _check_pairs(hypotheses, references)
    same = sum(" ".join(h.split()) == " ".join(r.split()) for h, r in zip(hypotheses, references))
    return same / len(hypotheses)


def alignment_from_weights(
    weights: Tensor,
    *,
    src_len: int | None = None,
    tgt_len: int | None = None,
    method: str = "argmax",
    threshold: float = 0.5,
) -> set[Link]:
    """Word-alignment links ``{(source index, target index)}`` read off attention weights.

    Args:
        weights: ``(Tt, Ts)``, row ``t`` = the attention of target token ``t`` over the
            source (average heads or pick one first). Tensor, NumPy array or nested list.
        src_len, tgt_len: the real lengths when the matrix is padded; only
            ``weights[:tgt_len, :src_len]`` is read.
        method: ``"argmax"`` links each target token to its most attended source token
            (the first on ties); ``"threshold"`` links every pair with weight >= ``threshold``.
        threshold: used by ``"threshold"``.

    Rows whose weights are all zero (fully masked target positions) give no link.

    Raises:
        ValueError: ``weights`` not 2-D, lengths out of range, an unknown ``method``.
    """
    w = torch.as_tensor(weights)
    if w.dim() != 2:
        raise ValueError(
            f"weights: expected a 2-D (Tt, Ts) matrix, got shape {tuple(w.shape)} (average or pick heads first)"
        )
    tt, ts = w.shape
    for name, value, limit in (("src_len", src_len, ts), ("tgt_len", tgt_len, tt)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit
        ):
            raise ValueError(f"{name}: expected an int in [0, {limit}], got {value!r}")
    w = w[: tt if tgt_len is None else tgt_len, : ts if src_len is None else src_len].detach().float()
    if w.numel() == 0:
        return set()
    if method == "argmax":
        src = w.argmax(dim=1)  # (Tt,)
        keep = w.amax(dim=1) > 0
        return {(int(s), t) for t, (s, k) in enumerate(zip(src.tolist(), keep.tolist())) if k}
    if method == "threshold":
        t_idx, s_idx = torch.nonzero((w >= threshold) & (w > 0), as_tuple=True)
        return {(int(s), int(t)) for s, t in zip(s_idx.tolist(), t_idx.tolist())}
    raise ValueError(f"method: expected 'argmax' or 'threshold', got {method!r}")


def _check_links(name: str, value: Sequence[Iterable[Link]] | None, n: int | None) -> list[set[Link]]:
    if isinstance(value, (set, frozenset)) or not isinstance(value, Sequence):
        raise TypeError(f"{name}: expected a list with one set of (source, target) links per sentence")
    if n is not None and len(value) != n:
        raise ValueError(f"{name}: expected {n} sentences (as many as predicted), got {len(value)}")
    out = []
    for i, links in enumerate(value):
        s = set()
        for link in links:
            if not (isinstance(link, tuple) and len(link) == 2):
                raise ValueError(f"{name}[{i}]: expected (source, target) pairs, got {link!r}")
            s.add((int(link[0]), int(link[1])))
        out.append(s)
    return out


def aer(
    predicted: Sequence[Iterable[Link]],
    sure: Sequence[Iterable[Link]],
    possible: Sequence[Iterable[Link]] | None = None,
) -> float:
    """Alignment error rate over a corpus (Och & Ney 2003), in ``[0, 1]``, lower is better.

    ``AER = 1 - (|A ∩ S| + |A ∩ P|) / (|A| + |S|)`` with the counts summed over sentences.
    ``possible`` defaults to ``sure``; sure links count as possible too (``P = P ∪ S``), as
    the definition requires ``S ⊆ P``.

    Args:
        predicted: per sentence, the predicted links ``A`` as ``(source, target)`` pairs.
        sure: per sentence, the sure gold links ``S``.
        possible: per sentence, the possible gold links ``P``, or ``None``.

    Raises:
        ValueError: the lists have different lengths, a link is not a pair, or there are no
            links at all (``|A| + |S| = 0``: AER is undefined).
    """
    a = _check_links("predicted", predicted, None)
    s = _check_links("sure", sure, len(a))
    p = s if possible is None else [pi | si for pi, si in zip(_check_links("possible", possible, len(a)), s)]
    hits_s = sum(len(ai & si) for ai, si in zip(a, s))
    hits_p = sum(len(ai & pi) for ai, pi in zip(a, p))
    total = sum(len(ai) for ai in a) + sum(len(si) for si in s)
    if total == 0:
        raise ValueError("predicted, sure: no links at all, AER is undefined")
    return 1.0 - (hits_s + hits_p) / total
