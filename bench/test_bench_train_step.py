"""Whole training step throughput: D step with the WGAN-GP penalty + G step + G EMA, at each
training resolution with the schedule's batch size, stable phase (alpha = 1).

Variants (speedups are reported against eager_fp32 of the same resolution):
  eager_fp32   reference ops, fp32, NCHW               (plain PyTorch, the baseline)
  eager_amp    reference ops, bf16 autocast
  compile_amp  reference ops, bf16 autocast, torch.compile(G); D stays eager because AOTAutograd
               cannot differentiate a compiled graph twice (the WGAN-GP penalty needs that:
               "torch.compile with aot_autograd does not currently support double backward",
               torch 2.11-2.14). PROGAN_BENCH_COMPILE_D=1 compiles D too, to re-check newer torch.
  fast         progan_fast ops (impl auto), bf16 autocast, channels_last on GPU
  triton_amp   every op on the Triton backend (impl triton), bf16 autocast, channels_last (GPU only)
  cuda_amp     every op on the compiled CUDA backend (impl cuda), bf16 autocast, channels_last (GPU only)
  fast_graph   `fast` captured in a CUDA graph by TrainStep.capture (4-16 px; target >= 5x eager)

FLOPs per image come from bench/flops.py (4 F_G + 14 F_D, see there), so every case reports MFU
against the bf16 matmul ceiling measured in the same run.
"""
from __future__ import annotations

import gc
import inspect
import os

import pytest
import torch

from progan_fast import ops

from .flops import STEP_FACTOR_D, STEP_FACTOR_G, train_step_flops
from .paper import RESOLUTIONS, log2
from .timing import run_case

try:
    from progan_fast.models import Discriminator, Generator
    from progan_fast.training.step import TrainStep
    _IMPORT_ERROR = None
except ImportError as exc:  # the models / training step land on main separately
    _IMPORT_ERROR = exc

VARIANTS = ("eager_fp32", "eager_amp", "compile_amp", "fast", "triton_amp", "cuda_amp", "fast_graph")
FUSED_SCALE = False  # the models' default; flops.py counts the form that runs
COMPILE_D = os.environ.get("PROGAN_BENCH_COMPILE_D") == "1"


def pytest_generate_tests(metafunc):
    if "step_case" not in metafunc.fixturenames:
        return
    s = metafunc.config._progan_bench
    cases = []
    for res in s.step_resolutions:
        for variant in VARIANTS:
            if variant == "compile_amp" and res not in s.compile_step_resolutions:
                continue
            if variant == "fast_graph" and res > s.graph_max_res:
                continue
            cases.append(pytest.param((res, variant), id=f"r{res}-{variant}"))
    # compiled steps take the longest to build: run them last, so a time-limited run keeps the rest
    cases.sort(key=lambda c: c.values[0][1] == "compile_amp")
    metafunc.parametrize("step_case", cases)


@pytest.fixture(autouse=True)
def _release_memory(settings):
    """Each case builds its own models: hand their memory back before the next one."""
    yield
    gc.collect()
    if settings.on_gpu:
        torch.cuda.empty_cache()


def _make_step(variant, s, G, D):
    amp = None if variant == "eager_fp32" else torch.bfloat16
    channels_last = s.on_gpu and variant in ("fast", "triton_amp", "cuda_amp", "fast_graph")
    kwargs = dict(amp_dtype=amp, channels_last=channels_last, device=s.device)
    if variant == "fast_graph":
        kwargs["cuda_graph"] = True
    if variant == "compile_amp":
        if "compile" in inspect.signature(TrainStep).parameters:  # TrainStep compiles what it can
            return TrainStep(G, D, compile=True, **kwargs), "TrainStep(compile=True)"
        if COMPILE_D:
            return TrainStep(torch.compile(G), torch.compile(D), **kwargs), "G+D"
        return TrainStep(torch.compile(G), D, **kwargs), "G"
    return TrainStep(G, D, **kwargs), None


def test_train_step(benchmark, step_case, settings, ceilings):
    if _IMPORT_ERROR is not None:
        pytest.skip(f"models / TrainStep not available yet: {_IMPORT_ERROR}")
    res, variant = step_case
    s = settings
    if variant == "compile_amp" and not s.compile:
        pytest.skip("torch.compile cases are off here (PROGAN_BENCH_COMPILE=1 turns them on)")
    if variant == "fast_graph" and not s.on_gpu:
        pytest.skip("CUDA graphs need a CUDA device")
    if variant == "triton_amp" and not s.on_gpu:
        pytest.skip("triton_amp is a GPU case (the interpreter measures nothing useful)")
    if variant == "cuda_amp":
        if not s.on_gpu:
            pytest.skip("cuda_amp is a GPU case")
        if "cuda" not in ops.available_backends():
            pytest.skip(f"cuda backend unavailable: {ops.backend_error('cuda')}")
    backend = {"triton_amp": "triton", "cuda_amp": "cuda"}.get(
        variant, "ref" if variant.startswith(("eager", "compile")) else "auto")
    r = log2(res)
    batch = s.batch(res)
    model_res = max(RESOLUTIONS) if s.on_gpu else max(s.step_resolutions)
    torch.manual_seed(0)
    G = Generator(model_res, **s.fmap, fused_scale=FUSED_SCALE).to(s.device)
    D = Discriminator(model_res, **s.fmap, fused_scale=FUSED_SCALE).to(s.device)
    reals = torch.randn(batch, 3, res, res, device=s.device).clamp_(-1, 1)
    alpha = 1.0
    with ops.use_backend(backend):
        try:
            step, compiled = _make_step(variant, s, G, D)
        except Exception as exc:
            pytest.skip(f"{variant}: TrainStep could not be built: {type(exc).__name__}: {exc}")
        call = step
        if variant == "fast_graph":
            if not hasattr(step, "capture"):
                pytest.skip("TrainStep has no capture(reals, res_log2, alpha): CUDA-graph variant not available")
            call = step.capture(reals, r, alpha)

    def fn():
        with ops.use_backend(backend):
            if variant == "fast_graph":
                call()
            else:
                call(reals, r, alpha)

    fmap = dict(s.fmap, fused_scale=FUSED_SCALE)
    flops = train_step_flops(r, **fmap) * batch
    info = {"case_id": f"step/r{res}/{variant}", "baseline_id": f"step/r{res}/eager_fp32", "kind": "step",
            "backend": backend, "variant": variant, "mode": "train_step", "res": res, "batch": batch,
            "model_resolution": model_res, "amp": variant != "eager_fp32", "fmap": s.fmap,
            "fused_scale": FUSED_SCALE, "compiled": compiled, "flops_per_image": flops // batch,
            "flops_factor": f"{STEP_FACTOR_G} F_G + {STEP_FACTOR_D} F_D", "group": f"step r{res}"}
    try:
        summary = run_case(benchmark, fn, settings=s, ceilings=ceilings, info=info, flops=flops, images=batch,
                           budget_s=4 * s.case_budget_s)
    except Exception as exc:
        if variant != "compile_amp":
            raise
        # A compile failure is a finding about torch.compile, not a broken bench: record it.
        pytest.skip(f"compile_amp failed: {type(exc).__name__}: {str(exc)[:300]}")
    if summary:
        benchmark.extra_info["mfu"] = summary.get("frac_ceiling")
