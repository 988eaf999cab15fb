"""Per-op throughput: every fused op x backend (eager reference, torch.compile(reference), triton,
cuda) x (forward, forward+backward), at the shapes the paper model runs at each resolution. On a
GPU, both are also timed as CUDA-graph replays (modes fwd_graph, fwdbwd_graph): the device's time
alone, without host dispatch - the kernels' real bandwidth, and what an op costs inside a captured
training step (--cuda-graph).

Shapes per training resolution r (batch B(r), c = channels of the block at r, bf16 on GPU):
  bias_act, bias_act_pixel_norm, pixel_norm   [B, c, r, r]          (D / G conv epilogues)
  minibatch_stddev                           [B, nf(1), 4, 4]      (D's 4x4 block, batch of r)
  upsample_blend                             hi [B,3,r,r], lo [B,3,r/2,r/2]  (G output fade)
  fade_reals, downsample2x                   [B, 3, r, r]          (reals during a fade)
  lerp                                       [B, c_prev, r/2, r/2] (D feature-space fade)
"""
from __future__ import annotations

import functools

import torch

from progan_fast import ops

from .conftest import backend_cases, skip_unless_backend
from .roofline import op_bytes
from .timing import graph_replay, run_case

OPS = ("bias_act", "bias_act_pixel_norm", "pixel_norm", "minibatch_stddev", "upsample_blend", "fade_reals",
       "lerp", "downsample2x")
FADE_OPS = ("upsample_blend", "fade_reals", "lerp", "downsample2x")  # need r >= 8
GRAPH_CALLS = 4  # calls per captured graph in *_graph cases (amortizes the replay's own launch)


def make_inputs(op: str, res: int, s, requires_grad: bool):
    """(tensor inputs by name, other kwargs, names of inputs that get a gradient)."""
    b, c = s.batch(res), s.channels(res)
    t = functools.partial(s.tensor, requires_grad=requires_grad)
    if op in ("bias_act", "bias_act_pixel_norm"):
        return {"x": t(b, c, res, res), "b": t(c)}, {"act": "lrelu"}, ("x", "b")
    if op == "pixel_norm":
        return {"x": t(b, c, res, res)}, {}, ("x",)
    if op == "minibatch_stddev":
        return {"x": t(b, s.channels(4), 4, 4)}, {"group_size": 4}, ("x",)
    if op == "upsample_blend":
        return {"hi": t(b, 3, res, res), "lo": t(b, 3, res // 2, res // 2)}, {"alpha": 0.5}, ("hi", "lo")
    if op == "fade_reals":
        return {"x": t(b, 3, res, res)}, {"alpha": 0.5}, ("x",)
    if op == "lerp":
        cp = s.prev_channels(res)
        return ({"a": t(b, cp, res // 2, res // 2), "b": t(b, cp, res // 2, res // 2)}, {"alpha": 0.5},
                ("a", "b"))
    if op == "downsample2x":
        return {"x": t(b, 3, res, res)}, {}, ("x",)
    raise KeyError(op)


def op_callable(op: str, backend: str, kwargs: dict):
    """A callable(**tensors) running `op` on `backend` ("compile" = torch.compile of the reference)."""
    if backend == "compile":
        return torch.compile(functools.partial(getattr(ops.reference, op), **kwargs), dynamic=False)
    public = getattr(ops, op)
    return functools.partial(public, **kwargs, impl=backend)


def pytest_generate_tests(metafunc):
    if "op_case" not in metafunc.fixturenames:
        return
    s = metafunc.config._progan_bench
    cases = backend_cases(s, lambda res: [op for op in OPS if not (op in FADE_OPS and res < 8)], graph_modes=True)
    metafunc.parametrize("op_case", cases)


def test_op(benchmark, op_case, settings, ceilings):
    op, res, mode, backend = op_case
    skip_unless_backend(settings, backend, op)
    grad = mode.startswith("fwdbwd")
    inputs, kwargs, grad_names = make_inputs(op, res, settings, requires_grad=grad)
    call = op_callable(op, backend, kwargs)
    with torch.no_grad():
        out = op_callable(op, "ref", kwargs)(**inputs)
    fwd_bytes, bwd_bytes = op_bytes(op, inputs, out, grad_names)
    if grad:
        leaves = [inputs[n] for n in grad_names]
        gout = torch.randn_like(out)

        def fn():
            torch.autograd.grad(call(**inputs), leaves, gout)
        moved = fwd_bytes + bwd_bytes
    else:
        def fn():
            with torch.no_grad():
                call(**inputs)
        moved = fwd_bytes
    base = f"op/{op}/r{res}/{mode}"
    info = {"case_id": f"{base}/{backend}", "baseline_id": f"{base}/ref", "kind": "op", "op": op,
            "backend": backend, "mode": mode, "res": res, "batch": settings.batch(res),
            "shape": {k: list(v.shape) for k, v in inputs.items()}, "dtype": str(settings.dtype),
            "group": f"op {op} r{res} {mode}"}
    calls = 1
    if mode.endswith("_graph"):  # device time: GRAPH_CALLS calls captured once, replayed (no host dispatch)
        fn, calls = graph_replay(fn, GRAPH_CALLS), GRAPH_CALLS
        info["graph_calls"] = calls
    run_case(benchmark, fn, settings=settings, ceilings=ceilings, info=info, moved=moved,
             images=settings.batch(res), calls=calls)
