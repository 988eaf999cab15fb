"""bench/report.py on synthetic pytest-benchmark JSON: conversion, speedups, regression detection."""
import json

import pytest

from bench import report


def _raw(cases, device_class="nvidia-h100", date="2026-11-26T00:00:00+00:00", commit="abc123"):
    """A minimal pytest-benchmark document with this suite's extra_info and metadata."""
    benchmarks = []
    for case_id, median_s, extra in cases:
        info = {"case_id": case_id, "baseline_id": case_id.rsplit("/", 1)[0] + "/ref", **extra}
        benchmarks.append({"name": f"test[{case_id}]", "fullname": f"bench/x.py::test[{case_id}]",
                           "stats": {"median": median_s, "iqr": median_s / 20, "rounds": 10, "iterations": 5},
                           "extra_info": info})
    return {"benchmarks": benchmarks, "datetime": date,
            "progan_fast": {"env": {"device": "NVIDIA H100 80GB HBM3", "device_class": device_class,
                                    "date": date, "git_commit": commit, "torch": "2.11.0"},
                            "ceilings": {"copy_gbps": 3000.0, "matmul_tflops": 700.0, "matmul_dtype": "bfloat16"},
                            "settings": {"quick": True}}}


BASE = [("op/pixel_norm/r8/fwd/ref", 100e-6, {"gbps": 500.0, "frac_ceiling": 0.17, "bound": "memory"}),
        ("op/pixel_norm/r8/fwd/triton", 25e-6, {"gbps": 2000.0, "frac_ceiling": 0.67, "bound": "memory"}),
        ("step/r8/eager_fp32", 20e-3, {"img_s": 6400.0, "baseline_id": "step/r8/eager_fp32"}),
        ("step/r8/fast", 5e-3, {"img_s": 25600.0, "baseline_id": "step/r8/eager_fp32"})]


def test_convert_speedups_and_markdown():
    res = report.convert([_raw(BASE[:2]), _raw(BASE[2:])])
    by_id = {c["id"]: c for c in res["cases"]}
    assert res["schema"] == report.SCHEMA and res["env"]["device_class"] == "nvidia-h100"
    assert by_id["op/pixel_norm/r8/fwd/triton"]["median_ms"] == pytest.approx(0.025)
    assert by_id["op/pixel_norm/r8/fwd/triton"]["speedup_vs_eager"] == pytest.approx(4.0)
    assert by_id["step/r8/fast"]["speedup_vs_eager"] == pytest.approx(4.0)
    md = report.markdown(res)
    assert "| op/pixel_norm/r8/fwd/triton | 0.0250 |" in md and "4.00x" in md and "67.0 (mem)" in md


def _doc(scale_triton=1.0, scale_step=1.0, **kw):
    cases = [(i, t * (scale_triton if "triton" in i else scale_step if "fast" in i else 1.0), e) for i, t, e in BASE]
    return report.convert([_raw(cases, **kw)])


def test_compare_flags_only_cases_beyond_threshold():
    old = _doc()
    assert report.compare(_doc(scale_triton=1.09), old, 0.10)["regressions"] == []
    result = report.compare(_doc(scale_triton=1.25, scale_step=0.5), old, 0.10)
    assert [r["id"] for r in result["regressions"]] == ["op/pixel_norm/r8/fwd/triton"]
    assert result["regressions"][0]["ratio"] == pytest.approx(1.25)
    assert [r["id"] for r in result["improvements"]] == ["step/r8/fast"]
    # cases below --min-ms in the baseline are reported but not counted
    assert report.compare(_doc(scale_triton=1.25), old, 0.10, min_ms=0.05)["regressions"] == []


def test_compare_cli_exit_codes_and_latest_baseline(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "old_h100.json").write_text(json.dumps(_doc(date="2026-01-01T00:00:00+00:00")))
    (results / "new_h100.json").write_text(json.dumps(_doc(scale_triton=2.0, date="2026-02-01T00:00:00+00:00")))
    (results / "h200.json").write_text(json.dumps(_doc(scale_triton=0.1, device_class="nvidia-h200",
                                                       date="2026-03-01T00:00:00+00:00")))
    assert report.latest_baseline("nvidia-h100", str(results)) == str(results / "new_h100.json")
    new = tmp_path / "bench.json"  # a raw pytest-benchmark JSON is accepted directly
    new.write_text(json.dumps(_raw([(i, t * (1.3 if "triton" in i else 1.0), e) for i, t, e in BASE])))
    # against the newest H100 file (triton twice as slow there) the new run is faster: exit 0
    assert report.main(["compare", str(new), "--results-dir", str(results)]) == 0
    assert report.main(["compare", str(new), "--against", str(results / "old_h100.json")]) == 1
    assert "REGRESSIONS (1)" in capsys.readouterr().out
    assert report.main(["compare", str(new), "--against", str(results / "old_h100.json"),
                        "--threshold", "0.5"]) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main(["compare", str(new), "--results-dir", str(empty)]) == 0


def test_convert_cli_tolerates_a_missing_stage(tmp_path):
    good = tmp_path / "ops.json"
    good.write_text(json.dumps(_raw(BASE)))
    out, md = tmp_path / "results.json", tmp_path / "results.md"
    assert report.main(["convert", str(good), str(tmp_path / "timed_out.json"), "--out", str(out),
                        "--md", str(md), "--command", "bench/gpu_check.sh"]) == 0
    res = json.loads(out.read_text())
    assert res["env"]["command"] == "bench/gpu_check.sh" and len(res["cases"]) == 4
    assert report.saved_name(res) == "20261126T000000_nvidia-h100_abc123.json"
    assert report.main(["convert", str(tmp_path / "none.json")]) == 2


def test_convert_reports_graph_replays_per_op_call():
    raw = {"benchmarks": [{"name": "g", "stats": {"median": 0.004, "iqr": 0.0004, "rounds": 5, "iterations": 1},
                           "extra_info": {"case_id": "op/lerp/r8/fwdbwd_graph/ref", "graph_calls": 4,
                                          "median_ms": 1.0, "kind": "op"}}]}
    case = report.convert([raw])["cases"][0]
    assert case["median_ms"] == pytest.approx(1.0) and case["iqr_ms"] == pytest.approx(0.1)


def test_graph_modes_only_where_asked_and_never_for_compile():
    from bench.conftest import Settings, backend_cases
    import torch
    s = Settings(device=torch.device("cpu"), quick=True, dtype=torch.float32, channels_last=False, fmap={},
                 op_resolutions=(8,), step_resolutions=(8,), compile=True, compile_resolutions=(8,),
                 compile_step_resolutions=(), compile_only=None, case_budget_s=0.1, round_s=1e-3)
    ids = lambda cases: [c.id for c in cases]  # noqa: E731
    assert not any("graph" in i for i in ids(backend_cases(s, lambda r: ["lerp"], graph_modes=True)))
    s.graph_ops = True
    got = ids(backend_cases(s, lambda r: ["lerp"], graph_modes=True))
    assert "lerp-r8-fwdbwd_graph-triton" in got and "lerp-r8-fwdbwd_graph-ref" in got and "lerp-r8-fwd_graph-cuda" in got
    assert "lerp-r8-fwdbwd_graph-compile" not in got and "lerp-r8-fwdbwd-compile" in got
    assert not any("graph" in i for i in ids(backend_cases(s, lambda r: ["lerp"])))  # layers: never


def test_speed_table_rows_columns_speedups_and_mfu(tmp_path, capsys):
    def step(res, batch, variant, img_s, mfu=None):
        return {"id": f"step/r{res}/{variant}", "kind": "step", "res": res, "batch": batch, "variant": variant,
                "img_s": img_s, "mfu": mfu}
    env = {"device": "NVIDIA H100", "torch": "2.11", "triton": "3.6", "date": "2026-11-27T01:00:00",
           "git_commit": "abcdef1234"}
    res = {"schema": report.SCHEMA, "env": env,
           "cases": [step(4, 128, "eager_fp32", 1000.0), step(4, 128, "fast_graph", 6000.0),
                     step(128, 16, "eager_fp32", 100.0, 0.05), step(128, 16, "fast", 250.0, 0.125),
                     {"id": "op/x", "kind": "op", "img_s": 5.0}]}
    table = report.speed_table(res)
    lines = table.splitlines()
    assert lines[2] == "| resolution (batch) | eager fp32 | progan_fast (auto) + AMP | progan_fast + CUDA graph |"
    assert lines[4] == "| 4 px (128) | 1,000 | – | 6,000 (6.00x) |"
    assert lines[5] == "| 128 px (16) | 100, MFU 5.0% | 250 (2.50x), MFU 12.5% | – |"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(res))
    assert report.main(["speed-table", str(path)]) == 0
    assert capsys.readouterr().out == table
    assert "no training-step cases" in report.speed_table({"cases": []})


def test_merge_replaces_whole_groups_and_refuses_other_devices(tmp_path):
    base = report.convert([_raw(BASE + [("op/lerp/r8/fwd/ref", 50e-6, {}), ("op/pixel_norm/r128/fwd/ref", 1e-3, {})])])
    follow = report.convert([_raw([("op/pixel_norm/r8/fwd/ref", 110e-6, {}), ("op/pixel_norm/r8/fwd/cuda", 20e-6, {}),
                                   ("step/r8/fast", 4e-3, {"baseline_id": "step/r8/eager_fp32"})],
                                  date="2026-11-27T00:00:00+00:00", commit="def456")])
    merged = report.merge(base, [("follow.json", follow)])
    ids = {c["id"]: c["median_ms"] for c in merged["cases"]}
    # every pixel_norm case of the base is gone (r128 too, which the follow-up did not measure): no
    # comparison between backends mixes the two runs; the other ops stay; step r8 is the follow-up's
    assert ids == {"op/pixel_norm/r8/fwd/ref": 0.11, "op/pixel_norm/r8/fwd/cuda": 0.02, "op/lerp/r8/fwd/ref": 0.05,
                   "step/r8/fast": 4.0}
    # the newest run dates the document; the base's date and commit are kept beside it
    assert merged["env"]["git_commit"] == "def456" and merged["env"]["base_git_commit"] == "abc123"
    assert merged["env"]["merged_from"] == [{"file": "follow.json", "git_commit": "def456",
                                             "date": "2026-11-27T00:00:00+00:00",
                                             "replaced": ["op/pixel_norm", "step/r8"],
                                             "narrower": ["op/pixel_norm", "step/r8"]}]  # r128 / eager_fp32 lost
    assert report.merged_name(merged) == "20261127T000000_nvidia-h100_def456_merged.json"
    assert report.commits(merged["env"]) == "base abc123 + def456"
    assert "commit base abc123 + def456" in report.markdown(merged)
    other = report.convert([_raw(BASE, device_class="nvidia-h200")])
    with pytest.raises(ValueError, match="device class"):
        report.merge(base, [("h200.json", other)])
    # the CLI writes the merged document
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "follow.json").write_text(json.dumps(follow))
    out = tmp_path / "merged.json"
    assert report.main(["merge", str(tmp_path / "base.json"), str(tmp_path / "follow.json"), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["env"]["merged_from"][0]["replaced"] == ["op/pixel_norm", "step/r8"]


def test_merge_keeps_both_resampling_forms_of_a_layer_from_one_run():
    """bench.auto_table compares layer/d_down with layer/d_down_fused: a follow-up that re-measured
    one of them replaces both, or the form decision would compare two runs."""
    lay = lambda name, ms: (f"layer/{name}/r128/fwdbwd/ref", ms, {"kind": "layer", "op": "eq_conv2d"})  # noqa: E731
    base = report.convert([_raw([lay("d_down", 4e-3), lay("d_down_fused", 2e-3), lay("g_up", 1e-3),
                                 lay("d_mbstd_conv", 1e-3)])])
    follow = report.convert([_raw([lay("d_down", 6e-3), lay("d_conv", 1e-3)], commit="def456")])
    ids = {c["id"] for c in report.merge(base, [("f.json", follow)])["cases"]}
    assert ids == {"layer/d_down/r128/fwdbwd/ref", "layer/g_up/r128/fwdbwd/ref", "layer/d_conv/r128/fwdbwd/ref"}
