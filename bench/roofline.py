"""Roofline bookkeeping: the minimal bytes an op must move, conv FLOPs, and the device ceilings.

"Minimal bytes" = every input read once + every output written once (forward); for the backward,
the incoming gradient read once, the tensors the gradient formula truly needs read once (`SAVED`),
and every input gradient written once. A fused kernel can reach this floor; an eager chain of
PyTorch ops moves several times more. Achieved GB/s = minimal bytes / median time, so it is a
*useful* bandwidth, comparable across backends, never the hardware counter.

Ceilings are measured in the same run (a large device copy, a large matmul), so "% of ceiling" means
"of what this device really sustains", not of a datasheet number.
"""
from __future__ import annotations

import statistics
import time

import torch


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


# Tensors (by argument name) that an op's backward must read besides the incoming gradient.
# Linear ops (lerp, fades, pooling) need none; lrelu needs the sign of its input; the norms and
# the stddev need x; a conv needs x (for dW) and W (for dX).
SAVED = {
    "bias_act": ("x",),
    "bias_act_pixel_norm": ("x",),
    "pixel_norm": ("x",),
    "minibatch_stddev": ("x",),
    "upsample_blend": (),
    "fade_reals": (),
    "lerp": (),
    "downsample2x": (),
    "eq_conv2d": ("x", "weight"),
}


def op_bytes(op: str, inputs: dict, out: torch.Tensor, grad_names=()) -> tuple[int, int]:
    """(forward bytes, backward bytes) at the floor. `inputs`: the op's tensor arguments by name;
    `grad_names`: the inputs that receive a gradient."""
    fwd = nbytes(*inputs.values()) + nbytes(out)
    saved = tuple(inputs[n] for n in SAVED[op] if n in inputs)
    bwd = nbytes(out) + nbytes(*saved) + nbytes(*(inputs[n] for n in grad_names))
    return fwd, bwd


def conv_macs(x_shape, w_shape, *, up=False, down=False, fused_scale=False) -> int:
    """MACs of eq_conv2d as run: unfused up = conv at the upsampled size; unfused down = conv at
    the input size then pool; fused = the strided 4x4 (transposed) conv (4/9 resp. 16/36 of that)."""
    n, cin, h, w = x_shape
    cout, _, k, _ = w_shape
    if up:
        out_hw = 4 * h * w
        taps = 4 if (fused_scale and k == 3) else k * k
    elif down:
        out_hw = h * w if not (fused_scale and k == 3) else h * w // 4
        taps = 16 if (fused_scale and k == 3) else k * k
    else:
        pad_hw = h * w if k % 2 == 1 else (h - k + 1) * (w - k + 1)
        out_hw, taps = pad_hw, k * k
    return n * out_hw * taps * cin * cout


def summarize(median_s: float, ceilings: dict, *, moved=0, flops=0, images=None) -> dict:
    """Achieved rates and the roofline fraction for one timed case (all JSON-ready floats)."""
    info = {"median_ms": median_s * 1e3}
    if images:
        info["img_s"] = images / median_s
    gbps_ceil = ceilings.get("copy_gbps")
    tflops_ceil = ceilings.get("matmul_tflops")
    t_mem = t_flop = 0.0
    if moved:
        info["bytes"] = int(moved)
        info["gbps"] = moved / median_s / 1e9
        if gbps_ceil:
            t_mem = moved / (gbps_ceil * 1e9)
    if flops:
        info["flops"] = int(flops)
        info["tflops"] = flops / median_s / 1e12
        if tflops_ceil:
            t_flop = flops / (tflops_ceil * 1e12)
    if t_mem or t_flop:
        info["bound"] = "memory" if t_mem >= t_flop else "compute"
        info["roofline_ms"] = max(t_mem, t_flop) * 1e3
        info["frac_ceiling"] = max(t_mem, t_flop) / median_s
    return info


# --------------------------------------------------------------------------------------- ceilings

def _time(fn, sync, reps):
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_ceilings(device: torch.device) -> dict:
    """Sustained device bandwidth (copy, read + write counted) and matmul throughput.
    GPU: 512 MiB device-to-device copy, 8192^3 bf16 matmul. CPU: 64 MiB memcpy, 1024^3 fp32 matmul."""
    if device.type == "cuda":
        sync = torch.cuda.synchronize
        copy_numel, mm_n, mm_dtype, reps = 2 ** 27, 8192, torch.bfloat16, 20
    else:
        sync = lambda: None  # noqa: E731
        copy_numel, mm_n, mm_dtype, reps = 2 ** 24, 1024, torch.float32, 5
    src = torch.randn(copy_numel, device=device)
    dst = torch.empty_like(src)
    t_copy = _time(lambda: dst.copy_(src), sync, reps)
    copy_bytes = 2 * nbytes(src)
    del src, dst
    a = torch.randn(mm_n, mm_n, device=device, dtype=mm_dtype)
    b = torch.randn(mm_n, mm_n, device=device, dtype=mm_dtype)
    t_mm = _time(lambda: a @ b, sync, reps)
    del a, b
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "copy_gbps": copy_bytes / t_copy / 1e9,
        "copy_bytes": copy_bytes,
        "matmul_tflops": 2 * mm_n ** 3 / t_mm / 1e12,
        "matmul_shape": [mm_n, mm_n, mm_n],
        "matmul_dtype": str(mm_dtype).replace("torch.", ""),
    }
