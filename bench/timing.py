"""Timing one case with pytest-benchmark, correctly for asynchronous GPUs.

`pedantic(iterations=k)` times k back-to-back calls and reports time / k. The target synchronizes
the device only after the k-th call of a round, so launches queue up as they do in training and
the number is device throughput, not launch + sync latency. k is chosen so a round lasts about
`round_s`; the round count so the whole case fits its time budget. Warm-up calls (compilation,
autotuning, cuDNN heuristics, allocator growth) happen before anything is timed.
"""
from __future__ import annotations

import time

import torch

from .roofline import summarize


class _SyncEvery:
    """Calls `fn`; synchronizes the device after every `every`-th call (the end of a round)."""

    def __init__(self, fn, every: int, sync):
        self.fn, self.every, self.sync, self.calls = fn, every, sync, 0

    def __call__(self):
        self.fn()
        self.calls += 1
        if self.calls % self.every == 0:
            self.sync()


def device_sync(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def graph_replay(fn, calls: int):
    """`fn` run `calls` times, captured once in a CUDA graph (after warm-up calls on a side stream,
    as torch.cuda.graph asks); returns the replay. Timing it measures device time without the host's
    dispatch: what the work costs inside a captured training step."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph.replay


def run_case(benchmark, fn, *, settings, ceilings, info: dict, moved=0, flops=0, images=None,
             budget_s=None, calls: int = 1) -> dict:
    """Time `fn` (one op / layer / step call) and store the roofline summary in extra_info.

    `info`: the case's identity (`case_id`, `baseline_id`, `kind`, `backend`, `mode`, `res`, ...).
    `moved`: minimal bytes; `flops`: useful FLOPs; `images`: images per call (for img/s).
    `calls`: op calls per `fn()` (a graph replay of several): the summary is per op call, and
    report.convert divides the recorded median by `info["graph_calls"]` the same way."""
    sync = device_sync(settings.device)
    budget = settings.case_budget_s if budget_s is None else budget_s
    fn()  # warm-up: compile / autotune / allocate
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    t_one = max(time.perf_counter() - t0, 1e-7)
    if t_one < budget / 4:  # a second warm-up where it is cheap; the estimate is then steadier
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        sync()
        t_one = max((time.perf_counter() - t0) / 3, 1e-7)
    iterations = max(1, min(1000, int(settings.round_s / t_one)))
    rounds = int(budget / (t_one * iterations))
    rounds = max(settings.min_rounds if t_one * iterations * settings.min_rounds <= 4 * budget else 2,
                 min(rounds, settings.max_rounds))
    for key, value in info.items():
        benchmark.extra_info[key] = value
    benchmark.group = info.get("group")
    benchmark.pedantic(_SyncEvery(fn, iterations, sync), rounds=rounds, iterations=iterations,
                       warmup_rounds=1 if t_one * iterations < budget / 8 else 0)
    sync()
    if benchmark.stats is None:  # --benchmark-disable: ran once as a plain test, nothing timed
        return {}
    median = benchmark.stats.stats.median / calls
    summary = summarize(median, ceilings, moved=moved, flops=flops, images=images)
    for key, value in summary.items():
        benchmark.extra_info[key] = value
    return summary
