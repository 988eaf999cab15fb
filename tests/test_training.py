"""Losses, the train step (AMP, non-finite skips, EMA, Adam resets) and exact resume."""
import copy

import pytest
import torch

from progan_fast.data import MultiResolutionDataset
from progan_fast.models import Discriminator, Generator
from progan_fast.training.config import TrainConfig
from progan_fast.training.loss import d_loss_wgangp, gradient_penalty
from progan_fast.training.step import TrainStep
from progan_fast.training.trainer import Trainer


def _nets(res=16, ch=1):
    G = Generator(res, ch, fmap_base=64, fmap_max=16, latent_size=16)
    D = Discriminator(res, ch, fmap_base=64, fmap_max=16)
    return G, D


def test_gradient_penalty_is_the_official_formula():
    _, D = _nets()
    x = torch.randn(4, 1, 8, 8)
    _, pen = gradient_penalty(D, x, 3, 0.5)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(D(xr, 3, 0.5).sum(), xr)
    torch.testing.assert_close(pen, (g.flatten(1).norm(dim=1) - 1) ** 2)


def _d_grads(D, reals, fakes, mix, amp_dtype, scaler=None):
    D.zero_grad(set_to_none=True)
    loss, stats = d_loss_wgangp(D, reals, fakes, 3, 0.7, mix=mix, amp_dtype=amp_dtype, scaler=scaler)
    (scaler.scale(loss) if scaler else loss).backward()
    inv = 1.0 / scaler.get_scale() if scaler else 1.0
    return stats["penalty"], [p.grad.float() * inv for p in D.parameters() if p.grad is not None]


def _check_amp_matches_fp32(device, amp_dtype, scaler, tol):
    torch.manual_seed(1)
    _, D = _nets()
    D = D.to(device)
    reals, fakes = torch.randn(8, 1, 8, 8, device=device), torch.randn(8, 1, 8, 8, device=device)
    mix = torch.rand(8, 1, 1, 1, device=device)
    pen32, g32 = _d_grads(D, reals, fakes, mix, None)
    pen16, g16 = _d_grads(D, reals, fakes, mix, amp_dtype, scaler)
    assert pen32 > 1e-3
    torch.testing.assert_close(pen16, pen32, rtol=tol, atol=tol)
    flat32, flat16 = torch.cat([g.flatten() for g in g32]), torch.cat([g.flatten() for g in g16])
    rel = (flat16 - flat32).norm() / flat32.norm()
    assert rel < tol, rel


def test_penalty_and_d_grads_under_bf16_match_fp32():
    _check_amp_matches_fp32("cpu", torch.bfloat16, None, 3e-2)


@pytest.mark.gpu
def test_penalty_and_d_grads_under_fp16_loss_scaling_match_fp32():
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 12)
    _check_amp_matches_fp32("cuda", torch.float16, scaler, 1e-2)


def test_fp16_on_cpu_is_refused():
    G, D = _nets()
    with pytest.raises(ValueError, match="fp16 mixed precision needs a CUDA device"):
        TrainStep(G, D, amp_dtype=torch.float16)


def test_nonfinite_step_is_skipped_and_counted():
    G, D = _nets()
    step = TrainStep(G, D)
    before = copy.deepcopy(D.state_dict())
    reals = torch.randn(4, 1, 8, 8)
    reals[0, 0, 0, 0] = float("nan")
    step(reals, 3, 1.0)
    assert step.skipped_steps >= 1
    for k, v in D.state_dict().items():
        assert torch.equal(v, before[k]), k
    step(torch.randn(4, 1, 8, 8), 3, 1.0)  # a finite step afterwards still trains
    assert any(not torch.equal(v, before[k]) for k, v in D.state_dict().items())


def test_ema_is_lerp_toward_g():
    G, D = _nets()
    step = TrainStep(G, D, ema_beta=0.9)
    gs0 = [p.clone() for p in step.Gs.parameters()]
    step(torch.randn(4, 1, 4, 4), 2, 1.0)
    for p_gs, p_g, p0 in zip(step.Gs.parameters(), G.parameters(), gs0):
        torch.testing.assert_close(p_gs, p_g + (p0 - p_g) * 0.9)


def _cfg(**kw):
    base = dict(resolution=16, num_channels=1, fmap_base=64, fmap_max=16, latent_size=16, stable_kimg=0.064,
                fade_kimg=0.064, minibatch={4: 8, 8: 8, 16: 8}, tick_kimg=0.048, grid_size=4, device="cpu",
                snapshot_ticks=1000)
    base.update(kw)
    return TrainConfig(**base)


def _dataset():
    g = torch.Generator().manual_seed(0)
    return MultiResolutionDataset(torch.randint(0, 256, (40, 16, 16, 1), generator=g, dtype=torch.uint8).numpy())


def _weights(trainer):
    return {**{f"G.{k}": v for k, v in trainer.G.state_dict().items()},
            **{f"D.{k}": v for k, v in trainer.D.state_dict().items()},
            **{f"Gs.{k}": v for k, v in trainer.step.Gs.state_dict().items()}}


@pytest.mark.parametrize("amp", [False, True])
def test_resume_mid_fade_is_exact(tmp_path, amp):
    cfg = _cfg(amp=amp)
    ds = _dataset()
    full = Trainer(cfg, ds, tmp_path / "full", progress=False)
    (tmp_path / "full").mkdir()
    assert full.run() == "done"
    (tmp_path / "part").mkdir()
    part = Trainer(cfg, ds, tmp_path / "part", progress=False)
    stop = 72 + 8 * 3  # inside the first fade (64..128 img)
    assert part.run(stop_at_nimg=stop) == "stopped"
    state = torch.load(tmp_path / "part" / "checkpoint-latest.pt", weights_only=False)
    assert 0 < 1 - state["phase"]["alpha"] < 1, "the stop should land mid-fade"
    resumed = Trainer(cfg, ds, tmp_path / "part", progress=False)
    resumed.load_state_dict(state)
    assert resumed.run() == "done"
    assert resumed.cur_nimg == full.cur_nimg
    wf, wr = _weights(full), _weights(resumed)
    for k in wf:
        assert torch.equal(wf[k], wr[k]), k


def test_adam_state_reset_when_lod_changes(tmp_path):
    cfg = _cfg()
    (tmp_path / "r").mkdir()
    tr = Trainer(cfg, _dataset(), tmp_path / "r", progress=False)
    tr.run(stop_at_nimg=64)  # the whole first stable phase
    assert len(tr.step.opt_d.state) > 0
    opt_before = tr.step.opt_d
    tr.run(stop_at_nimg=80)  # one step at lod 2 (64 img), then the first fade step (72 img): reset
    assert tr.step.opt_d is not opt_before
    assert all(int(s["step"]) == 1 for s in tr.step.opt_d.state.values())
