"""qkv.crossmodal: digit strips (determinism, disjoint handwriting, held-out numbers, slots),
recall@K on a hand-made similarity matrix, captions as word ids, the training strips redrawn
every epoch and shifted per slot (seeded, captions kept, resume-exact), bad input."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("num2words")

from qkv.crossmodal import CaptionTokenizer, caption_positives, digit_strips, held_out_numbers, number_caption
from qkv.crossmodal.data import handwriting
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
    train, _ = handwriting("train", 0)
    valid, _ = handwriting("valid", 0)
    test, _ = handwriting("test", 0)
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


def _slot_shifts(original: torch.Tensor, moved: torch.Tensor) -> list[tuple[int, int]]:
    """The ``(dy, dx)`` in ``[-1, 1]`` that moves each 8 x 8 slot of ``original`` to ``moved``."""
    found = []
    for s in range(original.shape[-1] // 8):
        a, b = original[..., s * 8 : (s + 1) * 8], moved[..., s * 8 : (s + 1) * 8]
        padded = torch.nn.functional.pad(a, (1, 1, 1, 1))
        hits = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                if torch.equal(padded[..., 1 - dy : 9 - dy, 1 - dx : 9 - dx], b)]  # fmt: skip
        assert hits, f"slot {s} is no 1-pixel shift of the original"
        found.append(hits[0])
    return found


def test_shift_slots_moves_each_digit_within_its_own_slot_deterministically():
    from qkv.crossmodal.images import shift_slots

    strips = digit_strips(40, seed=5)
    a = shift_slots(strips.images, slot_width=8, max_shift=1, generator=torch.Generator().manual_seed(7))
    b = shift_slots(strips.images, slot_width=8, max_shift=1, generator=torch.Generator().manual_seed(7))
    c = shift_slots(strips.images, slot_width=8, max_shift=1, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == strips.images.shape
    shifts = [shift for i in range(40) for shift in _slot_shifts(strips.images[i], a[i])]
    assert len(set(shifts)) == 9  # every (dy, dx) of the 3 x 3 is drawn in 160 slots
    ink = strips.images.reshape(40, 8, 4, 8).sum((1, 3))  # (40, 4): per slot
    moved_ink = a.reshape(40, 8, 4, 8).sum((1, 3))
    assert bool((moved_ink[ink == 0] == 0).all()) and bool((moved_ink <= ink + 1e-6).all())  # no ink enters
    assert shift_slots(strips.images, slot_width=8, max_shift=0, generator=torch.Generator()) is strips.images
    with pytest.raises(ValueError, match=r"images: expected a width that is a multiple of 5, got 32"):
        shift_slots(strips.images, slot_width=5, max_shift=1, generator=torch.Generator())


def _matching_task(*overrides: str):
    from qkv.crossmodal.config import resolve
    from qkv.crossmodal.data import caption_vocabulary
    from qkv.crossmodal.training import MatchingTask, load_strips

    cfg = resolve(preset="clip", overrides=["--data.train_size=96", "--data.valid_size=0",
                                            "--train.batch_size=32", *overrides])  # fmt: skip
    strips = load_strips(cfg.data)
    return MatchingTask(cfg, strips, CaptionTokenizer(caption_vocabulary("en"), max_words=12))


def _as_pairs(batches) -> dict[bytes, bytes]:
    """Every (image, words) pair of some batches, as bytes, each image with its words."""
    return {img.numpy().tobytes(): tok.numpy().tobytes() for b in batches for img, tok in zip(b[0], b[1])}


def test_matching_batches_redraw_strips_each_epoch_by_seed_and_keep_their_captions():
    from qkv.crossmodal.training import _REDRAW_STRIDE

    task = _matching_task()
    assert task.cfg.data.redraw and task.cfg.data.augment_shift == 0  # the defaults
    epoch0, epoch1 = list(task.batches(epoch=0, start=0)), list(task.batches(epoch=1, start=0))
    loaded = digit_strips(96, seed=0, split="train")
    drawn = digit_strips(96, seed=_REDRAW_STRIDE, split="train")  # epoch 1 of data.seed 0
    for batches, strips in ((epoch0, loaded), (epoch1, drawn)):  # each image keeps its own caption
        tokens = task.tokenizer.encode(strips.captions)
        want = {img.numpy().tobytes(): tok.numpy().tobytes() for img, tok in zip(strips.images, tokens)}
        assert _as_pairs(batches) == want
        for _, words, positives in batches:  # positives: exactly the pairs of the same caption
            assert torch.equal(positives, (words[:, None] == words[None, :]).all(-1))
    assert _as_pairs(epoch0) != _as_pairs(epoch1)
    resumed = list(task.batches(epoch=1, start=2))  # a resumed run starts mid-epoch
    assert all(torch.equal(x, y) for u, v in zip(epoch1[2:], resumed, strict=True) for x, y in zip(u, v))
    fixed = _matching_task("--data.redraw=false")
    assert _as_pairs(fixed.batches(epoch=1, start=0)) == _as_pairs(epoch0)


def test_matching_batches_shifted_by_seed_epoch_and_step():
    task = _matching_task("--data.augment_shift=1", "--data.redraw=false")
    plain = _matching_task("--data.redraw=false")
    full = list(task.batches(epoch=2, start=0))
    resumed = list(task.batches(epoch=2, start=1))
    assert all(torch.equal(x, y) for u, v in zip(full[1:], resumed, strict=True) for x, y in zip(u, v))
    assert not torch.equal(full[0][0], next(iter(task.batches(epoch=3, start=0)))[0])
    for (images, tokens, positives), (plain_images, plain_tokens, plain_positives) in zip(
        full, plain.batches(epoch=2, start=0), strict=True
    ):
        assert torch.equal(tokens, plain_tokens) and torch.equal(positives, plain_positives)
        assert not torch.equal(images, plain_images)
        for i in range(len(images)):  # each digit moved by at most a pixel, in its own slot
            _slot_shifts(plain_images[i], images[i])


def test_bad_augmentation_options():
    from qkv.crossmodal.config import DataConfig

    with pytest.raises(ValueError, match=r"config \[data\] augment_shift: expected an int >= 0, got -1"):
        DataConfig(augment_shift=-1)
    with pytest.raises(ValueError, match=r"config \[data\] redraw: expected true or false, got 1"):
        DataConfig(redraw=1)


def test_a_kind_starts_from_its_own_train_defaults_and_a_file_or_override_wins():
    from qkv.crossmodal import resolve
    from qkv.crossmodal.config import TRAIN_BY_KIND, CrossModalTrainConfig

    assert TRAIN_BY_KIND["clip"]["epochs"] == 14 != CrossModalTrainConfig().epochs == 8
    assert resolve(preset="clip").train.epochs == 14
    assert resolve().train.epochs == 14  # clip is the default preset
    assert resolve(preset="captioner").train.epochs == 8
    assert resolve({"model": {"preset": "clip"}}).train.epochs == 14
    assert resolve({"train": {"epochs": 5}}, preset="clip").train.epochs == 5
    assert resolve(preset="clip", overrides=["--train.epochs=3"]).train.epochs == 3
