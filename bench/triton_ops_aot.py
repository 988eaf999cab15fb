"""Compile every Triton kernel the fused ops launch, for sm_90 / sm_80, *without a GPU*.

The CPU test suite runs the kernels under TRITON_INTERPRET=1, which executes them as numpy and never
runs Triton's compiler: a kernel can pass every interpreter test and still fail to compile (types
that change across a loop, an unsupported construct). This script records the launches the
launchers really make for representative PGGAN shapes (GPU tile sizes, bf16 / fp16 / fp32,
NCHW / channels_last, bias gradients fused or not) without running anything, then compiles each
distinct specialization with Triton's compiler and bundled ptxas, and reports registers, spills and
shared memory. tests/test_triton_compile.py runs it in CI. Uses Triton internals (`ASTSource`,
`GPUTarget`; checked with Triton 3.8): exits 3 where they differ.

    python bench/triton_ops_aot.py [--arch 90 80]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile mode: @triton.jit must build JITFunctions

import torch  # noqa: E402

try:
    import triton  # noqa: E402
    from triton.backends.compiler import GPUTarget  # noqa: E402
    from triton.compiler import ASTSource  # noqa: E402
except ImportError as exc:  # pragma: no cover - depends on the installed Triton
    print(f"triton_ops_aot: unsupported Triton ({exc})")
    sys.exit(3)

from progan_fast._layout import memory_format  # noqa: E402
from progan_fast.triton import launchers  # noqa: E402

GPU_TILE = 2048  # what launchers._tile_elems gives CUDA tensors


def record_launches() -> list:
    """Call every launcher on CPU tensors with the launch replaced by a recorder (nothing runs)."""
    seen = []

    def recorder(kernel, grid, args, consts):
        seen.append((kernel, args, dict(consts)))

    real = launchers.launch, launchers._interpret, launchers._tile_elems
    launchers.launch, launchers._interpret, launchers._tile_elems = recorder, (lambda: True), (lambda t: GPU_TILE)
    try:
        L = launchers
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for cl in (False, True):
                def t(*shape):
                    x = torch.randn(*shape).to(dtype)
                    return x.contiguous(memory_format=torch.channels_last) if cl and x.dim() == 4 else x
                x, b, lo = t(4, 512, 8, 8), torch.randn(512), t(4, 512, 4, 4)
                alpha = torch.tensor(0.5)
                for act in ("linear", "lrelu"):
                    L.bias_act(x, b, act, 0.2, 1.4, 1)
                    L.bias_act_grad(x, x, act, 0.2, 1.4)
                    L.bias_act_grad_db(x, x, act, 0.2, 1.4, 1)
                L.bias_act(t(16, 512), b, "lrelu", 0.2, 1.4, 1)  # G's dense layer
                L.bias_act_pixel_norm(x, b, "lrelu", 0.2, 1.4, 1e-8)
                L.bias_act_pixel_norm_grad(x, x, b, "lrelu", 0.2, 1.4, 1e-8)
                L.bias_act_pixel_norm_grad_db(x, x, b, "lrelu", 0.2, 1.4, 1e-8)
                L.pixel_norm(t(16, 512), 1e-8, 1)
                big = t(64, 512, 16, 16)  # large enough that bias-gradient programs walk several blocks
                L.bias_act_grad_db(big, big, "lrelu", 0.2, 1.4, 1)
                L.bias_act_pixel_norm_grad_db(big, big, b, "lrelu", 0.2, 1.4, 1e-8)
                L.minibatch_stddev(t(16, 512, 4, 4), 4, 1e-8)
                L.minibatch_stddev_grad(t(16, 513, 4, 4), t(16, 512, 4, 4), 4, 1e-8)
                for a_t, a in ((None, 0.3), (alpha, 0.0)):
                    L.lerp(x, x, a_t, a)
                    L.lerp_grad(x, a_t, a)
                    L.upsample_blend(x, lo, a_t, a)
                    L.upsample_blend_grad(x, a_t, a)
                    L.fade_reals(x, a_t, a)
                L.downsample2x(x)
                L.downsample2x_grad(lo)
        saved = launchers.PN_MAX_ONE_CHUNK
        launchers.PN_MAX_ONE_CHUNK = 256  # the C > one-chunk pixel-norm path
        try:
            x = torch.randn(4, 512, 8, 8).to(torch.bfloat16)
            L.bias_act_pixel_norm(x, torch.randn(512), "lrelu", 0.2, 1.4, 1e-8)
            L.bias_act_pixel_norm_grad(x, x, torch.randn(512), "lrelu", 0.2, 1.4, 1e-8)
        finally:
            launchers.PN_MAX_ONE_CHUNK = saved
    finally:
        launchers.launch, launchers._interpret, launchers._tile_elems = real
    return seen


_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64",
           torch.int64: "i64", torch.int32: "i32"}


def signature(kernel, args, consts) -> tuple[dict, dict]:
    """Triton's signature for a recorded launch: pointers by dtype, ints i32/i64 by value, floats fp32."""
    names = kernel.arg_names
    sig, const = {}, {}
    for name, value in zip(names, args):
        if isinstance(value, torch.Tensor):
            sig[name] = "*" + _DTYPES[value.dtype]
        elif isinstance(value, bool):
            sig[name] = "i1"
        elif isinstance(value, int):
            sig[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
        else:
            sig[name] = "fp32"
    for param in kernel.params[len(args):]:
        value = consts[param.name] if param.name in consts else param.default
        if param.is_constexpr:
            sig[param.name] = "constexpr"
            const[param.name] = value
        else:  # a runtime scalar the launcher passes by keyword (slope, gain, eps)
            sig[param.name] = "fp32" if isinstance(value, float) else "i32"
    options = {k: v for k, v in consts.items() if k not in names}
    return sig, const, options


def resource_usage(cc) -> tuple[int | None, int | None]:
    """(registers, stack bytes: > 0 means spills) of a compiled kernel, read with Triton's bundled
    cuobjdump; (None, None) where that tool is missing."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cc.asm["cubin"])
    usage = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    os.unlink(f.name)
    regs = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    return int(regs.group(1)) if regs else None, int(stack.group(1)) if stack else None


def jit_specialization(kernel, args, consts, arch: int):
    """(signature, constexprs, attrs, options) exactly as `kernel[grid](*args, **consts)` would
    specialize on a GPU: 16-byte-aligned pointers and ints divisible by 16 are marked so, ints equal
    to 1 become constants. Those attributes decide vectorization; compiling without them yields a
    different (more generic) kernel than the one that runs. None where this Triton lacks the internals."""
    try:
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature
        backend = make_backend(GPUTarget("cuda", arch, 32))
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        bound, spec, options = binder(*args, **consts)
        options, sig, constexprs, attrs = kernel._pack_args(backend, consts, bound, spec, options)
    except (ImportError, AttributeError, TypeError):
        return None
    return sig, constexprs, attrs, options


_ACCESS = re.compile(r"\b(ld|st)\.global(?:\.[A-Za-z_0-9:]+)*?\.(?:v(\d)\.)?[bfsu](\d+)\b")


def access_widths(ptx: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Byte widths of the global loads and of the global stores in `ptx` (16 = 128-bit vectors; a 2
    in a bf16 / fp16 kernel means some 16-bit elements move one at a time)."""
    widths = {"ld": set(), "st": set()}
    for op, lanes, bits in _ACCESS.findall(ptx):
        widths[op].add(int(lanes or 1) * int(bits) // 8)
    return tuple(sorted(widths["ld"])), tuple(sorted(widths["st"]))


def compile_launch(kernel, args, consts, arch: int):
    """(registers, stack bytes, shared memory, load widths, store widths) of the kernel the JIT would
    build for this launch."""
    exact = jit_specialization(kernel, args, consts, arch)
    if exact is not None:
        sig, const, attrs, options = exact
        src = ASTSource(kernel, sig, const, attrs)
        options = options.__dict__ if hasattr(options, "__dict__") else options
    else:  # generic: no alignment attributes (Triton internals differ)
        sig, const, options = signature(kernel, args, consts)
        src = ASTSource(fn=kernel, signature=sig, constexprs=const)
    cc = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    return (*resource_usage(cc), cc.metadata.shared, *access_widths(cc.asm["ptx"]))


def _operands(args) -> str:
    """dtype and layout of the launch's main operand: 'bf16/CL', 'bf16/NC' (4-D), 'bf16/2D' ([N, C])."""
    t4 = [a for a in args if isinstance(a, torch.Tensor) and a.dim() == 4]
    if not t4:
        t2 = [a for a in args if isinstance(a, torch.Tensor) and a.dim() == 2]
        return f"{_DTYPES[t2[0].dtype]}/2D" if t2 else "-"
    cl = any(memory_format(t) == torch.channels_last for t in t4)
    return f"{_DTYPES[t4[0].dtype]}/{'CL' if cl else 'NC'}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    args = ap.parse_args(argv)
    launches = record_launches()
    unique = {}
    for kernel, a, consts in launches:
        sig, const, options = signature(kernel, a, consts)
        exact = jit_specialization(kernel, a, consts, args.arch[0])
        key = (kernel.__name__, tuple(sorted(sig.items())), tuple(sorted((k, str(v)) for k, v in const.items())),
               tuple(sorted(options.items())), str(exact[2]) if exact else "")
        unique.setdefault(key, (kernel, a, consts))
    print(f"{len(launches)} launches recorded, {len(unique)} distinct specializations")
    failures = 0
    for arch in args.arch:
        for (name, _, const, options, _), (kernel, a, consts) in sorted(unique.items(), key=lambda kv: kv[0][0]):
            desc = " ".join(f"{k}={v}" for k, v in const if k not in ("ACC",))
            try:
                regs, stack, smem, ld, st = compile_launch(kernel, a, consts, arch)
            except Exception as exc:
                failures += 1
                print(f"FAIL sm_{arch} {name} {desc}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                continue
            flag = "  SPILLS" if stack else ""
            print(f"sm_{arch} {name:22s} regs {regs} stack {stack} smem {smem} "
                  f"ld {','.join(map(str, ld))}B st {','.join(map(str, st))}B "
                  f"{_operands(a)}  {desc}{flag}")
    print(f"compiled {len(unique) * len(args.arch) - failures} of {len(unique) * len(args.arch)}; "
          f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
