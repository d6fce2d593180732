"""Vision data: shapes, deterministic splits, shifts, folders with bad files, located digits."""

import gzip
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from qkv.vision.config import DataConfig, resolve
from qkv.vision.data import (
    FASHION_MNIST_DIR,
    ImageDataWarning,
    load_digits,
    load_fashion_mnist,
    load_image_folder,
    random_shifts,
    read_image,
    split,
)
from qkv.vision.located import DIGIT_SIDE, located_digits
from qkv.vision.training import load_splits


def test_digits_shapes_and_range():
    d = load_digits()
    assert d.images.shape == (1797, 1, 8, 8) and d.images.dtype == torch.float32
    assert d.labels.shape == (1797,) and d.labels.dtype == torch.int64
    assert float(d.images.min()) == 0.0 and float(d.images.max()) == 1.0
    assert d.classes == tuple("0123456789") and set(d.labels.tolist()) == set(range(10))


def test_split_is_a_deterministic_partition():
    d = load_digits()
    a = split(d, valid_frac=0.1, test_frac=0.2, seed=3)
    b = split(d, valid_frac=0.1, test_frac=0.2, seed=3)
    c = split(d, valid_frac=0.1, test_frac=0.2, seed=4)
    assert {k: len(v) for k, v in a.items()} == {"valid": 180, "test": 359, "train": 1258}
    for k in a:
        assert torch.equal(a[k].images, b[k].images) and torch.equal(a[k].labels, b[k].labels)
    assert not torch.equal(a["test"].images, c["test"].images)
    # a partition: every image once (rows as bytes; the set has duplicates, so compare multisets)
    rows = sorted(bytes(x.numpy()) for part in a.values() for x in part.images)
    assert rows == sorted(bytes(x.numpy()) for x in d.images)
    with pytest.raises(ValueError, match=r"valid_frac: expected a fraction in \[0, 1\), got 1.5"):
        split(d, valid_frac=1.5, test_frac=0.0, seed=0)


def test_random_shifts_move_the_pixels():
    images = torch.zeros(3, 2, 6, 6)
    images[:, :, 2, 3] = 1.0
    g = torch.Generator().manual_seed(0)
    shifted = random_shifts(images, max_shift=2, generator=g)
    assert shifted.shape == images.shape
    for i in range(3):
        (y0, x0), (y1, x1) = (torch.nonzero(t[0]).tolist()[0] for t in (images[i], shifted[i]))
        assert abs(y1 - y0) <= 2 and abs(x1 - x0) <= 2
        assert torch.equal(shifted[i, 0], shifted[i, 1])  # the channels move together
        assert float(shifted[i].sum()) == 2.0
    again = random_shifts(images, max_shift=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, shifted)


def _write_folder(root, with_bad=True):
    rng = np.random.default_rng(0)
    for name, color in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        (root / name).mkdir(parents=True)
        for i in range(3):
            pixels = np.zeros((10, 12, 3), dtype=np.uint8) + np.array(color, dtype=np.uint8)
            pixels[rng.integers(10), rng.integers(12)] = 255
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i else 'jpg'}")
    Image.fromarray(np.full((5, 5), 128, np.uint8)).save(root / "dogs" / "gray.png")  # grayscale file
    if with_bad:
        (root / "cats" / "broken.png").write_bytes(b"not an image at all")
    (root / "cats" / "notes.txt").write_text("ignored: not an image suffix")


def test_image_folder_reads_resizes_and_reports_bad_files(tmp_path):
    _write_folder(tmp_path)
    with pytest.warns(ImageDataWarning, match=r"skipped 1 unreadable image file\(s\): .*broken.png"):
        rgb = load_image_folder(tmp_path, image_size=8, channels=3)
    assert rgb.classes == ("cats", "dogs")
    assert rgb.images.shape == (7, 3, 8, 8) and rgb.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    # cats are red, dogs blue (the gray file: all channels equal)
    assert float(rgb.images[0, 0].mean()) > 0.9 and float(rgb.images[0, 2].mean()) < 0.1
    assert torch.allclose(rgb.images[6, 0], rgb.images[6, 2])
    with pytest.warns(ImageDataWarning):
        gray = load_image_folder(tmp_path, image_size=4, channels=1)
    assert gray.images.shape == (7, 1, 4, 4)


def test_image_folder_errors(tmp_path):
    _write_folder(tmp_path, with_bad=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*empty' holds no image"):
        load_image_folder(tmp_path, image_size=8)
    with pytest.raises(FileNotFoundError, match=r"no such folder"):
        load_image_folder(tmp_path / "missing", image_size=8)
    with pytest.raises(ValueError, match=r"channels: expected 1 \(grayscale\) or 3 \(RGB\), got 2"):
        load_image_folder(tmp_path, image_size=8, channels=2)
    (tmp_path / "empty" / "bad.jpg").write_bytes(b"\x00")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageDataWarning)
        with pytest.raises(ValueError, match=r"no file of the class folder .*empty' is a readable image"):
            load_image_folder(tmp_path, image_size=8)


def test_read_image_errors_name_the_file_and_what_was_expected(tmp_path):
    (tmp_path / "notes.png").write_text("a text file with an image's suffix")
    with pytest.raises(
        ValueError, match=r"image: expected an image file \(PNG, JPEG, \.\.\.\), got '.*notes.png'"
    ):
        read_image(tmp_path / "notes.png", image_size=8, channels=1)
    with pytest.raises(FileNotFoundError, match=r"image: no such file '.*missing.png'"):
        read_image(tmp_path / "missing.png", image_size=8, channels=1)
    Image.fromarray(np.full((4, 4), 255, dtype=np.uint8)).save(tmp_path / "white.png")
    with pytest.raises(ValueError, match=r"channels: expected 1 \(grayscale\) or 3 \(RGB\), got 4"):
        read_image(tmp_path / "white.png", image_size=8, channels=4)
    rgb = read_image(tmp_path / "white.png", image_size=8, channels=3)  # gray to RGB, resized
    assert rgb.shape == (3, 8, 8) and torch.equal(rgb, torch.ones(3, 8, 8))


def test_fashion_mnist_reader_and_missing_package(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
    head = (0x0803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (2, 28, 28))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(head + images.tobytes()))
    labels_head = (0x0801).to_bytes(4, "big") + (2).to_bytes(4, "big")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels_head + bytes([9, 3])))
    test = load_fashion_mnist("test", root=tmp_path)
    assert test.images.shape == (2, 1, 28, 28) and test.labels.tolist() == [9, 3]
    torch.testing.assert_close(test.images[1, 0] * 255, torch.from_numpy(images[1].astype(np.float32)))
    assert test.classes[9] == "Ankle boot"
    with pytest.raises(FileNotFoundError, match=r"apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)


def test_located_digits_boxes_hold_the_digit_ink():
    digits = load_digits()
    images, labels, boxes = located_digits(50, seed=1, canvas=32, digits=digits)
    assert images.shape == (50, 1, 32, 32) and labels.shape == (50,) and boxes.shape == (50, 4)
    again = located_digits(50, seed=1, canvas=32, digits=digits)
    assert torch.equal(again[0], images) and torch.equal(again[2], boxes)
    for img, box in zip(images[:, 0], boxes.tolist()):
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
        assert x1 - x0 <= DIGIT_SIDE and y1 - y0 <= DIGIT_SIDE
        inside = img[y0:y1, x0:x1]
        # the box is tight: ink on each of its four edges
        assert (
            inside[0].max() > 0
            and inside[-1].max() > 0
            and inside[:, 0].max() > 0
            and inside[:, -1].max() > 0
        )
        outside = img.clone()
        outside[y0:y1, x0:x1] = 0
        assert float(outside.sum()) > 0  # distractor strokes elsewhere
    with pytest.raises(ValueError, match=r"canvas: expected an int >= 16"):
        located_digits(1, seed=0, canvas=12)


def test_located_digits_class_is_the_digit():
    # a digit drawn alone (no strokes) is the canvas' digit: the same labels for the same seed
    digits = load_digits()
    small = digits.subset(torch.tensor([0, 1, 2]))  # classes 0, 1, 2
    images, labels, boxes = located_digits(30, seed=0, digits=small)
    assert set(labels.tolist()) <= {0, 1, 2}
    for img, label, (x0, y0, _, _) in zip(images[:, 0], labels.tolist(), boxes.tolist()):
        up = torch.nn.functional.interpolate(small.images[label : label + 1], scale_factor=2, mode="bilinear")
        ink = up[0, 0].clamp(0, 1)
        rows, cols = torch.nonzero(ink > 0, as_tuple=True)
        y, x = y0 - int(rows.min()), x0 - int(cols.min())
        torch.testing.assert_close(img[y : y + 16, x : x + 16], ink)


def test_load_splits_of_located_digits_share_no_digit():
    d = DataConfig(dataset="located-digits", size=40, valid_frac=0.25, test_frac=0.25)
    splits = load_splits(d)
    assert {k: len(v) for k, v in splits.items()} == {"train": 40, "valid": 10, "test": 10}
    assert splits["train"].images.shape[1:] == (1, 32, 32)


def test_resolve_picks_the_preset_of_the_data():
    assert resolve(overrides=["--data.dataset=digits"]).model["patch_size"] == 2
    cfg = resolve(overrides=["--data.dataset=located-digits", "--model.dim=32"])
    assert cfg.model["patch_size"] == 4 and cfg.model["dim"] == 32
    fashion = resolve(preset="vit-fashion-mnist").model
    assert (fashion["stem"], fashion["patch_size"], fashion["depth"]) == ("conv", 4, 3)
    with pytest.raises(ValueError, match=r"unknown keys \['bogus'\]"):
        resolve(overrides=["--model.bogus=1"])
    with pytest.raises(
        ValueError, match=r"config \[data\] channels: expected 1 \(grayscale\) or 3 \(RGB\), got 2"
    ):
        resolve(overrides=["--data.channels=2"])


@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist not installed",
)
def test_the_installed_fashion_mnist_test_set():
    test = load_fashion_mnist("test")
    assert test.images.shape == (10000, 1, 28, 28) and float(test.images.max()) == 1.0
    assert torch.bincount(test.labels).tolist() == [1000] * 10  # balanced classes
