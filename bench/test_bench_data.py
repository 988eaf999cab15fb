"""Input pipeline throughput: BatchStream.next_batch (host uint8 gather, mirror, host->device copy,
float conversion) at each training resolution with the schedule's batch size. The training step
can never run faster than this; compare img/s with the step cases of the same resolution.

Synthetic RGB data: a MultiResolutionDataset of 2 x batch random uint8 images of r px per case.
GB/s counts the uint8 batch read + the float batch written; no ceiling fraction is given, since
the host->device link is not one of the measured ceilings.
"""
from __future__ import annotations

import pytest
import torch

from .timing import run_case

try:
    from progan_fast.data import BatchStream, MultiResolutionDataset
    _IMPORT_ERROR = None
except ImportError as exc:
    _IMPORT_ERROR = exc


def pytest_generate_tests(metafunc):
    if "data_res" in metafunc.fixturenames:
        s = metafunc.config._progan_bench
        metafunc.parametrize("data_res", list(s.step_resolutions), ids=[f"r{r}" for r in s.step_resolutions])


def test_batch_stream(benchmark, data_res, settings):
    if _IMPORT_ERROR is not None:
        pytest.skip(f"progan_fast.data not available: {_IMPORT_ERROR}")
    s, res = settings, data_res
    batch = s.batch(res)
    images = torch.randint(0, 256, (2 * batch, res, res, 3), dtype=torch.uint8)
    ds = MultiResolutionDataset(images.numpy())
    stream = BatchStream(ds, seed=0, mirror=True, device=s.device, channels_last=s.channels_last)
    moved = batch * 3 * res * res * (1 + 4)
    info = {"case_id": f"data/r{res}/batch_stream", "baseline_id": None, "kind": "data", "backend": "torch",
            "mode": "next_batch", "res": res, "batch": batch, "mirror": True, "group": f"data r{res}"}
    run_case(benchmark, lambda: stream.next_batch(res, batch), settings=s, ceilings={}, info=info,
             moved=moved, images=batch)
