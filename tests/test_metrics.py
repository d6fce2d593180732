"""Metrics against values computed by hand from their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from qkv.translation.metrics import aer, alignment_from_weights, bleu, chrf, exact_match

# ----------------------------------------------------------------------------- BLEU / chrF


def test_bleu_known_values():
    assert bleu(
        ["the cat sat on the mat", "a b c d"], ["the cat sat on the mat", "a b c d"]
    ) == pytest.approx(100)
    assert bleu(["x y z w"], ["a b c d"]) == 0.0
    # 1-4-gram precisions 5/6, 3/5, 1/4 and 0/3 -> 1/(2*3) by exp smoothing; equal lengths, BP = 1
    expected = 100 * (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert bleu(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(expected, abs=1e-9)
    # every n-gram matches but the hypothesis is short: BP = exp(1 - 6/5)
    assert bleu(["the cat sat on the"], ["the cat sat on the mat"]) == pytest.approx(
        100 * math.exp(-0.2), abs=1e-9
    )


def test_bleu_is_corpus_level_not_a_mean_of_sentences():
    hyps, refs = ["the cat sat on the mat", "a b c d"], ["the cat is on the mat", "a b c d"]
    # counts are summed over sentences first: (5+4)/(6+4), (3+3)/(5+3), (1+2)/(4+2), (0+1)/(3+1)
    expected = 100 * (9 / 10 * 6 / 8 * 3 / 6 * 1 / 4) ** 0.25
    assert bleu(hyps, refs) == pytest.approx(expected, abs=1e-9)
    mean_of_sentences = (bleu(hyps[:1], refs[:1]) + bleu(hyps[1:], refs[1:])) / 2
    assert abs(bleu(hyps, refs) - mean_of_sentences) > 10


def test_chrf_known_values():
    assert chrf(["a quick test"], ["a quick test"]) == pytest.approx(100)
    assert chrf(["xyz"], ["abc"]) == 0.0
    # orders both sides have: 1 (P = 1, R = 2/3) and 2 (P = 1, R = 1/2); mean P = 1, R = 7/12;
    # F_2 = 5 P R / (4 P + R) = 7/11
    assert chrf(["ab"], ["abc"]) == pytest.approx(700 / 11, abs=1e-9)
    # whitespace is ignored by chrF
    assert chrf(["a b c"], ["abc"]) == pytest.approx(100)


def test_exact_match_normalizes_whitespace():
    assert exact_match(["a  b", " c\t", "d"], ["a b", "c", "e"]) == pytest.approx(2 / 3)
    assert exact_match(["A"], ["a"]) == 0.0


@pytest.mark.parametrize("fn", [bleu, chrf, exact_match])
def test_corpus_metric_input_errors(fn):
    with pytest.raises(ValueError, match=r"references: expected one per hypothesis \(2\), got 1"):
        fn(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="hypotheses: expected at least one sentence"):
        fn([], [])
    with pytest.raises(TypeError, match="hypotheses: expected a list of strings, got str"):
        fn("a b", "a b")
    with pytest.raises(TypeError, match=r"references\[1\]: expected a string, got int"):
        fn(["a", "b"], ["a", 3])


# ----------------------------------------------------------------------------- alignments


def test_alignment_argmax_crops_padding_and_skips_empty_rows():
    w = torch.tensor(
        [
            [0.7, 0.2, 0.1, 0.0],
            [0.1, 0.3, 0.6, 0.0],
            [0.4, 0.4, 0.2, 0.0],  # a tie: the first source index wins
            [0.0, 0.0, 0.0, 0.0],  # a fully masked target position
            [0.0, 0.0, 0.1, 0.9],  # padding row, cut by tgt_len
        ]
    )
    assert alignment_from_weights(w) == {(0, 0), (2, 1), (0, 2), (3, 4)}
    assert alignment_from_weights(w, src_len=3, tgt_len=4) == {(0, 0), (2, 1), (0, 2)}
    assert alignment_from_weights(w, src_len=0) == set()
    assert alignment_from_weights(w.numpy().tolist(), tgt_len=2) == {(0, 0), (2, 1)}


def test_alignment_threshold():
    w = torch.tensor([[0.5, 0.5], [0.1, 0.9], [0.0, 0.0]])
    assert alignment_from_weights(w, method="threshold", threshold=0.5) == {(0, 0), (1, 0), (1, 1)}
    assert alignment_from_weights(w, method="threshold", threshold=0.0) == {(0, 0), (1, 0), (0, 1), (1, 1)}


def test_alignment_errors():
    with pytest.raises(ValueError, match=r"weights: expected a 2-D \(Tt, Ts\) matrix, got shape \(2, 3, 4\)"):
        alignment_from_weights(torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match=r"src_len: expected an int in \[0, 4\], got 5"):
        alignment_from_weights(torch.rand(3, 4), src_len=5)
    with pytest.raises(ValueError, match=r"tgt_len: expected an int in \[0, 3\], got -1"):
        alignment_from_weights(torch.rand(3, 4), tgt_len=-1)
    with pytest.raises(ValueError, match="method: expected 'argmax' or 'threshold', got 'max'"):
        alignment_from_weights(torch.rand(3, 4), method="max")


# ----------------------------------------------------------------------------- AER


def test_aer_hand_values():
    s = [{(0, 0), (1, 1)}]
    assert aer(s, s) == 0.0
    assert aer([{(5, 5)}], s) == 1.0
    # |A ∩ S| = 1, P = S: 1 - (1 + 1) / (2 + 2)
    assert aer([{(0, 0), (1, 2)}], s) == pytest.approx(0.5)
    # a possible link in A is not penalized: 1 - (2 + 3) / (3 + 2) = 0
    assert aer([{(0, 0), (1, 1), (2, 1)}], s, [{(2, 1), (2, 2)}]) == pytest.approx(0.0)
    # a sure link missing from A costs even if possible links are found: 1 - (1 + 2) / (2 + 2)
    assert aer([{(0, 0), (2, 1)}], s, [{(2, 1)}]) == pytest.approx(0.25)


def test_aer_sums_counts_over_the_corpus():
    a = [{(0, 0)}, {(0, 1), (1, 0), (2, 2)}]
    s = [{(0, 0)}, {(0, 0), (2, 2)}]
    p = [set(), {(0, 1)}]
    # |A∩S| = 1 + 1, |A∩P| = 1 + 2, |A| = 1 + 3, |S| = 1 + 2 -> 1 - 5/7
    assert aer(a, s, p) == pytest.approx(1 - 5 / 7)
    per_sentence = (aer(a[:1], s[:1], p[:1]) + aer(a[1:], s[1:], p[1:])) / 2
    assert aer(a, s, p) != pytest.approx(per_sentence)


def test_aer_of_attention_alignments():
    src, tgt = 5, 4
    w = torch.full((tgt, src), 0.05)
    gold = {(0, 0), (1, 1), (3, 2), (4, 3)}
    for s, t in gold:
        w[t, s] = 0.8
    assert aer([alignment_from_weights(w)], [gold]) == 0.0
    w[2, 3], w[2, 2] = 0.0, 0.9  # target 2 now attends to source 2
    assert aer([alignment_from_weights(w)], [gold]) == pytest.approx(1 - 6 / 8)


def test_aer_errors():
    with pytest.raises(ValueError, match=r"sure: expected 1 sentences \(as many as predicted\), got 2"):
        aer([set()], [set(), set()])
    with pytest.raises(ValueError, match="no links at all"):
        aer([set()], [set()])
    with pytest.raises(ValueError, match=r"predicted\[0\]: expected \(source, target\) pairs, got 3"):
        aer([{3}], [{(0, 0)}])
    with pytest.raises(TypeError, match="predicted: expected a list with one set"):
        aer({(0, 0)}, [{(0, 0)}])
