"""Every Triton kernel the fused ops launch compiles for Hopper (sm_90) and Ampere (sm_80), and the
bandwidth-bound ones move their data in 128-bit vectors.

The CPU suite runs kernels in Triton's interpreter, which never invokes the compiler; these tests run
bench/triton_ops_aot.py once, in a subprocess without TRITON_INTERPRET. The script records the
launches the launchers make for PGGAN shapes at GPU tile sizes and compiles each one as the JIT
would specialize it (aligned pointers, strides divisible by 16) with Triton's compiler and bundled
ptxas, printing registers, spills, shared memory and the byte widths of its global loads / stores.
No GPU is needed.
"""
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LINE = re.compile(r"^sm_(\d+) (\w+)\s+regs \S+ stack \S+ smem \S+ ld ([\d,]*)B st ([\d,]*)B (\S+)\s*(.*)$", re.M)


@pytest.fixture(scope="module")
def aot_report() -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "triton_ops_aot.py"), "--arch", "90", "80"],
                       capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    if r.returncode == 3:
        pytest.skip(r.stdout.strip() or r.stderr.strip())
    assert r.returncode == 0, (r.stdout[-4000:] + r.stderr[-4000:])
    return r.stdout


def test_every_launched_kernel_compiles_for_sm90_and_sm80(aot_report):
    assert " 0 failed" in aot_report and "SPILLS" not in aot_report, aot_report[-4000:]


def _widths(text):
    return {int(w) for w in text.split(",") if w}


def _expected(name: str, alpha_ptr: bool):
    """(allowed load widths, allowed store widths) of a bandwidth kernel; 16 must be among both.
    Besides the 16-byte activation vectors: a 4-byte fade factor read through a pointer (lerp),
    4-byte fp32 bias-gradient partials (bias_act_bwd, NCHW), 8-byte fp32 bias / partial vectors
    (the pixel-norm family spreads BLOCK_C fp32 values over 256 threads)."""
    if name in ("bias_act_fwd_kernel", "lerp_fwd_kernel", "lerp_bwd_kernel"):
        return ({4, 16} if alpha_ptr else {16}), {16}
    if name == "bias_act_bwd_kernel":
        return {16}, {4, 16}
    return {8, 16}, {8, 16}  # pn_fwd_kernel, pn_bwd_kernel


BANDWIDTH_KERNELS = ("bias_act_fwd_kernel", "bias_act_bwd_kernel", "pn_fwd_kernel", "pn_bwd_kernel",
                     "lerp_fwd_kernel", "lerp_bwd_kernel")


def test_bandwidth_kernels_use_128_bit_accesses(aot_report):
    """The kernels that carry the activations' traffic, in every dtype and layout (bf16 / fp16 / fp32;
    NCHW, channels_last, [N, C]) on both archs: the activations move in 16-byte vectors, and no
    access is narrower than the kernel's known side operands. An offset pointer or a lost
    contiguity hint shows up here as 2-byte (or 4-byte) accesses."""
    rows = [(name, ops, _widths(ld), _widths(st), "HAS_ALPHA_PTR=True" in desc)
            for _, name, ld, st, ops, desc in _LINE.findall(aot_report)]
    assert set(BANDWIDTH_KERNELS) <= {r[0] for r in rows}, aot_report[-2000:]
    bad = []
    for name, ops, ld, st, alpha in rows:
        if name in BANDWIDTH_KERNELS:
            ok_ld, ok_st = _expected(name, alpha)
            if not (16 in ld and 16 in st and ld <= ok_ld and st <= ok_st):
                bad.append((name, ops, sorted(ld), sorted(st)))
    assert not bad, f"bandwidth kernels with narrow accesses: {bad}"
    # the 2x2 resampling kernel on channels_last: at least 64-bit vectors along the channels
    quad = [(ops, ld, st) for name, ops, ld, st, _ in rows if name == "quad_kernel" and ops.endswith("/CL")]
    assert quad and all(2 not in ld | st and max(ld) >= 8 and max(st) >= 8 for _, ld, st in quad), quad
