"""MS-SSIM (Wang et al. 2003) between image pairs: the paper's diversity check on generated images.

Same definition as the MS-SSIM the PGGAN repository uses (metrics/ms_ssim.py, after the TensorFlow
compression code): per scale an SSIM with an 11x11 Gaussian window (sigma 1.5, 'valid' borders,
K1 = 0.01, K2 = 0.03, dynamic range 255), 2x2 average-pool between scales, contrast-structure terms of
the finer scales and the full SSIM of the coarsest scale, each clipped at 0, raised to the weights
(0.0448, 0.2856, 0.3001, 0.2363, 0.1333) and multiplied; averaged over pairs at the end.

Small images: five scales need >= 176 px for the window to fit every scale. The official code keeps
five scales and shrinks the window (and sigma with it) at the scales where it does not fit; that is
available as `levels=5`. The default (`levels=None`) instead uses the largest number of scales L <= 5
whose coarsest scale still holds the full 11x11 window (32 px -> 2 scales: 32, 16), with the first L
weights rescaled to sum to 1, so every scale is a true 11x11 SSIM. Below 11 px one scale is used with
the shrunken window. Identical images give exactly 1; unrelated images give values near 0.
Computed in float64.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["ms_ssim", "ms_ssim_pairs", "default_levels", "WEIGHTS"]

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def default_levels(size: int, window: int = 11) -> int:
    """Scales used by default for `size` px images: the coarsest scale still holds the window."""
    if size < window:
        return 1
    return max(1, min(len(WEIGHTS), 1 + int(math.floor(math.log2(size / window)))))


def _gauss_window(size: int, sigma: float) -> torch.Tensor:
    """MATLAB fspecial('gaussian') (even sizes sample at half-integers), normalized to sum 1."""
    r = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0)
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * sigma ** 2))
    return g / g.sum()


def _ssim_cs(x: torch.Tensor, y: torch.Tensor, window: int, sigma: float, c1: float, c2: float):
    size = min(window, x.shape[-2], x.shape[-1])
    sig = size * sigma / window  # shrink sigma with the window, as the official code does
    c = x.shape[1]
    w = _gauss_window(size, sig).to(x.device).expand(c, 1, size, size)
    f = lambda t: F.conv2d(t, w, groups=c)  # noqa: E731  ('valid' borders)
    mu_x, mu_y = f(x), f(y)
    sxx = f(x * x) - mu_x * mu_x
    syy = f(y * y) - mu_y * mu_y
    sxy = f(x * y) - mu_x * mu_y
    v1 = 2.0 * sxy + c2
    v2 = sxx + syy + c2
    ssim = ((2.0 * mu_x * mu_y + c1) * v1 / ((mu_x * mu_x + mu_y * mu_y + c1) * v2)).mean(dim=(1, 2, 3))
    cs = (v1 / v2).mean(dim=(1, 2, 3))
    return ssim, cs


@torch.no_grad()
def ms_ssim(x: torch.Tensor, y: torch.Tensor, *, levels: int | None = None, window: int = 11,
            sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03, max_val: float = 255.0,
            reduce: bool = True):
    """MS-SSIM of each pair (x[i], y[i]); x, y [N, C, H, W] (uint8 or float in 0..max_val).

    Returns the mean over pairs as a float, or the per-pair values [N] with reduce=False.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ms_ssim: x and y must be [N, C, H, W] of one shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("ms_ssim needs at least one pair of images")
    size = min(x.shape[-2:])
    if levels is None:
        levels = default_levels(size, window)
    if not 1 <= levels <= len(WEIGHTS):
        raise ValueError(f"ms_ssim: levels must be 1..{len(WEIGHTS)}, got {levels}")
    if size >> (levels - 1) < 1:
        raise ValueError(f"ms_ssim: {size} px images are too small for {levels} scales")
    weights = torch.tensor(WEIGHTS[:levels], dtype=torch.float64)
    if levels < len(WEIGHTS):
        weights = weights / weights.sum()
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    x, y = x.to(torch.float64), y.to(torch.float64)
    cs_all = []
    for lvl in range(levels):
        ssim, cs = _ssim_cs(x, y, window, sigma, c1, c2)
        cs_all.append(cs)
        if lvl < levels - 1:
            h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2  # odd sizes drop the last row/column
            x = F.avg_pool2d(x[..., :h, :w], 2)
            y = F.avg_pool2d(y[..., :h, :w], 2)
    weights = weights.to(ssim.device)
    out = ssim.clamp(min=0) ** weights[-1]
    for lvl in range(levels - 1):
        out = out * cs_all[lvl].clamp(min=0) ** weights[lvl]
    return float(out.mean()) if reduce else out


def ms_ssim_pairs(images: torch.Tensor, **kwargs) -> float:
    """Mean MS-SSIM over consecutive pairs (0,1), (2,3), ... of one image set (the paper's diversity check)."""
    if images.ndim != 4 or images.shape[0] < 2:
        raise ValueError(f"ms_ssim needs at least 2 images (one pair), got {tuple(images.shape)}")
    n = images.shape[0] // 2 * 2
    return ms_ssim(images[0:n:2], images[1:n:2], **kwargs)
