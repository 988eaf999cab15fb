"""The reference operators against independent, loop-level formulations of DESIGN §2, plus the
public API's validation and dispatch."""
import functools
import math

import pytest
import torch
import torch.nn.functional as F

from progan_fast import ops
from progan_fast.ops import reference as R


def _mbstd_loop(x, group_size=4, eps=1e-8):
    """Straight from the official definition, one group at a time."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    m = n // g
    out = torch.empty(n, 1, h, w, dtype=torch.float64)
    for j in range(m):
        members = x[j::m].double()  # strided group: samples j, j+M, j+2M, ...
        assert members.shape[0] == g
        var = ((members - members.mean(0)) ** 2).mean(0)
        s = (var + eps).sqrt().mean()
        out[j::m] = s
    return torch.cat([x.double(), out], 1)


@pytest.mark.parametrize("n,group", [(8, 4), (4, 4), (6, 3), (2, 4), (12, 4), (1, 4)])
def test_minibatch_stddev_matches_loop(n, group):
    x = torch.randn(n, 5, 3, 2, dtype=torch.float64)
    torch.testing.assert_close(R.minibatch_stddev(x, group_size=group), _mbstd_loop(x, group))


def test_minibatch_stddev_groups_are_strided_not_contiguous():
    x = torch.randn(8, 3, 2, 2, dtype=torch.float64)
    x[0:4] += 10 * torch.arange(4, dtype=torch.float64).view(4, 1, 1, 1)  # contiguous block spread out
    y = R.minibatch_stddev(x)[:, -1, 0, 0]
    # strided groups {0,2,4,6} and {1,3,5,7} both contain spread-out samples -> large stddev in both
    assert y[0] == y[2] == y[4] == y[6] and y[1] == y[3] == y[5] == y[7]
    assert y[0] > 3 and y[1] > 3


def test_minibatch_stddev_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="not divisible by the group size 4"):
        ops.minibatch_stddev(torch.randn(6, 3, 4, 4))


def test_pixel_norm_formula():
    x = torch.randn(3, 7, 5, 4, dtype=torch.float64)
    expected = x / torch.sqrt((x ** 2).mean(1, keepdim=True) + 1e-8)
    torch.testing.assert_close(ops.pixel_norm(x), expected)
    z = torch.randn(5, 9, dtype=torch.float64)
    torch.testing.assert_close(ops.pixel_norm(z), z / torch.sqrt((z ** 2).mean(1, keepdim=True) + 1e-8))


@pytest.mark.parametrize("act", ["lrelu", "linear", "relu"])
@pytest.mark.parametrize("dim", [1, 0, 3, -1])
def test_bias_act_formula(act, dim):
    x = torch.randn(4, 6, 5, 3, dtype=torch.float64)
    b = torch.randn(x.shape[dim], dtype=torch.float64)
    shape = [1] * 4
    shape[dim] = -1
    y = x + b.view(shape)
    y = {"lrelu": torch.where(y > 0, y, 0.2 * y), "linear": y, "relu": y.clamp_min(0)}[act] * 1.7
    torch.testing.assert_close(ops.bias_act(x, b, act=act, gain=1.7, dim=dim), y)


def test_fade_ops_formulas():
    hi = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    lo = torch.randn(2, 3, 4, 3, dtype=torch.float64)
    up = lo[:, :, :, None, :, None].expand(2, 3, 4, 2, 3, 2).reshape(2, 3, 8, 6)
    torch.testing.assert_close(ops.upsample_blend(hi, lo, 0.3), 0.3 * hi + 0.7 * up)
    down = hi.reshape(2, 3, 4, 2, 3, 2).mean((3, 5))
    up_down = down[:, :, :, None, :, None].expand(2, 3, 4, 2, 3, 2).reshape(2, 3, 8, 6)
    torch.testing.assert_close(ops.fade_reals(hi, 0.25), 0.25 * hi + 0.75 * up_down)
    torch.testing.assert_close(ops.fade_reals(hi, torch.tensor(0.25, dtype=torch.float64)), 0.25 * hi + 0.75 * up_down)
    torch.testing.assert_close(ops.downsample2x(hi), down)


@pytest.mark.parametrize("k", [1, 3, 4])
@pytest.mark.parametrize("mode", ["plain", "up", "down"])
def test_eq_conv2d_matches_composition(k, mode):
    if k == 4 and mode != "plain":
        pytest.skip("PGGAN resamples only with 3x3 kernels")
    x = torch.randn(2, 5, 8, 8, dtype=torch.float64)
    w = torch.randn(7, 5, k, k, dtype=torch.float64)
    b = torch.randn(7, dtype=torch.float64)
    scale = math.sqrt(2) / math.sqrt(5 * k * k)
    xin = x.repeat_interleave(2, 2).repeat_interleave(2, 3) if mode == "up" else x
    y = F.conv2d(xin, w * scale, padding=k // 2 if k % 2 else 0)
    if mode == "down":
        y = F.avg_pool2d(y, 2)
    y = F.leaky_relu(y + b.view(1, -1, 1, 1), 0.2)
    got = ops.eq_conv2d(x, w, b, up=mode == "up", down=mode == "down")
    torch.testing.assert_close(got, y)
    pn = y / torch.sqrt((y ** 2).mean(1, keepdim=True) + 1e-8)
    torch.testing.assert_close(ops.eq_conv2d(x, w, b, up=mode == "up", down=mode == "down", pixel_norm=True), pn)


@pytest.mark.parametrize("mode", ["up", "down"])
def test_fused_scale_is_the_same_function(mode):
    x = torch.randn(3, 4, 6, 10, dtype=torch.float64)
    w = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    kw = dict(up=mode == "up", down=mode == "down")
    torch.testing.assert_close(ops.eq_conv2d(x, w, b, fused_scale=True, **kw), ops.eq_conv2d(x, w, b, **kw))


def test_reference_is_twice_differentiable():
    x = torch.randn(4, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        y = ops.eq_conv2d(x, w, b, down=True)
        y = ops.minibatch_stddev(y, group_size=2)
        return ops.bias_act(y, None, act="lrelu")

    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_low_precision_matches_fp32_reference():
    x = torch.randn(4, 8, 6, 6)
    for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float16, 2e-3)):
        y = ops.pixel_norm(x.to(dtype))
        assert y.dtype == dtype
        torch.testing.assert_close(y.float(), ops.pixel_norm(x), rtol=tol, atol=tol)


@pytest.mark.parametrize("call,err,match", [
    (lambda: ops.bias_act(torch.randn(2, 3), torch.randn(4)), ValueError, "b has 4 elements"),
    (lambda: ops.pixel_norm(torch.randn(2, 3).int()), TypeError, "dtype"),
    (lambda: ops.minibatch_stddev(torch.randn(2, 3, 4)), ValueError, "4-D"),
    (lambda: ops.upsample_blend(torch.randn(1, 2, 8, 8), torch.randn(1, 2, 3, 4), 0.5), ValueError, "half resolution"),
    (lambda: ops.fade_reals(torch.randn(1, 2, 8, 8), 1.5), ValueError, r"\[0, 1\]"),
    (lambda: ops.eq_conv2d(torch.randn(1, 2, 8, 8), torch.randn(3, 4, 3, 3)), ValueError, "input channels"),
    (lambda: ops.bias_act(torch.randn(2, 3), act="gelu"), ValueError, "unknown act"),
    (lambda: ops.pixel_norm(torch.randn(2, 3), impl="fast"), ValueError, "unknown impl"),
])
def test_bad_input_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_backend_selection():
    x = torch.randn(2, 3, 4, 4)
    with ops.use_backend("ref"):
        assert ops.get_backend() == "ref"
        ops.pixel_norm(x)
    assert ops.get_backend() == "auto"
    with pytest.raises(RuntimeError, match="cannot run on cpu"):
        ops.pixel_norm(x, impl="cuda")
    with pytest.raises(ValueError):
        ops.set_backend("nope")


def test_auto_table_is_well_formed():
    """The committed per-architecture table (written by bench/auto_table.py) names known ops and
    backends, ends every order with the reference, and says where its numbers came from."""
    import json
    from progan_fast.ops import _backend
    with open(_backend.AUTO_TABLE_PATH) as f:
        doc = json.load(f)
    public = {"bias_act", "bias_act_pixel_norm", "pixel_norm", "minibatch_stddev", "upsample_blend", "fade_reals",
              "lerp", "downsample2x", "eq_conv2d"}
    layers = {"to_rgb", "from_rgb", "g_up", "g_up_fused", "g_conv", "d_conv", "d_down", "d_down_fused", "d_dense4"}
    for arch, entry in doc["archs"].items():
        assert arch.startswith("sm_") and entry["source"] and entry["rule"]
        for op, order in [*entry["ops"].items(), *entry.get("graph_ops", {}).items()]:
            assert op in public and order[-1] == "ref", (arch, op, order)
            for item in order:
                if isinstance(item, dict):  # a conditional choice: a size threshold, a conv layer kind
                    assert set(item) <= {"backend", "min_numel", "layer"} and item["min_numel"] >= 0, item
                    assert item.get("layer") in layers | {None} and (op == "eq_conv2d") == ("layer" in item), item
                    item = item["backend"]
                assert item in _backend.BACKENDS, (arch, op, order)
    for arch, entry in doc["archs"].items():
        assert set(entry.get("forms", {})) <= {"g_up", "d_down"}, arch
        for form in entry.get("forms", {}).values():  # "fused" / "unfused", or fused from a size on
            if isinstance(form, dict):
                assert set(form) == {"form", "min_numel"} and form["min_numel"] > 0, (arch, form)
                form = form["form"]
            assert form in ("fused", "unfused"), (arch, form)
    for key, table in (("ops", _backend.AUTO_TABLE), ("graph_ops", _backend.AUTO_TABLE_GRAPH)):
        assert table == {a: {o: tuple(_backend._entry(i) for i in v) for o, v in e.get(key, {}).items()}
                         for a, e in doc["archs"].items()}


def test_auto_picks_per_gpu_architecture(monkeypatch):
    from progan_fast.ops import _backend
    fake = lambda *a, **k: None  # noqa: E731  stands in for a loaded GPU backend's op
    monkeypatch.setitem(_backend._registry["triton"], "fade_reals", fake)
    monkeypatch.setitem(_backend._load_state, "triton", True)
    monkeypatch.setattr(_backend, "AUTO_TABLE", {"sm_90": {"fade_reals": ("triton", "ref")}})
    monkeypatch.setattr(_backend, "AUTO_TABLE_GRAPH", {})
    monkeypatch.setattr(_backend, "AUTO_FORMS", {})
    monkeypatch.setattr(_backend, "_arch_of_index", {0: "sm_90", 1: "sm_80"})
    assert _backend.resolve("fade_reals", "auto", torch.device("cuda", 0)) is fake
    assert _backend.resolve("fade_reals", "auto", torch.device("cuda", 1)) is _backend._registry["ref"]["fade_reals"]
    assert _backend.resolve("lerp", "auto", torch.device("cuda", 0)) is _backend._registry["ref"]["lerp"]
    assert _backend.resolve("fade_reals", "auto", torch.device("cpu")) is _backend._registry["ref"]["fade_reals"]
    assert _backend.auto_order("fade_reals", "cpu") == ("ref",)


def test_auto_conditional_choices_need_the_size_and_the_layer(monkeypatch):
    from progan_fast.ops import _backend
    fake = lambda *a, **k: None  # noqa: E731
    for op in ("pixel_norm", "eq_conv2d"):
        monkeypatch.setitem(_backend._registry["triton"], op, fake)
    monkeypatch.setitem(_backend._load_state, "triton", True)
    monkeypatch.setattr(_backend, "AUTO_TABLE", {"sm_90": {
        "pixel_norm": (_backend.Choice("triton", 1000), "ref"),
        "eq_conv2d": (_backend.Choice("triton", 0, "g_conv"), _backend.Choice("triton", 500, "g_up"), "ref")}})
    monkeypatch.setattr(_backend, "AUTO_TABLE_GRAPH", {})
    monkeypatch.setattr(_backend, "AUTO_FORMS", {})
    monkeypatch.setattr(_backend, "_arch_of_index", {0: "sm_90"})
    gpu = torch.device("cuda", 0)
    ref = _backend._registry["ref"]
    assert _backend.resolve("pixel_norm", "auto", gpu, 999) is ref["pixel_norm"]
    assert _backend.resolve("pixel_norm", "auto", gpu, 1000) is fake
    assert _backend.resolve("pixel_norm", "auto", gpu) is ref["pixel_norm"]  # size unknown: no conditional choice
    assert _backend.resolve("pixel_norm", "ref", gpu, 10**9) is ref["pixel_norm"]  # explicit impl wins
    assert _backend.resolve("eq_conv2d", "auto", gpu, 1, "g_conv") is fake
    assert _backend.resolve("eq_conv2d", "auto", gpu, 10**9, "d_conv") is ref["eq_conv2d"]
    assert _backend.resolve("eq_conv2d", "auto", gpu, 499, "g_up") is ref["eq_conv2d"]
    assert _backend.resolve("eq_conv2d", "auto", gpu, 500, "g_up") is fake
    assert _backend.auto_order("eq_conv2d", gpu, 500, "g_up") == ("triton", "ref")
    assert ops.describe(gpu) == "ref (eq_conv2d: triton at g_conv layers, triton at g_up layers, >= 0.0005M elements; " \
        "pixel_norm: triton at >= 0.001M elements); in CUDA graphs: ref (pixel_norm: triton at >= 0.001M elements)"


def test_graph_mode_follows_the_graph_lists_where_the_table_has_them(monkeypatch):
    from progan_fast.ops import _backend
    fake = lambda *a, **k: None  # noqa: E731
    monkeypatch.setitem(_backend._registry["triton"], "lerp", fake)
    monkeypatch.setitem(_backend._load_state, "triton", True)
    monkeypatch.setattr(_backend, "AUTO_TABLE", {"sm_90": {"lerp": ("ref",), "pixel_norm": ("ref",)}})
    monkeypatch.setattr(_backend, "AUTO_TABLE_GRAPH", {"sm_90": {"lerp": ("triton", "ref")}})
    monkeypatch.setattr(_backend, "_arch_of_index", {0: "sm_90"})
    gpu = torch.device("cuda", 0)
    ref = _backend._registry["ref"]
    assert _backend.resolve("lerp", "auto", gpu) is ref["lerp"]
    with ops.graph_mode():
        assert _backend.resolve("lerp", "auto", gpu) is fake
        assert _backend.resolve("pixel_norm", "auto", gpu) is ref["pixel_norm"]  # no graph list: the eager one
        assert _backend.resolve("lerp", "ref", gpu) is ref["lerp"]
        with ops.graph_mode(False):
            assert _backend.resolve("lerp", "auto", gpu) is ref["lerp"]
    assert _backend.resolve("lerp", "auto", gpu) is ref["lerp"]
    assert _backend.auto_order("lerp", "cpu") == ("ref",)
    assert ops.describe(gpu) == "ref; in CUDA graphs: ref (lerp: triton)"
    assert ops.describe("cpu") == "ref"


def test_layer_decisions_come_from_the_active_list_only(monkeypatch):
    """A measured conv-layer kind is decided by eq_conv2d's own list; inside graph_mode, without
    graph measurements of eq_conv2d, its eager per-layer entries are dropped (the epilogue's graph
    list then decides), while its plain entries still apply."""
    from progan_fast.ops import _backend
    C = _backend.Choice
    eager = (C("triton", 100, "g_conv"), C("ref", 0, "g_conv"), "ref")
    monkeypatch.setattr(_backend, "AUTO_TABLE", {"sm_90": {"eq_conv2d": eager, "bias_act_pixel_norm": ("ref",)}})
    monkeypatch.setattr(_backend, "AUTO_TABLE_GRAPH", {"sm_90": {"bias_act_pixel_norm": ("triton", "ref")}})
    monkeypatch.setattr(_backend, "_arch_of_index", {0: "sm_90"})
    gpu = torch.device("cuda", 0)
    assert _backend.has_layer_entries("eq_conv2d", gpu, "g_conv")
    assert not _backend.has_layer_entries("eq_conv2d", gpu, "d_conv") and not _backend.has_layer_entries("eq_conv2d", gpu, None)
    assert _backend.auto_order("eq_conv2d", gpu, 99, "g_conv") == ("ref", "ref")
    assert not _backend.auto_prefers_other_than_ref("bias_act_pixel_norm", gpu)
    with ops.graph_mode():
        assert _backend._entries("eq_conv2d", gpu) == ("ref",)
        assert not _backend.has_layer_entries("eq_conv2d", gpu, "g_conv")
        assert _backend.auto_prefers_other_than_ref("bias_act_pixel_norm", gpu)
    assert not _backend.auto_prefers_other_than_ref("x", "cpu")
    monkeypatch.setattr(_backend, "AUTO_TABLE", {"sm_90": {"lerp": (C("ref", 0), "ref")}})
    assert not _backend.auto_prefers_other_than_ref("lerp", gpu)  # a conditional ref is still the reference


def test_auto_runs_the_fused_form_where_the_table_prefers_it(monkeypatch):
    """forms: {"g_up": "fused"} makes auto run an up-conv in the official 4x4 transposed form (the
    same function); explicit backends and the other layer kinds are left alone."""
    from progan_fast.ops import _backend
    monkeypatch.setattr(_backend, "AUTO_FORMS", {"sm_90": {"g_up": ("fused", 0), "d_down": ("unfused", 0),
                                                           "g_conv": ("fused", 1000)}})
    monkeypatch.setattr(_backend, "_arch_of_index", {0: "sm_90"})
    gpu = torch.device("cuda", 0)
    assert _backend.preferred_form("g_up", gpu) == "fused" and _backend.preferred_form("d_down", gpu) == "unfused"
    assert _backend.preferred_form("g_up", "cpu") is None and _backend.preferred_form(None, gpu) is None
    # a size threshold: fused from 1000 input elements on
    assert [_backend.preferred_form("g_conv", gpu, n) for n in (999, 1000, None)] == ["unfused", "fused", "fused"]
    seen = []
    real = _backend._registry["ref"]["eq_conv2d"]
    monkeypatch.setitem(_backend._registry["ref"], "eq_conv2d", lambda *a, **k: seen.append(k["fused_scale"]) or real(*a, **k))
    monkeypatch.setattr(ops, "preferred_form",  # CPU stands in; the up layer's x has 160 elements
                        lambda layer, device, numel: {"g_up": "fused"}.get(layer) if numel >= 100 else None)
    x, w, b = torch.randn(2, 5, 4, 4), torch.randn(7, 5, 3, 3), torch.randn(7)
    y = ops.eq_conv2d(x, w, b, up=True, pixel_norm=True)
    torch.testing.assert_close(y, ops.reference.eq_conv2d(x, w, b, up=True, pixel_norm=True), rtol=1e-5, atol=1e-5)
    ops.eq_conv2d(x, w, b, up=True, pixel_norm=True, impl="ref")
    ops.eq_conv2d(torch.randn(2, 5, 8, 8), w, b, down=True)
    ops.eq_conv2d(torch.randn(1, 5, 4, 4), w, b, up=True, pixel_norm=True)  # 80 elements: below the threshold
    assert seen == [True, False, False, False]


def test_an_unreadable_table_warns_once(tmp_path):
    from progan_fast.ops import _backend
    bad = tmp_path / "auto.json"
    for text in ("[1, 2]", '{"archs": {"sm_90": {"forms": {"d_down": {"min_numel": 5}}}}}'):  # a form without its form
        bad.write_text(text)
        with pytest.warns(RuntimeWarning) as record:
            assert _backend._load_auto_tables(str(bad)) == ({}, {}, {})
        assert len(record) == 1


@pytest.mark.parametrize("k, up, down, pn, act, fused, kind", [
    (1, False, False, False, "linear", False, "to_rgb"), (1, False, False, False, "lrelu", False, "from_rgb"),
    (3, True, False, True, "lrelu", False, "g_up"), (3, True, False, True, "lrelu", True, "g_up_fused"),
    (3, False, False, True, "lrelu", False, "g_conv"), (3, False, False, False, "lrelu", False, "d_conv"),
    (3, False, True, False, "lrelu", False, "d_down"), (4, False, False, False, "lrelu", False, "d_dense4"),
    (5, False, False, False, "lrelu", False, None)])
def test_conv_layer_kind_names_the_bench_layers(k, up, down, pn, act, fused, kind):
    from progan_fast.ops import _backend
    assert _backend.conv_layer_kind(k, up, down, pn, act, fused) == kind


def test_unreadable_auto_table_means_reference(tmp_path):
    from progan_fast.ops import _backend
    bad = tmp_path / "auto.json"
    bad.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="runs the reference"):
        assert _backend._load_auto_tables(str(bad))[0] == {}


def test_describe_names_the_backend_of_every_op(monkeypatch):
    from progan_fast.ops import _backend
    assert ops.describe(torch.device("cpu")) == "ref"
    fake = lambda *a, **k: None  # noqa: E731
    monkeypatch.setitem(_backend._registry["triton"], "fade_reals", fake)
    monkeypatch.setitem(_backend._load_state, "triton", True)
    monkeypatch.setattr(_backend, "AUTO_TABLE", {"sm_90": {"fade_reals": ("triton", "ref")}})
    monkeypatch.setattr(_backend, "AUTO_TABLE_GRAPH", {})
    monkeypatch.setattr(_backend, "AUTO_FORMS", {})
    monkeypatch.setattr(_backend, "_arch_of_index", {0: "sm_90"})
    assert ops.describe(torch.device("cuda", 0)) == "ref (fade_reals: triton)"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample2x_is_nearest_and_keeps_the_layout(dtype, channels_last):
    """Each input pixel becomes a 2x2 block of itself, in x's memory format (a layout change here
    would silently turn every later layer of G back to NCHW)."""
    x = torch.randn(3, 5, 4, 7).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = R.upsample2x(x)
    assert y.dtype == dtype and y.shape == (3, 5, 8, 14)
    for dy in (0, 1):
        for dx in (0, 1):
            assert torch.equal(y[:, :, dy::2, dx::2], x)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last


# The one-pass casts claim bit-identity on CUDA too (one kernel casting on load and store there; CPU
# computes through temporaries): the GPU run repeats these tests on the device.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_equalized_weight_scales_and_casts_in_one_step_bit_identically(dtype, channels_last, device, deterministic_cudnn):
    """equalized_weight(w, gain, dtype) is (w * scale).to(dtype) bit for bit, in w's layout, with
    the same first- and second-order gradients (through a conv, as the penalty differentiates it)."""
    torch.manual_seed(0)
    w = torch.randn(6, 5, 3, 3, device=device)
    if channels_last:
        w = w.contiguous(memory_format=torch.channels_last)
    gain, scale = math.sqrt(2), math.sqrt(2) / math.sqrt(5 * 9)
    w_new, w_old = w.clone().requires_grad_(), w.clone().requires_grad_()
    x = torch.randn(2, 5, 4, 4, device=device).to(dtype).requires_grad_()
    a, b = R.equalized_weight(w_new, gain, dtype), (w_old * scale).to(dtype)
    assert a.dtype == dtype and torch.equal(a, b)
    assert a.stride() == b.stride() == torch.empty_like(w, dtype=dtype).stride()
    outs = []
    for wt, leaf in ((a, w_new), (b, w_old)):
        (gx,) = torch.autograd.grad(F.conv2d(x, wt, padding=1).float().square().sum(), x, create_graph=True)
        gx.float().square().sum().backward()
        outs.append((gx.detach(), leaf.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert torch.equal(R.equalized_weight(w, gain), w * scale)  # no dtype: the parameter's


def test_equalized_linear_under_autocast_matches_scale_then_autocast():
    from progan_fast.nn import EqualizedLinear
    torch.manual_seed(0)
    layer = EqualizedLinear(12, 7, gain=1.0, act="lrelu")
    x = torch.randn(5, 12, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        y_old = R.bias_act(F.linear(x, R.equalized_weight(layer.weight, 1.0)), layer.bias, act="lrelu")
    assert y.dtype == y_old.dtype == torch.bfloat16 and torch.equal(y, y_old)
    g_new = torch.autograd.grad(y.float().sum(), layer.weight)[0]
    g_old = torch.autograd.grad(y_old.float().sum(), layer.weight)[0]
    assert torch.equal(g_new, g_old)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_avg_pool2x2_matches_avg_pool2d_to_second_order_without_zero_fills(dtype, channels_last, device, deterministic_cudnn):
    """avg_pool2x2 is F.avg_pool2d(x, 2): same values, layout, first- and second-order gradients
    (through a conv, as the penalty differentiates D's down layers), and its double backward creates
    no zero tensor the size of x (aten's rule for avg_pool2d_backward does)."""
    torch.manual_seed(0)
    x0 = torch.randn(3, 4, 6, 8, device=device).to(dtype)
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    w = torch.randn(5, 4, 3, 3, device=device).to(dtype)
    results = []
    for pool in (R.avg_pool2x2, lambda t: F.avg_pool2d(t, 2)):
        x = x0.clone().requires_grad_()
        h = F.conv2d(x, w, padding=1).requires_grad_()
        y = pool(h)
        (gx,) = torch.autograd.grad(y.float().square().sum(), x, create_graph=True)
        zeros = []

        class Spy(torch.utils._python_dispatch.TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if "zero" in str(func.overloadpacket) and isinstance(out, torch.Tensor) and out.shape == h.shape:
                    zeros.append(str(func.overloadpacket))
                return out
        with Spy():
            gx.float().square().sum().backward()
        results.append((y.detach(), gx.detach(), x.grad, zeros))
    (y1, g1, xg1, z1), (y2, g2, xg2, z2) = results
    assert torch.equal(y1, y2) and y1.stride() == y2.stride()
    assert torch.equal(g1, g2) and torch.equal(xg1, xg2)
    assert not z1 and z2  # the spy sees aten's zero fill, and none from avg_pool2x2


def _bias_act_unfused(x, b=None, act="lrelu", slope=0.2, gain=1.0, dim=1, pixel_norm=False, eps=1e-8):
    """The epilogues written out step by step in fp32: upcast, add, activate, scale, (normalize), cast."""
    up = lambda t: t.float() if t.dtype in (torch.float16, torch.bfloat16) else t  # noqa: E731
    y = up(x)
    if b is not None:
        y = y + up(b).reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    y = F.leaky_relu(y, slope) if act == "lrelu" else y
    if gain != 1.0:
        y = y * gain
    if pixel_norm:
        y = y * torch.rsqrt(y.square().mean(dim=1, keepdim=True) + eps)
    return y.to(x.dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("op", ["bias_act", "bias_act_pixel_norm"])
@pytest.mark.parametrize("fp32_bias", [True, False])
def test_epilogues_fold_upcast_and_gain_bit_identically(dtype, op, fp32_bias, channels_last, device):
    """The reference epilogues read a half x straight into the fp32 bias add and fuse the gain with
    the final cast: the same values, first- and second-order gradients as the step-by-step form,
    with fewer passes over the activation in half precision."""
    torch.manual_seed(0)
    x0 = torch.randn(3, 4, 5, 6, device=device).to(dtype)
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    b0 = torch.randn(4, device=device).to(torch.float32 if fp32_bias else dtype)
    kw = dict(act="lrelu", slope=0.2, gain=math.sqrt(2))
    new = functools.partial(getattr(R, op), **kw)
    old = functools.partial(_bias_act_unfused, pixel_norm=op == "bias_act_pixel_norm", **kw)
    results = []
    for f in (new, old):
        x, b = x0.clone().requires_grad_(), b0.clone().requires_grad_()
        y = f(x, b)
        grads = torch.autograd.grad(y.float().square().sum(), (x, b), create_graph=True)
        sum(g.float().square().sum() for g in grads).backward()
        results.append((y.detach(), *(g.detach() for g in grads), x.grad, b.grad))
    for a, c in zip(*results):
        assert a.dtype == c.dtype and a.stride() == c.stride() and torch.equal(a, c)
    if dtype == torch.bfloat16 and op == "bias_act" and fp32_bias and not channels_last:
        class Count(torch.utils._python_dispatch.TorchDispatchMode):
            n = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                Count.n += (isinstance(out, torch.Tensor) and out.shape == x0.shape
                            and func.overloadpacket is not torch.ops.aten.empty_like)  # an allocation
                return out
        with Count():
            R.bias_act(x0, b0, **kw)
        assert Count.n == 3  # add (x read as fp32), leaky_relu, gain-and-cast: was 5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape,channels_last", [((3, 5, 4, 4), False), ((3, 5, 4, 4), True), ((6, 9), False)])
def test_pixel_norm_fuses_its_final_cast_bit_identically(dtype, shape, channels_last, device):
    """pixel_norm multiplies by the per-pixel factor straight into x's dtype: the same values, layout,
    first- and second-order gradients as multiplying in fp32 and then casting."""
    torch.manual_seed(0)
    x0 = torch.randn(*shape, device=device).to(dtype)
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)

    def two_step(x):
        y = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        return (y * torch.rsqrt(y.square().mean(dim=1, keepdim=True) + 1e-8)).to(x.dtype)
    results = []
    for f in (R.pixel_norm, two_step):
        x = x0.clone().requires_grad_()
        y = f(x)
        (g,) = torch.autograd.grad(y.float().pow(3).sum(), x, create_graph=True)
        g.float().square().sum().backward()
        results.append((y.detach(), g.detach(), x.grad))
    for a, c in zip(*results):
        assert a.dtype == c.dtype and a.stride() == c.stride() and torch.equal(a, c)
