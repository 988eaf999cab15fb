"""In-memory multi-resolution dataset: one uint8 level per power-of-two resolution.

Levels follow the official dataset tool (DESIGN §2): the chain full -> 4 px runs in float32, each level
the 2x2 box mean of the previous float level, and each is rounded (np.rint, half to even) to uint8 only
when stored. For uint8 inputs and up to 8 halvings (1024 -> 4) every float32 value is exact, so each
stored level equals rint(mean of the 2^k x 2^k block of the full image).

Images that are not a power of two wide are zero-padded (black) to the next one, centred: FashionMNIST's
28x28 becomes 32x32 with 2 px on each side.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["MultiResolutionDataset", "pad_to_power_of_two", "box_levels", "level_sizes", "MIN_RESOLUTION"]

MIN_RESOLUTION = 4
_CHUNK_BYTES = 256 << 20  # float32 working set per chunk while building levels


def _next_pow2(n: int) -> int:
    return max(MIN_RESOLUTION, 1 << (int(n) - 1).bit_length())


def check_resolution(value: int, name: str = "resolution") -> int:
    """`value` if it is a power of two >= MIN_RESOLUTION, else a ValueError naming `name`."""
    if value < MIN_RESOLUTION or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= {MIN_RESOLUTION}, got {value}")
    return value


def chunk_rows(channels: int, size: int) -> int:
    """Images per chunk while building levels: a float32 working set of about _CHUNK_BYTES."""
    return max(1, _CHUNK_BYTES // (4 * channels * size * size))


class LevelStore:
    """What every dataset of stored levels shares: `_levels` {res: [N, C, res, res] uint8 tensor or
    tensor-like}, `labels` [N] int64 (-1 and has_labels False without labels)."""

    _levels: dict

    def _set_no_labels(self, n: int) -> None:
        self.labels = torch.full((n,), -1, dtype=torch.int64)
        self.has_labels = False

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def resolutions(self) -> list[int]:
        """Stored levels, largest first."""
        return sorted(self._levels, reverse=True)

    def level(self, res: int):
        """uint8 [N, C, res, res] (the stored level, not a copy: do not modify it)."""
        try:
            return self._levels[int(res)]
        except KeyError:
            raise ValueError(f"no level {res} px; this dataset has {self.resolutions}") from None


def _as_uint8_nhwc(images) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got numpy {images.dtype}")
        images = torch.from_numpy(np.ascontiguousarray(images))
    elif not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if images.dim() == 3:
        images = images.unsqueeze(-1)
    if images.dim() != 4:
        raise ValueError(f"images must be [N, H, W, C] (or [N, H, W]), got shape {tuple(images.shape)}")
    n, h, w, c = images.shape
    if n == 0:
        raise ValueError("images is empty")
    if h != w:
        raise ValueError(f"images must be square, got {h}x{w}; crop them first")
    if c not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels (NHWC), got {c} (shape {tuple(images.shape)})")
    return images.cpu()


def pad_to_power_of_two(images_nchw: torch.Tensor) -> torch.Tensor:
    """Zero-pad square NCHW images to the next power of two (at least 4), centred (extra pixel after)."""
    size = images_nchw.shape[-1]
    target = _next_pow2(size)
    if target == size:
        return images_nchw
    before = (target - size) // 2
    after = target - size - before
    return torch.nn.functional.pad(images_nchw, (before, after, before, after), value=0)


def level_sizes(full: int, keep_max: int | None = None) -> list[int]:
    """Powers of two from min(full, keep_max) down to MIN_RESOLUTION, largest first."""
    top = full if keep_max is None else min(full, keep_max)
    return [top >> k for k in range(top.bit_length()) if (top >> k) >= MIN_RESOLUTION]


def box_levels(images_nhwc: torch.Tensor, keep_max: int | None = None) -> dict[int, torch.Tensor]:
    """uint8 levels {r: [n, C, r, r]} of one chunk of uint8 NHWC images: pad to a power of two, then
    the float32 2x2 box chain down to 4 px, each level rounded (half to even) only when stored.

    Levels above keep_max are computed (the chain starts at the full image) but not returned. Shared by
    MultiResolutionDataset and the dataset tool, so both store bit-identical levels.
    """
    c = images_nhwc.shape[3]
    x = pad_to_power_of_two(images_nhwc.permute(0, 3, 1, 2)).to(torch.float32)
    full = x.shape[-1]
    keep = set(level_sizes(full, keep_max))
    out = {}
    for r in level_sizes(full):
        if r != full:  # 2x2 box of the previous float level
            x = x.view(x.shape[0], c, r, 2, r, 2).mean(dim=(3, 5))
        if r in keep:
            out[r] = x.round().clamp(0, 255).to(torch.uint8)
    return out


class MultiResolutionDataset(LevelStore):
    """uint8 levels [N, C, r, r] for r = resolution, resolution/2, ..., 4, plus labels.

    images_uint8_nhwc: uint8 [N, H, W, C] (numpy or torch; [N, H, W] means C = 1), square.
    labels: optional integers [N]; without them `.labels` is all -1 and `.has_labels` is False
        (a sentinel that fails loudly if used as a class index).
    resolution: the largest level to keep (a power of two <= the padded image size); default the
        padded image size. Smaller values train a big dataset at a lower final resolution: levels are
        still derived from the full image, so level r is the same whatever `resolution` is.
    """

    def __init__(self, images_uint8_nhwc, labels=None, resolution: int | None = None):
        images = _as_uint8_nhwc(images_uint8_nhwc)
        n = images.shape[0]
        full = _next_pow2(images.shape[1])
        if resolution is None:
            resolution = full
        resolution = check_resolution(int(resolution))
        if resolution > full:
            raise ValueError(f"resolution {resolution} exceeds the images ({images.shape[1]} px, padded to "
                             f"{full}); images are never upsampled")
        self.source_size = int(images.shape[1])
        self.resolution = resolution
        self.num_channels = int(images.shape[3])
        self._levels = self._build_levels(images, full, resolution)
        if labels is None:
            self._set_no_labels(n)
        else:
            labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
            if labels.shape != (n,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
                raise ValueError(f"labels must be integers of shape [{n}], got {labels.dtype} {tuple(labels.shape)}")
            self.labels = labels.to(torch.int64).cpu().contiguous()
            self.has_labels = True

    @staticmethod
    def _build_levels(images_nhwc: torch.Tensor, full: int, keep_max: int) -> dict[int, torch.Tensor]:
        n, _, _, c = images_nhwc.shape
        sizes = level_sizes(full, keep_max)
        levels = {r: torch.empty((n, c, r, r), dtype=torch.uint8) for r in sizes}
        chunk = chunk_rows(c, full)
        for start in range(0, n, chunk):
            for r, x in box_levels(images_nhwc[start:start + chunk], keep_max).items():
                levels[r][start:start + x.shape[0]] = x
        return levels

    def __repr__(self) -> str:
        return (f"MultiResolutionDataset(n={len(self)}, channels={self.num_channels}, "
                f"source={self.source_size}px, levels={self.resolutions}, labels={self.has_labels})")
