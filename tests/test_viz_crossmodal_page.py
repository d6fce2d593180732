"""The viewer's cross-modal page as data: what is embedded is what was given, nothing points
outside the file, bad input is named."""

from __future__ import annotations

import base64
import re

import pytest
import torch

from qkv.viz import render_crossmodal_html, save_crossmodal_html
from test_viz_image_page import payload_of, pixels_of

XSS = "</script><img src=x onerror=alert(1)>"


def weights_of(p: dict) -> torch.Tensor:
    a = p["attention"]
    raw = torch.frombuffer(bytearray(base64.b64decode(a["data"])), dtype=torch.uint8).to(torch.float64)
    codes = raw[0::2] + 256 * raw[1::2]  # little-endian uint16
    lo = torch.tensor(a["lo"], dtype=torch.float64)[:, None]
    hi = torch.tensor(a["hi"], dtype=torch.float64)[:, None]
    values = lo + codes.reshape(len(a["lo"]), -1) * (hi - lo) / 65535
    return values.reshape(a["layers"], a["heads"], a["words"], a["patches"])


def test_a_strip_with_two_layers_of_cross_attention_is_embedded_exactly():
    image = torch.randint(0, 256, (8, 32), dtype=torch.uint8)
    w = torch.softmax(3 * torch.randn(2, 4, 3, 16, dtype=torch.float64), dim=-1)
    page = render_crossmodal_html(image, [w[0][None], w[1][None]], ["forty", "two", XSS], grid=(2, 8))
    p = payload_of(page)
    assert (p["mode"], p["grid"], p["words"]) == ("crossmodal", {"h": 2, "w": 8}, ["forty", "two", XSS])
    assert torch.equal(pixels_of(p)[:, :, 0], image)
    span = (w.amax((-1, -2)) - w.amin((-1, -2)))[..., None, None]
    assert ((weights_of(p) - w).abs() <= span / 131070 + 1e-12).all()
    assert XSS not in page  # the word is in the JSON with its "<" escaped, never as markup
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, flags=re.I)


def test_one_map_is_one_layer_and_one_head_and_the_grid_is_inferred():
    p = payload_of(render_crossmodal_html(torch.zeros(8, 32), torch.full((2, 4), 0.25), ["a", "b"]))
    a = p["attention"]
    assert (a["layers"], a["heads"], a["words"], a["patches"], p["grid"]) == (1, 1, 2, 4, {"h": 1, "w": 4})


@pytest.mark.parametrize(
    ("attention", "words", "message"),
    [
        (
            torch.full((3, 4), 0.25),
            ["a", "b"],
            r"attention: expected one row per word \(2 words\), got 3 rows",
        ),
        (torch.full((2, 4), float("nan")), ["a", "b"], r"attention: non-finite weight .* layer 0, head 0"),
        (torch.full((0, 4), 0.25), [], r"words: expected at least one word, got none"),
        (torch.full((2, 5), 0.2), ["a", "b"], r"grid: cannot infer the patch grid: 5 patch tokens"),
    ],
)
def test_bad_input_names_the_argument(attention, words, message):
    with pytest.raises(ValueError, match=message):
        render_crossmodal_html(torch.zeros(8, 32), attention, words)


def test_save_wants_an_html_file_name(tmp_path):
    with pytest.raises(ValueError, match=r"path: expected a file name ending in \.html or \.htm"):
        save_crossmodal_html(tmp_path / "x.png", torch.zeros(8, 32), torch.full((1, 4), 0.25), ["a"])
    path = save_crossmodal_html(tmp_path / "x.html", torch.zeros(8, 32), torch.full((1, 4), 0.25), ["a"])
    assert payload_of(path.read_text(encoding="utf-8"))["words"] == ["a"]
