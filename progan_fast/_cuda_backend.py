"""The compiled CUDA backend of progan_fast.ops ("cuda").

Importing this module loads `progan_fast._C` (`_cuda_build.load`: validated, or JIT-built, or an
ImportError that ops._backend records, so `import progan_fast` never fails because of it), defines
`torch.ops.progan_fast_cuda.*` with the library shared by every backend (same schemas, autograd to
second order and fake functions as the Triton ops; the kernel set is `_cuda_kernels`) and registers
the public wrappers as the "cuda" implementation of every public op.
"""
from __future__ import annotations

from . import _cuda_build, _cuda_kernels
from .ops import reference, register

_C = _cuda_build.load()  # raises CudaExtensionUnavailable (an ImportError) when unusable
_cuda_kernels.bind(_C)

from .triton.library import define_ops, split_alpha  # noqa: E402  (torch-only module; no Triton kernels run)

NAMESPACE = "progan_fast_cuda"
ops = define_ops(NAMESPACE, _cuda_kernels)
build_info = dict(_C.build_info())


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


def eq_conv2d(x, weight, bias=None, *, gain, act, slope, pixel_norm, up, down, fused_scale, eps):
    """The convolution by torch (cuDNN), then one fused epilogue kernel (as the Triton backend)."""
    w = reference.equalized_weight(weight, gain).to(x.dtype)
    y = reference.conv2d_resample(x, w, up=up, down=down, fused_scale=fused_scale)
    if pixel_norm:
        return ops.bias_act_pixel_norm(y, bias, act, slope, 1.0, eps)
    return ops.bias_act(y, bias, act, slope, 1.0, 1)


PUBLIC = {"bias_act": bias_act, "bias_act_pixel_norm": bias_act_pixel_norm, "pixel_norm": pixel_norm,
          "minibatch_stddev": minibatch_stddev, "upsample_blend": upsample_blend, "fade_reals": fade_reals,
          "lerp": lerp, "downsample2x": downsample2x, "eq_conv2d": eq_conv2d}
for _name, _fn in PUBLIC.items():
    register("cuda", _name, _fn)

__all__ = ["ops", "build_info", "NAMESPACE", "PUBLIC", *PUBLIC]
