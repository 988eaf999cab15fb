"""Kernel launches that skip Triton's per-call argument binding once a launch is known.

`kernel[grid](*args, **consts)` goes through `JITFunction.run` on every call: bind the arguments
to the signature, compute each one's specialization, build a cache key from all of it, look up the
compiled kernel, then launch. In Triton 3.6 the key is a `str()` of the whole specialization list,
and with the 20-30 arguments of these kernels that Python work is most of an op's host time.

`launch` keeps, per *launch key*, the compiled kernel's own launcher (`CompiledKernel[grid]`, the
runner Triton itself calls) with the constexpr tail of the argument list, and calls it directly.
The launch key holds everything Triton specializes on: every int argument's value, every tensor's
dtype and 16-byte alignment, the constexprs and launch options, the grid and the device. So the
cached kernel is exactly the one `JITFunction.run` would pick. Floats are never specialized.

The first launch of a key goes the normal way (that compiles, or loads from Triton's cache). Any
error on the direct path turns it off for the process, with one warning, and the launch is retried
the normal way. Off for CPU tensors (the interpreter), for Triton < 3.3 (whose launcher takes only
the non-constexpr arguments), with launch hooks installed (profilers: they see every launch the
normal way), and with PROGAN_FAST_TRITON_DIRECT_LAUNCH=0.
"""
from __future__ import annotations

import os
import warnings

import torch
import triton

MAX_PLANS = 8192


def _version_ok() -> bool:
    try:
        major, minor = (int(p) for p in triton.__version__.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (3, 3)


class _State:
    enabled = os.environ.get("PROGAN_FAST_TRITON_DIRECT_LAUNCH", "1") != "0" and _version_ok()
    error: str | None = None
    plans: dict = {}
    direct_calls = 0      # launches that took the cached launcher (for tests and the bench)
    device_type = "cuda"  # tensors of this device type take the direct path (tests fake it)


def current_stream(device: int) -> int:
    """The raw handle of torch's current stream on `device` (what Triton's driver asks torch for)."""
    return torch._C._cuda_getCurrentRawStream(device)


state = _State()


def _spec(a):
    """What Triton specializes an argument on (tensors, nn.Parameter included: dtype and 16-byte
    alignment; ints: value)."""
    if isinstance(a, torch.Tensor):
        return a.dtype, (a.data_ptr() & 15) == 0
    if type(a) is int:
        return a
    if a is None:
        return None
    return type(a)


def _hooks_installed() -> bool:
    try:
        from triton import knobs
    except ImportError:
        return False
    for hook in (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):  # a HookChain with no calls is empty
            return True
    return False


def _plan(kernel, compiled, grid, n_args: int, consts: dict):
    """The runner bound to `grid` and the constexpr values that follow the positional arguments,
    in signature order (defaults filled in), or None when the kernel's signature does not fit."""
    if compiled is None or not hasattr(compiled, "__getitem__"):
        return None
    params = getattr(kernel, "params", None)
    if params is None or len(params) < n_args:
        return None
    tail = []
    for p in params[n_args:]:
        if p.name in consts:
            tail.append(consts[p.name])
        elif p.has_default:
            tail.append(p.default)
        else:
            return None
    return compiled[tuple(grid) + (1,) * (3 - len(grid))], tuple(tail)


def launch(kernel, grid, args, consts) -> None:
    """`kernel[grid](*args, **consts)`, through the cached launcher when this launch key has run."""
    first = args[0]
    if not state.enabled or first.device.type != state.device_type:
        kernel[grid](*args, **consts)
        return
    device = first.get_device()
    key = (kernel, grid, device, tuple([_spec(a) for a in args]), tuple(consts.items()))
    plan = state.plans.get(key)
    if plan is not None:
        runner, tail = plan
        try:
            runner(*args, *tail, stream=current_stream(device))
            state.direct_calls += 1
            return
        except Exception as exc:  # an unexpected launcher API: never fail the op because of this path
            _disable(f"{type(exc).__name__}: {exc}")
    compiled = kernel[grid](*args, **consts)
    if state.enabled and not _hooks_installed():
        if len(state.plans) >= MAX_PLANS:
            state.plans.clear()
        try:
            plan = _plan(kernel, compiled, grid, len(args), consts)
        except Exception as exc:
            _disable(f"{type(exc).__name__}: {exc}")
            return
        if plan is not None:
            state.plans[key] = plan


def _disable(reason: str) -> None:
    state.enabled = False
    state.error = reason
    state.plans.clear()
    warnings.warn(f"progan_fast: direct Triton launches turned off ({reason}); using Triton's normal launch "
                  "path. Please report this with your Triton version.", RuntimeWarning, stacklevel=3)


def set_enabled(enabled: bool) -> None:
    """Turn the direct path on or off (on needs Triton >= 3.3)."""
    state.enabled = bool(enabled) and _version_ok()
    state.error = None
    state.plans.clear()
