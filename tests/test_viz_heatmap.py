"""qkv.viz static figures: what is drawn is what was given (pixels, labels, files, errors)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import qkv.viz as viz

matplotlib = pytest.importorskip("matplotlib", reason="qkv.viz figures need matplotlib (qkv[viz])")
np = pytest.importorskip("numpy")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def softmax_weights(*shape: int, sharpness: float = 3.0) -> torch.Tensor:
    return torch.softmax(sharpness * torch.randn(*shape, dtype=torch.float64), dim=-1)


def rgba(fig) -> np.ndarray:
    """The figure rendered by Agg, (height, width, 4) uint8."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())


def cell_pixel(fig, ax, pixels: np.ndarray, i: int, j: int) -> np.ndarray:
    """The RGB of the pixel at the centre of cell (row i, column j) of an imshow."""
    x, y = ax.transData.transform((j, i))  # display coordinates, origin bottom-left
    return pixels[round(pixels.shape[0] - y), round(x), :3].astype(float)


def tick_texts(labels) -> list[str]:
    return [t.get_text() for t in labels]


def test_import_does_not_load_matplotlib():
    code = "import sys, qkv.viz; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'qkv\[viz\]'"):
        viz.heatmap(torch.eye(2))


def test_heatmap_pixels_follow_the_weights():
    w = softmax_weights(5, 7)
    fig = viz.heatmap(w, colorbar=False)
    ax = fig.axes[0]
    pixels = rgba(fig)
    cmap = matplotlib.colormaps["viridis"]
    lo, hi = 0.0, float(w.max())  # default colour range: min(0, min) .. max
    brightness = np.zeros((5, 7))
    for i in range(5):
        for j in range(7):
            got = cell_pixel(fig, ax, pixels, i, j)
            want = np.array(cmap((float(w[i, j]) - lo) / (hi - lo))[:3]) * 255
            assert np.abs(got - want).max() <= 3, (i, j, got, want)
            brightness[i, j] = got @ np.array([0.2126, 0.7152, 0.0722])
    # viridis grows brighter with the value: the brightest cell is the largest weight
    assert np.unravel_index(brightness.argmax(), brightness.shape) == np.unravel_index(
        int(w.argmax()), tuple(w.shape)
    )


def test_heatmap_labels_rows_and_rotated_columns():
    w = softmax_weights(3, 4)
    rows, cols = ["je", "suis", "là"], ["I", "am", "here", "."]
    fig = viz.heatmap(w, rows, cols, title="cross")
    ax = fig.axes[0]
    assert tick_texts(ax.get_yticklabels()) == rows
    assert tick_texts(ax.get_xticklabels()) == cols
    assert all(t.get_rotation() == 60 for t in ax.get_xticklabels())
    assert ax.get_title() == "cross"
    assert len(fig.axes) == 2  # the heatmap and its colour bar


def test_heatmap_labels_are_literal_text_not_mathtext():
    tokens = ["$", "a$b", "$x^2$"]
    fig = viz.heatmap(softmax_weights(3, 3), tokens, tokens)
    rgba(fig)  # drawing must not try to typeset "$...$"
    assert tick_texts(fig.axes[0].get_xticklabels()) == tokens


def test_heatmap_annotates_every_cell():
    w = softmax_weights(2, 3)
    fig = viz.heatmap(w, annotate=True)
    texts = sorted(
        (round(t.get_position()[1]), round(t.get_position()[0]), t.get_text()) for t in fig.axes[0].texts
    )
    assert texts == [(i, j, f"{float(w[i, j]):.2f}") for i in range(2) for j in range(3)]


def test_heatmap_long_axes_label_every_kth_token():
    w = softmax_weights(3, 200)
    fig = viz.heatmap(w, None, [f"t{i}" for i in range(200)])
    shown = tick_texts(fig.axes[0].get_xticklabels())
    assert shown == [f"t{i}" for i in range(0, 200, 4)]


def test_heatmap_draws_into_a_given_axes():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    assert viz.heatmap(softmax_weights(2, 2), ax=ax, colorbar=False) is fig
    assert len(ax.images) == 1


@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("w.png", lambda b: b.startswith(PNG_MAGIC)),
        ("w.PDF", lambda b: b.startswith(b"%PDF-")),
        ("w.svg", lambda b: b.lstrip().startswith(b"<?xml") and b"<svg" in b[:2000]),
    ],
)
def test_heatmap_saves_by_extension(tmp_path, name, check):
    path = tmp_path / name
    viz.heatmap(softmax_weights(3, 3), ["a", "b", "c"], ["x", "y", "z"], path=path)
    assert check(path.read_bytes())


def test_heatmap_errors_name_the_argument(tmp_path):
    w = softmax_weights(3, 4)
    with pytest.raises(ValueError, match=r"^path: .*\.png, \.svg or \.pdf.*w\.jpg"):
        viz.heatmap(w, path=tmp_path / "w.jpg")
    assert not (tmp_path / "w.jpg").exists()
    with pytest.raises(ValueError, match=r"^rows: expected 3 labels .* got 2"):
        viz.heatmap(w, rows=["a", "b"])
    with pytest.raises(ValueError, match=r"^cols: expected 4 labels .* got 5"):
        viz.heatmap(w, cols=list("abcde"))
    with pytest.raises(ValueError, match=r"^weights: expected a 2-D \(Tq, Tk\) array, got shape \(1, 3, 4\)"):
        viz.heatmap(w[None])
    with pytest.raises(TypeError, match=r"^rows: expected a sequence of token strings, got str"):
        viz.heatmap(w, rows="abc")
    with pytest.raises(TypeError, match=r"^weights: expected a tensor, numpy array or nested list"):
        viz.heatmap([[0.5, 0.5], [1.0]])


def test_heatmap_accepts_numpy_and_lists():
    w = softmax_weights(2, 3)
    for value in (w.numpy(), w.tolist(), w.float()):
        fig = viz.heatmap(value, colorbar=False)
        np.testing.assert_allclose(fig.axes[0].images[0].get_array(), w.numpy(), rtol=1e-6)


def test_grid_shares_one_colour_scale():
    w = softmax_weights(2, 3, 4, 4)
    fig = viz.grid(w, ["a", "b", "c", "d"])
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 6
    assert {im.get_clim() for im in images} == {(0.0, float(w.max()))}
    for n, im in enumerate(images):
        np.testing.assert_array_equal(im.get_array(), w[n // 3, n % 3].numpy())
    assert len(fig.axes) == 7  # 6 heads + one colour bar


def test_grid_selects_layers_and_heads_from_attention_maps_lists():
    layers = [softmax_weights(2, 3, 4, 5) for _ in range(3)]  # list over layers of (B, H, Tq, Tk)
    fig = viz.grid(layers, rows=list("abcd"), cols=list("vwxyz"), layers=[2], heads=[0, 2], batch_index=1)
    axes = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in axes] == ["head 0", "head 2"]
    assert axes[0].get_ylabel() == "layer 2"
    np.testing.assert_array_equal(axes[1].images[0].get_array(), layers[2][1, 2].numpy())
    shown = torch.stack([layers[2][1, 0], layers[2][1, 2]])
    assert axes[0].images[0].get_clim() == (0.0, float(shown.max()))


def test_grid_errors():
    w = softmax_weights(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"^heads: index 3 is out of range for 3 heads"):
        viz.grid(w, heads=[3])
    with pytest.raises(ValueError, match=r"^tokens: give either tokens"):
        viz.grid(w, list("abcd"), rows=list("abcd"))
    with pytest.raises(ValueError, match=r"Tq=4 != Tk=5"):
        viz.grid(softmax_weights(1, 1, 4, 5), list("abcd"))
    with pytest.raises(
        ValueError, match=r"^weights: layer 1 has shape \(3, 4, 4\) but layer 0 has \(3, 4, 5\)"
    ):
        viz.grid([softmax_weights(3, 4, 5), softmax_weights(3, 4, 4)])
    with pytest.raises(ValueError, match=r"^batch_index: 2 is out of range"):
        viz.grid([softmax_weights(2, 3, 4, 4)], batch_index=2)


def test_alignment_outlines_gold_pairs(tmp_path):
    w = softmax_weights(3, 4)  # (Tt, Ts)
    src, tgt = ["das", "ist", "gut", "."], ["it", "is", "good"]
    gold = [(0, 0), (1, 1), (2, 2)]
    fig = viz.alignment(w, src, tgt, gold=gold, path=tmp_path / "a.png")
    ax = fig.axes[0]
    corners = sorted((p.get_x(), p.get_y(), p.get_width(), p.get_height()) for p in ax.patches)
    assert corners == [(s - 0.5, t - 0.5, 1, 1) for s, t in gold]
    assert tick_texts(ax.get_xticklabels()) == src
    assert tick_texts(ax.get_yticklabels()) == tgt
    assert ax.xaxis.get_label_position() == "top"
    assert (tmp_path / "a.png").read_bytes().startswith(PNG_MAGIC)


def test_alignment_errors():
    w = softmax_weights(3, 4)
    with pytest.raises(ValueError, match=r"^gold: pair \(4, 0\) is out of range for 4 source and 3 target"):
        viz.alignment(w, list("abcd"), list("xyz"), gold=[(4, 0)])
    with pytest.raises(ValueError, match=r"^source_tokens: expected 4 labels"):
        viz.alignment(w, list("abc"), list("xyz"))
    with pytest.raises(ValueError, match=r"^gold: expected \(source, target\) index pairs"):
        viz.alignment(w, list("abcd"), list("xyz"), gold=[(1, 2, 3)])


def test_kernel_regression_figure_shows_data_fit_and_weights():
    n, nq = 30, 40
    x_train = torch.sort(torch.rand(n, dtype=torch.float64) * 5).values
    y_train = 2 * torch.sin(x_train) + x_train**0.8 + 0.3 * torch.randn(n, dtype=torch.float64)
    x_query = torch.linspace(0, 5, nq, dtype=torch.float64).flip(0)  # unsorted on purpose
    weights = torch.softmax(-((x_query[:, None] - x_train[None, :]) ** 2) / 2, dim=-1)  # (Nq, N)
    y_pred = weights @ y_train
    y_true = 2 * torch.sin(x_query) + x_query**0.8
    fig = viz.kernel_regression(x_train, y_train, x_query, y_pred, weights, y_true=y_true, title="NW")
    left, right = fig.axes[0], fig.axes[1]
    prediction, truth = left.lines
    order = torch.argsort(x_query)
    np.testing.assert_allclose(prediction.get_ydata(), y_pred[order].numpy())
    np.testing.assert_allclose(truth.get_ydata(), y_true[order].numpy())
    np.testing.assert_allclose(left.collections[0].get_offsets(), torch.stack([x_train, y_train], 1).numpy())
    np.testing.assert_allclose(right.images[0].get_array(), weights[order].numpy())
    assert fig.get_suptitle() == "NW"


def test_kernel_regression_errors_name_the_argument():
    w = softmax_weights(4, 6)
    x6, x4 = torch.rand(6), torch.rand(4)
    with pytest.raises(ValueError, match=r"^y_pred: expected 4 values \(one per query\), got 3"):
        viz.kernel_regression(x6, x6, x4, x4[:3], w)
    with pytest.raises(ValueError, match=r"^x_train: expected 6 values"):
        viz.kernel_regression(x4, x6, x4, x4, w)
    with pytest.raises(ValueError, match=r"^weights: expected a 2-D \(Nq, N\) array"):
        viz.kernel_regression(x6, x6, x4, x4, w[None])
    with pytest.raises(ValueError, match=r"^y_true: expected 4 values"):
        viz.kernel_regression(x6, x6, x4, x4, w, y_true=x6)


def test_mask_figure_draws_the_boolean_matrix(tmp_path):
    m = torch.ones(4, 4, dtype=torch.bool).tril()
    fig = viz.mask(m, path=tmp_path / "m.svg")
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), m.double().numpy())
    assert ax.get_title() == "10 of 16 allowed"
    assert b"<svg" in (tmp_path / "m.svg").read_bytes()[:2000]
    pixels = rgba(fig)
    allowed, blocked = cell_pixel(fig, ax, pixels, 3, 0), cell_pixel(fig, ax, pixels, 0, 3)
    assert allowed.sum() < blocked.sum()  # True is drawn dark, False light


def test_mask_refuses_non_boolean_input():
    with pytest.raises(
        TypeError, match=r"^mask: expected a boolean \(Tq, Tk\) matrix .* got dtype torch.float32"
    ):
        viz.mask(torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"^mask: expected a 2-D"):
        viz.mask(torch.ones(1, 3, 3, dtype=torch.bool))
    fig = viz.mask([[True, False], [True, True]], rows=["a", "b"], cols=["c", "d"])
    assert tick_texts(fig.axes[0].get_xticklabels()) == ["c", "d"]


def test_alignment_of_a_long_input_is_legible():
    """The demo's long inputs (9 digits -> 13 German words): the labels were 10 pt in cells
    drawn small, the single digits turned 60 degrees; now 11 pt, level, in larger cells."""
    source = list("475107460")
    target = ["vier", "hundert", "fünf", "und", "siebzig", "millionen", "ein", "hundert", "sieben"]
    target += ["tausend", "vier", "hundert", "sechzig"]
    fig = viz.alignment(softmax_weights(len(target), len(source)), source, target)
    ax = fig.axes[0]
    rgba(fig)  # lay out
    width, height = fig.get_size_inches()
    assert width >= 6.0 and height >= 6.3, (width, height)
    for label in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
        assert label.get_fontsize() >= 11, label
    assert all(t.get_rotation() == 0 for t in ax.get_xticklabels())  # digits stay level
    assert tick_texts(ax.get_xticklabels()) == source
    box = ax.get_window_extent()  # display pixels at the figure's dpi
    row_pt = box.height / len(target) / fig.dpi * 72
    assert row_pt >= 20, row_pt  # each row holds its 11 pt label with room to spare
    assert ax.xaxis.label.get_fontsize() >= 11 and ax.yaxis.label.get_fontsize() >= 11


def test_tick_font_shrinks_only_with_many_tokens():
    from qkv.viz.heatmap import _tick_fontsize

    assert _tick_fontsize(9) == _tick_fontsize(24) == 11
    assert _tick_fontsize(40) == 9 and _tick_fontsize(128) == 7
    fig = viz.heatmap(softmax_weights(30, 30), [f"t{i}" for i in range(30)], [f"t{i}" for i in range(30)])
    assert {t.get_fontsize() for t in fig.axes[0].get_yticklabels()} == {9}


def test_bidi_controls_in_labels_and_titles_are_shown_not_applied():
    tokens = ["abc\u202edef", "\u2066x\u2069", "plain"]
    shown = ["abc\u27e8U+202E\u27e9def", "\u27e8U+2066\u27e9x\u27e8U+2069\u27e9", "plain"]
    fig = viz.heatmap(softmax_weights(3, 3), tokens, tokens, title="t \u202eitle")
    ax = fig.axes[0]
    rgba(fig)
    assert tick_texts(ax.get_xticklabels()) == shown
    assert tick_texts(ax.get_yticklabels()) == shown
    assert ax.get_title() == "t \u27e8U+202E\u27e9itle"
    fig = viz.grid(softmax_weights(1, 2, 3, 3), tokens, title="\u200fgrid")
    assert fig.get_suptitle() == "\u27e8U+200F\u27e9grid"
    assert tick_texts(fig.axes[0].get_yticklabels()) == shown
    fig = viz.alignment(softmax_weights(3, 3), tokens, tokens)
    assert tick_texts(fig.axes[0].get_xticklabels()) == shown
    assert viz.visible_text("\u061c\u200e\u202a\u202b\u2068") == (
        "\u27e8U+061C\u27e9\u27e8U+200E\u27e9\u27e8U+202A\u27e9\u27e8U+202B\u27e9\u27e8U+2068\u27e9"
    )
    assert viz.visible_text("\u05e9\u05dc\u05d5\u05dd") == "\u05e9\u05dc\u05d5\u05dd"  # Hebrew letters stay


def test_grid_labels_the_outer_panels():
    """The panels share their axes: a panel drawn without labels used to clear them for all, so a
    grid of 32 tokens or fewer showed none."""
    tokens = ["[CLS]", "the", "cat", "[SEP]"]
    fig = viz.grid(softmax_weights(2, 3, 4, 4), tokens)
    rgba(fig)
    panels = fig.axes[:6]  # 2 x 3, row by row; then the colour bar

    def shown(labels):
        return [t.get_text() for t in labels if t.get_visible() and t.get_text()]

    assert [shown(ax.get_yticklabels()) for ax in panels] == [tokens, [], [], tokens, [], []]
    assert [shown(ax.get_xticklabels()) for ax in panels] == [[], [], [], tokens, tokens, tokens]
    assert {t.get_fontsize() for t in panels[0].get_yticklabels()} == {8}
