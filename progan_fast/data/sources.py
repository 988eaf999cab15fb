"""Turn a user's --data path into uint8 images [N, H, W, C] (+ labels), or one clear error.

Accepted (checked in this order):
  * a dataset directory written by `python -m progan_fast.dataset create` (its top level)
  * a .npy file: uint8 [N, H, W, C] or [N, H, W]
  * a .npz file: key "images" as above, optional key "labels" (integers, one per image)
  * an IDX file (`*images*idx3-ubyte[.gz]`), or a folder holding MNIST / FashionMNIST IDX files
    (train-* preferred over t10k-*; labels read from the matching *labels*idx1-ubyte file if present)
  * a folder of PNG / JPEG images, searched recursively (other files are ignored)

Channel rules for image folders, chosen so nothing is guessed silently:
  * grayscale (L, 1-bit) stays 1 channel; if any image in the folder is colour, all become RGB
    (grayscale replicated) so the dataset has one channel count;
  * RGBA / LA / palette with transparency are composited over black (rgb * alpha / 255, rounded):
    transparent pixels become black, the same colour as the zero padding of MultiResolutionDataset,
    instead of exposing whatever RGB values hide under alpha = 0;
  * 16-bit, float and other exotic modes are rejected with a message (convert them to 8-bit first).
All images must be square and of one size; the first one that is not is named in the error.
"""
from __future__ import annotations

import os
import re

import numpy as np

from .idx import read_idx

__all__ = ["load_images", "load_dataset", "IMAGE_EXTENSIONS", "FASHION_MNIST_NAMES"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_IDX_IMAGES = re.compile(r"^(?P<prefix>.*)images[-.]idx3-ubyte(\.gz)?$")
_GRAY_MODES = {"1", "L", "LA"}
_COLOR_MODES = {"RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "P", "PA", "LAB", "HSV"}


def mode_channels(mode: str, where) -> int:
    """Channels an image of PIL mode `mode` is stored with: 3 for colour, 1 for grayscale; other
    modes (16-bit, float) are refused with a message naming `where`."""
    if mode in _COLOR_MODES:
        return 3
    if mode in _GRAY_MODES:
        return 1
    raise ValueError(f"{where}: unsupported image mode {mode} (16-bit or float?); convert to 8-bit grayscale "
                     f"or RGB first")


_SUPPORTED = ("a dataset directory made by `python -m progan_fast.dataset create`, a .npy/.npz file with "
              "uint8 images, an MNIST/FashionMNIST IDX folder, or a folder of PNG/JPEG images")
FASHION_MNIST_NAMES = ("fashion-mnist", "fashion_mnist", "fmnist")


def load_dataset(data: str | os.PathLike, resolution: int | None = None):
    """The trainer's one entry point for --data: returns (dataset, description).

    A dataset directory (made by `python -m progan_fast.dataset create`) opens as a StoredDataset
    (memory-mapped raw levels, JPEG/PNG levels decoded on demand); 'fashion-mnist' and everything
    load_images accepts become an in-memory MultiResolutionDataset. `resolution` larger than the
    data's is an error; smaller keeps the levels at and below it.
    """
    from .fashion_mnist import load_fashion_mnist
    from .multires import MultiResolutionDataset, _next_pow2
    from .stored import StoredDataset, is_dataset_dir
    if str(data) in FASHION_MNIST_NAMES and not os.path.exists(data):
        images, labels, desc = load_fashion_mnist("auto")
    elif is_dataset_dir(os.path.expanduser(os.fspath(data))):
        ds = StoredDataset(os.path.expanduser(os.fspath(data)), resolution)
        return ds, ds.description()
    else:
        images, labels, desc = load_images(data)
    full = _next_pow2(np.shape(images)[1])  # the dataset's resolution: images padded to a power of two
    if resolution is not None and resolution > full:
        raise ValueError(f"--resolution {resolution} exceeds the dataset's resolution {full}; "
                         f"use --resolution {full} or a larger dataset")
    return MultiResolutionDataset(images, labels, resolution), desc  # levels above `resolution` never built


def load_images(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Load a dataset from `path`; returns (images uint8 [N, H, W, C], labels int64 [N] or None, description)."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data {path} does not exist; pass {_SUPPORTED}")
    if os.path.isdir(path):
        from .stored import StoredDataset, is_dataset_dir
        if is_dataset_dir(path):  # its top level, as stored (JPEG levels decoded)
            ds = StoredDataset(path)
            top = ds.level(ds.resolution)
            images = np.ascontiguousarray(top[:len(top)].numpy().transpose(0, 2, 3, 1))
            return images, (ds.labels.numpy() if ds.has_labels else None), ds.description()
        idx = _idx_in_folder(path)
        if idx is not None:
            return _load_idx(idx)
        return _load_folder(path)
    lower = path.lower()
    if lower.endswith(".npy"):
        return _load_npy(path)
    if lower.endswith(".npz"):
        return _load_npz(path)
    if _IDX_IMAGES.match(os.path.basename(path)):
        return _load_idx(path)
    raise ValueError(f"--data {path}: unsupported file type; pass {_SUPPORTED}")


# ---------------------------------------------------------------------------------------- arrays

def _check_array(images: np.ndarray, where: str) -> np.ndarray:
    if images.dtype != np.uint8:
        raise ValueError(f"{where}: images must be uint8 in 0..255, got {images.dtype}; "
                         f"convert with np.clip(np.rint(x), 0, 255).astype(np.uint8)")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"{where}: images must be [N, H, W, C] or [N, H, W], got shape {images.shape}")
    n, h, w, c = images.shape
    if c not in (1, 3) and h in (1, 3) and w == c:
        raise ValueError(f"{where}: shape {images.shape} looks channels-first; "
                         f"store NHWC (np.transpose(x, (0, 2, 3, 1)))")
    if c not in (1, 3):
        raise ValueError(f"{where}: {c} channels; only 1 (grayscale) or 3 (RGB) are supported")
    if n == 0:
        raise ValueError(f"{where}: holds no images")
    if h != w:
        raise ValueError(f"{where}: images are {h}x{w}; they must be square (crop them first)")
    return np.ascontiguousarray(images)


def _check_labels(labels: np.ndarray, n: int, where: str) -> np.ndarray:
    if labels.ndim != 1 or labels.shape[0] != n or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: labels must be integers of shape [{n}], got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def _describe(kind: str, path: str, images: np.ndarray, labels) -> str:
    n, h, w, c = images.shape
    return (f"{kind} {path}: {n} images {h}x{w}, {'grayscale' if c == 1 else 'RGB'}"
            f"{', with labels' if labels is not None else ''}")


def _load_npy(path):
    try:
        images = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read .npy ({exc})") from None
    images = _check_array(images, path)
    return images, None, _describe("npy", path, images, None)


def _load_npz(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise ValueError(f"{path}: no 'images' array (found {', '.join(z.files) or 'nothing'}); "
                                 f"save with np.savez(path, images=x, labels=y)")
            images = z["images"]
            labels = z["labels"] if "labels" in z.files else None
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read .npz ({exc})") from None
    except ValueError as exc:
        if str(exc).startswith(path):
            raise
        raise ValueError(f"{path}: cannot read .npz ({exc})") from None
    images = _check_array(images, path)
    if labels is not None:
        labels = _check_labels(labels, images.shape[0], path)
    return images, labels, _describe("npz", path, images, labels)


# ---------------------------------------------------------------------------------------- IDX

def _idx_in_folder(folder: str) -> str | None:
    found = sorted(n for n in os.listdir(folder) if _IDX_IMAGES.match(n) and os.path.isfile(os.path.join(folder, n)))
    if not found:
        return None
    train = [n for n in found if n.startswith("train")]
    if train:
        found = train
    # the same file raw and gzipped counts once (prefer .gz: that is what distributions ship)
    stems = sorted({n[:-3] if n.endswith(".gz") else n for n in found})
    if len(stems) > 1:
        raise ValueError(f"{folder}: several IDX image files ({', '.join(found)}); pass one of them as --data")
    gz = stems[0] + ".gz"
    return os.path.join(folder, gz if gz in found else stems[0])


def _load_idx(path):
    images = read_idx(path)
    if images.ndim != 3:
        raise ValueError(f"{path}: IDX images must be [N, H, W], got shape {images.shape}")
    images = _check_array(images, path)
    m = _IDX_IMAGES.match(os.path.basename(path))
    folder = os.path.dirname(path)
    labels = None
    for sep in ("-", "."):
        for ext in (".gz", ""):
            cand = os.path.join(folder, f"{m.group('prefix')}labels{sep}idx1-ubyte{ext}")
            if labels is None and os.path.isfile(cand):
                labels = _check_labels(read_idx(cand), images.shape[0], cand)
    return images, labels, _describe("IDX", path, images, labels)


# ---------------------------------------------------------------------------------------- image folders

def _list_images(folder: str) -> list[str]:
    files = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(os.path.join(root, n) for n in names
                     if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(files)


def _open(path: str):
    from PIL import Image
    try:
        return Image.open(path)
    except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ValueError(f"{path}: not a readable image ({type(exc).__name__}: {exc}); remove or re-encode it") from None


def _to_array(img, path: str, channels: int) -> np.ndarray:
    """Decode one opened image to uint8 [H, W, channels] following the module's channel rules."""
    try:
        img.load()
        mode = img.mode
        if mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif mode == "PA":
            img = img.convert("RGBA")
        elif mode == "1":
            img = img.convert("L")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
            img = img.convert("RGB")
        arr = np.asarray(img)
    except Exception as exc:
        raise ValueError(f"{path}: corrupt or truncated image ({type(exc).__name__}: {exc}); "
                         f"remove or re-encode it") from None
    mode = img.mode
    if mode in ("RGBA", "LA"):
        alpha = arr[..., -1:].astype(np.uint16)
        arr = ((arr[..., :-1].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    elif mode not in ("L", "RGB"):
        raise ValueError(f"{path}: unsupported image mode {mode} (16-bit or float?); convert to 8-bit "
                         f"grayscale or RGB first")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1 and channels == 3:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


def _load_folder(folder: str):
    files = _list_images(folder)
    if not files:
        raise ValueError(f"--data {folder}: no {'/'.join(e[1:].upper() for e in IMAGE_EXTENSIONS)} images "
                         f"(searched recursively) and no IDX files; pass {_SUPPORTED}")
    # Pass 1: headers only (cheap) to fix the size and channel count before decoding anything.
    size, channels = None, 1
    for f in files:
        with _open(f) as img:
            w, h = img.size
            if w != h:
                raise ValueError(f"{f}: image is {w}x{h}; all images must be square (crop them first)")
            if size is None:
                size, first = w, f
            elif w != size:
                raise ValueError(f"{f}: image is {w}x{h} but {first} is {size}x{size}; "
                                 f"all images must have one size (resize them first)")
            channels = max(channels, mode_channels(img.mode, f))
    # Pass 2: decode straight into one preallocated array.
    images = np.empty((len(files), size, size, channels), dtype=np.uint8)
    for i, f in enumerate(files):
        with _open(f) as img:
            images[i] = _to_array(img, f, channels)
    return images, None, _describe("image folder", folder, images, None)
