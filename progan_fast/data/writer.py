"""Create, describe and verify dataset directories (the `python -m progan_fast.dataset` commands).

create() streams the source in chunks (decode in threads -> the float32 box chain of multires.box_levels
-> each level written), so datasets larger than RAM work. It writes into a hidden temporary directory
beside the output, writes the manifest ("complete": true) last and renames the directory into place:
an interrupted, killed or disk-full run never leaves a directory that loads as a dataset.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import time
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .. import __version__
from . import sources
from .multires import _next_pow2, box_levels, check_resolution, chunk_rows, level_sizes
from .stored import FORMAT, FORMAT_VERSION, MANIFEST, is_dataset_dir, level_name, read_manifest

__all__ = ["create_dataset", "dataset_info", "verify_dataset", "RESIZE_FILTERS", "CODECS"]

CODECS = ("jpeg", "png", "raw")
RESIZE_FILTERS = ("lanczos", "bicubic", "bilinear", "box", "nearest")


class _Bad(Exception):
    """One unreadable image: skipped (and counted) unless strict."""


# ------------------------------------------------------------------------------------------ sources

class _FileSource:
    """Image files in a folder (recursive) or a .zip, in sorted name order; decoded lazily."""

    def __init__(self, path: str):
        self.path = path
        self.zip = None
        if os.path.isdir(path):
            files = sources._list_images(path)
            self.names = [os.path.relpath(f, path).replace(os.sep, "/") for f in files]
            self._files = files
            kind = "image folder"
        else:
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise ValueError(f"{path}: not a readable .zip ({exc})") from None
            self.names = sorted(n for n in self.zip.namelist()
                                if not n.endswith("/") and "__MACOSX/" not in n
                                and not any(p.startswith(".") for p in n.split("/"))
                                and n.lower().endswith(sources.IMAGE_EXTENSIONS))
            kind = "zip"
        if not self.names:
            raise ValueError(f"{path}: no {'/'.join(e[1:].upper() for e in sources.IMAGE_EXTENSIONS)} images "
                             f"({'searched recursively' if self.zip is None else 'in the archive'})")
        self.labels = None
        self.desc = f"{kind} {path}"

    def where(self, i: int) -> str:
        return f"{self.path}:{self.names[i]}" if self.zip is not None else self._files[i]

    def _open(self, i: int):
        from PIL import Image
        try:
            if self.zip is not None:
                return Image.open(io.BytesIO(self.zip.read(self.names[i])))
            return Image.open(self._files[i])
        except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
            raise _Bad(f"{self.where(i)}: not a readable image ({type(exc).__name__}: {exc})") from None

    def header(self, i: int) -> tuple[int, int, str]:
        with self._open(i) as img:
            return img.size[0], img.size[1], img.mode

    def decode(self, i: int, channels: int) -> np.ndarray:
        with self._open(i) as img:
            try:
                return sources._to_array(img, self.where(i), channels)
            except ValueError as exc:
                raise _Bad(str(exc)) from None


class _ArraySource:
    """npy / npz / IDX through sources.load_images (already validated, square, one size)."""

    def __init__(self, path: str):
        self.images, self.labels, self.desc = sources.load_images(path)
        self.path = path
        self.names = [str(i) for i in range(self.images.shape[0])]

    def where(self, i: int) -> str:
        return f"{self.path}[{i}]"

    def header(self, i: int):
        _, h, w, c = self.images.shape
        return w, h, "L" if c == 1 else "RGB"

    def decode(self, i: int, channels: int) -> np.ndarray:
        a = self.images[i]
        return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 and channels == 3 else a


def _open_source(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"--source {path} does not exist")
    if os.path.isdir(path):
        if is_dataset_dir(path):
            raise ValueError(f"--source {path} is already a progan_fast dataset; nothing to convert")
        if sources._idx_in_folder(path) is not None:
            return _ArraySource(path)
        return _FileSource(path)
    if path.lower().endswith(".zip"):
        return _FileSource(path)
    return _ArraySource(path)


# ------------------------------------------------------------------------------------------ labels

def _read_labels(path: str, names: list[str]) -> list[int]:
    """Labels for every source item, in source order, from .npy (order), .json (list or name -> label)
    or .csv (lines `name,label`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--labels {path} does not exist")
    lower = path.lower()
    by_name = None
    try:
        if lower.endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
            if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"--labels {path}: need integers of shape [{len(names)}], got {arr.dtype} {arr.shape}")
            values = arr.tolist()
        elif lower.endswith(".json"):
            with open(path) as f:
                data = json.load(f)
            if isinstance(data, dict):
                by_name = data
            else:
                values = data
        elif lower.endswith(".csv"):
            by_name = {}
            with open(path) as f:
                for k, line in enumerate(f):
                    line = line.strip()
                    if not line:
                        continue
                    name, _, lab = line.rpartition(",")
                    try:
                        by_name[name.strip()] = int(lab)
                    except ValueError:
                        if k == 0:
                            continue  # a header line
                        raise ValueError(f"--labels {path}:{k + 1}: expected `name,integer`, got {line!r}") from None
        else:
            raise ValueError(f"--labels {path}: use .npy (integers in source order), .json (a list, or "
                             f"{{name: label}}) or .csv (`name,label` lines)")
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--labels {path}: cannot read ({exc})") from None
    if by_name is not None:
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"--labels {path}: no label for {missing[0]}"
                             f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
        values = [by_name[n] for n in names]
    if len(values) != len(names):
        raise ValueError(f"--labels {path}: {len(values)} labels for {len(names)} source images")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"--labels {path}: labels must be integers")
    return [int(v) for v in values]


# ------------------------------------------------------------------------------------------ writing

def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _shrink_npy(path: str, n: int, shape_rest: tuple) -> None:
    """Keep the first n rows of a C-order .npy in place: rewrite the header (same length) and truncate."""
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(f)
        data_start = f.tell()
        header = repr({"descr": "|u1", "fortran_order": False, "shape": (n, *shape_rest)}).encode("latin1")
        prefix = 10 if version == (1, 0) else 12
        room = data_start - prefix
        if len(header) + 1 > room:
            raise RuntimeError("npy header does not fit")  # cannot happen: the new shape is shorter
        header = header + b" " * (room - len(header) - 1) + b"\n"
        f.seek(prefix)
        f.write(header)
        f.truncate(data_start + n * int(np.prod(shape_rest)))


def _encode(arr_chw: np.ndarray, codec: str, quality: int) -> bytes:
    from PIL import Image
    img = Image.fromarray(arr_chw[0] if arr_chw.shape[0] == 1 else arr_chw.transpose(1, 2, 0))
    buf = io.BytesIO()
    if codec == "jpeg":
        img.save(buf, "JPEG", quality=quality, subsampling=0)  # 4:4:4: no chroma blur at any quality
    else:
        img.save(buf, "PNG", compress_level=1)  # decode speed barely depends on the level; encode does
    return buf.getvalue()


def _resize(arr: np.ndarray, size: int, resample: str) -> np.ndarray:
    from PIL import Image
    filt = {"lanczos": Image.LANCZOS, "bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR,
            "box": Image.BOX, "nearest": Image.NEAREST}[resample]
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    out = np.asarray(img.resize((size, size), filt))
    return out[..., None] if out.ndim == 2 else out


def _center_crop(arr: np.ndarray) -> np.ndarray:
    h, w = arr.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return arr[top:top + s, left:left + s]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(parent: str, name: str) -> None:
    """Delete temporary directories that killed runs of this tool left for the same --out."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.tmp-(\d+)-\d+(\.old)?$")
    for entry in os.listdir(parent):
        m = pattern.match(entry)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def create_dataset(source, out, *, resolution: int | None = None, labels: str | None = None,
                   crop: str = "none", resize: str | None = None, overwrite: bool = False, strict: bool = False,
                   codec: str = "jpeg", encode_from: int = 128, quality: int = 95,
                   workers: int | None = None, log=None) -> dict:
    """Write a dataset directory from `source`; returns its manifest. See docs/data.md for the rules."""
    log = log or (lambda msg: None)
    source, out = os.path.abspath(os.fspath(source)), os.path.abspath(os.fspath(out))
    if crop not in ("none", "center"):
        raise ValueError(f"--crop must be 'none' or 'center', got {crop!r}")
    if resize is not None and resize not in RESIZE_FILTERS:
        raise ValueError(f"--resize must be one of {', '.join(RESIZE_FILTERS)}, got {resize!r}")
    if codec not in CODECS:
        raise ValueError(f"--codec must be one of {', '.join(CODECS)}, got {codec!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"--quality must be in 1..100, got {quality}")
    for name, v in (("--resolution", resolution), ("--encode-from", encode_from)):
        if v is not None:
            check_resolution(v, name)
    if resize is not None and resolution is None:
        raise ValueError("--resize needs --resolution (the size to resize every image to)")
    if os.path.exists(out):
        if not overwrite:
            raise FileExistsError(f"--out {out} already exists; pass --overwrite to replace it")
        if not os.path.isdir(out) or (os.listdir(out) and not is_dataset_dir(out)):
            raise ValueError(f"--out {out} exists and is not a progan_fast dataset; refusing to replace it "
                             f"even with --overwrite (remove it yourself)")
    src = _open_source(source)
    workers = workers or min(8, os.cpu_count() or 1)

    # Pass 1: headers only (cheap): size and channel count, before anything is decoded.
    good, skipped, channels, first = [], [], 1, None

    def bad(msg):
        if strict:
            raise ValueError(f"{msg} (--strict: stopping; remove or re-encode the file, or drop --strict to skip it)")
        skipped.append(msg)

    with ThreadPoolExecutor(workers) as pool:
        def head(i):
            try:
                return src.header(i)
            except _Bad as exc:
                return exc
        headers = list(pool.map(head, range(len(src.names))))
    for i, h in enumerate(headers):
        if isinstance(h, _Bad):
            bad(str(h))
            continue
        w, hh, mode = h
        channels = max(channels, sources.mode_channels(mode, src.where(i)))
        if w != hh and crop == "none":
            raise ValueError(f"{src.where(i)}: image is {w}x{hh}; pass --crop center to crop it square")
        size = min(w, hh)
        if resize is None and first is not None and size != first[1]:
            raise ValueError(f"{src.where(i)}: image is {size} px{' (after cropping)' if w != hh else ''} but {src.where(first[0])} is "
                             f"{first[1]} px; pass --resize (with --resolution) to bring them to one size")
        if first is None:
            first = (i, size)
        good.append(i)
    if not good:
        raise ValueError(f"--source {source}: no readable images ({len(skipped)} unreadable; first: {skipped[0]})")

    # Target: resized images are `resolution` px; otherwise padded to a power of two, and levels above
    # `resolution` are computed by the box chain but not stored.
    padded = resolution if resize is not None else _next_pow2(first[1])
    if resolution is None:
        resolution = padded
    if resolution > padded:
        raise ValueError(f"--resolution {resolution} exceeds the images ({first[1]} px, e.g. {src.where(first[0])}"
                         f"{f', padded to {padded}' if padded != first[1] else ''}); pass --resize to upscale them")
    source_labels = None
    if labels is not None:
        source_labels = _read_labels(labels, src.names)
    elif src.labels is not None:
        source_labels = src.labels.tolist()

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_temps(parent, os.path.basename(out))
    tmp = os.path.join(parent, f".{os.path.basename(out)}.tmp-{os.getpid()}-{int(time.time() * 1000)}")
    os.mkdir(tmp)
    try:
        manifest = _write(src, tmp, good, skipped, bad, channels, padded, resolution, source_labels, crop, resize,
                          codec, encode_from, quality, workers, log)
        manifest.update(source_size=resolution if resize is not None else first[1], source=source, source_description=src.desc, crop=crop, resize=resize)
        mpath = os.path.join(tmp, MANIFEST)
        with open(mpath, "w") as f:
            json.dump(manifest, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        _fsync(tmp)
        if os.path.exists(out):  # --overwrite: swap in the new one, then drop the old
            trash = tmp + ".old"
            os.rename(out, trash)
            os.rename(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, out)
        _fsync(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) of {len(src.names)}; first: {skipped[0]}",
                      stacklevel=2)
    return manifest


def _write(src, tmp, good, skipped, bad, channels, padded, resolution, source_labels, crop, resize, codec,
           encode_from, quality, workers, log):
    sizes = level_sizes(padded, resolution)
    cand = len(good)
    raw, enc = {}, {}
    for r in sizes:
        if codec != "raw" and r >= encode_from:
            enc[r] = (open(os.path.join(tmp, level_name(r) + ".bin"), "wb"), [0])
        else:
            raw[r] = np.lib.format.open_memmap(os.path.join(tmp, level_name(r) + ".npy"), mode="w+",
                                               dtype=np.uint8, shape=(cand, channels, r, r))
    kept_labels = []
    n = 0
    chunk = chunk_rows(channels, padded)

    def load(i):
        try:
            a = src.decode(i, channels)
        except _Bad as exc:
            return exc
        if crop == "center":
            a = _center_crop(a)
        if resize is not None and (a.shape[0] != resolution or a.shape[1] != resolution):
            a = _resize(a, resolution, resize)
        return a

    t0 = time.time()
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, cand, chunk):
            idx = good[start:start + chunk]
            arrays, ids = [], []
            for i, a in zip(idx, pool.map(load, idx)):
                if isinstance(a, _Bad):
                    bad(str(a))
                    continue
                arrays.append(a)
                ids.append(i)
            if not arrays:
                continue
            levels = box_levels(torch.from_numpy(np.stack(arrays)), resolution)
            b = len(arrays)
            for r, x in levels.items():
                x = x.numpy()
                if r in raw:
                    raw[r][n:n + b] = x
                else:
                    f, offs = enc[r]
                    for data in pool.map(lambda k: _encode(x[k], codec, quality), range(b)):
                        f.write(data)
                        offs.append(offs[-1] + len(data))
            if source_labels is not None:
                kept_labels.extend(source_labels[i] for i in ids)
            n += b
            log(f"{n}/{cand} images ({time.time() - t0:.0f} s)")
    if n == 0:
        raise ValueError(f"no readable images ({len(skipped)} unreadable; first: {skipped[0]})")

    levels_info = {}
    for r in list(raw):
        raw.pop(r).flush()  # the memmap is released before its file is shrunk
        path = os.path.join(tmp, level_name(r) + ".npy")
        if n < cand:
            _shrink_npy(path, n, (channels, r, r))
        _fsync(path)
        levels_info[str(r)] = {"storage": "raw", "file": level_name(r) + ".npy", "bytes": os.path.getsize(path),
                               "sha256": _sha256(path)}
    for r, (f, offs) in enc.items():
        f.flush()
        os.fsync(f.fileno())
        f.close()
        opath = os.path.join(tmp, level_name(r) + ".offsets.npy")
        np.save(opath, np.asarray(offs, dtype=np.int64))
        _fsync(opath)
        path = os.path.join(tmp, level_name(r) + ".bin")
        levels_info[str(r)] = {"storage": codec, "file": level_name(r) + ".bin", "offsets": level_name(r) + ".offsets.npy",
                               "bytes": os.path.getsize(path), "sha256": _sha256(path),
                               "offsets_sha256": _sha256(opath), **({"quality": quality} if codec == "jpeg" else {})}
    labels_info = None
    if source_labels is not None:
        lpath = os.path.join(tmp, "labels.npy")
        np.save(lpath, np.asarray(kept_labels, dtype=np.int64))
        _fsync(lpath)
        labels_info = {"file": "labels.npy", "sha256": _sha256(lpath),
                       "num_classes": int(max(kept_labels)) + 1 if kept_labels else 0}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "tool_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resolution": resolution, "count": n,
            "channels": channels, "skipped": len(skipped), "skipped_files": skipped[:100],
            "levels": dict(sorted(levels_info.items(), key=lambda kv: -int(kv[0]))), "labels": labels_info,
            "complete": True}


# ------------------------------------------------------------------------------------------ info / verify

def dataset_info(path) -> str:
    """A human-readable summary of a dataset directory."""
    m = read_manifest(path)
    lines = [f"{os.path.abspath(path)}: {m['count']} images, {m['resolution']} px, "
             f"{'grayscale' if m['channels'] == 1 else 'RGB'}, "
             f"{'labels (' + str(m['labels']['num_classes']) + ' classes)' if m.get('labels') else 'no labels'}",
             f"  source: {m.get('source_description', m.get('source'))}; skipped {m.get('skipped', 0)}; "
             f"tool {m['tool_version']}; created {m.get('created')}"]
    for r, info in m["levels"].items():
        extra = f" q{info['quality']}" if "quality" in info else ""
        lines.append(f"  level {int(r):>4}: {info['storage']}{extra:<4} {info['bytes'] / 2**20:10.2f} MiB  {info['file']}")
    return "\n".join(lines)


def verify_dataset(path) -> list[str]:
    """Every problem found (empty list: the dataset is intact): checksums, sizes, shapes, offsets."""
    path = os.fspath(path)
    m = read_manifest(path)
    problems = []
    n, c = int(m["count"]), int(m["channels"])

    def check(name, sha):
        f = os.path.join(path, name)
        if not os.path.isfile(f):
            problems.append(f"{f}: missing")
            return False
        if _sha256(f) != sha:
            problems.append(f"{f}: sha256 mismatch (damaged or modified)")
            return False
        return True

    for r, info in m["levels"].items():
        r = int(r)
        if check(info["file"], info["sha256"]) and info["storage"] == "raw":
            a = np.load(os.path.join(path, info["file"]), mmap_mode="r")
            if a.shape != (n, c, r, r) or a.dtype != np.uint8:
                problems.append(f"{info['file']}: shape {a.shape} {a.dtype}, expected uint8 {(n, c, r, r)}")
        if info["storage"] != "raw" and check(info["offsets"], info["offsets_sha256"]):
            offs = np.load(os.path.join(path, info["offsets"]))
            if offs.shape != (n + 1,) or offs[0] != 0 or np.any(np.diff(offs) <= 0) or offs[-1] != info["bytes"]:
                problems.append(f"{info['offsets']}: inconsistent offsets")
    if m.get("labels"):
        if check(m["labels"]["file"], m["labels"]["sha256"]):
            lab = np.load(os.path.join(path, m["labels"]["file"]))
            if lab.shape != (n,):
                problems.append(f"labels.npy: shape {lab.shape}, expected {(n,)}")
    return problems
