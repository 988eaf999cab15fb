"""Compile the fused conv kernel for sm_80 / sm_90 *without a GPU* and report registers, spills and
shared memory per autotune config (Triton's bundled ptxas + cuobjdump). A development check that the
configs in progan_fast/triton/conv.py neither spill nor exceed shared memory; uses Triton internals
(`ASTSource`, checked with Triton 3.8), so it is a script, not a test.

    python bench/triton_conv_aot.py [--arch 90 80] [--dtype bf16]
"""
import argparse

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton_ops_aot import resource_usage  # sibling script (bench/ is on sys.path when run as a script)

from progan_fast.triton import conv

_DIVISIBLE = ["x_ptr", "w_ptr", "y_ptr", "b_ptr", "r_ptr", "C_IN", "C_OUT", "H", "W", "HO", "WO", "HP", "WP",
              "sxn", "sxh", "sxw", "syn", "syh", "syw"]  # what a real launch specializes for PGGAN shapes


def compile_one(arch, dtype, layer, meta, num_warps, num_stages):
    kern = conv._eq_conv_fwd_kernel
    names = kern.arg_names
    sig = {n: "i32" for n in names}
    sig.update({n: f"*{dtype}" for n in ("x_ptr", "w_ptr", "y_ptr")})
    sig.update(b_ptr="*fp32", r_ptr="*fp32", scale="fp32", slope="fp32", eps="fp32")
    const = dict(layer, HAS_BIAS=True, LRELU=True, PRECISION="ieee" if dtype == "fp32" else "tf32",
                 ACC_DTYPE=tl.float32, sxc=1, syc=1, **meta)  # channels_last: C stride 1
    sig.update({c: "constexpr" for c in const})
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in _DIVISIBLE}
    src = ASTSource(fn=kern, signature=sig, constexprs=const, attrs=attrs)
    cc = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                        options=dict(num_warps=num_warps, num_stages=num_stages))
    regs, stack = resource_usage(cc)
    return regs, stack, cc.metadata.shared, "wgmma" in cc.asm["ptx"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    args = ap.parse_args()
    plain = dict(KT=3, PH=1, IS=1, PAD=1, UP=False)
    layers = {"3x3": (plain, False), "down": (dict(KT=4, PH=1, IS=2, PAD=1, UP=False), False),
              "up+PN": (dict(KT=2, PH=2, IS=1, PAD=1, UP=True), True)}
    print(f"{'arch':>4} {'layer':<6} {'BMxBNxBK':<12} {'w':>2} {'s':>2} {'regs':>4} {'spill B':>7} {'smem':>7} wgmma")
    for arch in args.arch:
        for lname, (layer, pn) in layers.items():
            cfgs = conv._PN_CONFIGS if pn else conv._GENERAL_CONFIGS
            for c in cfgs:
                meta = dict(c.kwargs)
                meta.setdefault("BLOCK_N", 512)  # pixel norm over 512 channels: PGGAN's widest
                if meta["BLOCK_M"] * meta["BLOCK_N"] > 128 * 256:
                    continue  # pruned at run time
                regs, stack, smem, wg = compile_one(arch, args.dtype, dict(layer, PIXEL_NORM=pn), meta,
                                                    c.num_warps, c.num_stages)
                tile = f"{meta['BLOCK_M']}x{meta['BLOCK_N']}x{meta['BLOCK_K']}"
                print(f"{arch:>4} {lname:<6} {tile:<12} {c.num_warps:>2} {c.num_stages:>2} {regs:>4} {stack:>7} "
                      f"{smem:>7} {'yes' if wg else ''}", flush=True)


if __name__ == "__main__":
    main()
