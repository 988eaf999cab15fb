"""The compiled extension's *kernel set* for `library.define_ops` (see `library.KernelSet`).

Each function allocates its outputs by the layout rules the fake functions share (`torch.empty_like`
of the first tensor argument; resampled / widened outputs in the input's memory format via
`_layout.empty_4d`) and calls one checked entry point of `progan_fast._C`. No autograd here.
`bind(module)` installs the loaded extension (the real build, or a JIT build of the same sources).
"""
from __future__ import annotations

import torch

from ._layout import acc_dtype, empty_4d
from .triton.library import sum_except

ACT_CODES = {"linear": 0, "relu": 1, "lrelu": 2}
# bias_act_grad_db: rows of dx summed per partial row (the partials are 1/BIAS_ROWS of dx; untuned)
BIAS_ROWS = 64
_C = None


def bind(module) -> None:
    global _C
    _C = module


def _ext():
    if _C is None:
        raise RuntimeError("progan_fast: the CUDA extension is not loaded (import progan_fast._cuda_backend)")
    return _C


def bias_act(x, b, act, slope, gain, dim):
    y = torch.empty_like(x)
    _ext().bias_act(x, b, y, ACT_CODES[act], float(slope), float(gain), int(dim))
    return y


def bias_act_grad(dy, y, act, slope, gain):
    dx = torch.empty_like(dy)
    _ext().bias_act_grad(dy, y, dx, ACT_CODES[act], float(slope), float(gain))  # the extension ignores y for linear
    return dx


def bias_act_grad_db(dy, y, act, slope, gain, dim):
    """(dx, db): bias_act_grad plus db = the sum of dx over every dim but `dim`, in fp32 (fp64 for fp64).
    Where the bias dim has unit stride in dense operands (channels_last, 2-D [N, C]) and C >= 32, one
    kernel writes dx and per-row-block partial sums of it, so dx is not read a second time; elsewhere
    (NCHW, few channels) the plain kernel and a torch sum."""
    acc = acc_dtype(dy.dtype)
    yy = y if ACT_CODES[act] != 0 else None
    cols = dy.shape[dim]
    rows_by_cols = ((dim == dy.dim() - 1 and dy.is_contiguous())  # [..., C] row-major
                    or (dy.dim() == 4 and dim == 1 and dy.is_contiguous(memory_format=torch.channels_last)))
    # fewer than 32 columns (toRGB's 3): a warp would span several row blocks and its loads scatter
    if dy.numel() == 0 or cols < 32 or not rows_by_cols or (yy is not None and yy.stride() != dy.stride()):
        dx = bias_act_grad(dy, y, act, slope, gain)
        return dx, sum_except(dx, dim, acc)
    dx = torch.empty_like(dy)
    rows = dy.numel() // cols
    part = torch.empty(((rows + BIAS_ROWS - 1) // BIAS_ROWS, cols), dtype=acc, device=dy.device)
    _ext().bias_act_grad_db(dy, yy, dx, part, ACT_CODES[act], float(slope), float(gain), int(dim), BIAS_ROWS)
    return dx, part.sum(0)


def pixel_norm(x, eps, dim):
    y = torch.empty_like(x)
    _ext().pixel_norm(x, None, y, int(dim), 0, 0.0, 1.0, float(eps))
    return y


def pixel_norm_grad(dy, x, eps, dim):
    dx = torch.empty_like(x)
    _ext().pixel_norm_grad(dy, x, None, dx, int(dim), 0, 0.0, 1.0, float(eps))
    return dx


def bias_act_pixel_norm(x, b, act, slope, gain, eps):
    y = torch.empty_like(x)
    _ext().pixel_norm(x, b, y, 1, ACT_CODES[act], float(slope), float(gain), float(eps))
    return y


def bias_act_pixel_norm_grad(dy, x, b, act, slope, gain, eps):
    dx = torch.empty_like(x)
    _ext().pixel_norm_grad(dy, x, b, dx, 1, ACT_CODES[act], float(slope), float(gain), float(eps))
    return dx


def minibatch_stddev(x, group_size, eps):
    n, c, h, w = x.shape
    out = empty_4d((n, c + 1, h, w), x)
    _ext().minibatch_stddev(x, out, int(group_size), float(eps))
    return out


def minibatch_stddev_grad(dy, x, group_size, eps):
    dx = torch.empty_like(x)
    _ext().minibatch_stddev_grad(dy, x, dx, int(group_size), float(eps))
    return dx


def lerp(a, b, alpha_t, alpha):
    y = torch.empty_like(a)
    _ext().lerp(a, b, alpha_t, float(alpha), y)
    return y


def lerp_grad(g, alpha_t, alpha):
    da, db = torch.empty_like(g), torch.empty_like(g)
    _ext().lerp_grad(g, alpha_t, float(alpha), da, db)
    return da, db


def upsample_blend(hi, lo, alpha_t, alpha):
    y = torch.empty_like(hi)
    _ext().upsample_blend(hi, lo, alpha_t, float(alpha), y)
    return y


def upsample_blend_grad(g, alpha_t, alpha):
    n, c, h, w = g.shape
    dhi, dlo = torch.empty_like(g), empty_4d((n, c, h // 2, w // 2), g)
    _ext().upsample_blend_grad(g, alpha_t, float(alpha), dhi, dlo)
    return dhi, dlo


def fade_reals(x, alpha_t, alpha):
    y = torch.empty_like(x)
    _ext().fade_reals(x, alpha_t, float(alpha), y)
    return y


def downsample2x(x):
    n, c, h, w = x.shape
    y = empty_4d((n, c, h // 2, w // 2), x)
    _ext().downsample2x(x, y)
    return y


def downsample2x_grad(g):
    n, c, h, w = g.shape
    dx = empty_4d((n, c, h * 2, w * 2), g)
    _ext().downsample2x_grad(g, dx)
    return dx
