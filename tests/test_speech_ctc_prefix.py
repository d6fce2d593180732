"""The CTC prefix scorer against brute force: every alignment of a few frames enumerated, its
collapse taken, probabilities summed in float64."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from qkv.speech.ctc_prefix import CTCPrefixScorer

BLANK, EOS = 0, 2
T, V = 5, 5  # ids 3 and 4 are the tokens; 1 (<sos>) is a token CTC may still emit


def _collapse(path: tuple[int, ...]) -> list[int]:
    merged = [p for i, p in enumerate(path) if i == 0 or p != path[i - 1]]
    return [p for p in merged if p != BLANK]


def _brute(x: torch.Tensor, prefix: list[int], *, complete: bool) -> float:
    """log of the summed probability of every alignment whose collapse is (or starts with) ``prefix``."""
    total = 0.0
    for path in itertools.product(range(x.shape[1]), repeat=x.shape[0]):
        out = _collapse(path)
        if out == prefix if complete else out[: len(prefix)] == prefix:
            total += math.exp(sum(float(x[t, p]) for t, p in enumerate(path)))
    return math.log(total) if total > 0 else -math.inf


def _log_probs(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(T, V, generator=g, dtype=torch.float64) * 2, -1)


PREFIXES = [[], [3], [4, 3], [3, 3], [3, 4, 3], [4, 4, 4]]  # [3, 3], [4, 4, 4]: repeats need blanks


@pytest.mark.parametrize("seed", [0, 1])
def test_prefix_and_end_scores_equal_the_sum_over_all_alignments(seed):
    x = _log_probs(seed)
    scorer = CTCPrefixScorer(x, blank=BLANK, eos=EOS)
    for prefix in PREFIXES:
        state = scorer.initial()
        for tok in prefix:
            state = scorer.select(scorer.extend(state), torch.tensor([0]), torch.tensor([tok]))
        scores = scorer.extend(state).scores[0]
        for c in (1, 3, 4):
            want = _brute(x, [*prefix, c], complete=False)
            if math.isinf(want):
                assert scores[c] == -math.inf
            else:
                assert float(scores[c]) == pytest.approx(want, abs=1e-10), (prefix, c)
        assert float(scores[EOS]) == pytest.approx(_brute(x, prefix, complete=True), abs=1e-10)
        assert scores[BLANK] == -math.inf
        assert scorer.score(prefix, complete=False) == pytest.approx(
            _brute(x, prefix, complete=False), abs=1e-10
        )


def test_hypotheses_are_extended_side_by_side_as_alone():
    """K prefixes in one state score as each would alone (the rows do not mix)."""
    x = _log_probs(2)
    scorer = CTCPrefixScorer(x, blank=BLANK, eos=EOS)
    first = scorer.extend(scorer.initial())
    two = scorer.select(first, torch.tensor([0, 0]), torch.tensor([3, 4]))
    both = scorer.extend(two).scores
    for j, tok in enumerate((3, 4)):
        alone = scorer.extend(scorer.select(first, torch.tensor([0]), torch.tensor([tok]))).scores[0]
        assert torch.equal(both[j], alone)


def test_end_score_is_minus_torch_ctc_loss():
    g = torch.Generator().manual_seed(3)
    x = torch.log_softmax(torch.randn(40, 9, generator=g, dtype=torch.float64), -1)
    scorer = CTCPrefixScorer(x, blank=BLANK, eos=EOS)
    for target in ([3], [5, 6, 7], [4, 4, 8, 3, 3], [8] * 6):
        want = -torch.nn.functional.ctc_loss(x[:, None], torch.tensor([target]), torch.tensor([40]),
                                             torch.tensor([len(target)]), blank=BLANK, reduction="sum")  # fmt: skip
        assert scorer.score(target, complete=True) == pytest.approx(float(want), abs=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"log_probs": torch.zeros(4)}, "log_probs: expected a non-empty floating"),
        ({"log_probs": torch.zeros(3, 4, dtype=torch.long)}, "log_probs: expected a non-empty floating"),
        ({"blank": 4}, r"blank: expected an id in \[0, 4\), got 4"),
        ({"eos": -1}, r"eos: expected an id in \[0, 4\), got -1"),
        ({"eos": 0}, "eos: expected an id other than blank=0"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    args = {"log_probs": torch.zeros(3, 4), "blank": 0, "eos": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        CTCPrefixScorer(args.pop("log_probs"), **args)
