"""The direct-launch cache of the Triton launchers (progan_fast/triton/_launch.py), with a fake kernel.

The real path needs a GPU (the GPU run of tests/test_triton_ops.py goes through it on every op);
here a stand-in for a JITFunction and its CompiledKernel checks what is cached, under which key,
with which argument list, and that any error falls back to Triton's normal launch.
"""
import types
import warnings

import pytest
import torch

pytest.importorskip("triton")
from progan_fast.triton import _launch  # noqa: E402


class FakeCompiled:
    def __init__(self, log, fail=False):
        self.log, self.fail = log, fail

    def __getitem__(self, grid):
        def runner(*args, stream=None):
            if self.fail:
                raise TypeError("function takes exactly 30 arguments (31 given)")
            self.log.append(("direct", grid, args, stream))
        return runner


class FakeKernel:
    """Signature (x_ptr, n, scale, BLOCK: constexpr, ACT: constexpr = 1)."""

    def __init__(self, fail=False, params=None):
        self.log, self.fail = [], fail
        p = lambda name, default=None, has=False: types.SimpleNamespace(name=name, default=default, has_default=has)  # noqa: E731
        self.params = params or [p("x_ptr"), p("n"), p("scale"), p("BLOCK"), p("ACT", 1, True)]

    def __getitem__(self, grid):
        def run(*args, **consts):
            self.log.append(("normal", grid, args, consts))
            return FakeCompiled(self.log, self.fail)
        return run


@pytest.fixture
def direct(monkeypatch):
    """The direct path switched on for CPU tensors, a fake stream, a clean cache."""
    monkeypatch.setattr(_launch.state, "enabled", True)
    monkeypatch.setattr(_launch.state, "error", None)
    monkeypatch.setattr(_launch.state, "plans", {})
    monkeypatch.setattr(_launch.state, "direct_calls", 0)
    monkeypatch.setattr(_launch.state, "device_type", "cpu")
    monkeypatch.setattr(_launch, "current_stream", lambda device: 1234)
    monkeypatch.setattr(_launch, "_hooks_installed", lambda: False)
    return _launch.state


def test_second_launch_of_a_key_takes_the_cached_launcher(direct):
    k, x = FakeKernel(), torch.zeros(64)
    _launch.launch(k, (4,), [x, 64, 0.5], dict(BLOCK=16, num_warps=4))
    _launch.launch(k, (4,), [x, 64, 0.25], dict(BLOCK=16, num_warps=4))  # floats are not specialized
    assert [e[0] for e in k.log] == ["normal", "direct"]
    _, grid, args, stream = k.log[1]
    assert grid == (4, 1, 1) and stream == 1234
    # every parameter in signature order: positional, then constexprs (options like num_warps are not
    # parameters; a defaulted constexpr gets its default)
    assert args[1:] == (64, 0.25, 16, 1) and args[0] is x
    assert direct.direct_calls == 1


@pytest.mark.parametrize("change", ["int_value", "dtype", "parameter_dtype", "alignment", "constexpr", "grid"])
def test_anything_triton_specializes_on_makes_a_new_key(direct, change):
    k, x = FakeKernel(), torch.zeros(64)
    if change == "parameter_dtype":  # a bias is an nn.Parameter: its dtype is specialized on too
        x = torch.nn.Parameter(torch.zeros(64))
    args, consts, grid = [x, 64, 0.5], dict(BLOCK=16), (4,)
    _launch.launch(k, grid, args, consts)
    if change == "parameter_dtype":
        args = [torch.nn.Parameter(torch.zeros(64, dtype=torch.float16)), 64, 0.5]
    elif change == "int_value":
        args = [x, 65, 0.5]
    elif change == "dtype":
        args = [x.double(), 64, 0.5]
    elif change == "alignment":
        args = [torch.zeros(65)[1:], 64, 0.5]  # 4-byte offset: not 16-byte aligned
    elif change == "constexpr":
        consts = dict(BLOCK=32)
    else:
        grid = (8,)
    _launch.launch(k, grid, args, consts)
    assert [e[0] for e in k.log] == ["normal", "normal"]


def test_a_failing_direct_launch_falls_back_and_turns_the_path_off(direct):
    k, x = FakeKernel(fail=True), torch.zeros(64)
    _launch.launch(k, (4,), [x, 64, 0.5], dict(BLOCK=16))
    with pytest.warns(RuntimeWarning, match="direct Triton launches turned off"):
        _launch.launch(k, (4,), [x, 64, 0.5], dict(BLOCK=16))
    assert [e[0] for e in k.log] == ["normal", "normal"]  # the op still ran, the normal way
    assert direct.enabled is False and "TypeError" in direct.error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _launch.launch(k, (4,), [x, 64, 0.5], dict(BLOCK=16))
    assert [e[0] for e in k.log] == ["normal"] * 3


def test_no_plan_when_the_signature_does_not_fit(direct):
    p = types.SimpleNamespace
    k = FakeKernel(params=[p(name="x_ptr", has_default=False, default=None), p(name="n", has_default=False, default=None),
                           p(name="scale", has_default=False, default=None),
                           p(name="MISSING", has_default=False, default=None)])
    x = torch.zeros(8)
    for _ in range(2):
        _launch.launch(k, (1,), [x, 8, 1.0], {})
    assert [e[0] for e in k.log] == ["normal", "normal"] and not direct.plans


def test_no_plan_with_launch_hooks_or_when_disabled(direct, monkeypatch):
    k, x = FakeKernel(), torch.zeros(8)
    monkeypatch.setattr(_launch, "_hooks_installed", lambda: True)
    for _ in range(2):
        _launch.launch(k, (1,), [x, 8, 1.0], dict(BLOCK=8))
    monkeypatch.setattr(_launch, "_hooks_installed", lambda: False)
    _launch.set_enabled(False)
    for _ in range(2):
        _launch.launch(k, (1,), [x, 8, 1.0], dict(BLOCK=8))
    assert [e[0] for e in k.log] == ["normal"] * 4


def test_interpreter_and_old_triton_never_take_it(monkeypatch):
    """CPU tensors (the interpreter) always launch normally; Triton < 3.3 passes only the
    non-constexpr arguments to its launcher, so the path stays off there."""
    k, x = FakeKernel(), torch.zeros(8)
    monkeypatch.setattr(_launch.state, "plans", {})
    for _ in range(2):
        _launch.launch(k, (1,), [x, 8, 1.0], dict(BLOCK=8))
    assert [e[0] for e in k.log] == ["normal", "normal"]
    monkeypatch.setattr(_launch.triton, "__version__", "3.2.0")
    assert not _launch._version_ok()
    monkeypatch.setattr(_launch.triton, "__version__", "3.6.0")
    assert _launch._version_ok()


@pytest.mark.gpu
def test_real_kernels_take_the_direct_path_and_agree_gpu():
    """On a GPU: repeated launches go through the cached launcher, with no fallback, and give the
    same results as Triton's normal launch (every op test in test_triton_ops.py runs this way too)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    from progan_fast import triton as pt
    if not _launch._version_ok():
        pytest.skip(f"Triton {_launch.triton.__version__} < 3.3: direct path off by design")
    _launch.set_enabled(True)
    x = torch.randn(8, 32, 8, 8, device="cuda").to(memory_format=torch.channels_last)
    b = torch.randn(32, device="cuda")

    def run():
        y = pt.bias_act_pixel_norm(x, b, gain=2 ** 0.5)
        return pt.minibatch_stddev(pt.downsample2x(y), group_size=4)
    run()
    before = _launch.state.direct_calls
    direct = run()
    assert _launch.state.error is None, _launch.state.error
    assert _launch.state.direct_calls == before + 4  # pixel norm 1, downsample 1, minibatch stddev 2
    _launch.set_enabled(False)
    try:
        normal = run()
    finally:
        _launch.set_enabled(True)
    assert torch.equal(direct, normal)
