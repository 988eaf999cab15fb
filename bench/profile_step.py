"""Where one training step's time goes: a torch.profiler breakdown of the bench's step cases.

The step benchmark says *how fast*; this says *why*. For each (resolution, variant) it builds the
very case `bench/test_bench_train_step.py` times (bench/step_cases.py), warms it up, times a few
steps without the profiler, then profiles a few more and reports:

- wall ms per step (unprofiled) against the device's busy time per step: a step whose kernels fill
  far less than its wall time is host-bound (launch overhead), one near 100 % is device-bound;
- GPU kernels (and copies) per step: launches in an eager step, graph nodes in a replayed one;
- device time per kernel family (GEMM/conv, layout copies, progan_fast Triton / CUDA kernels,
  other elementwise and reductions), the numbers to compare across variants;
- the top kernels by device time, and the top host-side ops by self CPU time.

    python -m bench.profile_step --res 4 64 --variant eager_amp fast --out-md prof.md --out-json prof.json

On a machine without a GPU it runs the CPU smoke profile of bench/conftest.py (tiny model), where
only the host-side table means anything.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from .conftest import configure_backends, make_settings
from .step_cases import VARIANTS, CaseUnavailable, build_step_case
from .timing import device_sync

_FAMILIES = (  # first match wins; patterns are matched against the lower-cased kernel name
    ("progan_fast cuda", re.compile(r"progan_fast::")),
    ("progan_fast triton", re.compile(r"(bias_act|lerp|quad|pn|mbstd)_\w*kernel|_eq_conv_\w*kernel")),
    ("layout / copy", re.compile(r"nchwtonhwc|nhwctonchw|transpose|permute")),  # cuDNN's too
    ("gemm / conv", re.compile(r"gemm|conv|cutlass|xmma|cudnn|wgrad|dgrad|fprop|sm\d\d_|nvjet|implicit")),
    ("layout / copy", re.compile(r"copy|memcpy|memset|catarray")),
    ("reduction", re.compile(r"reduce|sum|norm|mean|std|var")),
    ("elementwise", re.compile(r"elementwise|vectorized|unrolled|foreach|pointwise|triton_")),
)


def kernel_family(name: str) -> str:
    low = name.lower()
    for family, pattern in _FAMILIES:
        if pattern.search(low):
            return family
    return "other"


def _self_device_us(evt) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        value = getattr(evt, attr, None)
        if value is not None:
            return float(value)
    return 0.0


def _is_device(evt) -> bool:
    """A kernel, memcpy or memset on the GPU. Kineto's gpu_user_annotation events (the device-side
    span of a record_function, e.g. torch.optim's step) are CUDA-typed too but cover other kernels
    and the gaps between them: counting them would count that time twice (torch's own tables skip
    them as well)."""
    return (getattr(evt, "device_type", None) == torch.autograd.DeviceType.CUDA
            and not getattr(evt, "is_user_annotation", False))


def summarize(prof, steps: int, wall_ms: float, rows: int) -> dict:
    """Per-step numbers out of a finished profile of `steps` steps."""
    kernels, host = [], []
    for evt in prof.key_averages():
        if _is_device(evt):
            kernels.append(evt)
        elif evt.self_cpu_time_total > 0:
            host.append(evt)
    device_us = sum(_self_device_us(k) for k in kernels) / steps
    families = defaultdict(float)
    for k in kernels:
        families[kernel_family(k.key)] += _self_device_us(k) / steps
    kernels.sort(key=_self_device_us, reverse=True)
    host.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return {
        "wall_ms": wall_ms,
        "device_ms": device_us / 1e3,
        "device_busy": (device_us / 1e3) / wall_ms if wall_ms > 0 and kernels else None,
        "launches": sum(k.count for k in kernels) / steps,  # device kernels + copies (a graph replay's too)
        "host_ops_ms": sum(e.self_cpu_time_total for e in host) / steps / 1e3,
        "families_ms": {f: v / 1e3 for f, v in sorted(families.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"name": k.key, "family": kernel_family(k.key), "calls": k.count / steps,
                         "ms": _self_device_us(k) / steps / 1e3} for k in kernels[:rows]],
        "top_host": [{"name": e.key, "calls": e.count / steps, "self_ms": e.self_cpu_time_total / steps / 1e3}
                     for e in host[:rows]],
    }


def profile_case(variant: str, res: int, settings, *, steps: int, rows: int) -> dict:
    case = build_step_case(variant, res, settings)
    sync = device_sync(settings.device)
    for _ in range(2):  # compile, autotune, allocate, cuDNN heuristics
        case.call()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        case.call()
    sync()
    wall_ms = (time.perf_counter() - t0) * 1e3 / steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if settings.on_gpu else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            case.call()
        sync()
    out = summarize(prof, steps, wall_ms, rows)
    out.update(res=res, variant=variant, backend=case.backend, batch=case.batch,
               img_per_s=case.batch / (wall_ms / 1e3))
    return out


def _name(s: str, width: int = 90) -> str:
    s = s.replace("|", "/")
    return s if len(s) <= width else s[:width - 1] + "…"


def to_markdown(results: list[dict], header: str) -> str:
    lines = [header, "",
             "| case | batch | wall ms/step | img/s | device busy ms | busy % | GPU kernels+copies/step | ops' self CPU ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| r{r['res']} {r['variant']} | | skipped: {r['skipped'][:120]} | | | | | |")
            continue
        on_device = r["device_busy"] is not None
        busy = f"{100 * r['device_busy']:.0f}" if on_device else "n/a"
        device_ms = f"{r['device_ms']:.2f}" if on_device else "n/a"
        lines.append(f"| r{r['res']} {r['variant']} | {r['batch']} | {r['wall_ms']:.2f} | {r['img_per_s']:,.0f} | "
                     f"{device_ms} | {busy} | {r['launches']:.0f} | {r['host_ops_ms']:.2f} |")
    families = sorted({f for r in results for f in r.get("families_ms", {})})
    if families:
        lines += ["", "Device ms per step by kernel family:", "",
                  "| case | " + " | ".join(families) + " |", "|---|" + "---:|" * len(families)]
        for r in results:
            if "families_ms" in r:
                lines.append(f"| r{r['res']} {r['variant']} | "
                             + " | ".join(f"{r['families_ms'].get(f, 0.0):.2f}" for f in families) + " |")
    for r in results:
        if "skipped" in r:
            continue
        lines += ["", f"### r{r['res']} {r['variant']} (backend {r['backend']}, batch {r['batch']})", ""]
        if r["top_kernels"]:
            lines += ["| kernel | family | calls/step | ms/step |", "|---|---|---:|---:|"]
            lines += [f"| {_name(k['name'])} | {k['family']} | {k['calls']:.0f} | {k['ms']:.3f} |"
                      for k in r["top_kernels"]]
            lines.append("")
        lines += ["| host op | calls/step | self CPU ms/step |", "|---|---:|---:|"]
        lines += [f"| {_name(h['name'])} | {h['calls']:.0f} | {h['self_ms']:.3f} |" for h in r["top_host"]]
    return "\n".join(lines) + "\n"


def _write(args, header: str, results: list, device: str) -> None:
    if args.out_md:
        with open(args.out_md, "w") as f:
            f.write(to_markdown(results, header))
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump({"device": device, "torch": torch.__version__, "results": results}, f, indent=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--res", type=int, nargs="+", default=None,
                   help="training resolutions to profile (default: 4 and 64 on a GPU, 4 on CPU)")
    p.add_argument("--variant", nargs="+", default=["eager_fp32", "eager_amp", "fast"], choices=VARIANTS,
                   help="step variants (bench/step_cases.py); default: eager_fp32 eager_amp fast")
    p.add_argument("--steps", type=int, default=3, help="steps timed, then steps profiled (default 3)")
    p.add_argument("--rows", type=int, default=15, help="rows of the top-kernel and top-host tables (default 15)")
    p.add_argument("--out-md", help="write the markdown report here (default: print it)")
    p.add_argument("--out-json", help="also write the numbers as JSON here")
    args = p.parse_args(argv)
    if args.steps < 1 or args.rows < 1:
        p.error("--steps and --rows must be >= 1")
    settings = make_settings(quick_flag=True)
    configure_backends(settings)
    resolutions = args.res or ([4, 64] if settings.on_gpu else [4])
    bad = [r for r in resolutions if r < 4 or r & (r - 1)]
    if bad:
        p.error(f"--res takes powers of two >= 4, got {bad}")
    device = torch.cuda.get_device_name() if settings.on_gpu else "CPU (smoke profile: tiny model)"
    header = (f"## Training-step profile: {device}\n\n"
              f"torch {torch.__version__}; {args.steps} steps timed, then {args.steps} profiled, per case; "
              f"`python -m bench.profile_step {' '.join(argv if argv is not None else sys.argv[1:])}`")
    results = []
    try:
        for res in resolutions:
            for variant in args.variant:
                try:
                    results.append(profile_case(variant, res, settings, steps=args.steps, rows=args.rows))
                except CaseUnavailable as exc:
                    results.append({"res": res, "variant": variant, "skipped": str(exc)})
                except Exception as exc:  # one broken case must not cost the others their profile
                    results.append({"res": res, "variant": variant,
                                    "skipped": f"failed: {type(exc).__name__}: {str(exc)[:300]}"})
                print(f"profiled r{res} {variant}", file=sys.stderr, flush=True)
                if settings.on_gpu:
                    torch.cuda.empty_cache()
                if args.out_md or args.out_json:  # after every case: a run cut short keeps what it measured
                    _write(args, header, results, device)
    except KeyboardInterrupt:
        print(f"interrupted: writing the {len(results)} cases profiled so far", file=sys.stderr)
        _write(args, header, results, device)
        return 130
    if not (args.out_md or args.out_json):
        print(to_markdown(results, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
