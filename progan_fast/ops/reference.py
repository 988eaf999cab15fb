"""Plain-PyTorch reference implementations: the ground truth every kernel is tested against.

Every function here is ordinary differentiable PyTorch (to any order), runs on any device and
never routes through the custom operators. Low-precision inputs are computed in float32 and cast
back, which is the numerical contract the fused kernels follow too (math in fp32 registers,
loads/stores in the tensor's dtype).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._layout import acc_dtype, memory_format
from . import conv_autograd

ACTIVATIONS = ("linear", "lrelu", "relu")


def _up(x: torch.Tensor) -> torch.Tensor:
    """x in its compute dtype, the kernels' accumulation dtype (fp16/bf16 upcast to fp32; fp32 and
    fp64 kept)."""
    return x.to(acc_dtype(x.dtype))


def _broadcast_shape(x: torch.Tensor, dim: int) -> list[int]:
    return [-1 if i == dim else 1 for i in range(x.ndim)]


def _activate(x: torch.Tensor, act: str, slope: float) -> torch.Tensor:
    if act == "lrelu":
        return F.leaky_relu(x, slope)
    if act == "relu":
        return F.relu(x)
    return x


def _biased(x, b, dim):
    """x + b in the compute dtype. A half x meets the fp32 bias in one add (type promotion reads x
    as fp32), not an upcast copy and then an add: the same values, one pass fewer."""
    if b is None:
        return _up(x)
    b = _up(b).reshape(_broadcast_shape(x, dim))
    return x + b if b.dtype == acc_dtype(x.dtype) else _up(x) + b


def bias_act(x, b=None, *, act="lrelu", slope=0.2, gain=1.0, dim=1):
    """act(x + b) * gain, with b broadcast along `dim`."""
    y = _activate(_biased(x, b, dim), act, slope)
    return y.to(x.dtype) if gain == 1.0 else _mul_to(y, gain, x.dtype)


def pixel_norm(x, *, eps=1e-8, dim=1):
    """x * rsqrt(mean(x^2 over `dim`) + eps)."""
    y = _up(x)
    return _mul_to(y, torch.rsqrt(y.square().mean(dim=dim, keepdim=True) + eps), x.dtype)


def bias_act_pixel_norm(x, b=None, *, act="lrelu", slope=0.2, gain=1.0, eps=1e-8):
    """G's conv epilogue: pixel_norm(act(x + b) * gain) over channels (dim 1)."""
    y = _activate(_biased(x, b, 1), act, slope)
    if gain != 1.0:
        y = y * gain
    return _mul_to(y, torch.rsqrt(y.square().mean(dim=1, keepdim=True) + eps), x.dtype)


_pixel_norm = pixel_norm  # eq_conv2d's `pixel_norm` flag shadows the function name


def minibatch_stddev(x, *, group_size=4, eps=1e-8):
    """Append one channel: the mean stddev of strided groups (samples j, j+M, j+2M, ...)."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    y = _up(x).reshape(g, -1, c, h, w)  # [G, M, C, H, W]: group m = samples m, m+M, ...
    y = y - y.mean(dim=0)
    y = (y.square().mean(dim=0) + eps).sqrt()  # biased variance, as the official code
    y = y.mean(dim=(1, 2, 3))  # [M]
    y = y.reshape(1, -1, 1, 1, 1).expand(g, -1, 1, h, w).reshape(n, 1, h, w)
    # In x's layout, so that the concatenation keeps it (cat falls back to NCHW on mixed layouts)
    return torch.cat([x, y.to(x.dtype).contiguous(memory_format=memory_format(x))], dim=1)


def upsample2x(x):
    """Nearest-neighbour 2x upsampling: one kernel that keeps x's memory format (two chained
    repeat_interleave calls wrote an intermediate and returned NCHW, silently dropping channels_last
    for everything after G's first up layer)."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


class _AvgPool2x2(torch.autograd.Function):
    """F.avg_pool2d(x, 2), with the same backward kernel, whose backward does not treat x as a
    differentiable input. aten's double-backward rule for avg_pool2d_backward returns
    zeros_like(x) for x (the kernel only reads x's shape), and the penalty's double backward wrote
    and added that zero tensor for every unfused D down layer: 0.25 GB per step at 256 px."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x.detach())  # for its shape and layout
        return F.avg_pool2d(x, 2)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.ops.aten.avg_pool2d_backward(g, x, [2, 2], [2, 2], [0, 0], False, True, None)


def avg_pool2x2(x):
    """2x2 average pool (stride 2), as F.avg_pool2d(x, 2) to every order of differentiation."""
    return _AvgPool2x2.apply(x)


def downsample2x(x):
    """2x2 box filter (average pool), computed in fp32."""
    return avg_pool2x2(_up(x)).to(x.dtype)


def _lerp(a, b, alpha):
    """a + (b - a) * alpha in fp32; alpha a float or a 0-d tensor."""
    a32, b32 = _up(a), _up(b)
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.to(a32.dtype)
    return (a32 + (b32 - a32) * alpha).to(a.dtype)


def upsample_blend(hi, lo, alpha):
    """G's fade-in: alpha * hi + (1 - alpha) * nearest_up2x(lo)."""
    return _lerp(upsample2x(lo), hi, alpha)


def fade_reals(x, alpha):
    """Reals during a fade: alpha * x + (1 - alpha) * nearest_up2x(avgpool2x(x))."""
    return _lerp(upsample2x(downsample2x(x)), x, alpha)


def lerp(a, b, alpha):
    """a + (b - a) * alpha (D's feature-space fade-in: a = old path, b = new block)."""
    return _lerp(a, b, alpha)


class _MulCast(torch.autograd.Function):
    """(a * b).to(dtype) as one kernel: a multiply into an output of `dtype`, computed in a's
    precision, so bit-identical to multiplying and then casting. `b` is a Python scale (the
    equalized-LR weight scale, an activation's gain) or a tensor broadcast against a (the pixel-norm
    factor). The backward is autograd's for the two-step form (cast back, multiply, sum b's gradient
    over its broadcast dims), differentiable for the penalty's double backward."""

    @staticmethod
    def forward(ctx, a, b, dtype):
        ctx.a_dtype, ctx.scale = a.dtype, None if isinstance(b, torch.Tensor) else b
        ctx.save_for_backward(*((a, b) if ctx.scale is None else ()))
        return torch.mul(a, b, out=torch.empty_like(a, dtype=dtype))

    @staticmethod
    def backward(ctx, g):
        g = g.to(ctx.a_dtype)
        if ctx.scale is not None:
            return g * ctx.scale, None, None
        a, b = ctx.saved_tensors
        return g * b, (g * a).sum_to_size(b.shape), None


def _mul_to(a, b, dtype):
    """(a * b).to(dtype): in one pass where a cast is needed, in eager mode (a compiler fuses the
    two-step form itself, and an `out=` laid out channels_last may break its graph)."""
    if a.dtype == dtype or torch.compiler.is_compiling():
        return (a * b).to(dtype)
    return _MulCast.apply(a, b, dtype)


def equalized_weight(weight, gain, dtype=None):
    """The run-time weight of an equalized-LR layer: N(0,1) parameter * gain / sqrt(fan_in), in
    `dtype` (default: the parameter's). Scaling and casting run as one kernel: the per-call weight
    preparation was a quarter of a training step's kernels at 4 px (bench/step_anatomy.py)."""
    return _mul_to(weight, gain / math.sqrt(weight[0].numel()), dtype or weight.dtype)


def _fused_up_weight(w):
    """3x3 kernel of an upsample+conv -> 4x4 kernel of the equivalent stride-2 transposed conv."""
    w = F.pad(w, (1, 1, 1, 1))
    w = w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]
    # A transposed conv applies its kernel flipped relative to a correlation: flip it back.
    return w.flip([2, 3]).transpose(0, 1)  # conv_transpose2d wants [Cin, Cout, k, k]


def _fused_down_weight(w):
    """3x3 kernel of a conv+avgpool -> 4x4 kernel of the equivalent stride-2 conv."""
    w = F.pad(w, (1, 1, 1, 1))
    return (w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]) * 0.25


def conv2d_resample(x, w, *, up=False, down=False, fused_scale=False, wgrad_double_backward=False, pool=None):
    """Convolution with 'same' padding (odd k) or valid (even k), optionally on a nearest-2x
    upsampled input (`up`) or followed by a 2x2 average pool (`down`). `fused_scale` computes the
    same function as one strided (transposed) 4x4 convolution, the official `fused_scale` form.
    `w` is cast to x's dtype here, after the 4x4 kernel is summed from it (in w's precision).
    `wgrad_double_backward`: the same function through `conv_autograd.conv`, whose double backward
    runs weight-gradient kernels where PyTorch's convolves image-sized transposed tensors (the
    backends use it; the reference keeps plain PyTorch autograd, the eager baseline).
    `pool`: the 2x2 average pool of `down` (default `avg_pool2x2`, aten's kernels); the backends pass
    their `downsample2x` op, the same function: aten's channels_last pooling backward ran 0.4 ms per
    call at 64 px on an H100, 8 of a 43 ms step."""
    k = w.shape[-1]
    pad = k // 2 if k % 2 == 1 else 0
    fmt = memory_format(x)  # the summed 4x4 kernel comes out NCHW: cast it into x's layout
    if wgrad_double_backward:
        conv2d = lambda t, wt, stride=1, padding=0: conv_autograd.conv(t, wt, stride, padding)  # noqa: E731
        conv_transpose2d = lambda t, wt, stride, padding: conv_autograd.conv(t, wt, stride, padding, True)  # noqa: E731
    else:
        conv2d, conv_transpose2d = F.conv2d, F.conv_transpose2d
    if fused_scale and up and k == 3:
        return conv_transpose2d(x, _fused_up_weight(w).to(x.dtype, memory_format=fmt), stride=2, padding=1)
    if fused_scale and down and k == 3:
        return conv2d(x, _fused_down_weight(w).to(x.dtype, memory_format=fmt), stride=2, padding=1)
    w = w.to(x.dtype)
    if up:
        x = upsample2x(x)
    y = conv2d(x, w, padding=pad)
    if down:
        y = avg_pool2x2(y) if pool is None else pool(_even_crop(y))
    return y


def _even_crop(y):
    """y without an odd last row / column: F.avg_pool2d(y, 2) drops them, downsample2x refuses them.
    (A copy in y's layout, so the pool's output keeps it; the models' sizes are even: no copy there.)"""
    h, w = y.shape[-2] // 2 * 2, y.shape[-1] // 2 * 2
    if (h, w) == tuple(y.shape[-2:]):
        return y
    return y[..., :h, :w].contiguous(memory_format=memory_format(y))


def equalized_conv2d(x, weight, gain, *, up=False, down=False, fused_scale=False, wgrad_double_backward=False,
                     pool=None):
    """The convolution of a PGGAN conv layer, before its bias and activation: the equalized-LR weight
    (`weight` the raw parameter), resampled as asked. Every conv layer form that pairs cuDNN with
    some epilogue (this reference, Triton's default layer, auto's layer) starts here."""
    fused = fused_scale and (up or down) and weight.shape[-1] == 3  # its 4x4 kernel is summed before the cast
    w = equalized_weight(weight, gain, None if fused else x.dtype)
    return conv2d_resample(x, w, up=up, down=down, fused_scale=fused_scale,
                           wgrad_double_backward=wgrad_double_backward, pool=pool)


def eq_conv2d(x, weight, bias=None, *, gain=math.sqrt(2), act="lrelu", slope=0.2, pixel_norm=False,
              up=False, down=False, fused_scale=False, eps=1e-8, wgrad_double_backward=False, pool=None):
    """One whole PGGAN conv layer: equalized-LR conv (+ up/down) -> bias -> act (-> pixel norm)."""
    y = equalized_conv2d(x, weight, gain, up=up, down=down, fused_scale=fused_scale,
                         wgrad_double_backward=wgrad_double_backward, pool=pool)
    if pixel_norm:
        return bias_act_pixel_norm(y, bias, act=act, slope=slope, eps=eps)
    return bias_act(y, bias, act=act, slope=slope)
