"""Stride planning shared by the launchers and the fake (meta) implementations.

The kernels never call `.contiguous()`: they index every operand through its own strides. To keep
the index arithmetic cheap and the memory accesses coalesced, a launcher first *plans* the
iteration: drop size-1 dims, order the dims by the output's strides (so consecutive lanes walk
consecutive addresses, whatever the layout: NCHW, channels_last, a 2-D [N, C] latent, ...) and
merge neighbours that are contiguous in every operand. NCHW bias_act becomes [N, C, H*W];
channels_last becomes [N*H*W, C]; a dense lerp becomes one flat dim.

Output allocation rules (`empty_4d`, from progan_fast/_layout.py) are shared the same way, so the
real kernels and the fake implementations that torch.compile traces always agree on output strides.
"""
from __future__ import annotations

import torch
import triton.language as tl

from .._layout import acc_dtype, empty_4d, memory_format  # noqa: F401  (re-exported for the launchers)


def tl_acc_dtype(dtype: torch.dtype):
    """The Triton dtype a kernel accumulates in for `dtype` storage (acc_dtype's twin: fp64 for fp64)."""
    return tl.float64 if acc_dtype(dtype) == torch.float64 else tl.float32


def dim_order(shape, strides) -> list[int]:
    """Dims from outermost to innermost in memory (largest stride first; ties keep logical order)."""
    return sorted(range(len(shape)), key=lambda d: (-strides[d], d))


def plan_elementwise(shape, strides_list, primary: int = 0, max_dims: int = 4):
    """Collapse an elementwise iteration space. `strides_list[k]` are operand k's strides over
    `shape` (0 where broadcast). Returns (sizes, [strides per operand]) with exactly `max_dims`
    dims, outermost first and padded in front with size-1 dims, or None if the operands' layouts
    are too unlike each other to fit in `max_dims` dims (the caller then densifies)."""
    dims = [d for d in dim_order(shape, strides_list[primary]) if shape[d] != 1]
    sizes = [shape[d] for d in dims]
    strides = [[s[d] for d in dims] for s in strides_list]
    i = len(sizes) - 1
    while i > 0:  # merge dim i-1 (outer) into dim i (inner) when contiguous in every operand
        if all(st[i - 1] == st[i] * sizes[i] for st in strides):
            sizes[i] *= sizes[i - 1]
            del sizes[i - 1]
            for st in strides:
                del st[i - 1]
        i -= 1
    if len(sizes) > max_dims:
        return None
    pad = max_dims - len(sizes)
    return [1] * pad + sizes, [[0] * pad + st for st in strides]


def plan_reduction(shape, dim: int, strides_list, primary: int = 0):
    """Plan a reduction over `dim` as a view [O, C, I] for every operand: C is the reduced dim,
    O and I the (merged) other dims, I the inner one. Returns (O, C, I, [(sO, sC, sI) per operand])
    or None when the other dims do not merge into two."""
    others = [d for d in range(len(shape)) if d != dim]
    sub_shape = [shape[d] for d in others]
    plan = plan_elementwise(sub_shape, [[s[d] for d in others] for s in strides_list], primary, max_dims=2)
    if plan is None:
        return None
    (o, i), st = plan
    return o, shape[dim], i, [(s[0], sl[dim], s[1]) for s, sl in zip(st, strides_list)]


def max_offset(shape, strides) -> int:
    """Largest element offset a tensor view can reach (decides 32- vs 64-bit index math)."""
    return sum((n - 1) * abs(s) for n, s in zip(shape, strides) if n > 0)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
