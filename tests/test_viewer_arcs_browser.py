"""The viewer's dependency arcs in headless Chromium: a page with a tree draws one labelled arc per
word above the head view, offline and without errors; choosing a relation highlights exactly its
arcs, opens its best head (layer, head, the pressed button, the thumbnails marked in the model
view), dashes its gold pairs the way that head reads them and changes the picture; a page
without a tree shows none of it; hostile words and labels stay text.

Shares the browser and the page opener of tests/test_viewer_browser.py (skipped, like it,
without Debian's chromium or Playwright).
"""

from __future__ import annotations

import pytest
import torch

import test_viewer_browser as text_viewer
from qkv.viz import save_html

browser = text_viewer.browser
open_viewer = text_viewer.open_viewer
example = text_viewer.example

WORDS = ["The", "cat", "sat", "on", "the", "mat", "."]
ARCS = [
    (1, 0, "det"),
    (2, 1, "nsubj"),
    (-1, 2, "root"),
    (5, 3, "case"),
    (5, 4, "det"),
    (2, 5, "obl"),
    (2, 6, "punct"),
]
BEST = {
    "det": [(1, 2, 0, 1.0), (0, 1, 0, 0.5)],
    "case": [(0, 0, 1, 0.8)],  # the head attends to its dependent
    "nsubj": [(1, 0, 0, 0.6)],
}


@pytest.fixture(scope="module")
def tree_page(tmp_path_factory):
    gen = torch.Generator().manual_seed(3)
    weights = torch.softmax(3 * torch.randn(2, 3, 7, 7, generator=gen, dtype=torch.float64), -1)
    path = tmp_path_factory.mktemp("arcs") / "tree.html"
    save_html(path, weights, WORDS, title="sample-01", arcs=ARCS, best_heads=BEST)
    return path


def test_arcs_are_drawn_above_the_head_view(open_viewer, tree_page):
    v = open_viewer(tree_page)
    arcs = v.js("qkvViewer.arcs()")
    assert [(a["head"], a["dep"], a["rel"]) for a in arcs] == ARCS
    assert not any(a["on"] for a in arcs)
    assert v.page.locator("#arcs-svg g.arc path.arc-line").count() == len(ARCS)
    assert v.page.locator("#arcs-svg .arc-label").all_text_contents() == [rel for _, _, rel in ARCS]
    assert v.page.locator("#arcs-svg .arc-word").all_text_contents() == WORDS
    svg = v.page.locator("#arcs-svg").bounding_box()
    canvas = v.page.locator("#head-canvas").bounding_box()
    assert svg["height"] > 40 and svg["y"] + svg["height"] <= canvas["y"]  # over the head view
    # an arc is taller the farther apart its words: the punct arc (2 -> 6) peaks above det (1 -> 0)
    tops = v.js(
        "Array.from(document.querySelectorAll('#arcs-svg g.arc')).map(g => g.querySelector('path').getBBox().y)"
    )
    assert tops[6] < tops[5] < tops[0]
    assert v.js("qkvViewer.relation()") == {"name": None, "marked": [], "pressed": [], "gold": []}
    assert v.page.locator("#relation option").all_text_contents() == [
        "all relations",
        "case (1)",
        "det (2)",
        "nsubj (1)",
        "obl (1)",
        "punct (1)",
        "root (1)",
    ]
    v.assert_clean()


def test_a_relation_highlights_its_arcs_and_opens_its_best_head(open_viewer, tree_page):
    v = open_viewer(tree_page)
    before = v.canvas_hash("head-canvas")
    v.page.select_option("#relation", "det")
    assert [(a["head"], a["dep"]) for a in v.js("qkvViewer.arcs()") if a["on"]] == [(1, 0), (5, 4)]
    assert v.page.locator("#arcs-svg g.arc.off").count() == 5
    assert v.js("qkvViewer.state()")["layer"] == 1 and v.js("qkvViewer.state()")["head"] == 2
    rel = v.js("qkvViewer.relation()")
    assert rel["name"] == "det"
    assert rel["gold"] == [[0, 1], [4, 5]]  # dependent (query) -> head (key), dashed
    assert rel["pressed"] == ["layer 1, head 2 dep\u2192head 100%"]
    after = v.canvas_hash("head-canvas")
    assert after != before
    # the second best head, from its button
    v.page.locator("#best-heads button").nth(1).click()
    assert (v.js("qkvViewer.state()")["layer"], v.js("qkvViewer.state()")["head"]) == (0, 1)
    assert v.js("qkvViewer.relation()")["pressed"] == ["layer 0, head 1 dep\u2192head 50%"]
    assert v.canvas_hash("head-canvas") != after
    # a head measured head -> dependent: its gold pair is drawn the other way round
    v.page.select_option("#relation", "case")
    assert (v.js("qkvViewer.state()")["layer"], v.js("qkvViewer.state()")["head"]) == (0, 0)
    assert v.js("qkvViewer.relation()")["gold"] == [[5, 3]]
    # the model view marks every best head of the relation
    v.page.select_option("#relation", "det")
    v.js("qkvViewer.setView('model')")
    assert sorted(v.js("qkvViewer.relation()")["marked"]) == [[0, 1], [1, 2]]
    # no relation: nothing highlighted, nothing marked; the root has no measured head
    v.page.select_option("#relation", "")
    assert not any(a["on"] for a in v.js("qkvViewer.arcs()"))
    assert v.js("qkvViewer.relation()")["marked"] == []
    v.page.select_option("#relation", "root")
    assert v.page.inner_text("#best-heads") == "No head was measured for root."
    assert v.js("qkvViewer.relation()")["pressed"] == []
    v.assert_clean()


def test_page_without_arcs_has_no_tree(open_viewer, example):
    v = open_viewer(example[0])
    assert v.js("qkvViewer.arcs()") == []
    assert not v.page.is_visible("#relation-box")
    assert not v.page.is_visible("#arcs-panel")
    v.assert_clean()


def test_hostile_words_and_labels_stay_text(open_viewer, tmp_path):
    words = [text_viewer.XSS_TOKEN, "b", "<b>c</b>"]
    arcs = [(1, 0, '"onmouseover="alert(2)'), (-1, 1, "root"), (1, 2, text_viewer.XSS_TOKEN)]
    path = save_html(tmp_path / "x.html", text_viewer.softmax_weights(1, 1, 3, 3), words, arcs=arcs)
    v = open_viewer(path)
    assert v.page.locator("#arcs-svg .arc-word").all_text_contents() == words
    assert v.page.locator("#arcs-svg .arc-label").all_text_contents() == [rel for _, _, rel in arcs]
    v.page.select_option("#relation", text_viewer.XSS_TOKEN)
    assert [a["dep"] for a in v.js("qkvViewer.arcs()") if a["on"]] == [2]
    assert v.js("window.__pwned") is None
    assert v.page.locator("#arcs-svg img, #arcs-svg b").count() == 0
    v.assert_clean()
