"""A convolution whose double backward runs weight-gradient kernels, not image-sized convolutions.

The WGAN-GP penalty differentiates D's input gradient, so every D conv is differentiated twice.
PyTorch's rule for that (`_convolution_double_backward`) computes the weight term as a convolution
of the transposed tensors: input [C_in, N, H, W], "kernel" [C_out, N, H, W], a kernel the size of
the image. cuDNN has no tensor-core algorithm for that shape; on an H100 (bf16, 64 px, batch 32) it
ran `implicit_convolve_sgemm` / `precomputed_convolve_sgemm`, 31 ms of an 83 ms training step
(bench/results/2026-11-26_nvidia-h100_profile_step.md).

Here the conv y = C(x, w) and its backward (gx, gw) are autograd Functions. For the double backward,
with L2 = <ggx, gx> + <ggw, gw> = <gy, C(ggx, w) + C(x, ggw)> (C is bilinear):
  dL2/dgy = C(ggx, w) + C(x, ggw)       two forward convs
  dL2/dx  = dgrad of gy through ggw     an input-gradient kernel
  dL2/dw  = wgrad of ggx against gy     a weight-gradient kernel
all in the layer's own shapes and layout, and themselves differentiable (any order). `auto` uses it
on CUDA only (ops._wgrad_double_backward); the CPU's oneDNN runs PyTorch's rule well. Same function
as F.conv2d / F.conv_transpose2d (tests/test_conv_autograd.py checks values and gradients to second
order against them in float64).
"""
from __future__ import annotations

import torch

from .._layout import autocast_dtype

__all__ = ["conv", "conv_backward", "grad_is_used"]


def _args(stride: int, padding: int, transposed: bool):
    return [stride, stride], [padding, padding], [1, 1], transposed, [0, 0], 1


def grad_is_used(ctx, i: int) -> bool:
    """Whether this backward pass uses input i's gradient. `needs_input_grad` only says the input
    requires grad; the penalty's first backward, autograd.grad(D(x), x), reaches the weights but
    does not use their gradient, and PyTorch's own conv rule skips the wgrad there: so does this,
    asking the engine (private API; where it cannot answer, the gradient is computed)."""
    needs = getattr(ctx, "needs_input_grad", None)  # absent where a backward formula runs outside autograd
    if needs is not None and not needs[i]:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(ctx.next_functions[i][0]))
    except Exception:  # a leaf input of autograd.grad, tracing outside the engine, another torch
        return True


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, stride, padding, transposed):
        ctx.save_for_backward(x, w)
        ctx.form = (stride, padding, transposed)
        return torch.ops.aten.convolution(x, w, None, *_args(stride, padding, transposed))

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        need_x, need_w = grad_is_used(ctx, 0), grad_is_used(ctx, 1)
        if not (need_x or need_w):
            return None, None, None, None, None
        gx, gw = conv_backward(gy, x, w, *ctx.form, need_x=need_x, need_w=need_w)
        return gx, gw, None, None, None


class _ConvBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gy, x, w, stride, padding, transposed, need_x, need_w):
        gx, gw, _ = torch.ops.aten.convolution_backward(gy, x, w, None, *_args(stride, padding, transposed),
                                                        [need_x, need_w, False])
        ctx.save_for_backward(gy, x, w)
        ctx.form = (stride, padding, transposed)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no convs of zeros
        return gx, gw

    @staticmethod
    def backward(ctx, ggx, ggw):
        gy, x, w = ctx.saved_tensors
        form = ctx.form
        need_gy, need_x, need_w = (grad_is_used(ctx, i) for i in range(3))
        d_gy = d_x = d_w = None
        if need_gy and ggx is not None:
            d_gy = conv(ggx, w, *form)
        if need_gy and ggw is not None:
            d_gy = conv(x, ggw, *form) if d_gy is None else d_gy + conv(x, ggw, *form)
        if need_x and ggw is not None:
            d_x = conv_backward(gy, x, ggw, *form, need_x=True, need_w=False)[0]
        if need_w and ggx is not None:
            d_w = conv_backward(gy, ggx, w, *form, need_x=False, need_w=True)[1]
        return d_gy, d_x, d_w, None, None, None, None, None


def conv(x: torch.Tensor, w: torch.Tensor, stride: int = 1, padding: int = 0,
         transposed: bool = False) -> torch.Tensor:
    """F.conv2d(x, w, stride=stride, padding=padding), or F.conv_transpose2d with `transposed`
    (w then [C_in, C_out, k, k]); no bias, dilation 1, one group. Under autocast both operands
    are cast to the autocast dtype first, as autocast does for F.conv2d (the casts stay outside the
    Function, so its saved tensors and gradients are all in that dtype)."""
    dt = autocast_dtype(x.device.type)
    if dt is not None:
        x, w = (t.to(dt) if t.dtype != torch.float64 else t for t in (x, w))  # autocast leaves fp64 alone
    return _Conv.apply(x, w, int(stride), int(padding), bool(transposed))


def conv_backward(gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, stride: int = 1, padding: int = 0,
                  transposed: bool = False, *, need_x: bool = True, need_w: bool = True):
    """(grad_x, grad_w) of `conv` (None where not asked), differentiable again in gy, x and w."""
    return _ConvBackward.apply(gy, x, w, int(stride), int(padding), bool(transposed), bool(need_x), bool(need_w))
