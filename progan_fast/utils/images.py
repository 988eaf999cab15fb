"""Image grids and conversions (uint8 NHWC for files, [-1, 1] NCHW for the networks)."""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 (rounded, clipped), same device and layout."""
    return (images * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)


def to_uint8_nhwc(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] float NCHW -> uint8 NHWC numpy array."""
    return to_uint8(images.detach().float().cpu()).permute(0, 2, 3, 1).numpy()


def zoom(images: np.ndarray, factor: int) -> np.ndarray:
    """uint8 NHWC, each pixel repeated `factor` times along H and W (nearest upscaling)."""
    return images if factor <= 1 else images.repeat(factor, axis=1).repeat(factor, axis=2)


def grid(images: np.ndarray, ncols: int | None = None, size: int | None = None) -> np.ndarray:
    """uint8 NHWC -> one uint8 HWC mosaic; images are nearest-upscaled to `size` if given."""
    if size:
        images = zoom(images, size // images.shape[1])
    n, h, w, c = images.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    out = np.zeros((nrows * h, ncols * w, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncols)
        out[r * h:(r + 1) * h, q * w:(q + 1) * w] = images[i]
    return out


def save_png(mosaic: np.ndarray, path) -> None:
    Image.fromarray(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic).save(path)
