"""Step anatomy: what one training iteration asks of the GPU, counted without a GPU.

A real TrainStep (D step with the WGAN-GP penalty, G step, EMA) runs at the paper's shapes on fake
tensors (FakeTensorMode: shapes, dtypes and strides, no data, no compute), and a dispatch mode
records every kernel the iteration issues below autograd and autocast: aten ops and progan_fast's
registered ops. Per kernel it counts

- the bytes it must move at least: each distinct input read once, each output written once, by
  memory extent (a broadcast bias counts its C elements, not N*C*H*W);
- its FLOPs, by torch.utils.flop_counter's formulas (conv, conv backward, mm, ...);
- its roofline time on a device: max(bytes / copy bandwidth, FLOPs / matmul rate of its dtype).

The sum over the iteration is the step's *floor* on that device: this sequence of kernels cannot
run faster there. A measured step far above its floor is host-bound or runs slow kernels; a fused
variant lowers the floor itself by removing kernels and bytes. It also says where the bytes go
(dtype casts of the fp32-math reference ops under AMP, layout copies, the optimizer), and its conv
FLOPs cross-check the analytic model FLOPs behind the bench's MFU (bench/flops.py).

    python -m bench.step_anatomy --res 4 16 64 256 --variant eager_fp32 eager_amp fast triton_amp \
        --results bench/results/2026-11-26_nvidia-h200_dd988d49.json --md anatomy.md

`fast` is `impl="auto"` as it resolves on `--arch` (default sm_90) from the committed table (or the
one PROGAN_FAST_AUTO_TABLE names); `fast_graph` is the same inside a CUDA graph (the table's
"graph_ops" lists), which `--cuda-graph` replays.
Approximations: CPU autocast stands in for CUDA autocast (convs and matmuls go to bf16 under both;
the reference ops upcast explicitly anyway, but CUDA autocast also sends a few reductions to fp32);
cuDNN's workspaces and internal transposes are invisible; every non-view op counts as one kernel, a
foreach / fused-Adam call too (they issue a few); fp32 convs are credited at the TF32 rate (cuDNN's
default); a strided view counts the memory span it touches. The graph floor's 2 us per kernel is an
assumed constant.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from progan_fast import ops
from progan_fast.models import Discriminator, Generator
from progan_fast.ops import _backend

from .flops import train_step_flops
from .paper import BATCH_1GPU, log2
from .step_cases import make_train_step, variant_setup

# bench/step_cases.py's, as on a GPU; fast_graph = `fast` as auto resolves inside a CUDA graph
# (ops.graph_mode: the table's "graph_ops" lists), i.e. the kernels one replay runs
VARIANTS = ("eager_fp32", "eager_amp", "fast", "fast_graph", "triton_amp")
PAPER_FMAP = dict(fmap_base=8192, fmap_decay=1.0, fmap_max=512)

# Rates relative to the measured bf16 matmul rate (H100/H200 dense datasheet ratios: bf16 989,
# TF32 494, fp32 FMA 67 TFLOP/s).
RATE_OF_DTYPE = {torch.bfloat16: 1.0, torch.float16: 1.0, torch.float32: 494 / 989, torch.float64: 67 / 989 / 2}
FP32_NO_TF32 = 67 / 989
# The committed H200 run's measured ceilings (bench/results/2026-11-26_nvidia-h200_dd988d49.json).
KERNEL_US = 2.0  # assumed device-side minimum per kernel in a CUDA graph (launch latency, ramp, tail)
DEFAULT_CEILINGS = {"copy_gbps": 4001.8, "matmul_tflops": 769.9, "device": "NVIDIA H200 (measured 2026-11-26)"}

_FREE = {"prim.device", "aten.detach", "aten.empty", "aten.empty_strided", "aten.empty_like", "aten.new_empty",
         "aten.new_empty_strided", "aten.lift_fresh", "profiler._record_function_enter_new",
         "profiler._record_function_exit", "aten._local_scalar_dense",
         "aten._unsafe_view"}  # no kernel, no traffic (_unsafe_view is a view its schema does not declare)


@dataclass
class Kernel:
    name: str
    category: str
    bytes: int
    flops: int
    dtype: torch.dtype | None  # the compute dtype of a FLOP-counted op


@dataclass
class Anatomy:
    res: int
    variant: str
    batch: int
    fmap: dict
    fused_scale: bool
    kernels: list = field(default_factory=list)


def _extent_bytes(t: torch.Tensor) -> int:
    """Bytes of memory a tensor view spans (stride-0 dims count once)."""
    if t.numel() == 0:
        return 0
    elems = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride()) if st > 0)
    return elems * t.element_size()


def _tensors(tree) -> list:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _mutated(func, args, kwargs) -> list:
    """The tensors an op writes in place (schema `Tensor(a!)` arguments: `add_`, `_foreach_lerp_`, out=)."""
    out = []
    for i, arg in enumerate(func._schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            out += _tensors(value)
    return out


def _is_view(func) -> bool:
    """Outputs alias an input without writing it (view / reshape family): metadata only."""
    rets = func._schema.returns
    return bool(rets) and all(r.alias_info is not None and not r.alias_info.is_write for r in rets)


# Ops whose first argument is overwritten without being read, or only lends its shape and dtype.
_SELF_NOT_READ = {"aten.copy_", "aten.zero_", "aten.fill_", "aten.normal_", "aten.uniform_", "aten.random_",
                  "aten.bernoulli_", "aten.zeros_like", "aten.ones_like", "aten.empty_like", "aten.full_like",
                  "aten.rand_like", "aten.randn_like", "aten.new_zeros", "aten.new_ones", "aten.new_full"}


def _reads(name: str, args, kwargs) -> list:
    """The tensors an op reads: its tensor arguments, less `out=` targets and a self that is only
    overwritten (copy_, zero_, fill_) or only gives a shape (zeros_like, new_zeros)."""
    skip = {id(t) for t in _tensors(kwargs.get("out"))}
    if name in _SELF_NOT_READ and args and isinstance(args[0], torch.Tensor):
        skip.add(id(args[0]))
    if name == "aten.avg_pool2d_backward" and len(args) > 1:  # the kernel reads only self's shape
        skip.add(id(args[1]))
    return [t for t in _tensors((args, kwargs)) if id(t) not in skip]


def _category(name: str, inputs, outputs) -> str:
    if name.startswith("progan_fast"):
        return "progan_fast ops"
    if name in ("aten.convolution", "aten.convolution_backward", "aten.mm", "aten.addmm", "aten.bmm"):
        return "conv / matmul"
    if "adam" in name or name.startswith("aten._foreach") or name.startswith("aten._amp_foreach"):
        return "optimizer / EMA"
    if name in ("aten._to_copy", "aten.copy_", "aten.clone", "aten.contiguous") and inputs and outputs:
        src = inputs[1] if name == "aten.copy_" and len(inputs) > 1 else inputs[0]
        return "dtype casts" if src.dtype != outputs[0].dtype else "layout copies"
    return "other elementwise / reductions"


class KernelRecorder(TorchDispatchMode):
    """Records each dispatched op that launches work as a Kernel (bytes, FLOPs, category)."""

    def __init__(self):
        super().__init__()
        self.kernels: list[Kernel] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = str(func.overloadpacket)
        if name in _FREE or _is_view(func):
            return out
        inputs, outputs = _tensors((args, kwargs)), _tensors(out)
        written = {id(t): t for t in outputs + _mutated(func, args, kwargs)}
        read = {id(t): t for t in _reads(name, args, kwargs)}
        moved = sum(map(_extent_bytes, read.values())) + sum(map(_extent_bytes, written.values()))
        formula = flop_registry.get(func.overloadpacket)
        flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
        dtype = inputs[0].dtype if flops and inputs else None
        self.kernels.append(Kernel(name, _category(name, inputs, outputs), moved, flops, dtype))
        return out


@contextlib.contextmanager
def _as_gpu(arch: str):
    """`auto` resolves on these CPU fake tensors as on `arch`, and Triton's ops accept them (they run
    their fake implementations here: `_tracing` is true under the recorder's dispatch mode)."""
    # Import the Triton backend first: Triton fixes at decoration time whether a kernel is compiled
    # or interpreted, so a first import under TRITON_INTERPRET=1 would leave this process's kernels
    # interpreted after the variable is restored.
    _backend._ensure_loaded("triton")
    saved_arch, saved_env = _backend._arch_of, os.environ.get("TRITON_INTERPRET")
    _backend._arch_of = lambda device: arch
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        _backend._arch_of = saved_arch
        if saved_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved_env


def trace_step(res: int, variant: str, *, batch: int | None = None, arch: str = "sm_90", fmap=None,
               fused_scale: bool = False, model_res: int = 1024) -> Anatomy:
    """Record one stable-phase iteration of `variant` at `res` px (after one untraced iteration, so
    lazy optimizer state is not counted), with the schedule's batch unless `batch` is given."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    backend, _, channels_last = variant_setup(variant)
    batch = batch or BATCH_1GPU[res]
    fmap = fmap or PAPER_FMAP
    recorder = KernelRecorder()
    graph = ops.graph_mode() if variant == "fast_graph" else contextlib.nullcontext()
    with _as_gpu(arch), ops.use_backend(backend), graph, FakeTensorMode(allow_non_fake_inputs=True):
        torch.manual_seed(0)
        G = Generator(model_res, **fmap, fused_scale=fused_scale)
        D = Discriminator(model_res, **fmap, fused_scale=fused_scale)
        step = make_train_step(variant, G, D, "cpu", channels_last)
        reals = torch.randn(batch, 3, res, res)
        step(reals, log2(res), 1.0)
        with recorder:
            step(reals, log2(res), 1.0)
    return Anatomy(res, variant, batch, fmap, fused_scale, recorder.kernels)


def kernel_floor_s(k: Kernel, ceilings: dict) -> float:
    t_mem = k.bytes / (ceilings["copy_gbps"] * 1e9)
    if not k.flops:
        return t_mem
    rate = RATE_OF_DTYPE.get(k.dtype, 1.0)
    if k.dtype == torch.float32 and not k.name.startswith("aten.convolution"):
        rate = FP32_NO_TF32  # matmuls in fp32 (torch's default: no TF32 for matmul)
    return max(t_mem, k.flops / (ceilings["matmul_tflops"] * 1e12 * rate))


def summarize(an: Anatomy, ceilings: dict = DEFAULT_CEILINGS, kernel_us: float = KERNEL_US) -> dict:
    """Totals per step, bytes by category, and the floors on `ceilings`' device: the roofline sum,
    and the same assuming every kernel takes at least `kernel_us` (a replayed CUDA graph still pays
    each node's launch latency on the device; the constant is an assumption, not a measurement)."""
    by_cat = defaultdict(int)
    for k in an.kernels:
        by_cat[k.category] += k.bytes
    total_bytes = sum(by_cat.values())
    floors = [kernel_floor_s(k, ceilings) for k in an.kernels]
    floor_s = sum(floors)
    graph_floor_s = sum(max(t, kernel_us * 1e-6) for t in floors)
    return {
        "res": an.res, "variant": an.variant, "batch": an.batch,
        "kernels": len(an.kernels),
        "gbytes": total_bytes / 1e9,
        "gbytes_by_category": {c: b / 1e9 for c, b in sorted(by_cat.items(), key=lambda kv: -kv[1])},
        "gflop": sum(k.flops for k in an.kernels) / 1e9,
        # bench/flops.py's analytic count of the form that ran (the bench credits the unfused one)
        "model_gflop": train_step_flops(log2(an.res), **an.fmap, fused_scale=an.fused_scale) * an.batch / 1e9,
        "mem_ms": total_bytes / (ceilings["copy_gbps"] * 1e9) * 1e3,
        "floor_ms": floor_s * 1e3,
        "floor_img_s": an.batch / floor_s if floor_s else None,
        "graph_floor_ms": graph_floor_s * 1e3,
        "kernel_us": kernel_us,
        "top_ops": Counter(k.name for k in an.kernels).most_common(8),
    }


def measured_img_s(doc: dict | None, fused_scale: bool = False) -> dict:
    """{(res, variant): img/s} of the step cases in a bench results document that ran the same
    resampling form."""
    out = {}
    for case in (doc or {}).get("cases", []):
        if case.get("kind") == "step" and case.get("img_s") and bool(case.get("fused_scale")) == fused_scale:
            out[(int(case["res"]), case["variant"])] = case["img_s"]
    return out


def markdown(rows: list[dict], measured: dict, ceilings: dict) -> str:
    kernel_us = rows[0]["kernel_us"] if rows else KERNEL_US
    lines = [f"Step anatomy (fake tensors, paper networks, the schedule's batch); floors on {ceilings.get('device', 'the device')}: "
             f"{ceilings['copy_gbps']:.0f} GB/s copy, {ceilings['matmul_tflops']:.0f} TFLOP/s bf16 matmul; "
             f"graph floor: each kernel >= {kernel_us:g} us.", "",
             "| res (batch) | variant | kernels | GB moved | casts GB | layout GB | GFLOP (traced / model) | "
             "floor ms | graph floor ms | floor img/s | measured img/s | % of floor |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        got = measured.get((r["res"], r["variant"]))
        cat = r["gbytes_by_category"]
        lines.append(
            f"| {r['res']} px ({r['batch']}) | {r['variant']} | {r['kernels']} | {r['gbytes']:.2f} | "
            f"{cat.get('dtype casts', 0):.2f} | {cat.get('layout copies', 0):.2f} | "
            f"{r['gflop']:.0f} / {r['model_gflop']:.0f} | {r['floor_ms']:.2f} | {r['graph_floor_ms']:.2f} | "
            f"{r['floor_img_s']:,.0f} | "
            + (f"{got:,.0f} | {100 * got / r['floor_img_s']:.0f} % |" if got else "– | – |"))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--res", type=int, nargs="+", default=[4, 16, 64, 256], help="resolutions (px)")
    p.add_argument("--variant", nargs="+", default=[v for v in VARIANTS if v != "fast_graph"], choices=VARIANTS,
                   help="step variants (default: all but fast_graph, which equals fast until the table has "
                        "graph lists)")
    p.add_argument("--arch", default="sm_90", help="GPU architecture whose auto table `fast` follows")
    p.add_argument("--batch", type=int, help="batch size (default: the 1-GPU schedule's)")
    p.add_argument("--fused-scale", action="store_true", help="models in the fused_scale (4x4 stride-2) form")
    p.add_argument("--results", help="a bench results JSON: its ceilings and measured step img/s")
    p.add_argument("--kernel-us", type=float, default=KERNEL_US,
                   help="device-side minimum per kernel for the graph floor (default %(default)s)")
    p.add_argument("--md", help="write the markdown table here")
    p.add_argument("--json", help="write the summaries here")
    args = p.parse_args(argv)
    for res in args.res:
        if res not in BATCH_1GPU:
            p.error(f"--res {res}: choose from {sorted(BATCH_1GPU)}")
    ceilings, doc = dict(DEFAULT_CEILINGS), None
    if args.results:
        with open(args.results) as f:
            doc = json.load(f)
        if (doc.get("ceilings") or {}).get("copy_gbps"):
            ceilings = {**doc["ceilings"], "device": doc.get("env", {}).get("device", "the device")}
    rows = [summarize(trace_step(res, v, batch=args.batch, arch=args.arch, fused_scale=args.fused_scale), ceilings,
                      kernel_us=args.kernel_us)
            for res in args.res for v in args.variant]
    text = markdown(rows, measured_img_s(doc, args.fused_scale), ceilings)
    sys.stdout.write(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ceilings": ceilings, "rows": rows}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
