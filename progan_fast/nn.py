"""Drop-in PGGAN layers. Each holds raw N(0,1) weights and applies the equalized-LR scale
gain / sqrt(fan_in) at run time (DESIGN §2); the math runs through `progan_fast.ops`, so the layers
use the fused Triton / CUDA kernels whenever the active backend provides them."""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from . import ops
from ._layout import autocast_dtype

SQRT2 = math.sqrt(2.0)


class EqualizedConv2d(nn.Module):
    """conv (+ nearest-2x up / 2x2 avg-pool down) -> bias -> act (-> pixel norm), one PGGAN layer."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, gain: float = SQRT2,
                 act: str = "lrelu", slope: float = 0.2, pixel_norm: bool = False, up: bool = False,
                 down: bool = False, fused_scale: bool = False, bias: bool = True, eps: float = 1e-8):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.gain, self.act, self.slope, self.eps = gain, act, slope, eps
        self.pixel_norm, self.up, self.down, self.fused_scale = pixel_norm, up, down, fused_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.eq_conv2d(x, self.weight, self.bias, gain=self.gain, act=self.act, slope=self.slope,
                             pixel_norm=self.pixel_norm, up=self.up, down=self.down,
                             fused_scale=self.fused_scale, eps=self.eps)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        flags = [f for f in ("up", "down", "pixel_norm", "fused_scale") if getattr(self, f)]
        return f"{i}, {o}, k={k}, gain={self.gain:.4g}, act={self.act}" + "".join(f", {f}" for f in flags)


class EqualizedLinear(nn.Module):
    """Dense layer with equalized LR: act(x @ (W * gain/sqrt(fan_in))^T + b)."""

    def __init__(self, in_features: int, out_features: int, *, gain: float = SQRT2, act: str = "linear",
                 slope: float = 0.2, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.gain, self.act, self.slope = gain, act, slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # under autocast the weight is made in its dtype at once (autocast would cast it again otherwise)
        y = F.linear(x, ops.reference.equalized_weight(self.weight, self.gain, autocast_dtype(x.device.type)))
        if self.bias is None and self.act == "linear":
            return y
        return ops.bias_act(y, self.bias, act=self.act, slope=self.slope)

    def extra_repr(self) -> str:
        o, i = self.weight.shape
        return f"{i}, {o}, gain={self.gain:.4g}, act={self.act}"


class PixelNorm(nn.Module):
    """x * rsqrt(mean(x^2 over channels) + eps)."""

    def __init__(self, eps: float = 1e-8, dim: int = 1):
        super().__init__()
        self.eps, self.dim = eps, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.pixel_norm(x, eps=self.eps, dim=self.dim)


class MinibatchStdDev(nn.Module):
    """Appends the mean stddev over strided groups of min(group_size, N) samples as one channel."""

    def __init__(self, group_size: int = 4, eps: float = 1e-8):
        super().__init__()
        self.group_size, self.eps = group_size, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.minibatch_stddev(x, group_size=self.group_size, eps=self.eps)


class BiasAct(nn.Module):
    """Learned per-channel bias + activation (+ pixel norm): G's 4x4 input epilogue."""

    def __init__(self, channels: int, *, act: str = "lrelu", slope: float = 0.2, pixel_norm: bool = False,
                 eps: float = 1e-8):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.act, self.slope, self.pixel_norm, self.eps = act, slope, pixel_norm, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pixel_norm:
            return ops.bias_act_pixel_norm(x, self.bias, act=self.act, slope=self.slope, eps=self.eps)
        return ops.bias_act(x, self.bias, act=self.act, slope=self.slope)


class EqualizedEmbedding(nn.Module):
    """Class embedding with equalized LR: rows drawn N(0, 1), multiplied at run time by `scale`.

    A lookup is a linear layer applied to a one-hot vector, whose effective fan-in is 1, so the
    default scale is 1 (entries as large as the latent's); D's projection head uses 1/sqrt(dim),
    the scale of a dense layer with that fan-in, since it is dotted with a dim-wide feature.
    """

    def __init__(self, num_classes: int, dim: int, *, scale: float = 1.0):
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError(f"EqualizedEmbedding needs num_classes >= 1 and dim >= 1, got {num_classes}, {dim}")
        self.weight = nn.Parameter(torch.randn(num_classes, dim))
        self.scale = scale

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return F.embedding(labels, self.weight) * self.scale

    def extra_repr(self) -> str:
        k, d = self.weight.shape
        return f"{k}, {d}, scale={self.scale:.4g}"
