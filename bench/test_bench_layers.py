"""Per-layer throughput: eq_conv2d (a whole PGGAN conv layer: equalized-LR conv, resampling, bias,
leaky ReLU, pixel norm) for every layer kind the paper model runs at a training resolution r,
with the batch of r, x backend x (forward, forward+backward).

Layer kinds at r >= 8 (c = nf(log2 r - 1), cp = nf(log2 r - 2)):
  g_up      G conv0: nearest-2x up + 3x3, cp -> c, + pixel norm   (fused_scale variant on GPU runs)
  g_conv    G conv1: 3x3, c -> c, + pixel norm
  to_rgb    1x1, c -> 3, linear, gain 1
  from_rgb  1x1, 3 -> c, lrelu
  d_conv    D conv0: 3x3, c -> c
  d_down    D conv1: 3x3, c -> cp, then 2x2 average pool        (fused_scale variant on GPU runs)
At r = 4: g_conv (512 -> 512 + PN), d_mbstd_conv (513 -> 512), d_dense4 (4x4 valid conv = dense), to_rgb, from_rgb.
"""
from __future__ import annotations

import functools
import math

import torch

from progan_fast import ops

from .conftest import backend_cases, skip_unless_backend
from .paper import nf
from .roofline import conv_macs, op_bytes
from .timing import run_case


def layer_specs(res: int, s, extra_variants: bool):
    """[(name, x_shape, w_shape, eq_conv2d kwargs)] for the layers that run at training resolution `res`."""
    b, c = s.batch(res), s.channels(res)
    lrelu = dict(gain=math.sqrt(2), act="lrelu")
    specs = [("to_rgb", (b, c, res, res), (3, c, 1, 1), dict(gain=1.0, act="linear")),
             ("from_rgb", (b, 3, res, res), (c, 3, 1, 1), dict(lrelu))]
    if res == 4:
        specs += [("g_conv", (b, c, 4, 4), (c, c, 3, 3), dict(lrelu, pixel_norm=True)),
                  ("d_mbstd_conv", (b, c + 1, 4, 4), (c, c + 1, 3, 3), dict(lrelu)),
                  ("d_dense4", (b, c, 4, 4), (nf(0, **s.fmap), c, 4, 4), dict(lrelu))]
        return specs
    cp = s.prev_channels(res)
    specs += [("g_up", (b, cp, res // 2, res // 2), (c, cp, 3, 3), dict(lrelu, pixel_norm=True, up=True)),
              ("g_conv", (b, c, res, res), (c, c, 3, 3), dict(lrelu, pixel_norm=True)),
              ("d_conv", (b, c, res, res), (c, c, 3, 3), dict(lrelu)),
              ("d_down", (b, c, res, res), (cp, c, 3, 3), dict(lrelu, down=True))]
    if extra_variants:
        specs += [("g_up_fused", (b, cp, res // 2, res // 2), (c, cp, 3, 3),
                   dict(lrelu, pixel_norm=True, up=True, fused_scale=True)),
                  ("d_down_fused", (b, c, res, res), (cp, c, 3, 3), dict(lrelu, down=True, fused_scale=True))]
    return specs


def pytest_generate_tests(metafunc):
    if "layer_case" not in metafunc.fixturenames:
        return
    s = metafunc.config._progan_bench
    # igemm: Triton's implicit-GEMM conv layer, beside "triton" (cuDNN conv + fused Triton epilogue)
    cases = backend_cases(s, lambda res: [name for name, *_ in layer_specs(res, s, s.extra_variants)],
                          extra_backends=("igemm",))
    metafunc.parametrize("layer_case", cases)


def test_layer(benchmark, layer_case, settings, ceilings):
    name, res, mode, backend = layer_case
    skip_unless_backend(settings, backend, "eq_conv2d")
    spec = {n: (xs, ws, kw) for n, xs, ws, kw in layer_specs(res, settings, True)}[name]
    x_shape, w_shape, kwargs = spec
    grad = mode == "fwdbwd"
    s = settings
    inputs = {"x": s.tensor(*x_shape, requires_grad=grad),
              # the raw N(0,1) parameter is kept in fp32 (as AMP training keeps weights)
              "weight": s.tensor(*w_shape, requires_grad=grad, dtype=torch.float32),
              "bias": s.tensor(w_shape[0], requires_grad=grad, dtype=torch.float32)}
    if backend == "compile":
        call = torch.compile(functools.partial(ops.reference.eq_conv2d, **kwargs), dynamic=False)
    else:
        call = functools.partial(ops.eq_conv2d, **kwargs, impl=backend)
    with torch.no_grad():
        out = ops.eq_conv2d(**inputs, **kwargs, impl="ref")
    fwd_bytes, bwd_bytes = op_bytes("eq_conv2d", inputs, out, ("x", "weight", "bias"))
    flops = 2 * conv_macs(x_shape, w_shape, up=kwargs.get("up", False), down=kwargs.get("down", False),
                          fused_scale=kwargs.get("fused_scale", False))
    if grad:
        leaves = list(inputs.values())
        gout = torch.randn_like(out)

        def fn():
            torch.autograd.grad(call(**inputs), leaves, gout)
        moved, flops = fwd_bytes + bwd_bytes, 3 * flops  # backward = dgrad + wgrad = 2x forward
    else:
        def fn():
            with torch.no_grad():
                call(**inputs)
        moved = fwd_bytes
    base = f"layer/{name}/r{res}/{mode}"
    info = {"case_id": f"{base}/{backend}", "baseline_id": f"{base}/ref", "kind": "layer", "op": "eq_conv2d",
            "layer": name, "backend": backend, "mode": mode, "res": res, "batch": settings.batch(res),
            "x_shape": list(x_shape), "w_shape": list(w_shape),
            "conv_kwargs": {k: v for k, v in kwargs.items() if k != "gain"}, "dtype": str(settings.dtype),
            "group": f"layer {name} r{res} {mode}"}
    run_case(benchmark, fn, settings=settings, ceilings=ceilings, info=info, moved=moved, flops=flops,
             images=settings.batch(res))
