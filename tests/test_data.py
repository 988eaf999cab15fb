"""Data layer: IDX reader, bundled FashionMNIST, user sources, multi-resolution levels, BatchStream."""
import gzip
import io
import os
import warnings

import numpy as np
import pytest
import torch

from progan_fast.data import (BatchStream, MultiResolutionDataset, load_fashion_mnist, load_images,
                              pad_to_power_of_two, read_idx, write_idx)
from progan_fast.data import fashion_mnist as fm

Image = pytest.importorskip("PIL.Image")


@pytest.fixture
def rng(_fresh_seed):
    return np.random.default_rng(_fresh_seed)


def _rand_images(rng, n, size, c):
    return rng.integers(0, 256, size=(n, size, size, c), dtype=np.uint8)


# ------------------------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype,shape", [(np.uint8, (7, 5, 3)), (np.int8, (11,)), (np.int16, (3, 4)),
                                         (np.int32, (2, 3, 4, 5)), (np.float32, (6, 2)), (np.float64, (5,))])
def test_idx_round_trip(tmp_path, rng, compress, dtype, shape):
    a = (rng.standard_normal(shape) * 100).astype(dtype)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    write_idx(path, a)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative
    np.testing.assert_array_equal(a, b)


def _idx_bytes(a):
    buf = io.BytesIO()
    header = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    buf.write(header + a.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("mutate,match", [
    (lambda b: b"\x01" + b[1:], "bad IDX magic"),
    (lambda b: b[:2] + b"\x42" + b[3:], "bad IDX magic"),
    (lambda b: b[:-5], "truncated: header says shape"),
    (lambda b: b + b"\x00\x00", "trailing bytes"),
    (lambda b: b[:9], "truncated IDX header"),
    (lambda b: b[:3], "not an IDX file"),
    (lambda b: b[:3] + b"\x00", "0 dimensions"),
])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_corrupt_files_name_the_file(tmp_path, rng, mutate, match, compress):
    raw = mutate(_idx_bytes(rng.integers(0, 256, (4, 3, 3), dtype=np.uint8)))
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(ValueError, match=match) as exc:
        read_idx(path)
    assert str(path) in str(exc.value)


def test_idx_truncated_gzip_and_missing(tmp_path, rng):
    path = tmp_path / "x-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(rng.integers(0, 256, (50, 8, 8), dtype=np.uint8)))[:-40])
    with pytest.raises(ValueError, match="corrupt or truncated gzip") as exc:
        read_idx(path)
    assert str(path) in str(exc.value)
    with pytest.raises(FileNotFoundError, match="nope"):
        read_idx(tmp_path / "nope")


# ------------------------------------------------------------------------------------------- FashionMNIST

def test_bundled_fashion_mnist():
    images, labels, desc = load_fashion_mnist("bundled")
    assert images.shape == (10000, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert np.array_equal(np.bincount(labels), np.full(10, 1000))  # t10k is balanced
    assert images.min() == 0 and images.max() == 255
    assert "10000" in desc and "bundled" in desc


def _write_fake_fmnist(folder, prefix, n):
    os.makedirs(folder, exist_ok=True)
    write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"),
              np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8))
    write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), (np.arange(n) % 10).astype(np.uint8))


def test_fashion_mnist_split_selection(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PROGAN_FAST_FMNIST_DIR", str(empty))
    assert load_fashion_mnist("auto")[0].shape[0] == 10000          # falls back to the bundled split
    assert "bundled" in load_fashion_mnist("test")[2]
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train")
    with pytest.raises(ValueError, match="unknown FashionMNIST split"):
        load_fashion_mnist("validation")

    full = tmp_path / "full"
    _write_fake_fmnist(full, "train", 30)
    _write_fake_fmnist(full, "t10k", 20)
    monkeypatch.setenv("PROGAN_FAST_FMNIST_DIR", str(full))
    images, labels, desc = load_fashion_mnist("auto")
    assert images.shape == (30, 28, 28, 1) and "train" in desc and labels.dtype == np.int64
    assert load_fashion_mnist("test")[0].shape[0] == 20
    assert load_fashion_mnist("bundled")[0].shape[0] == 10000
    assert fm.fashion_mnist_dir() == str(full)


# ------------------------------------------------------------------------------------------- multi-resolution

def test_padding_28_to_32():
    images, labels, _ = load_fashion_mnist("bundled")
    ds = MultiResolutionDataset(images[:64], labels[:64])
    assert ds.resolution == 32 and ds.resolutions == [32, 16, 8, 4] and ds.num_channels == 1
    top = ds.level(32)
    assert top.shape == (64, 1, 32, 32) and top.dtype == torch.uint8
    assert torch.equal(top[:, 0, 2:30, 2:30], torch.from_numpy(images[:64, :, :, 0]))
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (top[:, 0][:, border] == 0).all()
    assert torch.equal(ds.labels, torch.from_numpy(labels[:64]))


@pytest.mark.parametrize("size,target,before", [(5, 8, 1), (3, 4, 0), (16, 16, 0), (20, 32, 6), (1, 4, 1)])
def test_pad_to_power_of_two(size, target, before):
    x = torch.randint(1, 256, (2, 3, size, size), dtype=torch.uint8)
    y = pad_to_power_of_two(x)
    assert y.shape == (2, 3, target, target)
    assert torch.equal(y[..., before:before + size, before:before + size], x)
    assert int(y.sum()) == int(x.sum())  # everything else is zero


def _expected_levels(images_nhwc):
    """Independent numpy float64 construction: pad, then rint(mean of 2^k x 2^k blocks) per level."""
    x = images_nhwc.transpose(0, 3, 1, 2).astype(np.float64)
    n, c, s, _ = x.shape
    full = max(4, 1 << (s - 1).bit_length())
    b = (full - s) // 2
    padded = np.zeros((n, c, full, full))
    padded[:, :, b:b + s, b:b + s] = x
    out, r = {}, full
    while r >= 4:
        k = full // r
        out[r] = np.rint(padded.reshape(n, c, r, k, r, k).mean(axis=(3, 5))).astype(np.uint8)
        r //= 2
    return out


@pytest.mark.parametrize("n,size,c", [(6, 64, 3), (5, 28, 1), (3, 12, 3)])
def test_levels_match_float_box_chain(rng, n, size, c):
    images = _rand_images(rng, n, size, c)
    ds = MultiResolutionDataset(images)
    expected = _expected_levels(images)
    assert ds.resolutions == sorted(expected, reverse=True)
    for r, e in expected.items():
        np.testing.assert_array_equal(ds.level(r).numpy(), e, err_msg=f"level {r}")
    # The chain runs in float, not on the stored uint8 levels: a level is within rounding (<= 1)
    # of the box filter of the stored previous level, not always equal to it.
    for r in ds.resolutions[1:]:
        prev = ds.level(2 * r).numpy().astype(np.float64)
        direct = np.rint(prev.reshape(n, c, r, 2, r, 2).mean(axis=(3, 5)))
        assert np.abs(ds.level(r).numpy().astype(np.float64) - direct).max() <= 1


def test_levels_of_fashion_mnist_and_resolution_cap():
    images, labels, _ = load_fashion_mnist("bundled")
    images = images[:200]
    ds = MultiResolutionDataset(images, labels[:200])
    for r, e in _expected_levels(images).items():
        np.testing.assert_array_equal(ds.level(r).numpy(), e)
    capped = MultiResolutionDataset(images, labels[:200], resolution=16)
    assert capped.resolutions == [16, 8, 4] and capped.resolution == 16
    for r in capped.resolutions:
        assert torch.equal(capped.level(r), ds.level(r))
    with pytest.raises(ValueError, match="no level 32"):
        capped.level(32)


def test_multires_rejects_bad_input(rng):
    with pytest.raises(ValueError, match="square"):
        MultiResolutionDataset(rng.integers(0, 256, (2, 8, 6, 1), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        MultiResolutionDataset(np.zeros((2, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match="channels"):
        MultiResolutionDataset(np.zeros((2, 8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="never upsampled"):
        MultiResolutionDataset(np.zeros((2, 28, 28), np.uint8), resolution=64)
    with pytest.raises(ValueError, match="power of two"):
        MultiResolutionDataset(np.zeros((2, 32, 32), np.uint8), resolution=24)
    with pytest.raises(ValueError, match="labels"):
        MultiResolutionDataset(np.zeros((2, 8, 8), np.uint8), labels=np.zeros(3, np.int64))
    ds = MultiResolutionDataset(np.zeros((2, 8, 8), np.uint8))
    assert not ds.has_labels and ds.labels.tolist() == [-1, -1] and ds.num_channels == 1


# ------------------------------------------------------------------------------------------- user sources

def _save(path, array, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = Image.fromarray(array)
    assert mode is None or img.mode == mode
    img.save(path)


def test_folder_grayscale_recursive(tmp_path, rng):
    imgs = rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    _save(str(tmp_path / "a.png"), imgs[0])
    _save(str(tmp_path / "sub" / "b.png"), imgs[1])
    _save(str(tmp_path / "sub" / "deeper" / "c.PNG"), imgs[2])
    (tmp_path / "README.txt").write_text("not an image")
    images, labels, desc = load_images(tmp_path)
    assert images.shape == (3, 8, 8, 1) and labels is None
    # sorted by path: a.png, sub/b.png, sub/deeper/c.PNG
    np.testing.assert_array_equal(images[..., 0], imgs)
    assert "3 images 8x8, grayscale" in desc


def test_folder_mixed_rgb_rgba(tmp_path, rng):
    gray = rng.integers(0, 256, (6, 6), dtype=np.uint8)
    rgb = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (6, 6, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
    la = rng.integers(0, 256, (6, 6, 2), dtype=np.uint8)
    _save(str(tmp_path / "0_gray.png"), gray)
    _save(str(tmp_path / "1_rgb.png"), rgb)
    _save(str(tmp_path / "2_rgba.png"), rgba, "RGBA")
    _save(str(tmp_path / "3_la.png"), la, "LA")
    images, _, _ = load_images(tmp_path)
    assert images.shape == (4, 6, 6, 3)
    np.testing.assert_array_equal(images[0], np.repeat(gray[..., None], 3, -1))
    np.testing.assert_array_equal(images[1], rgb)
    over_black = np.rint(rgba[..., :3] * (rgba[..., 3:] / 255.0)).astype(np.uint8)
    np.testing.assert_array_equal(images[2], over_black)
    assert (images[2, 0, 0] == 0).all() and (images[2, 0, 1] == rgba[0, 1, :3]).all()
    la_over_black = np.rint(la[..., :1] * (la[..., 1:] / 255.0)).astype(np.uint8)
    np.testing.assert_array_equal(images[3], np.repeat(la_over_black, 3, -1))


def test_folder_jpeg_and_palette(tmp_path, rng):
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert("P").save(tmp_path / "b.png")
    images, _, _ = load_images(tmp_path)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8


def test_folder_errors_name_the_file(tmp_path, rng):
    good = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    _save(str(tmp_path / "a.png"), good)
    garbage = tmp_path / "b.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    with pytest.raises(ValueError, match="not a readable image") as exc:
        load_images(tmp_path)
    assert str(garbage) in str(exc.value)

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(buf, format="PNG")
    garbage.write_bytes(buf.getvalue()[:-30])  # valid header, truncated pixel data
    with pytest.raises(ValueError, match="corrupt or truncated image") as exc:
        load_images(tmp_path)
    assert str(garbage) in str(exc.value)

    _save(str(garbage), rng.integers(0, 256, (16, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match="one size") as exc:
        load_images(tmp_path)
    assert str(garbage) in str(exc.value)

    _save(str(garbage), rng.integers(0, 256, (8, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="square") as exc:
        load_images(tmp_path)
    assert str(garbage) in str(exc.value)

    Image.fromarray(rng.integers(0, 65535, (8, 8), dtype=np.uint16)).save(garbage)
    with pytest.raises(ValueError, match="8-bit") as exc:
        load_images(tmp_path)
    assert str(garbage) in str(exc.value)


def test_missing_empty_unsupported(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no PNG/JPG/JPEG images"):
        load_images(tmp_path / "empty")
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_images(tmp_path / "data.csv")


def test_npy_npz(tmp_path, rng):
    nhw = rng.integers(0, 256, (5, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "a.npy", nhw)
    images, labels, _ = load_images(tmp_path / "a.npy")
    assert images.shape == (5, 8, 8, 1) and labels is None
    np.testing.assert_array_equal(images[..., 0], nhw)

    nhwc = _rand_images(rng, 4, 8, 3)
    np.savez(tmp_path / "b.npz", images=nhwc, labels=np.array([3, 1, 4, 1], np.int32))
    images, labels, desc = load_images(tmp_path / "b.npz")
    np.testing.assert_array_equal(images, nhwc)
    assert labels.dtype == np.int64 and labels.tolist() == [3, 1, 4, 1] and "with labels" in desc
    np.savez(tmp_path / "c.npz", images=nhwc)
    assert load_images(tmp_path / "c.npz")[1] is None

    np.savez(tmp_path / "d.npz", x=nhwc)
    with pytest.raises(ValueError, match="no 'images' array"):
        load_images(tmp_path / "d.npz")
    np.savez(tmp_path / "e.npz", images=nhwc, labels=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="labels"):
        load_images(tmp_path / "e.npz")
    np.save(tmp_path / "f.npy", nhwc.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        load_images(tmp_path / "f.npy")
    np.save(tmp_path / "g.npy", nhwc.transpose(0, 3, 1, 2).copy())
    with pytest.raises(ValueError, match="channels-first"):
        load_images(tmp_path / "g.npy")
    (tmp_path / "h.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="h.npy"):
        load_images(tmp_path / "h.npy")


def test_idx_folder(tmp_path):
    _write_fake_fmnist(tmp_path, "t10k", 7)
    _write_fake_fmnist(tmp_path, "train", 9)
    images, labels, desc = load_images(tmp_path)
    assert images.shape == (9, 28, 28, 1) and labels.tolist() == [i % 10 for i in range(9)]
    assert "train-images" in desc
    images, labels, _ = load_images(tmp_path / "t10k-images-idx3-ubyte.gz")
    assert images.shape[0] == 7 and labels.shape == (7,)


# ------------------------------------------------------------------------------------------- BatchStream

def _dataset(rng, n=40, size=16, c=3, labels=True):
    return MultiResolutionDataset(_rand_images(rng, n, size, c), np.arange(n) if labels else None)


def test_stream_values_and_determinism(rng):
    ds = _dataset(rng)
    a = BatchStream(ds, seed=7)
    b = BatchStream(ds, seed=7)
    c = BatchStream(ds, seed=8)
    for res, bs in [(16, 8), (8, 5), (4, 16)]:
        xa, ya = a.next_batch(res, bs)
        xb, yb = b.next_batch(res, bs)
        xc, yc = c.next_batch(res, bs)
        assert xa.shape == (bs, 3, res, res) and xa.dtype == torch.float32 and ya.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert not torch.equal(ya, yc)
        # exact conversion of the stored level (labels are the sample indices here)
        assert torch.equal(xa, ds.level(res)[ya].float() / 127.5 - 1)


def test_stream_range_on_fashion_mnist():
    images, labels, _ = load_fashion_mnist("bundled")
    ds = MultiResolutionDataset(images[:512], labels[:512])
    x, y = BatchStream(ds, seed=0).next_batch(32, 512)
    assert x.min() == -1 and x.max() == 1 and ((y >= 0) & (y <= 9)).all()


def test_stream_epochs_do_not_straddle(rng):
    ds = _dataset(rng, n=10)
    s = BatchStream(ds, seed=3)
    first = torch.cat([s.next_batch(4, 4)[1], s.next_batch(4, 4)[1]])
    assert len(set(first.tolist())) == 8 and s.epoch == 0
    third = s.next_batch(4, 4)[1]  # only 2 left in epoch 0: they are skipped
    assert s.epoch == 1 and s.cursor == 4
    rest = torch.cat([third, s.next_batch(4, 6)[1]])
    assert sorted(rest.tolist()) == list(range(10))  # epoch 1 is a full permutation
    with pytest.raises(ValueError, match="batch_size"):
        s.next_batch(4, 11)
    with pytest.raises(ValueError, match="no level 32"):
        s.next_batch(32, 2)


@pytest.mark.parametrize("n,world", [(41, 2), (40, 4), (13, 3)])
def test_stream_sharding(rng, n, world):
    ds = _dataset(rng, n=n)
    per = n // world
    streams = [BatchStream(ds, seed=5, rank=r, world_size=world) for r in range(world)]
    for epoch in range(2):
        shards = [torch.cat([s.next_batch(4, per)[1]]) for s in streams]
        seen = set()
        for shard in shards:
            assert shard.numel() == per and len(set(shard.tolist())) == per
            assert not seen & set(shard.tolist())
            seen |= set(shard.tolist())
        assert len(seen) == per * world
    states = [s.state_dict() for s in streams]
    assert all(st == states[0] for st in states)  # the position is the same on every rank
    # equal batch counts per epoch with a batch size that does not divide the shard
    counts = []
    for r in range(world):
        s = BatchStream(ds, seed=5, rank=r, world_size=world)
        k = 0
        while s.epoch == 0:
            s.next_batch(4, 3)
            k += s.epoch == 0
        counts.append(k)
    assert len(set(counts)) == 1 and counts[0] == per // 3


def _run(stream, calls):
    return [stream.next_batch(res, bs) for res, bs in calls]


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("rank,world", [(0, 1), (1, 2)])
def test_stream_resume_exact(tmp_path, rng, mirror, rank, world):
    ds = _dataset(rng, n=23)
    calls = [(16, 4), (8, 7), (4, 3), (16, 5), (8, 2), (16, 6), (4, 1), (8, 9), (16, 3), (4, 8), (8, 4), (16, 2)]
    cut = 5
    ref = _run(BatchStream(ds, seed=11, rank=rank, world_size=world, mirror=mirror), calls)

    first = BatchStream(ds, seed=11, rank=rank, world_size=world, mirror=mirror)
    _run(first, calls[:cut])
    torch.save(first.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    # a different constructor seed is overridden by the saved one; rank 0's state serves every rank
    resumed = BatchStream(ds, seed=999, rank=rank, world_size=world, mirror=mirror)
    resumed.load_state_dict(state)
    out = _run(resumed, calls[cut:])
    assert resumed.epoch >= 2  # the tail crossed epoch boundaries
    for (xr, yr), (xo, yo) in zip(ref[cut:], out):
        assert torch.equal(xr, xo) and torch.equal(yr, yo)


def test_stream_resume_checks(rng):
    ds = _dataset(rng, n=20)
    s = BatchStream(ds, seed=1, world_size=2)
    s.next_batch(4, 4)
    with pytest.raises(ValueError, match="same --data"):
        BatchStream(_dataset(rng, n=21), seed=1).load_state_dict(s.state_dict())
    one = BatchStream(ds, seed=1)
    with pytest.warns(UserWarning, match="not an exact continuation"):
        one.load_state_dict(s.state_dict())
    assert one.cursor == 8 and one.epoch == 0


def test_stream_mirror(rng):
    ds = _dataset(rng, n=2000, size=8, c=1)
    plain = BatchStream(ds, seed=4)
    mirrored = BatchStream(ds, seed=4, mirror=True)
    flipped = 0
    for _ in range(2):  # two epochs: flips are redrawn per epoch
        x0, y0 = plain.next_batch(8, 1000)
        x1, y1 = mirrored.next_batch(8, 1000)
        assert torch.equal(y0, y1)  # mirroring never changes the order
        same = (x0 == x1).flatten(1).all(1)
        flip = (x0.flip(-1) == x1).flatten(1).all(1)
        assert (same | flip).all()
        flipped += int((flip & ~same).sum())
    assert 900 < flipped < 1100  # Binomial(2000, 0.5): sd 22


def test_stream_options(rng):
    ds = _dataset(rng, n=12, labels=False)
    x, y = BatchStream(ds, seed=0, dtype=torch.bfloat16, channels_last=True).next_batch(8, 6)
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert (y == -1).all()
    ref, _ = BatchStream(ds, seed=0).next_batch(8, 6)
    assert torch.equal(x, ref.to(torch.bfloat16))
    s = BatchStream(ds, seed=0)
    peek = s.peek_indices(5)
    assert torch.equal(peek, BatchStream(ds, seed=0).peek_indices(5)) and s.cursor == 0
    with pytest.raises(ValueError, match="rank"):
        BatchStream(ds, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="seed"):
        BatchStream(ds, seed=-1)


@pytest.mark.gpu
def test_stream_cuda_matches_cpu(rng):
    ds = _dataset(rng, n=64)
    cpu = BatchStream(ds, seed=2, mirror=True)
    gpu = BatchStream(ds, seed=2, mirror=True, device="cuda", channels_last=True, dtype=torch.float16)
    for res, bs in [(16, 16), (8, 32), (4, 64)]:
        xc, yc = cpu.next_batch(res, bs)
        xg, yg = gpu.next_batch(res, bs)
        assert xg.is_cuda and yg.is_cuda and xg.dtype == torch.float16
        assert torch.equal(xg.cpu(), xc.to(torch.float16)) and torch.equal(yg.cpu(), yc)
