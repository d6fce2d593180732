"""qkv.translation.pictures: a translation model's attention on its own greedy translation
(what ``qkv viz --checkpoint`` writes), on small random models: the cross-attention equals what
greedy decoding reported, a model without attention is refused."""

from __future__ import annotations

import pytest
import torch

from qkv.models.builders import build_model
from qkv.translation import Translator
from qkv.translation.config import resolve
from qkv.translation.data.tokenize import WordTokenizer
from qkv.translation.pictures import translation_picture


def _translator(preset: str, model: dict):
    torch.manual_seed(1)
    cfg = resolve({"model": model}, preset=preset)
    src = WordTokenizer.build(["1 2 3 4 5 6 7"])
    tgt = WordTokenizer.build(["eins zwei drei vier"])
    net = build_model(cfg.model, src_vocab=len(src), tgt_vocab=len(tgt)).eval()
    return Translator(net, src, tgt, cfg.to_dict())


def test_translation_picture_shows_every_map_of_the_greedy_translation():
    tr = _translator(
        "transformer", {"d_model": 16, "num_heads": 2, "ff_dim": 16, "encoder_layers": 1, "decoder_layers": 2}
    )
    expected = tr.translate(["3 4 5"])[0]
    picture = translation_picture(tr, "3 4 5")
    n_t = len(expected.target_tokens) + 1
    assert picture.tokens == {"source": ["3", "4", "5"], "target": [*expected.target_tokens, "<eos>"]}
    assert picture.notes == [f"translation: {expected.text}"]
    assert set(picture.maps.kinds()) == {"encoder", "decoder", "cross"}
    assert [t.shape for t in picture.maps.cross] == [(1, 2, n_t, 3)] * 2
    # the rows of the steps greedy decoding made (an untrained model may stop at the length limit
    # without <eos>: one row fewer than the picture's)
    rows = expected.attention.shape[0]
    assert rows in (n_t - 1, n_t)
    torch.testing.assert_close(
        picture.maps.cross[-1][0].mean(0)[:rows], expected.attention, rtol=0, atol=1e-5
    )
    assert picture.summary == (
        f"encoder 1x2, decoder 2x2, cross 2x2 (layers x heads), 3 source x {n_t} target tokens"
    )
    assert picture.title.startswith("transformer: 3 4 5 -> ")


def test_translation_picture_of_a_model_without_attention():
    tr = _translator("none", {"embed_dim": 8, "hidden_dim": 8})
    with pytest.raises(ValueError, match=r"this model \(none\) has no attention to show"):
        translation_picture(tr, "1 2")
