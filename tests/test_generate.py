"""python -m progan_fast.generate: seeds, classes, truncation, interpolation, and clear errors.
Checkpoints are written by an untrained Trainer (no training needed to test generation)."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

from progan_fast import generate as gen
from progan_fast.data import MultiResolutionDataset
from progan_fast.training.config import TrainConfig
from progan_fast.training.trainer import Trainer

K = 4


def _ckpt(tmp_path_factory, name, **kw):
    cfg = TrainConfig(resolution=8, num_channels=1, fmap_base=32, fmap_max=8, latent_size=8, stable_kimg=1,
                      fade_kimg=1, minibatch={4: 4, 8: 4}, grid_size=4, device="cpu", **kw)
    x = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
    d = tmp_path_factory.mktemp(name)
    tr = Trainer(cfg, MultiResolutionDataset(x, np.arange(16) % K), d, progress=False)
    torch.manual_seed(1)
    for p in tr.step.Gs.parameters():  # random (not zero) biases: outputs depend on everything
        p.data.normal_()
    tr.cur_nimg = 2500  # phase recorded: 8 px, fully faded in
    tr.save_checkpoint()
    return d


@pytest.fixture(scope="module")
def uncond(tmp_path_factory):
    return _ckpt(tmp_path_factory, "uncond")


@pytest.fixture(scope="module")
def cond(tmp_path_factory):
    return _ckpt(tmp_path_factory, "cond", cond=True, cond_head="projection", num_classes=K)


def _gen(capsys, *argv):
    code = gen.main([str(a) for a in argv])
    return code, capsys.readouterr()


def _images(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_parse_seeds():
    assert gen.parse_seeds("0-3,10,12-13") == [0, 1, 2, 3, 10, 12, 13]
    for bad in ("3-1", "a", "1,,2", "-1"):
        with pytest.raises(ValueError, match="--seeds"):
            gen.parse_seeds(bad)


def test_seeds_are_reproducible_one_by_one(uncond, tmp_path, capsys):
    assert _gen(capsys, "--ckpt", uncond, "--seeds", "0-5", "--out", tmp_path / "a.npz")[0] == 0
    assert _gen(capsys, "--ckpt", uncond, "--seeds", "4", "--out", tmp_path / "b.npz")[0] == 0
    a, b = _images(tmp_path / "a.npz"), _images(tmp_path / "b.npz")
    assert a["images"].shape == (6, 8, 8, 1) and a["images"].dtype == np.uint8
    assert np.array_equal(a["images"][4], b["images"][0]) and list(a["seeds"]) == list(range(6))
    assert not np.array_equal(a["images"][0], a["images"][1])


def test_truncation_psi_one_is_identity_and_small_psi_reduces_diversity(uncond, tmp_path, capsys):
    G, r, a = gen.load_generator(uncond)
    z, _ = gen.seed_latents(G.latent_size, range(32))
    plain = gen.synthesize(G, z, r, a)
    assert np.array_equal(gen.synthesize(G, z, r, a, psi=1.0), plain)
    low = gen.synthesize(G, z, r, a, psi=0.1)
    assert low.astype(float).std(0).mean() < plain.astype(float).std(0).mean()
    # the mean latent of an unconditional PGGAN is ~0 (z is isotropic): documented in generate.py
    m = gen.mean_latent(G, samples=20000)
    assert m.shape == (1, 8) and m.abs().max() < 0.05


def test_truncation_resample_bounds_every_entry():
    z, _ = gen.seed_latents(16, range(50), resample=0.5)
    assert z.abs().max() <= 0.5
    z2, _ = gen.seed_latents(16, range(50), resample=0.5)
    assert torch.equal(z, z2)


def test_per_class_grid_and_class_outputs(cond, tmp_path, capsys):
    code, _ = _gen(capsys, "--ckpt", cond, "--seeds", "0-2", "--per-class", "--grid", tmp_path / "g.png",
                   "--out", tmp_path / "pc.npz", "--truncation-psi", "0.7")
    assert code == 0
    pc = _images(tmp_path / "pc.npz")
    assert list(pc["labels"]) == [k for k in range(K) for _ in range(3)]
    assert np.array_equal(pc["latents"][:3], pc["latents"][3:6])  # the same latents in every row
    assert not np.array_equal(pc["images"][:3], pc["images"][3:6])  # the class changes the images
    assert Image.open(tmp_path / "g.png").size == (3 * 8, K * 8)  # one row per class
    assert _gen(capsys, "--ckpt", cond, "--seeds", "0-2", "--class", "2", "--out", tmp_path / "c2.npz")[0] == 0
    c2 = _images(tmp_path / "c2.npz")
    assert list(c2["labels"]) == [2, 2, 2]
    # untruncated class-2 images equal the per-class rows made without truncation
    _gen(capsys, "--ckpt", cond, "--seeds", "0-2", "--per-class", "--out", tmp_path / "pc1.npz")
    assert np.array_equal(c2["images"], _images(tmp_path / "pc1.npz")["images"][6:9])


def test_conditional_default_labels_are_random_and_recorded(cond, tmp_path, capsys):
    assert _gen(capsys, "--ckpt", cond, "--n", "40", "--out", tmp_path / "r.npz")[0] == 0
    labels = _images(tmp_path / "r.npz")["labels"]
    assert labels.min() >= 0 and labels.max() < K and len(set(labels.tolist())) > 1


def test_slerp_endpoints_and_norm():
    a, b = torch.randn(32), torch.randn(32)
    t = torch.linspace(0, 1, 9)
    p = gen.slerp(a, b, t)
    assert torch.equal(p[0], a) and torch.equal(p[-1], b)
    ua, ub = a / a.norm(), b / b.norm()
    angle = torch.arccos((ua @ ub).clamp(-1, 1))
    mid = p[4] / p[4].norm()  # the midpoint direction is at half the angle from both ends
    torch.testing.assert_close(torch.arccos((mid @ ua).clamp(-1, 1)), angle / 2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(p.norm(dim=1), torch.lerp(a.norm(), b.norm(), t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loop", [False, True])
def test_interpolation_gif_and_strip(cond, tmp_path, capsys, loop):
    args = ["--ckpt", cond, "--seeds", "1,5,9", "--steps", "4", *(["--loop"] if loop else [])]
    assert _gen(capsys, *args, "--interp", tmp_path / "w.gif")[0] == 0
    gif = Image.open(tmp_path / "w.gif")
    segments = 3 if loop else 2
    assert gif.n_frames == segments * 4 + (0 if loop else 1) and gif.size == (128, 128)
    assert _gen(capsys, *args, "--interp", tmp_path / "w.png", "--zoom", "1", "--class", "1")[0] == 0
    assert Image.open(tmp_path / "w.png").size == (5 * 8, segments * 8)  # one row per segment


@pytest.mark.parametrize("argv,match", [
    (["--truncation-psi", "0"], r"--truncation-psi must lie in \(0, 1\]"),
    (["--truncation-psi", "1.5"], r"--truncation-psi must lie in \(0, 1\]"),
    (["--truncation-resample", "-1"], "--truncation-resample must be > 0"),
    (["--class", "0"], "unconditional"),
    (["--per-class"], "unconditional"),
    (["--interp", "x.gif"], "--interp needs the key frames as --seeds"),
    (["--seeds", "3", "--interp", "x.gif"], "at least two seeds"),
    (["--interp", "x.jpg"], "must end in .gif or .png"),
])
def test_bad_input_unconditional(uncond, tmp_path, capsys, argv, match):
    argv = [a.replace("x.", str(tmp_path / "x.")) for a in argv]
    if not any(a == "--interp" for a in argv):
        argv += ["--out", tmp_path / "o.npz"]
    code, out = _gen(capsys, "--ckpt", uncond, *argv)
    assert not (tmp_path / "o.npz").exists()
    assert code == 2 and out.err.startswith("error: ") and len(out.err.strip().splitlines()) == 1
    assert re.search(match, out.err), out.err


def test_bad_class_and_missing_outputs(cond, tmp_path, capsys):
    code, out = _gen(capsys, "--ckpt", cond, "--class", str(K), "--grid", tmp_path / "g.png")
    assert code == 2 and f"--class {K} is out of range: the model has {K} classes (0..{K - 1})" in out.err
    code, out = _gen(capsys, "--ckpt", cond, "--class", "-1", "--grid", tmp_path / "g.png")
    assert code == 2 and "out of range" in out.err
    code, out = _gen(capsys, "--ckpt", cond)
    assert code == 2 and "nothing to write" in out.err


def test_checkpoint_of_another_architecture(cond, tmp_path, capsys):
    ckpt = torch.load(cond / "checkpoint-latest.pt", weights_only=False)
    ckpt["config"]["cond"] = False  # the weights (with an embedding) no longer fit the recorded architecture
    torch.save(ckpt, tmp_path / "bad.pt")
    code, out = _gen(capsys, "--ckpt", tmp_path / "bad.pt", "--grid", tmp_path / "g.png")
    assert code == 2 and "do not match its recorded architecture" in out.err and "Traceback" not in out.err
    ckpt["config"]["cond"], ckpt["config"]["fmap_max"] = True, 16
    torch.save(ckpt, tmp_path / "bad2.pt")
    code, out = _gen(capsys, "--ckpt", tmp_path / "bad2.pt", "--grid", tmp_path / "g.png")
    assert code == 2 and "do not match its recorded architecture" in out.err


def test_help_lists_the_features(capsys):
    with pytest.raises(SystemExit):
        gen.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--seeds", "--per-class", "--class", "--truncation-psi", "--truncation-resample", "--interp",
                 "mean latent"):
        assert flag in text, flag
