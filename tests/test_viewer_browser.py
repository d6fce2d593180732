"""The HTML viewer in headless Chromium: offline, no errors, controls change the picture, safe text.

Needs Debian's chromium at /usr/bin/chromium and Playwright for Python (never downloads a
browser); the module is skipped without them. All tests share one browser.
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from qkv.viz import save_html

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("browser tests need Debian's chromium at /usr/bin/chromium", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="browser tests need playwright (pip install playwright)"
)

LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
XSS_TOKEN = "</script><img src=x onerror=window.__pwned=1;alert(1)>"
XSS = [XSS_TOKEN, '"onmouseover="alert(2)', "<b>bold</b>", "it's", "a&amp;b"]

# Drawing on a canvas only records commands; the browser rasterizes them for the next frame.
# Reading one pixel back from every visible canvas forces that work now, so timings include it.
RASTERIZE = """() => {
  for (const c of document.querySelectorAll("canvas")) {
    if (c.offsetParent !== null && c.width > 0) c.getContext("2d").getImageData(0, 0, 1, 1);
  }
}"""
TIMED_CALL = (
    "async ([call, arg]) => { const t = performance.now(); qkvViewer[call](arg); ("
    + RASTERIZE
    + ")(); return performance.now() - t; }"
)

# FNV-1a over the canvas pixels: equal pictures give equal hashes
CANVAS_HASH = """(id) => {
  const c = document.getElementById(id);
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let h = 2166136261;
  for (let i = 0; i < d.length; i++) { h ^= d[i]; h = Math.imul(h, 16777619); }
  return [h >>> 0, c.width, c.height];
}"""


def softmax_weights(*shape: int, sharpness: float = 3.0) -> torch.Tensor:
    return torch.softmax(sharpness * torch.randn(*shape, dtype=torch.float64), dim=-1)


@dataclass
class Viewer:
    page: object
    load_s: float  # navigation start to the first picture rasterized
    errors: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def js(self, expression: str, arg=None):
        return self.page.evaluate(expression, arg)

    def timed(self, call: str, arg) -> float:
        """Milliseconds for ``qkvViewer[call](arg)`` including rasterizing the result."""
        return self.page.evaluate(TIMED_CALL, [call, arg])

    def canvas_hash(self, canvas_id: str):
        return self.page.evaluate(CANVAS_HASH, canvas_id)

    def tooltip(self) -> str:
        return self.page.eval_on_selector("#tooltip", "e => e.hidden ? '' : e.textContent")

    def assert_clean(self) -> None:
        assert self.errors == []
        assert self.outside == []
        assert self.dialogs == []


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture
def open_viewer(browser):
    contexts = []

    def _open(path: Path, *, width: int = 1280, height: int = 900) -> Viewer:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        viewer = Viewer(page=page, load_s=0.0)

        def route(r):
            if r.request.url.startswith("file:"):
                r.continue_()
            else:
                viewer.outside.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.on("request", lambda r: None if r.url.startswith("file:") else viewer.outside.append(r.url))
        page.on("console", lambda m: viewer.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: viewer.errors.append(str(e)))
        page.on("dialog", lambda d: (viewer.dialogs.append(d.message), d.dismiss()))
        start = time.perf_counter()
        page.goto(path.as_uri())
        page.wait_for_function("window.qkvViewer && window.qkvViewer.ready", timeout=20_000)
        page.evaluate(RASTERIZE)
        viewer.load_s = time.perf_counter() - start
        return viewer

    yield _open
    for context in contexts:
        context.close()


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """Translation-shaped data: 2 layers x 3 heads of encoder, decoder and cross attention."""
    gen = torch.Generator().manual_seed(1)

    def sm(*shape):
        return torch.softmax(3 * torch.randn(*shape, generator=gen, dtype=torch.float64), dim=-1)

    source = ["le", "chat", "noir", "dort", "."]
    target = ["the", "black", "cat", "sleeps", ".", "<eos>"]
    weights = {
        "encoder": sm(2, 3, 5, 5),
        "decoder": torch.softmax(
            (3 * torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64)).masked_fill(
                ~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf")
            ),
            dim=-1,
        ),
        "cross": sm(2, 3, 6, 5),
    }
    tokens = {"source": source, "target": target}
    scores = {
        "rollout": [0.1, 0.4, 0.3, 0.15, 0.05],
        "integrated_gradients": {"target": [0.2, -0.5, 0.9, 0.1, 0, 0]},
    }
    path = tmp_path_factory.mktemp("viewer") / "example.html"
    save_html(path, weights, tokens, title="le chat noir", scores=scores)
    return path, weights, tokens


def test_loads_offline_without_errors(open_viewer, example):
    path, weights, tokens = example
    v = open_viewer(path)
    assert v.js("qkvViewer.state()") == {
        "kind": "encoder",
        "layer": 0,
        "head": "all",  # every head at first, one colour each
        "view": "head",
        "focus": None,
    }
    assert v.js("qkvViewer.kinds()") == [
        {"name": "encoder", "layers": 2, "heads": 3, "tq": 5, "tk": 5},
        {"name": "decoder", "layers": 2, "heads": 3, "tq": 6, "tk": 6},
        {"name": "cross", "layers": 2, "heads": 3, "tq": 6, "tk": 5},
    ]
    assert abs(v.js("qkvViewer.weight('cross', 1, 2, 3, 4)") - float(weights["cross"][1, 2, 3, 4])) < 2e-5
    assert v.page.is_visible("#kind")  # several kinds: the selector is shown
    assert v.page.inner_text("#qkv-title") == "le chat noir"
    # token importance: one bar per method, on the side it belongs to
    assert v.page.locator(".chip").all_text_contents() == tokens["source"]
    v.page.select_option("#score-method", "integrated_gradients")
    assert v.page.locator(".score-row").get_attribute("data-side") == "target"
    assert v.page.locator(".chip").all_text_contents() == tokens["target"]
    v.assert_clean()


def test_selecting_layer_head_and_kind_changes_the_drawing(open_viewer, example):
    v = open_viewer(example[0])
    seen = {tuple(v.canvas_hash("head-canvas"))}
    for selector, value in (("#head", "2"), ("#layer", "1"), ("#head", "all"), ("#kind", "cross")):
        draws = v.js("qkvViewer.draws")
        v.page.select_option(selector, value)
        assert v.js("qkvViewer.draws") == draws + 1
        picture = tuple(v.canvas_hash("head-canvas"))
        assert picture not in seen, (selector, value)
        seen.add(picture)
    assert v.js("qkvViewer.state()")["kind"] == "cross"
    assert v.js("qkvViewer.state()")["head"] == "all"
    assert v.page.locator("#head-legend span").count() == 3  # one colour per head
    # arrow keys step through heads and layers
    v.page.keyboard.press("ArrowRight")
    v.page.keyboard.press("ArrowUp")
    assert v.js("qkvViewer.state()")["head"] == 0
    assert v.js("qkvViewer.state()")["layer"] == 0
    assert v.page.input_value("#head") == "0"
    # the matrix view redraws per head too
    v.page.click("button[data-view=matrix]")
    before = v.canvas_hash("matrix-canvas")
    v.page.select_option("#head", "1")
    assert v.canvas_hash("matrix-canvas") != before
    v.assert_clean()


def test_matrix_tooltip_shows_the_weight_under_the_mouse(open_viewer, example):
    path, weights, tokens = example
    v = open_viewer(path)
    v.page.select_option("#kind", "cross")
    v.page.click("button[data-view=matrix]")
    v.page.select_option("#layer", "1")
    v.page.select_option("#head", "2")
    w = weights["cross"][1, 2]
    for i, j in ((0, 0), (3, 4), (5, 1), (2, 2)):
        at = v.js(f"qkvViewer.matrixCellCenter({i}, {j})")
        v.page.mouse.move(at["x"], at["y"])
        first = v.tooltip().split("\n")[0]
        m = re.fullmatch(r"(.*) -> (.*): (\d+\.\d{4})", first)
        assert m, first
        assert (m.group(1), m.group(2)) == (tokens["target"][i], tokens["source"][j])
        assert abs(float(m.group(3)) - float(w[i, j])) <= 5e-5 + 1e-5
        hit = v.js("([x, y]) => qkvViewer.matrixWeightAt(x, y)", [at["x"], at["y"]])
        assert (hit["i"], hit["j"]) == (i, j)
        assert abs(hit["weight"] - float(w[i, j])) < 2e-5
    # the mean over heads
    v.page.select_option("#head", "all")
    at = v.js("qkvViewer.matrixCellCenter(4, 0)")
    v.page.mouse.move(at["x"], at["y"])
    shown = float(v.tooltip().split("\n")[0].rsplit(": ", 1)[1])
    assert abs(shown - float(weights["cross"][1, :, 4, 0].mean())) <= 7e-5
    v.assert_clean()


def test_head_view_hover_isolates_a_token_and_lists_its_weights(open_viewer, example):
    path, weights, tokens = example
    v = open_viewer(path)
    v.page.select_option("#kind", "cross")
    v.page.select_option("#head", "0")
    plain = v.canvas_hash("head-canvas")
    at = v.js("qkvViewer.headTokenCenter('q', 2)")
    v.page.mouse.move(at["x"], at["y"])
    assert v.js("qkvViewer.state().focus") == {"side": "q", "i": 2}
    assert v.canvas_hash("head-canvas") != plain
    lines = v.tooltip().split("\n")
    assert lines[0].startswith("query cat (2)")
    row = weights["cross"][0, 0, 2]
    best = int(row.argmax())
    m = re.fullmatch(r"-> (.*) \((\d+)\): (\d+\.\d{4})", lines[1])
    assert (m.group(1), int(m.group(2))) == (tokens["source"][best], best)
    assert abs(float(m.group(3)) - float(row[best])) <= 6e-5
    # hovering a key isolates the lines into it
    at = v.js("qkvViewer.headTokenCenter('k', 4)")
    v.page.mouse.move(at["x"], at["y"])
    assert v.js("qkvViewer.state().focus") == {"side": "k", "i": 4}
    v.page.mouse.move(1, 1)
    assert v.js("qkvViewer.state().focus") is None
    assert v.canvas_hash("head-canvas") == plain
    v.assert_clean()


def test_model_view_thumbnail_opens_the_head(open_viewer, example):
    v = open_viewer(example[0])
    v.page.click("button[data-view=model]")
    thumbs = v.page.locator("#model-grid canvas")
    assert thumbs.count() == 2 * 3
    hashes = {
        tuple(v.page.evaluate(CANVAS_HASH.replace("document.getElementById(id)", "id"), t))
        for t in thumbs.element_handles()
    }
    assert len(hashes) == 6  # every head draws differently
    v.page.click("#model-grid canvas[data-layer='1'][data-head='2']")
    assert v.js("qkvViewer.state()") == {
        "kind": "encoder",
        "layer": 1,
        "head": 2,
        "view": "matrix",
        "focus": None,
    }
    assert v.page.is_visible("#matrix-canvas")
    assert not v.page.is_visible("#model-grid")
    v.assert_clean()


def test_screenshot_is_not_blank(open_viewer, example):
    pil = pytest.importorskip("PIL.Image")
    np = pytest.importorskip("numpy")
    v = open_viewer(example[0])
    for view in ("head", "matrix", "model"):
        v.page.click(f"button[data-view={view}]")
        image = np.asarray(pil.open(io.BytesIO(v.page.screenshot())).convert("RGB")).astype(np.int64)
        assert image.std() > 10, view
        colours = image[..., 0] * 65536 + image[..., 1] * 256 + image[..., 2]
        assert len(np.unique(colours)) > 50, view
    v.assert_clean()


def test_hostile_tokens_stay_text(open_viewer, tmp_path):
    w = softmax_weights(1, 2, len(XSS), len(XSS))
    path = tmp_path / "xss.html"
    title = "<img src=x onerror=alert(3)> & </title>"
    save_html(path, w, XSS, title=title, scores={"rollout": [1.0, 2.0, 3.0, 4.0, 5.0]}, view="matrix")
    v = open_viewer(path)
    assert v.js("document.querySelectorAll('img, b, iframe').length") == 0
    assert v.js("window.__pwned") is None
    assert v.page.locator(".chip").all_text_contents() == XSS
    assert v.page.locator(".chip").first.get_attribute("title").startswith(XSS_TOKEN)
    assert v.page.title() == title
    assert v.page.inner_text("#qkv-title") == title
    at = v.js("qkvViewer.matrixCellCenter(0, 1)")
    v.page.mouse.move(at["x"], at["y"])
    assert v.tooltip().split("\n")[0].startswith(f"{XSS[0]} -> {XSS[1]}: ")
    v.page.click("button[data-view=head]")
    at = v.js("qkvViewer.headTokenCenter('q', 0)")
    v.page.mouse.move(at["x"], at["y"])
    assert XSS_TOKEN in v.tooltip()
    v.assert_clean()


def test_512_tokens_render_and_respond(open_viewer, tmp_path, capsys, record_property):
    t = 512
    path = tmp_path / "long.html"
    save_html(path, softmax_weights(2, 2, t, t), [f"w{i}" for i in range(t)])
    v = open_viewer(path)
    assert not v.page.is_visible("#kind")  # one kind: no kind selector
    lines = v.js("qkvViewer.lines")
    assert lines["drawn"] == min(lines["total"], 3000)
    start = time.perf_counter()
    v.page.select_option("#head", "1")
    v.js(RASTERIZE)
    switch_s = time.perf_counter() - start
    assert v.js("qkvViewer.state().head") == 1
    ms = {
        name: v.timed(call, arg)
        for name, call, arg in (
            ("head", "setHead", 0),
            ("all heads", "setHead", "all"),
            ("layer", "setLayer", 1),
            ("matrix view", "setView", "matrix"),
            ("model view", "setView", "model"),
        )
    }
    record_property("t512_load_s", v.load_s)
    record_property("t512_switch_head_s", switch_s)
    with capsys.disabled():
        print(
            f"\nqkv viewer, 2 layers x 2 heads x {t} tokens ({path.stat().st_size / 1e6:.2f} MB): "
            f"first render {v.load_s:.2f} s, head switch {switch_s * 1000:.0f} ms (wall, from the <select>); "
            + ", ".join(f"{name} {value:.0f} ms" for name, value in ms.items())
        )
    assert v.load_s < 5
    assert switch_s < 5
    assert max(ms.values()) < 5000
    v.assert_clean()


def test_minilm_sized_page_size_and_first_render(open_viewer, tmp_path, capsys, record_property):
    path = tmp_path / "minilm.html"
    save_html(path, softmax_weights(6, 12, 128, 128), [f"tok{i}" for i in range(128)])
    size = path.stat().st_size
    v = open_viewer(path)
    timings = v.js("qkvViewer.timings")
    model_ms = v.timed("setView", "model")
    all_ms = v.timed("setHead", "all") + v.timed("setView", "head")
    record_property("minilm_html_bytes", size)
    record_property("minilm_first_render_s", v.load_s)
    with capsys.disabled():
        print(
            f"\nqkv viewer, 6 layers x 12 heads x 128 tokens: {size / 1e6:.2f} MB, first render {v.load_s:.2f} s "
            f"(decode {timings['decode']:.0f} ms, drawing {timings['firstDraw']:.0f} ms of script), "
            f"model view (72 thumbnails) {model_ms:.0f} ms, all 12 heads in the head view {all_ms:.0f} ms"
        )
    assert size < 5_000_000
    assert v.load_s < 5  # target: 2 s
    assert v.page.is_visible("#head-canvas")  # back in the head view
    assert not v.page.is_visible("#model-grid")
    v.assert_clean()


# Canvas pixels by hue: how many strongly coloured pixels lie within 12 degrees of each hue
HUE_COUNTS = """([id, hues]) => {
  const c = document.getElementById(id);
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const counts = hues.map(() => 0);
  for (let p = 0; p < d.length; p += 4) {
    const r = d[p] / 255, g = d[p + 1] / 255, b = d[p + 2] / 255;
    const max = Math.max(r, g, b), min = Math.min(r, g, b), chroma = max - min;
    if (chroma < 0.15) continue;  // white, grey and black text
    let h = max === r ? ((g - b) / chroma) % 6 : max === g ? (b - r) / chroma + 2 : (r - g) / chroma + 4;
    h = (h * 60 + 360) % 360;
    hues.forEach((want, i) => {
      const diff = Math.abs(h - want);
      if (Math.min(diff, 360 - diff) <= 12) counts[i] += 1;
    });
  }
  return counts;
}"""
BIDI_TOKENS = ["abc\u202edef", "\u2066x\u2069", "\u200eL\u200f", "\u061cA", "\u202dZ\u202c", "plain"]
BIDI_SHOWN = [
    "abc\u27e8U+202E\u27e9def",
    "\u27e8U+2066\u27e9x\u27e8U+2069\u27e9",
    "\u27e8U+200E\u27e9L\u27e8U+200F\u27e9",
    "\u27e8U+061C\u27e9A",
    "\u27e8U+202D\u27e9Z\u27e8U+202C\u27e9",
    "plain",
]


@pytest.fixture(scope="module")
def bert_page(tmp_path_factory):
    """One sequence (as BERT's): 2 layers x 3 heads of self-attention, one token list, scores."""
    gen = torch.Generator().manual_seed(3)
    tokens = ["[CLS]", "the", "cat", "sat", "on", "mat", "[SEP]"]
    w = torch.softmax(3 * torch.randn(2, 3, 7, 7, generator=gen, dtype=torch.float64), dim=-1)
    path = tmp_path_factory.mktemp("bert") / "bert.html"
    save_html(
        path, w, tokens, title="MiniLM-like", scores={"grad_rollout": [0.2, 0.5, 1, 0.4, 0.1, 0.9, 0.2]}
    )
    return path


def test_head_view_draws_every_head_in_its_colour_then_one(open_viewer, bert_page):
    """The head view used to open on head 0 alone, in one faint blue: now every head is drawn,
    one colour per head (hues 0, 120, 240 for 3 heads), and picking a head leaves its colour only."""
    v = open_viewer(bert_page)
    hues = [0, 120, 240]
    lines = v.js("qkvViewer.lines")
    assert lines["heads"] == [0, 1, 2]
    assert len(set(lines["colours"].values())) == 3
    assert v.page.locator("#head-legend span").all_text_contents() == ["head 0", "head 1", "head 2"]
    counts = v.js(HUE_COUNTS, ["head-canvas", hues])
    assert min(counts) > 150, counts  # every head's colour is on screen
    v.page.select_option("#head", "1")
    assert v.js("qkvViewer.lines")["heads"] == [1]
    assert v.page.locator("#head-legend span").all_text_contents() == ["head 1"]
    red, green, blue = v.js(HUE_COUNTS, ["head-canvas", hues])
    assert green > 150 and red == 0 and blue == 0, (red, green, blue)
    # the strongest line of the head is opaque (the faint head had opacity = weight): head 1 is
    # hsl(120, 70%, 42%) = rgb(32, 182, 32); over white, opacity a leaves red at 255 - 223 a
    reddest = v.js("""() => {
      const c = document.getElementById("head-canvas");
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let least = 255;
      for (let p = 0; p < d.length; p += 4) {
        if (d[p + 1] - d[p] > 40) least = Math.min(least, d[p]);
      }
      return least;
    }""")
    assert reddest < 45, reddest
    v.page.keyboard.press("ArrowRight")
    assert v.js("qkvViewer.lines")["heads"] == [2]
    v.assert_clean()


def test_axes_are_named_by_the_kind_of_attention(open_viewer, bert_page, example):
    v = open_viewer(bert_page)  # one sequence: tokens, queries, keys
    assert v.js("qkvViewer.labels()") == {"queries": "queries", "keys": "keys", "sides": {"source": "tokens"}}
    assert v.page.inner_text(".score-side") == "tokens"
    v.page.click("button[data-view=matrix]")
    assert v.page.inner_text("#matrix-hint").startswith("Rows: queries. Columns: keys. ")
    assert "source" not in v.page.inner_text("body")
    v.assert_clean()
    v = open_viewer(example[0])  # a translation: each axis says its side
    labels = {
        kind: v.js(f"(qkvViewer.setKind('{kind}'), qkvViewer.labels())") for kind in ("encoder", "cross")
    }
    assert (labels["encoder"]["queries"], labels["encoder"]["keys"]) == ("queries (source)", "keys (source)")
    assert (labels["cross"]["queries"], labels["cross"]["keys"]) == ("queries (target)", "keys (source)")
    assert labels["cross"]["sides"] == {"source": "source", "target": "target"}
    v.page.click("button[data-view=matrix]")
    assert v.page.inner_text("#matrix-hint").startswith("Rows: queries (target). Columns: keys (source). ")
    v.assert_clean()


def test_bidi_controls_are_shown_never_applied(open_viewer, tmp_path):
    """A token with U+202E (right-to-left override) used to reverse itself and the text after it;
    every bidi control now shows as its code point, in chips, tooltips, title and canvas."""
    w = softmax_weights(1, 2, len(BIDI_TOKENS), len(BIDI_TOKENS))
    path = tmp_path / "bidi.html"
    title = "evil \u202etxt.exe"
    save_html(path, w, BIDI_TOKENS, title=title, scores={"rollout": [1.0] * len(BIDI_TOKENS)})
    assert "\u202e" in path.read_text(encoding="utf-8")  # the data keeps the exact strings
    v = open_viewer(path)
    assert v.page.locator(".chip").all_text_contents() == BIDI_SHOWN
    assert v.page.inner_text("#qkv-title") == "evil \u27e8U+202E\u27e9txt.exe"
    assert v.page.title() == "evil \u27e8U+202E\u27e9txt.exe"
    assert v.js("qkvViewer.visible('a\u2067b')") == "a\u27e8U+2067\u27e9b"
    controls = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    assert v.js("([s]) => [...document.body.innerText].filter((c) => s.includes(c)).length", [controls]) == 0
    at = v.js("qkvViewer.headTokenCenter('q', 0)")
    v.page.mouse.move(at["x"], at["y"])
    assert v.tooltip().startswith(f"query {BIDI_SHOWN[0]} (0), ")
    v.page.click("button[data-view=matrix]")
    at = v.js("qkvViewer.matrixCellCenter(0, 1)")
    v.page.mouse.move(at["x"], at["y"])
    assert v.tooltip().split("\n")[0].startswith(f"{BIDI_SHOWN[0]} -> {BIDI_SHOWN[1]}: ")
    # the chip of the override token reads left to right: "abc" before "def" on screen
    box = v.page.locator(".chip").nth(0).bounding_box()
    assert box["width"] > 60  # the code point takes room: it is drawn, not applied
    v.assert_clean()
