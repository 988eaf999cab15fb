"""The shapes the paper model really runs (DESIGN §2): channels per resolution and the 1-GPU
minibatch schedule, taken from the model and the training schedule themselves, so benchmarks time
what training times."""
from __future__ import annotations

from progan_fast.models import nf
from progan_fast.models import resolution_log2 as log2
from progan_fast.training.schedule import PAPER_MINIBATCH as BATCH_1GPU  # the official 1-GPU minibatches

RESOLUTIONS = (4, 8, 16, 32, 64, 128, 256, 512, 1024)


def block_channels(res: int, **fmap) -> int:
    """Channels of the block at `res` px (both convs of G's block, the first of D's): nf(log2(res) - 1)."""
    return nf(log2(res) - 1, **fmap)


def prev_channels(res: int, **fmap) -> int:
    """Channels entering G's block at `res` (and leaving D's block at `res`): nf(log2(res) - 2)."""
    return nf(log2(res) - 2, **fmap)
