"""qkv.crossmodal captioning: the metrics on hand-made captions and attention, patches' slots and
pixel maps, a tiny captioner that learns 1- and 2-digit strips, the trained captioner through
``qkv train``, ``qkv evaluate`` and ``qkv caption``, bad input."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("num2words")

from qkv.cli.main import main
from qkv.crossmodal import Captioner, attention_correctness, bleu_chrf, digit_strips, exact_match, greedy
from qkv.crossmodal.caption_metrics import attention_hits
from qkv.crossmodal.captioning import build_captioner_from_facts, caption_texts
from qkv.crossmodal.data import caption_vocabulary
from qkv.crossmodal.images import attention_pixels, patch_slots, slot_attention
from qkv.models.captioner import caption_targets


@pytest.fixture(autouse=True)
def one_thread():
    """Small models run fastest on one thread, above all on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_exact_match_bleu_chrf():
    assert exact_match(["forty two", "seven"], ["forty two", "seventy"]) == 0.5
    long = ["one thousand two hundred and thirty four", "seven thousand and one"]
    bleu, chrf = bleu_chrf(long, long)
    assert bleu == pytest.approx(100.0) and chrf == pytest.approx(100.0)
    bleu, chrf = bleu_chrf(["one thousand two hundred and thirty five"], long[:1])
    assert bleu == pytest.approx(100 * (6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25) and 0 < chrf < 100
    with pytest.raises(
        ValueError, match="hypotheses, references: expected two non-empty lists of one length"
    ):
        exact_match(["a"], [])


def test_patch_slots_and_pixel_maps():
    assert patch_slots((2, 8), 4, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3] * 2
    assert patch_slots((1, 4), 8, 8).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="patch_size: expected a divisor of the slot width 8, got 3"):
        patch_slots((2, 8), 3, 8)
    attention = torch.zeros(2, 16)
    attention[0, 9] = 1.0  # row 1, column 1
    pixels = attention_pixels(attention, (2, 8), 4)
    assert pixels.shape == (2, 8, 32) and float(pixels[0].sum()) == 16.0
    assert float(pixels[0, 4:8, 4:8].min()) == 1.0 and float(pixels[1].abs().sum()) == 0.0


def test_attention_correctness_on_hand_made_attention():
    slot_of = patch_slots((1, 4), 8, 8)  # patch i is slot i
    # "zwei und vierzig" on [4][2]: zwei -> slot 1, und -> none, vierzig -> slot 0 (the crossing)
    de = torch.tensor([[0.1, 0.7, 0.1, 0.1], [1.0, 0.0, 0.0, 0.0], [0.2, 0.3, 0.25, 0.25]])
    # "fifteen" names both digits: a peak on either slot is right
    teen = torch.tensor([[0.3, 0.6, 0.05, 0.05]])
    got = attention_correctness([de, teen], [((1,), (), (0,)), ((0, 1),)], slot_of)
    assert got == pytest.approx(2 / 3)  # zwei right, vierzig wrong (its peak is slot 1), fifteen right
    with pytest.raises(ValueError, match=r"attention\[0\]: expected \(3 words, 4 patches\), got \(2, 4\)"):
        attention_correctness([de[:2]], [((1,), (), (0,))], slot_of)
    with pytest.raises(ValueError, match="slots: expected at least one word with a gold slot"):
        attention_correctness([de[1:2]], [((),)], slot_of)


def test_slot_attention_spreads_each_word_over_its_gold_patches():
    # "zwei und vierzig" on [4][2] and "fifteen" on [1][5], 2 x 8 patches of 4 x 4 (slot s: columns 2s, 2s+1)
    gold = slot_attention([((1,), (), (0,)), ((0, 1),)], patch_slots((2, 8), 4, 8), 4)
    assert gold.shape == (2, 4, 16)
    row = torch.zeros(2, 8)
    row[:, 2:4] = 0.25  # zwei: slot 1's four patches
    assert torch.equal(gold[0, 0], row.flatten())
    assert torch.equal(gold[0, 1], torch.zeros(16))  # und
    assert torch.equal(gold[0, 3], torch.zeros(16))  # past the caption's end
    assert torch.equal(gold[0, 2].reshape(2, 8)[:, :2], torch.full((2, 2), 0.25))  # vierzig: slot 0
    assert torch.equal(gold[1, 0].reshape(2, 8)[:, :4], torch.full((2, 4), 0.125))  # fifteen: slots 0 and 1
    torch.testing.assert_close(gold[gold.sum(-1) > 0].sum(-1), torch.ones(3))
    # a peak anywhere on a word's gold distribution is a hit for attention correctness
    assert attention_correctness([gold[0, :3], gold[1, :1]], [((1,), (), (0,)), ((0, 1),)],
                                 patch_slots((2, 8), 4, 8)) == 1.0  # fmt: skip
    with pytest.raises(ValueError, match="length: expected at least the 3 words of caption 0, got 2"):
        slot_attention([((1,), (), (0,))], patch_slots((1, 4), 8, 8), 2)


def _short(strips):
    keep = [i for i, c in enumerate(strips.captions) if len(c.split()) <= 2]
    return strips.images[keep], [strips.captions[i] for i in keep], [strips.slots[i] for i in keep]


def test_a_tiny_captioner_learns_one_and_two_digit_strips():
    torch.manual_seed(0)
    train = _short(digit_strips(2000, seed=0, lang="digits", split="train"))
    test = _short(digit_strips(300, seed=0, lang="digits", split="test"))
    facts = {"vocabulary": ["<start>", "<end>", *caption_vocabulary("digits")], "max_words": 4,
             "image_size": 8, "image_width": 32, "channels": 1}  # fmt: skip
    table = {"kind": "captioner", "patch_size": 8, "dim": 32, "encoder_depth": 0, "embed_dim": 16,
             "hidden_dim": 64, "attention_dim": 32, "stochastic_weight": 0.0}  # fmt: skip
    model, tokenizer = build_captioner_from_facts(table, facts)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    words, g = tokenizer.encode(train[1]), torch.Generator().manual_seed(0)
    for _ in range(200):
        index = torch.randint(len(words), (64,), generator=g)
        loss = model.loss(train[0][index], words[index])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    hyps = greedy(model, test[0])
    # chance: 1 in 100 (10 one-digit and 90 two-digit numbers)
    assert exact_match(caption_texts(tokenizer, hyps), test[1]) >= 0.75
    right = [h.attention for h, c in zip(hyps, test[1]) if len(h.tokens) == len(c.split())]
    slots = [s for h, c, s in zip(hyps, test[1], test[2]) if len(h.tokens) == len(c.split())]
    assert attention_correctness(right, slots, patch_slots(model.grid, 8, 8)) >= 0.9


DECODERS = {
    "captioner": {"embed_dim": 16, "hidden_dim": 64, "attention_dim": 32, "stochastic_weight": 0.0},
    "captioner-transformer": {"decoder_depth": 2, "decoder_heads": 2, "decoder_mlp_dim": 64},
}


@pytest.mark.parametrize("kind", list(DECODERS))
def test_supervised_attention_puts_hundred_on_its_digit(kind):
    # Unsupervised (attention_supervision 0), "hundred" peaks on a digit after its own (the English
    # captioner at demo size: 0 of 457 test words); supervised, it learns its gold slot (the
    # Transformer: its last layer's mean over heads).
    def three_digits(strips):
        keep = [i for i, s in enumerate(strips.slots) if max(x for w in s for x in w) == 2]
        return strips.images[keep], [strips.captions[i] for i in keep], [strips.slots[i] for i in keep]

    torch.manual_seed(0)
    train = three_digits(digit_strips(1200, seed=0, split="train"))
    test = three_digits(digit_strips(400, seed=0, split="test"))
    facts = {"vocabulary": ["<start>", "<end>", *caption_vocabulary("en")], "max_words": 6,
             "image_size": 8, "image_width": 32, "channels": 1}  # fmt: skip
    table = {"kind": kind, "patch_size": 8, "dim": 32, "encoder_depth": 1, "encoder_heads": 2,
             "encoder_mlp_dim": 32, **DECODERS[kind], "attention_supervision": 1.0}  # fmt: skip
    model, tokenizer = build_captioner_from_facts(table, facts)
    slot_of = patch_slots(model.grid, 8, 8)
    words, g = tokenizer.encode(train[1]), torch.Generator().manual_seed(0)
    gold = slot_attention(train[2], slot_of, words.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        index = torch.randint(len(words), (64,), generator=g)
        loss = model.loss(train[0][index], words[index], gold[index])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    tokens = tokenizer.encode(test[1])
    inputs, _ = caption_targets(tokens, pad_id=0, start_id=2, end_id=3)
    with torch.no_grad():
        _, attention = model(test[0], inputs)  # (C, T + 1, N), teacher-forced
    maps = [a[:n] for a, n in zip(attention, (tokens != 0).sum(1).tolist())]
    hits = attention_hits(maps, test[2], slot_of)
    hundred = [h for c, row in zip(test[1], hits) for w, h in zip(c.split(), row) if w == "hundred"]
    assert len(hundred) == len(test[1]) > 50
    assert sum(hundred) / len(hundred) >= 0.9


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("captioner") / "run"
    code = main(["train", "--model", "captioner", "--data", "digit-strips-de", "--out", str(out), "--quiet",
                 "--data.train_size=256", "--data.valid_size=32", "--data.test_size=40", "--train.epochs=1",
                 "--train.batch_size=64", "--train.threads=1"])  # fmt: skip
    assert code == 0
    return out


def test_captioner_loads_and_captions_with_attention(run_dir):
    cap = Captioner.load(run_dir)
    assert cap.lang == "de" and cap.image_shape == (1, 8, 32)
    strips = digit_strips(3, seed=0, lang="de", split="test")
    out = cap.caption(strips.images, beam=2)
    assert len(out) == 3
    for c in out:
        n = len(c.words)
        assert n >= 1 and c.text == " ".join(c.words) and len(c.peak_slots) == n
        assert c.attention.shape == (n, 4) and c.pixels.shape == (n, 8, 32)  # one patch per slot
        torch.testing.assert_close(c.attention.sum(-1), torch.ones(n))
        assert c.peak_slots == [int(s) for s in cap.patch_slot[c.attention.argmax(-1)]]
    assert len(cap.caption(strips.images[0])) == 1  # one (C, H, W) image
    with pytest.raises(ValueError, match=r"images: expected \(N, 1, 8, 32\)"):
        cap.caption(torch.rand(1, 3, 8, 32))
    with pytest.raises(ValueError, match=r"images: expected \(N, 1, 8, 32\)"):
        cap.caption(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="captions\\[0\\]: expected at least one word"):
        cap.teacher_attention(strips.images[:1], [""])


def test_evaluate_and_caption_commands(run_dir, capsys):
    assert main(["evaluate", "--checkpoint", str(run_dir), "--json", "--split", "test"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["lang"] == "de" and result["test"]["n"] == 40
    for key in ("exact_match", "bleu", "chrf", "attention_correctness"):
        assert 0.0 <= result["test"][key] <= (100.0 if key in ("bleu", "chrf") else 1.0)
    assert main(["caption", "--checkpoint", str(run_dir), "--index", "2", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["reference"] == digit_strips(3, seed=0, lang="de", split="test").captions[2]
    assert len(shown["words"]) == len(shown["caption"].split()) >= 1
    assert all(0 <= w["slot"] <= 3 for w in shown["words"])
    assert main(["caption", "--checkpoint", str(run_dir), "--index", "-1"]) == 2
    assert "--index: expected an int >= 0" in capsys.readouterr().err


def test_caption_an_image_file_kept_at_the_strip_shape(run_dir, tmp_path, capsys):
    from PIL import Image

    from qkv.crossmodal import Matcher
    from qkv.vision.data import read_image

    strip = digit_strips(1, seed=5, split="test").images[0]  # (1, 8, 32)
    Image.fromarray((strip[0] * 255).round().byte().numpy()).save(tmp_path / "strip.png")
    image = read_image(tmp_path / "strip.png", image_size=8, channels=1, image_width=32)
    assert image.shape == (1, 8, 32) and float((image - strip).abs().max()) <= 0.5 / 255 + 1e-6
    assert (
        main(["caption", "--checkpoint", str(run_dir), "--image", str(tmp_path / "strip.png"), "--json"]) == 0
    )
    shown = json.loads(capsys.readouterr().out)
    assert shown["reference"] is None and len(shown["words"]) == len(shown["caption"].split()) >= 1
    with pytest.raises(
        ValueError, match="is not an image-text matcher's \\(its model kind is 'captioner'\\)"
    ):
        Matcher.load(run_dir)
