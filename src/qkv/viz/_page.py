"""The plumbing the viewer pages share: templates read from package data, 16-bit weights, an
image's pixels, JSON that cannot close its script element, and the page put together from its
parts."""

from __future__ import annotations

import base64
import ctypes
import html as _html
import json
import re
from importlib import resources

import torch
from torch import Tensor

from ._inputs import visible_text
from ._patches import as_image

__all__ = ["LEVELS", "bytes_base64", "image_payload", "quantize", "render_page", "script_json", "template"]

LEVELS = 65535  # 16-bit quantization
_SLOT = re.compile(r"\{\{(title|css|js|data)\}\}")
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def template(name: str) -> str:
    """The text of ``qkv/viz/templates/<name>``."""
    return resources.files("qkv.viz").joinpath("templates", name).read_text(encoding="utf-8")


def quantize(weights: Tensor) -> tuple[list[float], list[float], str]:
    """(L, H, Tq, Tk) -> per-head ranges and base64 of little-endian uint16 codes.

    Each ``(Tq, Tk)`` head is coded over its own ``[lo, hi]``: absolute error at most
    ``(hi - lo) / 131070``.
    """
    n_layers, n_heads, tq, tk = weights.shape
    flat = weights.reshape(n_layers * n_heads, tq * tk)  # (L*H, Tq*Tk)
    lo = flat.amin(dim=1)  # (L*H,)
    hi = flat.amax(dim=1)
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    codes = torch.round((flat - lo[:, None]) / span[:, None] * LEVELS).to(torch.int32)  # (L*H, Tq*Tk)
    pairs = torch.stack((codes & 0xFF, codes >> 8), dim=-1).to(torch.uint8).contiguous()  # (L*H, Tq*Tk, 2)
    return lo.tolist(), hi.tolist(), bytes_base64(pairs)


def bytes_base64(values: Tensor) -> str:
    """The bytes of a uint8 tensor as base64 text."""
    flat = values.to(torch.uint8).contiguous()
    # copy the contiguous CPU buffer out in one call (bytes(storage) walks it element by element,
    # and tensor.numpy() would make numpy a requirement)
    raw = ctypes.string_at(flat.data_ptr(), flat.numel())
    return base64.b64encode(raw).decode("ascii")


def image_payload(image: object) -> dict:
    """An image (see :func:`qkv.viz._patches.as_image`) as the pages embed it: ``height``,
    ``width``, ``channels`` and base64 uint8 ``pixels``, row-major with channels interleaved."""
    picture = as_image("image", image)  # (C, H, W) in [0, 1]
    channels, height, width = picture.shape
    pixels = torch.round(picture * 255).permute(1, 2, 0)  # (H, W, C): row-major, channels interleaved
    return {"height": height, "width": width, "channels": channels, "pixels": bytes_base64(pixels)}


def script_json(payload: dict) -> str:
    """JSON that is safe inside a ``<script>`` element (nothing can close it)."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return re.sub("[<>&\u2028\u2029]", lambda m: _JSON_ESCAPES[m.group(0)], text)


def render_page(page: str, *, title: str, css: list[str], js: list[str], payload: dict) -> str:
    """The template ``page`` with its title (escaped, bidi controls shown), the CSS and JS
    templates inlined in order, and the payload as script-safe JSON."""
    parts = {
        "title": _html.escape(visible_text(title)),
        "css": "\n".join(template(name) for name in css),
        "js": "\n".join(template(name) for name in js),
        "data": script_json(payload),
    }
    for name in ("css", "js"):
        if re.search(r"</(script|style)", parts[name], flags=re.I):  # pragma: no cover - packaging guard
            raise RuntimeError(f"qkv.viz {name} templates must not contain a closing script/style tag")
    return _SLOT.sub(lambda m: parts[m.group(1)], template(page))
