"""DaliStream (DALI CPU-only mode here; GPU cases marked gpu): same samples, labels, order, sharding and
resume as BatchStream, JPEG levels decoded by DALI, one pipeline per phase. Skips without DALI."""
import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from progan_fast.data import BatchStream, MultiResolutionDataset, StoredDataset  # noqa: E402
from progan_fast.data import writer  # noqa: E402
from progan_fast.data.dali import DaliStream, make_batch_stream  # noqa: E402


@pytest.fixture
def rng(_fresh_seed):
    return np.random.default_rng(_fresh_seed)


@pytest.fixture(params=[3, 1], ids=["rgb", "gray"])
def stored(tmp_path, rng, request):
    """A 16 px dataset with labels: levels 16 and 8 as JPEG, 4 raw."""
    images = rng.integers(0, 256, (24, 16, 16, request.param), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images, labels=rng.integers(0, 5, 24))
    writer.create_dataset(tmp_path / "a.npz", tmp_path / "ds", encode_from=8, quality=98)
    return StoredDataset(tmp_path / "ds")


@pytest.mark.parametrize("mirror", [False, True])
def test_raw_levels_match_torch_stream(rng, mirror):
    images = rng.integers(0, 256, (30, 13, 13, 3), dtype=np.uint8)  # odd size: padded to 16
    ds = MultiResolutionDataset(images, rng.integers(0, 9, 30))
    a = DaliStream(ds, seed=5, mirror=mirror)
    b = BatchStream(ds, seed=5, mirror=mirror)
    for res, bs in ((4, 7), (4, 7), (8, 5), (16, 3), (16, 3), (8, 5)):  # resolution switches and back
        xa, ya = a.next_batch(res, bs)
        xb, yb = b.next_batch(res, bs)
        assert xa.shape == (bs, 3, res, res) and xa.dtype == torch.float32
        torch.testing.assert_close(xa, xb, atol=1e-6, rtol=0)
        assert torch.equal(ya, yb)
    assert a.pipelines_built == 4  # rebuilt at each change of (res, batch) only; one alive at a time
    assert a.state_dict() == b.state_dict()


def test_jpeg_levels_decoded_by_dali_match_pil(stored):
    a = DaliStream(stored, seed=1, mirror=True)
    b = BatchStream(stored, seed=1, mirror=True)  # decodes with PIL
    for res, bs in ((16, 6), (8, 6), (4, 6), (16, 6)):
        xa, ya = a.next_batch(res, bs)
        xb, yb = b.next_batch(res, bs)
        assert torch.equal(ya, yb)
        # both libjpeg-turbo; allow an IDCT rounding difference of a few steps
        assert (xa - xb).abs().max().item() <= 4 / 127.5, (xa - xb).abs().max()


def test_sharding_and_resume(rng):
    ds = MultiResolutionDataset(rng.integers(0, 256, (23, 8, 8, 1), dtype=np.uint8), np.arange(23))
    seen = []
    for rank in range(2):
        s = DaliStream(ds, seed=2, rank=rank, world_size=2)
        seen.append(torch.cat([s.next_batch(8, 5)[1] for _ in range(2)]).tolist())
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0] + seen[1])) == 20
    a = DaliStream(ds, seed=2, mirror=True)
    a.next_batch(4, 6)
    state = a.state_dict()
    want = [a.next_batch(8, 6) for _ in range(3)]
    b = make_batch_stream("torch", ds, seed=9, mirror=True)  # states are interchangeable between loaders
    b.load_state_dict(state)
    c = DaliStream(ds, seed=9, mirror=True)
    c.load_state_dict(state)
    for x, y in want:
        for s in (b, c):
            xs, ys = s.next_batch(8, 6)
            torch.testing.assert_close(xs, x, atol=1e-6, rtol=0)
            assert torch.equal(ys, y)


def test_options_and_factory(rng):
    ds = MultiResolutionDataset(rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8))
    x, _ = DaliStream(ds, seed=0, dtype=torch.bfloat16, channels_last=True).next_batch(8, 4)
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    a = DaliStream(ds, seed=0, mirror=True, channels_last=True)  # DALI writes NHWC itself
    b = BatchStream(ds, seed=0, mirror=True)
    for res in (8, 4):
        xa, xb = a.next_batch(res, 4)[0], b.next_batch(res, 4)[0]
        assert xa.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(xa, xb, atol=1e-6, rtol=0)
    assert isinstance(make_batch_stream("auto", ds, seed=0, device="cpu"), BatchStream)
    assert not isinstance(make_batch_stream("auto", ds, seed=0, device="cpu"), DaliStream)
    assert isinstance(make_batch_stream("dali", ds, seed=0), DaliStream)
    with pytest.raises(ValueError, match="--loader"):
        make_batch_stream("fast", ds, seed=0)


@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [False, True])
def test_gpu_matches_cpu_stream(stored, channels_last):
    a = DaliStream(stored, seed=4, mirror=True, device="cuda", channels_last=channels_last)
    b = BatchStream(stored, seed=4, mirror=True)
    for res, bs in ((16, 8), (8, 8), (4, 8)):  # nvJPEG (mixed) for 16/8, raw for 4
        xa, ya = a.next_batch(res, bs)
        xb, yb = b.next_batch(res, bs)
        assert xa.is_cuda and xa.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert (xa.cpu() - xb).abs().max().item() <= 6 / 127.5
        assert torch.equal(ya.cpu(), yb)
    assert isinstance(make_batch_stream("auto", stored, seed=0, device="cuda"), DaliStream)


def test_trainer_trains_from_a_jpeg_dataset_with_dali(tmp_path, rng):
    from progan_fast.training.config import TrainConfig
    from progan_fast.training.trainer import Trainer
    np.save(tmp_path / "a.npy", rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8))
    writer.create_dataset(tmp_path / "a.npy", tmp_path / "ds", encode_from=8)
    cfg = TrainConfig(resolution=8, num_channels=3, fmap_base=16, fmap_max=8, latent_size=8, stable_kimg=0.016,
                      fade_kimg=0.016, minibatch={4: 4, 8: 4}, tick_kimg=1.0, grid_size=4, device="cpu",
                      backend="ref", loader="dali", mirror=True)
    (tmp_path / "run").mkdir()
    tr = Trainer(cfg, StoredDataset(tmp_path / "ds"), tmp_path / "run", progress=False)
    assert isinstance(tr.stream, DaliStream)
    assert tr.run(stop_at_nimg=24) == "stopped"  # 4 px (raw), then into the 8 px fade (JPEG, DALI-decoded)
    assert tr.stream.pipelines_built == 2 and (tmp_path / "run" / "reals.png").exists()
