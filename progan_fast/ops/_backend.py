"""Backend registry and selection: which implementation (ref | triton | cuda) runs an op.

Backends register per-op callables here. `impl="auto"` (the default everywhere) resolves, per call,
to the first backend in the op's measured preference list for the GPU's architecture
(auto_backends.json, see AUTO_TABLE below) that implements the op and whose conditions the call
meets; ref on CPU. A list entry is a backend name, or a conditional choice
`{"backend": "triton", "min_numel": N, "layer": "g_conv"}`: taken only for calls whose main tensor
has at least N elements (and, for eq_conv2d, only for that kind of conv layer, see `conv_layer_kind`).
Fused kernels win where tensors are large and the device does the work, and lose where tensors are
small and a launch costs more on the host than the reference's aten calls; the threshold comes from
the bench, like the order. Inside `graph_mode()` (TrainStep's CUDA-graph path: warm-up and
capture) `auto` follows the arch's "graph_ops" lists instead where the table has them: derived from
CUDA-graph replays, they rank backends by device time alone, since a replay dispatches nothing on
the host. A global default can be set with `set_backend` or, scoped, with the `use_backend`
context manager.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import json
import os
import warnings
from typing import Callable, Iterator, NamedTuple

import torch

# "igemm": Triton's implicit-GEMM conv layer (eq_conv2d only; progan_fast/triton/conv_op.py), a
# backend of its own so that `auto` can pick it per conv-layer kind where the layer bench measures it
# faster than Triton's default conv layer (cuDNN conv + fused Triton epilogue) and the reference.
BACKENDS = ("ref", "triton", "cuda", "igemm")
IMPLS = ("auto",) + BACKENDS
DEFAULT_IMPLS = ("auto", "ref", "triton", "cuda")  # process-wide defaults: backends of every op

_registry: dict[str, dict[str, Callable]] = {name: {} for name in BACKENDS}
_loaders: dict[str, str] = {"triton": "progan_fast.triton", "cuda": "progan_fast._cuda_backend"}  # igemm: triton's
_load_state: dict[str, bool | None] = {"ref": True, "triton": None, "cuda": None, "igemm": None}
_load_errors: dict[str, str] = {}
_default: contextvars.ContextVar[str] = contextvars.ContextVar("progan_fast_backend", default="auto")
# What `auto` runs on CUDA tensors: a preference order per GPU architecture and op, derived from
# bench results by `python -m bench.auto_table RESULTS.json --write` (the rule and the source file
# of every entry are recorded in auto_backends.json). Architectures or ops not listed run AUTO_DEFAULT_CUDA.
# PROGAN_FAST_AUTO_TABLE=path reads another table (e.g. one just derived, before committing it).
AUTO_DEFAULT_CUDA: tuple[str, ...] = ("ref",)
AUTO_TABLE_PATH = os.environ.get("PROGAN_FAST_AUTO_TABLE") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "auto_backends.json")


class Choice(NamedTuple):
    """A conditional entry of an auto preference list: `backend` for calls with at least
    `min_numel` elements in their main tensor and, if `layer` is set, for that conv-layer kind only."""
    backend: str
    min_numel: int = 0
    layer: str | None = None

    def matches(self, numel: int | None, layer: str | None) -> bool:
        if self.layer is not None and self.layer != layer:
            return False
        return self.min_numel <= 0 or (numel is not None and numel >= self.min_numel)

    def explain(self) -> str:
        parts = [f"{self.layer} layers"] if self.layer else []
        if self.min_numel > 0:
            parts.append(f">= {self.min_numel / 1e6:.3g}M elements")
        return self.backend + (f" at {', '.join(parts)}" if parts else "")


def _entry(item):
    """A table item as loaded: a backend name stays a string, a dict becomes a Choice."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get("backend"), str):
        return Choice(item["backend"], int(item.get("min_numel", 0)), item.get("layer"))
    raise ValueError(f"bad preference entry {item!r}")


def _form(item) -> tuple[str, int]:
    """A "forms" entry as (form, min_numel): "fused" / "unfused", or {"form", "min_numel"}."""
    form, min_numel = (item.get("form"), item.get("min_numel", 0)) if isinstance(item, dict) else (item, 0)
    if form not in ("fused", "unfused"):
        raise ValueError(f"bad resampling form entry {item!r}")
    return form, int(min_numel)


def _load_auto_tables(path: str = AUTO_TABLE_PATH) -> tuple[dict, dict, dict]:
    """({arch: {op: preference list}} for eager calls ("ops"), the same for calls inside CUDA graphs
    ("graph_ops"), {arch: {layer kind: (form, min_numel)}} ("forms": "fused" | "unfused", or
    {"form": "fused", "min_numel": N}, fused from N input elements on) from auto_backends.json;
    all empty (reference everywhere, unfused) if unreadable."""
    try:
        with open(path) as f:
            doc = json.load(f)
        archs = doc.get("archs", {})
        eager, graph = ({arch: {op: tuple(_entry(e) for e in order) for op, order in entry.get(key, {}).items()}
                         for arch, entry in archs.items()} for key in ("ops", "graph_ops"))
        forms = {arch: {str(k): _form(v) for k, v in entry.get("forms", {}).items()} for arch, entry in archs.items()}
        return eager, graph, forms
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        warnings.warn(f"progan_fast: cannot read {path} ({exc}); impl='auto' runs the reference on CUDA",
                      RuntimeWarning, stacklevel=2)
        return {}, {}, {}


AUTO_TABLE, AUTO_TABLE_GRAPH, AUTO_FORMS = _load_auto_tables()
_graph_mode: contextvars.ContextVar[bool] = contextvars.ContextVar("progan_fast_graph_mode", default=False)


# Dynamo in torch 2.11 cannot trace ContextVar.get: every op call of a compiled model broke its graph
# there (a small Generator's forward compiled as 19 graphs). Under torch.compile the two settings are
# read from these module attributes instead, kept equal to the ContextVars by set_backend, use_backend
# and graph_mode: Dynamo guards the attributes it reads, so code compiled under one backend is traced
# again when it runs under another (a constant folded in without a guard would keep the first backend
# for every later compile of the same code, in the whole process).
_compile_view = {"default": "auto", "graph_mode": False}


def _sync_compile_view() -> None:
    _compile_view["default"], _compile_view["graph_mode"] = _default.get(), _graph_mode.get()


def _default_impl() -> str:
    return _compile_view["default"] if torch.compiler.is_compiling() else _default.get()


def _in_graph_mode() -> bool:
    return _compile_view["graph_mode"] if torch.compiler.is_compiling() else _graph_mode.get()


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


def conv_layer_kind(k: int, up: bool, down: bool, pixel_norm: bool, act: str, fused_scale: bool = False) -> str | None:
    """The bench's name for a PGGAN conv layer of this form (bench/test_bench_layers.py), which
    conditional eq_conv2d entries of the auto table refer to; None for forms the bench does not time."""
    if k == 1 and not (up or down):
        return "to_rgb" if act == "linear" else "from_rgb"
    if k == 4 and not (up or down):
        return "d_dense4"
    if k != 3:
        return None
    suffix = "_fused" if fused_scale else ""
    if up:
        return "g_up" + suffix
    if down:
        return "d_down" + suffix
    return "g_conv" if pixel_norm else "d_conv"


@contextlib.contextmanager
def graph_mode(enabled: bool = True) -> Iterator[None]:
    """`auto` picks by the arch's CUDA-graph lists ("graph_ops") inside: for code that is warmed up and
    then captured in a CUDA graph. Enter it around the warm-up as well as the capture, so both run the
    same backends (nothing may compile or autotune during a capture)."""
    token = _graph_mode.set(enabled)
    _sync_compile_view()
    try:
        yield
    finally:
        _graph_mode.reset(token)
        _sync_compile_view()


def _arch_of(device) -> str | None:
    """The GPU architecture of a CUDA `device` (torch.device or device-type string); None off CUDA."""
    if getattr(device, "type", device) != "cuda":
        return None
    return cuda_arch(getattr(device, "index", None))


def preferred_form(layer: str | None, device, numel: int | None = None) -> str | None:
    """"fused" where the table measured the fused_scale form of this up/down layer kind faster (the
    same function with 44 % of the FLOPs: `auto` may run it instead), from its size threshold on
    (`numel`: the layer input's elements; None counts as large); "unfused" where it measured the
    fused form slower; None where it has no entry."""
    arch = _arch_of(device) if layer is not None else None
    entry = None if arch is None else AUTO_FORMS.get(arch, {}).get(layer)
    if entry is None:
        return None
    form, min_numel = entry
    if form == "fused" and numel is not None and numel < min_numel:
        return "unfused"
    return form


def _entries(op: str, device) -> tuple:
    arch = _arch_of(device)
    if arch is None:
        return ("ref",)
    eager = AUTO_TABLE.get(arch, {}).get(op, AUTO_DEFAULT_CUDA)
    if _in_graph_mode():
        graph = AUTO_TABLE_GRAPH.get(arch, {}).get(op)
        if graph is not None:
            return graph
        # No graph measurements of this op: its eager list, without per-layer choices (the layer
        # bench has no graph cases; eq_conv2d then follows its epilogue's graph list, see ops)
        return tuple(e for e in eager if not (isinstance(e, Choice) and e.layer))
    return eager


def auto_order(op: str, device, numel: int | None = None, layer: str | None = None) -> tuple[str, ...]:
    """The backends `auto` tries for `op` on `device` (a torch.device or a device-type string), in
    order, for a call whose main tensor has `numel` elements (None: conditional entries never match)
    and, for eq_conv2d, the layer kind `layer`."""
    return tuple(e if isinstance(e, str) else e.backend for e in _entries(op, device)
                 if isinstance(e, str) or e.matches(numel, layer))


def auto_prefers_other_than_ref(op: str, device) -> bool:
    """Whether `auto`'s list for `op` on `device` names anything but the reference (at any size)."""
    return any((e if isinstance(e, str) else e.backend) != "ref" for e in _entries(op, device))


def has_layer_entries(op: str, device, layer: str | None) -> bool:
    """Whether `auto`'s list for `op` on `device` decides conv layers of kind `layer` itself (the
    bench measured that kind), rather than leaving them to the epilogue's list."""
    return layer is not None and any(isinstance(e, Choice) and e.layer == layer for e in _entries(op, device))


def implementation(backend: str, op: str) -> Callable:
    """`backend`'s registered callable for `op` (the backend must be loaded: see `backend_for`)."""
    return _registry[backend][op]


def register(backend: str, op: str, fn: Callable) -> None:
    """Register `fn` as `backend`'s implementation of public op `op`."""
    if backend not in _registry:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    _registry[backend][op] = fn


@torch.compiler.assume_constant_result  # torch.compile runs it at trace time: the import cannot be traced
def _ensure_loaded(backend: str) -> bool:
    """Import a backend's module once (it registers its ops); remember failures, never raise. The
    answer never changes once given, so torch.compile may take it as a constant."""
    state = _load_state.get(backend)
    if state is not None:
        return state
    if os.environ.get(f"PROGAN_FAST_DISABLE_{backend.upper()}") == "1":
        _load_state[backend] = False
        _load_errors[backend] = f"disabled by PROGAN_FAST_DISABLE_{backend.upper()}=1"
        return False
    if backend == "igemm":  # part of the Triton backend, which registers it when its import works
        error = None
        if not _ensure_loaded("triton"):
            error = f"needs the triton backend: {_load_errors.get('triton')}"
        elif "eq_conv2d" not in _registry["igemm"]:
            import progan_fast.triton as triton_backend
            error = f"the implicit-GEMM conv failed to import: {triton_backend.IGEMM_ERROR}"
        if error:
            _load_errors[backend] = error
        _load_state[backend] = error is None
        return _load_state[backend]
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


def _check_default(impl: str) -> None:
    if impl not in DEFAULT_IMPLS:
        extra = " (igemm implements eq_conv2d only: pass impl='igemm' to that op)" if impl == "igemm" else ""
        raise ValueError(f"unknown default backend {impl!r}; expected one of {DEFAULT_IMPLS}{extra}")


def set_backend(impl: str) -> None:
    """Set the process-wide default backend used where an op is called with impl='auto'."""
    _check_default(impl)
    _default.set(impl)
    _sync_compile_view()


def get_backend() -> str:
    return _default_impl()


@contextlib.contextmanager
def use_backend(impl: str) -> Iterator[None]:
    """Run the enclosed code with `impl` as the default backend."""
    _check_default(impl)
    token = _default.set(impl)
    _sync_compile_view()
    try:
        yield
    finally:
        _default.reset(token)
        _sync_compile_view()


def _supports_device(backend: str, device_type: str) -> bool:
    if backend == "ref":
        return True
    if backend in ("triton", "igemm"):
        return device_type == "cuda" or (device_type == "cpu" and triton_interpret())
    return device_type == "cuda"


def resolve(op: str, impl: str, device, numel: int | None = None, layer: str | None = None) -> Callable:
    """The callable that runs `op` for `impl` on a tensor on `device` (a torch.device, or a device-type
    string; `auto` needs the device for the GPU architecture, and the call's size, `numel`, and conv
    layer kind, `layer`, for the table's conditional entries)."""
    return implementation(backend_for(op, impl, device, numel, layer), op)


def backend_for(op: str, impl: str, device, numel: int | None = None, layer: str | None = None) -> str:
    """The name of the backend that runs `op` for `impl` on `device` (errors as `resolve`)."""
    device_type = getattr(device, "type", device)
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; expected one of {IMPLS}")
    if impl == "auto":
        impl = _default_impl()
    if impl != "auto":
        if not _supports_device(impl, device_type):
            raise RuntimeError(f"progan_fast.ops.{op}: impl={impl!r} cannot run on {device_type} tensors"
                               + (" (set TRITON_INTERPRET=1 to run Triton on CPU)" if impl in ("triton", "igemm") else ""))
        if not _ensure_loaded(impl):
            raise RuntimeError(f"progan_fast.ops.{op}: backend {impl!r} is unavailable: {_load_errors.get(impl)}")
        if op not in _registry[impl]:
            raise NotImplementedError(f"progan_fast.ops.{op} has no {impl!r} implementation")
        return impl
    for backend in auto_order(op, device, numel, layer):
        if _usable(backend, op, device_type):
            return backend
    return "ref"


def _usable(backend: str, op: str, device_type: str) -> bool:
    return _supports_device(backend, device_type) and _ensure_loaded(backend) and op in _registry[backend]


def describe(device) -> str:
    """One line saying which backend runs each op on `device` under the current default, e.g.
    'ref (fade_reals: triton; pixel_norm: triton at >= 33.6M elements)': the most common backend
    first, the exceptions in parentheses; then what differs inside CUDA graphs (`graph_mode`)."""
    text = _describe(device)
    if getattr(device, "type", device) == "cuda" and not _graph_mode.get() and _default.get() == "auto":
        with graph_mode():
            in_graphs = _describe(device)
        if in_graphs != text:
            text += f"; in CUDA graphs: {in_graphs}"
    return text


def _describe(device) -> str:
    by_backend: dict[str, list[str]] = {}
    for op in sorted(_registry["ref"]):
        by_backend.setdefault(backend_for(op, "auto", device), []).append(op)
    ranked = sorted(by_backend.items(), key=lambda kv: -len(kv[1]))
    main, rest = ranked[0][0], ranked[1:]
    exceptions = ["; ".join(", ".join(names) + ": " + backend for backend, names in rest)] if rest else []
    device_type = getattr(device, "type", device)
    if _default.get() == "auto":  # conditional choices, which the size-less answer above does not show
        for op in sorted(_registry["ref"]):
            conditional = [e.explain() for e in _entries(op, device)
                           if isinstance(e, Choice) and (e.min_numel > 0 or e.layer) and e.backend != "ref"
                           and _usable(e.backend, op, device_type)]
            if conditional:
                exceptions.append(f"{op}: " + ", ".join(conditional))
    return main + (f" ({'; '.join(exceptions)})" if exceptions else "")
