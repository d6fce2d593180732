"""Image-grounded translation: the pairs and their gold alignment with the strips, the model's
memory and maps, the text-only control's invariance to the image, a tiny model that learns to
read one digit into a French sentence, ``qkv train`` / ``qkv evaluate``, bad input."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("num2words")

from qkv.cli.main import main
from qkv.crossmodal.config import DataConfig
from qkv.crossmodal.data import caption_vocabulary, digit_strips, held_out_numbers
from qkv.crossmodal.grounded import (
    HIDDEN,
    MAX_SOURCE_WORDS,
    TEMPLATES,
    grounded_pairs,
    grounded_vocabulary,
    number_word_match,
    number_words_of,
)
from qkv.crossmodal.grounded_translator import GroundedTranslator
from qkv.crossmodal.grounding import build_grounded_from_facts, grounded_facts
from qkv.models.grounded import GroundedConfig

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = {"kind": "grounded", "patch_size": 8, "dim": 32, "encoder_depth": 1, "encoder_heads": 2,
        "encoder_mlp_dim": 64, "source_depth": 1, "decoder_depth": 1, "decoder_heads": 2,
        "decoder_mlp_dim": 64}  # fmt: skip


def _model(use_image: bool = True, seed: int = 0):
    """A tiny grounded translator (or its control) and the tokenizer."""
    torch.manual_seed(seed)
    return build_grounded_from_facts({**TINY, "use_image": use_image}, grounded_facts(DataConfig()))


def test_pairs_are_the_strips_with_a_template_around_the_number():
    pairs = grounded_pairs(40, seed=3, split="test")
    strips = digit_strips(40, seed=3, lang="fr", split="test")
    assert pairs.images.shape == (40, 1, 8, 32) and torch.equal(pairs.images, strips.images)
    assert pairs.numbers == strips.captions
    for src, tgt, number, t in zip(pairs.sources, pairs.targets, pairs.numbers, pairs.templates.tolist()):
        assert src == TEMPLATES[t][0] and src.split().count(HIDDEN) == 1
        assert tgt == TEMPLATES[t][1].format(number) and number_words_of(tgt) == number
    assert len(set(pairs.templates.tolist())) > 5  # the templates are drawn, not one
    again = grounded_pairs(40, seed=3, split="test")
    assert again.targets == pairs.targets and torch.equal(again.images, pairs.images)
    # zero-shot pairs show only held-out numbers (read digit by digit from the same strips)
    digits = digit_strips(30, seed=1, lang="digits", split="zero_shot").captions
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    numbers = [int("".join(str(names.index(w)) for w in c.split())) for c in digits]
    zero_shot = grounded_pairs(30, seed=1, split="zero_shot")
    assert set(numbers) <= held_out_numbers(0)
    assert zero_shot.numbers == digit_strips(30, seed=1, lang="fr", split="zero_shot").captions


def test_templates_hold_no_number_word_and_the_vocabulary_covers_every_sentence():
    numbers = set(caption_vocabulary("fr"))
    assert not {w for en, fr in TEMPLATES for w in f"{en} {fr.format('')}".split()} & numbers
    vocabulary = set(grounded_vocabulary())
    pairs = grounded_pairs(200, seed=0)
    assert {w for s in pairs.sources + pairs.targets for w in s.split()} <= vocabulary
    assert max(len(s.split()) for s in pairs.sources) <= MAX_SOURCE_WORDS
    assert number_word_match(["il a lu sept à voix haute", "la réponse est six"], ["sept", "sept"]) == 0.5


def test_memory_and_cross_attention_maps():
    pairs = grounded_pairs(3, seed=0)
    model, tok = _model()
    model.eval()
    sources, targets = tok.encode(pairs.sources), tok.encode(pairs.targets)
    s = sources.shape[1]
    logits, maps = model(sources, pairs.images, targets, need_weights=True)
    assert logits.shape == (3, targets.shape[1], len(tok))
    cross = maps.cross[-1]  # (B, heads, T, S + 4 patches)
    assert cross.shape == (3, 2, targets.shape[1], s + 4) and len(maps.encoder) == 1
    torch.testing.assert_close(cross.sum(-1), torch.ones(cross.shape[:3]))
    padding = (sources == 0)[:, None, None, :]  # padded source words are never attended
    assert float(cross[..., :s].masked_select(padding.expand(-1, 2, targets.shape[1], -1)).abs().sum()) == 0.0
    assert torch.equal(model(sources, pairs.images, targets), logits)  # weights change nothing
    control = _model(use_image=False)[0].eval()
    assert control(sources, pairs.images, targets, need_weights=True)[1].cross[-1].shape[-1] == s


def test_the_control_ignores_the_image_and_the_grounded_model_does_not():
    pairs = grounded_pairs(8, seed=0, split="valid")
    (control, tok), grounded = _model(use_image=False), _model(use_image=True)[0]
    control.eval(), grounded.eval()
    sources, targets = tok.encode(pairs.sources), tok.encode(pairs.targets)
    other = torch.rand_like(pairs.images)
    assert [n for n, _ in control.named_parameters()] == [n for n, _ in grounded.named_parameters()]
    with torch.no_grad():
        assert torch.equal(control(sources, pairs.images, targets), control(sources, other, targets))
        assert torch.equal(
            control.loss(sources, pairs.images, targets), control.loss(sources, other, targets)
        )
        assert not torch.allclose(grounded(sources, pairs.images, targets), grounded(sources, other, targets))
    translator = GroundedTranslator(control, tok, {}, grounded_facts(DataConfig()))
    a, b = translator.translate(pairs.sources, pairs.images), translator.translate(pairs.sources, other)
    assert [t.text for t in a] == [t.text for t in b] and all(float(t.image_attention.sum()) == 0 for t in a)


def _one_digit(n: int, seed: int, split: str):
    """The pairs of one-digit strips (the slots after the first blank)."""
    pairs = grounded_pairs(n, seed=seed, split=split)
    keep = (pairs.images[:, 0, :, 8:].sum((1, 2)) == 0).nonzero().flatten()
    return pairs._replace(images=pairs.images[keep], sources=[pairs.sources[i] for i in keep],
                          targets=[pairs.targets[i] for i in keep], numbers=[pairs.numbers[i] for i in keep],
                          templates=pairs.templates[keep])  # fmt: skip


def _trained(use_image: bool, train, steps: int) -> GroundedTranslator:
    """A tiny translator (or its control) after ``steps`` AdamW steps on seeded batches of 64."""
    model, tok = _model(use_image, seed=1)
    sources, targets = tok.encode(train.sources), tok.encode(train.targets)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(len(sources), (64,), generator=g)
        loss = model.loss(sources[i], train.images[i], targets[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return GroundedTranslator(model, tok, {}, grounded_facts(DataConfig()))


def test_a_tiny_model_learns_to_read_one_digit_into_the_sentence():
    train, valid = _one_digit(2400, 0, "train"), _one_digit(1200, 0, "valid")  # ~600 and ~300 pairs
    scores = _trained(True, train, 125).evaluate(valid)  # handwriting never seen in training
    assert scores["n"] > 200 and scores["exact_match"] >= 0.85, scores  # 0.948 measured
    assert scores["number_image_attention"] > 0.8 > 0.3 > scores["other_image_attention"], scores
    control = _trained(False, train, 125).evaluate(valid)  # writes the sentence, guesses the digit
    assert control["exact_match"] <= 0.3 and control["number_match"] <= 0.3, control


def test_bad_input_is_refused_naming_the_argument():
    model, tok = _model()
    translator = GroundedTranslator(model, tok, {}, grounded_facts(DataConfig()))
    images = torch.zeros(1, 1, 8, 32)
    with pytest.raises(ValueError, match=r"sources\[0\]: expected a sentence with one '\[\?\]'"):
        translator.translate(["the answer is"], images)
    with pytest.raises(ValueError, match="sources: expected a non-empty list of sentences, got 'the"):
        translator.translate("the answer is [?]", images)
    with pytest.raises(ValueError, match=r"images: expected 2 images, one per source, got 1"):
        translator.translate(["the answer is [?]"] * 2, images)
    with pytest.raises(ValueError, match=r"images: expected \(N, 1, 8, 32\), got \(1, 1, 8, 8\)"):
        translator.translate(["the answer is [?]"], torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"sources: expected int64 word ids \(B, S\), got torch.float32"):
        model(torch.zeros(1, 3), images, torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="sources: expected 1 to max_source_words=6 words, got 9"):
        model(torch.ones(1, 9, dtype=torch.long), images, torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="use_image: expected true or false, got 'yes'"):
        GroundedConfig(vocab_size=10, use_image="yes")
    with pytest.raises(
        ValueError, match="split: expected one of 'train', 'valid', 'test', 'zero_shot', got 'dev'"
    ):
        grounded_pairs(2, seed=0, split="dev")
    with pytest.raises(ValueError, match="hypotheses, numbers: expected two non-empty lists of one length"):
        number_word_match(["sept"], [])


def test_train_and_evaluate_through_the_cli(tmp_path, capsys):
    out = tmp_path / "grounded"
    args = ["train", "--model", "grounded", "--data", "digit-strips", "--out", str(out), "--quiet",
            "--data.train_size=64", "--data.valid_size=8", "--data.test_size=8", "--train.epochs=1",
            "--train.batch_size=32", "--model.use_image=false"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"].endswith("text only") and set(result) == {"model", "test", "zero_shot"}
    assert result["test"]["n"] == 8 and result["test"]["number_image_attention"] == 0.0
    assert main(["evaluate", "--checkpoint", str(out), "--beam", "3"]) == 2
    assert "a grounded translator decodes greedily" in capsys.readouterr().err
