"""Backend registry and selection: which implementation (ref | triton | cuda) runs an op.

Backends register per-op callables here. `impl="auto"` (the default everywhere) resolves, per call,
to the first backend in the op's measured preference list for the GPU's architecture
(auto_backends.json, see AUTO_TABLE below) that implements the op; ref on CPU. A global default can be set
with `set_backend` or, scoped, with the `use_backend` context manager.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import json
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
# What `auto` runs on CUDA tensors: a preference order per GPU architecture and op, derived from
# bench results by `python -m bench.auto_table RESULTS.json --write` (the rule and the source file
# of every entry are recorded in auto_backends.json). Architectures or ops not listed run AUTO_DEFAULT_CUDA.
AUTO_DEFAULT_CUDA: tuple[str, ...] = ("ref",)
AUTO_TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "auto_backends.json")


def _load_auto_table(path: str = AUTO_TABLE_PATH) -> dict[str, dict[str, tuple[str, ...]]]:
    """{arch: {op: preference order}} from auto_backends.json; empty (reference everywhere) if unreadable."""
    try:
        with open(path) as f:
            doc = json.load(f)
        return {arch: {op: tuple(order) for op, order in entry.get("ops", {}).items()}
                for arch, entry in doc.get("archs", {}).items()}
    except (OSError, ValueError, AttributeError) as exc:
        warnings.warn(f"progan_fast: cannot read {path} ({exc}); impl='auto' runs the reference on CUDA",
                      RuntimeWarning, stacklevel=2)
        return {}


AUTO_TABLE: dict[str, dict[str, tuple[str, ...]]] = _load_auto_table()
_arch_of_index: dict[int, str] = {}


def cuda_arch(index: int | None = None) -> str:
    """'sm_90' for a compute-capability-9.0 device (cached per device index)."""
    import torch
    if index is None:
        index = torch.cuda.current_device()
    arch = _arch_of_index.get(index)
    if arch is None:
        major, minor = torch.cuda.get_device_capability(index)
        arch = _arch_of_index[index] = f"sm_{major}{minor}"
    return arch


def auto_order(op: str, device) -> tuple[str, ...]:
    """The backends `auto` tries for `op` on `device` (a torch.device or a device-type string), in order."""
    if getattr(device, "type", device) != "cuda":
        return ("ref",)
    return AUTO_TABLE.get(cuda_arch(getattr(device, "index", None)), {}).get(op, AUTO_DEFAULT_CUDA)


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


def resolve(op: str, impl: str, device) -> Callable:
    """The callable that runs `op` for `impl` on a tensor on `device` (a torch.device, or a device-type
    string; `auto` needs the device for the GPU architecture)."""
    return _registry[backend_for(op, impl, device)][op]


def backend_for(op: str, impl: str, device) -> str:
    """The name of the backend that runs `op` for `impl` on `device` (errors as `resolve`)."""
    device_type = getattr(device, "type", device)
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
        if op not in _registry[impl]:
            raise NotImplementedError(f"progan_fast.ops.{op} has no {impl!r} implementation")
        return impl
    for backend in auto_order(op, device):
        if _supports_device(backend, device_type) and _ensure_loaded(backend) and op in _registry[backend]:
            return backend
    return "ref"


def describe(device) -> str:
    """One line saying which backend runs each op on `device` under the current default, e.g.
    'ref (fade_reals: triton)': the most common backend first, the exceptions in parentheses."""
    by_backend: dict[str, list[str]] = {}
    for op in sorted(_registry["ref"]):
        by_backend.setdefault(backend_for(op, "auto", device), []).append(op)
    ranked = sorted(by_backend.items(), key=lambda kv: -len(kv[1]))
    main, rest = ranked[0][0], ranked[1:]
    exceptions = "; ".join(", ".join(names) + ": " + backend for backend, names in rest)
    return main + (f" ({exceptions})" if rest else "")
