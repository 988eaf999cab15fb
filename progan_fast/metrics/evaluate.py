"""evaluate(): generate images with a Generator and score them against real images, in one call.

    from progan_fast.metrics import evaluate
    scores = evaluate(Gs, dataset, metrics=["swd", "msssim", "fid", "is"], num_images=10000)

`compare()` is the same without the generator: two uint8 image sets in, a dict of scores out (the
real-data baseline of the CLI is compare(test split, train split)).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..training.conditional import grid_labels
from ..utils.devices import pick_device
from ..utils.images import to_uint8
from .features import ClassifierFeatures, TorchScriptFeatures
from .frechet import fid_from_features, inception_score_from_logits
from .msssim import ms_ssim_pairs
from .sliced import swd, swd_resolutions

__all__ = ["evaluate", "compare", "generate_uint8", "real_images", "METRICS", "check_metrics", "check_training_metrics",
           "min_images"]

METRICS = ("swd", "msssim", "fid", "is", "fid_inception", "class_acc")
IS_SPLITS = 10


def check_metrics(metrics) -> list[str]:
    """Normalize 'swd,fid' or a list to a list of known metric names (one clear error otherwise)."""
    if isinstance(metrics, str):
        metrics = [m for m in metrics.split(",") if m.strip()]
    names = [m.strip().lower().replace("-", "_") for m in metrics]
    names = ["msssim" if m == "ms_ssim" else m for m in names]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


def check_training_metrics(metrics, num_channels: int) -> list[str]:
    """The metrics a training run can compute for its data (checked before training starts)."""
    names = check_metrics(metrics)
    if "fid_inception" in names:
        raise ValueError("--metrics fid_inception is not available during training (no --inception there); "
                         "score snapshots with `python -m progan_fast.metrics --inception PATH`")
    if num_channels != 1 and ({"fid", "is", "class_acc"} & set(names)):
        raise ValueError(f"--metrics fid/is use the FashionMNIST classifier, which takes grayscale images; this "
                         f"dataset has {num_channels} channels (use swd,msssim)")
    return names


def min_images(metric: str) -> int:
    """Fewest images per set a metric can be computed from (meaningful values need thousands)."""
    return IS_SPLITS if metric == "is" else 2


def _check_counts(metrics, n_fakes: int, n_reals: int) -> None:
    for m in metrics:
        need = min_images(m)
        if n_fakes < need or (m != "is" and m != "msssim" and n_reals < need):
            raise ValueError(f"{m} needs at least {need} images per set, got {n_fakes} generated and {n_reals} "
                             f"real (use thousands for meaningful values; the paper's SWD used 16384)")


def fake_labels(G, num: int) -> torch.Tensor | None:
    """The classes a conditional G is asked for: balanced, 0, 1, ..., K-1, 0, 1, ... (None if unconditional)."""
    k = getattr(G, "num_classes", 0)
    return grid_labels(num, k) if k else None


@torch.no_grad()
def generate_uint8(G, num: int, res_log2: int, alpha: float = 1.0, *, seed: int = 0, batch: int = 64,
                   device="cpu") -> torch.Tensor:
    """num images from G(z, res_log2, alpha[, labels]), z ~ N(0, I) from `seed`, as uint8 [num, C, r, r] on
    the CPU. A conditional G gets the balanced labels of fake_labels()."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(num, G.latent_size, generator=g)
    labels = fake_labels(G, num)
    out = []
    for i in range(0, num, batch):
        extra = () if labels is None else (labels[i:i + batch].to(device),)
        img = G(z[i:i + batch].to(device), res_log2, alpha, *extra).float()
        out.append(to_uint8(img).cpu())
    return torch.cat(out)


def real_images(data, resolution: int, num_channels: int | None = None, *, num: int | None = None,
                seed: int = 0) -> torch.Tensor:
    """uint8 [N, C, r, r] real images from a MultiResolutionDataset, a uint8 tensor / array (NCHW), or
    a --data spec ('fashion-mnist' or a path), checked against the model's resolution and channels.
    With `num`, a seeded random subset of at most num images (picked before any JPEG/PNG decoding)."""
    from ..data import MultiResolutionDataset, StoredDataset, load_dataset
    if isinstance(data, (str, os.PathLike)):
        data, _ = load_dataset(os.fspath(data))  # 'fashion-mnist', a dataset dir, or any --data source
    if isinstance(data, (MultiResolutionDataset, StoredDataset)):
        if resolution not in data.resolutions:
            raise ValueError(f"the model makes {resolution} px images but the dataset has levels {data.resolutions}; "
                             f"use the dataset the model was trained on")
        reals = data.level(resolution)  # a tensor, or a dataset dir's JPEG/PNG level (decoded by _subset)
    else:
        reals = torch.as_tensor(np.asarray(data)) if not isinstance(data, torch.Tensor) else data
        if reals.dtype != torch.uint8 or reals.ndim != 4:
            raise ValueError(f"real images must be uint8 [N, C, H, W], got {reals.dtype} {tuple(reals.shape)}")
        if reals.shape[-1] != resolution or reals.shape[-2] != resolution:
            raise ValueError(f"real images are {reals.shape[-2]}x{reals.shape[-1]} px but the model makes "
                             f"{resolution} px images")
    if num_channels is not None and reals.shape[1] != num_channels:
        raise ValueError(f"the dataset has {reals.shape[1]} channel(s) but the model makes {num_channels}; "
                         f"use the dataset the model was trained on")
    return _subset(reals, num, seed)


def _subset(images, num: int | None, seed: int) -> torch.Tensor:
    """A seeded random subset of at most num rows (all when num is None), in index order. `images` may
    be a tensor or an EncodedLevel: only the chosen images are decoded."""
    n = images.shape[0]
    idx = (torch.arange(n) if num is None or n <= num else
           torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))[:num].sort().values)
    if isinstance(images, torch.Tensor) and len(idx) == n:
        return images
    return images.index_select(0, idx)


def compare(reals: torch.Tensor, fakes: torch.Tensor, metrics=("swd", "msssim", "fid", "is"), *, seed: int = 0,
            device=None, classifier_weights=None, inception=None, fake_labels: torch.Tensor | None = None) -> dict:
    """Scores of uint8 image sets [N, C, r, r]: 'fakes' is the set judged, 'reals' the reference.

    swd uses min(len(reals), len(fakes)) images of each; msssim and is look at the fakes only (msssim is
    also reported for the reals as 'msssim_reals', the diversity the fakes should approach). class_acc:
    how often the shipped classifier puts a fake in the class it was made for (`fake_labels` [N]; for
    real images with their true labels it is the classifier's accuracy, the baseline).
    """
    metrics = check_metrics(metrics)
    device = pick_device() if device is None else torch.device(device)
    if reals.shape[1:] != fakes.shape[1:]:
        raise ValueError(f"real images {tuple(reals.shape[1:])} and generated images {tuple(fakes.shape[1:])} differ "
                         f"in channels or resolution")
    _check_counts(metrics, fakes.shape[0], reals.shape[0])
    out = {"num_fakes": int(fakes.shape[0]), "num_reals": int(reals.shape[0]), "resolution": int(fakes.shape[-1])}
    if "swd" in metrics:
        swd_resolutions(fakes.shape[-1])  # size check before any work
        n = min(reals.shape[0], fakes.shape[0])
        out.update(swd(reals[:n], fakes[:n], seed=seed, device=device))
    if "msssim" in metrics:
        out["msssim"] = ms_ssim_pairs(fakes.to(device))
        out["msssim_reals"] = ms_ssim_pairs(reals[:fakes.shape[0]].to(device))
    if "class_acc" in metrics and fake_labels is None:
        raise ValueError("class_acc needs the classes the images were made for: a class-conditional generator "
                         "(trained with --cond)")
    if {"fid", "is", "class_acc"} & set(metrics):
        extractor = ClassifierFeatures(classifier_weights, device)
        f_fake, l_fake = extractor(fakes)
        if "class_acc" in metrics:
            out["class_acc"] = float((l_fake.argmax(1).cpu() == fake_labels.cpu()).double().mean())
        if "fid" in metrics:
            out["fid"] = fid_from_features(extractor(reals)[0], f_fake)
        if "is" in metrics:
            out["is"], out["is_std"] = inception_score_from_logits(l_fake, IS_SPLITS)
    if "fid_inception" in metrics:
        if inception is None:
            raise ValueError("fid_inception needs an Inception TorchScript file (--inception PATH); "
                             "nothing is downloaded")
        net = inception if isinstance(inception, TorchScriptFeatures) else TorchScriptFeatures(inception, device)
        out["fid_inception"] = fid_from_features(net(reals), net(fakes))
    return out


def evaluate(G, data, metrics=("swd", "msssim", "fid", "is"), *, num_images: int = 10000, device=None,
             seed: int = 0, res_log2: int | None = None, alpha: float = 1.0, batch: int = 64,
             classifier_weights=None, inception=None) -> dict:
    """Generate `num_images` with G (any module with .latent_size called as G(z, res_log2, alpha); its
    output is read as [-1, 1]) and score them against up to `num_images` real images of `data` at
    resolution 2**res_log2 (default: G's full resolution), a seeded random subset when there are more;
    with alpha < 1 (mid-fade) the reals are blended as the trainer blends them (DESIGN §2).
    Returns a dict of floats (see compare())."""
    metrics = check_metrics(metrics)
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    device = torch.device(device) if device is not None else next(G.parameters()).device
    res_log2 = res_log2 if res_log2 is not None else G.resolution_log2
    reals = real_images(data, 2 ** res_log2, getattr(G, "num_channels", None), num=num_images, seed=seed)
    if alpha < 1.0 and res_log2 > 2:  # mid-fade: reals get the same blend the trainer gives them
        from ..ops import reference
        x = reference.fade_reals(reals.float() / 127.5 - 1.0, alpha)
        reals = to_uint8(x)
    _check_counts(metrics, num_images, reals.shape[0])
    if "class_acc" in metrics and not getattr(G, "num_classes", 0):
        raise ValueError("class_acc needs a class-conditional generator (trained with --cond); this one is "
                         "unconditional")
    was_training = G.training
    G.eval()
    try:
        fakes = generate_uint8(G, num_images, res_log2, alpha, seed=seed, batch=batch, device=device)
    finally:
        G.train(was_training)
    out = compare(reals, fakes, metrics, seed=seed, device=device, classifier_weights=classifier_weights,
                  inception=inception, fake_labels=fake_labels(G, num_images))
    out["alpha"] = float(alpha)
    return out
