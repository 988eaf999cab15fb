"""Class-conditional PGGAN: shapes, both D heads train, the AC-GAN label loss has gradients, labels are
drawn and sharded like the latents, exact resume, and clear errors on bad input."""
import numpy as np
import pytest
import torch

from progan_fast.data import MultiResolutionDataset
from progan_fast.models import Discriminator, Generator, count_parameters
from progan_fast.training.config import TrainConfig
from progan_fast.training.loss import d_loss_wgangp, g_loss_wgan
from progan_fast.training.step import TrainStep
from progan_fast.training.trainer import Trainer

K = 5


def _nets(head="acgan", res=16, k=K):
    G = Generator(res, 1, fmap_base=64, fmap_max=16, latent_size=16, num_classes=k)
    D = Discriminator(res, 1, fmap_base=64, fmap_max=16, num_classes=k, cond_head=head)
    return G, D


def test_shapes_and_label_checks():
    G, Da = _nets("acgan")
    _, Dp = _nets("projection")
    z, y = torch.randn(8, 16), torch.randint(K, (8,))
    img = G(z, 3, 0.5, y)
    assert img.shape == (8, 1, 8, 8)
    assert G.latent(z, y).shape == (8, 32)  # embedding as wide as the latent by default
    assert Da(img, 3, 0.5).shape == (8, 1 + K)
    assert Dp(img, 3, 0.5, y).shape == (8, 1)
    with pytest.raises(ValueError, match="class-conditional .* pass labels"):
        G(z, 3)
    with pytest.raises(ValueError, match="class-conditional .* pass labels"):
        Dp(img, 3)
    with pytest.raises(ValueError, match="labels must be integers of shape"):
        G(z, 3, 1.0, y.float())
    with pytest.raises(ValueError, match="unconditional"):
        Generator(16, 1, fmap_base=64, fmap_max=16, latent_size=16)(z, 3, 1.0, y)
    with pytest.raises(ValueError, match="cond_head"):
        Discriminator(16, 1, num_classes=K, cond_head="concat")


def test_labels_change_the_outputs():
    G, Dp = _nets("projection")
    z = torch.randn(4, 16).repeat(2, 1)
    y = torch.tensor([0, 1, 2, 3, 1, 2, 3, 4])
    img = G(z, 4, 1.0, y)
    assert not torch.allclose(img[:4], img[4:])
    x = torch.randn(4, 1, 16, 16).repeat(2, 1, 1, 1)
    s = Dp(x, 4, 1.0, y)
    assert not torch.allclose(s[:4], s[4:])


def test_unconditional_networks_are_unchanged():
    G = Generator(32, 3, fmap_base=256, fmap_max=32)
    D = Discriminator(32, 3, fmap_base=256, fmap_max=32)
    assert not hasattr(G, "embed") and not hasattr(D, "embed") and D.dense1.weight.shape[0] == 1
    Gc = Generator(32, 3, fmap_base=256, fmap_max=32, num_classes=10, label_embed_size=7)
    extra = 10 * 7 + 7 * G.dense.weight.shape[0]  # the embedding + the dense layer's extra inputs
    assert count_parameters(Gc) == count_parameters(G) + extra


def test_acgan_label_loss_gradients_flow():
    G, D = _nets("acgan")
    reals, y = torch.randn(8, 1, 8, 8), torch.randint(K, (8,))
    fakes = G(torch.randn(8, 16), 3, 1.0, y).detach()
    mix = torch.rand(8, 1, 1, 1)
    grads = {}
    for w in (0.0, 1.0):
        D.zero_grad(set_to_none=True)
        loss, stats = d_loss_wgangp(D, reals, fakes, 3, 1.0, mix=mix, labels=y, cond_weight=w)
        loss.backward()
        grads[w] = D.dense1.weight.grad[1:].clone()  # the class-logit rows
        assert torch.isfinite(stats["d_label_loss"]) and stats["d_label_loss"] > 0
    assert grads[0.0].abs().max() == 0  # the score alone never touches the class rows
    assert grads[1.0].abs().max() > 0
    # G: the label term alone reaches G's label embedding (through D's frozen classifier)
    D.requires_grad_(False)
    yf = torch.randint(K, (8,))
    fakes = G(torch.randn(8, 16), 3, 1.0, yf)
    stats = {}
    with_label = g_loss_wgan(D, fakes, 3, 1.0, labels=yf, cond_weight=1.0, stats=stats)
    score_only = g_loss_wgan(D, fakes, 3, 1.0, labels=yf, cond_weight=0.0)
    (g,) = torch.autograd.grad(with_label - score_only, G.embed.weight)
    assert g.abs().max() > 0 and torch.isfinite(stats["g_label_loss"])


@pytest.mark.parametrize("head", ["acgan", "projection"])
def test_both_heads_train_with_finite_losses(head):
    G, D = _nets(head)
    step = TrainStep(G, D, amp_dtype=torch.bfloat16)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    for _ in range(3):
        stats = step(torch.randn(8, 1, 8, 8), 3, 0.6, torch.randint(K, (8,)))
        assert all(torch.isfinite(v) for v in stats.values()), stats
    assert step.skipped_steps == 0
    assert not torch.equal(G.embed.weight, before["embed.weight"])  # the embedding learns
    assert ("d_label_loss" in stats) == (head == "acgan")


def test_fake_labels_are_uniform_and_sharded_like_latents():
    def make(rank, world):
        G, D = _nets()
        return TrainStep(G, D, generator=torch.Generator().manual_seed(7), rank=rank, world_size=world)
    full = make(0, 1)
    z, y = full._latents(8), full._labels(8)
    for rank in (0, 1):
        part = make(rank, 2)
        assert torch.equal(part._latents(4), z[rank::2]) and torch.equal(part._labels(4), y[rank::2])
    many = full._labels(5000)
    counts = torch.bincount(many, minlength=K).float()
    assert many.min() >= 0 and many.max() < K and (counts / 5000 - 1 / K).abs().max() < 0.03


def _cfg(head, **kw):
    base = dict(resolution=16, num_channels=1, fmap_base=64, fmap_max=16, latent_size=16, stable_kimg=0.064,
                fade_kimg=0.064, minibatch={4: 8, 8: 8, 16: 8}, tick_kimg=0.048, grid_size=6, device="cpu",
                snapshot_ticks=1000, cond=True, cond_head=head, num_classes=K)
    base.update(kw)
    return TrainConfig(**base)


def _dataset(labels=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 16, 16, 1), generator=g, dtype=torch.uint8).numpy()
    return MultiResolutionDataset(x, (np.arange(40) % K) if labels else None)


def _weights(tr):
    return {f"{n}.{k}": v for n, m in (("G", tr.G), ("D", tr.D), ("Gs", tr.step.Gs)) for k, v in m.state_dict().items()}


@pytest.mark.parametrize("head", ["acgan", "projection"])
def test_conditional_resume_mid_fade_is_exact(tmp_path, head):
    cfg, ds = _cfg(head, total_kimg=0.12), _dataset()
    (tmp_path / "full").mkdir()
    full = Trainer(cfg, ds, tmp_path / "full", progress=False)
    assert full.run() == "done"
    (tmp_path / "part").mkdir()
    part = Trainer(cfg, ds, tmp_path / "part", progress=False)
    assert part.run(stop_at_nimg=72 + 8 * 2) == "stopped"
    state = torch.load(tmp_path / "part" / "checkpoint-latest.pt", weights_only=False)
    assert 0 < 1 - state["phase"]["alpha"] < 1, "the stop should land mid-fade"
    resumed = Trainer(cfg, ds, tmp_path / "part", progress=False)
    resumed.load_state_dict(state)
    assert resumed.run() == "done" and resumed.cur_nimg == full.cur_nimg
    wf, wr = _weights(full), _weights(resumed)
    for k in wf:
        assert torch.equal(wf[k], wr[k]), k


def test_trainer_refuses_unlabelled_data(tmp_path):
    with pytest.raises(ValueError, match="--cond needs class labels"):
        Trainer(_cfg("acgan"), _dataset(labels=False), tmp_path, progress=False)


def test_cli_cond_without_labels_is_one_clear_line(tmp_path, capsys):
    from progan_fast import train
    data = tmp_path / "nolabels.npz"
    np.savez(data, images=np.zeros((8, 8, 8), np.uint8))
    with pytest.raises(SystemExit) as exc:
        train.main(["--data", str(data), "--cond", "--outdir", str(tmp_path / "runs"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--cond needs class labels" in err and "'labels' key" in err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit):
        train.main(["--data", str(data), "--cond-head", "projection", "--outdir", str(tmp_path / "runs")])
    assert "--cond-head needs --cond" in capsys.readouterr().err


# -- GPU: the conditional step keeps the no-host-sync and CUDA-graph properties of TrainStep ----------

@pytest.mark.gpu
@pytest.mark.parametrize("head", ["acgan", "projection"])
def test_conditional_eager_step_never_synchronizes(head):
    G, D = (m.cuda() for m in _nets(head))
    step = TrainStep(G, D, amp_dtype=torch.bfloat16, channels_last=True)
    reals, y = torch.randn(8, 1, 8, 8, device="cuda"), torch.randint(K, (8,), device="cuda")
    step(reals, 3, 1.0, y)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for alpha in (1.0, 0.3):
            step(reals, 3, alpha, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.parametrize("head", ["acgan", "projection"])
def test_conditional_graphed_run_equals_eager_run(head, one_backend_eager_and_graphed):
    import copy
    torch.manual_seed(0)
    G, D = (m.cuda() for m in _nets(head))
    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    eager = TrainStep(G, D, generator=torch.Generator("cuda").manual_seed(7))
    graphed = TrainStep(G2, D2, generator=torch.Generator("cuda").manual_seed(7), cuda_graph=True)
    g = torch.Generator("cuda").manual_seed(1)
    batches = [(torch.randn(8, 1, 8, 8, device="cuda", generator=g), torch.randint(K, (8,), device="cuda", generator=g))
               for _ in range(6)]
    for reals, y in batches:
        a, b = eager(reals, 3, 1.0, y), graphed(reals, 3, 1.0, y)
        for k in a:
            torch.testing.assert_close(a[k].float().cpu(), b[k].float().cpu(), rtol=1e-5, atol=1e-6, msg=k)
    assert any(e.graph is not None for e in graphed._graphs.values()), "nothing was captured"
    for m1, m2 in ((G, G2), (D, D2)):
        for (n, p1), p2 in zip(m1.state_dict().items(), m2.state_dict().values()):
            torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6, msg=n)
    assert torch.equal(eager.generator.get_state(), graphed.generator.get_state())
