"""The progan_fast operator library: schemas, autograd (to second order) and fake implementations,
independent of any kernel.

`define_ops(namespace, kernels)` defines every operator as `torch.ops.<namespace>.<name>` with
`torch.library.custom_op`, wires the backward formulas and the fake (meta) functions that
torch.compile traces, and calls `kernels` for the actual work. `kernels` is any object with the
methods listed in `KernelSet` (a module works): forward and first-order-backward kernels only.
Second-order backwards are expressed through the same ops (the linear ops are adjoint pairs:
lerp <-> lerp_grad, downsample2x <-> downsample2x_grad, upsample_blend <-> upsample_blend_grad,
fade_reals is self-adjoint, bias_act_grad is linear in its upstream gradient) or, for the
nonlinear normalizations, as short torch expressions (`_second_order.py`).

Reusing it for another backend (e.g. the compiled CUDA extension): write a kernel set whose
methods call the extension and follow the output-layout rules (outputs of the shape of an input
are `torch.empty_like(<first tensor argument>)`; resampled / widened outputs take the memory format
of the input, `_layout.empty_4d`), then call
    define_ops("progan_fast_cuda", cuda_kernels)
to get `torch.ops.progan_fast_cuda.*` with exactly the same schemas, autograd and fake functions,
and register those with `progan_fast.ops.register("cuda", ...)` the way `progan_fast/triton/__init__.py`
does. The Triton kernel set is installed as `torch.ops.progan_fast.*`.

Contract shared by all ops: float32 / float16 / bfloat16 storage (float64 for gradcheck), math in
float32; any strides (NCHW, channels_last, expanded gradients) without copies; `alpha` is either
the float `alpha` or, when `alpha_t` is given, a 0-d tensor read on the device (no host sync, no
recompile when it changes); no gradient flows to alpha (it is a schedule value).
"""
import functools
import inspect
from typing import Optional, Protocol

import torch
from torch import Tensor

from . import _second_order as so
from .._layout import acc_dtype
from ._layout import empty_4d

ACTS = ("linear", "relu", "lrelu")


class KernelSet(Protocol):
    """What `define_ops` needs from a backend (all tensors already validated)."""
    def bias_act(self, x, b, act, slope, gain, dim): ...
    def bias_act_grad(self, dy, y, act, slope, gain): ...             # y is None for act='linear'
    # optional: (dx, db in fp32) in one pass; without them db is a torch sum of dx
    # def bias_act_grad_db(self, dy, y, act, slope, gain, dim): ...
    # def bias_act_pixel_norm_grad_db(self, dy, x, b, act, slope, gain, eps): ...
    def pixel_norm(self, x, eps, dim): ...
    def pixel_norm_grad(self, dy, x, eps, dim): ...
    def bias_act_pixel_norm(self, x, b, act, slope, gain, eps): ...
    def bias_act_pixel_norm_grad(self, dy, x, b, act, slope, gain, eps): ...  # -> dx (db = sum of dx)
    def minibatch_stddev(self, x, group_size, eps): ...
    def minibatch_stddev_grad(self, dy, x, group_size, eps): ...
    def lerp(self, a, b, alpha_t, alpha): ...
    def lerp_grad(self, g, alpha_t, alpha): ...                       # -> (da, db)
    def upsample_blend(self, hi, lo, alpha_t, alpha): ...
    def upsample_blend_grad(self, g, alpha_t, alpha): ...             # -> (dhi, dlo)
    def fade_reals(self, x, alpha_t, alpha): ...
    def downsample2x(self, x): ...
    def downsample2x_grad(self, g): ...


_defined: dict = {}


# ----------------------------------------------------------------------------- validation
# Each operator has a `<name>_check` (argument validation) and an output rule (`_like(i)`, or a
# `<name>_outputs` for resampled / widened / extra outputs). `define_ops`'s `op` runs the check on
# both paths: before the kernel, and in the fake implementation, before the output rule (an eager
# call allocates no throwaway output).

def _req(cond: bool, msg: str, exc=ValueError):
    if not cond:
        raise exc(msg)


def _v_act(op, act):
    _req(act in ACTS, f"progan_fast.{op}: unknown act {act!r}; expected one of {ACTS}")


def _v_4d(op, name, t):
    _req(t.dim() == 4, f"progan_fast.{op}: {name} must be 4-D (N, C, H, W), got shape {tuple(t.shape)}")


def _v_bias(op, x, b, dim):
    if b is not None:
        _req(b.dim() == 1 and b.numel() == x.shape[dim],
             f"progan_fast.{op}: b must be 1-D with {x.shape[dim]} elements (dim {dim}), got {tuple(b.shape)}")


def _v_same(op, a, b, what="shape"):
    _req(a.shape == b.shape and a.dtype == b.dtype,
         f"progan_fast.{op}: {what} mismatch: {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}")


def _v_alpha(op, alpha_t):
    if alpha_t is not None:
        _req(alpha_t.numel() == 1, f"progan_fast.{op}: alpha_t must hold one element, got {tuple(alpha_t.shape)}")


def _v_half(op, hi, lo):
    _v_4d(op, "hi", hi)
    _v_4d(op, "lo", lo)
    n, c, h, w = hi.shape
    _req(h % 2 == 0 and w % 2 == 0 and tuple(lo.shape) == (n, c, h // 2, w // 2),
         f"progan_fast.{op}: lo must be hi at half resolution; got {tuple(hi.shape)} and {tuple(lo.shape)}")


def _v_group(op, x, group_size):
    _v_4d(op, "x", x)
    g = min(group_size, x.shape[0])
    _req(g >= 1 and x.shape[0] % g == 0,
         f"progan_fast.{op}: batch {x.shape[0]} is not divisible by the group size {g}")


def _no_alpha_grad(op, ctx, idx):
    if ctx.needs_input_grad[idx]:
        raise RuntimeError(f"progan_fast.{op}: no gradient with respect to alpha (detach it)")


def _save_leading(n_tensors: int):
    """setup_context that saves the op's first n_tensors inputs for backward and keeps the rest
    (the scalar arguments) as ctx.args, in schema order."""
    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n_tensors])
        ctx.args = tuple(inputs[n_tensors:])
    return setup


def _not_materializing(setup):
    """setup_context that leaves unused outputs' gradients as None (see define_ops.autograd)."""
    def wrapped(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        if setup is not None:
            setup(ctx, inputs, output)
    return wrapped


def _skipping_unused(backward, n_inputs: int):
    """`backward`, returning no gradients at once when it receives none."""
    nothing = (None,) * n_inputs

    def wrapped(ctx, *grads):
        if all(g is None for g in grads):
            return nothing
        return backward(ctx, *grads)
    return wrapped


def sum_except(t, dim, dtype):
    """Sum of `t` over every dim but `dim`, accumulated in `dtype`: the gradient of a bias broadcast
    along `dim` (kernel sets fall back to it where they cannot sum in their own pass)."""
    return torch.sum(t, dim=[d for d in range(t.dim()) if d != dim], dtype=dtype)


def _reduce_bias(dx, dim, b):
    return sum_except(dx, dim, acc_dtype(b.dtype)).to(b.dtype)


def _join_bias_cotangent(gdx, gdb, view, shape, dtype, device):
    """The cotangent of dx plus that of db = sum of dx over the non-bias dims, broadcast back
    (either may be None: an output nobody used)."""
    if gdb is None:
        return gdx if gdx is not None else torch.zeros(shape, dtype=dtype, device=device)
    g = gdb.reshape(view).to(dtype)
    return g.expand(shape).contiguous() if gdx is None else gdx + g


# ----------------------------------------------------------------------------- eager twins

def _eager_function(name: str, impl, backward, setup=None):
    """A classic (ctx-in-forward) autograd.Function with the op's own kernel and autograd rule.

    Why: a call through `torch.library.custom_op` costs ~10 us of Python per op with grad (its
    autograd wrapper is a setup_context-style Function, plus the dispatcher round trip), and a
    setup_context-style Function alone ~13 us; a classic Function costs ~2 us (CPU figures,
    docs/triton_ops.md). At PGGAN's small tensors that host time, not the kernel, is the op.
    The formulas are the same objects the custom op registers, so both paths agree by construction.
    """
    def forward(ctx, *inputs):
        out = impl(*inputs)
        if setup is not None:
            setup(ctx, inputs, out)
        return out

    def backward_(ctx, *grads):
        return backward(ctx, *grads)

    return type(f"{name}_eager", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward_)}).apply


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _like(i: int):
    """A fake implementation's output rule: one empty tensor like argument i (shape, dtype, strides)."""
    return lambda *args: torch.empty_like(args[i])


def _tracing(first) -> bool:
    """True when something other than plain eager execution sees the call: torch.compile / export,
    make_fx / AOTAutograd (dispatch modes), FakeTensor or other tensor subclasses, torch function
    modes, torch.func transforms. Those get the registered operator (opaque, with a fake
    implementation). (torch.func.grad / vmap support neither path today: torch 2.14's custom-op
    autograd is not functorch-aware either.)"""
    return (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0
            or torch._C._is_torch_function_mode_enabled() or torch._C._are_functorch_transforms_active()
            or type(first) not in _PLAIN_TENSORS)


class OpSet:
    """The operators of one `define_ops` namespace as plain callables (`opset.bias_act(...)`, with the
    schema's positional arguments). Each runs its classic-autograd.Function twin in plain eager mode
    and the registered operator `torch.ops.<namespace>.<name>` whenever something traces (see
    `_tracing`). Both share one kernel and one autograd rule, so they compute the same values;
    the twin only skips the custom-op machinery's host cost."""

    def __init__(self, namespace: str):
        self.namespace = namespace
        self.custom = getattr(torch.ops, namespace)
        self.names: list[str] = []

    def _add(self, name: str, custom, eager) -> None:
        def call(*args):
            if _tracing(args[0]):
                return custom(*args)
            return eager(*args)
        call.__name__ = call.__qualname__ = name
        call.__doc__ = f"torch.ops.{self.namespace}.{name}, or its eager twin outside tracing (OpSet)."
        setattr(self, name, call)
        self.names.append(name)


# ----------------------------------------------------------------------------- definitions

def define_ops(namespace: str, kernels: KernelSet):
    """Define all progan_fast operators as `torch.ops.<namespace>.*` on top of `kernels`; returns their
    `OpSet` (the callables the public wrappers and the backward formulas use). Idempotent per namespace."""
    if namespace in _defined:
        return _defined[namespace]
    O = OpSet(namespace)  # what the backward formulas call: filled in at the end
    k = kernels
    impls, customs = {}, {}

    def op(name, check, outputs):
        """Register the kernel call below as `<namespace>::<name>` (the schema comes from its
        annotations). `check(*args)` raises the clear errors; it runs first on every path: the
        kernel's, and the fake implementation's, which hands torch.compile and the other tracers
        `outputs(*args)` (empty tensors with the outputs' shapes, dtypes and layouts)."""
        def deco(fn):
            @functools.wraps(fn)  # keeps fn's signature, from which custom_op infers the schema
            def impl(*args):
                check(*args)
                return fn(*args)

            def fake(*args):
                check(*args)
                return outputs(*args)

            o = torch.library.custom_op(f"{namespace}::{name}", impl, mutates_args=())
            o.register_fake(fake)
            impls[name], customs[name] = impl, o
            return o
        return deco

    def autograd(name, backward, setup=None, none_safe=True):
        """Register `backward` for op `name` (custom op and eager twin alike). With `none_safe` (a
        single-output op, or a backward that takes None for an unused output), autograd does not
        fill unused outputs' gradients with zeros, and a node reached with no gradient at all returns
        None at once. In the penalty's double backward that is the rule, not the exception: every
        first-order node is reached through an input its gradient does not depend on (y of
        bias_act_grad, db of the bias-gradient ops), and a zero-filled call ran a whole backward pass
        over an activation of zeros.
        A consequence: a gradient that can only flow through such skipped nodes is None, not zeros
        (e.g. autograd.grad of the penalty alone with respect to a bias: pass allow_unused=True).
        Training is unaffected: every parameter also gets its first-order gradient."""
        if none_safe:
            n_inputs = len(inspect.signature(impls[name]).parameters)
            backward, setup = _skipping_unused(backward, n_inputs), _not_materializing(setup)
        customs[name].register_autograd(backward, setup_context=setup)
        O._add(name, customs[name], _eager_function(name, impls[name], backward, setup))

    # --- bias_act ------------------------------------------------------------
    def bias_act_check(x, b, act, slope, gain, dim):
        _v_act("bias_act", act)
        _req(0 <= dim < x.dim(), f"progan_fast.bias_act: dim {dim} out of range for {x.dim()}-D input")
        _v_bias("bias_act", x, b, dim)

    @op("bias_act", bias_act_check, _like(0))
    def bias_act(x: Tensor, b: Optional[Tensor], act: str, slope: float, gain: float, dim: int) -> Tensor:
        return k.bias_act(x, b, act, slope, gain, dim)

    def bias_act_grad_check(dy, y, act, slope, gain):
        _v_act("bias_act_grad", act)
        _req(y is not None or act == "linear", "progan_fast.bias_act_grad: y is required unless act='linear'")
        if y is not None:
            _req(y.shape == dy.shape, f"progan_fast.bias_act_grad: dy {tuple(dy.shape)} vs y {tuple(y.shape)}")

    @op("bias_act_grad", bias_act_grad_check, _like(0))
    def bias_act_grad(dy: Tensor, y: Optional[Tensor], act: str, slope: float, gain: float) -> Tensor:
        return k.bias_act_grad(dy, y, act, slope, gain)

    def bias_act_setup(ctx, inputs, output):
        x, b, act, slope, gain, dim = inputs
        ctx.save_for_backward(output if act != "linear" else None, b)
        ctx.args = (act, slope, gain, dim)

    fused_db = hasattr(k, "bias_act_grad_db")  # the kernel set sums db in the same pass as dx

    def bias_act_bwd(ctx, g):
        y, b = ctx.saved_tensors
        act, slope, gain, dim = ctx.args
        if ctx.needs_input_grad[1] and fused_db:
            dx, db = O.bias_act_grad_db(g, y, act, slope, gain, dim)
            return dx, db.to(b.dtype), None, None, None, None
        dx = O.bias_act_grad(g, y, act, slope, gain)
        db = _reduce_bias(dx, dim, b) if ctx.needs_input_grad[1] else None
        return dx, db, None, None, None, None

    autograd("bias_act", bias_act_bwd, bias_act_setup)

    def bias_act_grad_setup(ctx, inputs, output):
        dy, y, act, slope, gain = inputs
        ctx.save_for_backward(y)
        ctx.args = (act, slope, gain)

    def bias_act_grad_bwd(ctx, gg):
        (y,) = ctx.saved_tensors
        # Linear in dy; the derivative with respect to y (a step function of y) is 0 a.e.
        return O.bias_act_grad(gg, y, *ctx.args), None, None, None, None

    autograd("bias_act_grad", bias_act_grad_bwd, bias_act_grad_setup)

    if fused_db:
        def bias_act_grad_db_check(dy, y, act, slope, gain, dim):
            bias_act_grad_check(dy, y, act, slope, gain)
            _req(0 <= dim < dy.dim(), f"progan_fast.bias_act_grad_db: dim {dim} out of range for {dy.dim()}-D dy")

        def bias_act_grad_db_outputs(dy, y, act, slope, gain, dim):
            return torch.empty_like(dy), dy.new_empty((dy.shape[dim],), dtype=acc_dtype(dy.dtype))

        @op("bias_act_grad_db", bias_act_grad_db_check, bias_act_grad_db_outputs)
        def bias_act_grad_db(dy: Tensor, y: Optional[Tensor], act: str, slope: float, gain: float,
                             dim: int) -> tuple[Tensor, Tensor]:
            return k.bias_act_grad_db(dy, y, act, slope, gain, dim)

        def bias_act_grad_db_setup(ctx, inputs, output):
            dy, y, act, slope, gain, dim = inputs
            ctx.save_for_backward(y)
            ctx.args = (act, slope, gain)
            ctx.dim, ctx.shape, ctx.dtype, ctx.device = dim, dy.shape, dy.dtype, dy.device

        def bias_act_grad_db_bwd(ctx, gdx, gdb):
            # (dx, db) = (J dy, sum_{not dim} J dy) with J diagonal: the adjoint is J (gdx + gdb broadcast).
            (y,) = ctx.saved_tensors
            view = [1] * len(ctx.shape)
            view[ctx.dim] = -1
            v = _join_bias_cotangent(gdx, gdb, view, ctx.shape, ctx.dtype, ctx.device)
            return O.bias_act_grad(v, y, *ctx.args), None, None, None, None, None

        autograd("bias_act_grad_db", bias_act_grad_db_bwd, bias_act_grad_db_setup)

    # --- pixel_norm -----------------------------------------------------------
    def pixel_norm_check(x, eps, dim):
        _req(0 <= dim < x.dim(), f"progan_fast.pixel_norm: dim {dim} out of range for {x.dim()}-D input")

    @op("pixel_norm", pixel_norm_check, _like(0))
    def pixel_norm(x: Tensor, eps: float, dim: int) -> Tensor:
        return k.pixel_norm(x, eps, dim)

    def pixel_norm_grad_check(dy, x, eps, dim):
        _v_same("pixel_norm_grad", dy, x, "dy/x shape")

    @op("pixel_norm_grad", pixel_norm_grad_check, _like(1))
    def pixel_norm_grad(dy: Tensor, x: Tensor, eps: float, dim: int) -> Tensor:
        return k.pixel_norm_grad(dy, x, eps, dim)

    pixel_norm_setup = _save_leading(1)

    def pixel_norm_bwd(ctx, g):
        (x,) = ctx.saved_tensors
        return O.pixel_norm_grad(g, x, *ctx.args), None, None

    autograd("pixel_norm", pixel_norm_bwd, pixel_norm_setup)

    pixel_norm_grad_setup = _save_leading(2)

    def pixel_norm_grad_bwd(ctx, v):
        dy, x = ctx.saved_tensors
        eps, dim = ctx.args
        d_dy = O.pixel_norm_grad(v, x, eps, dim) if ctx.needs_input_grad[0] else None  # J symmetric
        d_x = None
        if ctx.needs_input_grad[1]:
            d_x = so.pn_hess(so._acc(dy), so._acc(v), so._acc(x), dim, eps).to(x.dtype)
        return d_dy, d_x, None, None

    autograd("pixel_norm_grad", pixel_norm_grad_bwd, pixel_norm_grad_setup)

    # --- bias_act_pixel_norm (G's conv epilogue) --------------------------------
    def bapn_check(x, b, act, slope, gain, eps):
        _v_4d("bias_act_pixel_norm", "x", x)
        _v_act("bias_act_pixel_norm", act)
        _v_bias("bias_act_pixel_norm", x, b, 1)

    @op("bias_act_pixel_norm", bapn_check, _like(0))
    def bias_act_pixel_norm(x: Tensor, b: Optional[Tensor], act: str, slope: float, gain: float,
                            eps: float) -> Tensor:
        return k.bias_act_pixel_norm(x, b, act, slope, gain, eps)

    def bapn_grad_check(dy, x, b, act, slope, gain, eps):
        _v_same("bias_act_pixel_norm_grad", dy, x, "dy/x shape")
        bapn_check(x, b, act, slope, gain, eps)

    @op("bias_act_pixel_norm_grad", bapn_grad_check, _like(1))
    def bias_act_pixel_norm_grad(dy: Tensor, x: Tensor, b: Optional[Tensor], act: str, slope: float,
                                 gain: float, eps: float) -> Tensor:
        return k.bias_act_pixel_norm_grad(dy, x, b, act, slope, gain, eps)

    bapn_setup = _save_leading(2)

    bapn_fused_db = hasattr(k, "bias_act_pixel_norm_grad_db")

    def bapn_bwd(ctx, g):
        x, b = ctx.saved_tensors
        if ctx.needs_input_grad[1] and bapn_fused_db:
            dx, db = O.bias_act_pixel_norm_grad_db(g, x, b, *ctx.args)
            return dx, db.to(b.dtype), None, None, None, None
        dx = O.bias_act_pixel_norm_grad(g, x, b, *ctx.args)
        db = _reduce_bias(dx, 1, b) if ctx.needs_input_grad[1] else None
        return dx, db, None, None, None, None

    autograd("bias_act_pixel_norm", bapn_bwd, bapn_setup)

    bapn_grad_setup = _save_leading(3)

    def bapn_grad_bwd(ctx, v):
        # dx = gain * a * J(z) dy with z = gain * act(x + b), a = act'(x + b) piecewise constant.
        dy, x, b = ctx.saved_tensors
        act, slope, gain, eps = ctx.args
        z, a = so.act_parts(x, b, act, slope, gain)
        wv = gain * a * so._acc(v)
        d_dy = so.pn_jvp(wv, z, 1, eps).to(dy.dtype)
        d_u = gain * a * so.pn_hess(so._acc(dy), wv, z, 1, eps)
        d_b = _reduce_bias(d_u, 1, b) if b is not None and ctx.needs_input_grad[2] else None
        return d_dy, d_u.to(x.dtype), d_b, None, None, None, None

    autograd("bias_act_pixel_norm_grad", bapn_grad_bwd, bapn_grad_setup)

    if bapn_fused_db:
        def bapn_grad_db_check(dy, x, b, act, slope, gain, eps):
            bapn_grad_check(dy, x, b, act, slope, gain, eps)
            _req(b is not None, "progan_fast.bias_act_pixel_norm_grad_db: needs the bias b")

        def bapn_grad_db_outputs(dy, x, b, act, slope, gain, eps):
            return torch.empty_like(x), x.new_empty((x.shape[1],), dtype=acc_dtype(x.dtype))

        @op("bias_act_pixel_norm_grad_db", bapn_grad_db_check, bapn_grad_db_outputs)
        def bias_act_pixel_norm_grad_db(dy: Tensor, x: Tensor, b: Optional[Tensor], act: str, slope: float,
                                        gain: float, eps: float) -> tuple[Tensor, Tensor]:
            return k.bias_act_pixel_norm_grad_db(dy, x, b, act, slope, gain, eps)

        def bapn_grad_db_bwd(ctx, gdx, gdb):
            # db = sum over N, H, W of dx: its cotangent joins dx's, broadcast along C.
            x = ctx.saved_tensors[1]
            return bapn_grad_bwd(ctx, _join_bias_cotangent(gdx, gdb, (1, -1, 1, 1), x.shape, x.dtype, x.device))

        autograd("bias_act_pixel_norm_grad_db", bapn_grad_db_bwd, bapn_grad_setup)

    # --- minibatch_stddev ---------------------------------------------------------
    def mbstd_check(x, group_size, eps):
        _v_group("minibatch_stddev", x, group_size)

    def mbstd_outputs(x, group_size, eps):
        n, c, h, w = x.shape
        return empty_4d((n, c + 1, h, w), x)

    @op("minibatch_stddev", mbstd_check, mbstd_outputs)
    def minibatch_stddev(x: Tensor, group_size: int, eps: float) -> Tensor:
        return k.minibatch_stddev(x, group_size, eps)

    def mbstd_grad_check(dy, x, group_size, eps):
        _v_group("minibatch_stddev_grad", x, group_size)
        n, c, h, w = x.shape
        _req(tuple(dy.shape) == (n, c + 1, h, w),
             f"progan_fast.minibatch_stddev_grad: dy must be {(n, c + 1, h, w)}, got {tuple(dy.shape)}")

    @op("minibatch_stddev_grad", mbstd_grad_check, _like(1))
    def minibatch_stddev_grad(dy: Tensor, x: Tensor, group_size: int, eps: float) -> Tensor:
        return k.minibatch_stddev_grad(dy, x, group_size, eps)

    mbstd_setup = _save_leading(1)

    def mbstd_bwd(ctx, g):
        (x,) = ctx.saved_tensors
        return O.minibatch_stddev_grad(g, x, *ctx.args), None, None

    autograd("minibatch_stddev", mbstd_bwd, mbstd_setup)

    mbstd_grad_setup = _save_leading(2)

    def mbstd_grad_bwd(ctx, v):
        dy, x = ctx.saved_tensors
        d_dy, d_x = so.minibatch_stddev_grad_backward(v, dy, x, *ctx.args)
        return d_dy, d_x, None, None

    autograd("minibatch_stddev_grad", mbstd_grad_bwd, mbstd_grad_setup)

    # --- lerp ---------------------------------------------------------------------
    def lerp_check(a, b, alpha_t, alpha):
        _v_same("lerp", a, b)
        _v_alpha("lerp", alpha_t)

    @op("lerp", lerp_check, _like(0))
    def lerp(a: Tensor, b: Tensor, alpha_t: Optional[Tensor], alpha: float) -> Tensor:
        return k.lerp(a, b, alpha_t, alpha)

    def lerp_grad_check(g, alpha_t, alpha):
        _v_alpha("lerp_grad", alpha_t)

    def lerp_grad_outputs(g, alpha_t, alpha):
        return torch.empty_like(g), torch.empty_like(g)

    @op("lerp_grad", lerp_grad_check, lerp_grad_outputs)
    def lerp_grad(g: Tensor, alpha_t: Optional[Tensor], alpha: float) -> tuple[Tensor, Tensor]:
        return k.lerp_grad(g, alpha_t, alpha)

    def alpha_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[-2])
        ctx.alpha = inputs[-1]

    def lerp_bwd(ctx, g):
        _no_alpha_grad("lerp", ctx, 2)
        (alpha_t,) = ctx.saved_tensors
        da, db = O.lerp_grad(g, alpha_t, ctx.alpha)
        return da, db, None, None

    autograd("lerp", lerp_bwd, alpha_setup)

    def lerp_grad_bwd(ctx, gda, gdb):
        _no_alpha_grad("lerp_grad", ctx, 1)
        (alpha_t,) = ctx.saved_tensors
        return O.lerp(gda, gdb, alpha_t, ctx.alpha), None, None

    autograd("lerp_grad", lerp_grad_bwd, alpha_setup, none_safe=False)

    # --- upsample_blend (G's fade-in) -------------------------------------------------
    def ub_check(hi, lo, alpha_t, alpha):
        _v_half("upsample_blend", hi, lo)
        _req(hi.dtype == lo.dtype, f"progan_fast.upsample_blend: hi is {hi.dtype} but lo is {lo.dtype}")
        _v_alpha("upsample_blend", alpha_t)

    @op("upsample_blend", ub_check, _like(0))
    def upsample_blend(hi: Tensor, lo: Tensor, alpha_t: Optional[Tensor], alpha: float) -> Tensor:
        return k.upsample_blend(hi, lo, alpha_t, alpha)

    def ub_grad_check(g, alpha_t, alpha):
        _v_4d("upsample_blend_grad", "g", g)
        _v_alpha("upsample_blend_grad", alpha_t)

    def ub_grad_outputs(g, alpha_t, alpha):
        n, c, h, w = g.shape
        return torch.empty_like(g), empty_4d((n, c, h // 2, w // 2), g)

    @op("upsample_blend_grad", ub_grad_check, ub_grad_outputs)
    def upsample_blend_grad(g: Tensor, alpha_t: Optional[Tensor], alpha: float) -> tuple[Tensor, Tensor]:
        return k.upsample_blend_grad(g, alpha_t, alpha)

    def ub_bwd(ctx, g):
        _no_alpha_grad("upsample_blend", ctx, 2)
        (alpha_t,) = ctx.saved_tensors
        dhi, dlo = O.upsample_blend_grad(g, alpha_t, ctx.alpha)
        return dhi, dlo, None, None

    autograd("upsample_blend", ub_bwd, alpha_setup)

    def ub_grad_bwd(ctx, gdhi, gdlo):
        _no_alpha_grad("upsample_blend_grad", ctx, 1)
        (alpha_t,) = ctx.saved_tensors
        return O.upsample_blend(gdhi, gdlo, alpha_t, ctx.alpha), None, None

    autograd("upsample_blend_grad", ub_grad_bwd, alpha_setup, none_safe=False)

    # --- fade_reals (self-adjoint) ------------------------------------------------------
    def fade_check(x, alpha_t, alpha):
        _v_4d("fade_reals", "x", x)
        _req(x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0,
             f"progan_fast.fade_reals: H and W must be even, got {tuple(x.shape)}")
        _v_alpha("fade_reals", alpha_t)

    @op("fade_reals", fade_check, _like(0))
    def fade_reals(x: Tensor, alpha_t: Optional[Tensor], alpha: float) -> Tensor:
        return k.fade_reals(x, alpha_t, alpha)

    def fade_bwd(ctx, g):
        _no_alpha_grad("fade_reals", ctx, 1)
        (alpha_t,) = ctx.saved_tensors
        return O.fade_reals(g, alpha_t, ctx.alpha), None, None

    autograd("fade_reals", fade_bwd, alpha_setup)

    # --- downsample2x <-> downsample2x_grad (adjoint pair) ------------------------------------
    def down_check(x):
        _v_4d("downsample2x", "x", x)
        n, c, h, w = x.shape
        _req(h % 2 == 0 and w % 2 == 0, f"progan_fast.downsample2x: H and W must be even, got {tuple(x.shape)}")

    def down_outputs(x):
        n, c, h, w = x.shape
        return empty_4d((n, c, h // 2, w // 2), x)

    @op("downsample2x", down_check, down_outputs)
    def downsample2x(x: Tensor) -> Tensor:
        return k.downsample2x(x)

    def down_grad_check(g):
        _v_4d("downsample2x_grad", "g", g)

    def down_grad_outputs(g):
        n, c, h, w = g.shape
        return empty_4d((n, c, h * 2, w * 2), g)

    @op("downsample2x_grad", down_grad_check, down_grad_outputs)
    def downsample2x_grad(g: Tensor) -> Tensor:
        return k.downsample2x_grad(g)

    autograd("downsample2x", lambda ctx, g: O.downsample2x_grad(g))
    autograd("downsample2x_grad", lambda ctx, v: O.downsample2x(v))

    assert set(O.names) == set(customs), "every operator needs an autograd rule"
    _defined[namespace] = O
    return O


def split_alpha(alpha):
    """Public `alpha` (float or 0-d tensor) -> the (alpha_t, alpha) pair of the schemas."""
    if isinstance(alpha, torch.Tensor):
        return alpha.reshape(()), 0.0
    return None, float(alpha)


def public_ops(ops) -> dict:
    """The public-op signatures of `progan_fast.ops` (keyword arguments, Python alpha) over the operators
    of one `define_ops` namespace: what a backend registers. eq_conv2d is the convolution by torch
    (cuDNN / cuBLAS), pooled (`down`) by this namespace's downsample2x, then its one fused epilogue kernel."""
    from ..ops import reference

    def bias_act(x, b=None, *, act="lrelu", slope=0.2, gain=1.0, dim=1):
        return ops.bias_act(x, b, act, float(slope), float(gain), int(dim))

    def bias_act_pixel_norm(x, b=None, *, act="lrelu", slope=0.2, gain=1.0, eps=1e-8):
        return ops.bias_act_pixel_norm(x, b, act, float(slope), float(gain), float(eps))

    def pixel_norm(x, *, eps=1e-8, dim=1):
        return ops.pixel_norm(x, float(eps), int(dim))

    def minibatch_stddev(x, *, group_size=4, eps=1e-8):
        return ops.minibatch_stddev(x, int(group_size), float(eps))

    def upsample_blend(hi, lo, alpha):
        return ops.upsample_blend(hi, lo, *split_alpha(alpha))

    def fade_reals(x, alpha):
        return ops.fade_reals(x, *split_alpha(alpha))

    def lerp(a, b, alpha):
        return ops.lerp(a, b, *split_alpha(alpha))

    def downsample2x(x):
        return ops.downsample2x(x)

    def eq_conv2d(x, weight, bias=None, *, gain, act, slope, pixel_norm, up, down, fused_scale, eps):
        y = reference.equalized_conv2d(x, weight, gain, up=up, down=down, fused_scale=fused_scale,
                                       wgrad_double_backward=True, pool=ops.downsample2x)
        if pixel_norm:
            return ops.bias_act_pixel_norm(y, bias, act, float(slope), 1.0, float(eps))
        return ops.bias_act(y, bias, act, float(slope), 1.0, 1)

    return {"bias_act": bias_act, "bias_act_pixel_norm": bias_act_pixel_norm, "pixel_norm": pixel_norm,
            "minibatch_stddev": minibatch_stddev, "upsample_blend": upsample_blend, "fade_reals": fade_reals,
            "lerp": lerp, "downsample2x": downsample2x, "eq_conv2d": eq_conv2d}


__all__ = ["define_ops", "public_ops", "OpSet", "KernelSet", "split_alpha", "ACTS"]
