"""The step anatomy's counting (bench/step_anatomy.py): bytes per kernel, FLOPs against the analytic
model FLOPs, what the fused variants remove, and `auto` resolved as on a GPU architecture."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from progan_fast.ops import _backend

from . import step_anatomy as sa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(fmap_base=256, fmap_decay=1.0, fmap_max=32)  # 32 channels: a paper-shaped step in ~0.2 s


def _trace(res, variant, **kw):
    return sa.trace_step(res, variant, batch=4, fmap=SMALL, model_res=32, **kw)


def test_bytes_count_memory_extent_in_place_writes_and_skip_views():
    x, y, b = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5), torch.randn(3)
    rec = sa.KernelRecorder()
    with rec:
        x.view(-1)                          # a view: no kernel
        x.add_(y)                           # reads x and y, writes x
        x + b.view(1, 3, 1, 1).expand_as(x)  # the broadcast bias is 3 floats in memory
        x.contiguous(memory_format=torch.channels_last)
    names = [k.name for k in rec.kernels]
    assert names == ["aten.add_", "aten.add", "aten.clone"]
    nb = x.numel() * 4
    assert [k.bytes for k in rec.kernels] == [3 * nb, 2 * nb + 3 * 4, 2 * nb]
    assert rec.kernels[2].category == "layout copies"
    with rec:
        x.to(torch.bfloat16)
    assert rec.kernels[-1].category == "dtype casts" and rec.kernels[-1].bytes == nb + nb // 2
    # written-only operands are not read: copy_'s destination, out=, zeros_like's shape source
    z = torch.empty_like(x)
    rec = sa.KernelRecorder()
    with rec:
        z.copy_(y)
        torch.zeros_like(x)
        torch.add(x, y, out=z)
        z.copy_(y.to(torch.bfloat16).float())
    assert [k.bytes for k in rec.kernels[:3]] == [2 * nb, nb, 3 * nb]
    assert rec.kernels[-1].name == "aten.copy_" and rec.kernels[-1].category == "layout copies"


def test_tracing_leaves_the_process_triton_kernels_compiled():
    """trace_step sets TRITON_INTERPRET for its fake tensors; a Triton backend imported for the first
    time under it would stay interpreted after the variable is restored."""
    code = ("import os; from bench import step_anatomy as sa; "
            "sa.trace_step(8, 'triton_amp', batch=4, fmap=dict(fmap_base=64, fmap_decay=1.0, fmap_max=8), model_res=8); "
            "from progan_fast.triton import kernels, conv; "
            "assert 'TRITON_INTERPRET' not in os.environ; "
            "assert type(kernels.bias_act_fwd_kernel).__name__ == 'JITFunction', type(kernels.bias_act_fwd_kernel); "
            "assert not conv.INTERPRET; print('ok')")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


@pytest.mark.parametrize("fused_scale", [False, True])
@pytest.mark.parametrize("res", [8, 16])
def test_traced_flops_match_the_analytic_step_flops(res, fused_scale):
    """Every conv / matmul of the D step (with the penalty's double backward), G step and EMA is
    seen, and bench/flops.py's 4 F_G + 14 F_D (the MFU the bench reports) counts them right."""
    s = sa.summarize(_trace(res, "eager_fp32", fused_scale=fused_scale))
    assert s["gflop"] == pytest.approx(s["model_gflop"], rel=0.02)


def test_fused_variants_remove_casts_bytes_and_kernels():
    rows = {v: sa.summarize(_trace(16, v)) for v in ("eager_fp32", "eager_amp", "triton_amp")}
    casts = {v: r["gbytes_by_category"].get("dtype casts", 0.0) for v, r in rows.items()}
    assert casts["eager_fp32"] < 1e-6 < casts["eager_amp"]  # fp32: only the skip counter's scalar casts
    assert casts["triton_amp"] < casts["eager_amp"] / 2  # the fp32-math reference ops' up/down casts are gone
    assert rows["triton_amp"]["gbytes"] < rows["eager_amp"]["gbytes"]
    assert rows["triton_amp"]["kernels"] < rows["eager_amp"]["kernels"]
    assert rows["triton_amp"]["gbytes_by_category"]["progan_fast ops"] > 0
    for r in rows.values():
        assert 0 < r["floor_ms"] <= r["graph_floor_ms"]
        # (a sum of per-kernel floors: equal up to float rounding when every kernel is launch-bound)
        assert r["graph_floor_ms"] >= r["kernels"] * r["kernel_us"] * 1e-3 * (1 - 1e-9)


def test_fast_resolves_auto_as_on_the_given_architecture(monkeypatch):
    monkeypatch.setitem(_backend.AUTO_TABLE, "sm_test", {"bias_act_pixel_norm": ("triton", "ref")})
    ran = {arch: {k.name for k in _trace(16, "fast", arch=arch).kernels} for arch in ("sm_test", "sm_none")}
    assert "progan_fast.bias_act_pixel_norm" in ran["sm_test"]
    assert not any(n.startswith("progan_fast") for n in ran["sm_none"])


def test_fast_graph_follows_the_graph_lists(monkeypatch):
    monkeypatch.setitem(_backend.AUTO_TABLE, "sm_test", {"bias_act_pixel_norm": ("ref",)})
    monkeypatch.setitem(_backend.AUTO_TABLE_GRAPH, "sm_test", {"bias_act_pixel_norm": ("triton", "ref")})
    ran = {v: {k.name for k in _trace(16, v, arch="sm_test").kernels} for v in ("fast", "fast_graph")}
    assert "progan_fast.bias_act_pixel_norm" in ran["fast_graph"]
    assert "progan_fast.bias_act_pixel_norm" not in ran["fast"]


def test_cli_writes_tables_with_measured_rates(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({
        "env": {"device": "Test GPU"}, "ceilings": {"copy_gbps": 1000.0, "matmul_tflops": 100.0},
        "cases": [{"kind": "step", "res": 4, "variant": "eager_fp32", "img_s": 1234.0}]}))
    md, js = tmp_path / "a.md", tmp_path / "a.json"
    assert sa.main(["--res", "4", "--variant", "eager_fp32", "eager_amp", "--batch", "4",
                    "--results", str(results), "--md", str(md), "--json", str(js)]) == 0
    text = md.read_text()
    assert "Test GPU" in text and "| 4 px (4) | eager_fp32 |" in text and "1,234" in text
    doc = json.loads(js.read_text())
    assert [r["variant"] for r in doc["rows"]] == ["eager_fp32", "eager_amp"]
    assert doc["ceilings"]["copy_gbps"] == 1000.0
    with pytest.raises(SystemExit):
        sa.main(["--res", "5"])
