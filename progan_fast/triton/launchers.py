"""Launchers: allocate outputs, plan the strided iteration, pick tile sizes, launch `kernels.py`.

This module is the Triton *kernel set* handed to `library.define_ops`: one plain function per
forward / first-order-backward kernel, with the signatures documented in `library.KernelSet`.
Functions here do no autograd and no validation beyond device checks; output strides follow the
rules in `_layout.py`, which the fake implementations share.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os

import torch

from . import kernels as K
from ._launch import launch
from .._layout import acc_dtype
from ._layout import dim_order, empty_4d, max_offset, next_pow2, plan_elementwise, plan_reduction, tl_acc_dtype
from .library import sum_except

ACT_CODES = {"linear": K.ACT_LINEAR, "relu": K.ACT_RELU, "lrelu": K.ACT_LRELU}
# Largest channel count the pixel-norm kernels keep whole in registers (one read, one write);
# above it they loop over channel chunks (two reads). Tests lower it to exercise the loop.
PN_MAX_ONE_CHUNK = 4096
PN_CHUNK = 512
# bias_act's fused bias gradient along the columns: rows summed per program before one row of fp32
# partials is written (64 rows: the partials are 1/32 of a bf16 dx, 1/64 of an fp32 one).
BIAS_ROWS = 64
BIAS_MIN_PROGRAMS = 512  # ~4 per SM on an H100; untuned (bench/test_bench_ops.py bias_act fwdbwd decides)
_I32_LIMIT = 2 ** 31 - 1


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _tile_elems(t: torch.Tensor) -> int:
    # CPU tensors run only under the interpreter, which runs programs one after another in Python:
    # fewer, bigger tiles are faster there. (Decided by device, not by reading the environment per call.)
    return 16384 if t.device.type == "cpu" else 2048


def _check(op: str, *tensors) -> torch.device:
    """Same device everywhere; CPU only under TRITON_INTERPRET=1."""
    ts = [t for t in tensors if t is not None]
    dev = ts[0].device
    for t in ts[1:]:
        if t.device != dev:
            raise ValueError(f"progan_fast.{op}: tensors on different devices ({dev} and {t.device})")
    if dev.type == "cpu" and not _interpret():
        raise RuntimeError(f"progan_fast.{op} (Triton): CPU tensors need TRITON_INTERPRET=1; "
                           "use CUDA tensors or the 'ref' backend")
    if dev.type not in ("cpu", "cuda"):
        raise RuntimeError(f"progan_fast.{op} (Triton): unsupported device {dev}")
    return dev


def _guard(dev: torch.device):
    if dev.type == "cuda" and dev.index is not None and dev.index != torch.cuda.current_device():
        return torch.cuda.device(dev)
    return contextlib.nullcontext()


def _needs_i64(sizes, strides_list) -> bool:
    return max([math.prod(sizes)] + [max_offset(sizes, st) for st in strides_list]) > _I32_LIMIT


# ----------------------------------------------------------------------------- elementwise

def _cdiv(a: int, b: int) -> int:
    return -(-a // b)  # triton.cdiv is a jit function: ~2 us per host call


def _tile_shape(rows: int, s3: int, elems: int) -> tuple[int, int]:
    """(BR, BC) of a [rows x s3] tile space: the innermost dim first, up to `elems` per tile."""
    bc = min(next_pow2(s3), elems)
    return max(1, min(next_pow2(rows), elems // bc)), bc


# Launch geometry is a pure function of shapes, strides and flags: memoized, so a repeated call
# (every training step) costs a dict lookup instead of re-planning (~10 us of Python per launch).
_memo = functools.lru_cache(maxsize=4096)


@_memo
def _elementwise_geometry(shape, strides, primary, tile):
    """(grid, int args, BR, BC, IDX64) for an elementwise launch, or None if the operands' layouts
    do not plan into four dims."""
    plan = plan_elementwise(shape, strides, primary)
    if plan is None:
        return None
    sizes, sts = plan
    s0, s1, s2, s3 = sizes
    rows = s0 * s1 * s2
    br, bc = _tile_shape(rows, s3, tile)
    grid = (_cdiv(rows, br) * _cdiv(s3, bc),)
    return grid, (rows, s1, s2, s3, *[s for st in sts for s in st]), br, bc, _needs_i64(sizes, sts)


def _elementwise(kernel, tensors, strides, n_out, pre=(), post=(), primary=None, **consts):
    """Launch an elementwise tile kernel. `tensors` in kernel order, outputs last (`n_out` of them);
    `strides[k]` are tensor k's strides over the common shape (0 where broadcast). If the layouts
    are too unlike to plan in four dims, run on dense copies (rare: only >4-D mixed layouts)."""
    shape = tensors[-1].shape
    primary = len(tensors) - n_out if primary is None else primary
    geo = _elementwise_geometry(tuple(shape), tuple(map(tuple, strides)), primary, _tile_elems(tensors[-1]))
    if geo is None:
        ins = [t.contiguous() if t is not None and t.dim() == len(shape) else t for t in tensors[:-n_out]]
        outs = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors[-n_out:]]
        dense = [t.stride() if t is not None and t.dim() == len(shape) else st
                 for t, st in zip(ins + outs, strides)]
        _elementwise(kernel, ins + outs, dense, n_out, pre, post, primary, **consts)
        for dst, src in zip(tensors[-n_out:], outs):
            dst.copy_(src)
        return
    grid, ints, br, bc, idx64 = geo
    ptrs = [t if t is not None else tensors[-1] for t in tensors]
    with _guard(tensors[-1].device):
        launch(kernel, grid, [*ptrs, *pre, *ints, *post], dict(BR=br, BC=bc, IDX64=idx64, **consts))


def bias_act(x, b, act, slope, gain, dim):
    _check("bias_act", x, b)
    y = torch.empty_like(x)
    if x.numel():
        bst = [0] * x.dim()
        if b is not None:
            bst[dim] = b.stride(0)
        _elementwise(K.bias_act_fwd_kernel, [x, b, y], [x.stride(), bst, y.stride()], 1,
                     post=(float(slope), float(gain)), HAS_B=b is not None, ACT=ACT_CODES[act],
                     ACC=tl_acc_dtype(x.dtype))
    return y


def bias_act_grad(dy, y, act, slope, gain):
    _check("bias_act_grad", dy, y)
    dx = torch.empty_like(dy)
    if dy.numel():
        code = ACT_CODES[act]
        yy = y if code != K.ACT_LINEAR else None
        _elementwise(K.bias_act_bwd_kernel, [dy, yy, dx],
                     [dy.stride(), yy.stride() if yy is not None else [0] * dy.dim(), dx.stride()], 1,
                     pre=(dx,), post=(float(slope), float(gain)), ACT=code, ACC=tl_acc_dtype(dy.dtype), DB=0, ITERS=1)
    return dx


@_memo
def _bias_grad_geometry(shape, strides, dim, tile, bias_rows, min_programs):
    """bias_act_bwd_kernel's launch with the bias-gradient partial sums: (grid, int args, BR, BC,
    IDX64, DB mode, partial-buffer shape, dims to sum it over), or None when the bias dim has size 1
    (dropped by the planner) or the layouts do not plan. A marker operand with a stride only along
    `dim` keeps the bias dim unmerged, so it is exactly one planned dim; its channel index is that
    dim's index."""
    marker = [0] * len(shape)
    marker[dim] = 1
    plan = plan_elementwise(shape, list(strides) + [marker], 2)
    if plan is None:
        return None
    sizes, sts = plan
    pos = [i for i, st in enumerate(sts[3]) if st != 0]
    if len(pos) != 1:
        return None
    s0, s1, s2, s3 = sizes
    rows = s0 * s1 * s2
    br, bc = _tile_shape(rows, s3, tile)
    ncb = _cdiv(s3, bc)
    ints = (rows, s1, s2, s3, *[s for st in sts[:3] for s in st])
    if pos[0] == 3:   # bias along the columns: one row of partials per BIAS_ROWS rows (ITERS row tiles)
        # but keep >= min_programs programs where the tensor allows (a memory-bound kernel
        # needs many loads in flight on every SM)
        iters = max(1, min(bias_rows // br, rows // (br * min_programs)))
        nprog = _cdiv(rows, br * iters)
        mode, part_shape, reduce_dims = 1, (nprog, s3), (0,)
    else:             # bias along a row dim: one column of partials per column block
        iters, nprog = 1, _cdiv(rows, br)
        mode, part_shape, reduce_dims = 2, (s0, s1, s2, ncb), tuple(d for d in range(4) if d != pos[0])
    return ((nprog * ncb,), ints, br, bc, _needs_i64(sizes, sts[:3]), mode, iters, part_shape, reduce_dims)


def bias_act_grad_db(dy, y, act, slope, gain, dim):
    """(dx, db): bias_act_grad plus the bias gradient db = sum of dx over every dim but `dim`, in
    fp32 (fp64 for fp64), summed from per-tile partials the same kernel writes: no second pass over dx."""
    _check("bias_act_grad_db", dy, y)
    code = ACT_CODES[act]
    yy = y if code != K.ACT_LINEAR else None
    acc = acc_dtype(dy.dtype)
    dx = torch.empty_like(dy)
    strides = (dy.stride(), yy.stride() if yy is not None else (0,) * dy.dim(), dx.stride())
    geo = _bias_grad_geometry(tuple(dy.shape), strides, dim, _tile_elems(dy), BIAS_ROWS,
                              BIAS_MIN_PROGRAMS) if dy.numel() else None
    if geo is None:  # empty, size-1 bias dim or unplannable layouts: the plain kernel, then a torch sum
        dx = bias_act_grad(dy, y, act, slope, gain)
        return dx, sum_except(dx, dim, acc)
    grid, ints, br, bc, idx64, mode, iters, part_shape, reduce_dims = geo
    part = torch.empty(part_shape, dtype=acc, device=dy.device)
    with _guard(dy.device):
        launch(K.bias_act_bwd_kernel, grid, [dy, yy if yy is not None else dy, dx, part, *ints, float(slope), float(gain)],
               dict(ACT=code, ACC=tl_acc_dtype(dy.dtype), BR=br, BC=bc, IDX64=idx64, DB=mode, ITERS=iters))
    return dx, part.sum(reduce_dims)


def _alpha_args(alpha_t, alpha, like):
    if alpha_t is not None:
        return (alpha_t, 0.0), True
    return (like, float(alpha)), False


def lerp(a, b, alpha_t, alpha):
    _check("lerp", a, b, alpha_t)
    y = torch.empty_like(a)
    if a.numel():
        pre, has = _alpha_args(alpha_t, alpha, a)
        _elementwise(K.lerp_fwd_kernel, [a, b, y], [a.stride(), b.stride(), y.stride()], 1, pre=pre,
                     HAS_ALPHA_PTR=has, ACC=tl_acc_dtype(a.dtype))
    return y


def lerp_grad(g, alpha_t, alpha):
    _check("lerp_grad", g, alpha_t)
    da, db = torch.empty_like(g), torch.empty_like(g)
    if g.numel():
        pre, has = _alpha_args(alpha_t, alpha, g)
        _elementwise(K.lerp_bwd_kernel, [g, da, db], [g.stride(), da.stride(), db.stride()], 2, pre=pre,
                     HAS_ALPHA_PTR=has, ACC=tl_acc_dtype(g.dtype))
    return da, db


# ----------------------------------------------------------------------------- 2x2 resampling

@_memo
def _quad_geometry(shape, hi_in, lo_in, hi_out, lo_out, tile):
    """(grid, int args, BR, BC, IDX64) of quad_kernel. `shape` is the high-res shape; the other
    arguments are the four operands' strides (None where absent). Dims follow the high-res
    tensor's memory order; high-res strides are doubled along H and W, plus the two tap steps."""
    n, c, h, w = shape
    lo_shape = (n, c, h // 2, w // 2)
    ref = hi_out if hi_out is not None else hi_in
    order = dim_order(shape, ref)

    def hi_args(s):
        if s is None:
            return [0] * 6
        st = (s[0], s[1], 2 * s[2], 2 * s[3])
        return [st[d] for d in order] + [s[2], s[3]]

    def lo_args(s):
        return [0] * 4 if s is None else [s[d] for d in order]

    s0, s1, s2, s3 = [lo_shape[d] for d in order]
    rows = s0 * s1 * s2
    br, bc = _tile_shape(rows, s3, tile // 4)  # four high-res taps per low-res element
    grid = (_cdiv(rows, br) * _cdiv(s3, bc),)
    idx64 = math.prod(shape) > _I32_LIMIT or any(
        st is not None and max_offset(sh, st) > _I32_LIMIT
        for sh, st in ((shape, hi_in), (lo_shape, lo_in), (shape, hi_out), (lo_shape, lo_out)))
    ints = (rows, s1, s2, s3, *hi_args(hi_in), *lo_args(lo_in), *hi_args(hi_out), *lo_args(lo_out))
    return grid, ints, br, bc, idx64


def _quad(mode, hi_in=None, lo_in=None, hi_out=None, lo_out=None, alpha_t=None, alpha=0.0):
    """Launch quad_kernel over the low-res grid, dims ordered by the high-res tensor's layout."""
    ref = hi_out if hi_out is not None else hi_in
    if ref.numel() == 0:
        return
    tensors = (hi_in, lo_in, hi_out, lo_out)
    grid, ints, br, bc, idx64 = _quad_geometry(tuple(ref.shape), *[None if t is None else t.stride() for t in tensors],
                                               _tile_elems(ref))
    ptrs = [t if t is not None else ref for t in tensors]
    (ap, af), has = _alpha_args(alpha_t, alpha, ref)
    with _guard(ref.device):
        launch(K.quad_kernel, grid, [*ptrs, ap, af, *ints],
               dict(MODE=mode, HAS_ALPHA_PTR=has, ACC=tl_acc_dtype(ref.dtype), BR=br, BC=bc, IDX64=idx64))


def _half(t):
    n, c, h, w = t.shape
    return empty_4d((n, c, h // 2, w // 2), t)


def _double(t):
    n, c, h, w = t.shape
    return empty_4d((n, c, h * 2, w * 2), t)


def downsample2x(x):
    _check("downsample2x", x)
    y = _half(x)
    _quad(0, hi_in=x, lo_out=y)
    return y


def downsample2x_grad(g):
    _check("downsample2x_grad", g)
    dx = _double(g)
    _quad(1, lo_in=g, hi_out=dx)
    return dx


def upsample_blend(hi, lo, alpha_t, alpha):
    _check("upsample_blend", hi, lo, alpha_t)
    y = torch.empty_like(hi)
    _quad(2, hi_in=hi, lo_in=lo, hi_out=y, alpha_t=alpha_t, alpha=alpha)
    return y


def upsample_blend_grad(g, alpha_t, alpha):
    _check("upsample_blend_grad", g, alpha_t)
    dhi, dlo = torch.empty_like(g), _half(g)
    _quad(3, hi_in=g, hi_out=dhi, lo_out=dlo, alpha_t=alpha_t, alpha=alpha)
    return dhi, dlo


def fade_reals(x, alpha_t, alpha):
    _check("fade_reals", x, alpha_t)
    y = torch.empty_like(x)
    _quad(4, hi_in=x, hi_out=y, alpha_t=alpha_t, alpha=alpha)
    return y


# ----------------------------------------------------------------------------- pixel norm family

@_memo
def _pixel_norm_geometry(shape, dim, strides, n_lead, bias_stride, tile, max_one_chunk, chunk):
    """(grid, int args, BLOCK_C, BLOCK_I, ONE_CHUNK, IDX64, num_warps) of a pixel-norm kernel over the
    [O, C, I] view, or None when the layouts do not collapse to it. `bias_stride` is None without a
    bias; the PN_* limits are arguments because tests lower them."""
    plan = plan_reduction(shape, dim, strides, primary=len(strides) - 1)
    if plan is None:
        return None
    o, c, i, sts = plan
    one = next_pow2(c) <= max_one_chunk
    block_c = next_pow2(c) if one else min(next_pow2(chunk), next_pow2(c))
    block_i = max(1, min(next_pow2(i), tile // block_c))
    grid = (o * _cdiv(i, block_i),)
    ints = (o, c, i, *[s for st in sts[:n_lead] for s in st], bias_stride or 0,
            *[s for st in sts[n_lead:] for s in st])
    idx64 = _needs_i64([o, c, i], [list(st) for st in sts])
    return grid, ints, block_c, block_i, one, idx64, 4 if block_c * block_i <= 2048 else 8


def _pixel_norm_launch(kernel, tensors, bias, dim, n_lead, bwd=False, db=False, **consts):
    """Run a pn kernel over the [O, C, I] view of every tensor (`tensors` in kernel order, the
    output last). Layouts that do not collapse to [O, C, I] are densified (rare). `bwd`: the
    backward kernel (it takes the partial-sums pointer); `db`: also return the bias gradient in
    fp32 from the kernel's partial sums (None where the kernel cannot: C above one chunk, densified
    layouts; the caller then sums dx)."""
    out = tensors[-1]
    geo = _pixel_norm_geometry(tuple(out.shape), dim, tuple(t.stride() for t in tensors), n_lead,
                               None if bias is None else bias.stride(0), _tile_elems(out) * 2,
                               PN_MAX_ONE_CHUNK, PN_CHUNK)
    if geo is None:
        tmp = torch.empty_like(out, memory_format=torch.contiguous_format)
        _pixel_norm_launch(kernel, [t.contiguous() for t in tensors[:-1]] + [tmp], bias, dim, n_lead, bwd, **consts)
        out.copy_(tmp)
        return None
    if out.numel() == 0:
        return None
    grid, ints, block_c, block_i, one, idx64, warps = geo
    ptrs = tensors[:n_lead] + [bias if bias is not None else out] + tensors[n_lead:]
    part = None
    if bwd:
        fused = db and one
        if fused:  # one row of C partials per program (its BLOCK_I pixels)
            part = torch.empty((grid[0], ints[1]), dtype=acc_dtype(out.dtype), device=out.device)
        ptrs = ptrs + [part if fused else out]
        consts = dict(consts, DB=fused)
    with _guard(out.device):
        launch(kernel, grid, [*ptrs, *ints], dict(BLOCK_C=block_c, BLOCK_I=block_i, ONE_CHUNK=one, IDX64=idx64,
                                                  HAS_B=bias is not None, num_warps=warps, **consts))
    return None if part is None else part.sum(0)


def bias_act_pixel_norm(x, b, act, slope, gain, eps, dim=1):
    _check("bias_act_pixel_norm", x, b)
    y = torch.empty_like(x)
    _pixel_norm_launch(K.pn_fwd_kernel, [x, y], b, dim, 1, slope=float(slope), gain=float(gain),
                       eps=float(eps), ACT=ACT_CODES[act], ACC=tl_acc_dtype(x.dtype))
    return y


def bias_act_pixel_norm_grad(dy, x, b, act, slope, gain, eps, dim=1):
    _check("bias_act_pixel_norm_grad", dy, x, b)
    dx = torch.empty_like(x)
    _pixel_norm_launch(K.pn_bwd_kernel, [dy, x, dx], b, dim, 2, bwd=True, slope=float(slope), gain=float(gain),
                       eps=float(eps), ACT=ACT_CODES[act], ACC=tl_acc_dtype(x.dtype))
    return dx


def bias_act_pixel_norm_grad_db(dy, x, b, act, slope, gain, eps):
    """(dx, db): bias_act_pixel_norm_grad plus db = sum of dx over N, H, W in fp32 (fp64 for fp64),
    from partial sums the same kernel writes (a torch sum of dx where it cannot)."""
    _check("bias_act_pixel_norm_grad_db", dy, x, b)
    dx = torch.empty_like(x)
    db = _pixel_norm_launch(K.pn_bwd_kernel, [dy, x, dx], b, 1, 2, bwd=True, db=True, slope=float(slope),
                            gain=float(gain), eps=float(eps), ACT=ACT_CODES[act], ACC=tl_acc_dtype(x.dtype))
    if db is None:
        db = sum_except(dx, 1, acc_dtype(dx.dtype))
    return dx, db


def pixel_norm(x, eps, dim):
    return bias_act_pixel_norm(x, None, "linear", 0.0, 1.0, eps, dim)


def pixel_norm_grad(dy, x, eps, dim):
    return bias_act_pixel_norm_grad(dy, x, None, "linear", 0.0, 1.0, eps, dim)


# ----------------------------------------------------------------------------- minibatch stddev

@_memo
def _mbstd_geometry(shape, strides, g, tile):
    """Per-sample dims (C, H, W) in x's memory order; tile = g samples x BLOCK elements."""
    n, c, h, w = shape
    order = [d + 1 for d in dim_order((c, h, w), strides[1:])]
    sizes = [shape[d] for d in order]
    length = c * h * w
    gp = next_pow2(g)
    block = max(1, min(next_pow2(length), tile // gp))
    return order, sizes, length, gp, block, _cdiv(length, block)


def minibatch_stddev(x, group_size, eps):
    _check("minibatch_stddev", x)
    n, c, h, w = x.shape
    g = min(group_size, n)
    m = n // g
    out = empty_4d((n, c + 1, h, w), x)
    if out.numel() == 0:
        return out
    order, sizes, length, gp, block, p = _mbstd_geometry(tuple(x.shape), x.stride(), g, _tile_elems(x))
    acc = acc_dtype(x.dtype)
    part = torch.empty(m * p, dtype=acc, device=x.device)
    idx64 = max(max_offset(x.shape, x.stride()), max_offset(out.shape, out.stride())) > _I32_LIMIT
    with _guard(x.device):
        launch(K.mbstd_fwd_kernel, (m * p,),
               [x, out, part, m, g, length, p, sizes[1], sizes[2], x.stride(0), *[x.stride(d) for d in order],
                out.stride(0), *[out.stride(d) for d in order], float(eps)],
               dict(ACC=tl_acc_dtype(x.dtype), GP=gp, BLOCK=block, IDX64=idx64))
        block_hw = min(next_pow2(h * w), 1024)
        launch(K.mbstd_fill_kernel, (n * _cdiv(h * w, block_hw),),
               [part, out, m, p, length, h * w, w, out.stride(0), out.stride(2), out.stride(3), c * out.stride(1)],
               dict(ACC=tl_acc_dtype(x.dtype), BLOCK_P=min(next_pow2(p), 1024), BLOCK=block_hw, IDX64=idx64))
    return out


def minibatch_stddev_grad(dy, x, group_size, eps):
    _check("minibatch_stddev_grad", dy, x)
    n, c, h, w = x.shape
    g = min(group_size, n)
    m = n // g
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return dx
    order, sizes, length, gp, block, p = _mbstd_geometry(tuple(x.shape), x.stride(), g, _tile_elems(x))
    gs = torch.empty(m, dtype=acc_dtype(x.dtype), device=x.device)
    idx64 = max(max_offset(t.shape, t.stride()) for t in (dy, x, dx)) > _I32_LIMIT
    with _guard(x.device):
        launch(K.mbstd_gsum_kernel, (m,),
               [dy, gs, m, g, h * w, w, dy.stride(0), dy.stride(2), dy.stride(3), c * dy.stride(1)],
               dict(ACC=tl_acc_dtype(x.dtype), BLOCK=min(next_pow2(g * h * w), 1024), IDX64=idx64))
        launch(K.mbstd_bwd_kernel, (m * p,),
               [dy, x, dx, gs, m, g, length, p, sizes[1], sizes[2], dy.stride(0), *[dy.stride(d) for d in order],
                x.stride(0), *[x.stride(d) for d in order], dx.stride(0), *[dx.stride(d) for d in order], float(eps)],
               dict(ACC=tl_acc_dtype(x.dtype), GP=gp, BLOCK=block, IDX64=idx64))
    return dx
