"""The compiled CUDA backend (progan_fast._C): loader behaviour, build info, schemas, and every op
vs the reference (forward, backward, double backward; all dtypes, NCHW and channels_last, odd
shapes, misaligned storage).

Without a GPU the kernel tests run the *same kernel bodies* compiled for the host and executed
serially on CPU tensors (the extension's emulation path): that checks indexing, layouts, vector
paths and dtype handling on the CPU CI. With a GPU they run the real kernels. Loader tests need no
extension at all (they simulate a missing / stale / failing one).
"""
import math
import os
import subprocess
import sys
import types
import warnings

import pytest
import torch

from progan_fast import _cuda_build
from progan_fast.ops import _backend, reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _backend_module():
    try:
        import progan_fast._cuda_backend as cb
    except ImportError as exc:
        pytest.skip(f"CUDA extension not built here: {exc}")
    return cb


# ----------------------------------------------------------------------------- loader (no extension needed)

@pytest.fixture
def fresh_loader(monkeypatch):
    """A loader with no memory of earlier warnings, a pretend GPU and a given `progan_fast._C`."""
    monkeypatch.setattr(_cuda_build, "_warned", set())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_import = _cuda_build.importlib.import_module

    def install(module=None, error=None):
        def fake_import(name, *a, **k):
            if name == "progan_fast._C":
                if error is not None:
                    raise error
                return module
            return real_import(name, *a, **k)
        monkeypatch.setattr(_cuda_build.importlib, "import_module", fake_import)
    return install


def _fake_ext(torch_version=None, cuda_rt=None):
    info = {"torch_version": torch_version or torch.__version__,
            "cuda_runtime_version": cuda_rt if cuda_rt is not None else 13000, "cuda_arch_list": "8.0;9.0",
            "build_kind": "test"}
    return types.SimpleNamespace(build_info=lambda: dict(info))


def test_missing_extension_warns_once_with_rebuild_command(fresh_loader, monkeypatch):
    fresh_loader(error=ModuleNotFoundError("No module named 'progan_fast._C'"))
    monkeypatch.setenv("PROGAN_FAST_CUDA_JIT", "0")
    with pytest.warns(RuntimeWarning, match="not built.*Rebuild with: pip install --no-build-isolation -e ."):
        with pytest.raises(ImportError, match="not built"):
            _cuda_build.load()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second attempt must not warn again
        with pytest.raises(ImportError):
            _cuda_build.load()


def test_stale_extension_is_refused(fresh_loader, monkeypatch):
    fresh_loader(module=_fake_ext(torch_version="1.0.0"))
    monkeypatch.setenv("PROGAN_FAST_CUDA_JIT", "0")
    with pytest.warns(RuntimeWarning, match="built against torch 1.0.0"):
        with pytest.raises(ImportError, match="built against torch 1.0.0"):
            _cuda_build.load()


def test_cuda_major_mismatch_is_stale():
    if torch.version.cuda is None:
        pytest.skip("CPU build of torch")
    major = int(torch.version.cuda.split(".")[0])
    assert _cuda_build.stale_reason(_fake_ext(cuda_rt=(major + 1) * 1000).build_info()) is not None
    assert _cuda_build.stale_reason(_fake_ext(cuda_rt=major * 1000 + 10).build_info()) is None


def test_broken_extension_then_jit_fallback(fresh_loader, monkeypatch):
    fresh_loader(error=ImportError("undefined symbol: _ZN3c10foo"))
    monkeypatch.setenv("PROGAN_FAST_CUDA_JIT", "1")
    monkeypatch.setattr(_cuda_build, "_toolkit", lambda: "/usr/local/cuda")
    built = _fake_ext()
    monkeypatch.setattr(_cuda_build, "jit_build", lambda: built)
    with pytest.warns(RuntimeWarning, match="undefined symbol.*trying a one-time JIT build"):
        assert _cuda_build.load() is built


def test_jit_failure_is_an_import_error(fresh_loader, monkeypatch):
    fresh_loader(error=ModuleNotFoundError("no _C"))
    monkeypatch.setenv("PROGAN_FAST_CUDA_JIT", "1")
    monkeypatch.setattr(_cuda_build, "_toolkit", lambda: "/usr/local/cuda")

    def boom():
        raise RuntimeError("Error building extension 'progan_fast_C_jit'")
    monkeypatch.setattr(_cuda_build, "jit_build", boom)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ImportError, match="JIT build failed"):
            _cuda_build.load()
    messages = [str(w.message) for w in seen]
    assert len(messages) == 2 and "trying a one-time JIT build" in messages[0] and "JIT build failed" in messages[1]


def test_no_gpu_is_quiet(monkeypatch):
    monkeypatch.setattr(_cuda_build, "_warned", set())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(_cuda_build, "_import_built", lambda: (None, "progan_fast._C is not built"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImportError, match="no CUDA device") as info:
            _cuda_build.load()
    assert info.value.progan_fast_warned  # ops._backend stays quiet too


def test_backend_registry_records_failure_without_a_second_warning(monkeypatch):
    monkeypatch.delenv("PROGAN_FAST_DISABLE_CUDA", raising=False)
    monkeypatch.setitem(_backend._load_state, "cuda", None)
    monkeypatch.delitem(_backend._load_errors, "cuda", raising=False)
    monkeypatch.delitem(sys.modules, "progan_fast._cuda_backend", raising=False)

    def unavailable():
        raise _cuda_build.CudaExtensionUnavailable("progan_fast._C is not built", warned=True)
    monkeypatch.setattr(_cuda_build, "load", unavailable)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _backend._ensure_loaded("cuda") is False
    assert "not built" in _backend.backend_error("cuda")
    assert "cuda" not in _backend.available_backends()


def test_import_never_fails_without_the_extension():
    code = ("import sys; sys.modules['progan_fast._C'] = None\n"  # makes `import progan_fast._C` fail
            "import progan_fast, progan_fast.ops as o\n"
            "print('ok', 'cuda' in o.available_backends(), o.backend_error('cuda'))")
    env = dict(os.environ, PYTHONPATH=ROOT, PROGAN_FAST_CUDA_JIT="0", TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok False"), out.stdout


def test_setup_writes_build_info_header(tmp_path):
    path = _cuda_build.write_build_info(str(tmp_path), '2.14.1+cu130', '8.0;9.0', 'jit')
    text = open(path).read()
    assert '#define PF_TORCH_VERSION "2.14.1+cu130"' in text
    assert '#define PF_CUDA_ARCH_LIST "8.0;9.0"' in text


# ----------------------------------------------------------------------------- the built extension

def test_build_info_is_consistent():
    cb = _backend_module()
    info = cb.build_info
    assert set(info) >= {"torch_version", "cuda_runtime_version", "cuda_arch_list", "build_kind"}
    assert info["torch_version"] == torch.__version__
    assert info["cuda_arch_list"] not in ("", "unknown")
    if torch.version.cuda:
        assert info["cuda_runtime_version"] // 1000 == int(torch.version.cuda.split(".")[0])
    assert _cuda_build.stale_reason(info) is None


OPS = ("bias_act", "bias_act_grad", "pixel_norm", "pixel_norm_grad", "bias_act_pixel_norm", "bias_act_pixel_norm_grad",
       "minibatch_stddev", "minibatch_stddev_grad", "lerp", "lerp_grad", "upsample_blend", "upsample_blend_grad",
       "fade_reals", "downsample2x", "downsample2x_grad")


def test_schemas_match_the_triton_backend():
    _backend_module()
    import progan_fast.triton  # noqa: F401  (defines torch.ops.progan_fast.*)
    for name in OPS:
        mine = str(getattr(torch.ops.progan_fast_cuda, name).default._schema)
        theirs = str(getattr(torch.ops.progan_fast, name).default._schema)
        assert mine.replace("progan_fast_cuda::", "progan_fast::") == theirs, name


def test_registered_as_cuda_backend():
    cb = _backend_module()
    for name, fn in cb.PUBLIC.items():
        assert _backend._registry["cuda"][name] is fn


# ----------------------------------------------------------------------------- kernels vs the reference

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3),
       torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2), torch.float64: dict(rtol=1e-10, atol=1e-10)}
TOL2 = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=1e-2, atol=1e-2),
        torch.bfloat16: dict(rtol=5e-2, atol=5e-2), torch.float64: dict(rtol=1e-6, atol=1e-6)}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["nchw", "nhwc", "offset"]  # offset: storage shifted by one element (no 16-byte alignment)


def rand(*shape, dtype=torch.float32, layout="nchw", shift=0.0):
    t = torch.randn(*shape, device=DEVICE) + shift
    if layout == "nhwc" and t.dim() == 4:
        t = t.to(memory_format=torch.channels_last)
    if layout == "offset":
        buf = torch.empty(t.numel() + 1, device=DEVICE, dtype=dtype)
        out = buf[1:].view(t.shape)
        out.copy_(t)
        return out
    return t.to(dtype)


def rand_groups(n, c, h, w, dtype, layout, group_size=4):
    """Strided groups whose members are well apart (the stddev's second order is ill-conditioned
    when two members almost coincide; true of the function itself)."""
    g = min(group_size, n)
    t = torch.randn(n, c, h, w, device=DEVICE) * 0.5  # members 3 apart: |difference| > 0 at ~6 sigma
    t = t + (torch.arange(n, device=DEVICE) // (n // g)).float().reshape(n, 1, 1, 1) * 3.0
    return rand(n, c, h, w, dtype=dtype, layout=layout).copy_(t)


def _alpha_t():
    return torch.rand((), device=DEVICE)


# name: (fn(api, *tensors), make(dtype, layout), number of differentiable leading tensors or None = all)
CASES = {
    "bias_act_lrelu": (lambda o, x, b: o.bias_act(x, b, act="lrelu", gain=math.sqrt(2)),
                       lambda dt, lo: (rand(3, 5, 3, 2, dtype=dt, layout=lo), rand(5, dtype=dt))),
    "bias_act_lrelu_c16": (lambda o, x, b: o.bias_act(x, b, act="lrelu", gain=-0.7),  # vector path
                           lambda dt, lo: (rand(2, 16, 3, 5, dtype=dt, layout=lo), rand(16, dtype=dt))),
    "bias_act_relu_dim2": (lambda o, x, b: o.bias_act(x, b, act="relu", gain=1.3, dim=2),
                           lambda dt, lo: (rand(3, 5, 4, 3, dtype=dt, layout=lo), rand(4, dtype=dt))),
    "bias_act_linear_fp32_bias": (lambda o, x, b: o.bias_act(x, b, act="linear", gain=0.5),
                                  lambda dt, lo: (rand(3, 7, 2, 3, dtype=dt, layout=lo), rand(7))),
    "bias_act_2d_nobias": (lambda o, x: o.bias_act(x, None, act="lrelu", dim=0),
                           lambda dt, lo: (rand(5, 3, dtype=dt),)),
    "bias_act_pixel_norm": (lambda o, x, b: o.bias_act_pixel_norm(x, b, gain=math.sqrt(2)),
                            lambda dt, lo: (rand(3, 5, 2, 3, dtype=dt, layout=lo), rand(5, dtype=dt))),
    "bias_act_pixel_norm_c16": (lambda o, x, b: o.bias_act_pixel_norm(x, b, gain=1.1),
                                lambda dt, lo: (rand(2, 16, 3, 3, dtype=dt, layout=lo), rand(16, dtype=dt))),
    # channels_last rows of several lane groups: lanes < chunks, lanes idle, a lane's last chunk partial
    "bias_act_pixel_norm_c80": (lambda o, x, b: o.bias_act_pixel_norm(x, b, gain=1.2),
                                lambda dt, lo: (rand(3, 80, 3, 1, dtype=dt, layout=lo), rand(80, dtype=dt))),
    "bias_act_pixel_norm_c296": (lambda o, x, b: o.bias_act_pixel_norm(x, b, act="linear"),
                                 lambda dt, lo: (rand(2, 296, 1, 3, dtype=dt, layout=lo), rand(296, dtype=dt))),
    "pixel_norm_4d": (lambda o, x: o.pixel_norm(x), lambda dt, lo: (rand(3, 5, 2, 3, dtype=dt, layout=lo),)),
    "pixel_norm_latent": (lambda o, x: o.pixel_norm(x), lambda dt, lo: (rand(3, 24, dtype=dt, layout=lo),)),
    "pixel_norm_dim3": (lambda o, x: o.pixel_norm(x, dim=3),
                        lambda dt, lo: (rand(2, 3, 2, 5, dtype=dt, layout=lo),)),
    "minibatch_stddev": (lambda o, x: o.minibatch_stddev(x), lambda dt, lo: (rand_groups(8, 3, 2, 3, dt, lo),)),
    "minibatch_stddev_n3": (lambda o, x: o.minibatch_stddev(x), lambda dt, lo: (rand_groups(3, 5, 1, 1, dt, lo),)),
    "minibatch_stddev_g2": (lambda o, x: o.minibatch_stddev(x, group_size=2),
                            lambda dt, lo: (rand_groups(6, 16, 2, 2, dt, lo, group_size=2),)),
    "upsample_blend": (lambda o, hi, lo: o.upsample_blend(hi, lo, 0.3),
                       lambda dt, lo: (rand(3, 5, 4, 2, dtype=dt, layout=lo), rand(3, 5, 2, 1, dtype=dt, layout=lo))),
    "upsample_blend_c16_alpha_t": (lambda o, hi, lo, a: o.upsample_blend(hi, lo, a),
                                   lambda dt, lo: (rand(2, 16, 4, 6, dtype=dt, layout=lo),
                                                   rand(2, 16, 2, 3, dtype=dt, layout=lo), _alpha_t()), 2),
    "fade_reals": (lambda o, x, a: o.fade_reals(x, a),
                   lambda dt, lo: (rand(3, 3, 4, 2, dtype=dt, layout=lo), _alpha_t()), 1),
    "fade_reals_c16": (lambda o, x: o.fade_reals(x, 0.8), lambda dt, lo: (rand(2, 16, 2, 4, dtype=dt, layout=lo),)),
    "lerp": (lambda o, a, b: o.lerp(a, b, 0.6),
             lambda dt, lo: (rand(3, 5, 2, 3, dtype=dt, layout=lo), rand(3, 5, 2, 3, dtype=dt, layout=lo))),
    "lerp_mixed_layouts_alpha_t": (lambda o, a, b, t: o.lerp(a, b, t),
                                   lambda dt, lo: (rand(2, 16, 3, 3, dtype=dt, layout=lo),
                                                   rand(2, 16, 3, 3, dtype=dt, layout="nhwc"), _alpha_t()), 2),
    "downsample2x": (lambda o, x: o.downsample2x(x), lambda dt, lo: (rand(3, 5, 2, 4, dtype=dt, layout=lo),)),
    "downsample2x_c16": (lambda o, x: o.downsample2x(x), lambda dt, lo: (rand(2, 16, 6, 2, dtype=dt, layout=lo),)),
}
TWO_D = {"bias_act_2d_nobias", "pixel_norm_latent"}


def _grads(outs, inputs, grad_outs, create_graph=False):
    gs = torch.autograd.grad(outs, inputs, grad_outs, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(gs, inputs)]


def _close(actual, expected, tol, what):
    up = (lambda t: t.double()) if expected.dtype == torch.float64 else (lambda t: t.float())
    torch.testing.assert_close(up(actual), up(expected), **tol, msg=lambda m: f"{what}: {m}")


def _check_case(cb, name, dtype, layout):
    fn, make, *rest = CASES[name]
    tensors = make(dtype, layout)
    n_diff = rest[0] if rest else len(tensors)
    impls = {"cuda": types.SimpleNamespace(**cb.PUBLIC), "ref": reference}
    leaves = {i: [t.detach().clone().requires_grad_(k < n_diff) for k, t in enumerate(tensors)] for i in impls}
    if layout == "offset":  # clone() re-aligns: keep the kernel's inputs misaligned
        leaves["cuda"] = [t.requires_grad_(k < n_diff) if t.is_floating_point() else t
                          for k, t in enumerate(make(dtype, layout))]
        for a, b in zip(leaves["cuda"], leaves["ref"]):
            with torch.no_grad():
                b.copy_(a)
    out = {i: fn(impls[i], *leaves[i]) for i in impls}
    assert out["cuda"].shape == out["ref"].shape and out["cuda"].dtype == out["ref"].dtype
    _close(out["cuda"], out["ref"], TOL[dtype], "forward")
    if layout == "nhwc" and out["ref"].dim() == 4:
        assert out["cuda"].is_contiguous(memory_format=torch.channels_last)

    g = torch.randn_like(out["ref"])
    gs = {i: g.detach().clone().requires_grad_() for i in impls}
    diff = {i: leaves[i][:n_diff] for i in impls}
    first = {i: _grads(out[i], diff[i], gs[i], create_graph=True) for i in impls}
    for k, (a, e) in enumerate(zip(first["cuda"], first["ref"])):
        # A gradient that sums several upstream elements (a bias; the low-res input of upsample_blend)
        # is rounded differently by the two sides: the kernels sum in fp32 and round once, the
        # low-precision reference rounds its partial sums (an error on the summands' scale, which can
        # exceed a 2e-3 tolerance where they cancel). Allow the second-order tolerance there.
        reduced = a.numel() < out["ref"].numel() and dtype != torch.float32
        _close(a, e, (TOL2 if reduced else TOL)[dtype], f"grad of input {k}")

    vs = [torch.randn_like(t) for t in first["ref"]]
    second = {}
    for i in impls:
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        s = sum((gr.to(acc) * v.to(acc)).sum() for gr, v in zip(first[i], vs) if gr.requires_grad)
        if not isinstance(s, torch.Tensor):
            return
        second[i] = _grads(s, diff[i] + [gs[i]], None)
    for k, (a, e) in enumerate(zip(second["cuda"], second["ref"])):
        _close(a, e, TOL2[dtype], f"double-backward grad of input {k}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(name, dtype, layout):
    """Forward, backward and double backward vs the reference on fresh random inputs (on CPU: the
    serial emulation of the same kernels)."""
    if layout == "nhwc" and name in TWO_D:
        pytest.skip("2-D input has no channels_last form")
    _check_case(_backend_module(), name, dtype, layout)


@pytest.mark.parametrize("name", ["bias_act_lrelu", "bias_act_pixel_norm", "minibatch_stddev", "upsample_blend_c16_alpha_t",
                                  "fade_reals", "lerp", "downsample2x"])
def test_registered_ops_match_reference(name, monkeypatch):
    """Plain eager calls take OpSet's autograd.Function twins; what tracing gets (the registered
    torch.ops.progan_fast_cuda operators and their custom-op autograd) must match the reference too."""
    from progan_fast.triton import library
    cb = _backend_module()
    assert "_eager" in type(cb.PUBLIC["pixel_norm"](rand(2, 3, 1, 1).requires_grad_()).grad_fn).__name__
    monkeypatch.setattr(library, "_tracing", lambda first: True)
    assert "_eager" not in type(cb.PUBLIC["pixel_norm"](rand(2, 3, 1, 1).requires_grad_()).grad_fn).__name__
    _check_case(cb, name, torch.float32, "nhwc")


@pytest.mark.parametrize("name", ["bias_act_pixel_norm", "minibatch_stddev", "upsample_blend", "lerp"])
def test_matches_reference_float64(name):
    _check_case(_backend_module(), name, torch.float64, "nchw")


CONV_KW = dict(gain=math.sqrt(2), act="lrelu", slope=0.2, down=False, fused_scale=True, eps=1e-8)
CASES_CONV = {  # fp32 only: in fp16/bf16 the conv's own low-precision backward amplifies 1-ulp gaps
    "eq_conv2d_pixel_norm_up": (lambda o, x, w, b: o.eq_conv2d(x, w, b, pixel_norm=True, up=True, **CONV_KW),
                                lambda dt, lo: (rand(3, 3, 2, 2, dtype=dt, layout=lo), rand(5, 3, 3, 3, dtype=dt),
                                                rand(5, dtype=dt))),
    "eq_conv2d": (lambda o, x, w, b: o.eq_conv2d(x, w, b, pixel_norm=False, up=False, **CONV_KW),
                  lambda dt, lo: (rand(3, 3, 4, 4, dtype=dt, layout=lo), rand(5, 3, 3, 3, dtype=dt), rand(5, dtype=dt))),
    # the unfused down layer: cuDNN conv, then the extension's downsample2x pair (not aten's pool)
    "eq_conv2d_down": (lambda o, x, w, b: o.eq_conv2d(x, w, b, pixel_norm=False, up=False,
                                                      **{**CONV_KW, "down": True, "fused_scale": False}),
                       lambda dt, lo: (rand(3, 3, 6, 5, dtype=dt, layout=lo), rand(5, 3, 3, 3, dtype=dt), rand(5, dtype=dt))),
}


@pytest.fixture
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("name", list(CASES_CONV))
def test_eq_conv2d_matches_reference(name, layout, monkeypatch, _no_tf32):
    monkeypatch.setitem(CASES, name, CASES_CONV[name])
    _check_case(_backend_module(), name, torch.float32, layout)


def test_gradgradcheck_float64():
    cb = _backend_module()
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64, device=DEVICE)
    x = (x + x.sign() * 0.2).requires_grad_()  # away from the lrelu kink
    b = torch.randn(3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    f = lambda x, b: cb.minibatch_stddev(cb.bias_act_pixel_norm(x, b, gain=1.3), group_size=2)  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (x, b), eps=1e-6, atol=1e-5, fast_mode=True)


def test_expanded_grad_and_sliced_input():
    """Broadcast upstream gradients (x.sum().backward()) and channel-sliced inputs (generic path)."""
    cb = _backend_module()
    base = rand(4, 10, 2, 4)
    for name in ("bias_act_pixel_norm", "downsample2x", "minibatch_stddev", "bias_act", "pixel_norm"):
        x = base[:, ::2].detach().requires_grad_()
        xr = x.detach().clone().requires_grad_()
        getattr(cb, name)(x).sum().backward()
        getattr(reference, name)(xr).sum().backward()
        _close(x.grad, xr.grad, TOL[torch.float32], f"{name}: grad from an expanded upstream gradient")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("shape, layout, act, fused", [
    ((3, 35, 7, 3), "nhwc", "lrelu", True), ((4, 130, 3, 3), "nhwc", "linear", True), ((6, 33), "2d", "lrelu", True),
    ((3, 35, 7, 3), "nchw", "lrelu", False),  # bias dim not unit-stride: the plain kernel and a torch sum
    ((2, 3, 3, 3), "nhwc", "lrelu", False)])  # few channels (toRGB): the same fallback
@pytest.mark.parametrize("rows_per_block", [64, 4])
def test_bias_gradient_summed_with_dx(shape, layout, act, fused, dtype, rows_per_block, monkeypatch):
    """bias_act_grad_db: dx equals bias_act_grad's bit for bit, db equals the sum of dx over the
    non-bias dims (the kernel sums the fp32 values before rounding: within rounding of the storage
    dtype), for one and for several (ragged) row blocks."""
    _backend_module()
    from progan_fast import _cuda_kernels as K
    monkeypatch.setattr(K, "BIAS_ROWS", rows_per_block)
    calls = []
    real = K._C

    class Spy:  # counts the fused kernel's calls, passes everything else through
        def __getattr__(self, name):
            fn = getattr(real, name)
            if name != "bias_act_grad_db":
                return fn
            return lambda *a: calls.append(1) or fn(*a)
    monkeypatch.setattr(K, "_C", Spy())
    x = rand(*shape).to(dtype)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    y = reference.bias_act(x, None, act=act, slope=0.2, gain=1.4)
    dy = torch.randn_like(x)
    dx, db = K.bias_act_grad_db(dy, y, act, 0.2, 1.4, 1)
    assert len(calls) == int(fused)
    want = K.bias_act_grad(dy, y, act, 0.2, 1.4)
    assert torch.equal(dx, want) and dx.stride() == want.stride()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert db.dtype == acc
    _close_to_sum_of_stored(db, want, [d for d in range(x.dim()) if d != 1])


# Unit roundoff of each storage dtype, and of the kernel's fp32 (fp64) summation.
UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def _close_to_sum_of_stored(db, dx, dims):
    """db (summed from the unrounded dx values) vs the fp64 sum of the stored dx: each stored term
    is within one rounding of its unrounded value, so the two sums differ by at most
    u_storage * sum |dx|, plus the summation errors of the kernel and of this check (n * u_acc * sum |dx|
    each, loosely).
    A fixed rtol/atol on the result fails now and then where the terms cancel (bf16: 36 terms
    near 1 summing to ~0)."""
    terms = dx.double()
    n = dx.numel() // db.numel()
    bound = (UNIT_ROUNDOFF[dx.dtype] + 2 * n * UNIT_ROUNDOFF[db.dtype]) * terms.abs().sum(dims) + 1e-30
    err = (db.double() - terms.sum(dims)).abs()
    assert bool((err <= bound).all()), \
        f"db against the sum of dx: max error {err.max().item():.3g}, bound there {bound[err.argmax()].item():.3g}"


def test_bias_gradient_op_passes_opcheck():
    """torch.ops.progan_fast_cuda.bias_act_grad_db: schema, fake (output strides included) and autograd
    registration agree with the kernel."""
    _backend_module()
    dy = rand(3, 5, 4, 2).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = rand(3, 5, 4, 2).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.progan_fast_cuda.bias_act_grad_db, (dy, y, "lrelu", 0.2, 1.4, 1),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_bias_gradient_kernel_is_right_for_few_channels_too():
    """The Python side routes C < 32 to the plain kernel (a performance choice); the kernel itself
    must still be right there."""
    cb = _backend_module()
    x = rand(3, 3, 5, 7).contiguous(memory_format=torch.channels_last)
    y, dy = reference.bias_act(x, None, act="lrelu", slope=0.2, gain=1.4), torch.randn_like(x)
    dx, part = torch.empty_like(x), torch.empty(2, 3, device=DEVICE)  # 105 rows in blocks of 64
    cb._C.bias_act_grad_db(dy, y, dx, part, 2, 0.2, 1.4, 1, 64)
    want = cb._cuda_kernels.bias_act_grad(dy, y, "lrelu", 0.2, 1.4)
    assert torch.equal(dx, want)
    _close(part.sum(0), want.sum((0, 2, 3)), TOL[torch.float32], "db of 3 channels")


def test_bias_gradient_kernel_checks_its_layout():
    cb = _backend_module()
    C = cb._C
    x = rand(4, 6, 3, 3)  # NCHW: channels are not the unit-stride dim
    part = torch.empty(1, 6, device=DEVICE)
    with pytest.raises(RuntimeError, match="unit stride along dim 1"):
        C.bias_act_grad_db(x, x, torch.empty_like(x), part, 2, 0.2, 1.0, 1, 64)
    x = x.contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match=r"part must have shape \[1, 6\]"):
        C.bias_act_grad_db(x, x, torch.empty_like(x), torch.empty(2, 6, device=DEVICE), 2, 0.2, 1.0, 1, 64)
    with pytest.raises(RuntimeError, match="part must be a contiguous Float"):
        C.bias_act_grad_db(x, x, torch.empty_like(x), part.double(), 2, 0.2, 1.0, 1, 64)


def test_bad_input_errors():
    cb = _backend_module()
    C = cb._C
    x = rand(4, 3, 2, 2)
    with pytest.raises(RuntimeError, match="is not divisible by the group size"):
        C.minibatch_stddev(rand(6, 3, 2, 2), torch.empty(6, 4, 2, 2, device=DEVICE), 4, 1e-8)
    with pytest.raises(RuntimeError, match=r"out must have shape \[4, 4, 2, 2\]"):
        C.minibatch_stddev(x, torch.empty_like(x), 4, 1e-8)
    with pytest.raises(RuntimeError, match="has dtype Int"):
        C.downsample2x(x.int(), torch.empty(4, 3, 1, 1, device=DEVICE))
    with pytest.raises(RuntimeError, match="y is Half but the input is Float"):
        C.bias_act(x, None, torch.empty_like(x).half(), 2, 0.2, 1.0, 1)
    with pytest.raises(RuntimeError, match="b must be 1-D with 3 elements"):
        C.bias_act(x, rand(4), torch.empty_like(x), 2, 0.2, 1.0, 1)
    with pytest.raises(RuntimeError, match="is on meta"):
        C.lerp(x, torch.empty_like(x, device="meta"), None, 0.5, torch.empty_like(x))
    # alpha must be on the input's device (a copy would block, fatal in graph capture). The case that
    # matters, a CPU alpha for CUDA inputs, needs a GPU; the CPU build can only check the message.
    other = "cpu" if DEVICE == "cuda" else "meta"
    with pytest.raises(RuntimeError, match=f"alpha_t is on {other}"):
        C.lerp(x, x, torch.tensor(0.5, device=other), 0.5, torch.empty_like(x))
    with pytest.raises(RuntimeError, match="H and W must be even"):
        C.fade_reals(rand(2, 3, 3, 2), None, 0.5, torch.empty(2, 3, 3, 2, device=DEVICE))
    with pytest.raises(RuntimeError, match="act code"):
        C.pixel_norm(x, None, torch.empty_like(x), 1, 7, 0.2, 1.0, 1e-8)
    with pytest.raises(ValueError, match="not divisible"):  # the shared schema's checks come first
        cb.minibatch_stddev(rand(6, 3, 2, 2))


# ----------------------------------------------------------------------------- GPU only

@pytest.mark.gpu
def test_public_ops_dispatch_to_cuda():
    from progan_fast import ops
    cb = _backend_module()
    assert "cuda" in ops.available_backends()
    x, b = rand(4, 8, 4, 4, dtype=torch.bfloat16, layout="nhwc"), rand(8, dtype=torch.bfloat16)
    _close(ops.bias_act_pixel_norm(x, b, impl="cuda"), reference.bias_act_pixel_norm(x, b), TOL[torch.bfloat16],
           "public op")
    assert ops._backend.resolve("minibatch_stddev", "cuda", "cuda") is cb.PUBLIC["minibatch_stddev"]


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_paper_sized_shapes(dtype, layout):
    """PGGAN-sized tensors: vector paths, many blocks, grid-stride loops."""
    cb = _backend_module()
    x, b = rand(32, 512, 8, 8, dtype=dtype, layout=layout), rand(512, dtype=dtype)
    tol = TOL2[dtype]
    _close(cb.bias_act_pixel_norm(x, b), reference.bias_act_pixel_norm(x, b), tol, "bias_act_pixel_norm")
    _close(cb.bias_act(x, b), reference.bias_act(x, b), tol, "bias_act")
    _close(cb.minibatch_stddev(x), reference.minibatch_stddev(x), tol, "minibatch_stddev")
    _close(cb.downsample2x(x), reference.downsample2x(x), tol, "downsample2x")
    _close(cb.fade_reals(x, 0.3), reference.fade_reals(x, 0.3), tol, "fade_reals")
    lo = rand(32, 512, 4, 4, dtype=dtype, layout=layout)
    _close(cb.upsample_blend(x, lo, 0.3), reference.upsample_blend(x, lo, 0.3), tol, "upsample_blend")


@pytest.mark.gpu
def test_cuda_graph_capture_and_compile():
    """No host syncs inside the ops: a CUDA graph captures them; torch.compile(fullgraph) traces them."""
    cb = _backend_module()
    x, b, alpha = rand(8, 16, 8, 8), rand(16), torch.tensor(0.25, device=DEVICE)

    def step(x):
        y = cb.bias_act_pixel_norm(x, b)
        y = cb.lerp(y, cb.fade_reals(y, alpha), alpha)
        return cb.minibatch_stddev(cb.downsample2x(y))

    expect = step(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step(x)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(x)
    graph.replay()
    torch.cuda.synchronize()
    _close(out, expect, TOL[torch.float32], "graph replay")
    compiled = torch.compile(step, fullgraph=True)
    _close(compiled(x), expect, TOL[torch.float32], "compiled")
