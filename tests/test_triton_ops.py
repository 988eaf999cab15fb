"""Triton backend vs the plain-PyTorch reference: forward, backward, double backward, gradcheck,
a WGAN-GP penalty through a tiny D, bad input, torch.compile.

Without CUDA the kernels run under TRITON_INTERPRET=1 on CPU tensors (tiny shapes: the interpreter
is slow); with CUDA the same tests run on the GPU kernels.
"""
import contextlib
import math

import pytest
import torch

from progan_fast import ops
from progan_fast.ops import reference

triton_backend = pytest.importorskip("progan_fast.triton")
from progan_fast.triton import launchers  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3),
       torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2), torch.float64: dict(rtol=1e-5, atol=1e-5)}
# Second-order terms pass through more roundings to storage precision.
TOL2 = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=1e-2, atol=1e-2),
        torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["nchw", "nhwc"]


@pytest.fixture(autouse=True)
def _no_tf32():
    """Both backends run the same convolutions; with TF32 a 1-ulp difference in a fused epilogue's
    output can flip the TF32 rounding of the next conv's input. Compare at full fp32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rand(*shape, dtype=torch.float32, layout="nchw", scale=1.0):
    t = torch.randn(*shape, device=DEVICE) * scale
    if layout == "nhwc" and t.dim() == 4:
        t = t.to(memory_format=torch.channels_last)
    return t.to(dtype)


def rand_groups(n, c, h, w, dtype, layout, group_size=4):
    """Samples whose strided groups are not nearly equal: the stddev's 1/sigma^3 second-order
    term is ill-conditioned when two members of a group almost coincide (true of the function)."""
    g = min(group_size, n)
    # members 3 apart with noise 0.5: a pair's difference is 3 + N(0, 0.71), never near 0 (~4 sigma).
    # (Offsets of 1.5 with unit noise let a pair coincide now and then: a flaky fp32 double backward.)
    offset = (torch.arange(n, device=DEVICE) // (n // g)).float().reshape(n, 1, 1, 1) * 3.0
    t = torch.randn(n, c, h, w, device=DEVICE) * 0.5 + offset
    if layout == "nhwc":
        t = t.to(memory_format=torch.channels_last)
    return t.to(dtype)


# ----------------------------------------------------------------------------- op cases
# Each case: (name, fn(impl, *tensors) -> output, make(dtype, layout) -> tensors, n_differentiable).

def _alpha_t():
    return torch.rand((), device=DEVICE)


CASES = {
    "bias_act_lrelu_4d": (lambda i, x, b: ops.bias_act(x, b, act="lrelu", gain=math.sqrt(2), impl=i),
                          lambda dt, lo: (rand(3, 5, 3, 2, dtype=dt, layout=lo), rand(5, dtype=dt))),
    "bias_act_lrelu_neg_gain_1x1": (lambda i, x, b: ops.bias_act(x, b, act="lrelu", gain=-0.7, impl=i),
                                    lambda dt, lo: (rand(6, 7, 1, 1, dtype=dt, layout=lo), rand(7, dtype=dt))),
    "bias_act_relu_dim2": (lambda i, x, b: ops.bias_act(x, b, act="relu", gain=1.3, dim=2, impl=i),
                           lambda dt, lo: (rand(3, 5, 4, 3, dtype=dt, layout=lo), rand(4, dtype=dt))),
    "bias_act_linear_2d": (lambda i, x, b: ops.bias_act(x, b, act="linear", gain=0.5, impl=i),
                           lambda dt, lo: (rand(3, 7, dtype=dt), rand(7, dtype=torch.float32))),
    "bias_act_lrelu_2d_dim0_nobias": (lambda i, x: ops.bias_act(x, None, act="lrelu", dim=0, impl=i),
                                      lambda dt, lo: (rand(5, 3, dtype=dt),)),
    "bias_act_pixel_norm": (lambda i, x, b: ops.bias_act_pixel_norm(x, b, gain=math.sqrt(2), impl=i),
                            lambda dt, lo: (rand(3, 5, 2, 3, dtype=dt, layout=lo), rand(5, dtype=dt))),
    "bias_act_pixel_norm_relu_1x1": (lambda i, x: ops.bias_act_pixel_norm(x, None, act="relu", impl=i),
                                     lambda dt, lo: (rand(3, 7, 1, 1, dtype=dt, layout=lo),)),
    "pixel_norm_4d": (lambda i, x: ops.pixel_norm(x, impl=i),
                      lambda dt, lo: (rand(3, 5, 2, 3, dtype=dt, layout=lo),)),
    "pixel_norm_latent_2d": (lambda i, x: ops.pixel_norm(x, impl=i), lambda dt, lo: (rand(3, 9, dtype=dt),)),
    "pixel_norm_dim3": (lambda i, x: ops.pixel_norm(x, dim=3, impl=i),
                        lambda dt, lo: (rand(2, 3, 2, 5, dtype=dt, layout=lo),)),
    "minibatch_stddev": (lambda i, x: ops.minibatch_stddev(x, impl=i),
                         lambda dt, lo: (rand_groups(8, 3, 2, 3, dt, lo),)),
    "minibatch_stddev_n3_1x1": (lambda i, x: ops.minibatch_stddev(x, impl=i),
                                lambda dt, lo: (rand_groups(3, 5, 1, 1, dt, lo),)),
    "minibatch_stddev_g2_n6": (lambda i, x: ops.minibatch_stddev(x, group_size=2, impl=i),
                               lambda dt, lo: (rand_groups(6, 3, 2, 2, dt, lo, group_size=2),)),
    "upsample_blend": (lambda i, hi, lo: ops.upsample_blend(hi, lo, 0.3, impl=i),
                       lambda dt, lo: (rand(3, 5, 4, 2, dtype=dt, layout=lo), rand(3, 5, 2, 1, dtype=dt, layout=lo))),
    "upsample_blend_alpha_tensor": (lambda i, hi, lo, a: ops.upsample_blend(hi, lo, a, impl=i),
                                    lambda dt, lo: (rand(3, 3, 2, 4, dtype=dt, layout=lo),
                                                    rand(3, 3, 1, 2, dtype=dt, layout=lo), _alpha_t()), 2),
    "fade_reals": (lambda i, x, a: ops.fade_reals(x, a, impl=i),
                   lambda dt, lo: (rand(3, 3, 4, 2, dtype=dt, layout=lo), _alpha_t()), 1),
    "lerp": (lambda i, a, b: ops.lerp(a, b, 0.6, impl=i),
             lambda dt, lo: (rand(3, 5, 2, 3, dtype=dt, layout=lo), rand(3, 5, 2, 3, dtype=dt, layout=lo))),
    "lerp_alpha_tensor_2d": (lambda i, a, b, t: ops.lerp(a, b, t, impl=i),
                             lambda dt, lo: (rand(3, 5, dtype=dt), rand(3, 5, dtype=dt), _alpha_t()), 2),
    "downsample2x": (lambda i, x: ops.downsample2x(x, impl=i),
                     lambda dt, lo: (rand(3, 5, 2, 4, dtype=dt, layout=lo),)),
    "eq_conv2d": (lambda i, x, w, b: ops.eq_conv2d(x, w, b, impl=i),
                  lambda dt, lo: (rand(3, 3, 4, 4, dtype=dt, layout=lo), rand(5, 3, 3, 3, dtype=dt), rand(5, dtype=dt))),
    "eq_conv2d_pixel_norm_up": (lambda i, x, w, b: ops.eq_conv2d(x, w, b, pixel_norm=True, up=True, fused_scale=True, impl=i),
                                lambda dt, lo: (rand(3, 3, 2, 2, dtype=dt, layout=lo), rand(5, 3, 3, 3, dtype=dt), rand(5, dtype=dt))),
    "eq_conv2d_down": (lambda i, x, w, b: ops.eq_conv2d(x, w, b, down=True, impl=i),
                       lambda dt, lo: (rand(3, 3, 4, 4, dtype=dt, layout=lo), rand(5, 3, 3, 3, dtype=dt), rand(5, dtype=dt))),
}
TWO_D = {"bias_act_linear_2d", "bias_act_lrelu_2d_dim0_nobias", "pixel_norm_latent_2d", "lerp_alpha_tensor_2d"}


def _case(name):
    fn, make, *rest = CASES[name]
    return fn, make, (rest[0] if rest else None)


def _grads(outs, inputs, grad_outs, create_graph=False):
    gs = torch.autograd.grad(outs, inputs, grad_outs, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(gs, inputs)]


def _close(actual, expected, tol, what, normwise=False, truth=None):
    """actual (triton) vs expected (the reference, same dtype). With `truth` (the reference computed
    in float64), a difference beyond tol is accepted only where the fp32 reference is itself off:
    actual must then be within tol of the truth plus 4x the reference's largest error. Pixel norm's
    derivatives at a pixel of tiny norm (relu leaves one small channel) are ill-conditioned, and
    the two fp32 computations then differ by far more than their rounding (~2 % of random draws)."""
    if normwise:  # GEMM-like reductions: judge the error relative to the whole tensor
        err = (actual.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-30)
        assert err <= tol["rtol"], f"{what}: normwise relative error {err:.3g} > {tol['rtol']}"
        return
    try:
        torch.testing.assert_close(actual.float(), expected.float(), **tol, msg=lambda m: f"{what}: {m}")
    except AssertionError:
        if truth is None:
            raise
        ref_err = (expected.double() - truth).abs().max()
        err = (actual.double() - truth).abs()
        allowed = tol["atol"] + tol["rtol"] * truth.abs() + 4 * ref_err
        assert bool((err <= allowed).all()), (f"{what}: off the float64 truth by {err.max().item():.3g} "
                                              f"(the fp32 reference by {ref_err.item():.3g})")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(name, dtype, layout):
    """Forward, backward and double backward vs the reference on fresh random inputs. In fp32 the
    reference also runs in float64 ("ref64"): the yardstick where fp32 itself is ill-conditioned."""
    if layout == "nhwc" and name in TWO_D:
        pytest.skip("2-D input has no channels_last form")
    fn, make, n_diff = _case(name)
    tensors = make(dtype, layout)
    n_diff = len(tensors) if n_diff is None else n_diff
    leaves = {impl: [t.detach().clone().requires_grad_(k < n_diff) for k, t in enumerate(tensors)]
              for impl in ("triton", "ref")}
    if dtype == torch.float32:
        leaves["ref64"] = [t.detach().double().requires_grad_(k < n_diff) for k, t in enumerate(tensors)]
    out = {impl: fn("ref" if impl == "ref64" else impl, *leaves[impl]) for impl in leaves}

    def truth(results, k=None):  # the float64 reference's result, where it runs
        if "ref64" not in results:
            return None
        return results["ref64"] if k is None else results["ref64"][k]

    _close(out["triton"], out["ref"], TOL[dtype], "forward", truth=truth(out))
    assert out["triton"].shape == out["ref"].shape
    if layout == "nhwc" and out["ref"].dim() == 4:
        assert out["triton"].stride() == out["ref"].stride() or \
            out["triton"].is_contiguous(memory_format=torch.channels_last)

    g0 = torch.randn_like(out["ref"])
    g = {impl: g0.to(out[impl].dtype).requires_grad_() for impl in leaves}
    diff = {impl: leaves[impl][:n_diff] for impl in leaves}
    first = {impl: _grads(out[impl], diff[impl], g[impl], create_graph=True) for impl in leaves}
    # In fp16/bf16 the convolution's own backward (a low-precision reduction, the same torch call
    # in both backends) amplifies 1-ulp differences of the epilogue's gradient: compare normwise.
    conv_lp = name.startswith("eq_conv2d") and dtype != torch.float32
    for k, (a, e) in enumerate(zip(first["triton"], first["ref"])):
        # A gradient that sums several upstream elements (a bias: a sum of dx already rounded to
        # storage precision; the low-res input of upsample_blend) is rounded differently by the two
        # sides in fp16/bf16 (an error on the summands' scale where they cancel): allow the
        # second-order tolerance there.
        reduced = a.numel() < out["ref"].numel() and dtype != torch.float32
        _close(a, e, (TOL2 if reduced else TOL)[dtype], f"grad of input {k}", normwise=conv_lp,
               truth=truth(first, k))

    # Double backward: d/d(inputs, upstream grad) of <first-order grads, v> (what the WGAN-GP
    # penalty needs: the upstream gradient of an op inside D depends on D's parameters).
    vs = [torch.randn_like(t) for t in first["ref"]]
    second = {}
    for impl in leaves:
        acc = torch.float64 if impl == "ref64" else torch.float32
        s = sum((gr.to(acc) * v.to(acc)).sum() for gr, v in zip(first[impl], vs) if gr.requires_grad)
        if not isinstance(s, torch.Tensor):
            return  # every first-order grad is constant (linear op with no upstream dependence)
        second[impl] = _grads(s, diff[impl] + [g[impl]], None)
    for k, (a, e) in enumerate(zip(second["triton"], second["ref"])):
        _close(a, e, TOL2[dtype], f"double-backward grad of input {k}", normwise=conv_lp, truth=truth(second, k))


GPU_TILE_CASES = {  # shapes that span several GPU-sized tiles (2048 elements) in every layout
    "bias_act": (lambda i, x, b: ops.bias_act(x, b, gain=1.4, impl=i), lambda lo: (rand(3, 64, 8, 9, layout=lo), rand(64))),
    "bias_act_pixel_norm": (lambda i, x, b: ops.bias_act_pixel_norm(x, b, gain=1.4, impl=i),
                            lambda lo: (rand(3, 96, 8, 9, layout=lo), rand(96))),
    "minibatch_stddev": (lambda i, x: ops.minibatch_stddev(x, impl=i), lambda lo: (rand_groups(8, 64, 4, 4, torch.float32, lo),)),
    "upsample_blend": (lambda i, hi, lo_: ops.upsample_blend(hi, lo_, 0.3, impl=i),
                       lambda lo: (rand(3, 16, 32, 34, layout=lo), rand(3, 16, 16, 17, layout=lo))),
    "fade_reals": (lambda i, x: ops.fade_reals(x, 0.6, impl=i), lambda lo: (rand(3, 3, 64, 66, layout=lo),)),
    "lerp": (lambda i, a, b: ops.lerp(a, b, 0.6, impl=i), lambda lo: (rand(3, 64, 8, 9, layout=lo), rand(3, 64, 8, 9, layout=lo))),
    "downsample2x": (lambda i, x: ops.downsample2x(x, impl=i), lambda lo: (rand(3, 16, 32, 34, layout=lo),)),
}


@pytest.mark.skipif(DEVICE == "cuda", reason="on a GPU every test already uses these tiles")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(GPU_TILE_CASES))
def test_gpu_tile_sizes_in_the_interpreter(name, layout, monkeypatch):
    """The interpreter normally runs 8x bigger tiles (fewer programs). With the tiles a CUDA tensor
    gets, on shapes that span several of them, forward and backward exercise the GPU's program
    split, masks and partial sums."""
    monkeypatch.setattr(launchers, "_tile_elems", lambda t: 2048)
    fn, make = GPU_TILE_CASES[name]
    tensors = make(layout)
    leaves = {i: [t.detach().clone().requires_grad_() for t in tensors] for i in ("triton", "ref")}
    out = {i: fn(i, *leaves[i]) for i in leaves}
    _close(out["triton"], out["ref"], TOL[torch.float32], f"{name} forward")
    g = torch.randn_like(out["ref"])
    grads = {i: _grads(out[i], leaves[i], g) for i in leaves}
    for k, (a, e) in enumerate(zip(grads["triton"], grads["ref"])):
        _close(a, e, TOL2[torch.float32] if a.dim() == 1 else TOL[torch.float32], f"{name} grad {k}")


# ----------------------------------------------------------------------------- eager twins vs registered ops

def _first_and_second_order(name, dtype, layout, seed):
    torch.manual_seed(seed)
    fn, make, n_diff = _case(name)
    tensors = make(dtype, layout)
    n_diff = len(tensors) if n_diff is None else n_diff
    leaves = [t.detach().clone().requires_grad_(k < n_diff) for k, t in enumerate(tensors)]
    out = fn("triton", *leaves)
    g = torch.randn_like(out).requires_grad_()
    first = _grads(out, leaves[:n_diff], g, create_graph=True)
    s = sum((gr.float() ** 2).sum() for gr in first if gr.requires_grad)
    second = _grads(s, leaves[:n_diff] + [g], None) if isinstance(s, torch.Tensor) else []
    return out, first, second


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", [n for n in CASES if not n.startswith("eq_conv2d")] + ["eq_conv2d_pixel_norm_up"])
def test_eager_twin_equals_registered_op(name, layout, monkeypatch):
    """OpSet runs a classic autograd.Function twin outside tracing (cheaper on the host); it must
    compute exactly what the registered custom op computes, to second order."""
    from progan_fast.triton import library
    if layout == "nhwc" and name in TWO_D:
        pytest.skip("2-D input has no channels_last form")
    twin = _first_and_second_order(name, torch.float32, layout, seed=7)
    assert "_eager" in type(twin[0].grad_fn).__name__, "plain eager calls must take the twin"
    monkeypatch.setattr(library, "_tracing", lambda first: True)
    registered = _first_and_second_order(name, torch.float32, layout, seed=7)
    assert "_eager" not in type(registered[0].grad_fn).__name__
    for a, e in zip([twin[0], *twin[1], *twin[2]], [registered[0], *registered[1], *registered[2]]):
        assert torch.equal(a, e)


def test_tracing_takes_the_registered_op():
    """Fake tensors, dispatch modes (make_fx, AOTAutograd) and torch.compile must see the opaque
    operator with its fake function: the Triton launcher cannot run on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    opset = triton_backend.ops
    with FakeTensorMode():
        y = opset.minibatch_stddev(torch.empty(4, 3, 2, 2, device=DEVICE), 4, 1e-8)
        assert y.shape == (4, 4, 2, 2)

    def f(x, b):
        return opset.pixel_norm(opset.bias_act(x, b, "lrelu", 0.2, 1.0, 1), 1e-8, 1)
    gm = make_fx(f)(rand(2, 3, 2, 2), rand(3))
    targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert {"progan_fast.bias_act.default", "progan_fast.pixel_norm.default"} <= targets, targets


# ----------------------------------------------------------------------------- gradcheck in float64

F64 = dict(dtype=torch.float64, device=DEVICE)
GRADCHECK = {
    "bias_act": (lambda x, b: triton_backend.bias_act(x, b, act="lrelu", gain=1.3), lambda: [
        torch.randn(2, 3, 2, 1, **F64), torch.randn(3, **F64)]),
    "bias_act_pixel_norm": (lambda x, b: triton_backend.bias_act_pixel_norm(x, b, gain=1.4), lambda: [
        torch.randn(2, 3, 1, 2, **F64), torch.randn(3, **F64)]),
    "pixel_norm_2d": (lambda x: triton_backend.pixel_norm(x), lambda: [torch.randn(3, 4, **F64)]),
    "minibatch_stddev": (lambda x: triton_backend.minibatch_stddev(x, group_size=2), lambda: [
        torch.randn(4, 2, 1, 2, **F64)]),
    "upsample_blend": (lambda hi, lo: triton_backend.upsample_blend(hi, lo, 0.4), lambda: [
        torch.randn(1, 2, 2, 2, **F64), torch.randn(1, 2, 1, 1, **F64)]),
    "fade_reals": (lambda x: triton_backend.fade_reals(x, 0.3), lambda: [torch.randn(1, 2, 2, 4, **F64)]),
    "lerp": (lambda a, b: triton_backend.lerp(a, b, torch.tensor(0.7, **F64)), lambda: [
        torch.randn(2, 3, **F64), torch.randn(2, 3, **F64)]),
    "downsample2x": (lambda x: triton_backend.downsample2x(x), lambda: [torch.randn(1, 2, 2, 4, **F64)]),
}


@pytest.mark.parametrize("name", list(GRADCHECK))
def test_gradcheck_float64(name):
    fn, make = GRADCHECK[name]
    inputs = [t.requires_grad_() for t in make()]
    if name.startswith(("bias_act", "pixel_norm")):
        with torch.no_grad():  # keep away from the lrelu kink, where finite differences are meaningless
            inputs[0].add_(inputs[0].sign() * 0.2)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


# ----------------------------------------------------------------------------- strides and tiling

def _close_sum(db, dx, dims):
    """db vs an fp64 sum of dx over `dims`: fp32 summation error scales with the sum of |terms|."""
    err = (db.double() - dx.double().sum(dims)).abs()
    bound = 1e-6 * dx.double().abs().sum(dims) + 1e-6
    assert bool((err <= bound).all()), f"max error {err.max().item():.3g} vs bound {bound.min().item():.3g}.."


@pytest.mark.parametrize("shape,layout,dim,mode", [
    ((3, 5, 90, 70), "nhwc", 1, 1),     # bias along the columns (channels_last): several row blocks
    ((3, 5, 90, 71), "nhwc", 1, 1),     # ... and a ragged last block
    ((3, 5, 90, 70), "nchw", 1, 2),     # bias along a row dim (NCHW)
    ((1, 3, 150, 120), "nchw", 1, 2),   # several column blocks per row
    ((3, 5, 4, 3), "nchw", 2, 2),       # bias along H
    ((7, 3), "nchw", 0, 2),             # 2-D, bias along dim 0
    ((7, 3), "nchw", 1, 1),             # 2-D latent-style, bias along the columns
    ((2, 1, 3, 3), "nchw", 1, None),    # one channel: the planner drops the dim, torch sums
    ((2, 512, 4, 8), "nhwc-gpu", 1, 1),  # GPU tile sizes (BR 4 x BC 512, programs walk 16 tiles)
    ((2, 512, 4, 8), "nchw-gpu", 1, 2),
])
@pytest.mark.parametrize("bias_rows", [64, 8192])
def test_bias_gradient_summed_in_the_backward_kernel(shape, layout, dim, mode, bias_rows, monkeypatch):
    """bias_act's backward writes per-tile partial sums of dx for db (no second pass over dx).
    bias_rows 8192: programs walk several row tiles before writing their column sums (ITERS > 1)."""
    monkeypatch.setattr(launchers, "BIAS_ROWS", bias_rows)
    monkeypatch.setattr(launchers, "BIAS_MIN_PROGRAMS", 1)
    if layout.endswith("-gpu"):  # the tiles a CUDA tensor gets, run in the interpreter
        layout = layout[:-4]
        monkeypatch.setattr(launchers, "_tile_elems", lambda t: 2048)
    dy = rand(*shape, layout=layout)
    y = rand(*shape, layout=layout)
    geo = launchers._bias_grad_geometry(tuple(dy.shape), (dy.stride(), y.stride(), dy.stride()), dim,
                                        launchers._tile_elems(dy), bias_rows, 1)
    assert (geo[5] if geo else None) == mode
    if mode == 1 and bias_rows > 64 and len(shape) == 4:
        assert geo[6] > 1  # several row tiles per program
    dx, db = launchers.bias_act_grad_db(dy, y, "lrelu", 0.2, 1.3, dim)
    assert torch.equal(dx, launchers.bias_act_grad(dy, y, "lrelu", 0.2, 1.3))
    dims = [d for d in range(dx.dim()) if d != dim]
    assert db.dtype == torch.float32 and db.shape == (shape[dim],)
    _close_sum(db, dx, dims)


@pytest.mark.parametrize("shape,layout,one_chunk", [
    ((3, 5, 40, 30), "nhwc", True),      # [1, C, N*H*W]: many pixel blocks, one o
    ((3, 5, 40, 30), "nchw", True),      # [N, C, H*W]: one o per sample
    ((2, 7, 90, 71), "nhwc", True),      # ragged last block
    ((2, 9, 3, 3), "nchw", False),       # channels above one chunk: the kernel cannot, torch sums dx
    ((2, 512, 4, 8), "nhwc-gpu", True),  # GPU tile sizes: BLOCK_C 512 x BLOCK_I 8
    ((2, 512, 4, 8), "nchw-gpu", True),
])
def test_pixel_norm_bias_gradient_summed_in_the_backward_kernel(shape, layout, one_chunk, monkeypatch):
    if layout.endswith("-gpu"):
        layout = layout[:-4]
        monkeypatch.setattr(launchers, "_tile_elems", lambda t: 2048)
    if not one_chunk:
        monkeypatch.setattr(launchers, "PN_MAX_ONE_CHUNK", 4)
        monkeypatch.setattr(launchers, "PN_CHUNK", 4)
    dy, x, b = rand(*shape, layout=layout), rand(*shape, layout=layout), rand(shape[1])
    dx, db = launchers.bias_act_pixel_norm_grad_db(dy, x, b, "lrelu", 0.2, 1.4, 1e-8)
    assert torch.equal(dx, launchers.bias_act_pixel_norm_grad(dy, x, b, "lrelu", 0.2, 1.4, 1e-8))
    assert db.dtype == torch.float32 and db.shape == (shape[1],)
    _close_sum(db, dx, [0, 2, 3])


@pytest.mark.parametrize("op", ["bias_act_grad_db", "bias_act_pixel_norm_grad_db"])
def test_bias_grad_db_differentiates_through_db_alone(op):
    """Double backward where only db is used downstream (dx's cotangent is zero), vs the reference:
    d(sum(w * db))/d(dy) with db = sum over N, H, W of the reference's dx."""
    x, b, w = rand(3, 5, 4, 2, layout="nhwc"), rand(5), rand(5)
    dy = rand(3, 5, 4, 2, layout="nhwc").requires_grad_()
    if op == "bias_act_grad_db":
        y = launchers.bias_act(x, b, "lrelu", 0.2, 1.4, 1)
        _, db = triton_backend.ops.bias_act_grad_db(dy, y, "lrelu", 0.2, 1.4, 1)
        ref_fn = lambda t: reference.bias_act(t, b, act="lrelu", slope=0.2, gain=1.4)  # noqa: E731
    else:
        _, db = triton_backend.ops.bias_act_pixel_norm_grad_db(dy, x, b, "lrelu", 0.2, 1.4, 1e-8)
        ref_fn = lambda t: reference.bias_act_pixel_norm(t, b, act="lrelu", slope=0.2, gain=1.4)  # noqa: E731
    (g,) = torch.autograd.grad((db * w).sum(), dy)
    xr = x.detach().clone().requires_grad_()
    (dx_ref,) = torch.autograd.grad(ref_fn(xr), xr, dy, create_graph=True)
    (expect,) = torch.autograd.grad((dx_ref.sum((0, 2, 3)) * w).sum(), dy)
    _close(g, expect, TOL2[torch.float32], op)


def test_pixel_norm_grad_db_op_passes_opcheck():
    dy, x, b = rand(3, 5, 4, 2, layout="nhwc").requires_grad_(), rand(3, 5, 4, 2, layout="nhwc"), rand(5)
    torch.library.opcheck(torch.ops.progan_fast.bias_act_pixel_norm_grad_db, (dy, x, b, "lrelu", 0.2, 1.4, 1e-8),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_bias_grad_db_op_passes_opcheck():
    """The fused (dx, db) backward op: schema, fake function (output strides included) and autograd
    registration agree with the kernel."""
    dy, y = rand(3, 5, 4, 2, layout="nhwc").requires_grad_(), rand(3, 5, 4, 2, layout="nhwc")
    torch.library.opcheck(torch.ops.progan_fast.bias_act_grad_db, (dy, y, "lrelu", 0.2, 1.4, 1),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_expanded_grad_and_sliced_input():
    """Gradients that are broadcast views (x.sum().backward()) and non-contiguous inputs."""
    base = rand(3, 10, 2, 4)
    x = base[:, ::2].detach().requires_grad_()  # channel slice: not dense
    xr = x.detach().clone().requires_grad_()
    ops.bias_act_pixel_norm(x, None, impl="triton").sum().backward()
    ops.bias_act_pixel_norm(xr, None, impl="ref").sum().backward()
    _close(x.grad, xr.grad, TOL[torch.float32], "pixel norm grad")
    for fn in (lambda t, i: ops.downsample2x(t, impl=i), lambda t, i: ops.minibatch_stddev(t, impl=i),
               lambda t, i: ops.bias_act(t, None, impl=i)):
        x = base[:, ::2].detach().requires_grad_()
        xr = x.detach().clone().requires_grad_()
        fn(x, "triton").sum().backward()
        fn(xr, "ref").sum().backward()
        _close(x.grad, xr.grad, TOL[torch.float32], "grad from an expanded upstream gradient")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pixel_norm_channel_loop(monkeypatch, layout):
    """Channel counts above the register tile take the two-pass chunked path."""
    monkeypatch.setattr(launchers, "PN_MAX_ONE_CHUNK", 4)
    monkeypatch.setattr(launchers, "PN_CHUNK", 4)
    x = rand(3, 11, 2, 3, layout=layout).requires_grad_()
    b = rand(11).requires_grad_()
    y = ops.bias_act_pixel_norm(x, b, gain=1.2, impl="triton")
    yr = ops.bias_act_pixel_norm(x, b, gain=1.2, impl="ref")
    _close(y, yr, TOL[torch.float32], "forward")
    g = torch.randn_like(y)
    for a, e in zip(torch.autograd.grad(y, (x, b), g), torch.autograd.grad(yr, (x, b), g)):
        _close(a, e, TOL[torch.float32], "backward")


# ----------------------------------------------------------------------------- a tiny D and WGAN-GP

def _tiny_d(params, x, alpha, impl):
    """fromRGB / conv / conv+down block, fade-in lerp with the downsampled path, minibatch stddev,
    conv 3x3, conv 4x4 (valid), dense: the structure of PGGAN's D at 8x8 during a fade."""
    w_rgb, b_rgb, w_rgb_old, b_rgb_old, w1, b1, w2, b2, w3, b3, w4, b4, wd, bd = params
    new = ops.eq_conv2d(x, w_rgb, b_rgb, impl=impl)
    new = ops.eq_conv2d(new, w1, b1, impl=impl)
    new = ops.eq_conv2d(new, w2, b2, down=True, impl=impl)
    old = ops.eq_conv2d(ops.downsample2x(x, impl=impl), w_rgb_old, b_rgb_old, impl=impl)
    h = ops.lerp(old, new, alpha, impl=impl)
    h = ops.minibatch_stddev(h, impl=impl)
    h = ops.eq_conv2d(h, w3, b3, impl=impl)
    h = ops.eq_conv2d(h, w4, b4, impl=impl).flatten(1)
    out = h @ (wd * (1 / math.sqrt(wd.shape[1]))).t()
    return ops.bias_act(out, bd, act="linear", impl=impl)


def test_tiny_d_wgan_gp_penalty_matches_reference():
    c = 5
    shapes = [(c, 3, 1, 1), (c,), (c, 3, 1, 1), (c,), (c, c, 3, 3), (c,), (c, c, 3, 3), (c,),
              (c, c + 1, 3, 3), (c,), (4, c, 4, 4), (4,), (1, 4), (1,)]
    params = [torch.randn(s, device=DEVICE) for s in shapes]
    real, fake = torch.randn(4, 3, 8, 8, device=DEVICE), torch.randn(4, 3, 8, 8, device=DEVICE)
    mix = torch.rand(4, 1, 1, 1, device=DEVICE)
    alpha = torch.tensor(0.35, device=DEVICE)
    grads = {}
    for impl in ("triton", "ref"):
        ps = [p.detach().clone().requires_grad_() for p in params]
        x_hat = (real + (fake - real) * mix).requires_grad_()
        score = _tiny_d(ps, x_hat, alpha, impl)
        (gx,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
        penalty = (gx.flatten(1).norm(dim=1) - 1).square().mean() * 10 + score.square().mean() * 1e-3
        grads[impl] = torch.autograd.grad(penalty, ps)
    for k, (a, e) in enumerate(zip(grads["triton"], grads["ref"])):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4, msg=lambda m: f"param {k}: {m}")


# ----------------------------------------------------------------------------- errors

def test_bad_input_errors():
    x = rand(6, 3, 2, 2)
    with pytest.raises(ValueError, match="not divisible"):
        ops.minibatch_stddev(x, impl="triton")
    with pytest.raises(ValueError, match="not divisible"):
        torch.ops.progan_fast.minibatch_stddev(x, 4, 1e-8)
    with pytest.raises(ValueError, match="4-D"):
        ops.minibatch_stddev(rand(4, 3, 2), impl="triton")
    with pytest.raises(ValueError, match="4-D"):
        torch.ops.progan_fast.downsample2x(rand(4, 3, 2))
    with pytest.raises(ValueError, match="must match"):
        ops.lerp(x, x.half(), 0.5, impl="triton")
    with pytest.raises(ValueError, match="mismatch"):
        torch.ops.progan_fast.lerp(x, x.half(), None, 0.5)
    with pytest.raises(ValueError, match="elements"):
        torch.ops.progan_fast.bias_act(x, rand(4), "lrelu", 0.2, 1.0, 1)
    with pytest.raises(ValueError, match="is on meta"):
        ops.bias_act(x, torch.zeros(3, device="meta"), impl="triton")
    with pytest.raises(ValueError, match="half resolution"):
        torch.ops.progan_fast.upsample_blend(rand(2, 3, 4, 4), rand(2, 3, 3, 2), None, 0.5)


BAD_CALLS = {  # an operator called with a bad argument, and the error it must raise
    "mbstd_group": (lambda O, r: O.minibatch_stddev(r(6, 3, 2, 2), 4, 1e-8), "not divisible"),
    "mbstd_grad_shape": (lambda O, r: O.minibatch_stddev_grad(r(4, 3, 2, 2), r(4, 3, 2, 2), 4, 1e-8), "dy must be"),
    "down_3d": (lambda O, r: O.downsample2x(r(4, 3, 2)), "4-D"),
    "down_grad_3d": (lambda O, r: O.downsample2x_grad(r(4, 3, 2)), "4-D"),
    "bias_len": (lambda O, r: O.bias_act(r(2, 3, 2, 2), r(4), "lrelu", 0.2, 1.0, 1), "elements"),
    "act_name": (lambda O, r: O.bias_act_grad(r(2, 3), r(2, 3), "gelu", 0.2, 1.0), "act"),
    "pn_grad_shape": (lambda O, r: O.pixel_norm_grad(r(2, 3), r(2, 4), 1e-8, 1), "shape"),
    "bapn_db_no_bias": (lambda O, r: O.bias_act_pixel_norm_grad_db(r(2, 3, 2, 2), r(2, 3, 2, 2), None, "lrelu",
                                                                    0.2, 1.0, 1e-8), "needs the bias"),
    "ub_half_res": (lambda O, r: O.upsample_blend(r(2, 3, 4, 4), r(2, 3, 3, 2), None, 0.5), "half resolution"),
    "fade_odd": (lambda O, r: O.fade_reals(r(2, 3, 3, 4), None, 0.5), "even"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_errors_are_the_same_when_traced(case):
    """Every operator validates its arguments on both paths: before its kernel, and in the fake
    implementation torch.compile traces (define_ops' `op` runs the check in both)."""
    call, match = BAD_CALLS[case]
    O = torch.ops.progan_fast
    with pytest.raises(ValueError, match=match) as eager:
        call(O, lambda *shape: rand(*shape))
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(), pytest.raises(ValueError, match=match) as traced:
        call(O, lambda *shape: torch.empty(*shape, device=DEVICE))
    assert str(traced.value) == str(eager.value)


def test_alpha_grad_is_refused():
    a, b = rand(2, 3).requires_grad_(), rand(2, 3)
    alpha = torch.tensor(0.5, device=DEVICE, requires_grad=True)
    with pytest.raises(RuntimeError, match="alpha"):
        ops.lerp(a, b, alpha, impl="triton").sum().backward()


@pytest.mark.skipif(DEVICE != "cpu", reason="CPU-only behaviour")
def test_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        torch.ops.progan_fast.downsample2x(torch.randn(1, 1, 2, 2))


# ----------------------------------------------------------------------------- torch.compile

def _compiled_fn(x, b, lo, alpha):
    y = ops.bias_act(x, b, gain=math.sqrt(2), impl="triton")
    y = ops.pixel_norm(y, impl="triton")
    y = ops.upsample_blend(y, lo, alpha, impl="triton")
    y = ops.lerp(y, ops.fade_reals(y, alpha, impl="triton"), alpha, impl="triton")
    return ops.minibatch_stddev(ops.downsample2x(y, impl="triton"), impl="triton")


def _check_compile(backend):
    import torch._dynamo
    from torch._dynamo.utils import counters
    from progan_fast.ops import _backend
    assert _backend._ensure_loaded("triton")  # import the backend before tracing (Dynamo cannot trace an import)
    torch._dynamo.reset()
    counters.clear()
    fn = torch.compile(_compiled_fn, fullgraph=True, backend=backend)
    x, b, lo = rand(4, 3, 4, 4).requires_grad_(), rand(3).requires_grad_(), rand(4, 3, 2, 2)
    for value in (0.25, 0.75):  # a new alpha value must not recompile: it is a tensor
        alpha = torch.tensor(value, device=DEVICE)
        out = fn(x, b, lo, alpha)
        ref = _compiled_fn(x, b, lo, alpha)
        _close(out, ref, TOL[torch.float32], "compiled forward")
        g = torch.randn_like(out)
        for a, e in zip(torch.autograd.grad(out, (x, b), g), torch.autograd.grad(ref, (x, b), g)):
            _close(a, e, TOL[torch.float32], "compiled backward")
    assert counters["stats"]["unique_graphs"] == 1


def test_compile_fullgraph_traces_ops():
    """fullgraph tracing through the fake functions and the registered autograd (aot_eager: the
    interpreter cannot run inside inductor-generated CPU code)."""
    _check_compile("aot_eager")


@pytest.mark.gpu
def test_compile_fullgraph_inductor_gpu():
    _check_compile("inductor")


@pytest.mark.parametrize("pixel_norm", [True, False])
@pytest.mark.parametrize("min_numel", [0, 10**9, "pinned"])
def test_auto_reference_conv_takes_the_preferred_epilogue(pixel_norm, min_numel, monkeypatch):
    """Where `auto` keeps a conv layer on the reference (cuDNN) but prefers the fused epilogue at
    this size, eq_conv2d runs the reference conv and then the Triton epilogue; below the size
    threshold, the reference epilogue. Same values and gradients as the reference layer either way."""
    from progan_fast.ops import _backend
    epilogue = "bias_act_pixel_norm" if pixel_norm else "bias_act"
    # a 3x3 conv with up=True is a "g_up" layer (ops._backend.conv_layer_kind); "pinned": eq_conv2d's
    # list decides that kind itself (the layer was measured), so the epilogue list does not reroute it
    conv = (_backend.Choice("ref", 0, "g_up"), "ref") if min_numel == "pinned" else ("ref",)
    if min_numel == "pinned":
        min_numel = 0
    table = {epilogue: (_backend.Choice("triton", min_numel), "ref"), "eq_conv2d": conv}
    monkeypatch.setattr(_backend, "_entries", lambda op, device: table.get(op, ("ref",)))
    monkeypatch.setattr(ops, "preferred_form", lambda layer, device, numel=None: None)  # whatever the table's forms
    calls = []
    fused = _backend._registry["triton"][epilogue]
    monkeypatch.setitem(_backend._registry["triton"], epilogue, lambda *a, **k: calls.append(1) or fused(*a, **k))
    x = rand(2, 5, 6, 6).requires_grad_()
    w = torch.randn(7, 5, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(7, device=DEVICE, requires_grad=True)
    got = ops.eq_conv2d(x, w, b, pixel_norm=pixel_norm, up=True)
    want = reference.eq_conv2d(x, w, b, pixel_norm=pixel_norm, up=True)
    rerouted = min_numel == 0 and conv == ("ref",)
    assert len(calls) == (1 if rerouted else 0)
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    g = torch.randn_like(want)
    for a, e in zip(torch.autograd.grad(got, (x, w, b), g), torch.autograd.grad(want, (x, w, b), g)):
        torch.testing.assert_close(a, e, **TOL2[torch.float32])
    with ops.use_backend("ref"):  # an explicit backend is never rerouted
        ops.eq_conv2d(x, w, b, pixel_norm=pixel_norm, up=True)
    assert len(calls) == (1 if rerouted else 0)


def test_compiled_code_follows_the_default_backend(monkeypatch):
    """torch.compile reads the default backend (and graph mode) through guarded module state: code
    compiled under one backend is traced again when it runs under another, in one process (a constant
    folded in without a guard kept the first backend for every later compile of the same code)."""
    from progan_fast.triton import launchers
    calls = []
    launch = launchers._pixel_norm_launch
    monkeypatch.setattr(launchers, "_pixel_norm_launch", lambda *a, **k: calls.append(1) or launch(*a, **k))
    torch._dynamo.reset()
    f = torch.compile(lambda x: ops.pixel_norm(x) * 2, backend="eager", fullgraph=True)
    x = rand(4, 8)
    for backend, launches in (("ref", 0), ("triton", 1), ("ref", 0)):
        calls.clear()
        with ops.use_backend(backend):
            torch.testing.assert_close(f(x), reference.pixel_norm(x) * 2)
        assert len(calls) == launches, backend


class _AtenOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the names of the aten ops run under it."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("pool_backend", ["triton", "ref"])
@pytest.mark.parametrize("conv_backend", ["ref", "triton"])
def test_down_layers_pool_with_the_downsample2x_kernel(conv_backend, pool_backend, monkeypatch):
    """A `down` conv layer pools with the downsample2x op, not aten's avg_pool2d (whose channels_last
    backward ran 0.4 ms a call at 64 px on an H100): the backend's own under an explicit backend,
    the one the table picks for that size under `auto` (aten's where that is the reference).
    Same values and gradients to second order as the reference layer either way."""
    from progan_fast.ops import _backend
    table = {"eq_conv2d": (conv_backend,), "downsample2x": (pool_backend,)}
    monkeypatch.setattr(_backend, "_entries", lambda op, device: table.get(op, ("ref",)))
    monkeypatch.setattr(ops, "preferred_form", lambda layer, device, numel=None: None)
    x = rand(2, 5, 7, 4).requires_grad_()  # an odd height: the pool drops the last row, as avg_pool2d does
    w = torch.randn(7, 5, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(7, device=DEVICE, requires_grad=True)
    g = torch.randn(2, 7, 3, 2, device=DEVICE, requires_grad=True)

    def first_and_second(layer):
        y = layer(x, w, b, down=True)
        first = torch.autograd.grad(y, (x, w, b), g, create_graph=True)
        # the WGAN-GP penalty's double backward, through the pool's backward
        return (y, *first, *torch.autograd.grad(first[0].square().sum(), (w, g)))

    with _AtenOps() as seen:
        got = first_and_second(ops.eq_conv2d)
    aten_pool = {n for n in seen.names if "avg_pool2d" in n}
    assert bool(aten_pool) == (conv_backend == pool_backend == "ref"), sorted(seen.names)
    want = first_and_second(reference.eq_conv2d)
    torch.testing.assert_close(got[0], want[0], **TOL[torch.float32])
    for a, e in zip(got[1:], want[1:]):
        torch.testing.assert_close(a, e, **TOL2[torch.float32])


class _ZeroFills(torch.utils._python_dispatch.TorchDispatchMode):
    """Records zero tensors created in the given shapes (what autograd fills unused gradients with)."""

    def __init__(self, *shapes):
        super().__init__()
        self.shapes, self.hits = {tuple(s) for s in shapes}, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if (str(func.overloadpacket) in ("aten.zeros", "aten.zeros_like", "aten.new_zeros", "aten.zero_")
                and isinstance(out, torch.Tensor) and tuple(out.shape) in self.shapes):
            self.hits.append((str(func.overloadpacket), tuple(out.shape)))
        return out


@pytest.mark.parametrize("op", ["bias_act", "bias_act_pixel_norm"])
@pytest.mark.parametrize("registered", [False, True])
def test_unused_bias_gradient_is_not_zero_filled(op, registered):
    """In the penalty's double backward the db output of a bias-gradient op is unused, and the
    first-order node is reached through y, on which the gradient does not depend: both must get
    None, not zero-filled gradients (an activation of zeros, then a whole backward pass over it).
    Both the eager twin and the registered operator (what a dispatch mode / torch.compile sees);
    the result still equals the reference's (to the second-order tolerance)."""
    torch.manual_seed(0)
    x = rand(4, 6, 5, 5).requires_grad_()
    b = rand(6).requires_grad_()
    f = getattr(ops, op)
    mode = _ZeroFills(x.shape, b.shape)
    w = rand(*x.shape)
    with mode if registered else contextlib.nullcontext():
        y = f(x, b, impl="triton")
        (gx,) = torch.autograd.grad((y * w).sum(), x, create_graph=True)
    before = list(mode.hits)
    with mode:
        gx.square().sum().backward()
    assert mode.hits == before, f"zero fills in the double backward: {mode.hits[len(before):]}"
    # the same second-order gradient as the reference (where none flows, the reference's is zeros)
    xr, br = x.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    yr = getattr(reference, op)(xr, br)
    (gr,) = torch.autograd.grad((yr * w).sum(), xr, create_graph=True)
    gr.square().sum().backward()
    for got, want in ((x.grad, xr.grad), (b.grad, br.grad)):
        got = torch.zeros_like(want) if got is None else got
        torch.testing.assert_close(got, want, **TOL2[torch.float32])
