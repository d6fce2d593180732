"""qkv.viz HTML viewer, without a browser: data contract, exact round trip, escaping, size, errors."""

from __future__ import annotations

import base64
import json
import re
import time
from importlib import resources

import pytest
import torch

import qkv
from qkv.viz import render_html, save_html

DATA_RE = re.compile(r'<script type="application/json" id="qkv-data">(.*?)</script>', re.S)
XSS = ["</script><img src=x onerror=alert(1)>", '"onmouseover="alert(2)', "<b>&amp;</b>", "a\u2028b", "it's"]


def softmax_weights(*shape: int) -> torch.Tensor:
    return torch.softmax(3 * torch.randn(*shape, dtype=torch.float64), dim=-1)


def payload_of(page: str) -> dict:
    found = DATA_RE.findall(page)
    assert len(found) == 1
    return json.loads(found[0])


def decoded(kind: dict) -> torch.Tensor:
    """The weights the page will show, (L, H, Tq, Tk), decoded as the viewer's script does."""
    raw = torch.frombuffer(bytearray(base64.b64decode(kind["data"])), dtype=torch.uint8).to(torch.float64)
    codes = raw[0::2] + 256 * raw[1::2]  # little-endian uint16
    lo = torch.tensor(kind["lo"], dtype=torch.float64)[:, None]
    hi = torch.tensor(kind["hi"], dtype=torch.float64)[:, None]
    values = lo + codes.reshape(len(kind["lo"]), -1) * (hi - lo) / 65535
    return values.reshape(kind["layers"], kind["heads"], kind["tq"], kind["tk"])


def template(name: str) -> str:
    return resources.files("qkv.viz").joinpath("templates", name).read_text(encoding="utf-8")


def test_weights_round_trip_within_16_bit_quantization():
    w = softmax_weights(2, 3, 5, 5)
    kind = payload_of(render_html(w, list("abcde")))["kinds"][0]
    assert (kind["name"], kind["queries"], kind["keys"]) == ("encoder", "source", "source")
    got = decoded(kind)
    span = (w.amax((-1, -2)) - w.amin((-1, -2)))[..., None, None]  # per head matrix
    assert ((got - w).abs() <= span / 131070 + 1e-12).all()
    assert (got - w).abs().max() < 1e-5


def test_constant_and_negative_matrices_are_exact_or_bounded():
    w = torch.full((1, 1, 3, 3), 1 / 3, dtype=torch.float64)
    assert torch.equal(decoded(payload_of(render_html(w))["kinds"][0]), w)
    signed = torch.randn(1, 2, 4, 4, dtype=torch.float64)  # e.g. gradient-weighted attention
    got = decoded(payload_of(render_html(signed))["kinds"][0])
    assert (got - signed).abs().max() <= float(signed.max() - signed.min()) / 131070 + 1e-12


def test_attention_maps_kinds_sides_and_batch_index():
    enc = [softmax_weights(2, 2, 4, 4) for _ in range(3)]  # list over layers of (B, H, Tq, Tk)
    dec = [softmax_weights(2, 1, 3, 3)]
    cross = [softmax_weights(2, 1, 3, 4)]
    maps = qkv.AttentionMaps(encoder=enc, decoder=dec, cross=cross)
    tokens = {"source": ["a", "b", "c", "d"], "target": ["x", "y", "z"]}
    p = payload_of(render_html(maps, tokens, batch_index=1))
    by_name = {k["name"]: k for k in p["kinds"]}
    assert [k["name"] for k in p["kinds"]] == ["encoder", "decoder", "cross"]
    assert (by_name["cross"]["queries"], by_name["cross"]["keys"]) == ("target", "source")
    assert (by_name["decoder"]["queries"], by_name["decoder"]["keys"]) == ("target", "target")
    assert p["tokens"] == tokens
    assert (decoded(by_name["encoder"]) - torch.stack([t[1] for t in enc])).abs().max() < 1e-5
    assert (decoded(by_name["cross"]) - cross[0][1][None]).abs().max() < 1e-5
    assert (decoded(by_name["cross"]) - cross[0][0][None]).abs().max() > 1e-2  # batch 0 differs


def test_numpy_lists_and_tensors_give_the_same_page():
    np = pytest.importorskip("numpy")
    w = softmax_weights(1, 2, 3, 3)
    pages = {render_html({"decoder": v}, ["a", "b", "c"]) for v in (w, w.numpy(), w.tolist(), [w[0]])}
    assert len(pages) == 1
    assert isinstance(np.asarray(w), np.ndarray)


def test_tokens_default_to_positions_and_scores_attach_to_sides():
    p = payload_of(render_html({"cross": softmax_weights(1, 1, 2, 3)}))
    assert p["tokens"] == {"target": ["0", "1"], "source": ["0", "1", "2"]}
    scores = {"rollout": [0.5, 0.25, 0.25], "integrated_gradients": {"target": [1.0, -2.0]}}
    p = payload_of(render_html({"cross": softmax_weights(1, 1, 2, 3)}, scores=scores))
    assert p["scores"] == [
        {"name": "rollout", "side": "source", "values": [0.5, 0.25, 0.25]},
        {"name": "integrated_gradients", "side": "target", "values": [1.0, -2.0]},
    ]


def test_tokens_cannot_break_out_of_the_data_script():
    page = render_html(softmax_weights(1, 1, 5, 5), XSS, title="</title><script>alert(3)</script>")
    # one closing tag for the data and one for the viewer script: no token closed anything
    assert len(re.findall(r"</script", page, flags=re.I)) == 2
    assert "<img" not in page
    assert "<b>" not in page
    assert "\u2028" not in page
    assert "<title>&lt;/title&gt;&lt;script&gt;alert(3)&lt;/script&gt;</title>" in page
    p = payload_of(page)
    assert p["tokens"]["source"] == XSS  # escapes decode back to the exact strings
    assert p["title"] == "</title><script>alert(3)</script>"


def test_page_is_self_contained():
    page = render_html(softmax_weights(1, 2, 4, 4), list("abcd"), scores={"rollout": [1, 2, 3, 4]})
    assert "http://" not in page
    assert "https://" not in page
    assert not re.search(r"<(link|img|iframe|object|embed)\b", page, flags=re.I)
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, flags=re.I)
    assert not re.search(r"\b(src|href)\s*=", page.replace(DATA_RE.search(page).group(1), ""), flags=re.I)


@pytest.mark.parametrize(
    "name",
    ["common.js", "arcs.js", "viewer.js", "viewer.css", "viewer.html", "image.js", "image.css", "image.html"],
)
def test_templates_use_no_network_and_no_html_sinks(name):
    text = template(name)
    assert "http:" not in text
    assert "https:" not in text
    assert "//cdn" not in text.lower()
    assert "@import" not in text
    assert "url(" not in text
    if not name.endswith(".html"):
        assert not re.search(r"</(script|style)", text, flags=re.I)
    if name.endswith(".js"):
        for sink in (
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "fetch(",
        ):
            assert sink not in text, sink


def test_minilm_sized_page_is_under_5_mb(record_property):
    w = softmax_weights(6, 12, 128, 128)  # all-MiniLM-L6-v2 on 128 tokens: 1.2M weights
    tokens = [f"tok{i}" for i in range(128)]
    start = time.perf_counter()
    page = render_html(w, tokens)
    seconds = time.perf_counter() - start
    size = len(page.encode("utf-8"))
    record_property("minilm_html_bytes", size)
    record_property("minilm_render_html_s", seconds)
    assert size < 5_000_000
    assert size > 2 * w.numel()  # the weights really are in there (2 bytes each before base64)
    assert seconds < 10


def test_save_html_writes_the_page(tmp_path):
    w = softmax_weights(1, 1, 2, 2)
    path = save_html(tmp_path / "a.html", w, ["x", "y"], title="t")
    assert path.read_text(encoding="utf-8") == render_html(w, ["x", "y"], title="t")
    with pytest.raises(
        ValueError, match=r"^path: expected a file name ending in .html or .htm, got '.*a\.txt'"
    ):
        save_html(tmp_path / "a.txt", w)


def test_errors_name_the_argument():
    w = softmax_weights(1, 2, 3, 3)
    with pytest.raises(ValueError, match=r"^data: unknown attention kind 'self'; expected some of encoder"):
        render_html({"self": w})
    with pytest.raises(ValueError, match=r"^data: no attention weights given"):
        render_html({})
    with pytest.raises(ValueError, match=r"^data: no attention weights given"):
        render_html(qkv.AttentionMaps())
    with pytest.raises(ValueError, match=r"^tokens: expected 3 labels .* got 2"):
        render_html(w, ["a", "b"])
    with pytest.raises(
        ValueError, match=r"^tokens: one list was given but the source has 4 and the target 3"
    ):
        render_html({"cross": softmax_weights(1, 1, 3, 4)}, list("abc"))
    with pytest.raises(ValueError, match=r"^tokens: the attention needs target tokens"):
        render_html({"cross": softmax_weights(1, 1, 3, 4)}, {"source": list("abcd")})
    bad = w.clone()
    bad[0, 1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^data\['encoder'\]: non-finite weight .* layer 0, head 1"):
        render_html(bad)
    with pytest.raises(
        ValueError, match=r"^batch_index: 5 is out of range for data\['encoder'\]\[0\] with batch size 1"
    ):
        render_html({"encoder": [w]}, batch_index=5)
    with pytest.raises(ValueError, match=r"^data\['decoder'\]: self-attention needs Tq == Tk"):
        render_html({"decoder": softmax_weights(1, 1, 3, 4)})
    with pytest.raises(
        ValueError, match=r"^scores\['rollout'\]: expected 3 values \(one per source token\), got 2"
    ):
        render_html(w, scores={"rollout": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"^scores\['ig'\]\['target'\]: there are no 'target' tokens"):
        render_html(w, scores={"ig": {"target": [1.0, 2.0, 3.0]}})
    with pytest.raises(ValueError, match=r"^view: expected one of head, model, matrix, got 'grid'"):
        render_html(w, view="grid")
    with pytest.raises(
        ValueError, match=r"^data: the cross attention has 5 key positions but another kind has 3"
    ):
        render_html({"encoder": w, "cross": softmax_weights(1, 1, 2, 5)})
    with pytest.raises(
        ValueError, match=r"^data\['encoder'\]: expected attention weights of shape \(L, H, Tq, Tk\)"
    ):
        render_html(torch.rand(1, 1, 1, 1, 2, 2))


def test_axis_labels_follow_the_kind_of_attention():
    """One sequence (BERT) is "tokens" with "queries" and "keys" axes, not "source"; a
    translation names the side of each axis."""
    p = payload_of(render_html(softmax_weights(1, 2, 3, 3), ["[CLS]", "hi", "[SEP]"]))
    kind = p["kinds"][0]
    assert (kind["queryLabel"], kind["keyLabel"]) == ("queries", "keys")
    assert p["sideLabels"] == {"source": "tokens"}
    maps = {"encoder": softmax_weights(1, 1, 4, 4), "cross": softmax_weights(1, 1, 3, 4)}
    p = payload_of(render_html(maps, {"source": list("abcd"), "target": list("xyz")}))
    labels = {k["name"]: (k["queryLabel"], k["keyLabel"]) for k in p["kinds"]}
    assert labels == {
        "encoder": ("queries (source)", "keys (source)"),
        "cross": ("queries (target)", "keys (source)"),
    }
    assert p["sideLabels"] == {"source": "source", "target": "target"}
    assert "source" not in template("viewer.js").split("KIND_LABELS")[0].split("BIDI")[-1]


def test_bidi_controls_in_the_title_are_shown_and_the_data_kept():
    tokens = ["a\u202eb", "c"]
    page = render_html(softmax_weights(1, 1, 2, 2), tokens, title="x\u202ey")
    assert "<title>x\u27e8U+202E\u27e9y</title>" in page
    p = payload_of(page)
    assert p["tokens"]["source"] == tokens and p["title"] == "x\u202ey"  # shown by the script
    js = template("common.js")  # shared by both viewers
    assert "\\u061C\\u200E\\u200F\\u202A-\\u202E\\u2066-\\u2069" in js
