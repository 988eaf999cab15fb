"""Host cost per op call: what each backend spends on the CPU before its kernel runs.

PGGAN's tensors are small at 4-32 px, so there an op's time is mostly host time: Python wrappers,
validation, the custom-op dispatcher, autograd bookkeeping and the kernel launcher. These cases
call every fused op on a tiny tensor (2x8x8x8) and report the time per call:

  ref                 the eager reference composite (several aten kernels)
  triton              the Triton backend as `ops.<op>(impl="triton")` runs it (OpSet: the classic
                      autograd.Function twin outside tracing)
  triton_normal_launch  as `triton`, but every launch through Triton's `kernel[grid](...)` (the
                      direct launcher cache of triton/_launch.py off) - what that cache saves
  triton_registered   the same kernels through the registered torch.ops custom operator (what
                      torch.compile sees) - the cost the twin avoids
  cuda                the compiled extension's backend (same OpSet)

On a GPU the launches are real: kernels this small finish faster than the host issues them, so the
per-call time is host time. On CPU the Triton launch itself is replaced by a no-op (the interpreter
would time itself, not the host path), so the triton rows are the Python side only (and
triton_normal_launch equals triton: the direct launcher is GPU-only); the cuda rows
run the extension's CPU build of the kernels (tiny). Compare rows of one run only.
"""
from __future__ import annotations

import functools

import pytest
import torch

from .test_bench_ops import OPS
from .timing import run_case

HOST_BACKENDS = ("ref", "triton", "triton_normal_launch", "triton_registered", "cuda")
SHAPE = (2, 8, 8, 8)


def _inputs(op: str, device, requires_grad: bool) -> tuple[dict, dict]:
    t = functools.partial(torch.randn, device=device, requires_grad=requires_grad)
    n, c, h, w = SHAPE
    if op in ("bias_act", "bias_act_pixel_norm"):
        return {"x": t(*SHAPE), "b": t(c)}, {"act": "lrelu"}
    if op in ("pixel_norm", "fade_reals", "downsample2x"):
        return {"x": t(*SHAPE)}, ({"alpha": 0.5} if op == "fade_reals" else {})
    if op == "minibatch_stddev":
        return {"x": t(*SHAPE)}, {"group_size": 2}
    if op == "upsample_blend":
        return {"hi": t(*SHAPE), "lo": t(n, c, h // 2, w // 2)}, {"alpha": 0.5}
    if op == "lerp":
        return {"a": t(*SHAPE), "b": t(*SHAPE)}, {"alpha": 0.5}
    raise KeyError(op)


class _NoLaunch:
    """Stands in for a @triton.jit kernel: `kernel[grid](...)` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _backend_fn(op: str, backend: str, device, monkeypatch):
    """The implementation `ops.<op>(impl=...)` resolves to (the common front checks left out)."""
    if backend == "ref":
        from progan_fast.ops import reference
        return getattr(reference, op)
    if backend == "cuda":
        if device.type != "cuda":
            try:  # not importorskip: pytest >= 9 lets an ImportError other than "not found" through
                import progan_fast._C  # noqa: F401
            except ImportError as exc:  # not built, or built against another torch (a CUDA build, say)
                pytest.skip(f"the CUDA extension does not load here: {exc}")
        try:
            from progan_fast import _cuda_backend
        except ImportError as exc:
            pytest.skip(f"cuda backend unavailable: {exc}")
        return _cuda_backend.PUBLIC[op]
    if device.type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    triton_backend = pytest.importorskip("progan_fast.triton")
    from progan_fast.triton import _launch, kernels, library
    if device.type == "cpu":
        for name in dir(kernels):
            if name.endswith("_kernel"):
                monkeypatch.setattr(kernels, name, _NoLaunch())
    if backend == "triton_registered":
        monkeypatch.setattr(library, "_tracing", lambda first: True)
    if backend == "triton_normal_launch":
        monkeypatch.setattr(_launch.state, "enabled", False)
    return triton_backend.PUBLIC[op]


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_host(benchmark, op, backend, mode, settings, ceilings, monkeypatch):
    impl = _backend_fn(op, backend, settings.device, monkeypatch)
    grad = mode == "fwdbwd"
    inputs, kwargs = _inputs(op, settings.device, grad)
    call = functools.partial(impl, **kwargs)
    if grad:
        leaves = list(inputs.values())
        out = call(**inputs)
        gout = torch.ones_like(out)

        def fn():
            torch.autograd.grad(call(**inputs), leaves, gout, allow_unused=True)
    else:
        def fn():
            with torch.no_grad():
                call(**inputs)
    base = f"host/{op}/{mode}"
    info = {"case_id": f"{base}/{backend}", "baseline_id": f"{base}/ref", "kind": "host", "op": op,
            "backend": backend, "mode": mode, "shape": list(SHAPE), "dtype": "float32",
            "launch_stubbed": backend.startswith("triton") and settings.device.type == "cpu",
            "group": f"host {op} {mode}"}
    run_case(benchmark, fn, settings=settings, ceilings=ceilings, info=info)
