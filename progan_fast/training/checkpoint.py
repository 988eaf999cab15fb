"""Atomic checkpoint I/O: a kill at any moment leaves the previous checkpoint intact."""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import torch

LATEST = "checkpoint-latest.pt"
FORMAT_VERSION = 1


def serialize(obj) -> bytes:
    """torch.save into memory, for writing one state to several files (save_atomic takes bytes)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_atomic(obj, path: str | os.PathLike) -> None:
    """torch.save (or, for `bytes`, write them) to a temp file in the same directory, fsync, then
    rename over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(obj, bytes):
                f.write(obj)
            else:
                torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory (-> its latest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        path = path / LATEST
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = resolve_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise ValueError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "progan_fast" or "config" not in ckpt:
        raise ValueError(f"{path} is not a progan_fast checkpoint")
    return ckpt
