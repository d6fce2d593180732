"""Image data sets: scikit-learn's 8x8 digits, Fashion-MNIST, and a folder of the user's images.

Every loader returns :class:`Images`: ``images (N, C, H, W)`` float32 in ``[0, 1]``, ``labels
(N,)`` int64, and the class names. :func:`split` cuts a set into train / valid / test by a seeded
permutation (the same seed, the same split); :func:`random_shifts` is the optional light
augmentation (each image moved by up to a few pixels, zeros filling in).

- :func:`load_digits`: the 1,797 8x8 handwritten digits that ship with scikit-learn (real
  handwriting, 16 gray levels; no download).
- :func:`load_fashion_mnist`: the 60,000 + 10,000 28x28 Fashion-MNIST images from Debian's
  ``dataset-fashion-mnist`` package (gzip IDX files read with numpy); missing, a
  ``FileNotFoundError`` names ``apt-get install dataset-fashion-mnist``.
- :func:`load_image_folder`: the ImageFolder convention, one subfolder per class holding PNG or
  JPEG files, resized (Pillow) to a square size, in grayscale or RGB. Files Pillow cannot read
  are skipped and reported in one :class:`ImageDataWarning` with their count; a class folder
  with no image is an error.
"""

from __future__ import annotations

import gzip
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IMAGE_SUFFIXES",
    "ImageDataWarning",
    "Images",
    "load_digits",
    "load_fashion_mnist",
    "load_image_folder",
    "random_shifts",
    "read_image",
    "split",
]

#: Where Debian's ``dataset-fashion-mnist`` package puts the IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
#: The file suffixes :func:`load_image_folder` reads (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageDataWarning(UserWarning):
    """Something in the images was skipped (unreadable files); the ``qkv`` command prints it as
    ``warning: <message>``."""


@dataclass(frozen=True)
class Images:
    """A labelled image set.

    Attributes:
        images: ``(N, C, H, W)`` float32 in ``[0, 1]``.
        labels: ``(N,)`` int64 in ``[0, len(classes))``.
        classes: the class names, by label.
    """

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def subset(self, index: Tensor) -> Images:
        """The images at ``index`` (an int64 tensor), same classes."""
        return Images(self.images[index], self.labels[index], self.classes)


def load_digits() -> Images:
    """scikit-learn's 1,797 handwritten digits: ``(1797, 1, 8, 8)``, gray levels 0..16 scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(
        1
    )  # (N, 8, 8) -> (N, 1, 8, 8)
    return Images(images, torch.from_numpy(bunch.target.astype(np.int64)), tuple(str(d) for d in range(10)))


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """A gzip IDX file (LeCun's MNIST format: big-endian magic, dims, then uint8 data)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    head = int.from_bytes(data[:4], "big")
    if head != magic:
        raise ValueError(
            f"{str(path)!r}: not an IDX file of this kind (magic {head:#x}, expected {magic:#x})"
        )
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(
            f"{str(path)!r}: truncated IDX file ({body.size} values, expected {int(np.prod(dims))})"
        )
    return body.reshape(dims)


def load_fashion_mnist(split_name: str = "train", *, root: str | Path = FASHION_MNIST_DIR) -> Images:
    """Fashion-MNIST's ``"train"`` (60,000) or ``"test"`` (10,000) images: ``(N, 1, 28, 28)``.

    Raises:
        FileNotFoundError: the files are not in ``root`` (naming the Debian package to install).
        ValueError: an unknown ``split_name``, or a damaged file.
    """
    if split_name not in ("train", "test"):
        raise ValueError(f"split_name: expected 'train' or 'test', got {split_name!r}")
    prefix = "train" if split_name == "train" else "t10k"
    root = Path(root)
    paths = [root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST: no {', '.join(missing)}; install Debian's package: "
            "apt-get install dataset-fashion-mnist (or `make fashion`)"
        )
    pixels = _read_idx(paths[0], 0x0803)  # (N, 28, 28) uint8
    labels = _read_idx(paths[1], 0x0801)  # (N,)
    images = torch.from_numpy(pixels.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)
    return Images(images, torch.from_numpy(labels.astype(np.int64)), FASHION_MNIST_CLASSES)


def _read_image(path: Path, size: int, mode: str, width: int | None = None) -> np.ndarray:
    """One image file as ``(C, size, width or size)`` float32 in [0, 1] (Pillow: converted, resized)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert(mode).resize((width or size, size), Image.Resampling.BILINEAR)
        array = np.asarray(im, dtype=np.float32) / 255.0  # (H, W) or (H, W, 3)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def read_image(path: str | Path, *, image_size: int, channels: int, image_width: int | None = None) -> Tensor:
    """One image file (PNG, JPEG, anything Pillow reads) as a model takes it: ``(channels,
    image_size, image_width)`` float32 in [0, 1] (``image_width`` None: ``image_size``),
    converted to grayscale (1) or RGB (3) and resized.

    Raises:
        FileNotFoundError: no such file. ValueError: a file Pillow cannot read as an image, or
            ``channels`` other than 1 or 3.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels: expected 1 (grayscale) or 3 (RGB), got {channels!r}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"image: no such file {str(file)!r}")
    try:
        array = _read_image(file, image_size, "L" if channels == 1 else "RGB", image_width)
    except (OSError, ValueError, SyntaxError):  # what Pillow raises on a file it cannot read
        raise ValueError(
            f"image: expected an image file (PNG, JPEG, ...), got {str(file)!r}, which Pillow cannot read"
        ) from None
    return torch.from_numpy(np.ascontiguousarray(array))


def _class_files(root: Path) -> dict[str, list[Path]]:
    if not root.is_dir():
        raise FileNotFoundError(f"data: no such folder {str(root)!r} (expected one subfolder per class)")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"data: {str(root)!r} has no class subfolders (expected one subfolder per class)")
    files = {}
    for folder in folders:
        files[folder.name] = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files[folder.name]:
            raise ValueError(
                f"data: the class folder {str(folder)!r} holds no image (expected {', '.join(IMAGE_SUFFIXES)} files)"
            )
    return files


def load_image_folder(root: str | Path, *, image_size: int, channels: int = 1) -> Images:
    """The images of ``root/<class>/<file>`` (classes in sorted order), resized to
    ``image_size x image_size``, in grayscale (``channels=1``) or RGB (``channels=3``).

    Files Pillow cannot read are skipped, named (the first five) and counted in one
    :class:`ImageDataWarning`.

    Raises:
        FileNotFoundError: no such folder. ValueError: no class subfolder, a class folder with no
            image file, a class whose every file is unreadable, or a bad ``image_size``/``channels``.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size: expected an int >= 1, got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels: expected 1 (grayscale) or 3 (RGB), got {channels!r}")
    files = _class_files(Path(root))
    mode = "L" if channels == 1 else "RGB"
    arrays, labels, bad = [], [], []
    for label, (name, paths) in enumerate(files.items()):
        read = 0
        for path in paths:
            try:
                arrays.append(_read_image(path, image_size, mode))
            except (OSError, ValueError, SyntaxError):  # what Pillow raises on a file it cannot read
                bad.append(path)
                continue
            labels.append(label)
            read += 1
        if not read:
            raise ValueError(
                f"data: no file of the class folder {str(Path(root) / name)!r} is a readable image"
            )
    if bad:
        shown = ", ".join(str(p) for p in bad[:5]) + (", ..." if len(bad) > 5 else "")
        warnings.warn(
            f"data: skipped {len(bad)} unreadable image file(s): {shown}", ImageDataWarning, stacklevel=2
        )
    images = torch.from_numpy(np.stack(arrays))  # (N, C, size, size)
    return Images(images, torch.tensor(labels, dtype=torch.int64), tuple(files))


def split(data: Images, *, valid_frac: float, test_frac: float, seed: int) -> dict[str, Images]:
    """``{"train", "valid", "test"}`` cut from a seeded permutation: the same seed gives the same
    split; ``round(N * frac)`` images in valid and test each, the rest in train."""
    for name, frac in (("valid_frac", valid_frac), ("test_frac", test_frac)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name}: expected a fraction in [0, 1), got {frac!r}")
    n = len(data)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_valid, n_test = round(n * valid_frac), round(n * test_frac)
    if n_valid + n_test >= n:
        raise ValueError(
            f"valid_frac + test_frac: leave no training image of {n} ({valid_frac} + {test_frac})"
        )
    return {
        "valid": data.subset(order[:n_valid]),
        "test": data.subset(order[n_valid : n_valid + n_test]),
        "train": data.subset(order[n_valid + n_test :]),
    }


def random_shifts(images: Tensor, *, max_shift: int, generator: torch.Generator) -> Tensor:
    """Each image of ``(N, C, H, W)`` moved by its own ``dy, dx`` drawn from
    ``[-max_shift, max_shift]``, zeros filling in (the light augmentation of training)."""
    if max_shift == 0:
        return images
    n, _, h, w = images.shape
    pad = torch.nn.functional.pad(images, (max_shift,) * 4)  # (N, C, H + 2s, W + 2s)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)  # top-left corner in pad
    rows = offsets[:, :1] + torch.arange(h)  # (N, H)
    cols = offsets[:, 1:] + torch.arange(w)  # (N, W)
    index = torch.arange(n)[:, None, None]
    return pad.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(
        0, 3, 1, 2
    )  # (N, C, H, W)
