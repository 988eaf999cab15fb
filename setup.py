"""Build script. Builds progan_fast._C (kernels/*.cu + csrc/*.cpp) when a CUDA toolkit and a CUDA
build of torch are present, and installs the pure-Python package (Triton + reference) otherwise.

PROGAN_FAST_CUDA=0 forces the extension off, =1 forces it on (failing loudly if it cannot build).
TORCH_CUDA_ARCH_LIST is respected; default: the local GPU's arch, else 8.0;9.0.
"""
import glob
import importlib.util
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _read_version():
    ns = {}
    with open(os.path.join(ROOT, "progan_fast", "_version.py")) as f:
        exec(f.read(), ns)
    return ns["__version__"]


def _cuda_build():
    """progan_fast/_cuda_build.py, loaded by path (it needs only torch; importing the package would
    pull in the rest of progan_fast): its write_build_info writes pf_build_info.h for every build."""
    spec = importlib.util.spec_from_file_location("progan_fast_cuda_build",
                                                  os.path.join(ROOT, "progan_fast", "_cuda_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cuda_extension():
    """Return (ext_modules, cmdclass) for the CUDA extension, or ([], {}) when it cannot be built."""
    want = os.environ.get("PROGAN_FAST_CUDA", "auto")
    if want == "0":
        return [], {}
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("kernels", "*.cu")))
    _prefer_standard_cuda_home()
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except Exception as exc:
        if want == "1":
            raise RuntimeError(f"PROGAN_FAST_CUDA=1 but torch's extension tools are unavailable: {exc}")
        return [], {}
    reasons = []
    if not sources:
        reasons.append("no sources in csrc/ and kernels/")
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is not a CUDA build")
    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        reasons.append("no CUDA toolkit found (set CUDA_HOME, e.g. /usr/local/cuda)")
    if reasons:
        if want == "1":
            raise RuntimeError("PROGAN_FAST_CUDA=1 but the extension cannot be built: " + "; ".join(reasons))
        print("progan_fast: skipping the CUDA extension: " + "; ".join(reasons))
        return [], {}
    if "TORCH_CUDA_ARCH_LIST" not in os.environ:
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    gen_dir = os.path.join(ROOT, "build", "generated")
    _cuda_build().write_build_info(gen_dir, torch.__version__, os.environ["TORCH_CUDA_ARCH_LIST"], "setup.py")
    ext = CUDAExtension(
        name="progan_fast._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "kernels"), os.path.join(ROOT, "csrc"), gen_dir],
        extra_compile_args={"cxx": ["-O3"],
                            "nvcc": ["-O3", "-lineinfo"]},
    )
    build_ext = BuildExtension.with_options(use_ninja=True)
    if want == "1":
        return [ext], {"build_ext": build_ext}

    class BuildExtensionOrSkip(build_ext):
        """auto mode: a failed compile must not fail the install. The package then runs on Triton /
        the reference, and progan_fast warns at first use of impl="cuda" how to rebuild."""

        def run(self):
            try:
                super().run()
            except Exception as exc:  # compiler / linker errors surface as various exception types
                print(f"progan_fast: WARNING: the CUDA extension failed to build ({type(exc).__name__}: {exc}); "
                      "installing without it. Rebuild with PROGAN_FAST_CUDA=1 to see the error, "
                      "CUDA_HOME=<toolkit> if the toolkit was not found.", file=sys.stderr)

    return [ext], {"build_ext": BuildExtensionOrSkip}


def _prefer_standard_cuda_home():
    """torch finds the toolkit from $CUDA_HOME/$CUDA_PATH, else from `which nvcc`, else /usr/local/cuda. A
    wrapper script named nvcc in /usr/local/bin makes it guess /usr/local, which then fails to link
    -lcudart; prefer a real /usr/local/cuda in that case (must run before cpp_extension is imported)."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    standard = "/usr/local/cuda"
    if os.path.exists(os.path.join(standard, "bin", "nvcc")):
        os.environ["CUDA_HOME"] = standard


ext_modules, cmdclass = _cuda_extension()

setup(
    name="progan_fast",
    version=_read_version(),
    description="Fast, paper-exact Progressive Growing of GANs (PGGAN) for PyTorch",
    long_description=open(os.path.join(ROOT, "README.md")).read() if os.path.exists(os.path.join(ROOT, "README.md")) else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["progan_fast", "progan_fast.*"]),
    package_data={"progan_fast": ["data/bundled/*", "data/bundled/LICENSE*", "metrics/weights/*.pt", "ops/*.json"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.11",
        "numpy",
        "pillow",
        "tqdm",
    ],
    extras_require={
        "triton": ["triton>=3.6"],
        "dali": ["nvidia-dali-cuda130"],
        "tensorboard": ["tensorboard"],
        "test": ["pytest", "pytest-benchmark"],
        "build": ["ninja", "pybind11"],
    },
    entry_points={"console_scripts": [
        "progan-train=progan_fast.train:main",
        "progan-generate=progan_fast.generate:main",
        "progan-dataset=progan_fast.dataset:main",
        "progan-metrics=progan_fast.metrics.__main__:main",
    ]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
