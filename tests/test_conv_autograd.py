"""progan_fast.ops.conv_autograd: the conv whose double backward runs weight-gradient kernels.

Values and gradients to second order equal F.conv2d / F.conv_transpose2d's (float64, fresh random
inputs, every form the layers use); the double backward issues no convolution with an image-sized
kernel (PyTorch's own rule does, which these tests also check, so the check can fail); gradcheck and
gradgradcheck; a D step with the penalty through the backends' layer equals the reference's.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from progan_fast.ops import conv_autograd, reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# (name, x shape, w shape, stride, padding, transposed): the layers' conv forms
FORMS = [
    ("3x3", (3, 5, 7, 6), (4, 5, 3, 3), 1, 1, False),
    ("1x1", (2, 6, 5, 5), (3, 6, 1, 1), 1, 0, False),
    ("4x4_valid", (3, 4, 4, 4), (5, 4, 4, 4), 1, 0, False),
    ("down_4x4_s2", (2, 3, 8, 6), (4, 3, 4, 4), 2, 1, False),
    ("up_4x4_s2_transposed", (2, 3, 5, 4), (3, 4, 4, 4), 2, 1, True),
]


def _plain(x, w, stride, padding, transposed):
    return (F.conv_transpose2d if transposed else F.conv2d)(x, w, stride=stride, padding=padding)


def _grads_to_second_order(conv_fn, x, w, gy, v):
    """y; (gx, gw) of <gy, y>; and the gradients (x, w, gy) of <v, gx> + <v_w, gw>."""
    x, w, gy = (t.clone().requires_grad_() for t in (x, w, gy))
    y = conv_fn(x, w)
    gx, gw = torch.autograd.grad(y, (x, w), gy, create_graph=True)
    second = (gx * v[0]).sum() + (gw * v[1]).sum()
    return [y, gx, gw, *torch.autograd.grad(second, (x, w, gy))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", FORMS, ids=[f[0] for f in FORMS])
def test_matches_pytorch_to_second_order(form, device):
    _, xs, ws, stride, padding, transposed = form
    dt = torch.float64
    x, w = torch.randn(xs, dtype=dt, device=device), torch.randn(ws, dtype=dt, device=device)
    y = _plain(x, w, stride, padding, transposed)
    gy = torch.randn_like(y)
    v = (torch.randn_like(x), torch.randn_like(w))
    ours = _grads_to_second_order(lambda a, b: conv_autograd.conv(a, b, stride, padding, transposed), x, w, gy, v)
    want = _grads_to_second_order(lambda a, b: _plain(a, b, stride, padding, transposed), x, w, gy, v)
    for name, a, b in zip(("y", "gx", "gw", "d/dx", "d/dw", "d/dgy"), ours, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("form", FORMS, ids=[f[0] for f in FORMS])
def test_gradcheck_and_gradgradcheck(form):
    _, xs, ws, stride, padding, transposed = form
    x = torch.randn(xs, dtype=torch.float64, requires_grad=True)
    w = torch.randn(ws, dtype=torch.float64, requires_grad=True)
    f = lambda a, b: conv_autograd.conv(a, b, stride, padding, transposed)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w))
    assert torch.autograd.gradgradcheck(f, (x, w))


class _ConvSpy(TorchDispatchMode):
    """Records the convolution kernels dispatched: `ops` by what each computes (a forward "conv",
    a backward's "dgrad" / "wgrad"), `kernels` the weight's spatial size of each forward conv."""

    def __init__(self):
        super().__init__()
        self.ops, self.kernels = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten.convolution:
            self.ops.append("conv")
            self.kernels.append(tuple(args[1].shape[2:]))
        elif func.overloadpacket is torch.ops.aten.convolution_backward:
            self.ops += [name for name, on in zip(("dgrad", "wgrad"), args[-1][:2]) if on]
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("ours", [True, False])
def test_double_backward_convolves_no_image_sized_kernel(ours):
    """The penalty's pattern: a gradient w.r.t. the input, differentiated w.r.t. the weight. PyTorch's
    rule convolves with the 32x32 image as the kernel; ours keeps 3x3 kernels."""
    x = torch.randn(4, 6, 32, 32, requires_grad=True)
    w = torch.randn(5, 6, 3, 3, requires_grad=True)
    conv = (lambda a, b: conv_autograd.conv(a, b, 1, 1)) if ours else (lambda a, b: F.conv2d(a, b, padding=1))
    (gx,) = torch.autograd.grad(conv(x, w).square().sum(), x, create_graph=True)
    spy = _ConvSpy()
    with spy:
        gx.square().sum().backward()
    assert spy.kernels  # the double backward did convolve
    big = [k for k in spy.kernels if max(k) > 4]
    assert (not big) if ours else big, spy.kernels


@pytest.mark.parametrize("kw", [dict(), dict(up=True), dict(down=True), dict(up=True, fused_scale=True),
                                dict(down=True, fused_scale=True)], ids=["plain", "up", "down", "up_fused",
                                                                         "down_fused"])
def test_layer_conv_is_the_same_function_to_second_order(kw):
    """reference.equalized_conv2d with and without wgrad_double_backward, through a penalty-like
    double backward, in float64."""
    torch.manual_seed(0)
    x0 = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    w0 = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    out = []
    for flag in (True, False):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        y = reference.equalized_conv2d(x, w, 2 ** 0.5, wgrad_double_backward=flag, **kw)
        (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        gw, gx2 = torch.autograd.grad(gx.square().sum(), (w, x))
        out.append((y, gx, gw, gx2))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_autocast_casts_like_f_conv2d():
    """Under autocast (CPU bf16 here) the operands are cast as F.conv2d's are: same output dtype and
    values, first- and second-order gradients in the same dtypes (the Function saves bf16 tensors)."""
    x0, w0 = torch.randn(2, 4, 6, 6), torch.randn(3, 4, 3, 3)
    out = []
    for conv in (lambda a, b: conv_autograd.conv(a, b, 1, 1), lambda a, b: F.conv2d(a, b, padding=1)):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x, w)
            (gx,) = torch.autograd.grad(y.float().square().sum(), x, create_graph=True)
        gw, = torch.autograd.grad(gx.square().sum(), w)
        out.append((y, gx, gw))
    for a, b in zip(*out):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)
    assert out[0][0].dtype == torch.bfloat16


@pytest.mark.parametrize("on_cuda", [True, False])
def test_auto_layers_take_it_where_the_device_rule_says(on_cuda, monkeypatch):
    """ops.eq_conv2d under impl='auto' runs conv_autograd's double backward where
    ops._wgrad_double_backward says (CUDA), PyTorch's rule elsewhere (the CPU, where oneDNN runs it
    well). The rule is forced here so the CPU can check both wirings."""
    from types import SimpleNamespace
    from progan_fast import ops
    assert ops._wgrad_double_backward(SimpleNamespace(device=torch.device("cuda", 0)))
    assert not ops._wgrad_double_backward(torch.randn(1))
    monkeypatch.setattr(ops, "_wgrad_double_backward", lambda x: on_cuda)
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    w, b = torch.randn(3, 4, 3, 3, requires_grad=True), torch.randn(3)
    for kw in (dict(), dict(down=True)):
        (gx,) = torch.autograd.grad(ops.eq_conv2d(x, w, b, **kw).square().sum(), x, create_graph=True)
        spy = _ConvSpy()
        with spy:
            gx.square().sum().backward()
        assert any(max(k) > 4 for k in spy.kernels) != on_cuda, (kw, spy.kernels)


def _penalty_pattern_ops(conv):
    torch.manual_seed(0)
    w1, w2 = torch.randn(5, 3, 3, 3, requires_grad=True), torch.randn(4, 5, 3, 3, requires_grad=True)
    x = torch.randn(2, 3, 8, 8, requires_grad=True) * 1.0  # a non-leaf, like the penalty's mix
    first, second = _ConvSpy(), _ConvSpy()
    out = conv(F.leaky_relu(conv(x, w1), 0.2), w2).sum()
    with first:
        (gx,) = torch.autograd.grad(out, x, create_graph=True)
    with second:
        gx.square().sum().backward()
    assert w1.grad is not None and w2.grad is not None
    return first.ops, sorted(second.ops)


def test_penalty_pattern_runs_no_more_conv_kernels_than_pytorch():
    """D's penalty on two conv layers: autograd.grad(D(x), x) with the weights requiring grad, then
    the penalty's backward. The first backward runs dgrads only, as PyTorch's rule does (the weights'
    gradient is not used there). The double backward: one forward conv (layer 1's input term; layer
    2's gy is a constant), a wgrad per layer, and the dgrad + wgrad of the zero gradient leaky ReLU's
    mask sends back through layer 1 (PyTorch runs those too); no convolution of a zero ggw, and fewer
    kernels than PyTorch's 4 convs (2 of them image-sized) + dgrad + wgrad."""
    ours = _penalty_pattern_ops(lambda a, b: conv_autograd.conv(a, b, 1, 1))
    torchs = _penalty_pattern_ops(lambda a, b: F.conv2d(a, b, padding=1))
    assert ours[0] == torchs[0] == ["dgrad", "dgrad"], (ours[0], torchs[0])
    assert ours[1] == ["conv", "dgrad", "wgrad", "wgrad", "wgrad"], ours[1]
    assert len(ours[1]) < len(torchs[1]) and torchs[1].count("conv") >= 3, torchs[1]


def test_an_unused_weight_gradient_costs_no_kernel_in_the_double_backward():
    """gx and gw both computed with create_graph, then a loss on gx alone: gw's gradient stays None
    (not a zero tensor convolved through dgrad), so the double backward is one wgrad."""
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    gx, gw = torch.autograd.grad(conv_autograd.conv(x, w, 1, 1).sum(), (x, w), create_graph=True)
    spy = _ConvSpy()
    with spy:
        gx.square().sum().backward()
    assert spy.ops == ["wgrad"], spy.ops


def test_meta_tensors_trace_through_it():
    """Devices autocast does not know (meta: shapes only) must not make it ask autocast about them."""
    x = torch.empty(2, 3, 8, 8, device="meta", requires_grad=True)
    y = conv_autograd.conv(x, torch.empty(4, 3, 3, 3, device="meta"), 1, 1)
    assert y.shape == (2, 4, 8, 8) and y.device.type == "meta"
