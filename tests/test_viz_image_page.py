"""The viewer's image page as data: what is embedded is what was given, bad input is named."""

from __future__ import annotations

import base64
import json
import re

import pytest
import torch

from qkv.viz import render_image_html, save_image_html

DATA_RE = re.compile(r'<script type="application/json" id="qkv-data">(.*?)</script>', re.S)
XSS = "</script><img src=x onerror=alert(1)>"


def softmax_weights(*shape: int) -> torch.Tensor:
    return torch.softmax(3 * torch.randn(*shape, dtype=torch.float64), dim=-1)


def payload_of(page: str) -> dict:
    found = DATA_RE.findall(page)
    assert len(found) == 1
    return json.loads(found[0])


def pixels_of(p: dict) -> torch.Tensor:
    img = p["image"]
    raw = torch.frombuffer(bytearray(base64.b64decode(img["pixels"])), dtype=torch.uint8)
    return raw.reshape(img["height"], img["width"], img["channels"])  # (H, W, C)


def weights_of(p: dict) -> torch.Tensor:
    a = p["attention"]
    raw = torch.frombuffer(bytearray(base64.b64decode(a["data"])), dtype=torch.uint8).to(torch.float64)
    codes = raw[0::2] + 256 * raw[1::2]  # little-endian uint16
    lo = torch.tensor(a["lo"], dtype=torch.float64)[:, None]
    hi = torch.tensor(a["hi"], dtype=torch.float64)[:, None]
    values = lo + codes.reshape(len(a["lo"]), -1) * (hi - lo) / 65535
    return values.reshape(a["layers"], a["heads"], a["tokens"], a["tokens"])


def test_a_28x28_digit_with_6_layers_and_8_heads_is_embedded_exactly():
    image = torch.randint(0, 256, (28, 28), dtype=torch.uint8)
    w = softmax_weights(6, 8, 50, 50)  # class token + 7 x 7 patches of 4 x 4 pixels
    rollout = torch.rand(7, 7, dtype=torch.float64)
    p = payload_of(render_image_html(image, w, maps={"rollout": rollout}, title="digit 3"))
    assert (p["mode"], p["title"], p["prefix"], p["grid"]) == ("image", "digit 3", 1, {"h": 7, "w": 7})
    assert (p["image"]["height"], p["image"]["width"], p["image"]["channels"]) == (28, 28, 1)
    assert torch.equal(pixels_of(p)[:, :, 0], image)
    got = weights_of(p)
    span = (w.amax((-1, -2)) - w.amin((-1, -2)))[..., None, None]
    assert ((got - w).abs() <= span / 131070 + 1e-12).all()
    assert [m["name"] for m in p["maps"]] == ["rollout"]
    assert torch.allclose(
        torch.tensor(p["maps"][0]["values"], dtype=torch.float64), rollout.flatten(), atol=1e-7
    )


def test_rgb_pixels_are_interleaved_row_by_row_and_floats_scaled():
    image = torch.rand(3, 8, 12, dtype=torch.float64)
    p = payload_of(render_image_html(image, softmax_weights(1, 2, 1 + 6, 1 + 6)))  # 2 x 3 patches of 4 x 4
    assert p["grid"] == {"h": 2, "w": 3}
    assert torch.equal(pixels_of(p), torch.round(image * 255).to(torch.uint8).permute(1, 2, 0))


def test_registers_and_an_explicit_grid():
    w = [softmax_weights(1, 2, 5 + 8, 5 + 8) for _ in range(3)]  # a list over layers, (B, H, T, T)
    p = payload_of(render_image_html(torch.zeros(8, 16), w, prefix=5, grid=(2, 4), batch_index=0))
    assert (p["prefix"], p["grid"], p["attention"]["layers"], p["attention"]["heads"]) == (
        5,
        {"h": 2, "w": 4},
        3,
        2,
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"maps": {"rollout": torch.rand(4, 4)}},
            ValueError,
            r"maps\['rollout'\]: expected the patch grid's shape \(7, 7\), got \(4, 4\)",
        ),
        (
            {"maps": {"ig": torch.full((7, 7), float("nan"))}},
            ValueError,
            r"maps\['ig'\]: expected finite values",
        ),
        (
            {"maps": {"attention": torch.rand(7, 7)}},
            ValueError,
            r"maps: 'attention' names the page's own overlay",
        ),
        ({"maps": [torch.rand(7, 7)]}, TypeError, r"maps: expected a mapping"),
        ({"prefix": 50}, ValueError, r"prefix: expected an int in \[0, 50\)"),
        (
            {"prefix": 2},
            ValueError,
            r"grid: cannot infer the patch grid: 48 patch tokens \(T=50 minus prefix=2\)",
        ),
        ({"grid": (5, 10)}, ValueError, r"grid: expected h \* w == 49 patch tokens"),
    ],
)
def test_bad_input_is_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        render_image_html(torch.zeros(28, 28), softmax_weights(2, 2, 50, 50), **kwargs)


def test_bad_attention_and_image_are_named(tmp_path):
    with pytest.raises(
        ValueError, match=r"attention: expected self-attention \(heads, T, T\) per layer, got \(2, 50, 49\)"
    ):
        render_image_html(torch.zeros(28, 28), softmax_weights(1, 2, 50, 49))
    bad = softmax_weights(2, 2, 50, 50)
    bad[1, 1, 3, 3] = float("inf")
    with pytest.raises(ValueError, match=r"attention: non-finite weight \(NaN or inf\) in layer 1, head 1"):
        render_image_html(torch.zeros(28, 28), bad)
    with pytest.raises(ValueError, match=r"image: expected an image of shape"):
        render_image_html(torch.zeros(28, 28, 3), softmax_weights(1, 1, 50, 50))
    with pytest.raises(ValueError, match=r"path: expected a file name ending in \.html"):
        save_image_html(tmp_path / "page.png", torch.zeros(28, 28), softmax_weights(1, 1, 50, 50))


def test_names_stay_data_and_the_page_is_self_contained(tmp_path):
    page = render_image_html(
        torch.zeros(28, 28), softmax_weights(1, 1, 50, 50), maps={XSS: torch.rand(7, 7)}, title=XSS
    )
    assert len(re.findall(r"</script", page, flags=re.I)) == 2  # the data's and the script's own
    assert "<img" not in page
    p = payload_of(page)
    assert p["title"] == XSS and p["maps"][0]["name"] == XSS
    page = render_image_html(
        torch.zeros(28, 28), softmax_weights(1, 1, 50, 50), maps={"ig": torch.rand(7, 7)}
    )
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(link|img|iframe|object|embed)\b", page, flags=re.I)
    assert not re.search(r"\b(src|href)\s*=", page.replace(DATA_RE.search(page).group(1), ""), flags=re.I)
    out = save_image_html(tmp_path / "page.html", torch.zeros(28, 28), softmax_weights(1, 1, 50, 50))
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
