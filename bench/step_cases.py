"""One training-step case (resolution x variant), built the same way for the step benchmark and
for the step profiler, so a profile explains exactly the number the benchmark reports.

Variants:
  eager_fp32   reference ops, fp32, NCHW               (plain PyTorch, the baseline)
  eager_amp    reference ops, bf16 autocast
  compile_amp  reference ops, bf16 autocast, torch.compile(G); D stays eager because AOTAutograd
               cannot differentiate a compiled graph twice (the WGAN-GP penalty needs that:
               "torch.compile with aot_autograd does not currently support double backward",
               torch 2.11-2.14). PROGAN_BENCH_COMPILE_D=1 compiles D too, to re-check newer torch.
  fast         progan_fast ops (impl auto), bf16 autocast, channels_last on GPU
  triton_amp   every op on the Triton backend (impl triton), bf16 autocast, channels_last (GPU only)
  cuda_amp     every op on the compiled CUDA backend (impl cuda), bf16 autocast, channels_last (GPU only)
  fast_graph   `fast` captured in a CUDA graph by TrainStep.capture (4-256 px; target >= 5x eager at 4-16 px)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from progan_fast import ops
from progan_fast.models import Discriminator, Generator, use_channels_last
from progan_fast.training.step import TrainStep

from .paper import RESOLUTIONS, log2

VARIANTS = ("eager_fp32", "eager_amp", "compile_amp", "fast", "triton_amp", "cuda_amp", "fast_graph")
FUSED_SCALE = False  # the models' default; flops.py counts the form that runs
COMPILE_D = os.environ.get("PROGAN_BENCH_COMPILE_D") == "1"


class CaseUnavailable(Exception):
    """This variant cannot run here (no GPU, backend missing, step could not be built); the
    message says why. The benchmark turns it into a skip."""


@dataclass
class StepCase:
    call: Callable[[], object]   # one training iteration (D step + G step + EMA), under the backend
    backend: str                 # the ops backend the variant runs ("ref", "auto", "triton", "cuda")
    batch: int
    model_resolution: int
    compiled: str | None         # what torch.compile wraps, for compile_amp


def backend_of(variant: str) -> str:
    return {"triton_amp": "triton", "cuda_amp": "cuda"}.get(
        variant, "ref" if variant.startswith(("eager", "compile")) else "auto")


def check_available(variant: str, res: int, settings) -> None:
    """Raise CaseUnavailable where `variant` cannot run at `res` px with these settings."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown step variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if variant == "compile_amp" and not settings.compile:
        raise CaseUnavailable("torch.compile cases are off here (PROGAN_BENCH_COMPILE=1 turns them on)")
    if variant == "fast_graph" and not settings.on_gpu:
        raise CaseUnavailable("CUDA graphs need a CUDA device")
    if variant == "fast_graph" and res > settings.graph_max_res:
        raise CaseUnavailable(f"fast_graph runs up to {settings.graph_max_res} px")
    if variant == "triton_amp" and not settings.on_gpu:
        raise CaseUnavailable("triton_amp is a GPU case (the interpreter measures nothing useful)")
    if variant == "cuda_amp":
        if not settings.on_gpu:
            raise CaseUnavailable("cuda_amp is a GPU case")
        if "cuda" not in ops.available_backends():
            raise CaseUnavailable(f"cuda backend unavailable: {ops.backend_error('cuda')}")


def variant_setup(variant: str) -> tuple[str, "torch.dtype | None", bool]:
    """(ops backend, AMP dtype, channels_last) of a variant as it runs on a GPU (on the CPU smoke
    profile channels_last stays off)."""
    amp = None if variant == "eager_fp32" else torch.bfloat16
    return backend_of(variant), amp, variant in ("fast", "triton_amp", "cuda_amp", "fast_graph")


def make_train_step(variant: str, G, D, device, channels_last: bool, **kwargs) -> TrainStep:
    """The TrainStep of `variant` over G and D, laid out as the trainer lays them out."""
    _, amp, _ = variant_setup(variant)
    use_channels_last(G, D, enabled=channels_last)
    return TrainStep(G, D, amp_dtype=amp, channels_last=channels_last, device=device, **kwargs)


def _make_step(variant: str, settings, G, D):
    channels_last = settings.on_gpu and variant_setup(variant)[2]
    kwargs = dict(cuda_graph=True) if variant == "fast_graph" else {}
    if variant == "compile_amp":
        if COMPILE_D:
            return make_train_step(variant, torch.compile(G), torch.compile(D), settings.device, channels_last), "G+D"
        return make_train_step(variant, torch.compile(G), D, settings.device, channels_last), "G"
    return make_train_step(variant, G, D, settings.device, channels_last, **kwargs), None


def build_step_case(variant: str, res: int, settings) -> StepCase:
    """The models, the TrainStep and one-iteration callable of (`res`, `variant`): stable phase
    (alpha = 1), the schedule's batch on GPU, a fixed seed."""
    check_available(variant, res, settings)
    backend = backend_of(variant)
    r = log2(res)
    batch = settings.batch(res)
    model_res = max(RESOLUTIONS) if settings.on_gpu else max(settings.step_resolutions + (res,))
    torch.manual_seed(0)
    G = Generator(model_res, **settings.fmap, fused_scale=FUSED_SCALE).to(settings.device)
    D = Discriminator(model_res, **settings.fmap, fused_scale=FUSED_SCALE).to(settings.device)
    reals = torch.randn(batch, 3, res, res, device=settings.device).clamp_(-1, 1)
    alpha = 1.0
    with ops.use_backend(backend):
        try:
            step, compiled = _make_step(variant, settings, G, D)
        except Exception as exc:
            raise CaseUnavailable(f"{variant}: TrainStep could not be built: {type(exc).__name__}: {exc}") from exc
        replay = step.capture(reals, r, alpha) if variant == "fast_graph" else None

    def call():
        with ops.use_backend(backend):
            return replay() if replay is not None else step(reals, r, alpha)

    return StepCase(call=call, backend=backend, batch=batch, model_resolution=model_res, compiled=compiled)
