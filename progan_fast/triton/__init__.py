"""Triton backend of progan_fast.ops.

Importing this module defines the operators `torch.ops.progan_fast.*` (schemas, autograd to second
order and fake functions in `library.py`, Triton kernels in `kernels.py` launched by
`launchers.py`) and registers them as the "triton" implementation of every public op. Kernels run
on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import os

from ..ops import register
from . import launchers
from .conv_epilogue import eq_conv2d
from .library import define_ops, split_alpha

ops = define_ops("progan_fast", launchers)


def bias_act(x, b=None, *, act="lrelu", slope=0.2, gain=1.0, dim=1):
    return ops.bias_act(x, b, act, float(slope), float(gain), int(dim))


def bias_act_pixel_norm(x, b=None, *, act="lrelu", slope=0.2, gain=1.0, eps=1e-8):
    return ops.bias_act_pixel_norm(x, b, act, float(slope), float(gain), float(eps))


def pixel_norm(x, *, eps=1e-8, dim=1):
    return ops.pixel_norm(x, float(eps), int(dim))


def minibatch_stddev(x, *, group_size=4, eps=1e-8):
    return ops.minibatch_stddev(x, int(group_size), float(eps))


def upsample_blend(hi, lo, alpha):
    return ops.upsample_blend(hi, lo, *split_alpha(alpha))


def fade_reals(x, alpha):
    return ops.fade_reals(x, *split_alpha(alpha))


def lerp(a, b, alpha):
    return ops.lerp(a, b, *split_alpha(alpha))


def downsample2x(x):
    return ops.downsample2x(x)


for _name, _fn in [("bias_act", bias_act), ("bias_act_pixel_norm", bias_act_pixel_norm), ("pixel_norm", pixel_norm),
                   ("minibatch_stddev", minibatch_stddev), ("upsample_blend", upsample_blend),
                   ("fade_reals", fade_reals), ("lerp", lerp), ("downsample2x", downsample2x),
                   ("eq_conv2d", eq_conv2d)]:
    register("triton", _name, _fn)

# Two Triton paths for a whole conv layer: cuDNN conv + one fused Triton epilogue ("epilogue", the
# default), or the implicit-GEMM kernel with resampling and epilogue fused in ("igemm", conv_op.py).
# Issue: keep whichever measures faster per layer; until bench/results/ decides, the choice is explicit.
if os.environ.get("PROGAN_FAST_TRITON_CONV", "epilogue") == "igemm":
    from .conv_op import eq_conv2d_triton as _igemm
    register("triton", "eq_conv2d", _igemm)

__all__ = ["ops", "bias_act", "bias_act_pixel_norm", "pixel_norm", "minibatch_stddev", "upsample_blend",
           "fade_reals", "lerp", "downsample2x", "eq_conv2d", "launchers"]
