"""qkv.crossmodal: digit strips (determinism, disjoint handwriting, held-out numbers, slots),
recall@K on a hand-made similarity matrix, captions as word ids, bad input."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("num2words")

from qkv.crossmodal import CaptionTokenizer, caption_positives, digit_strips, held_out_numbers, number_caption
from qkv.crossmodal.data import _handwriting
from qkv.crossmodal.retrieval import retrieval_recalls


def test_strips_are_deterministic_and_the_same_in_every_language():
    a = digit_strips(50, seed=3, lang="en")
    b = digit_strips(50, seed=3, lang="en")
    assert torch.equal(a.images, b.images) and a.captions == b.captions and a.slots == b.slots
    de = digit_strips(50, seed=3, lang="de")
    assert torch.equal(a.images, de.images) and a.captions != de.captions
    assert not torch.equal(a.images, digit_strips(50, seed=4, lang="en").images)
    assert a.images.shape == (50, 1, 8, 32) and float(a.images.min()) >= 0.0 and float(a.images.max()) <= 1.0


def test_captions_and_gold_slots():
    assert number_caption(42, "de") == ("zwei und vierzig", ((1,), (), (0,)))  # units before tens: crossing
    assert number_caption(1234, "en") == ("one thousand two hundred and thirty four",
                                          ((0,), (0,), (1,), (1,), (), (2,), (3,)))  # fmt: skip
    assert number_caption(15, "en") == ("fifteen", ((0, 1),))  # a teen names both digits
    assert number_caption(907, "digits") == ("nine zero seven", ((0,), (1,), (2,)))
    assert number_caption(91, "fr")[0] == "quatre vingt onze"
    strips = digit_strips(200, seed=0, lang="de")
    digits = digit_strips(200, seed=0, lang="digits").captions  # the same strips, digit by digit
    for image, caption, slots, named in zip(strips.images, strips.captions, strips.slots, digits):
        assert len(slots) == len(caption.split())
        used = len(named.split())
        assert {s for ss in slots for s in ss} <= set(range(used))  # zeros are not named
        assert float(image[..., used * 8 :].abs().sum()) == 0.0  # the slots after them are blank
        assert float(image[..., (used - 1) * 8 : used * 8].sum()) > 0


def test_test_handwriting_is_never_in_training_and_held_out_numbers_never_captions():
    train, _ = _handwriting("train", 0)
    valid, _ = _handwriting("valid", 0)
    test, _ = _handwriting("test", 0)
    assert len(train) + len(valid) + len(test) == 1797
    flat = {tuple(x.flatten().tolist()) for x in train}
    # the data set holds a few identical images; none of the test ones is a training image
    assert sum(tuple(x.flatten().tolist()) in flat for x in test) <= 2
    held = held_out_numbers()
    assert len(held) == 9 + 90 + 900  # 10% of the 2-, 3- and 4-digit numbers
    train_numbers = {number_caption(n, "en")[0] for n in held}
    captions = set(digit_strips(5000, seed=0, split="train").captions)
    assert not captions & train_numbers
    zero = digit_strips(300, seed=0, split="zero_shot")
    assert set(zero.captions) <= train_numbers


def test_recalls_on_a_hand_made_similarity_matrix():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.7, 0.0], [0.0, 0.5, 0.2]])
    r = retrieval_recalls(sim, ks=(1, 2))
    # images: 0 ranks its caption 1st, 1 ranks it 2nd, 2 ranks it 2nd
    assert r["i2t_r1"] == pytest.approx(1 / 3) and r["i2t_r2"] == pytest.approx(1.0)
    # captions: 0 ranks image 0 1st; 1 ranks image 1 1st (0.7 > 0.5 > 0.1); 2 ranks image 2 1st
    assert r["t2i_r1"] == pytest.approx(1.0)
    tie = retrieval_recalls(torch.ones(2, 2), ks=(1,))
    assert tie["i2t_r1"] == 0.0  # ties count against
    positives = caption_positives(["a", "b", "a"], ["a", "b"])
    assert positives.tolist() == [[True, False], [False, True], [True, False]]
    r = retrieval_recalls(torch.tensor([[0.2, 0.1], [0.3, 0.4], [0.1, 0.9]]), positives, ks=(1,))
    # captions: "a" (images 0, 2) loses to image 1 (0.3 > 0.2), "b" (image 1) to image 2 (0.9 > 0.4)
    assert r["i2t_r1"] == pytest.approx(2 / 3) and r["t2i_r1"] == 0.0


def test_caption_tokenizer():
    tok = CaptionTokenizer(["forty", "two"], max_words=3)
    assert tok.encode(["Forty-two", "two"]).tolist() == [[2, 3], [3, 0]]
    assert tok.encode(["seven"]).tolist() == [[1]]  # unknown
    with pytest.raises(ValueError, match=r"captions\[1\]: expected at least one word, got '  '"):
        tok.encode(["two", "  "])
    with pytest.raises(ValueError, match=r"captions: expected a non-empty list of strings, got 'two'"):
        tok.encode("two")
    with pytest.raises(ValueError, match=r"captions\[0\]: expected at most 3 words, got 4"):
        tok.encode(["two two two two"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": -1, "seed": 0}, r"n: expected an int >= 0, got -1"),
        ({"n": 2, "seed": 0, "lang": "es"}, r"lang: expected one of 'en', 'fr', 'de', 'digits', got 'es'"),
        (
            {"n": 2, "seed": 0, "split": "dev"},
            r"split: expected one of 'train', 'valid', 'test', 'zero_shot', got 'dev'",
        ),
        ({"n": 2, "seed": -3}, r"seed: expected an int >= 0, got -3"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        digit_strips(**kwargs)
    with pytest.raises(ValueError, match=r"number: expected an int in \[0, 9999\], got 10000"):
        number_caption(10_000, "en")
