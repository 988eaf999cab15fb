"""The training step without host synchronization, and its CUDA-graph capture (TrainStep(cuda_graph=True)).

CPU: the device-side skip of non-finite steps (parameters, Adam moments and step count untouched; the
counter is a device tensor). GPU: no host sync inside an eager step (sync debug mode "error"), and a
graphed run (warm-up, capture, replays through a fade and a non-finite batch) equals the eager run.
"""
import copy

import pytest
import torch

from progan_fast.models import Discriminator, Generator
from progan_fast.training.step import TrainStep


def _nets(res=16, ch=1, device="cpu"):
    G = Generator(res, ch, fmap_base=64, fmap_max=16, latent_size=16).to(device)
    D = Discriminator(res, ch, fmap_base=64, fmap_max=16).to(device)
    return G, D


@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16])
def test_nonfinite_d_step_is_skipped_on_device(amp_dtype):
    G, D = _nets()
    step = TrainStep(G, D, amp_dtype=amp_dtype)
    d0, g0 = copy.deepcopy(D.state_dict()), copy.deepcopy(G.state_dict())
    reals = torch.randn(4, 1, 8, 8)
    reals[1, 0, 2, 3] = float("nan")
    stats = step(reals, 3, 1.0)
    assert isinstance(step._skipped, torch.Tensor) and step.skipped_steps == 1  # D skipped, G applied
    assert not torch.isfinite(stats["d_loss"])
    for k, v in D.state_dict().items():
        assert torch.equal(v, d0[k]), k
    for state in step.opt_d.state.values():  # the fused kernel left the moments and the step count alone
        assert float(state["step"]) == 0
        assert not state["exp_avg"].any() and not state["exp_avg_sq"].any()
    assert any(not torch.equal(v, g0[k]) for k, v in G.state_dict().items())
    assert all(float(s["step"]) == 1 for s in step.opt_g.state.values())
    step(torch.randn(4, 1, 8, 8), 3, 1.0)
    assert step.skipped_steps == 1
    assert any(not torch.equal(v, d0[k]) for k, v in D.state_dict().items())


def test_skip_counter_round_trips_through_state_dict():
    G, D = _nets()
    step = TrainStep(G, D)
    step.skipped_steps = 3
    state = step.state_dict()
    assert state["skipped_steps"] == 3 and isinstance(state["skipped_steps"], int)
    other = TrainStep(*_nets())
    other.load_state_dict(state)
    assert other.skipped_steps == 3


def test_set_lr_changes_the_optimizer_rate():
    step = TrainStep(*_nets(), lr=1e-3)
    step.set_lr(2e-3)
    assert all(g["lr"] == 2e-3 for opt in (step.opt_g, step.opt_d) for g in opt.param_groups)
    step.reset_optimizers()
    assert all(g["lr"] == 2e-3 for opt in (step.opt_g, step.opt_d) for g in opt.param_groups)


def test_graph_lr_loaded_on_the_cpu_moves_to_the_device():
    """A --cuda-graph checkpoint stores each group's lr as a tensor, and checkpoints load with
    map_location="cpu": the step must put it back on its device (fused Adam and the captured graph
    read it there) and drop graphs that captured the old one."""
    step = TrainStep(*_nets())
    step.cuda_graph, step.device = True, torch.device("meta")  # meta stands in for the GPU here
    for opt in (step.opt_g, step.opt_d):
        for group in opt.param_groups:
            group["lr"] = torch.tensor(5e-4)
    step._graphs[("old phase",)] = None
    step._sync_lr()
    assert all(g["lr"].device.type == "meta" for opt in (step.opt_g, step.opt_d) for g in opt.param_groups)
    assert not step._graphs


def test_resume_lays_optimizer_state_out_like_the_parameters():
    """An NCHW run's checkpoint resumed channels_last (CPU -> GPU, or --no-channels-last -> default):
    Adam's moments take the parameters' layout (CUDA's fused Adam refuses mixed layouts), values kept."""
    from progan_fast.models import use_channels_last
    src = TrainStep(*_nets())
    src(torch.randn(4, 1, 8, 8), 3, 1.0)
    state = src.state_dict()
    G, D = _nets()
    use_channels_last(G, D)
    dst = TrainStep(G, D, channels_last=True)
    dst.load_state_dict(state)
    checked = 0
    for opt, ref in ((dst.opt_g, src.opt_g), (dst.opt_d, src.opt_d)):
        for p, p_ref in zip((p for g in opt.param_groups for p in g["params"]),
                            (p for g in ref.param_groups for p in g["params"])):
            if not opt.state.get(p):  # layers beyond 8 px: never stepped
                continue
            for key in ("exp_avg", "exp_avg_sq"):
                moment = opt.state[p][key]
                assert moment.stride() == p.stride() and torch.equal(moment, ref.state[p_ref][key])
                checked += p.dim() == 4 and not p.is_contiguous()
    assert checked > 0  # channels_last parameters were among them
    dst(torch.randn(4, 1, 8, 8), 3, 1.0)


def test_cuda_graph_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
        TrainStep(*_nets(), cuda_graph=True)


def test_cuda_graph_refuses_multi_process():
    with pytest.raises(ValueError, match="needs a CUDA device|single-process"):
        TrainStep(*_nets(), cuda_graph=True, world_size=2)


def test_cuda_graph_is_on_by_default_for_one_cuda_device_only():
    from progan_fast.training.step import default_cuda_graph
    assert default_cuda_graph(torch.device("cuda", 0), 1)
    assert not default_cuda_graph(torch.device("cuda", 0), 2)  # the all-reduce is not captured
    assert not default_cuda_graph(torch.device("cpu"), 1)


def test_failed_capture_is_one_clear_error(monkeypatch):
    """Capture is on by default on one GPU, so its failure must say how to go on: --no-cuda-graph,
    and --resume to continue the run. (No eager fallback: a failed capture can leave CUDA's capture
    stream current and the generators in capture mode.) The capture is made to fail on the CPU."""
    from progan_fast.training.step import _GraphEntry
    step = TrainStep(*_nets())
    step.cuda_graph = True  # (the constructor refuses it without CUDA)
    reals = torch.randn(4, 1, 8, 8)
    step._graphs[step._graph_key(reals, 3, 1.0)] = _GraphEntry(warm=step.graph_warmup)

    def failing_capture(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(step, "_capture", failing_capture)
    with pytest.raises(RuntimeError, match=r"capturing the 8 px step failed.*--no-cuda-graph.*--resume"):
        step(reals, 3, 1.0)


# -- GPU ---------------------------------------------------------------------------------------------

AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["fp32", "bf16", "fp16"])
def test_eager_step_never_synchronizes(amp):
    G, D = _nets(device="cuda")
    step = TrainStep(G, D, amp_dtype=AMP[amp], channels_last=True)
    reals = torch.randn(8, 1, 8, 8, device="cuda")
    step(reals, 3, 1.0)  # lazy state (optimizer, scaler, cuDNN) outside the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for alpha in (1.0, 0.3):
            step(reals, 3, alpha)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _run(step, batches):
    out = []
    for reals, res_log2, alpha in batches:
        out.append({k: v.float().cpu() for k, v in step(reals, res_log2, alpha).items()})
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["fp32", "bf16", "fp16"])
def test_graphed_run_equals_eager_run(amp, one_backend_eager_and_graphed):
    torch.manual_seed(0)
    G, D = _nets(device="cuda")
    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    kw = dict(amp_dtype=AMP[amp], channels_last=False)
    eager = TrainStep(G, D, generator=torch.Generator("cuda").manual_seed(7), **kw)
    graphed = TrainStep(G2, D2, generator=torch.Generator("cuda").manual_seed(7), cuda_graph=True, **kw)
    g = torch.Generator("cuda").manual_seed(1)
    batches = [(torch.randn(8, 1, 8, 8, device="cuda", generator=g), 3, 1.0) for _ in range(5)]
    bad = torch.randn(8, 1, 8, 8, device="cuda", generator=g)
    bad[2, 0, 1, 1] = float("inf")
    batches += [(bad, 3, 1.0), (batches[0][0], 3, 1.0)]
    batches += [(torch.randn(8, 1, 16, 16, device="cuda", generator=g), 4, a) for a in (0.1, 0.2, 0.3, 0.4, 0.5)]
    s_eager, s_graph = _run(eager, batches), _run(graphed, batches)
    assert any(e.graph is not None for e in graphed._graphs.values()), "nothing was captured"
    tol = dict(rtol=1e-5, atol=1e-6) if amp == "fp32" else dict(rtol=1e-3, atol=1e-4)
    for a, b in zip(s_eager, s_graph):
        for k in a:
            torch.testing.assert_close(a[k], b[k], equal_nan=True, **tol)
    assert eager.skipped_steps == graphed.skipped_steps >= 1
    for m1, m2 in ((G, G2), (D, D2), (eager.Gs, graphed.Gs)):
        for (n, p1), p2 in zip(m1.state_dict().items(), m2.state_dict().values()):
            torch.testing.assert_close(p1, p2, msg=n, **tol)
    # the latent generator advanced identically, so a checkpoint resumes the same stream
    assert torch.equal(eager.generator.get_state(), graphed.generator.get_state())


@pytest.mark.gpu
def test_capture_returns_a_replay():
    G, D = _nets(device="cuda")
    step = TrainStep(G, D, amp_dtype=torch.bfloat16, cuda_graph=True, channels_last=True)
    reals = torch.randn(8, 1, 8, 8, device="cuda")
    replay = step.capture(reals, 3, 1.0)
    before = [p.clone() for p in D.parameters()]
    stats = replay()
    torch.cuda.synchronize()
    assert torch.isfinite(stats["d_loss"]) and any(not torch.equal(a, b) for a, b in zip(before, D.parameters()))


@pytest.mark.gpu
def test_graph_mode_backends_run_in_warm_up_and_capture(monkeypatch):
    """Inside the CUDA-graph path `auto` follows the graph lists: the warm-up steps and the capture
    both run the Triton ops a graph list names (nothing compiles during the capture), and the
    graphed run still equals the eager one (which runs the reference)."""
    from progan_fast import ops
    from progan_fast.ops import _backend
    if "triton" not in ops.available_backends():
        pytest.skip(f"triton unavailable: {ops.backend_error('triton')}")
    arch = _backend.cuda_arch()
    names = ("bias_act", "bias_act_pixel_norm", "pixel_norm", "minibatch_stddev", "lerp", "upsample_blend")
    monkeypatch.setattr(_backend, "AUTO_TABLE", {arch: {op: ("ref",) for op in names}})
    monkeypatch.setattr(_backend, "AUTO_TABLE_GRAPH", {arch: {op: ("triton", "ref") for op in names}})
    calls = []
    for op in names:
        fn = _backend._registry["triton"][op]
        monkeypatch.setitem(_backend._registry["triton"], op,
                            lambda *a, _fn=fn, _op=op, **k: calls.append((_op, torch.cuda.is_current_stream_capturing()))
                            or _fn(*a, **k))
    torch.manual_seed(0)
    G, D = _nets(device="cuda")
    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    eager = TrainStep(G, D, generator=torch.Generator("cuda").manual_seed(7))
    graphed = TrainStep(G2, D2, generator=torch.Generator("cuda").manual_seed(7), cuda_graph=True)
    g = torch.Generator("cuda").manual_seed(1)
    batches = [(torch.randn(8, 1, 16, 16, device="cuda", generator=g), 4, a) for a in (0.2, 0.4, 0.6, 0.8)]
    s_eager = _run(eager, batches)
    assert not calls  # eager: the reference everywhere
    s_graph = _run(graphed, batches)
    assert {c for c, capturing in calls if not capturing} == {c for c, capturing in calls if capturing}
    assert {c for c, _ in calls} >= {"bias_act", "bias_act_pixel_norm", "minibatch_stddev"}
    # same parameters in the first step: the losses agree to kernel precision; after that, Adam's
    # early near-sign updates may amplify 1-ulp differences of the fused kernels, so only closeness
    for k in s_eager[0]:
        torch.testing.assert_close(s_eager[0][k], s_graph[0][k], rtol=1e-4, atol=1e-5)
    for a, b in zip(s_eager[1:], s_graph[1:]):
        for k in a:
            assert torch.isfinite(b[k]).all()
            torch.testing.assert_close(a[k], b[k], rtol=5e-2, atol=5e-3)
