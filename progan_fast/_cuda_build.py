"""Finding, validating and (if need be) JIT-building the compiled extension `progan_fast._C`.

`load()` returns a usable extension module or raises `CudaExtensionUnavailable` (an ImportError)
with the reason. A missing, stale (built against another torch) or broken `_C` is reported once
per process as a RuntimeWarning that says how to rebuild; where a CUDA toolkit and a GPU are present
and PROGAN_FAST_CUDA_JIT is not 0, the same sources are then compiled with
torch.utils.cpp_extension.load into a per-torch-version cache (minutes, once). On a machine with no
GPU nothing is warned or built: the extension is simply not used there.
"""
from __future__ import annotations

import glob
import importlib
import os
import warnings

import torch

REBUILD = "pip install --no-build-isolation -e .  (in the progan_fast source tree, with CUDA_HOME set)"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_warned: set[str] = set()


class CudaExtensionUnavailable(ImportError):
    """The compiled backend cannot be used. `progan_fast_warned`: the loader already warned (or chose
    to stay quiet, with no GPU), so ops._backend must not warn again."""

    def __init__(self, msg: str, warned: bool = False):
        super().__init__(msg)
        self.progan_fast_warned = warned


def _warn_once(reason: str) -> bool:
    if reason in _warned:
        return True
    _warned.add(reason)
    warnings.warn(f"progan_fast: CUDA extension unavailable: {reason}. Using Triton / the reference instead. "
                  f"Rebuild with: {REBUILD}", RuntimeWarning, stacklevel=4)
    return True


def stale_reason(info: dict) -> str | None:
    """Why an extension with build info `info` must not be used with this torch (None if fine)."""
    built = str(info.get("torch_version", "unknown"))
    if built != torch.__version__:
        return f"progan_fast._C was built against torch {built}, but torch {torch.__version__} is installed"
    rt = int(info.get("cuda_runtime_version", 0) or 0)
    if torch.version.cuda and rt:
        built_major = rt // 1000
        torch_major = int(torch.version.cuda.split(".")[0])
        if built_major != torch_major:
            return (f"progan_fast._C was compiled with CUDA {built_major}.x, but torch uses CUDA "
                    f"{torch.version.cuda}")
    return None


def _import_built():
    """The installed `progan_fast._C`, or (None, reason)."""
    try:
        mod = importlib.import_module("progan_fast._C")
    except ModuleNotFoundError:
        return None, "progan_fast._C is not built"
    except Exception as exc:  # undefined symbols after a torch upgrade, missing libraries, ...
        return None, f"progan_fast._C failed to load ({type(exc).__name__}: {exc})"
    try:
        info = dict(mod.build_info())
    except Exception as exc:
        return None, f"progan_fast._C has no usable build info ({exc})"
    reason = stale_reason(info)
    return (None, reason) if reason else (mod, None)


def sources() -> list[str]:
    """The extension's sources in a source checkout (empty in an installed wheel)."""
    return sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) + glob.glob(os.path.join(ROOT, "kernels", "*.cu")))


def _toolkit() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME
    if CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return CUDA_HOME
    return None


def jit_build():
    """Compile the sources with torch.utils.cpp_extension.load (ninja, cached per torch version)."""
    from torch.utils.cpp_extension import load
    srcs = sources()
    if not srcs:
        raise CudaExtensionUnavailable("no csrc/ and kernels/ sources next to the package to JIT-build from")
    if "TORCH_CUDA_ARCH_LIST" not in os.environ and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "native")
    tag = f"torch{torch.__version__}_cu{torch.version.cuda}".replace("+", "_").replace(".", "_")
    build_dir = os.path.join(os.environ.get("PROGAN_FAST_CACHE", os.path.expanduser("~/.cache/progan_fast")),
                             "cuda_ext", tag)
    os.makedirs(build_dir, exist_ok=True)
    gen = os.path.join(build_dir, "generated")
    write_build_info(gen, torch.__version__, archs, "jit")
    return load(name="progan_fast_C_jit", sources=srcs, build_directory=build_dir,
                extra_include_paths=[os.path.join(ROOT, "kernels"), os.path.join(ROOT, "csrc"), gen],
                extra_cflags=["-O3"], extra_cuda_cflags=["-O3", "-lineinfo"], verbose=False)


def write_build_info(directory: str, torch_version: str, arch_list: str, kind: str) -> str:
    """Write pf_build_info.h: the facts progan_fast._C reports through build_info() (load() compares
    torch_version with the running torch to catch a stale build). A generated header, not -D flags,
    because the values hold characters (';', '+') that shells and ninja mangle. Used by setup.py and
    the JIT build; CMakeLists.txt writes the same header. Rewritten only when it changes, so ninja's
    incremental build keeps working."""
    os.makedirs(directory, exist_ok=True)
    q = lambda v: '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731
    text = ("// Generated by the progan_fast build; do not edit.\n"
            f"#define PF_TORCH_VERSION {q(torch_version)}\n#define PF_CUDA_ARCH_LIST {q(arch_list)}\n"
            f"#define PF_BUILD_KIND {q(kind)}\n")
    path = os.path.join(directory, "pf_build_info.h")
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)
    return path


def load():
    """A usable extension module, or raise CudaExtensionUnavailable (warning once where it matters)."""
    mod, reason = _import_built()
    if mod is not None:
        return mod
    if not torch.cuda.is_available():
        # Nothing to run GPU kernels on: stay quiet (the reference / Triton interpreter serve CPU use).
        raise CudaExtensionUnavailable(f"{reason} (and no CUDA device is available)", warned=True)
    jit_ok = os.environ.get("PROGAN_FAST_CUDA_JIT", "1") != "0" and _toolkit() is not None and bool(sources())
    _warn_once(reason + ("; trying a one-time JIT build (minutes; PROGAN_FAST_CUDA_JIT=0 turns it off)"
                         if jit_ok else ""))
    if not jit_ok:
        raise CudaExtensionUnavailable(reason, warned=True)
    try:
        mod = jit_build()
    except Exception as exc:
        why = f"JIT build failed ({type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''})"
        _warn_once(why)
        raise CudaExtensionUnavailable(f"{reason}; {why}", warned=True) from exc
    stale = stale_reason(dict(mod.build_info()))
    if stale:
        raise CudaExtensionUnavailable(stale, warned=_warn_once(stale))
    return mod
