"""The viewer's cross-modal page in headless Chromium: offline, no errors, a word's attention over
the patches and a patch's weights over the words, selectors change the pixels, safe text.

Shares the browser and the page opener of tests/test_viewer_browser.py (skipped, like it,
without Debian's chromium or Playwright).
"""

from __future__ import annotations

import pytest
import torch

import test_viewer_browser as text_viewer
from qkv.viz import save_crossmodal_html

browser = text_viewer.browser
open_viewer = text_viewer.open_viewer
CANVAS_HASH, XSS_TOKEN = text_viewer.CANVAS_HASH, text_viewer.XSS_TOKEN

PIXEL_AT = """([x, y]) => {
  const c = document.getElementById("image-canvas");
  const r = c.getBoundingClientRect();
  const k = c.width / r.width;
  return Array.from(c.getContext("2d").getImageData(Math.floor((x - r.left) * k), Math.floor((y - r.top) * k), 1, 1).data.slice(0, 3));
}"""
WORD_COLOURS = """() => Array.from(document.querySelectorAll("#words .word"), (e) =>
  (getComputedStyle(e).backgroundColor.match(/\\d+/g) || []).slice(0, 3).map(Number))"""
VIRIDIS_LOW, VIRIDIS_HIGH = [68, 1, 84], [253, 231, 37]
WORDS = ["zwei", "und", "vierzig", XSS_TOKEN]


def strip() -> torch.Tensor:
    img = torch.zeros(8, 32)
    img[1:7, 3:5] = 1.0
    img[1:7, 10:14] = 0.7
    return img


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """An 8 x 32 strip, 2 x 8 patches of 4 x 4, 4 words, 2 layers x 3 heads."""
    gen = torch.Generator().manual_seed(4)
    w = torch.softmax(3 * torch.randn(2, 3, 4, 16, generator=gen, dtype=torch.float64), dim=-1)
    path = tmp_path_factory.mktemp("crossmodal-viewer") / "strip.html"
    save_crossmodal_html(path, strip(), w, WORDS, grid=(2, 8), title="zwei und vierzig <b>")
    return path, w


def close(got, expected, tol: float = 2e-5) -> bool:
    return (torch.tensor(got, dtype=torch.float64) - expected.flatten()).abs().max().item() <= tol


def test_opens_offline_with_the_words_as_text(open_viewer, page):
    path, w = page
    v = open_viewer(path)
    assert v.js("qkvViewer.mode") == "crossmodal"
    assert v.js("qkvViewer.state()") == {"layer": 1, "head": "all", "word": 0, "shownWord": 0, "patch": None,
                                          "shownPatch": None, "opacity": 0.6}  # fmt: skip
    assert close(v.js("qkvViewer.shownMap()"), w[1, :, 0].mean(0))  # the last layer, mean of heads, word 0
    assert abs(v.js("qkvViewer.weight(0, 2, 3, 11)") - float(w[0, 2, 3, 11])) < 2e-5
    assert v.page.locator("#words .word").all_text_contents() == WORDS  # shown as text, never markup
    assert v.page.inner_text("#qkv-title") == "zwei und vierzig <b>"
    assert v.js("window.__pwned") is None
    assert v.js("qkvViewer.wordWeights()") is None
    v.assert_clean()  # no script error, no request leaving the file, no dialog


def test_hovering_a_word_changes_the_overlay(open_viewer, page):
    path, w = page
    v = open_viewer(path)
    before = v.js(CANVAS_HASH, "image-canvas")
    at = v.js("qkvViewer.wordCenter(2)")
    v.page.mouse.move(at["x"], at["y"])
    assert v.js("qkvViewer.state().shownWord") == 2
    assert close(v.js("qkvViewer.shownMap()"), w[1, :, 2].mean(0))
    assert v.js(CANVAS_HASH, "image-canvas") != before
    v.page.mouse.move(1, 1)  # leaving the word: back to the pinned word 0, the same picture
    assert v.js("qkvViewer.state().shownWord") == 0 and v.js(CANVAS_HASH, "image-canvas") == before
    v.page.mouse.click(at["x"], at["y"])
    v.page.mouse.move(1, 1)
    assert v.js("qkvViewer.state().word") == 2  # clicked: pinned
    v.assert_clean()


def test_hovering_a_patch_colours_the_words_by_their_weight(open_viewer, page):
    path, w = page
    v = open_viewer(path)
    v.page.select_option("#layer", "0")
    v.page.select_option("#head", "1")
    plain = v.js(WORD_COLOURS)
    at = v.js("qkvViewer.patchCenter(1, 5)")
    v.page.mouse.move(at["x"], at["y"])
    assert v.js("qkvViewer.state().shownPatch") == 1 * 8 + 5
    weights = w[0, 1, :, 13]
    assert close(v.js("qkvViewer.wordWeights()"), weights)
    colours = v.js(WORD_COLOURS)
    assert colours != plain
    top = int(weights.argmax())
    assert max(abs(a - b) for a, b in zip(colours[top], VIRIDIS_HIGH, strict=True)) <= 1
    by_weight = [colours[i][1] for i in weights.argsort().tolist()]  # viridis' green rises with the value
    assert by_weight == sorted(by_weight) and by_weight[0] < by_weight[-1]
    v.page.mouse.click(at["x"], at["y"])
    v.page.mouse.move(1, 1)  # the clicked patch stays
    assert v.js("qkvViewer.state().patch") == 13 and close(v.js("qkvViewer.wordWeights()"), weights)
    v.assert_clean()


def test_the_selectors_change_the_pixels(open_viewer, page):
    path, w = page
    v = open_viewer(path)
    seen = {tuple(v.js(CANVAS_HASH, "image-canvas"))}
    for selector, value in (("#head", "2"), ("#layer", "0"), ("#head", "0")):
        v.page.select_option(selector, value)
        picture = tuple(v.js(CANVAS_HASH, "image-canvas"))
        assert picture not in seen, (selector, value)
        seen.add(picture)
    assert close(v.js("qkvViewer.shownMap()"), w[0, 0, 0])
    v.assert_clean()


def test_one_map_hides_the_selectors_and_lights_each_word_patch(open_viewer, tmp_path):
    """Show, Attend and Tell's shape: one (n, N) map. Word i looks only at patch (0, 2 i)."""
    att = torch.zeros(3, 16, dtype=torch.float64)
    for i in range(3):
        att[i, 2 * i] = 1.0
    path = save_crossmodal_html(tmp_path / "sat.html", torch.zeros(8, 32), att, ["a", "b", "c"])
    v = open_viewer(path)
    assert not v.page.is_visible("#layer") and not v.page.is_visible("#head")
    v.js("qkvViewer.setOpacity(1)")
    for word in range(3):
        v.js(f"qkvViewer.setWord({word})")
        for col in range(8):
            at = v.js(f"qkvViewer.patchCenter(0, {col})")
            rgb = v.js(PIXEL_AT, [at["x"], at["y"]])
            expected = VIRIDIS_HIGH if col == 2 * word else VIRIDIS_LOW
            assert max(abs(a - b) for a, b in zip(rgb, expected, strict=True)) <= 2, (word, col, rgb)
    v.assert_clean()


# ----------------------------------------------------------------------------- the page `qkv viz` writes


@pytest.fixture(scope="module")
def cli_page(tmp_path_factory):
    """``qkv viz --checkpoint DIR --index 2 --out FILE.html`` on a Transformer captioner of
    2 layers x 2 heads with random weights; and that strip's picture."""
    pytest.importorskip("sklearn")
    pytest.importorskip("num2words")
    from qkv.cli.main import main
    from qkv.crossmodal import Captioner, digit_strips
    from qkv.crossmodal.pictures import caption_picture
    from test_crossmodal_seeing import _captioner_run

    root = tmp_path_factory.mktemp("viz-caption-cli")
    run = _captioner_run(root, "captioner-transformer")
    assert main(["viz", "--checkpoint", run, "--index", "2", "--out", str(root / "strip.html")]) == 0
    image = digit_strips(3, seed=0, split="test").images[2]
    return root / "strip.html", caption_picture(Captioner.load(run), image, name="test strip 2")


def test_the_page_of_qkv_viz_on_a_captioner_shows_the_model_maps(open_viewer, cli_page):
    path, picture = cli_page
    w = picture.attention  # (2 layers, 2 heads, n words, 16 patches)
    v = open_viewer(path)
    assert v.page.locator("#words .word").all_text_contents() == picture.words
    assert abs(v.js("qkvViewer.weight(0, 1, 0, 9)") - float(w[0, 1, 0, 9])) < 2e-5
    assert close(
        v.js("qkvViewer.shownMap()"), picture.caption.attention[0], tol=1e-4
    )  # what decoding reported
    before = v.js(CANVAS_HASH, "image-canvas")
    v.page.select_option("#layer", "0")
    assert v.js(CANVAS_HASH, "image-canvas") != before
    at = v.js("qkvViewer.patchCenter(1, 2)")
    v.page.mouse.move(at["x"], at["y"])
    assert close(v.js("qkvViewer.wordWeights()"), w[0, :, :, 10].mean(0))
    v.assert_clean()
