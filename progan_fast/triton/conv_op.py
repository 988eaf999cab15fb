"""`torch.ops.progan_fast.eq_conv2d_igemm`: the fused Triton conv layer as a real PyTorch operator.

Forward is the one-kernel implicit GEMM of `conv.py`. Backward is written in differentiable aten ops
(the epilogue's VJP from the saved output, then `conv_autograd.conv_backward`: cuDNN's dgrad and
wgrad on GPU, on the same folded-resampling convolution the forward computes, with a double
backward that stays on those kernels), so autograd can differentiate it again:
D's layers get exact double backward for the WGAN-GP penalty without a second hand-written kernel.
The op returns (y, r): r = rsqrt(mean(a^2) + eps) per pixel when pixel norm is on, which makes the
pixel-norm VJP exact (and twice differentiable) without storing the pre-norm activation.
"""
import math
from typing import Optional

import torch

from .._layout import acc_dtype
from ..ops import conv_autograd
from . import conv, library

__all__ = ["eq_conv2d_triton", "eq_linear_triton", "eq_conv2d_backward"]


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gain: float,
             act: str, slope: float, pixel_norm: bool, up: bool, down: bool,
             eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole PGGAN conv layer in one Triton kernel; returns (y, pixel-norm factor or empty)."""
    return conv.eq_conv2d_forward(x, weight, bias, gain, act, slope, pixel_norm, up, down, eps)


eq_conv2d_igemm = torch.library.custom_op("progan_fast::eq_conv2d_igemm", _forward, mutates_args=())


@eq_conv2d_igemm.register_fake
def _(x, weight, bias, gain, act, slope, pixel_norm, up, down, eps):
    return conv.allocate_outputs(x, weight, pixel_norm, up, down)


def _epilogue_vjp(gy, gr, y, r, act, slope, pixel_norm):
    """d loss / d pre-activation, in fp32, from the saved output (and pixel-norm factor r).
    act mask: sign(pre) == sign(y) since r > 0; pixel norm: y = a*r, r = (mean a^2 + eps)^-1/2."""
    f = acc_dtype(gy.dtype)
    g = gy.to(f)
    if pixel_norm:
        yf = y.to(f)
        g = r * (g - yf * (g * yf).mean(dim=1, keepdim=True))
        if gr is not None:
            g = g - gr.to(f) * r * r * yf / y.shape[1]
    if act in ("lrelu", "relu"):
        g = torch.where(y > 0, g, g * (0.0 if act == "relu" else slope))
    return g


def _conv_form(k, up, down):
    """(stride, padding, transposed) of the single aten convolution equal to the forward's conv."""
    p = conv.conv_padding(k)
    if up:
        return 2, k - 1 - p, True
    if down:
        return 2, p, False
    return 1, p, False


def _effective_weight(w, up, down):
    """Scaled kxk weight -> the kernel of that single convolution (fused_scale forms)."""
    if up:
        return conv.shift_sum(w).flip([2, 3]).transpose(0, 1)
    if down:
        return conv.shift_sum(w) * 0.25
    return w


def _effective_weight_adjoint(g, up, down):
    if up:
        return conv.shift_sum_adjoint(g.transpose(0, 1).flip([2, 3]))
    if down:
        return conv.shift_sum_adjoint(g) * 0.25
    return g


def eq_conv2d_backward(gy, gr, x, weight, y, r, *, gain, act, slope, pixel_norm, up, down,
                       needs=(True, True, True)):
    """(grad_x, grad_weight, grad_bias) of the fused layer; differentiable in every input."""
    cout, cin, k, _ = weight.shape
    scale = gain / math.sqrt(cin * k * k)
    g = _epilogue_vjp(gy, gr, y, r, act, slope, pixel_norm)
    gb = g.sum(dim=(0, 2, 3)) if needs[2] else None
    gx = gw = None
    if needs[0] or needs[1]:
        f = acc_dtype(x.dtype)
        w_eff = _effective_weight(weight.to(f) * scale, up, down).to(x.dtype)
        stride, pad, transposed = _conv_form(k, up, down)
        gx, gw_eff = conv_autograd.conv_backward(g.to(x.dtype), x, w_eff, stride, pad, transposed,
                                                 need_x=bool(needs[0]), need_w=bool(needs[1]))
        if needs[1]:
            gw = (_effective_weight_adjoint(gw_eff.to(f), up, down) * scale).to(weight.dtype)
    return gx, gw, gb


def _setup_context(ctx, inputs, output):
    x, weight, bias, gain, act, slope, pixel_norm, up, down, eps = inputs
    y, r = output
    ctx.save_for_backward(x, weight, y, r)
    ctx.cfg = dict(gain=gain, act=act, slope=slope, pixel_norm=pixel_norm, up=up, down=down)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, gy, gr):
    x, weight, y, r = ctx.saved_tensors
    # what this pass uses (the penalty's autograd.grad(D(x), x) uses no weight or bias gradient)
    needs = tuple(conv_autograd.grad_is_used(ctx, i) for i in range(3))
    needs = (needs[0], needs[1], needs[2] and ctx.bias_dtype is not None)
    gx, gw, gb = eq_conv2d_backward(gy, gr, x, weight, y, r, needs=needs, **ctx.cfg)
    if gb is not None:
        gb = gb.to(ctx.bias_dtype)
    return gx, gw, gb, None, None, None, None, None, None, None


eq_conv2d_igemm.register_autograd(_backward, setup_context=_setup_context)
# The same kernel and formulas as a classic autograd.Function, for plain eager calls (library.OpSet)
_eager = library._eager_function("eq_conv2d_igemm", _forward, _backward, _setup_context)


def eq_conv2d_triton(x, weight, bias=None, *, gain=math.sqrt(2), act="lrelu", slope=0.2, pixel_norm=False,
                     up=False, down=False, fused_scale=False, eps=1e-8):
    """Backend entry with progan_fast.ops.reference.eq_conv2d's signature. `fused_scale` selects a
    formula, not a function: resampling is always folded into the GEMM here, so it is ignored."""
    del fused_scale
    op = eq_conv2d_igemm if library._tracing(x) else _eager
    return op(x, weight, bias, float(gain), act, float(slope), bool(pixel_norm), bool(up), bool(down), float(eps))[0]


def eq_linear_triton(x, weight, bias=None, *, gain=math.sqrt(2), act="lrelu", slope=0.2):
    """Equalized-LR dense layer [N, Cin] x [Cout, Cin] as the same GEMM (1x1 conv on 1x1 pixels)."""
    y = eq_conv2d_triton(x.reshape(x.shape[0], -1, 1, 1), weight.reshape(weight.shape[0], -1, 1, 1), bias,
                         gain=gain, act=act, slope=slope)
    return y.reshape(x.shape[0], -1)
