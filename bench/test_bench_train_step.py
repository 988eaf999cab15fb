"""Whole training step throughput: D step with the WGAN-GP penalty + G step + G EMA, at each
training resolution with the schedule's batch size, stable phase (alpha = 1).

The variants (eager_fp32, eager_amp, compile_amp, fast, triton_amp, cuda_amp, fast_graph) are built
by bench/step_cases.py, shared with the step profiler (bench/profile_step.py). Speedups are reported
against eager_fp32 of the same resolution.

FLOPs per image come from bench/flops.py (4 F_G + 14 F_D, see there), so every case reports MFU
against the bf16 matmul ceiling measured in the same run. They are the paper model's FLOPs in the
unfused resampling form; where the auto table picks the fused form for up/down layers (44 % of
their FLOPs, the same function), the auto variants execute fewer, and their MFU counts model FLOPs.
"""
from __future__ import annotations

import gc

import pytest
import torch

from .flops import STEP_FACTOR_D, STEP_FACTOR_G, train_step_flops
from .paper import log2
from .timing import run_case

try:
    from .step_cases import FUSED_SCALE, VARIANTS, CaseUnavailable, build_step_case
    _IMPORT_ERROR = None
except ImportError as exc:  # the models / training step land on main separately
    _IMPORT_ERROR = exc
    VARIANTS = ()


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


def test_train_step(benchmark, step_case, settings, ceilings):
    if _IMPORT_ERROR is not None:
        pytest.skip(f"models / TrainStep not available yet: {_IMPORT_ERROR}")
    res, variant = step_case
    s = settings
    try:
        case = build_step_case(variant, res, s)
    except CaseUnavailable as exc:
        pytest.skip(str(exc))
    batch, backend = case.batch, case.backend
    fn = case.call
    r = log2(res)

    fmap = dict(s.fmap, fused_scale=FUSED_SCALE)
    flops = train_step_flops(r, **fmap) * batch
    info = {"case_id": f"step/r{res}/{variant}", "baseline_id": f"step/r{res}/eager_fp32", "kind": "step",
            "backend": backend, "variant": variant, "mode": "train_step", "res": res, "batch": batch,
            "model_resolution": case.model_resolution, "amp": variant != "eager_fp32", "fmap": s.fmap,
            "fused_scale": FUSED_SCALE, "compiled": case.compiled, "flops_per_image": flops // batch,
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
