"""qkv.interpret.pictures: one input's attention ready to show (what ``qkv viz`` writes), on
small random models: the maps equal the model's own, the scores equal qkv.interpret's methods
called directly, the translation's cross-attention equals what greedy decoding reported."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from qkv.data.tokenize import WordTokenizer
from qkv.interop import TokenBatch
from qkv.interpret import (
    AttentionPicture,
    grad_rollout,
    rollout,
    sentence_picture,
    token_scores,
    translation_picture,
)
from qkv.models import BertConfig, BertModel, mean_pool

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran"]


class Words:
    """A word-level stand-in for :class:`qkv.interop.HFTokenizer`: ``[CLS] words [SEP]``."""

    max_length = 16
    pad_id = 0
    _ids: ClassVar[dict[str, int]] = {
        "[PAD]": 0,
        "[CLS]": 1,
        "[SEP]": 2,
        **{w: i + 3 for i, w in enumerate(WORDS)},
    }

    def __call__(self, texts: list[str]) -> TokenBatch:
        tokens = [["[CLS]", *t.split(), "[SEP]"] for t in texts]
        n = max(len(t) for t in tokens)
        tokens = [t + ["[PAD]"] * (n - len(t)) for t in tokens]
        ids = torch.tensor([[self._ids[w] for w in t] for t in tokens])  # (B, T)
        return TokenBatch(
            input_ids=ids,
            attention_mask=(ids != 0).long(),
            token_type_ids=torch.zeros_like(ids),
            tokens=tokens,
        )


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=3 + len(WORDS), hidden_size=16, num_layers=2, num_heads=4, intermediate_size=32,
        max_position=16,
    )  # fmt: skip
    return BertModel(cfg).eval(), Words()


def test_sentence_picture_holds_the_models_maps_and_scores(bert):
    model, tok = bert
    picture = sentence_picture(
        model, tok, "the cat sat on the mat", methods=["rollout", "grad_rollout"], name="tiny"
    )
    assert isinstance(picture, AttentionPicture)
    assert picture.tokens == ["[CLS]", "the", "cat", "sat", "on", "the", "mat", "[SEP]"]
    batch = tok(["the cat sat on the mat"])
    with torch.no_grad():
        own = model(**batch.model_inputs(), need_weights=True)
    assert len(picture.maps.encoder) == 2
    assert all(torch.equal(a, b) for a, b in zip(picture.maps.encoder, own.attentions.encoder))
    assert picture.maps.encoder[0].shape == (1, 4, 8, 8)
    assert picture.title == "tiny: the cat sat on the mat"
    assert picture.summary == "encoder self-attention, 2 layers x 4 heads x 8 tokens"

    assert list(picture.scores) == ["rollout", "grad_rollout"]
    want = token_scores(rollout(own.attentions)[0], exclude_self=True)
    torch.testing.assert_close(torch.tensor(picture.scores["rollout"]), want, rtol=0, atol=1e-6)
    mask = batch.attention_mask
    pooled = mean_pool(own.last_hidden_state, mask)[0]
    unit = pooled / pooled.norm()
    rel = grad_rollout(model, batch.model_inputs(), lambda o: mean_pool(o.last_hidden_state, mask)[0] @ unit)
    want = token_scores(rel[0], exclude_self=True)
    torch.testing.assert_close(torch.tensor(picture.scores["grad_rollout"]), want, rtol=0, atol=1e-6)
    assert picture.notes[0] == "token scores (1 = the largest of each method):"
    assert picture.notes[1].split()[:3] == ["rollout", "[CLS]", f"{picture.scores['rollout'][0]:+.2f}"]
    assert picture.notes[2].split()[0] == "grad_rollout"
    assert len(picture.notes) == 5  # header, two rows, what each method scores


def test_score_header_says_what_each_method_explains(bert):
    """Rollout reads the attention alone: it must not be printed under a header about the
    sentence embedding (the old header put every method there)."""
    model, tok = bert
    notes = sentence_picture(model, tok, "the cat sat", methods=["rollout"]).notes
    assert notes[0] == "token scores (1 = the largest of each method):"
    assert notes[2] == (
        "rollout: from the attention alone (what the other tokens mix into each position); "
        "it explains no output"
    )
    assert not any("embedding" in line for line in notes)
    notes = sentence_picture(model, tok, "the cat sat", methods=["rollout", "grad_rollout"]).notes
    assert notes[-1] == "grad_rollout: explains the sentence embedding along its own direction"
    pair = sentence_picture(model, tok, "a cat sat", other="the dog ran", methods=["rollout", "grad_rollout"])
    assert pair.notes[-2].startswith("rollout: from the attention alone")
    assert pair.notes[-1] == "grad_rollout: explains the cosine similarity of the two sentences"


def test_gradient_weighted_rollout_is_the_default_score(bert):
    model, tok = bert
    picture = sentence_picture(model, tok, "the cat sat")
    assert list(picture.scores) == ["grad_rollout"]
    assert picture.notes[-1] == "grad_rollout: explains the sentence embedding along its own direction"


def test_score_notes_show_bidi_controls_as_code_points():
    from qkv.interpret.pictures import _score_notes

    notes = _score_notes(["[CLS]", "abc\u202edef", "\u2066x\u2069"], {"rollout": [1.0, 0.5, 0.0]}, "y")
    assert "abc\u27e8U+202E\u27e9def +0.50" in notes[1]
    assert "\u27e8U+2066\u27e9x\u27e8U+2069\u27e9 +0.00" in notes[1]
    assert not any(c in line for line in notes for c in "\u202e\u2066\u2069")


def test_sentence_picture_of_a_pair_explains_the_similarity(bert):
    model, tok = bert
    a, b = "a cat sat", "the dog ran"
    picture = sentence_picture(model, tok, a, other=b, methods=["grad_rollout"])
    emb = model.encode([a, b], tokenizer=tok)
    assert picture.notes[0] == f"cosine similarity: {float(emb[0] @ emb[1]):.4f}"
    assert picture.title == f"BERT: {a}  (vs. {b})"
    assert picture.tokens == ["[CLS]", "a", "cat", "sat", "[SEP]"]  # the first sentence's maps
    batch = tok([a])
    mask = batch.attention_mask
    rel = grad_rollout(
        model,
        batch.model_inputs(),
        lambda o: F.normalize(mean_pool(o.last_hidden_state, mask), dim=-1)[0] @ emb[1],
    )
    want = token_scores(rel[0], exclude_self=True)
    torch.testing.assert_close(torch.tensor(picture.scores["grad_rollout"]), want, rtol=0, atol=1e-5)


def test_sentence_picture_checks_the_maps_before_the_scores(bert):
    model, tok = bert
    seen = []

    def check(maps):
        seen.append(len(maps.encoder))
        raise LookupError("layer 7 is not there")

    with pytest.raises(LookupError, match="layer 7"):
        sentence_picture(model, tok, "the cat", methods=["grad_rollout"], check_maps=check)
    assert seen == [2]
    picture = sentence_picture(model, tok, "the cat", methods=[])
    assert picture.scores == {} and picture.notes == []
    with pytest.raises(ValueError, match="methods: unknown"):
        sentence_picture(model, tok, "the cat", methods=["attention"])


def test_sentence_picture_integrated_gradients_keep_the_special_tokens(bert):
    pytest.importorskip("captum")
    model, tok = bert
    picture = sentence_picture(model, tok, "the cat sat", methods=["integrated_gradients"], ig_steps=4)
    ig = picture.scores["integrated_gradients"]
    assert ig[0] == 0.0 and ig[-1] == 0.0  # (x - baseline) = 0 at [CLS] and [SEP]
    assert max(abs(v) for v in ig) == pytest.approx(1.0)


def _translator(preset: str, model: dict):
    from qkv.models.builders import build_model
    from qkv.translation import Translator
    from qkv.translation.config import resolve

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
