"""FashionMNIST: the dataset every machine can train on without a download.

The 10k test split ships inside the package (data/bundled/, MIT, see LICENSE.fashion-mnist). The 60k
train split is used when the system has it: Debian/Ubuntu's `dataset-fashion-mnist` package installs it
in /usr/share/datasets/fashion-mnist; PROGAN_FAST_FMNIST_DIR points elsewhere.
"""
from __future__ import annotations

import os

import numpy as np

from .idx import read_idx

__all__ = ["load_fashion_mnist", "BUNDLED_DIR", "SYSTEM_DIR", "fashion_mnist_dir"]

BUNDLED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundled")
SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
_ENV = "PROGAN_FAST_FMNIST_DIR"
_SPLITS = ("auto", "train", "test", "bundled")
_HINT = (f"install Debian/Ubuntu's dataset-fashion-mnist package (files land in {SYSTEM_DIR}) or set "
         f"{_ENV} to a folder holding train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz")


def fashion_mnist_dir() -> str:
    """The folder searched for the full dataset: $PROGAN_FAST_FMNIST_DIR, else the Debian location."""
    return os.environ.get(_ENV) or SYSTEM_DIR


def _find(folder: str, stem: str) -> str | None:
    for name in (stem + ".gz", stem):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def _load_pair(folder: str, prefix: str) -> tuple[np.ndarray, np.ndarray, str]:
    img_path = _find(folder, f"{prefix}-images-idx3-ubyte")
    lbl_path = _find(folder, f"{prefix}-labels-idx1-ubyte")
    if img_path is None or lbl_path is None:
        missing = f"{prefix}-images-idx3-ubyte[.gz]" if img_path is None else f"{prefix}-labels-idx1-ubyte[.gz]"
        raise FileNotFoundError(f"FashionMNIST: {missing} not found in {folder}; {_HINT}")
    images = read_idx(img_path)
    labels = read_idx(lbl_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{img_path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{lbl_path}: {labels.shape[0] if labels.ndim else 0} labels for "
                         f"{images.shape[0]} images in {img_path}")
    return images[..., None], labels.astype(np.int64), img_path


def load_fashion_mnist(split: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
    """Return (images uint8 [N, 28, 28, 1], labels int64 [N], description).

    split: "auto" (60k train split if the system has it, else the bundled 10k), "train" (60k, must be
    installed), "test" (10k t10k split: the system copy if present, else the bundled one, same data),
    "bundled" (the package's own 10k copy).
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown FashionMNIST split {split!r}; choose one of {', '.join(_SPLITS)}")
    folder = fashion_mnist_dir()
    if split == "auto":
        split = "train" if _find(folder, "train-images-idx3-ubyte") else "bundled"
    if split == "train":
        images, labels, src = _load_pair(folder, "train")
        name = "train"
    elif split == "test" and _find(folder, "t10k-images-idx3-ubyte"):
        images, labels, src = _load_pair(folder, "t10k")
        name = "test (t10k)"
    else:  # "bundled", or "test" without a system copy
        images, labels, src = _load_pair(BUNDLED_DIR, "t10k")
        name = "test (t10k, bundled)"
    desc = f"FashionMNIST {name}: {images.shape[0]} images {images.shape[1]}x{images.shape[2]} grayscale from {src}"
    return images, labels, desc
