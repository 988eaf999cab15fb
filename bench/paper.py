"""The shapes the paper model really runs (DESIGN §2): channels per resolution and the 1-GPU
minibatch schedule. Benchmarks take their shapes from here so they time what training times."""
from __future__ import annotations

import math

RESOLUTIONS = (4, 8, 16, 32, 64, 128, 256, 512, 1024)

# Minibatch per resolution on one GPU (official config, DESIGN §2).
BATCH_1GPU = {4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4, 1024: 4}


def nf(stage: int, fmap_base: int = 8192, fmap_decay: float = 1.0, fmap_max: int = 512) -> int:
    """Feature maps of a stage: min(int(fmap_base / 2**(stage * fmap_decay)), fmap_max)."""
    return min(int(fmap_base / (2.0 ** (stage * fmap_decay))), fmap_max)


def log2(res: int) -> int:
    r = int(math.log2(res))
    if 2 ** r != res or r < 2:
        raise ValueError(f"resolution must be a power of two >= 4, got {res}")
    return r


def block_channels(res: int, **fmap) -> int:
    """Channels of the block at `res` px (both convs of G's block, the first of D's): nf(log2(res) - 1)."""
    return nf(log2(res) - 1, **fmap)


def prev_channels(res: int, **fmap) -> int:
    """Channels entering G's block at `res` (and leaving D's block at `res`): nf(log2(res) - 2)."""
    return nf(log2(res) - 2, **fmap)
