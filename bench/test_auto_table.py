"""bench/auto_table.py: the rule that fills impl='auto''s per-architecture table (pure Python)."""
import json

from .auto_table import derive, main, write


def _case(op, backend, res, ms, batch=8, layer=None, mode="fwdbwd", kind="op"):
    return {"id": f"{kind}/{op}/r{res}/{mode}/{backend}", "kind": kind if layer is None else "layer", "op": op,
            "layer": layer, "backend": backend, "mode": mode, "res": res, "batch": batch, "median_ms": ms}


def _results(cases, cap="9.0"):
    return {"schema": "progan_fast.bench/1", "env": {"device": "NVIDIA H100", "device_capability": cap,
                                                      "torch": "2.11", "triton": "3.6", "date": "2026-11-26"},
            "cases": cases}


def test_a_backend_faster_everywhere_comes_first():
    res = _results([_case("pixel_norm", "ref", 8, 1.0), _case("pixel_norm", "ref", 128, 4.0),
                    _case("pixel_norm", "triton", 8, 0.9), _case("pixel_norm", "triton", 128, 2.0),
                    _case("pixel_norm", "cuda", 8, 0.5), _case("pixel_norm", "cuda", 128, 1.0),
                    _case("pixel_norm", "cuda", 8, 0.01, mode="fwd")])  # fwd cases do not count
    t = derive(res)
    assert t["pixel_norm"]["order"] == ["cuda", "triton", "ref"]


def test_slower_anywhere_or_not_measured_everywhere_never_qualifies():
    res = _results([_case("lerp", "ref", 8, 1.0), _case("lerp", "ref", 128, 4.0),
                    _case("lerp", "triton", 8, 1.2), _case("lerp", "triton", 128, 1.0),  # 4x cheaper, slower at r8
                    _case("lerp", "cuda", 128, 1.0)])                                     # r8 missing
    entry = derive(res)["lerp"]
    assert entry["order"] == ["ref"]
    assert "1.20x the reference's time at r8" in entry["why"] and "not measured" in entry["why"]


def test_margin_and_per_image_weighting():
    # 4% cheaper overall is within the margin: stays on ref
    res = _results([_case("bias_act", "ref", 8, 1.0), _case("bias_act", "triton", 8, 0.96)])
    assert derive(res)["bias_act"]["order"] == ["ref"]
    # cost is per image: the batch-8 case at r128 weighs 16x the batch-128 case at r8
    res = _results([_case("bias_act", "ref", 8, 1.0, batch=128), _case("bias_act", "ref", 128, 1.0, batch=8),
                    _case("bias_act", "triton", 8, 1.0, batch=128), _case("bias_act", "triton", 128, 0.5, batch=8)])
    entry = derive(res)["bias_act"]
    assert entry["order"] == ["triton", "ref"]
    assert abs(entry["cost_us_per_img"]["ref"] - (1 / 128 + 1 / 8) * 1e3) < 1e-3


def test_conv_layer_kinds_are_judged_one_by_one():
    res = _results([_case("eq_conv2d", "ref", 8, 1.0, layer="g_conv"), _case("eq_conv2d", "ref", 8, 1.0, layer="d_down"),
                    _case("eq_conv2d", "triton", 8, 0.5, layer="g_conv"), _case("eq_conv2d", "triton", 8, 1.5, layer="d_down"),
                    _case("eq_conv2d", "ref", 4, 1.0, layer="d_mbstd_conv"),  # runs as a d_conv layer
                    _case("eq_conv2d", "triton", 4, 0.5, layer="d_mbstd_conv")])
    entry = derive(res)["eq_conv2d"]
    pin = lambda layer: {"backend": "ref", "min_numel": 0, "layer": layer}  # noqa: E731
    assert entry["order"] == [{"backend": "triton", "min_numel": 0, "layer": "d_conv"},
                              {"backend": "triton", "min_numel": 0, "layer": "g_conv"},
                              pin("d_conv"), pin("d_down"), pin("g_conv"), "ref"]
    assert "d_down: triton: 1.50x the reference's time at d_down r8" in entry["why"]


def _sized(op, backend, res, ms, numel, **kw):
    c = _case(op, backend, res, ms, **kw)
    c["shape"] = {"x": [numel, 1, 1, 1]}
    return c


def test_a_backend_that_wins_only_on_large_tensors_gets_a_size_threshold():
    res = _results([_sized("pixel_norm", "ref", 8, 1.0, 1000), _sized("pixel_norm", "triton", 8, 2.0, 1000),
                    _sized("pixel_norm", "ref", 64, 4.0, 5000), _sized("pixel_norm", "triton", 64, 3.9, 5000),
                    _sized("pixel_norm", "ref", 128, 4.0, 9000), _sized("pixel_norm", "triton", 128, 2.0, 9000)])
    entry = derive(res)["pixel_norm"]
    # >= 5000: 8.0 vs 5.9 in total and never slower; >= 1000 fails (2x slower at r8)
    assert entry["order"] == [{"backend": "triton", "min_numel": 5000}, "ref"]
    assert "at >= 5000 elements (r64, r128)" in entry["why"] and "2.00x the reference's time at r8" in entry["why"]
    # slower than the tolerance at the largest size: no threshold qualifies
    res["cases"][-1]["median_ms"] = 4.3
    assert derive(res)["pixel_norm"]["order"] == ["ref"]


def test_backends_form_a_step_function_of_size():
    # triton qualifies only from 9000 elements, where it is cheaper than cuda, which qualifies everywhere:
    # triton (then cuda, should triton be unavailable) from 9000 on, cuda below.
    res = _results([_sized("pixel_norm", "ref", 8, 1.0, 1000), _sized("pixel_norm", "ref", 128, 4.0, 9000),
                    _sized("pixel_norm", "triton", 8, 2.0, 1000), _sized("pixel_norm", "triton", 128, 2.0, 9000),
                    _sized("pixel_norm", "cuda", 8, 0.4, 1000), _sized("pixel_norm", "cuda", 128, 3.6, 9000)])
    entry = derive(res)["pixel_norm"]
    assert entry["order"] == [{"backend": "triton", "min_numel": 9000}, {"backend": "cuda", "min_numel": 9000},
                              "cuda", "ref"]
    assert "(the threshold covers every size from there on, measured or not)" in entry["why"]


def test_the_fused_resampling_form_where_the_reference_runs_it_faster(tmp_path):
    from progan_fast.ops import _backend
    from .auto_table import derive_forms
    lay = lambda layer, res, ms, backend="ref": _case("eq_conv2d", backend, res, ms, layer=layer)  # noqa: E731
    cases = [lay("g_up", 8, 1.0), lay("g_up", 128, 4.0), lay("g_up_fused", 8, 0.9), lay("g_up_fused", 128, 2.0),
             lay("d_down", 8, 1.0), lay("d_down", 128, 4.0), lay("d_down_fused", 8, 1.2), lay("d_down_fused", 128, 2.0),
             lay("g_up_fused", 8, 0.1, backend="triton")]  # other backends do not decide the form
    forms = derive_forms(_results(cases))
    assert forms["g_up"]["form"] == "fused" and forms["g_up"]["min_numel"] == 0
    assert "1.72x the unfused form overall" in forms["g_up"]["why"]
    assert forms["d_down"]["form"] == "unfused" and "1.20x the unfused form's time at d_down r8" in forms["d_down"]["why"]
    assert derive_forms(_results(cases[:2])) == {}  # no fused variant measured: no decision
    # Triton's conv layer wins the unfused g_up (auto would run it): the fused form on the reference
    # no longer beats what auto runs, so the form stays unfused
    with_triton = _results(cases + [lay("g_up", 8, 0.3, backend="triton"), lay("g_up", 128, 1.0, backend="triton")])
    assert derive_forms(with_triton, derived=derive(with_triton))["g_up"]["form"] == "unfused"
    table = tmp_path / "auto.json"
    res = _results(cases + [_case("lerp", "ref", 8, 1.0)])
    write(res, derive(res), "bench/results/x.json", str(table), forms=forms)
    assert _backend._load_auto_tables(str(table))[2] == {"sm_90": {"g_up": ("fused", 0), "d_down": ("unfused", 0)}}


def test_the_fused_form_from_the_size_where_it_wins(tmp_path):
    """Slower on small layers, faster on large ones (D's down-conv on the H100: 1.99x the time at 8 px,
    1.6x faster at 128 px): fused from the large layer's input size on, as the official code switches
    to fused_scale from 128 px."""
    from progan_fast.ops import _backend
    from .auto_table import derive_forms
    lay = lambda layer, res, ms, numel: _sized("eq_conv2d", "ref", res, ms, numel, layer=layer)  # noqa: E731
    cases = [lay("d_down", 8, 1.0, 500), lay("d_down", 128, 4.0, 9000),
             lay("d_down_fused", 8, 1.9, 500), lay("d_down_fused", 128, 2.5, 9000)]
    forms = derive_forms(_results(cases))
    assert forms["d_down"]["form"] == "fused" and forms["d_down"]["min_numel"] == 9000
    assert "1.60x the unfused form at >= 9000 elements" in forms["d_down"]["why"]
    table = tmp_path / "auto.json"
    res = _results(cases)
    write(res, derive(res), "bench/results/x.json", str(table), forms=forms)
    assert json.loads(table.read_text())["archs"]["sm_90"]["forms"] == {"d_down": {"form": "fused", "min_numel": 9000}}
    forms_rt = _backend._load_auto_tables(str(table))[2]
    assert forms_rt == {"sm_90": {"d_down": ("fused", 9000)}}


def test_graph_cases_give_the_graph_lists(tmp_path):
    from progan_fast.ops import _backend
    cases = [_case("lerp", "ref", 8, 1.0), _case("lerp", "triton", 8, 1.5),                    # eager: slower
             _case("lerp", "ref", 8, 0.2, mode="fwdbwd_graph"), _case("lerp", "triton", 8, 0.1, mode="fwdbwd_graph")]
    res = _results(cases)
    assert derive(res)["lerp"]["order"] == ["ref"]
    graph = derive(res, mode="fwdbwd_graph")
    assert graph["lerp"]["order"] == ["triton", "ref"]
    table = tmp_path / "auto.json"
    write(res, derive(res), "bench/results/x.json", str(table), derived_graph=graph)
    doc = json.loads(table.read_text())["archs"]["sm_90"]
    assert doc["ops"]["lerp"] == ["ref"] and doc["graph_ops"]["lerp"] == ["triton", "ref"]
    assert _backend._load_auto_tables(str(table))[1] == {"sm_90": {"lerp": ("triton", "ref")}}


def test_conditional_entries_load_and_match_at_run_time(tmp_path):
    from progan_fast.ops import _backend
    res = _results([_sized("pixel_norm", "ref", 8, 1.0, 1000), _sized("pixel_norm", "triton", 8, 2.0, 1000),
                    _sized("pixel_norm", "ref", 128, 4.0, 9000), _sized("pixel_norm", "triton", 128, 2.0, 9000),
                    _case("eq_conv2d", "ref", 8, 1.0, layer="g_conv"), _case("eq_conv2d", "triton", 8, 0.5, layer="g_conv")])
    table = tmp_path / "auto.json"
    write(res, derive(res), "bench/results/x.json", str(table))
    loaded = _backend._load_auto_tables(str(table))[0]["sm_90"]
    assert loaded["pixel_norm"] == (_backend.Choice("triton", 9000), "ref")
    assert loaded["eq_conv2d"] == (_backend.Choice("triton", 0, "g_conv"), _backend.Choice("ref", 0, "g_conv"), "ref")
    assert _backend.Choice("ref", 0, "g_conv").matches(1, "g_conv") and not _backend.Choice("ref", 0, "g_conv").matches(1, "g_up")


def test_write_replaces_only_its_architecture(tmp_path):
    table = tmp_path / "auto.json"
    table.write_text(json.dumps({"archs": {"sm_80": {"ops": {"lerp": ["triton", "ref"]}}}}))
    res = _results([_case("lerp", "ref", 8, 1.0), _case("lerp", "triton", 8, 0.5)])
    assert write(res, derive(res), "bench/results/x.json", str(table)) == "sm_90"
    doc = json.loads(table.read_text())
    assert doc["archs"]["sm_80"]["ops"] == {"lerp": ["triton", "ref"]}
    assert doc["archs"]["sm_90"]["ops"] == {"lerp": ["triton", "ref"]}
    assert doc["archs"]["sm_90"]["source"] == "bench/results/x.json" and "rule" in doc["archs"]["sm_90"]


def test_cli_prints_and_refuses_cpu_results(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_results([_case("lerp", "ref", 8, 1.0), _case("lerp", "triton", 8, 0.5)])))
    assert main([str(path)]) == 0
    assert "lerp" in capsys.readouterr().out
    cpu = _results([_case("lerp", "ref", 8, 1.0)])
    cpu["env"].pop("device_capability")
    path.write_text(json.dumps(cpu))
    table = tmp_path / "t.json"
    try:
        main([str(path), "--write", "--table", str(table)])
    except ValueError as exc:
        assert "device_capability" in str(exc)
    else:
        raise AssertionError("a CPU run must not write a GPU table")
