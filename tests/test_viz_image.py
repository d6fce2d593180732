"""qkv.viz image figures: the map lands on the right pixels, panels and titles are what was asked."""

from __future__ import annotations

import pytest
import torch

import qkv.viz as viz

matplotlib = pytest.importorskip("matplotlib", reason="qkv.viz figures need matplotlib (qkv[viz])")
np = pytest.importorskip("numpy")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def digit(height: int = 16, width: int = 16) -> torch.Tensor:
    """A uint8 grayscale image: a bright vertical bar on black."""
    img = torch.zeros(height, width, dtype=torch.uint8)
    img[:, width // 4 : width // 2] = 200
    return img


def attention(layers: int, heads: int, tokens: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(
        3 * torch.randn(layers, heads, tokens, tokens, generator=gen, dtype=torch.float64), -1
    )


def titles(axes) -> list[str]:
    return [ax.get_title() for ax in axes]


# ---------------------------------------------------------------- upsampling


def test_patch_map_spreads_each_patch_over_its_pixels():
    m = torch.arange(6, dtype=torch.float64).reshape(2, 3)  # (h, w) = (2, 3)
    pixels = viz.upsample_map(m, (8, 9))  # patches of 4 x 3 pixels
    assert pixels.shape == (8, 9)
    for y in range(8):
        for x in range(9):
            assert pixels[y, x] == m[y // 4, x // 3]


def test_pixel_map_is_returned_unchanged_and_smooth_is_bilinear():
    m = torch.rand(6, 4, dtype=torch.float64)
    assert torch.equal(viz.upsample_map(m, (6, 4)), m)
    # align_corners=False: source x = (x + 0.5) * w / W - 0.5, clamped: 0, 0.25, 0.75, 1
    smooth = viz.upsample_map([[0.0, 1.0]], (1, 4), smooth=True)
    assert smooth.tolist() == [[0.0, 0.25, 0.75, 1.0]]


@pytest.mark.parametrize(
    ("heatmap", "match"),
    [
        (
            torch.rand(3, 5),
            r"heatmap: expected the patch grid \(h, w\) dividing the image's \(16, 16\).*got \(3, 5\)",
        ),
        (torch.rand(32, 32), r"heatmap: .*got \(32, 32\)"),
        (torch.rand(1, 4, 4), r"heatmap: expected a 2-D map .* got \(1, 4, 4\)"),
        (torch.tensor([[0.0, float("nan")], [0.0, 0.0]]), r"heatmap: expected finite values"),
    ],
)
def test_maps_that_do_not_fit_the_image_are_refused(heatmap, match):
    with pytest.raises(ValueError, match=match):
        viz.image_overlay(digit(), heatmap)


# ---------------------------------------------------------------- one overlay


def test_overlay_draws_the_image_and_the_upsampled_map():
    img = digit()
    m = torch.rand(4, 4, dtype=torch.float64)
    fig = viz.image_overlay(img, m, title="rollout")
    ax = fig.axes[0]
    base, layer = ax.images
    assert np.allclose(base.get_array(), img.double().numpy() / 255)
    assert np.array_equal(layer.get_array(), viz.upsample_map(m, (16, 16)).numpy())
    assert layer.get_alpha() == 0.5
    assert layer.get_clim() == (0.0, float(m.max()))
    assert ax.get_title() == "rollout"
    assert len(fig.axes) == 2  # the overlay and its colour bar


def test_overlay_pixels_show_the_map_colour_at_full_opacity():
    m = torch.tensor([[0.0, 1.0], [0.5, 0.25]], dtype=torch.float64)
    fig = viz.image_overlay(digit(8, 8), m, alpha=1.0, colorbar=False, cmap="viridis")
    ax = fig.axes[0]
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())
    cmap = matplotlib.colormaps["viridis"]
    for r in range(2):
        for c in range(2):
            x, y = ax.transData.transform((c * 4 + 1.5, r * 4 + 1.5))  # centre of patch (r, c)
            got = pixels[round(pixels.shape[0] - y), round(x), :3] / 255
            assert np.abs(got - np.asarray(cmap(float(m[r, c]))[:3])).max() < 0.02, (r, c)


def test_rgb_and_channel_first_gray_images():
    rgb = torch.rand(3, 12, 8, dtype=torch.float64)
    fig = viz.image_overlay(rgb, torch.rand(3, 2))
    base = fig.axes[0].images[0].get_array()
    assert base.shape == (12, 8, 3)
    assert np.allclose(base, rgb.permute(1, 2, 0).numpy())
    gray = torch.rand(1, 12, 8, dtype=torch.float64) * 4 - 2  # normalized floats: rescaled to [0, 1]
    base = viz.image_overlay(gray, torch.rand(12, 8)).axes[0].images[0].get_array()
    expected = (gray[0] - gray.min()) / (gray.max() - gray.min())
    assert np.allclose(base, expected.numpy())


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (
            torch.rand(16, 16, 3),
            ValueError,
            r"image: expected an image of shape .*\(16, 16, 3\) \(channels last\?",
        ),
        (torch.rand(2, 16, 16), ValueError, r"image: .*got \(2, 16, 16\)"),
        (
            torch.full((16, 16), 300, dtype=torch.int32),
            ValueError,
            r"image: expected integer pixels in 0\.\.255",
        ),
        (torch.rand(0, 16), ValueError, r"image: expected at least one pixel"),
        ("cat.png", TypeError, r"image: expected a tensor"),
    ],
)
def test_bad_images_are_named(image, error, match):
    with pytest.raises(error, match=match):
        viz.image_overlay(image, torch.rand(4, 4))


def test_overlay_writes_png_and_checks_the_extension(tmp_path):
    out = tmp_path / "overlay.png"
    viz.image_overlay(digit(), torch.rand(4, 4), path=out)
    assert out.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match=r"path: expected a file name ending in \.png"):
        viz.image_overlay(digit(), torch.rand(4, 4), path=tmp_path / "overlay.jpg")
    with pytest.raises(ValueError, match=r"alpha: expected a number in \[0, 1\]"):
        viz.image_overlay(digit(), torch.rand(4, 4), alpha=1.5)


# ---------------------------------------------------------------- layers x heads


def test_attention_grid_panels_titles_and_maps():
    w = attention(2, 3, 1 + 16)  # class token + a 4 x 4 grid over 16 x 16 pixels
    fig = viz.image_attention_grid(digit(), w)
    panels, colorbar = fig.axes[:6], fig.axes[6:]
    assert len(colorbar) == 1
    assert titles(panels) == ["head 0", "head 1", "head 2", "", "", ""]
    assert [ax.get_ylabel() for ax in panels] == ["layer 0", "", "", "layer 1", "", ""]
    assert fig.get_suptitle() == "attention of the class token"
    for index, ax in enumerate(panels):
        layer, head = divmod(index, 3)
        expected = viz.upsample_map(w[layer, head, 0, 1:].reshape(4, 4), (16, 16))
        assert np.array_equal(ax.images[1].get_array(), expected.numpy())
        assert ax.images[1].get_clim() == (0.0, float(w[:, :, 0, 1:].max()))  # one shared range


def test_a_hand_made_pattern_lands_on_its_patch_pixels():
    # grid (2, 8) over 16 x 16 pixels: patches of 8 x 2; the query looks only at patch (1, 5)
    prefix, grid = 2, (2, 8)
    w = torch.zeros(1, 1, prefix + 16, prefix + 16, dtype=torch.float64)
    w[0, 0, 0, prefix + 1 * 8 + 5] = 1.0
    fig = viz.image_attention_grid(digit(), w, prefix=prefix, grid=grid)
    pixels = fig.axes[0].images[1].get_array()
    hot = np.argwhere(pixels == 1.0)
    assert hot[:, 0].min() == 8 and hot[:, 0].max() == 15  # rows of patch row 1
    assert hot[:, 1].min() == 10 and hot[:, 1].max() == 11  # columns of patch column 5
    assert len(hot) == 16 and pixels.sum() == 16


def test_a_patch_query_is_outlined_and_named():
    w = attention(2, 2, 1 + 16)
    query = 1 + 1 * 4 + 2  # patch (1, 2)
    fig = viz.image_attention_grid(digit(), w, query=query, layers=[1], heads=[1, 0])
    panels = fig.axes[:2]
    assert titles(panels) == ["head 1", "head 0"]
    assert fig.get_suptitle() == "attention of patch (1, 2)"
    box = panels[0].patches[0]
    assert (box.get_x(), box.get_y(), box.get_width(), box.get_height()) == (7.5, 3.5, 4, 4)
    expected = viz.upsample_map(w[1, 0, query, 1:].reshape(4, 4), (16, 16))
    assert np.array_equal(panels[1].images[1].get_array(), expected.numpy())


@pytest.mark.parametrize(
    ("kwargs", "tokens", "match"),
    [
        ({}, 1 + 15, r"grid: cannot infer the patch grid: 15 patch tokens \(T=16 minus prefix=1\)"),
        ({"grid": (3, 5)}, 1 + 16, r"grid: expected h \* w == 16 patch tokens"),
        ({"grid": (8, 2)}, 1 + 16, None),
        ({"grid": (16, 1), "prefix": 1}, 1 + 16, None),
        ({"query": 17}, 1 + 16, r"query: expected a token index in \[0, 17\), got 17"),
        ({"prefix": 17}, 1 + 16, r"prefix: expected an int in \[0, 17\)"),
        ({"heads": [4]}, 1 + 16, r"heads: index 4 is out of range for 2 heads"),
    ],
)
def test_attention_grid_bad_arguments_are_named(kwargs, tokens, match):
    w = attention(1, 2, tokens)
    if match is None:
        fig = viz.image_attention_grid(digit(), w, **kwargs)
        assert len(fig.axes) == 3
        return
    with pytest.raises(ValueError, match=match):
        viz.image_attention_grid(digit(), w, **kwargs)


# ---------------------------------------------------------------- methods side by side


def test_methods_side_by_side_with_their_own_ranges(tmp_path):
    rollout = torch.rand(4, 4, dtype=torch.float64)
    gradcam = torch.rand(16, 16, dtype=torch.float64) * 10 - 2
    out = tmp_path / "methods.png"
    fig = viz.image_methods(digit(), {"rollout": rollout, "gradcam": gradcam}, title="digit 1", path=out)
    assert titles(fig.axes) == ["image", "rollout", "gradcam"]
    assert fig.get_suptitle() == "digit 1"
    assert fig.axes[1].images[1].get_clim() == (0.0, float(rollout.max()))
    assert fig.axes[2].images[1].get_clim() == (float(gradcam.min()), float(gradcam.max()))
    assert np.array_equal(fig.axes[2].images[1].get_array(), gradcam.numpy())
    assert out.read_bytes()[:8] == PNG_MAGIC
    fig = viz.image_methods(digit(), {"rollout": rollout}, show_image=False)
    assert titles(fig.axes) == ["rollout"]


def test_methods_bad_input_is_named():
    with pytest.raises(ValueError, match=r"maps\['gradcam'\]: expected the patch grid"):
        viz.image_methods(digit(), {"rollout": torch.rand(4, 4), "gradcam": torch.rand(5, 5)})
    with pytest.raises(ValueError, match="maps: expected at least one method"):
        viz.image_methods(digit(), {})
    with pytest.raises(TypeError, match="maps: expected a mapping"):
        viz.image_methods(digit(), [torch.rand(4, 4)])


def test_image_word_maps_one_panel_per_word_one_colour_range(tmp_path):
    maps = torch.zeros(3, 2, 8, dtype=torch.float64)
    for i in range(3):
        maps[i, 1, 2 * i] = 0.5 + 0.2 * i  # word i on patch (1, 2 i)
    words = ["two", "two", "\u202eevil"]
    fig = viz.image_word_maps(torch.zeros(8, 32), maps, words, title="a caption", path=tmp_path / "w.png")
    assert (tmp_path / "w.png").read_bytes()[:8] == PNG_MAGIC
    assert titles(fig.axes[:3]) == ["two", "two", "\u27e8U+202E\u27e9evil"]  # repeated words kept, bidi shown
    for i in range(3):
        drawn = torch.from_numpy(np.asarray(fig.axes[i].images[1].get_array(), dtype=np.float64))
        assert torch.equal(drawn, viz.upsample_map(maps[i], (8, 32)))
        assert fig.axes[i].images[1].get_clim() == (0.0, 0.9)  # one range for every word
    with pytest.raises(ValueError, match=r"maps: expected one \(h, w\) map per word, \(2, h, w\)"):
        viz.image_word_maps(torch.zeros(8, 32), maps, ["a", "b"])
