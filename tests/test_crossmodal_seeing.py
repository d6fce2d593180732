"""Seeing cross-modal attention: a matcher's relevance through both towers (Matcher.explain) and a
captioner's per-word attention per layer and head (caption_picture, ``qkv viz`` on a captioner's
checkpoint: its page and its overlays). Tiny models with random weights, never trained."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("num2words")

from qkv.crossmodal import Matcher, digit_strips
from qkv.crossmodal.config import DataConfig
from qkv.crossmodal.training import build_from_facts, matching_facts
from qkv.interpret import match_relevance


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    facts = matching_facts(DataConfig())
    table = {"kind": "clip", "patch_size": 4, "embed_dim": 16, "vision_dim": 16, "vision_depth": 2,
             "vision_heads": 2, "vision_mlp_dim": 32, "text_dim": 16, "text_depth": 2, "text_heads": 2,
             "text_mlp_dim": 32}  # fmt: skip
    torch.manual_seed(0)
    model, tokenizer = build_from_facts(table, facts)
    return Matcher(model, tokenizer, {"model": table, "data": {}}, facts)


def test_matcher_explain_is_match_relevance_of_each_pair(matcher):
    strips = digit_strips(3, seed=0, split="test")
    captions = [strips.captions[0], "Forty-two", strips.captions[2]]
    why = matcher.explain(strips.images, captions)
    patches, words = match_relevance(matcher.model, strips.images, matcher.tokenizer.encode(captions))
    assert why.patches.shape == (3, 2, 8) and why.pixels.shape == (3, 8, 32)  # patch 4 on 8 x 32 strips
    torch.testing.assert_close(why.patches, patches)
    assert why.words[1] == ["forty", "two"]
    for i, w in enumerate(why.words):
        assert why.word_scores[i].shape == (len(w),)
        torch.testing.assert_close(why.word_scores[i], words[i, : len(w)])
        assert float(words[i, len(w) :].abs().sum()) == 0.0  # padding never relevant
    torch.testing.assert_close(why.pixels.sum((1, 2)), 16 * why.patches.sum((1, 2)))  # 4 x 4 pixels a patch
    torch.testing.assert_close(why.similarity, matcher.similarity(strips.images, captions).diagonal())
    with pytest.raises(ValueError, match="captions: expected 3, one per image, got 2"):
        matcher.explain(strips.images, captions[:2])
    with pytest.raises(ValueError, match=r"images: expected \(N, 1, 8, 32\)"):
        matcher.explain(torch.rand(1, 1, 8, 8), captions[:1])
