"""Reading a dataset directory written by `python -m progan_fast.dataset create` (format in docs/data.md).

    DIR/manifest.json          written last; "complete": true marks a finished dataset
    DIR/level-0004.npy ...     raw uint8 [N, C, r, r], memory-mapped when read
    DIR/level-0128.bin         encoded levels (JPEG or PNG): the images' bytes back to back ...
    DIR/level-0128.offsets.npy ... and int64 offsets [N + 1] into them
    DIR/labels.npy             int64 [N] (only when the dataset has labels)

`StoredDataset` has the interface of MultiResolutionDataset (level, labels, resolution, ...), so
BatchStream and the trainer take either. Raw levels are memory-mapped (no load time, the page cache
holds what is hot); encoded levels decode the requested images on the fly in a thread pool.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .multires import LevelStore, check_resolution

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "StoredDataset", "EncodedLevel", "is_dataset_dir",
           "read_manifest", "decode_encoded"]

FORMAT = "progan_fast-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def level_name(res: int) -> str:
    return f"level-{res:04d}"


def is_dataset_dir(path: str | os.PathLike) -> bool:
    """True when `path` looks like a dataset directory (complete or not), so callers can fail clearly."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return False
    if os.path.exists(os.path.join(path, MANIFEST)):
        return True
    return any(n.startswith("level-") and n.endswith((".npy", ".bin")) for n in os.listdir(path))


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of a complete dataset, or ValueError saying why the directory is not one."""
    path = os.fspath(path)
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isfile(mpath):
        raise ValueError(f"{path}: no {MANIFEST}; an interrupted `progan_fast.dataset create` leaves no "
                         f"valid dataset: run it again")
    try:
        with open(mpath) as f:
            m = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{mpath}: unreadable manifest ({exc}); recreate the dataset") from None
    if m.get("format") != FORMAT:
        raise ValueError(f"{mpath}: not a progan_fast dataset manifest (format {m.get('format')!r})")
    if m.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{mpath}: dataset format version {m.get('format_version')!r}, this progan_fast reads "
                         f"{FORMAT_VERSION}; recreate the dataset with this version's tool")
    if m.get("complete") is not True:
        raise ValueError(f"{path}: dataset is incomplete (creation was interrupted); run the tool again")
    return m


def decode_encoded(data, channels: int):
    """Decode one JPEG/PNG level image (bytes-like) to uint8 [C, r, r]."""
    import io

    from PIL import Image
    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


class EncodedLevel:
    """A JPEG/PNG level that looks enough like a uint8 tensor [N, C, r, r] for BatchStream and the
    trainer: index_select(0, idx), [i] / [a:b] and .shape decode just the images asked for."""

    _pool = None

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, channels: int, res: int, codec: str):
        self.blob, self.offsets, self.codec = blob, offsets, codec
        self.shape = torch.Size((len(offsets) - 1, channels, res, res))
        self.dtype = torch.uint8

    def __len__(self) -> int:
        return self.shape[0]

    def encoded(self, i: int) -> np.ndarray:
        """The stored bytes of image i (a view into the memory-mapped blob)."""
        return self.blob[self.offsets[i]:self.offsets[i + 1]]

    def decode(self, indices) -> torch.Tensor:
        indices = [int(i) for i in indices]
        out = torch.empty((len(indices), *self.shape[1:]), dtype=torch.uint8)
        out_np = out.numpy()
        if EncodedLevel._pool is None:
            EncodedLevel._pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))

        def one(k):  # PIL releases the GIL while decoding, so threads scale
            out_np[k] = decode_encoded(self.encoded(indices[k]), self.shape[1])

        list(EncodedLevel._pool.map(one, range(len(indices))))
        return out

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        if dim != 0:
            raise ValueError("EncodedLevel selects images only (dim 0)")
        return self.decode(index.tolist())

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self.decode(range(*key.indices(len(self))))
        if isinstance(key, (int, np.integer)):
            return self.decode([key])[0]
        raise TypeError(f"EncodedLevel supports an int or a slice, got {type(key).__name__}")


class StoredDataset(LevelStore):
    """A dataset directory opened for training; the interface of MultiResolutionDataset. A level is a
    memory-mapped tensor (raw) or an EncodedLevel (JPEG/PNG, decoded on indexing).

    resolution: the largest level to use (default: the dataset's); larger than the dataset's is an error.
    """

    def __init__(self, path: str | os.PathLike, resolution: int | None = None):
        self.path = os.path.abspath(os.fspath(path))
        self.manifest = m = read_manifest(self.path)
        top = int(m["resolution"])
        if resolution is None:
            resolution = top
        resolution = int(resolution)
        if resolution > top:
            raise ValueError(f"--resolution {resolution} exceeds the dataset's resolution {top} ({self.path}); "
                             f"use --resolution {top} or recreate the dataset with --resolution {resolution}")
        check_resolution(resolution)
        self.resolution = resolution
        self.num_channels = int(m["channels"])
        self.source_size = int(m.get("source_size", top))
        n = int(m["count"])
        self.storage: dict[int, str] = {}
        self._levels = {}
        for key, info in m["levels"].items():
            r = int(key)
            if r > resolution:
                continue
            self.storage[r] = info["storage"]
            self._levels[r] = self._open_level(r, info, n)
        if m.get("labels"):
            self.labels = torch.from_numpy(self._load(m["labels"]["file"], (n,), np.int64, mmap=False).copy())
            self.has_labels = True
        else:
            self._set_no_labels(n)

    def _load(self, name, shape, dtype, mmap=True):
        f = os.path.join(self.path, name)
        try:
            # mode "c" (copy-on-write): writable for torch.from_numpy, never writes the file
            a = np.load(f, mmap_mode="c" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{f}: cannot read ({exc}); run `python -m progan_fast.dataset verify "
                             f"{self.path}`") from None
        if tuple(a.shape) != tuple(shape) or a.dtype != dtype:
            raise ValueError(f"{f}: expected {np.dtype(dtype)} {tuple(shape)}, found {a.dtype} {a.shape}; the "
                             f"dataset is damaged (run `python -m progan_fast.dataset verify {self.path}`)")
        return a

    def _open_level(self, r, info, n):
        c = self.num_channels
        if info["storage"] == "raw":
            return torch.from_numpy(self._load(info["file"], (n, c, r, r), np.uint8))
        offsets = self._load(info["offsets"], (n + 1,), np.int64, mmap=False)
        f = os.path.join(self.path, info["file"])
        size = os.path.getsize(f) if os.path.isfile(f) else -1
        if size != int(offsets[-1]):
            raise ValueError(f"{f}: {size} bytes, the offsets say {int(offsets[-1])}; the dataset is damaged")
        blob = np.memmap(f, dtype=np.uint8, mode="r") if size > 0 else np.zeros(0, np.uint8)
        return EncodedLevel(blob, offsets, c, r, info["storage"])

    def description(self) -> str:
        m = self.manifest
        enc = sorted({v for v in self.storage.values() if v != "raw"})
        return (f"dataset {self.path}: {len(self)} images {m['resolution']}px, "
                f"{'grayscale' if self.num_channels == 1 else 'RGB'}{', with labels' if self.has_labels else ''}"
                f"{' (' + '/'.join(enc) + ' levels)' if enc else ''}")

    def __repr__(self) -> str:
        return (f"StoredDataset({self.path!r}, n={len(self)}, channels={self.num_channels}, "
                f"levels={self.resolutions}, storage={self.storage}, labels={self.has_labels})")
