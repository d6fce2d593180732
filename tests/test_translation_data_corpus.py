"""qkv.translation.data Example, Corpus, long_threshold and the built-in corpora by name."""

from __future__ import annotations

import json

import pytest
import torch

from qkv.translation.data import BUILTIN_CORPORA, SPLITS, Corpus, Example, builtin, long_threshold


def test_example_checks_and_alignment_matrix():
    e = Example("3 4", "vier und dreißig", ((0, 2), (1, 0)))
    assert e.source_tokens == ["3", "4"] and e.target_tokens == ["vier", "und", "dreißig"]
    m = e.alignment_matrix()  # (T, S): rows are target tokens, like cross-attention weights
    assert torch.equal(m, torch.tensor([[False, True], [False, False], [True, False]]))
    with pytest.raises(ValueError, match=r"link \(2, 0\) outside the 2 source x 3 target tokens"):
        Example("3 4", "vier und dreißig", ((2, 0),))
    with pytest.raises(TypeError, match=r"Example\.target: expected a str, got int"):
        Example("3", 3)
    with pytest.raises(ValueError, match="has no gold alignment"):
        Example("a", "b").alignment_matrix()


def test_corpus_getitem_names_the_valid_splits():
    c = Corpus("toy", {k: [Example("a", "b")] for k in SPLITS})
    assert c["test_long"] == [Example("a", "b")]
    with pytest.raises(KeyError, match="no split 'dev'; valid splits: train, valid, test, test_long"):
        c["dev"]
    with pytest.raises(ValueError, match="missing test_long"):
        Corpus("toy", {k: [] for k in ("train", "valid", "test")})
    assert c.texts("train", "target") == ["b"]
    with pytest.raises(ValueError, match="side: expected 'source' or 'target'"):
        c.texts("train", "src")


def test_long_threshold():
    assert long_threshold([1, 1, 2, 2, 3, 3, 4, 4], 0.75) == 4  # exactly the longest quarter
    assert long_threshold([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.75) == 9  # 2 of 10; 3 would be too many
    assert long_threshold([5, 5, 5, 6], 0.5) == 6
    assert long_threshold([5, 5, 5], 0.75) == 5  # never empty
    assert long_threshold([3, 1, 2], 0.0) == 1  # quantile 0: everything
    with pytest.raises(ValueError, match=r"long_quantile: expected a float in \[0, 1\), got 1.0"):
        long_threshold([1], 1.0)


@pytest.mark.parametrize("name", list(BUILTIN_CORPORA))
def test_every_builtin_corpus(name):
    c = builtin(name, size=120, seed=0)
    assert c.name == name
    assert c.sizes()["train"] == 108 and c.sizes()["valid"] == 6 and c.sizes()["test"] == 6
    for split in SPLITS:
        for e in c[split]:
            assert e.alignment  # gold alignment everywhere
    json.loads(json.dumps(c.meta))
    assert c.meta["seed"] == 0 and c.meta["sizes"] == c.sizes()


def test_builtin_errors_and_overrides():
    with pytest.raises(
        ValueError, match=r"corpus: expected one of numbers, numbers-fr, .*dates-fr.*got 'nubmers'"
    ):
        builtin("nubmers")
    with pytest.raises(ValueError, match="target define this corpus"):
        builtin("numbers-de", target="fr")
    with pytest.raises(TypeError, match=r"unknown options colour; valid: .*long_from.*max_value"):
        builtin("numbers", colour="red")
    c = builtin("numbers", size=50, max_value=99, seed=2)
    assert max(int(e.source.replace(" ", "")) for e in c["train"]) <= 99
    assert c.meta["max_value"] == 99
    d = builtin("dates-de", size=30, formats=("full",))
    assert d.meta["formats"] == ["full"]
