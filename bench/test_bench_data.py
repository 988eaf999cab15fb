"""Input pipeline throughput: next_batch (gather or decode, mirror, host->device copy, float conversion)
at each training resolution with the schedule's batch size, for each loader and storage. The training
step can never run faster than this; compare img/s with the step cases of the same resolution.

Loaders: `torch` (BatchStream on the bench device), `dali_cpu` (DaliStream, DALI's CPU-only mode),
`dali_gpu` (DaliStream on CUDA: nvJPEG decode for JPEG levels); DALI cases skip without DALI / CUDA.
Storage: `raw` = uint8 levels in memory (MultiResolutionDataset; a dataset directory's raw .npy levels
read the same way once in the page cache), `jpeg` = a dataset directory whose levels are all JPEG q95.
Synthetic RGB data: 2 x batch random uint8 images of r px per case (noise: the worst case for JPEG).
GB/s counts the uint8 batch read + the float batch written; no ceiling fraction is given.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from .timing import run_case

try:
    from progan_fast.data import BatchStream, MultiResolutionDataset, StoredDataset
    from progan_fast.data.writer import create_dataset
    _IMPORT_ERROR = None
except ImportError as exc:
    _IMPORT_ERROR = exc

LOADERS = ("torch", "dali_cpu", "dali_gpu")
STORAGE = ("raw", "jpeg")


def pytest_generate_tests(metafunc):
    if "data_res" in metafunc.fixturenames:
        s = metafunc.config._progan_bench
        metafunc.parametrize("data_res", list(s.step_resolutions), ids=[f"r{r}" for r in s.step_resolutions])


def _dali_installed() -> bool:
    """find_spec("nvidia.dali") imports the `nvidia` namespace first and raises where no nvidia
    package is installed at all (a CPU build of torch)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ImportError:
        return False


@pytest.mark.parametrize("storage", STORAGE)
@pytest.mark.parametrize("loader", LOADERS)
def test_batch_stream(benchmark, data_res, settings, loader, storage, tmp_path):
    if _IMPORT_ERROR is not None:
        pytest.skip(f"progan_fast.data not available: {_IMPORT_ERROR}")
    if loader != "torch" and not _dali_installed():
        pytest.skip("NVIDIA DALI is not installed (pip install nvidia-dali-cuda130)")
    if loader == "dali_gpu" and not torch.cuda.is_available():
        pytest.skip("dali_gpu needs CUDA")
    s, res = settings, data_res
    batch = s.batch(res)
    images = np.random.default_rng(0).integers(0, 256, (2 * batch, res, res, 3), dtype=np.uint8)
    if storage == "raw":
        ds = MultiResolutionDataset(images)
    else:
        np.save(tmp_path / "src.npy", images)
        create_dataset(tmp_path / "src.npy", tmp_path / "ds", codec="jpeg", encode_from=4, quality=95)
        ds = StoredDataset(tmp_path / "ds")
    device = {"torch": s.device, "dali_cpu": torch.device("cpu"), "dali_gpu": torch.device("cuda")}[loader]
    kw = dict(seed=0, mirror=True, device=device, channels_last=s.channels_last)
    if loader == "torch":
        stream = BatchStream(ds, **kw)
    else:
        from progan_fast.data.dali import DaliStream
        stream = DaliStream(ds, **kw)
    moved = batch * 3 * res * res * (1 + 4)
    info = {"case_id": f"data/r{res}/{loader}/{storage}", "baseline_id": None, "kind": "data", "backend": loader,
            "mode": f"next_batch/{storage}", "res": res, "batch": batch, "mirror": True, "device": str(device),
            "group": f"data r{res}"}
    run_case(benchmark, lambda: stream.next_batch(res, batch), settings=s, ceilings={}, info=info,
             moved=moved, images=batch)
