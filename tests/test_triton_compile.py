"""Every Triton kernel the fused ops launch compiles for Hopper (sm_90) and Ampere (sm_80).

The CPU suite runs kernels in Triton's interpreter, which never invokes the compiler; this test runs
bench/triton_ops_aot.py in a subprocess without TRITON_INTERPRET. The script records the launches
the launchers make for PGGAN shapes at GPU tile sizes and compiles each specialization with
Triton's compiler and bundled ptxas. No GPU is needed.
"""
import os
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
