"""Class-conditional training glue: model options from the config, and the dataset's class count.

See docs/conditional.md. The config records cond, cond_head, num_classes and label_embed_size, so
a checkpoint alone rebuilds a conditional G or D (generate.py, metrics).
"""
from __future__ import annotations

import torch

from .config import TrainConfig


def cond_kwargs(cfg: TrainConfig) -> tuple[dict, dict]:
    """(Generator kwargs, Discriminator kwargs) for the conditioning; both empty when unconditional."""
    if not cfg.cond:
        return {}, {}
    if cfg.num_classes < 2:
        raise ValueError(f"a class-conditional run needs at least 2 classes, got num_classes={cfg.num_classes}")
    return (dict(num_classes=cfg.num_classes, label_embed_size=cfg.label_embed_size),
            dict(num_classes=cfg.num_classes, cond_head=cfg.cond_head))


def dataset_num_classes(dataset, source: str = "the dataset") -> int:
    """max(label) + 1 of a MultiResolutionDataset, or one clear error if it has no usable labels."""
    if not getattr(dataset, "has_labels", False):
        raise ValueError(f"--cond needs class labels, but {source} has none (an .npz needs a 'labels' key, "
                         "IDX data a matching *labels-idx1-ubyte file, a dataset directory needs labels at creation); drop --cond to train unconditionally")
    labels = dataset.labels
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise ValueError(f"--cond: labels must be class indices >= 0, {source} has {lo}")
    if hi < 1:
        raise ValueError(f"--cond: {source} has a single class ({hi}); conditioning needs at least 2")
    return hi + 1


def grid_labels(n: int, num_classes: int) -> torch.Tensor:
    """Labels of the training sample grids: 0, 1, ..., K-1, 0, 1, ... (one class per grid column)."""
    return torch.arange(n) % num_classes
