"""bench/profile_step.py: the kernel-family classifier and one end-to-end run of the CPU profile."""
from __future__ import annotations

import json

import pytest

from .profile_step import kernel_family, main


@pytest.mark.parametrize("name, family", [
    ("void progan_fast::gpu::ew_flat_kernel<c10::BFloat16>(progan_fast::gpu::EwArgs<c10::BFloat16>, long)",
     "progan_fast cuda"),
    ("bias_act_bwd_kernel", "progan_fast triton"),
    ("pn_fwd_kernel", "progan_fast triton"),
    ("_eq_conv_fwd_kernel", "progan_fast triton"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", "gemm / conv"),
    ("void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16>(...)", "layout / copy"),
    ("void cudnn::cnn::wgrad2d_grouped_direct_kernel<float>(...)", "gemm / conv"),
    ("void at::native::(anonymous namespace)::nhwcToNchwKernel(...)", "layout / copy"),
    ("Memcpy DtoD (Device -> Device)", "layout / copy"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t>>", "reduction"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "elementwise"),
    ("something_else", "other"),
])
def test_kernel_family(name, family):
    assert kernel_family(name) == family


def test_profile_cpu_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("PROGAN_BENCH_DEVICE", "cpu")  # the tiny CPU profile, GPU or not
    md, js = tmp_path / "p.md", tmp_path / "p.json"
    assert main(["--res", "4", "--variant", "eager_fp32", "fast_graph", "--steps", "1", "--rows", "3",
                 "--out-md", str(md), "--out-json", str(js)]) == 0
    data = json.loads(js.read_text())
    ran, skipped = data["results"]
    assert ran["variant"] == "eager_fp32" and ran["wall_ms"] > 0 and ran["batch"] > 0
    assert 0 < len(ran["top_host"]) <= 3 and ran["host_ops_ms"] > 0
    assert any("conv" in h["name"] or "mm" in h["name"] for h in ran["top_host"])
    assert "CUDA graphs" in skipped["skipped"]  # no GPU: the graphed variant says why it did not run
    text = md.read_text()
    assert "| r4 eager_fp32 | " in text and "skipped: CUDA graphs" in text


@pytest.mark.parametrize("argv", [["--res", "6"], ["--variant", "nope"], ["--steps", "0"]])
def test_profile_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
