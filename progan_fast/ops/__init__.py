"""Public PGGAN operators with a selectable backend.

Every op takes `impl` = "auto" | "ref" | "triton" | "cuda". "auto" follows the default set by
`set_backend` / `use_backend` ("auto" unless changed), which picks the fastest backend available for
the tensor's device (see `_backend.resolve`). Inputs are validated here, once, so every backend sees
the same well-formed arguments and users get the same error messages whatever runs the op.
"""
from __future__ import annotations

import math

import torch

from . import reference
from ._backend import (auto_prefers_other_than_ref, available_backends, backend_error, backend_for, conv_layer_kind,
                       describe, get_backend, graph_mode, has_layer_entries, implementation, preferred_form,
                       register, resolve, set_backend, triton_interpret, use_backend)

__all__ = [
    "bias_act", "bias_act_pixel_norm", "pixel_norm", "minibatch_stddev", "upsample_blend", "fade_reals", "lerp", "downsample2x",
    "eq_conv2d", "set_backend", "get_backend", "use_backend", "graph_mode", "available_backends", "backend_error",
    "describe",
    "triton_interpret", "register", "reference",
]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

for _name in ("bias_act", "bias_act_pixel_norm", "pixel_norm", "minibatch_stddev", "upsample_blend", "fade_reals", "lerp",
              "downsample2x", "eq_conv2d"):
    register("ref", _name, getattr(reference, _name))


def _check_tensor(op: str, name: str, t: torch.Tensor, ndim: int | None = 4) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: {name} has dtype {t.dtype}; supported: float32, float16, bfloat16 (float64 for checks)")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D (N, C, H, W), got shape {tuple(t.shape)}")


def _check_same(op: str, ref: torch.Tensor, **others) -> None:
    for name, t in others.items():
        if t is None or not isinstance(t, torch.Tensor):
            continue
        if t.device != ref.device:
            raise ValueError(f"{op}: {name} is on {t.device} but the input is on {ref.device}")


def _check_alpha(op: str, alpha, ref: torch.Tensor):
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() != 1:
            raise ValueError(f"{op}: alpha must be a scalar or a 1-element tensor, got shape {tuple(alpha.shape)}")
        if alpha.device != ref.device and alpha.device.type != "cpu":
            raise ValueError(f"{op}: alpha is on {alpha.device} but the input is on {ref.device}")
        return alpha.reshape(()).to(ref.device)
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{op}: alpha must lie in [0, 1], got {alpha}")
    return alpha


def _check_act(op: str, act: str) -> None:
    if act not in reference.ACTIVATIONS:
        raise ValueError(f"{op}: unknown act {act!r}; expected one of {reference.ACTIVATIONS}")


def bias_act(x, b=None, *, act="lrelu", slope=0.2, gain=1.0, dim=1, impl="auto"):
    """act(x + b) * gain, b broadcast along `dim` (any rank >= 1)."""
    _check_tensor("bias_act", "x", x, ndim=None)
    _check_act("bias_act", act)
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"bias_act: dim={dim} out of range for a {x.ndim}-D input")
    dim = dim % x.ndim
    if b is not None:
        _check_tensor("bias_act", "b", b, ndim=1)
        _check_same("bias_act", x, b=b)
        if b.numel() != x.shape[dim]:
            raise ValueError(f"bias_act: b has {b.numel()} elements but x has {x.shape[dim]} along dim {dim}")
    return resolve("bias_act", impl, x.device, x.numel())(x, b, act=act, slope=float(slope), gain=float(gain), dim=dim)


def bias_act_pixel_norm(x, b=None, *, act="lrelu", slope=0.2, gain=1.0, eps=1e-8, impl="auto"):
    """G's conv epilogue in one op: pixel_norm(act(x + b) * gain) over channels (dim 1)."""
    _check_tensor("bias_act_pixel_norm", "x", x)
    _check_act("bias_act_pixel_norm", act)
    if b is not None:
        _check_tensor("bias_act_pixel_norm", "b", b, ndim=1)
        _check_same("bias_act_pixel_norm", x, b=b)
        if b.numel() != x.shape[1]:
            raise ValueError(f"bias_act_pixel_norm: b has {b.numel()} elements but x has {x.shape[1]} channels")
    return resolve("bias_act_pixel_norm", impl, x.device, x.numel())(x, b, act=act, slope=float(slope),
                                                                gain=float(gain), eps=float(eps))


def pixel_norm(x, *, eps=1e-8, dim=1, impl="auto"):
    """x * rsqrt(mean(x^2 over `dim`) + eps)  (PGGAN's pixelwise feature normalization)."""
    _check_tensor("pixel_norm", "x", x, ndim=None)
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"pixel_norm: dim={dim} out of range for a {x.ndim}-D input")
    return resolve("pixel_norm", impl, x.device, x.numel())(x, eps=float(eps), dim=dim % x.ndim)


def minibatch_stddev(x, *, group_size=4, eps=1e-8, impl="auto"):
    """N x C x H x W -> N x (C+1) x H x W: the extra channel is the stddev of strided groups of
    min(group_size, N) samples (j, j+M, j+2M, ...), averaged over C, H, W, as the official code."""
    _check_tensor("minibatch_stddev", "x", x)
    if group_size < 1:
        raise ValueError(f"minibatch_stddev: group_size must be >= 1, got {group_size}")
    n = x.shape[0]
    g = min(group_size, n)
    if n % g != 0:
        raise ValueError(f"minibatch_stddev: batch size {n} is not divisible by the group size {g}; "
                         f"use a batch that is a multiple of {g}")
    return resolve("minibatch_stddev", impl, x.device, x.numel())(x, group_size=int(group_size), eps=float(eps))


def _check_fade_pair(op, hi, lo):
    _check_tensor(op, "hi", hi)
    _check_tensor(op, "lo", lo)
    _check_same(op, hi, lo=lo)
    if hi.dtype != lo.dtype:
        raise TypeError(f"{op}: hi is {hi.dtype} but lo is {lo.dtype}")
    n, c, h, w = hi.shape
    if tuple(lo.shape) != (n, c, h // 2, w // 2) or h % 2 or w % 2:
        raise ValueError(f"{op}: lo must be hi's shape at half resolution; got hi {tuple(hi.shape)}, lo {tuple(lo.shape)}")


def upsample_blend(hi, lo, alpha, *, impl="auto"):
    """G's fade-in: alpha * hi + (1 - alpha) * nearest_up2x(lo)."""
    _check_fade_pair("upsample_blend", hi, lo)
    alpha = _check_alpha("upsample_blend", alpha, hi)
    return resolve("upsample_blend", impl, hi.device, hi.numel())(hi, lo, alpha)


def fade_reals(x, alpha, *, impl="auto"):
    """Reals during a fade: alpha * x + (1 - alpha) * nearest_up2x(avgpool2x(x))."""
    _check_tensor("fade_reals", "x", x)
    if x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f"fade_reals: H and W must be even, got {tuple(x.shape)}")
    alpha = _check_alpha("fade_reals", alpha, x)
    return resolve("fade_reals", impl, x.device, x.numel())(x, alpha)


def lerp(a, b, alpha, *, impl="auto"):
    """a + (b - a) * alpha; D's feature-space fade-in (a: old path, b: new block)."""
    _check_tensor("lerp", "a", a, ndim=None)
    _check_tensor("lerp", "b", b, ndim=None)
    _check_same("lerp", a, b=b)
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"lerp: a {tuple(a.shape)} {a.dtype} and b {tuple(b.shape)} {b.dtype} must match")
    alpha = _check_alpha("lerp", alpha, a)
    return resolve("lerp", impl, a.device, a.numel())(a, b, alpha)


def downsample2x(x, *, impl="auto"):
    """2x2 average pool (D's input path, real-image pyramid)."""
    _check_tensor("downsample2x", "x", x)
    if x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f"downsample2x: H and W must be even, got {tuple(x.shape)}")
    return resolve("downsample2x", impl, x.device, x.numel())(x)


def eq_conv2d(x, weight, bias=None, *, gain=math.sqrt(2), act="lrelu", slope=0.2, pixel_norm=False,
              up=False, down=False, fused_scale=False, eps=1e-8, impl="auto"):
    """A whole PGGAN conv layer. `weight` is the raw N(0,1) parameter [Cout, Cin, k, k], scaled at
    run time by gain / sqrt(Cin*k*k). `up`: conv on the nearest-2x upsampled input; `down`: 2x2
    average pool of the conv output before bias and act (official order); then bias, act and, if
    asked, pixel norm over channels. Padding 'same' for odd k, valid for even k. `fused_scale`
    selects the official strided 4x4 form of up/down (same function)."""
    op = "eq_conv2d"
    _check_tensor(op, "x", x)
    _check_tensor(op, "weight", weight)
    _check_same(op, x, weight=weight, bias=bias)
    _check_act(op, act)
    if up and down:
        raise ValueError("eq_conv2d: up and down are exclusive")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"eq_conv2d: weight expects {weight.shape[1]} input channels, x has {x.shape[1]}")
    if weight.shape[2] != weight.shape[3]:
        raise ValueError(f"eq_conv2d: square kernels only, got {tuple(weight.shape[2:])}")
    if bias is not None:
        _check_tensor(op, "bias", bias, ndim=1)
        if bias.numel() != weight.shape[0]:
            raise ValueError(f"eq_conv2d: bias has {bias.numel()} elements, weight has {weight.shape[0]} outputs")
    kw = dict(gain=float(gain), act=act, slope=float(slope), pixel_norm=bool(pixel_norm), up=bool(up),
              down=bool(down), fused_scale=bool(fused_scale), eps=float(eps))
    auto = impl == "auto" and get_backend() == "auto"
    layer = conv_layer_kind(weight.shape[2], kw["up"], kw["down"], kw["pixel_norm"], act, kw["fused_scale"])
    if auto and not kw["fused_scale"] and preferred_form(layer, x.device, x.numel()) == "fused":
        # the official 4x4 strided form of the same up/down layer measured faster here (bench.auto_table)
        kw["fused_scale"] = True
        layer = conv_layer_kind(weight.shape[2], kw["up"], kw["down"], kw["pixel_norm"], act, True)
    backend = backend_for(op, impl, x.device, x.numel(), layer)
    epilogue = "bias_act_pixel_norm" if pixel_norm else "bias_act"
    # A layer kind the table decides (measured as a whole layer) keeps that decision; otherwise the
    # reference conv still takes the fused epilogue where the epilogue's own list prefers it.
    if (backend == "ref" and auto
            and not has_layer_entries(op, x.device, layer) and auto_prefers_other_than_ref(epilogue, x.device)):
        return _conv_then_auto_epilogue(x, weight, bias, **kw)
    if backend == "ref" and auto:
        kw.update(_auto_conv_options(x))
    return implementation(backend, op)(x, weight, bias, **kw)


def _auto_conv_options(x) -> dict:
    """How `auto` runs the reference's conv and pool (reference.conv2d_resample's options)."""
    return dict(wgrad_double_backward=_wgrad_double_backward(x), pool=_auto_pool)


def _auto_pool(y):
    """The 2x2 average pool of a `down` layer under `auto`: the downsample2x kernel the table picks
    for this size (aten's channels_last pooling backward was slow: reference.conv2d_resample), else
    aten's pool on y's own dtype (the reference op would compute it through an fp32 copy)."""
    backend = backend_for("downsample2x", "auto", y.device, y.numel())
    return reference.avg_pool2x2(y) if backend == "ref" else implementation(backend, "downsample2x")(y)


def _wgrad_double_backward(x) -> bool:
    """Whether `auto`'s reference conv takes conv_autograd's double backward: on CUDA, where PyTorch's
    rule ran cuDNN's legacy kernels (ops/conv_autograd.py). On the CPU oneDNN runs PyTorch's rule well:
    the Functions measured the same step time there (cpu preset, 16-32 px), so PyTorch's stays."""
    return x.device.type == "cuda"


def _conv_then_auto_epilogue(x, weight, bias, *, gain, act, slope, pixel_norm, up, down, fused_scale, eps):
    """The reference conv (cuDNN) followed by the epilogue op under `auto`: where the table prefers
    a fused epilogue kernel at this size, a layer the conv kernel does not win still gets it.
    (The bias was checked by eq_conv2d: the epilogue is resolved directly, without its wrapper.)"""
    y = reference.equalized_conv2d(x, weight, gain, up=up, down=down, fused_scale=fused_scale, **_auto_conv_options(x))
    if pixel_norm:
        return resolve("bias_act_pixel_norm", "auto", y.device, y.numel())(y, bias, act=act, slope=slope, gain=1.0,
                                                                           eps=eps)
    return resolve("bias_act", "auto", y.device, y.numel())(y, bias, act=act, slope=slope, gain=1.0, dim=1)
