"""Every Triton kernel the fused ops launch compiles for Hopper (sm_90) and Ampere (sm_80), and the
bandwidth-bound ones move data in 128-bit vectors.

The CPU suite runs kernels in Triton's interpreter, which never invokes the compiler; this test runs
bench/triton_ops_aot.py in a subprocess without TRITON_INTERPRET. The script records the launches
the launchers make for PGGAN shapes at GPU tile sizes and compiles each specialization with
Triton's compiler and bundled ptxas. No GPU is needed.
"""
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_launched_kernel_compiles_for_sm90_and_sm80():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "triton_ops_aot.py"), "--arch", "90", "80"],
                       capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    if r.returncode == 3:
        pytest.skip(r.stdout.strip() or r.stderr.strip())
    assert r.returncode == 0, (r.stdout[-4000:] + r.stderr[-4000:])
    assert " 0 failed" in r.stdout and "SPILLS" not in r.stdout, r.stdout[-4000:]


# The kernels that carry the activations' traffic, compiled as the JIT specializes them (aligned
# pointers, strides divisible by 16): in every dtype and layout they must load and store in 128-bit
# vectors, and in bf16 / fp16 never move a 16-bit element on its own (a prerequisite for the
# copy-bandwidth targets; an offset pointer or a lost contiguity hint shows up here as 2-byte accesses).
BANDWIDTH_KERNELS = ("bias_act_fwd_kernel", "bias_act_bwd_kernel", "pn_fwd_kernel", "pn_bwd_kernel",
                     "lerp_fwd_kernel", "lerp_bwd_kernel")
_LINE = re.compile(r"^sm_(\d+) (\w+)\s+regs \S+ stack \S+ smem \S+ ld ([\d,]*)B st ([\d,]*)B (\S+)", re.M)


def _widths(text):
    return {int(w) for w in text.split(",") if w}


def test_bandwidth_kernels_use_128_bit_accesses():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "triton_ops_aot.py"), "--arch", "90"],
                       capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    if r.returncode == 3:
        pytest.skip(r.stdout.strip() or r.stderr.strip())
    rows = [(name, ops, _widths(ld), _widths(st)) for _, name, ld, st, ops in _LINE.findall(r.stdout)]
    assert set(BANDWIDTH_KERNELS) <= {name for name, *_ in rows}, r.stdout[-2000:]
    half = ("bf16", "fp16")
    narrow = [(name, ops, ld, st) for name, ops, ld, st in rows if name in BANDWIDTH_KERNELS
              and (16 not in ld or 16 not in st or (ops.startswith(half) and 2 in ld | st))]
    assert not narrow, f"bandwidth kernels with narrow accesses: {narrow}"
    # the 2x2 resampling kernel on channels_last: vectors along the channels too
    quad = [(ops, ld, st) for name, ops, ld, st in rows if name == "quad_kernel" and ops.endswith("/CL")]
    assert quad and all(2 not in ld | st and max(ld) >= 8 and max(st) >= 8 for _, ld, st in quad), quad
