"""Backend registry and selection: which implementation (ref | triton | cuda) runs an op.

Backends register per-op callables here. `impl="auto"` (the default everywhere) resolves, per call,
to the first backend in the op's measured preference list (AUTO_CUDA below) that implements the op
for the tensor's device; ref on CPU. A global default can be set
with `set_backend` or, scoped, with the `use_backend` context manager.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import warnings
from typing import Callable, Iterator

BACKENDS = ("ref", "triton", "cuda")
IMPLS = ("auto",) + BACKENDS

_registry: dict[str, dict[str, Callable]] = {name: {} for name in BACKENDS}
_loaders: dict[str, str] = {"triton": "progan_fast.triton", "cuda": "progan_fast._cuda_backend"}
_load_state: dict[str, bool | None] = {"ref": True, "triton": None, "cuda": None}
_load_errors: dict[str, str] = {}
_default: contextvars.ContextVar[str] = contextvars.ContextVar("progan_fast_backend", default="auto")
# What `auto` runs on CUDA tensors, per op (preference order; ops not listed use AUTO_DEFAULT_CUDA).
# Filled from measurements, not hopes: bench/results/2026-11-26_nvidia-h200_dd988d49.json (H200,
# torch 2.11, Triton 3.6) has the whole training step with every op on Triton at 0.56x (4 px) to
# 0.99x (16 px) of the eager reference, because each Triton op call pays ~0.1 ms of host-side
# dispatch (custom op + launcher), which outweighs the fused kernels at PGGAN's tensor sizes. So
# `auto` keeps the reference everywhere until a measured win lands here; `impl="triton"` /
# `--backend triton` opts in.
AUTO_DEFAULT_CUDA: tuple[str, ...] = ("ref",)
AUTO_CUDA: dict[str, tuple[str, ...]] = {}


def register(backend: str, op: str, fn: Callable) -> None:
    """Register `fn` as `backend`'s implementation of public op `op`."""
    if backend not in _registry:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    _registry[backend][op] = fn


def _ensure_loaded(backend: str) -> bool:
    """Import a backend's module once (it registers its ops); remember failures, never raise."""
    state = _load_state.get(backend)
    if state is not None:
        return state
    if os.environ.get(f"PROGAN_FAST_DISABLE_{backend.upper()}") == "1":
        _load_state[backend] = False
        _load_errors[backend] = f"disabled by PROGAN_FAST_DISABLE_{backend.upper()}=1"
        return False
    try:
        importlib.import_module(_loaders[backend])
        _load_state[backend] = True
    except Exception as exc:  # a broken optional backend must never break the package
        _load_state[backend] = False
        _load_errors[backend] = f"{type(exc).__name__}: {exc}"
        # The CUDA loader warns itself (once, with the rebuild command) and marks the error.
        if backend == "cuda" and not isinstance(exc, ModuleNotFoundError) and not getattr(exc, "progan_fast_warned", False):
            warnings.warn(f"progan_fast: CUDA extension unavailable ({_load_errors[backend]}); "
                          "falling back to Triton / reference. Rebuild with "
                          "`pip install --no-build-isolation -e .`", RuntimeWarning, stacklevel=3)
    return _load_state[backend]


def triton_interpret() -> bool:
    """True when Triton's CPU interpreter is on, so Triton kernels accept CPU tensors."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def backend_error(backend: str) -> str | None:
    """Why a backend failed to load (None if it loaded or was never tried)."""
    return _load_errors.get(backend)


def available_backends() -> list[str]:
    """Backends that imported successfully in this process."""
    return [b for b in BACKENDS if _ensure_loaded(b)]


def set_backend(impl: str) -> None:
    """Set the process-wide default backend used where an op is called with impl='auto'."""
    if impl not in IMPLS:
        raise ValueError(f"unknown backend {impl!r}; expected one of {IMPLS}")
    _default.set(impl)


def get_backend() -> str:
    return _default.get()


@contextlib.contextmanager
def use_backend(impl: str) -> Iterator[None]:
    """Run the enclosed code with `impl` as the default backend."""
    if impl not in IMPLS:
        raise ValueError(f"unknown backend {impl!r}; expected one of {IMPLS}")
    token = _default.set(impl)
    try:
        yield
    finally:
        _default.reset(token)


def _supports_device(backend: str, device_type: str) -> bool:
    if backend == "ref":
        return True
    if backend == "triton":
        return device_type == "cuda" or (device_type == "cpu" and triton_interpret())
    return device_type == "cuda"


def resolve(op: str, impl: str, device_type: str) -> Callable:
    """The callable that runs `op` for `impl` on a tensor of `device_type`."""
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; expected one of {IMPLS}")
    if impl == "auto":
        impl = _default.get()
    if impl != "auto":
        if not _supports_device(impl, device_type):
            raise RuntimeError(f"progan_fast.ops.{op}: impl={impl!r} cannot run on {device_type} tensors"
                               + (" (set TRITON_INTERPRET=1 to run Triton on CPU)" if impl == "triton" else ""))
        if not _ensure_loaded(impl):
            raise RuntimeError(f"progan_fast.ops.{op}: backend {impl!r} is unavailable: {_load_errors.get(impl)}")
        fn = _registry[impl].get(op)
        if fn is None:
            raise NotImplementedError(f"progan_fast.ops.{op} has no {impl!r} implementation")
        return fn
    order = AUTO_CUDA.get(op, AUTO_DEFAULT_CUDA) if device_type == "cuda" else ("ref",)
    for backend in order:
        if _supports_device(backend, device_type) and _ensure_loaded(backend) and op in _registry[backend]:
            return _registry[backend][op]
    return _registry["ref"][op]
