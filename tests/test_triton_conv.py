"""Fused Triton eq_conv2d (implicit GEMM) vs the plain-PyTorch reference.

Without CUDA the kernels run on CPU tensors under TRITON_INTERPRET=1 (tiny shapes, fp32/fp64); with
CUDA the same checks run on the GPU in fp32 / fp16 / bf16. Every check is forward, input / weight /
bias gradients, and, for D-style layers, the double backward a WGAN-GP penalty takes.
"""
import math

import pytest
import torch

from progan_fast import ops
from progan_fast.ops import reference
from progan_fast.triton import conv
from progan_fast.triton.conv_op import eq_conv2d_triton, eq_linear_triton

DEV = "cpu" if conv.INTERPRET else "cuda"
DTYPES = [torch.float32] if DEV == "cpu" else [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}

# (id, layer kwargs): every PGGAN variant plus the general-k corners of up / down.
LAYERS = [
    ("3x3", dict(k=3)),
    ("3x3_pn", dict(k=3, pixel_norm=True)),
    ("3x3_relu_nobias", dict(k=3, act="relu", bias=False)),
    ("1x1_torgb", dict(k=1, act="linear", gain=1.0, cout=3)),
    ("1x1_fromrgb", dict(k=1, cin=3)),
    ("4x4_valid", dict(k=4, h=4, w=4)),
    ("up_pn", dict(k=3, up=True, pixel_norm=True)),
    ("up_fused_pn", dict(k=3, up=True, fused_scale=True, pixel_norm=True, h=5, w=3)),
    ("down", dict(k=3, down=True)),
    ("down_fused_odd", dict(k=3, down=True, fused_scale=True, h=7, w=5)),
    ("up_k1_linear", dict(k=1, up=True, act="linear")),
    ("up_k4", dict(k=4, up=True)),
    ("down_k1", dict(k=1, down=True)),
    ("batch1_wide", dict(k=3, n=1, cin=20, cout=20, pixel_norm=True)),
]
# D's layers: no pixel norm; their double backward feeds the gradient penalty.
D_LAYERS = ["3x3", "1x1_fromrgb", "4x4_valid", "down", "down_fused_odd"]
_LAYER = dict(LAYERS)


def _make(spec, dtype, channels_last=False):
    s = dict(n=2, cin=5, cout=7, h=6, w=5, bias=True, k=3)
    s.update(spec)
    x = torch.randn(s["n"], s["cin"], s["h"], s["w"], device=DEV).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(s["cout"], s["cin"], s["k"], s["k"], device=DEV)
    b = torch.randn(s["cout"], device=DEV) if s["bias"] else None
    kw = dict(gain=s.get("gain", math.sqrt(2)), act=s.get("act", "lrelu"), slope=0.2,
              pixel_norm=s.get("pixel_norm", False), up=s.get("up", False), down=s.get("down", False),
              fused_scale=s.get("fused_scale", False), eps=1e-8)
    if dtype in (torch.float16, torch.bfloat16):
        w = _exact_in_low_precision(w)
    return x, w, b, kw


def _exact_in_low_precision(w):
    """Weights exact in fp16 and bf16, and so are the sums of up to four taps that the up / down
    kernels build from them: multiples of 1/8 in [-2, 2]. The kernel casts the raw weight to the
    activations' dtype (the equalized-LR scale multiplies its fp32 accumulator); the fp64 reference
    would otherwise run the unrounded weight, and wherever a pre-activation lies within that rounding
    of zero the two sides take different branches of the (leaky) ReLU: a gradient error of |w| |v|
    there, 30-80 % of the largest grad_x value in the worst of 200 bf16 draws (two such failures on
    an H100, 2026-11-26)."""
    return (w * 8).round().clamp(-16, 16) / 8


def _close(actual, expected, dtype, what):
    """Max error relative to the largest reference magnitude (values are O(1) by equalized LR)."""
    assert actual.shape == expected.shape, what
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item() + 1e-12
    assert err <= TOL[dtype] * scale, f"{what}: max err {err:.3g} vs scale {scale:.3g} ({dtype})"


def _run(fn, x, w, b, kw, v, penalty=False):
    """Output and grads of x, w, b for sum(y*v), or for a WGAN-GP-style penalty on d(sum(y*v))/dx."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b) if t is not None]
    xx, ww, bb = leaves[0], leaves[1], (leaves[2] if b is not None else None)
    y = fn(xx, ww, bb, **kw)
    out = (y.float() * v).sum()
    if penalty:
        gx, = torch.autograd.grad(out, xx, create_graph=True)
        out = (gx.float().flatten(1).norm(dim=1) - 1).square().sum() + 1e-3 * out
    return [y] + list(torch.autograd.grad(out, leaves))


def _reference_run(x, w, b, kw, v, penalty=False):
    """The reference in fp64 on exactly the (possibly low-precision) activations the kernel saw."""
    return _run(reference.eq_conv2d, x.double(), w.double(), None if b is None else b.double(), kw,
                v.double(), penalty)


def _probe(x, w, kw):
    """A random cotangent shaped like the layer's output."""
    ho, wo = conv.output_size(x.shape[2], x.shape[3], w.shape[-1], kw["up"], kw["down"])
    return torch.randn(x.shape[0], w.shape[0], ho, wo, device=DEV)


@pytest.fixture(autouse=True)
def _exact_fp32_no_autotune():
    """Backward convolutions run in cuDNN: keep fp32 there fp32 so tolerances stay tight. Autotuning
    is off (one heuristic config per shape) except where a test turns it on: it only costs time here."""
    old_tf32, old_flags = torch.backends.cudnn.allow_tf32, dict(conv._flags)
    torch.backends.cudnn.allow_tf32 = False
    conv.set_autotune(False)
    yield
    torch.backends.cudnn.allow_tf32 = old_tf32
    conv._flags.update(old_flags)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", [n for n, _ in LAYERS])
def test_forward_backward(name, dtype):
    x, w, b, kw = _make(_LAYER[name], dtype, channels_last=(name.endswith("pn")))
    v = _probe(x, w, kw)
    got = _run(eq_conv2d_triton, x, w, b, kw, v)
    ref = _reference_run(x, w, b, kw, v)
    assert got[0].dtype == dtype
    for what, a, e in zip(("y", "grad_x", "grad_w", "grad_b"), got, ref):
        _close(a, e, dtype, f"{name} {what}")


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.float16], ids=str)
@pytest.mark.parametrize("name", D_LAYERS)
def test_double_backward_gradient_penalty(name, dtype):
    x, w, b, kw = _make(_LAYER[name], dtype, channels_last=name.startswith("down"))
    v = _probe(x, w, kw)
    got = _run(eq_conv2d_triton, x, w, b, kw, v, penalty=True)
    ref = _reference_run(x, w, b, kw, v, penalty=True)
    for what, a, e in zip(("y", "grad_x", "grad_w", "grad_b"), got, ref):
        _close(a, e, dtype, f"{name} penalty {what}")


@pytest.mark.parametrize("name", ["up_pn", "down_fused_odd"])
def test_eager_twin_equals_registered_op(name, monkeypatch):
    """Plain eager calls take the classic autograd.Function twin (cheaper on the host); it must
    compute exactly what the registered op computes, penalty (double backward) included."""
    from progan_fast.triton import library
    x, w, b, kw = _make(_LAYER[name], torch.float32)
    v = _probe(x, w, kw)
    twin = _run(eq_conv2d_triton, x, w, b, kw, v, penalty=True)
    assert "eq_conv2d_igemm_eager" in type(eq_conv2d_triton(x.requires_grad_(), w, b, **kw).grad_fn).__name__
    monkeypatch.setattr(library, "_tracing", lambda first: True)
    registered = _run(eq_conv2d_triton, x, w, b, kw, v, penalty=True)
    for what, a, e in zip(("y", "grad_x", "grad_w", "grad_b"), twin, registered):
        assert torch.equal(a, e), what


@pytest.mark.parametrize("name", ["up_pn", "down_fused_odd"])
def test_gradcheck_fp64(name):
    """Exact first and second derivatives, pixel-norm and resampling paths included."""
    x, w, b, kw = _make(dict(_LAYER[name], n=1, cin=2, cout=3, h=3, w=2), torch.float64)
    w, b = w.double(), b.double()
    inputs = [t.requires_grad_() for t in (x, w, b)]
    f = lambda x_, w_, b_: eq_conv2d_triton(x_, w_, b_, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, fast_mode=True)
    assert torch.autograd.gradgradcheck(f, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


def test_layouts_follow_input():
    """channels_last in -> channels_last out; strided NCHW views work without a copy."""
    x, w, b, kw = _make(dict(h=6, w=8), torch.float32)
    x_cl = x.to(memory_format=torch.channels_last)
    y_cl = eq_conv2d_triton(x_cl, w, b, **kw)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    x_view = x[:, :, :, 1:7]  # non-contiguous NCHW slice
    ref = reference.eq_conv2d(x_view.double(), w.double(), b.double(), **kw)
    _close(eq_conv2d_triton(x_view, w, b, **kw), ref, torch.float32, "strided view")
    _close(y_cl, reference.eq_conv2d(x.double(), w.double(), b.double(), **kw), torch.float32, "channels_last")


def test_pixel_norm_second_pass(monkeypatch):
    """C_out wider than one register tile: pixel norm falls back to a separate fp32 pass."""
    monkeypatch.setattr(conv, "PN_MAX_COUT", 4)
    x, w, b, kw = _make(dict(k=3, up=True, pixel_norm=True, cout=9), torch.float32)
    v = _probe(x, w, kw)
    for what, a, e in zip(("y", "grad_x", "grad_w", "grad_b"), _run(eq_conv2d_triton, x, w, b, kw, v),
                          _reference_run(x, w, b, kw, v)):
        _close(a, e, torch.float32, f"pn second pass {what}")


def test_dense_layer_as_gemm():
    """G's latent -> 4x4 dense and D's final dense(1) are the same GEMM (1x1 conv on 1x1 pixels)."""
    x = torch.randn(3, 24, device=DEV)
    w = torch.randn(17, 24, device=DEV)
    b = torch.randn(17, device=DEV)
    y = eq_linear_triton(x, w, b, gain=math.sqrt(2) / 4, act="linear")
    ref = torch.nn.functional.linear(x.double(), w.double() * (math.sqrt(2) / 4 / math.sqrt(24)), b.double())
    _close(y, ref, torch.float32, "dense")


def test_public_op_dispatch():
    """Registered as the triton eq_conv2d, the public op routes through the fused kernel."""
    ops.available_backends()  # load progan_fast.triton first so its own registrations don't override ours
    registry = ops._backend._registry["triton"]
    previous = registry.get("eq_conv2d")
    ops.register("triton", "eq_conv2d", eq_conv2d_triton)
    try:
        x, w, b, kw = _make(dict(k=3, down=True, fused_scale=True), torch.float32)
        y = ops.eq_conv2d(x, w, b, impl="triton", **kw)
        _close(y, reference.eq_conv2d(x.double(), w.double(), b.double(), **kw), torch.float32, "public op")
    finally:
        if previous is None:
            registry.pop("eq_conv2d", None)
        else:
            registry["eq_conv2d"] = previous


def test_igemm_backend_is_the_fused_conv_layer():
    """impl="igemm" (what `auto` picks per layer kind where the layer bench measures it faster) runs
    the implicit-GEMM layer; it implements eq_conv2d only."""
    assert "igemm" in ops.available_backends()
    assert ops._backend.resolve("eq_conv2d", "igemm", DEV) is eq_conv2d_triton
    x, w, b, kw = _make(dict(k=3, up=True, pixel_norm=True), torch.float32)
    y = ops.eq_conv2d(x, w, b, impl="igemm", **kw)
    _close(y, reference.eq_conv2d(x.double(), w.double(), b.double(), **kw), torch.float32, "igemm public op")
    with pytest.raises(NotImplementedError, match="no 'igemm' implementation"):
        ops.pixel_norm(x, impl="igemm")


def test_igemm_is_no_process_wide_default():
    for set_default in (ops.set_backend, ops.use_backend):
        with pytest.raises(ValueError, match="igemm implements eq_conv2d only"):
            obj = set_default("igemm")
            if hasattr(obj, "__enter__"):
                obj.__enter__()
    assert ops.get_backend() == "auto"


def test_an_igemm_import_failure_costs_only_igemm(monkeypatch):
    import progan_fast.triton as triton_backend
    monkeypatch.setattr(ops._backend, "_load_state", dict(ops._backend._load_state, igemm=None))
    monkeypatch.setattr(ops._backend, "_load_errors", dict(ops._backend._load_errors))
    monkeypatch.setattr(ops._backend, "_registry", {**ops._backend._registry, "igemm": {}})
    monkeypatch.setattr(triton_backend, "IGEMM_ERROR", "AttributeError: no autotune here")
    assert not ops._backend._ensure_loaded("igemm") and ops._backend._ensure_loaded("triton")
    assert "implicit-GEMM conv failed to import: AttributeError: no autotune here" in ops.backend_error("igemm")


def test_igemm_needs_the_triton_backend(monkeypatch):
    monkeypatch.setattr(ops._backend, "_load_state", dict(ops._backend._load_state, triton=None, igemm=None))
    monkeypatch.setattr(ops._backend, "_load_errors", dict(ops._backend._load_errors))
    monkeypatch.setenv("PROGAN_FAST_DISABLE_TRITON", "1")
    assert not ops._backend._ensure_loaded("igemm")
    assert "needs the triton backend: disabled by PROGAN_FAST_DISABLE_TRITON=1" in ops.backend_error("igemm")


def test_opcheck():
    """Schema, fake (meta) implementation and autograd registration agree with the real kernel."""
    x, w, b, kw = _make(dict(k=3, up=True, pixel_norm=True, n=1, cin=3, cout=4, h=3, w=3), torch.float32)
    args = (x, w.requires_grad_(), b, kw["gain"], kw["act"], kw["slope"], True, True, False, kw["eps"])
    torch.library.opcheck(torch.ops.progan_fast.eq_conv2d_igemm, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


@pytest.mark.gpu
def test_pggan_shapes_autotuned_gpu():
    """Realistic PGGAN layers through the autotuned kernels (bf16, channels_last)."""
    conv.set_autotune(True)
    for spec in (dict(k=3, cin=512, cout=256, h=32, w=32, n=4, up=True, pixel_norm=True),
                 dict(k=3, cin=128, cout=256, h=64, w=64, n=4, down=True),
                 dict(k=1, cin=64, cout=3, h=128, w=128, n=4, act="linear", gain=1.0)):
        x, w, b, kw = _make(spec, torch.bfloat16, channels_last=True)
        y = eq_conv2d_triton(x, w, b, **kw)
        ref = reference.eq_conv2d(x.double(), w.double(), b.double(), **kw)
        _close(y, ref, torch.bfloat16, f"autotuned {spec}")


@pytest.mark.gpu
def test_compile_fullgraph_gpu():
    x, w, b, kw = _make(dict(k=3, down=True), torch.float32)
    f = torch.compile(lambda x_, w_, b_: eq_conv2d_triton(x_, w_, b_, **kw), fullgraph=True)
    _close(f(x, w, b), reference.eq_conv2d(x.double(), w.double(), b.double(), **kw), torch.float32, "compiled")


def test_autotune_results_cached_on_disk(monkeypatch):
    """Tuning is kept across processes where Triton supports it; the env var opts out."""
    import inspect
    import triton
    has = "cache_results" in inspect.signature(triton.autotune).parameters
    assert conv.autotune_options() == ({"cache_results": True} if has else {})
    monkeypatch.setenv("PROGAN_FAST_TRITON_AUTOTUNE_CACHE", "0")
    assert conv.autotune_options() == {}
