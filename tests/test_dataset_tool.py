"""The dataset tool (`python -m progan_fast.dataset`) and StoredDataset: exact levels, labels, checksums,
bad input, atomic creation, and that BatchStream / the trainer read what the tool wrote."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from progan_fast.data import BatchStream, MultiResolutionDataset, StoredDataset, load_dataset, load_images
from progan_fast.data import writer
from progan_fast.data.idx import write_idx


@pytest.fixture
def rng(_fresh_seed):
    return np.random.default_rng(_fresh_seed)


def _box_chain(images_nhwc, top):
    """Independent reference: float64 block means of the padded full image, rounded half to even."""
    n, s, _, c = images_nhwc.shape
    full = max(4, 1 << (s - 1).bit_length())
    x = np.zeros((n, c, full, full))
    b = (full - s) // 2
    x[:, :, b:b + s, b:b + s] = images_nhwc.transpose(0, 3, 1, 2)
    out = {}
    r = full
    while r >= 4:
        k = full // r
        if r <= top:
            out[r] = np.rint(x.reshape(n, c, r, k, r, k).mean(axis=(3, 5))).astype(np.uint8)
        r //= 2
    return out


def _save_pngs(folder, images, names=None):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, a in enumerate(images):
        p = os.path.join(folder, names[i] if names else f"img{i:04d}.png")
        os.makedirs(os.path.dirname(p), exist_ok=True)
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(p)
        paths.append(p)
    return paths


@pytest.mark.parametrize("c,size", [(1, 28), (3, 16)])
def test_npz_round_trip_levels_labels_manifest(tmp_path, rng, c, size):
    images = rng.integers(0, 256, (37, size, size, c), dtype=np.uint8)
    labels = rng.integers(0, 10, 37)
    np.savez(tmp_path / "a.npz", images=images, labels=labels)
    m = writer.create_dataset(tmp_path / "a.npz", tmp_path / "ds", codec="raw")
    assert m["complete"] is True and m["count"] == 37 and m["channels"] == c and m["source_size"] == size
    ref = _box_chain(images, 1024)
    assert [int(r) for r in m["levels"]] == sorted(ref, reverse=True)
    ds = StoredDataset(tmp_path / "ds")
    for r, want in ref.items():
        np.testing.assert_array_equal(ds.level(r).numpy(), want)
        np.testing.assert_array_equal(ds.level(r).numpy(), MultiResolutionDataset(images).level(r).numpy())
    np.testing.assert_array_equal(ds.labels.numpy(), labels)
    assert ds.has_labels and writer.verify_dataset(tmp_path / "ds") == []
    # manifest checksums are real: a flipped byte is found
    f = tmp_path / "ds" / m["levels"]["4"]["file"]
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 1
    f.write_bytes(bytes(raw))
    assert any("sha256 mismatch" in p for p in writer.verify_dataset(tmp_path / "ds"))


def test_folder_jpeg_levels_resolution_and_trainer_entry(tmp_path, rng):
    images = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    _save_pngs(tmp_path / "src" / "sub", images)
    (tmp_path / "src" / "notes.txt").write_text("not an image")  # ignored
    m = writer.create_dataset(tmp_path / "src", tmp_path / "ds", resolution=32, encode_from=16, quality=95)
    assert m["resolution"] == 32 and m["levels"]["32"]["storage"] == "jpeg" and m["levels"]["8"]["storage"] == "raw"
    ref = _box_chain(images, 32)  # levels below the images' size come from the box chain of the full image
    ds, desc = load_dataset(tmp_path / "ds")
    assert isinstance(ds, StoredDataset) and ds.resolutions == [32, 16, 8, 4] and "jpeg" in desc
    np.testing.assert_array_equal(ds.level(8).numpy(), ref[8])
    dec = ds.level(32)[0:6].numpy().astype(int)  # JPEG q95 4:4:4 of noise: close, not exact
    assert np.abs(dec - ref[32]).mean() < 6
    assert np.array_equal(ds.level(32).index_select(0, torch.tensor([4, 1])).numpy(), ds.level(32)[0:6].numpy()[[4, 1]])
    # what --data gets: a smaller --resolution keeps fewer levels; a larger one is a clear error
    assert load_dataset(tmp_path / "ds", 16)[0].resolutions == [16, 8, 4]
    with pytest.raises(ValueError, match="exceeds the dataset's resolution 32"):
        load_dataset(tmp_path / "ds", 64)
    top, labels, _ = load_images(tmp_path / "ds")  # load_images gives the top level
    assert top.shape == (6, 32, 32, 3) and labels is None


def test_png_levels_are_exact_and_stream_reads_them(tmp_path, rng):
    images = rng.integers(0, 256, (10, 16, 16, 1), dtype=np.uint8)
    np.save(tmp_path / "a.npy", images)
    writer.create_dataset(tmp_path / "a.npy", tmp_path / "ds", codec="png", encode_from=8)
    ds = StoredDataset(tmp_path / "ds")
    mem = MultiResolutionDataset(images)
    for r in (16, 8, 4):
        np.testing.assert_array_equal(ds.level(r)[0:10].numpy() if r >= 8 else ds.level(r).numpy(),
                                      mem.level(r).numpy())
    a = BatchStream(ds, seed=3, mirror=True)
    b = BatchStream(mem, seed=3, mirror=True)
    for res, bs in ((16, 4), (8, 3), (4, 5), (16, 4)):
        xa, ya = a.next_batch(res, bs)
        xb, yb = b.next_batch(res, bs)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_zip_rgba_gray_mix_crop_resize_labels(tmp_path, rng):
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)       # non-square: needs --crop center
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    zpath = tmp_path / "x.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for name, arr in (("b/rgb.png", rgb), ("a/rgba.png", rgba), ("c/gray.png", gray)):
            p = tmp_path / "tmp.png"
            Image.fromarray(arr).save(p)
            z.write(p, name)
        z.writestr("__MACOSX/a/._rgba.png", b"junk")
        z.writestr("readme.md", b"hello")
    (tmp_path / "labels.csv").write_text("name,label\na/rgba.png,2\nb/rgb.png,0\nc/gray.png,1\n")
    with pytest.raises(ValueError, match="--crop center"):
        writer.create_dataset(zpath, tmp_path / "ds", resolution=16, resize="lanczos")
    with pytest.raises(ValueError, match="--resize"):
        writer.create_dataset(zpath, tmp_path / "ds", crop="center")  # 20 px vs 16 px
    m = writer.create_dataset(zpath, tmp_path / "ds", crop="center", resize="lanczos", resolution=16,
                              labels=str(tmp_path / "labels.csv"), codec="raw")
    assert m["channels"] == 3 and m["count"] == 3
    ds = StoredDataset(tmp_path / "ds")
    assert ds.labels.tolist() == [2, 0, 1]  # sorted member order: a/, b/, c/
    top = ds.level(16).numpy()
    alpha = rgba[..., 3:].astype(np.uint16)
    want = ((rgba[..., :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)  # over black
    np.testing.assert_array_equal(top[0], want.transpose(2, 0, 1))
    np.testing.assert_array_equal(top[2], np.repeat(gray[None], 3, axis=0))  # gray replicated to RGB
    crop = np.asarray(Image.fromarray(rgb[:, 2:22]).resize((16, 16), Image.LANCZOS))
    np.testing.assert_array_equal(top[1], crop.transpose(2, 0, 1))


def test_idx_folder_and_labels_override(tmp_path, rng):
    images = rng.integers(0, 256, (9, 8, 8), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(9, dtype=np.uint8))
    writer.create_dataset(tmp_path, tmp_path / "ds")
    assert StoredDataset(tmp_path / "ds").labels.tolist() == list(range(9))
    (tmp_path / "l.json").write_text(json.dumps([1] * 9))
    writer.create_dataset(tmp_path, tmp_path / "ds", labels=str(tmp_path / "l.json"), overwrite=True)
    assert StoredDataset(tmp_path / "ds").labels.tolist() == [1] * 9
    (tmp_path / "bad.json").write_text(json.dumps([1] * 8))
    with pytest.raises(ValueError, match="8 labels for 9"):
        writer.create_dataset(tmp_path, tmp_path / "ds2", labels=str(tmp_path / "bad.json"))


def test_corrupt_images_skipped_or_strict(tmp_path, rng):
    images = rng.integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    paths = _save_pngs(tmp_path / "src", images)
    data = open(paths[2], "rb").read()
    open(paths[2], "wb").write(data[: len(data) // 2])  # truncated: header fine, decode fails
    (tmp_path / "src" / "zz.jpg").write_bytes(b"not a jpeg at all")  # header fails
    (tmp_path / "lab.npy").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        m = writer.create_dataset(tmp_path / "src", tmp_path / "ds", codec="raw")
    assert m["count"] == 4 and m["skipped"] == 2
    ds = StoredDataset(tmp_path / "ds")
    np.testing.assert_array_equal(ds.level(8).numpy()[:, 0], images[[0, 1, 3, 4], ..., 0])
    assert writer.verify_dataset(tmp_path / "ds") == []  # the shrunk .npy is consistent
    for bad in ("img0002.png", "zz.jpg"):
        os.replace(tmp_path / "src" / bad, tmp_path / bad)
    for i, bad in enumerate(("img0002.png", "zz.jpg")):
        os.replace(tmp_path / bad, tmp_path / "src" / bad)
        with pytest.raises(ValueError, match=f"{bad}.*--strict"):
            writer.create_dataset(tmp_path / "src", tmp_path / f"strict{i}", strict=True)
        os.replace(tmp_path / "src" / bad, tmp_path / bad)
        assert not (tmp_path / f"strict{i}").exists()


def test_bad_input_errors(tmp_path, rng):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="no PNG/JPG/JPEG images"):
        writer.create_dataset(tmp_path / "empty", tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        writer.create_dataset(tmp_path / "nope", tmp_path / "o")
    _save_pngs(tmp_path / "mixed", [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
                                    rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)])
    with pytest.raises(ValueError, match=r"img0001.png: image is 16 px but .*img0000.png is 8 px"):
        writer.create_dataset(tmp_path / "mixed", tmp_path / "o")
    _save_pngs(tmp_path / "small", [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)])
    with pytest.raises(ValueError, match="exceeds the images .*--resize"):
        writer.create_dataset(tmp_path / "small", tmp_path / "o", resolution=32)
    m = writer.create_dataset(tmp_path / "mixed", tmp_path / "o", resolution=32, resize="bicubic", codec="raw")
    assert m["count"] == 2 and m["resolution"] == 32
    with pytest.raises(FileExistsError, match="--overwrite"):
        writer.create_dataset(tmp_path / "mixed", tmp_path / "o", resolution=32, resize="bicubic")
    (tmp_path / "notds").mkdir()
    (tmp_path / "notds" / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="not a progan_fast dataset"):
        writer.create_dataset(tmp_path / "mixed", tmp_path / "notds", resolution=32, resize="box", overwrite=True)
    assert (tmp_path / "notds" / "keep.txt").exists()
    with pytest.raises(ValueError, match="power of two"):
        writer.create_dataset(tmp_path / "mixed", tmp_path / "o2", resolution=24, resize="box")


def test_interrupted_or_failed_creation_leaves_no_dataset(tmp_path, rng, monkeypatch):
    images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", images)

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "_sha256", disk_full)  # fails after all levels are written
    with pytest.raises(OSError, match="No space"):
        writer.create_dataset(tmp_path / "a.npy", tmp_path / "ds")
    assert sorted(os.listdir(tmp_path)) == ["a.npy"]  # neither the output nor the temp dir remains
    monkeypatch.undo()
    # a directory left by a killed run (levels written, no manifest) is refused, not loaded
    writer.create_dataset(tmp_path / "a.npy", tmp_path / "ds", codec="raw")
    os.remove(tmp_path / "ds" / "manifest.json")
    with pytest.raises(ValueError, match="interrupted"):
        load_dataset(tmp_path / "ds")
    # --overwrite over an old dataset swaps atomically, and a failed overwrite keeps the old one
    writer.create_dataset(tmp_path / "a.npy", tmp_path / "ds2", codec="raw")
    monkeypatch.setattr(writer, "_sha256", disk_full)
    with pytest.raises(OSError):
        writer.create_dataset(tmp_path / "a.npy", tmp_path / "ds2", overwrite=True)
    monkeypatch.undo()
    assert writer.verify_dataset(tmp_path / "ds2") == []


def test_killed_process_leaves_no_dataset(tmp_path, rng):
    images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", images)
    code = ("import os, signal, progan_fast.data.writer as w\n"
            "orig = w._fsync\n"
            "def die(p):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
            "w._fsync = die\n"
            f"w.create_dataset({str(tmp_path / 'a.npy')!r}, {str(tmp_path / 'ds')!r})\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert r.returncode == -9
    assert not (tmp_path / "ds").exists()  # only a hidden .ds.tmp-* dir (no manifest) is left
    (left,) = [p for p in os.listdir(tmp_path) if p.startswith(".ds.tmp-")]
    assert not (tmp_path / left / "manifest.json").exists()
    writer.create_dataset(tmp_path / "a.npy", tmp_path / "ds")  # the next run clears the dead run's leftovers
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "ds"]


def test_cli_create_info_verify(tmp_path, rng, capsys):
    from progan_fast.dataset import main
    np.save(tmp_path / "a.npy", rng.integers(0, 256, (7, 8, 8, 3), dtype=np.uint8))
    r = subprocess.run([sys.executable, "-m", "progan_fast.dataset", "create", "--source", str(tmp_path / "a.npy"),
                        "--out", str(tmp_path / "ds"), "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "7 images, 8 px, RGB" in r.stdout
    capsys.readouterr()
    assert main(["info", str(tmp_path / "ds")]) == 0 and "level    8: raw" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "ds")]) == 0
    assert main(["create", "--source", str(tmp_path / "a.npy"), "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and err.count("\n") == 1
    os.remove(tmp_path / "ds" / "level-0004.npy")
    assert main(["verify", str(tmp_path / "ds")]) == 1
    assert "level-0004.npy: missing" in capsys.readouterr().err


def test_train_cli_data_accepts_dataset_dir(tmp_path, rng):
    from progan_fast.train import load_dataset as train_load
    from progan_fast.training.config import TrainConfig
    np.save(tmp_path / "a.npy", rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8))
    writer.create_dataset(tmp_path / "a.npy", tmp_path / "ds")
    cfg = TrainConfig(data=str(tmp_path / "ds"))
    ds, desc = train_load(cfg)
    assert isinstance(ds, StoredDataset) and cfg.resolution == 16 and cfg.num_channels == 3 and "5 images" in desc
    cfg = TrainConfig(data=str(tmp_path / "ds"), resolution=8)
    assert train_load(cfg)[0].resolutions == [8, 4]
    with pytest.raises(ValueError, match="--resolution 32 exceeds the dataset's resolution 16"):
        train_load(TrainConfig(data=str(tmp_path / "ds"), resolution=32))
