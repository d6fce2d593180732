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


# ----------------------------------------------------------------------------- a captioner's words


def _captioner_run(root, kind: str) -> str:
    """A captioner of ``kind`` with random weights, saved as training saves it (patch 4: a
    2 x 8 grid over the 8 x 32 strips)."""
    from qkv.crossmodal import resolve
    from qkv.crossmodal.captioning import build_captioner_from_facts, caption_facts
    from qkv.train.checkpoint import save_checkpoint

    sizes = [
        "--model.patch_size=4",
        "--model.dim=16",
        "--model.encoder_heads=2",
        "--model.encoder_mlp_dim=32",
    ]
    if kind == "captioner-transformer":
        sizes += ["--model.decoder_depth=2", "--model.decoder_heads=2", "--model.decoder_mlp_dim=32"]
    else:
        sizes += ["--model.embed_dim=8", "--model.hidden_dim=16", "--model.attention_dim=8"]
    cfg = resolve(preset=kind, overrides=sizes)
    facts = caption_facts(cfg.data)
    torch.manual_seed(0)
    model, _ = build_captioner_from_facts(cfg.to_dict()["model"], facts)
    save_checkpoint(root / kind, model=model, step=1, config=cfg.to_dict(), vocab=facts)
    return str(root / kind)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("captioners")
    return {kind: _captioner_run(root, kind) for kind in ("captioner", "captioner-transformer")}


@pytest.mark.parametrize(("kind", "shape"), [("captioner", (1, 1)), ("captioner-transformer", (2, 2))])
def test_the_picture_holds_every_map_and_its_mean_is_the_caption_attention(runs, kind, shape):
    from qkv.crossmodal import Captioner
    from qkv.crossmodal.pictures import caption_picture

    captioner = Captioner.load(runs[kind])
    image = digit_strips(3, seed=0, split="test").images[2]
    picture = caption_picture(captioner, image, beam=2, name="test strip 2")
    n = len(picture.words)
    assert picture.attention.shape == (*shape, n, 16) and picture.grid == (2, 8)
    torch.testing.assert_close(picture.attention.sum(-1), torch.ones(*shape, n))  # rows are distributions
    # the last layer's mean over heads is what decoding reported, step by step
    torch.testing.assert_close(picture.attention[-1].mean(0), picture.caption.attention, rtol=1e-5, atol=1e-6)
    assert picture.word_maps().shape == (n, 2, 8) and picture.title.startswith("test strip 2: ")


def test_qkv_viz_on_a_captioner_writes_the_page_and_one_overlay_per_word(runs, tmp_path, capsys):
    import json
    import re

    from qkv.cli.main import main
    from qkv.crossmodal import Captioner
    from qkv.crossmodal.pictures import caption_picture

    out, png = tmp_path / "caption.html", tmp_path / "words.png"
    run = runs["captioner-transformer"]
    assert main(["viz", "--checkpoint", run, "--index", "2", "--out", str(out), "--png", str(png)]) == 0
    printed = capsys.readouterr().out
    strips = digit_strips(3, seed=0, split="test")
    picture = caption_picture(Captioner.load(run), strips.images[2], beam=3, name="test strip 2")
    assert f"its caption: {strips.captions[2]!r}" in printed
    assert f"{len(picture.words)} words, 2 layer(s) x 2 head(s)" in printed
    text = out.read_text(encoding="utf-8")
    payload = json.loads(re.search(r'id="qkv-data">(.*?)</script>', text, re.S).group(1))
    assert payload["mode"] == "crossmodal" and payload["words"] == picture.words
    a = payload["attention"]
    assert (a["layers"], a["heads"], a["words"], a["patches"]) == (2, 2, len(picture.words), 16)
    from PIL import Image

    with Image.open(png) as figure:  # one panel per word, stacked
        assert figure.size[1] > figure.size[0] / 2 and figure.size[0] > 200


def test_qkv_viz_on_a_captioner_takes_an_image_file(runs, tmp_path, capsys):
    from PIL import Image

    from qkv.cli.main import main

    strip = digit_strips(1, seed=5, split="test").images[0]
    Image.fromarray((strip[0] * 255).round().byte().numpy()).save(tmp_path / "strip.png")
    args = ["viz", "--checkpoint", runs["captioner"], "--image", str(tmp_path / "strip.png")]
    assert main([*args, "--out", str(tmp_path / "s.html"), "--beam", "1"]) == 0
    assert "1 layer(s) x 1 head(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--index/--image: a captioner's checkpoint captions one image"),
        (
            ["--index", "1", "--layer", "0", "--png", "x.png"],
            "--layer: not used with a captioner's checkpoint",
        ),
        (["--index", "1", "--beam", "0"], "--beam: expected an integer >= 1, got 0"),
        (["--index", "-1"], "--index: expected an int >= 0, got -1"),
    ],
)
def test_qkv_viz_on_a_captioner_names_the_bad_option(runs, tmp_path, monkeypatch, capsys, extra, message):
    from qkv.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["viz", "--checkpoint", runs["captioner"], *extra]) == 2
    assert message in capsys.readouterr().err


def test_index_and_beam_need_a_captioner(capsys):
    from qkv.cli.main import main

    assert main(["viz", "--model", "minilm", "a sentence", "--index", "2"]) == 2
    assert "--index: expected --checkpoint DIR of a captioner" in capsys.readouterr().err
