"""Metrics: SWD, MS-SSIM, FID / IS against slow plain-numpy references and known cases; the shipped
classifier's accuracy; evaluate() and the CLI on tiny generators (errors included)."""
import json
import math

import numpy as np
import pytest
import torch

from progan_fast.data import MultiResolutionDataset, load_fashion_mnist
from progan_fast.metrics import (compare, evaluate, fid_from_features, frechet_distance,
                                 inception_score_from_logits, laplacian_pyramid, ms_ssim, ms_ssim_pairs, swd,
                                 trace_sqrt_product)
from progan_fast.metrics import sliced as swd_mod
from progan_fast.metrics.__main__ import main as cli
from progan_fast.models import Generator
from progan_fast.training.config import TrainConfig


@pytest.fixture(scope="module")
def fmnist32():
    images, labels, _ = load_fashion_mnist("bundled")
    ds = MultiResolutionDataset(images[:2000], labels[:2000])
    return ds.level(32), ds.labels


# ------------------------------------------------------------------ numpy references (slow, plain)

_K = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0


def _np_conv5(x, k):
    """'mirror' (reflect-101) 5x5 convolution of [N, C, H, W], one kernel tap at a time."""
    p = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    h, w = x.shape[2:]
    out = np.zeros_like(x)
    for i in range(5):
        for j in range(5):
            out += k[i, j] * p[:, :, i:i + h, j:j + w]
    return out


def _np_pyramid(x, levels):
    pyr = [x.astype(np.float64)]
    for _ in range(1, levels):
        down = _np_conv5(pyr[-1], _K)[:, :, ::2, ::2]
        up = np.zeros_like(pyr[-1])
        up[:, :, ::2, ::2] = down
        pyr[-1] = pyr[-1] - _np_conv5(up, 4 * _K)
        pyr.append(down)
    return pyr


def _np_swd(reals, fakes, seed):
    """SWD x1e3 with loops, drawing positions / directions in swd()'s documented order."""
    n, c, res = reals.shape[0], reals.shape[1], reals.shape[-1]
    resolutions = swd_mod.swd_resolutions(res)
    gen = torch.Generator().manual_seed(seed)
    pos = [[swd_mod.draw_positions(gen, n, r) for r in resolutions] for _ in range(2)]
    descs = []
    for s, imgs in enumerate((reals, fakes)):
        per_level = []
        for lvl, level in enumerate(_np_pyramid(imgs.numpy(), len(resolutions))):
            ys, xs = (t.numpy() for t in pos[s][lvl])
            d = np.stack([level[k // 128, :, ys[k] - 3:ys[k] + 4, xs[k] - 3:xs[k] + 4] for k in range(len(ys))])
            for ch in range(c):
                d[:, ch] = (d[:, ch] - d[:, ch].mean()) / d[:, ch].std()
            per_level.append(d.reshape(len(d), -1))
        descs.append(per_level)
    out = {}
    for lvl, r in enumerate(resolutions):
        dirs = swd_mod.draw_directions(gen, c * 49).double().numpy()
        a, b = descs[0][lvl], descs[1][lvl]
        out[f"swd_{r}"] = 1e3 * np.mean([np.mean(np.abs(np.sort(a @ d, axis=0) - np.sort(b @ d, axis=0)))
                                         for d in dirs])
    out["swd_avg"] = np.mean(list(out.values()))
    return out


def _np_gauss(size, sigma):
    r = np.arange(size) - (size - 1) / 2.0
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _np_ms_ssim(x, y, levels, weights):
    x, y = x.astype(np.float64), y.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    css, ssim = [], None
    for lvl in range(levels):
        size = min(11, x.shape[-1])
        win = _np_gauss(size, 1.5 * size / 11)
        f = lambda t: (np.lib.stride_tricks.sliding_window_view(t, (size, size), axis=(2, 3))  # noqa: E731
                       * win).sum((-1, -2))
        mx, my = f(x), f(y)
        sxx, syy, sxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
        cs = (2 * sxy + c2) / (sxx + syy + c2)
        ssim = ((2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1) * cs).mean((1, 2, 3))
        css.append(cs.mean((1, 2, 3)))
        x = (x[:, :, 0::2, 0::2] + x[:, :, 1::2, 0::2] + x[:, :, 0::2, 1::2] + x[:, :, 1::2, 1::2]) / 4
        y = (y[:, :, 0::2, 0::2] + y[:, :, 1::2, 0::2] + y[:, :, 0::2, 1::2] + y[:, :, 1::2, 1::2]) / 4
    val = np.maximum(ssim, 0) ** weights[-1]
    for lvl in range(levels - 1):
        val = val * np.maximum(css[lvl], 0) ** weights[lvl]
    return val


# ------------------------------------------------------------------ SWD

def test_laplacian_pyramid_matches_numpy_and_reconstructs():
    x = torch.randint(0, 256, (3, 2, 32, 32), dtype=torch.uint8)
    pyr = laplacian_pyramid(x, 3)
    ref = _np_pyramid(x.numpy(), 3)
    assert [p.shape[-1] for p in pyr] == [32, 16, 8]
    for p, r in zip(pyr, ref):
        np.testing.assert_allclose(p.numpy(), r, atol=2e-3)
    rec = pyr[-1]  # the band-pass levels plus the low-pass rebuild the image exactly
    for level in pyr[-2::-1]:
        rec = swd_mod._pyr_up(rec) + level
    np.testing.assert_allclose(rec.numpy(), x.float().numpy(), atol=2e-3)


def test_swd_matches_numpy_reference():
    reals = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    fakes = (reals.float() * 0.5 + torch.rand(5, 3, 32, 32) * 128).to(torch.uint8)
    got = swd(reals, fakes, seed=7, batch=2)
    ref = _np_swd(reals, fakes, seed=7)
    assert set(got) == {"swd_32", "swd_16", "swd_avg"}
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-4), k


def test_swd_identical_small_degraded_larger_and_batch_independent(fmnist32):
    x, y = fmnist32[0][:128], fmnist32[0][128:256]
    d = swd_mod.normalize_descriptors(torch.randn(500, 3, 7, 7))
    assert swd_mod.sliced_wasserstein(d, d, swd_mod.draw_directions(torch.Generator(), 147)) == 0.0
    same = swd(x, x, seed=1)  # same images, independently drawn patches: sampling noise only
    other = swd(x, y, seed=1)  # another sample of the same distribution
    blur = swd(x, swd_mod._blur(x.float()).round().to(torch.uint8), seed=1)
    noisy = swd(x, (x.float() + torch.randn(x.shape) * 40).clamp(0, 255).to(torch.uint8), seed=1)
    shifted = swd(x, torch.roll(x, (2, 2), (2, 3)), seed=1)
    for worse in (blur, noisy):  # fine detail changed: the 32 px level sees it
        assert worse["swd_32"] > 3 * max(same["swd_32"], other["swd_32"])
    assert shifted["swd_avg"] > 2 * max(same["swd_avg"], other["swd_avg"])
    assert swd(x[:40], y[:40], seed=2, batch=7) == pytest.approx(swd(x[:40], y[:40], seed=2, batch=256), rel=1e-5)


def test_swd_errors():
    a = torch.zeros(4, 1, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="same image count|one shape"):
        swd(a, a[:3])
    with pytest.raises(ValueError, match="at least 8 px"):
        swd(a[..., :4, :4], a[..., :4, :4])
    with pytest.raises(ValueError, match="at least 2 images"):
        swd(a[:1], a[:1])
    assert swd_mod.swd_resolutions(8) == [8]
    assert swd_mod.swd_resolutions(128) == [128, 64, 32, 16]


# ------------------------------------------------------------------ MS-SSIM

@pytest.mark.parametrize("size,levels", [(32, None), (32, 5), (24, 1), (64, 3)])
def test_ms_ssim_matches_numpy(size, levels):
    x = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8)
    y = (x.float() * 0.7 + torch.rand(x.shape) * 70).to(torch.uint8)
    got = ms_ssim(x, y, levels=levels, reduce=False)
    from progan_fast.metrics.msssim import WEIGHTS, default_levels
    lv = levels or default_levels(size)
    w = np.array(WEIGHTS[:lv])
    w = w if lv == 5 else w / w.sum()
    np.testing.assert_allclose(got.numpy(), _np_ms_ssim(x.numpy(), y.numpy(), lv, w), rtol=1e-9, atol=1e-12)


def test_ms_ssim_properties(fmnist32):
    x = fmnist32[0][:64]
    assert ms_ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert ms_ssim(x, x, levels=5) == pytest.approx(1.0, abs=1e-12)
    noise = torch.randint(0, 256, (64, 1, 32, 32), dtype=torch.uint8)
    assert ms_ssim(noise[:32], noise[32:]) < 0.1
    assert ms_ssim(x[:32], x[32:]) == pytest.approx(ms_ssim(x[32:], x[:32]), rel=1e-12)
    assert ms_ssim_pairs(x) < ms_ssim_pairs(torch.cat([x[:32], x[:32]])[torch.arange(64).view(2, 32).t().reshape(-1)])
    with pytest.raises(ValueError, match="at least 2 images"):
        ms_ssim_pairs(x[:1])


# ------------------------------------------------------------------ FID / IS

def _rand_psd(d, g):
    a = torch.randn(d, 2 * d, generator=g, dtype=torch.float64)
    return a @ a.T / (2 * d)


def test_trace_sqrt_product_known_cases():
    g = torch.Generator().manual_seed(3)
    da, db = torch.rand(6, generator=g, dtype=torch.float64), torch.rand(6, generator=g, dtype=torch.float64)
    assert trace_sqrt_product(torch.diag(da), torch.diag(db)) == pytest.approx(float((da * db).sqrt().sum()), rel=1e-12)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    sa, sb = q @ torch.diag(da) @ q.T, q @ torch.diag(db) @ q.T  # commuting: sqrt(SaSb) = Q sqrt(DaDb) Q^T
    assert trace_sqrt_product(sa, sb) == pytest.approx(float((da * db).sqrt().sum()), rel=1e-10)
    sa, sb = _rand_psd(20, g), _rand_psd(20, g)  # general: eigenvalues of SaSb are real, >= 0
    ev = np.linalg.eigvals(sa.numpy() @ sb.numpy())
    assert trace_sqrt_product(sa, sb) == pytest.approx(float(np.sqrt(np.clip(ev.real, 0, None)).sum()), rel=1e-8)
    assert trace_sqrt_product(sa, sa) == pytest.approx(float(torch.trace(sa)), rel=1e-10)


def test_fid_known_cases():
    # 1-d Gaussians: FID = (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1, rel=1e-12)
    g = torch.Generator().manual_seed(5)
    f = torch.randn(500, 8, generator=g)
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-9)
    assert fid_from_features(f, f + 2.0) == pytest.approx(8 * 4.0, rel=1e-9)  # a shift only moves the mean
    assert fid_from_features(f, f * 2) > fid_from_features(f, f * 1.1) > 0


def test_inception_score_known_cases():
    assert inception_score_from_logits(torch.zeros(100, 10))[0] == pytest.approx(1.0)
    confident = torch.full((100, 10), -1e4)
    confident[torch.arange(100), torch.arange(100) % 10] = 0.0
    mean, std = inception_score_from_logits(confident, splits=10)
    assert mean == pytest.approx(10.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 10 images"):
        inception_score_from_logits(torch.zeros(5, 10))


def test_shipped_classifier_accuracy(fmnist32):
    from progan_fast.metrics.classifier import load_classifier
    from progan_fast.metrics.train_classifier import accuracy
    images, labels = fmnist32
    assert accuracy(load_classifier(), images, labels) >= 0.90


# ------------------------------------------------------------------ evaluate() and the CLI

def _tiny_generator(res=16, channels=1):
    torch.manual_seed(0)
    return Generator(res, channels, fmap_base=32, fmap_max=16, latent_size=8)


def test_evaluate_and_compare(fmnist32):
    G = _tiny_generator(16)
    ds = MultiResolutionDataset(fmnist32[0][:40].permute(0, 2, 3, 1).numpy())
    out = evaluate(G, ds, ["swd", "msssim", "fid", "is"], num_images=24, device="cpu", res_log2=4)
    assert {"swd_16", "swd_avg", "msssim", "msssim_reals", "fid", "is", "is_std"} <= set(out)
    assert out["num_fakes"] == 24 and out["num_reals"] == 24 and out["resolution"] == 16
    assert all(math.isfinite(v) for v in out.values() if isinstance(v, float))
    assert out["fid"] > 1.0  # an untrained G is far from the data
    again = evaluate(G, ds, ["swd"], num_images=24, device="cpu", res_log2=4)
    assert again["swd_avg"] == pytest.approx(out["swd_avg"], rel=1e-6)  # seeded
    mid = evaluate(G, ds, ["swd"], num_images=12, device="cpu", res_log2=3, alpha=0.5)  # mid-fade, 8 px
    assert "swd_8" in mid
    real = compare(fmnist32[0][:100], fmnist32[0][100:200], ["fid", "is"])
    assert real["fid"] < out["fid"] and real["is"] > 2.0


def test_class_acc_of_conditional_generators_and_of_real_labels(fmnist32):
    images, labels = fmnist32
    real = compare(images[:10], images[:300], ["class_acc"], fake_labels=labels[:300])
    assert real["class_acc"] >= 0.85  # the classifier's accuracy on real images is the baseline
    wrong = compare(images[:10], images[:300], ["class_acc"], fake_labels=(labels[:300] + 1) % 10)
    assert wrong["class_acc"] < 0.2
    torch.manual_seed(0)
    G = Generator(16, 1, fmap_base=32, fmap_max=16, latent_size=8, num_classes=10)
    ds = MultiResolutionDataset(images[:40].permute(0, 2, 3, 1).numpy())
    out = evaluate(G, ds, ["class_acc", "fid"], num_images=20, device="cpu", res_log2=4)
    assert 0.0 <= out["class_acc"] <= 1.0 and math.isfinite(out["fid"])
    with pytest.raises(ValueError, match="class_acc needs a class-conditional generator"):
        evaluate(_tiny_generator(16), ds, ["class_acc"], num_images=20, res_log2=4)


def test_evaluate_errors(fmnist32):
    G = _tiny_generator(16)
    gray = MultiResolutionDataset(fmnist32[0][:20].permute(0, 2, 3, 1).numpy())
    rgb = MultiResolutionDataset(np.random.randint(0, 256, (20, 16, 16, 3), dtype=np.uint8))
    small = MultiResolutionDataset(np.random.randint(0, 256, (20, 8, 8, 1), dtype=np.uint8))
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(G, gray, ["swd", "kid"], num_images=10)
    with pytest.raises(ValueError, match="channel"):
        evaluate(G, rgb, ["swd"], num_images=10)
    with pytest.raises(ValueError, match="16 px images but the dataset has levels"):
        evaluate(G, small, ["swd"], num_images=10)
    with pytest.raises(ValueError, match="is needs at least 10 images"):
        evaluate(G, gray, ["is"], num_images=5, res_log2=4)
    with pytest.raises(ValueError, match="grayscale"):
        compare(rgb.level(16), rgb.level(16), ["fid"])
    with pytest.raises(ValueError, match="--inception"):
        compare(rgb.level(16), rgb.level(16), ["fid_inception"])


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit deprecation notices (torch >= 2.14)
def test_fid_inception_with_user_torchscript(tmp_path):
    class WithKw(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], 1) / 255.0

    class Plain(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3)) / 255.0

    a = torch.randint(0, 256, (20, 1, 16, 16), dtype=torch.uint8)
    b = (a // 2).to(torch.uint8)
    for mod in (WithKw(), Plain()):
        path = tmp_path / f"{type(mod).__name__}.pt"
        torch.jit.script(mod).save(str(path))
        same = compare(a, a, ["fid_inception"], inception=str(path))["fid_inception"]
        diff = compare(a, b, ["fid_inception"], inception=str(path))["fid_inception"]
        assert same == pytest.approx(0.0, abs=1e-9) and diff > 1e-3
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="not a loadable TorchScript"):
        compare(a, a, ["fid_inception"], inception=str(tmp_path / "junk.pt"))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        compare(a, a, ["fid_inception"], inception=str(tmp_path / "missing.pt"))


def _write_ckpt(path, G, cfg_over=None):
    cfg = TrainConfig(resolution=G.resolution, num_channels=G.num_channels, fmap_base=32, fmap_max=16,
                      latent_size=8, data="fashion-mnist")
    for k, v in (cfg_over or {}).items():
        setattr(cfg, k, v)
    torch.save({"format": "progan_fast", "config": cfg.to_json(), "step": {"Gs": G.state_dict()},
                "phase": {"res_log2": G.resolution_log2, "alpha": 1.0, "lod": 0.0}}, path)


def test_cli(tmp_path, fmnist32, capsys):
    G = _tiny_generator(32)
    _write_ckpt(tmp_path / "ck.pt", G)
    data = tmp_path / "d.npy"
    np.save(data, fmnist32[0][:30].permute(0, 2, 3, 1).numpy())
    out = tmp_path / "m.json"
    assert cli(["--ckpt", str(tmp_path / "ck.pt"), "--data", str(data), "--metrics", "swd,msssim,fid,is",
                "--num", "20", "--out", str(out), "--device", "cpu"]) == 0
    res = json.loads(out.read_text())
    assert {"swd_32", "swd_16", "swd_avg", "msssim", "fid", "is"} <= set(res) and res["num_fakes"] == 20
    capsys.readouterr()
    assert cli(["--ckpt", str(tmp_path / "nope.pt"), "--num", "20"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    _write_ckpt(tmp_path / "other.pt", G, {"fmap_base": 64})
    assert cli(["--ckpt", str(tmp_path / "other.pt"), "--data", str(data), "--num", "20"]) == 2
    assert "do not match its recorded architecture" in capsys.readouterr().err
    assert cli(["--ckpt", str(tmp_path / "ck.pt"), "--metrics", "swd,fud", "--num", "20"]) == 2
    assert "unknown metric(s) fud" in capsys.readouterr().err
    assert cli(["--ckpt", str(tmp_path / "ck.pt"), "--data", str(data), "--metrics", "is", "--num", "4"]) == 2
    assert "at least 10 images" in capsys.readouterr().err
    np.save(tmp_path / "rgb.npy", np.random.randint(0, 256, (30, 32, 32, 3), dtype=np.uint8))
    assert cli(["--ckpt", str(tmp_path / "ck.pt"), "--data", str(tmp_path / "rgb.npy"), "--num", "20"]) == 2
    assert "channel" in capsys.readouterr().err


def test_training_logs_metrics_at_kimg_boundaries(tmp_path, fmnist32):
    from progan_fast.training.trainer import Trainer
    cfg = TrainConfig(resolution=16, num_channels=1, fmap_base=32, fmap_max=16, latent_size=8, stable_kimg=0.032,
                      fade_kimg=0.032, minibatch={4: 8, 8: 8, 16: 8}, tick_kimg=0.024, grid_size=4, device="cpu",
                      snapshot_ticks=1000, total_kimg=0.144, metrics="swd,fid", metrics_kimg=0.048, metrics_num=16)
    cfg.validate()
    ds = MultiResolutionDataset(fmnist32[0][:40, :, 8:24, 8:24].permute(0, 2, 3, 1).numpy())
    assert Trainer(cfg, ds, tmp_path, progress=False).run() == "done"
    ticks = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    scored = [t for t in ticks if "fid" in t]
    assert [t["kimg"] for t in scored] == [0.048, 0.096, 0.144]  # each 0.048 kimg boundary (and the end)
    assert scored[0]["resolution"] == 8 and 0 < scored[0]["alpha"] < 1 and "swd_8" in scored[0]  # mid-fade
    assert "swd_16" in scored[-1] and math.isfinite(scored[-1]["fid"])
    assert all("fid" not in t for t in ticks if t not in scored)
    with pytest.raises(ValueError, match="unknown metric"):
        TrainConfig(metrics="swd,fud").validate()
    rgb = MultiResolutionDataset(np.random.randint(0, 256, (8, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="grayscale"):
        Trainer(TrainConfig(**{**cfg.to_json(), "num_channels": 3, "minibatch": {4: 8, 8: 8, 16: 8}}), rgb,
                tmp_path / "x", progress=False)


@pytest.mark.gpu
def test_cuda_matches_cpu(fmnist32):
    x, y = fmnist32[0][:64], fmnist32[0][64:128]
    cpu, gpu = swd(x, y, seed=3, device="cpu"), swd(x, y, seed=3, device="cuda")
    for k in cpu:
        assert gpu[k] == pytest.approx(cpu[k], rel=1e-3), k
    assert ms_ssim(x.cuda(), y.cuda()) == pytest.approx(ms_ssim(x, y), rel=1e-9)
    a, b = compare(x, y, ["fid", "is"], device="cpu"), compare(x, y, ["fid", "is"], device="cuda")
    assert b["fid"] == pytest.approx(a["fid"], rel=1e-3) and b["is"] == pytest.approx(a["is"], rel=1e-4)
