"""eq_conv2d for the Triton backend: the convolution itself by torch (cuDNN / cuBLAS), then one
fused Triton epilogue (bias + activation, or bias + activation + pixel norm) instead of three or
four elementwise passes. The full implicit-GEMM Triton convolution lives in `conv.py`."""
from __future__ import annotations

import torch

from ..ops import reference


def eq_conv2d(x, weight, bias=None, *, gain, act, slope, pixel_norm, up, down, fused_scale, eps):
    """Same contract as `progan_fast.ops.reference.eq_conv2d` (validated arguments)."""
    w = reference.equalized_weight(weight, gain).to(x.dtype)
    y = reference.conv2d_resample(x, w, up=up, down=down, fused_scale=fused_scale)
    ops = torch.ops.progan_fast
    if pixel_norm:
        return ops.bias_act_pixel_norm(y, bias, act, slope, 1.0, eps)
    return ops.bias_act(y, bias, act, slope, 1.0, 1)
