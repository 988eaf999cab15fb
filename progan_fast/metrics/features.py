"""Feature extractors for FID / IS: the shipped FashionMNIST classifier, or a user-supplied Inception.

Nothing is ever downloaded. For Inception-based FID, pass a TorchScript file (`--inception PATH`): it
is called as `m(x, return_features=True)` when it accepts that keyword (the convention of the widely
used inception-2015-12-05.pt TorchScript detector, which resizes internally), else as `m(x)`. x is
float32 [N, 3, H, W] with values 0..255 at the images' own resolution (grayscale replicated to 3
channels); the module must return features [N, D].
"""
from __future__ import annotations

import os
import warnings

import torch

from .classifier import load_classifier, to_classifier_input

__all__ = ["ClassifierFeatures", "TorchScriptFeatures"]


class ClassifierFeatures:
    """128-d penultimate features and 10 logits of the FashionMNIST classifier, in batches."""

    name = "fmnist-classifier"

    def __init__(self, weights: str | os.PathLike | None = None, device="cpu", batch: int = 500):
        self.device, self.batch = torch.device(device), batch
        self.model = load_classifier(weights, self.device)

    @torch.no_grad()
    def __call__(self, images_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [N, 1, r, r] -> (features [N, 128], logits [N, 10]), float32 on the CPU."""
        feats, logits = [], []
        for i in range(0, images_u8.shape[0], self.batch):
            x = to_classifier_input(images_u8[i:i + self.batch]).to(self.device)
            f = self.model.features(x)
            feats.append(f.float().cpu())
            logits.append(self.model.head(f).float().cpu())
        return torch.cat(feats), torch.cat(logits)


class TorchScriptFeatures:
    """A user's TorchScript feature network (e.g. Inception-v3 for standard FID)."""

    name = "inception"

    def __init__(self, path: str | os.PathLike, device="cpu", batch: int = 100):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--inception {path}: no such file (a TorchScript feature network; "
                                    f"nothing is downloaded)")
        try:
            with warnings.catch_warnings():  # torch >= 2.14 flags torch.jit as deprecated; the user chose the format
                warnings.simplefilter("ignore", FutureWarning)
                self.module = torch.jit.load(path, map_location=device).eval()
        except Exception as exc:
            raise ValueError(f"--inception {path} is not a loadable TorchScript file ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        self.device, self.batch, self.path = torch.device(device), batch, path
        self._kw = None  # whether the module takes return_features=True; found on first use

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self._kw is None:
            try:
                out = self.module(x, return_features=True)
                self._kw = True
                return out
            except Exception:  # scripted modules raise RuntimeError for an unknown keyword
                self._kw = False
        return self.module(x, return_features=True) if self._kw else self.module(x)

    @torch.no_grad()
    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] -> features [N, D] float32 on the CPU."""
        out = []
        for i in range(0, images_u8.shape[0], self.batch):
            x = images_u8[i:i + self.batch].to(self.device, torch.float32)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            f = self._run(x)
            if isinstance(f, (tuple, list)):
                f = f[0]
            if not isinstance(f, torch.Tensor) or f.ndim != 2 or f.shape[0] != x.shape[0]:
                raise ValueError(f"--inception {self.path}: expected features [N, D] for {x.shape[0]} images, "
                                 f"got {getattr(f, 'shape', type(f))}")
            out.append(f.float().cpu())
        return torch.cat(out)
