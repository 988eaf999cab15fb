"""Fused equalized-LR convolution in Triton: a whole PGGAN conv layer in one implicit-GEMM kernel.

One kernel computes `PN(act(gain/sqrt(fan_in) * conv(x, w) + b))`, with the 2x resampling of
PGGAN's blocks folded into the GEMM instead of materialized:

* plain conv (3x3 'same', 1x1, 4x4 valid, dense as 1x1 on 1x1 pixels): M = N*Ho*Wo output pixels,
  N_gemm = C_out, K = k*k*C_in, A gathered from x through its strides (NCHW or channels_last);
* down (conv -> 2x2 average): one (k+1)x(k+1) stride-2 conv whose kernel is the 2x2 box sum of the
  zero-padded kxk kernel (the official `fused_scale` form; 16 instead of 36 taps for k=3);
* up (nearest 2x -> conv): four sub-pixel phases, each a small conv on the *low-res* input whose
  kernel sums the taps that read the same source pixel (2x2 taps for k=3: 4/9 of the naive FLOPs);
  the phase is the third grid axis, so no upsampled tensor exists anywhere.

The equalized-LR scale multiplies the fp32 accumulator (the weight copy the launcher makes only
re-lays out / casts the raw parameter); bias, leaky ReLU and pixel norm run in registers before the
single store. Pixel norm needs every output channel of a pixel in one tile: done when
C_out <= PN_MAX_COUT (512, all of PGGAN), else a second fp32 pass (documented in docs/triton_conv.md).
"""
from __future__ import annotations

import contextlib
import inspect
import math
import os

import torch
import triton
import triton.language as tl

from .._layout import acc_dtype, memory_format
from ._layout import tl_acc_dtype

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
PN_MAX_COUT = 512  # widest C_out whose pixel norm is fused into the tile (BLOCK_N = next_pow2(C_out))

_flags = {
    "tf32": os.environ.get("PROGAN_FAST_TRITON_TF32") == "1",
    "autotune": os.environ.get("PROGAN_FAST_TRITON_AUTOTUNE", "1") != "0",
}


def set_allow_tf32(enabled: bool) -> None:
    """Let fp32 inputs use TF32 tensor cores (off by default: fp32 stays IEEE-exact-ish)."""
    _flags["tf32"] = bool(enabled)


def set_autotune(enabled: bool) -> None:
    """Turn triton.autotune on or off (off: one heuristic config per shape, no tuning runs)."""
    _flags["autotune"] = bool(enabled)


# ----------------------------------------------------------------------------------------------
# Kernel
# ----------------------------------------------------------------------------------------------

@triton.jit
def _eq_conv_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, r_ptr,
    H, W, C_IN, C_OUT, HO, WO, HP, WP, M,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw,
    scale, slope, eps,
    M_BUCKET, K_TOTAL,  # autotune key only
    KT: tl.constexpr, PH: tl.constexpr, IS: tl.constexpr, PAD: tl.constexpr, UP: tl.constexpr,
    HAS_BIAS: tl.constexpr, LRELU: tl.constexpr, PIXEL_NORM: tl.constexpr,
    PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One [BLOCK_M pixels x BLOCK_N channels] output tile of one sub-pixel phase.

    Output pixel (n, oh, ow) of phase (py, px) reads input rows ohp*IS + off_y + ty, ty < KT,
    where oh = ohp*PH + py; weights are laid out [phase, ty, tx, C_in, C_out] (C_out contiguous).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    phase = tl.program_id(2)
    py = phase // PH
    px = phase % PH
    if UP:  # floor((p - PAD) / 2) with a non-negative numerator
        off_y = (py + PAD) // 2 - PAD
        off_x = (px + PAD) // 2 - PAD
    else:
        off_y = -PAD
        off_x = -PAD

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    n_ok = offs_n < C_OUT
    hw = HP * WP
    nb = offs_m // hw
    rem = offs_m % hw
    ohp = rem // WP
    owp = rem % WP
    oh = ohp * PH + py
    ow = owp * PH + px
    m_ok = (offs_m < M) & (oh < HO) & (ow < WO)
    ih0 = ohp * IS + off_y
    iw0 = owp * IS + off_x
    x_row = x_ptr + nb.to(tl.int64) * sxn
    w_phase = w_ptr + phase * (KT * KT * C_IN * C_OUT)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    n_cb = tl.cdiv(C_IN, BLOCK_K)
    for step in range(0, KT * KT * n_cb):
        tap = step // n_cb
        ci = (step % n_cb) * BLOCK_K + offs_k
        ih = ih0 + tap // KT
        iw = iw0 + tap % KT
        row_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        k_ok = ci < C_IN
        a = tl.load(x_row[:, None] + (ih * sxh + iw * sxw)[:, None] + ci[None, :] * sxc,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_phase + (tap * C_IN + ci)[:, None] * C_OUT + offs_n[None, :],
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)

    # Epilogue in registers: equalized-LR scale, bias, activation, pixel norm.
    acc = acc * scale
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(ACC_DTYPE)
        acc = acc + bias[None, :]
    if LRELU:
        acc = tl.where(acc > 0, acc, acc * slope)
    if PIXEL_NORM:  # the tile holds every channel; padded columns are exact zeros
        ms = tl.sum(acc * acc, axis=1) / C_OUT
        r = 1.0 / tl.sqrt(ms + eps)
        acc = acc * r[:, None]
        tl.store(r_ptr + (nb.to(tl.int64) * HO + oh) * WO + ow, r, mask=m_ok)
    y_pix = y_ptr + nb.to(tl.int64) * syn + oh * syh + ow * syw
    tl.store(y_pix[:, None] + offs_n[None, :] * syc, acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


# ----------------------------------------------------------------------------------------------
# Autotuning (GPU only; the interpreter runs one tiny config)
# ----------------------------------------------------------------------------------------------

def _cfg(bm, bn, bk, warps, stages):
    meta = {"BLOCK_M": bm, "BLOCK_K": bk}
    if bn is not None:
        meta["BLOCK_N"] = bn
    return triton.Config(meta, num_warps=warps, num_stages=stages)


# Hopper (wgmma wants BLOCK_M >= 64 per warpgroup) and Ampere (mma.sync) both do well on these.
_GENERAL_CONFIGS = [
    _cfg(128, 128, 32, 4, 4), _cfg(128, 128, 64, 8, 3), _cfg(128, 256, 64, 8, 3),
    _cfg(64, 256, 32, 8, 4), _cfg(128, 64, 32, 4, 4), _cfg(64, 128, 32, 4, 4),
    _cfg(64, 64, 32, 4, 4), _cfg(32, 64, 64, 4, 4), _cfg(128, 16, 32, 4, 4), _cfg(256, 16, 32, 4, 3),
]
# Pixel-norm tiles span all C_out: BLOCK_N is fixed by the launcher, tune the rest.
_PN_CONFIGS = [
    _cfg(bm, None, bk, w, s)
    for bm in (32, 64, 128) for bk in (32, 64) for (w, s) in ((4, 3), (8, 3), (8, 4))
]


def _prune(configs, named_args, **kwargs):
    """Drop tiles far larger than the problem and those that would spill registers."""
    cout, cin = named_args["C_OUT"], named_args["C_IN"]
    m = named_args["M"]
    bn_fixed = kwargs.get("BLOCK_N")
    keep = []
    for c in configs:
        bm, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_K"]
        bn = c.kwargs.get("BLOCK_N", bn_fixed)
        if bn is not None and bn > max(16, 2 * triton.next_power_of_2(cout)) and bn > 16:
            continue
        if bm > max(32, 2 * triton.next_power_of_2(m)):
            continue
        if bk > max(32, triton.next_power_of_2(cin)):
            continue
        if bn is not None and bm * bn > 128 * 256:  # fp32 accumulator > 128 regs/thread at 8 warps
            continue
        if bn is not None and bm * bn >= 64 * 256 and c.num_warps < 8:
            continue
        keep.append(c)
    return keep or configs[-1:]


_KEY = ["M_BUCKET", "C_OUT", "K_TOTAL", "C_IN", "PH", "IS"]


def autotune_options() -> dict:
    """Extra triton.autotune arguments. The winning config of every tuning key is kept on disk in
    Triton's cache (keyed by Triton version, GPU target, kernel source and config list), so a new
    process or a resumed run does not pay the tuning again; PROGAN_FAST_TRITON_AUTOTUNE_CACHE=0
    turns that off. Triton versions without `cache_results` tune once per process."""
    if os.environ.get("PROGAN_FAST_TRITON_AUTOTUNE_CACHE", "1") == "0":
        return {}
    if "cache_results" in inspect.signature(triton.autotune).parameters:
        return {"cache_results": True}
    return {}


_tuned_general = triton.autotune(_GENERAL_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune},
                                 **autotune_options())(_eq_conv_fwd_kernel)
_tuned_pn = triton.autotune(_PN_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune},
                            **autotune_options())(_eq_conv_fwd_kernel)


def _heuristic_meta(m, cin, cout, pn):
    """One reasonable config when autotuning is off (and the tiny one under the interpreter)."""
    bn_pn = max(16, triton.next_power_of_2(cout))
    if INTERPRET:
        return dict(BLOCK_M=32, BLOCK_N=bn_pn if pn else 16, BLOCK_K=16, num_warps=1, num_stages=1)
    bk = 32 if cin >= 32 else 16
    if pn:
        bm = 64 if bn_pn <= 256 else 32
        return dict(BLOCK_M=bm, BLOCK_N=bn_pn, BLOCK_K=bk, num_warps=8 if bn_pn >= 256 else 4, num_stages=3)
    bn = min(128, bn_pn)
    bm = 128 if m >= 4096 else 64
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=8 if bm * bn >= 128 * 128 else 4, num_stages=3)


# ----------------------------------------------------------------------------------------------
# Geometry and weight preparation
# ----------------------------------------------------------------------------------------------

def conv_padding(k: int) -> int:
    """'same' for odd kernels, 'valid' for even ones (the reference's rule)."""
    return k // 2 if k % 2 == 1 else 0


def output_size(h, w, k: int, up: bool, down: bool):
    """(Ho, Wo) of eq_conv2d; works on ints and SymInts."""
    p = conv_padding(k)
    if up:
        h, w = 2 * h, 2 * w
    ho, wo = h + 2 * p - k + 1, w + 2 * p - k + 1
    if down:
        ho, wo = ho // 2, wo // 2
    return ho, wo


def allocate_outputs(x, weight, pixel_norm, up, down):
    """(y, r) exactly as the kernel writes them; shared with the op's fake implementation."""
    n, _, h, w = x.shape
    cout, k = weight.shape[0], weight.shape[-1]
    ho, wo = output_size(h, w, k, up, down)
    y = torch.empty((n, cout, ho, wo), dtype=x.dtype, device=x.device, memory_format=memory_format(x))
    r = x.new_empty((n, 1, ho, wo) if pixel_norm else (0,), dtype=acc_dtype(x.dtype))
    return y, r


def shift_sum(w: torch.Tensor) -> torch.Tensor:
    """[.., k, k] -> [.., k+1, k+1]: sum of the 4 one-pixel shifts of the zero-padded kernel."""
    wp = torch.nn.functional.pad(w, (1, 1, 1, 1))
    return wp[..., 1:, 1:] + wp[..., :-1, 1:] + wp[..., 1:, :-1] + wp[..., :-1, :-1]


def shift_sum_adjoint(g: torch.Tensor) -> torch.Tensor:
    """Adjoint of `shift_sum`: [.., k+1, k+1] -> [.., k, k]."""
    return g[..., :-1, :-1] + g[..., 1:, :-1] + g[..., :-1, 1:] + g[..., 1:, 1:]


def _fold_lists(k: int, up: bool, down: bool):
    """1-D fold matrices F [phases, KT, k]: kernel tap t contributes F[a, u, t] to phase a's tap u.
    up: nearest-2x row v reads v // 2, so phase a's taps t that land on the same source row merge;
    down: the 2x2 average makes tap u = t or t + 1 of a (k+1)-tap stride-2 kernel, weight 1/2 each."""
    p = conv_padding(k)
    if up:
        offs = [(a - p) // 2 for a in (0, 1)]
        taps = [[(a - p + t) // 2 - offs[a] for t in range(k)] for a in (0, 1)]
        kt = max(max(t) for t in taps) + 1
        return [[[1.0 if taps[a][t] == u else 0.0 for t in range(k)] for u in range(kt)] for a in (0, 1)]
    if down:
        return [[[0.5 if u in (t, t + 1) else 0.0 for t in range(k)] for u in range(k + 1)]]
    return None


_fold_cache: dict = {}


def _fold(k, up, down, device, dtype):
    """Device-resident fold matrix, built once per (k, form, device, dtype): no per-call copies."""
    key = (k, up, down, device, dtype)
    f = _fold_cache.get(key)
    if f is None:
        f = _fold_cache[key] = torch.tensor(_fold_lists(k, up, down), device=device, dtype=dtype)
    return f


def prepare_weight(weight: torch.Tensor, dtype: torch.dtype, up: bool, down: bool):
    """Raw [Cout, Cin, k, k] parameter -> the kernel's [phases, KT, KT, Cin, Cout] operand: unscaled,
    taps folded by one einsum where resampling merges them, then cast to the activation dtype.
    Returns (w, KT)."""
    k = weight.shape[-1]
    w = weight.detach()
    if not (up or down):
        return w.permute(2, 3, 1, 0).to(dtype).contiguous().unsqueeze(0), k
    # fp64 so no matmul precision setting (TF32) can round the folded weights; weights are small.
    f = _fold(k, up, down, w.device, torch.float64)
    wf = torch.einsum("ayt,bxs,oits->abyxio", f, f, w.to(f.dtype))
    kt = f.shape[1]
    return wf.reshape(-1, kt, kt, *wf.shape[-2:]).to(dtype).contiguous(), kt


# ----------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------

def eq_conv2d_forward(x, weight, bias, gain, act, slope, pixel_norm, up, down, eps):
    """Run the fused layer; returns (y, r) with r = the pixel-norm factor rsqrt(mean(a^2) + eps)
    per output pixel [N, 1, Ho, Wo] (fp32; fp64 for fp64) when `pixel_norm`, else an empty tensor (for backward)."""
    n, cin, h, w_in = x.shape
    cout, _, k, _ = weight.shape
    y, r = allocate_outputs(x, weight, pixel_norm, up, down)
    if y.numel() == 0:
        return y, r
    ho, wo = y.shape[2], y.shape[3]
    scale = gain / math.sqrt(cin * k * k)
    w_op, kt = prepare_weight(weight, x.dtype, up, down)
    ph = 2 if up else 1
    hp, wp = (ho + ph - 1) // ph, (wo + ph - 1) // ph
    m = n * hp * wp
    fused_pn = pixel_norm and cout <= PN_MAX_COUT
    out = y if (fused_pn or not pixel_norm) else torch.empty_like(y, dtype=acc_dtype(y.dtype))
    if x.dtype == torch.float64 or (x.dtype == torch.float32 and not _flags["tf32"]):
        precision = "ieee"
    else:
        precision = "tf32"  # only fp32 operands are affected; 16-bit ones always use tensor cores
    args = (x, w_op, bias if bias is not None else w_op, out, r if fused_pn else out,
            h, w_in, cin, cout, ho, wo, hp, wp, m,
            *x.stride(), *out.stride(), scale, 0.0 if act == "relu" else slope, eps,
            triton.next_power_of_2(m), kt * kt * cin)
    const = dict(KT=kt, PH=ph, IS=2 if down else 1, PAD=conv_padding(k), UP=up, HAS_BIAS=bias is not None,
                 LRELU=act in ("lrelu", "relu"), PIXEL_NORM=fused_pn, PRECISION=precision, ACC_DTYPE=tl_acc_dtype(x.dtype))
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        if INTERPRET or not _flags["autotune"]:
            meta = _heuristic_meta(m, cin, cout, fused_pn)
            grid = (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(cout, meta["BLOCK_N"]), ph * ph)
            _eq_conv_fwd_kernel[grid](*args, **const, **meta)
        elif fused_pn:
            bn = max(16, triton.next_power_of_2(cout))
            grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), 1, ph * ph)  # noqa: E731
            _tuned_pn[grid](*args, **const, BLOCK_N=bn)
        else:
            grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(cout, meta["BLOCK_N"]), ph * ph)  # noqa: E731
            _tuned_general[grid](*args, **const)
    if pixel_norm and not fused_pn:  # second pass: C_out too wide for one register tile
        rr = torch.rsqrt(out.square().mean(dim=1, keepdim=True) + eps)
        r.copy_(rr)
        y.copy_(out * rr)
    return y, r

