"""The small FashionMNIST classifier whose feature space FID and the Inception-style score use.

Inception-v3 knows nothing about 28x28 grayscale clothes, and downloading it is not an option here, so
the project trains and ships its own network (`python -m progan_fast.metrics.train_classifier`,
weights in progan_fast/metrics/weights/). Inputs: 1 x 32 x 32 in [-1, 1], FashionMNIST's 28x28 padded
to 32x32 as the trainer pads it. `features()` is the 128-d penultimate layer (after its ReLU), used for
FID; `forward()` gives the 10 class logits, used for the Inception-style score.

Scores computed in this space are comparable with each other only (same weights, same resolution),
not with Inception-based FIDs published elsewhere.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FMNISTClassifier", "load_classifier", "DEFAULT_WEIGHTS", "to_classifier_input", "CLASSIFIER_RES"]

DEFAULT_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "fmnist_classifier.pt")
CLASSIFIER_RES = 32
FORMAT = "progan_fast-fmnist-classifier"


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.MaxPool2d(2)]


class FMNISTClassifier(nn.Module):
    """Three conv blocks (32, 64, 64 channels; 32 -> 4 px), a 128-d dense feature layer, 10 logits."""

    feature_dim = 128
    num_classes = 10

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*_block(1, 32), *_block(32, 64), *_block(64, 64), nn.Flatten(),
                                  nn.Linear(64 * 4 * 4, self.feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1:] != (1, CLASSIFIER_RES, CLASSIFIER_RES):
            raise ValueError(f"classifier input must be [N, 1, {CLASSIFIER_RES}, {CLASSIFIER_RES}] in [-1, 1], "
                             f"got {tuple(x.shape)}; use to_classifier_input()")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_classifier_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 1, r, r] (any power-of-two r) -> float [N, 1, 32, 32] in [-1, 1].

    Smaller images (an evaluation at 8 or 16 px during training) are nearest-upsampled, larger ones
    box-averaged down, so reals and fakes of one resolution always go through the same resampling.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    if images.shape[1] != 1:
        raise ValueError(f"the FashionMNIST classifier takes grayscale images; these have {images.shape[1]} "
                         f"channels (for RGB data pass --inception PATH for FID)")
    x = images.float().div_(127.5).sub_(1.0)
    r = x.shape[-1]
    if r < CLASSIFIER_RES:
        x = F.interpolate(x, size=(CLASSIFIER_RES, CLASSIFIER_RES), mode="nearest")
    elif r > CLASSIFIER_RES:
        x = F.adaptive_avg_pool2d(x, CLASSIFIER_RES)
    return x


def fashion_mnist_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A FashionMNIST split ('train' or 'test') at the classifier's resolution: uint8 images
    [N, 1, 32, 32] and int64 labels [N] (training the classifier, the real-vs-real baseline)."""
    from ..data import MultiResolutionDataset, load_fashion_mnist
    images, labels, _ = load_fashion_mnist(split)
    ds = MultiResolutionDataset(images, labels, resolution=CLASSIFIER_RES)
    return ds.level(CLASSIFIER_RES), ds.labels


def load_classifier(path: str | os.PathLike | None = None, device="cpu") -> FMNISTClassifier:
    """The shipped classifier (or one trained with train_classifier --out PATH), in eval mode."""
    path = os.fspath(path or DEFAULT_WEIGHTS)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"classifier weights not found at {path}; train them with "
                                f"`python -m progan_fast.metrics.train_classifier --out {path}`")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"classifier weights {path} are unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a progan_fast FashionMNIST classifier file")
    with torch.random.fork_rng(devices=[]):  # layer init must not move the caller's (a trainer's) RNG
        model = FMNISTClassifier()
    state = {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit FMNISTClassifier ({exc})") from None
    return model.to(device).eval()
