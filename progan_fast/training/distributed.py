"""torchrun / torch.distributed glue: process-group setup from the environment, rank-0 broadcasts,
and a check that every rank runs the same configuration.

Gradients are averaged by TrainStep in one flat all-reduce per optimizer step rather than by a
DistributedDataParallel wrapper: the WGAN-GP step runs D three times and differentiates twice, which
DDP's reducer cannot follow without find_unused_parameters / static-graph workarounds, while a
manual all-reduce of exactly the parameters that received gradients costs one collective per step.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os

import torch
import torch.distributed as dist


def init_from_env(device_name: str = "auto"):
    """(rank, world_size, device). Starts the process group when launched by torchrun (WORLD_SIZE > 1):
    NCCL on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        # torch._dynamo first: imported after the process group starts (creating any torch.optim
        # optimizer imports it), it keeps the group alive past destroy_process_group, so gloo's
        # worker threads outlive it; one still releasing its last work item when the interpreter
        # finalizes aborts the process ("terminate called without an active exception", exit -6)
        # after a finished run. Seen with torch 2.11 and 2.14.
        importlib.import_module("torch._dynamo")
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, device


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s obj on every rank (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def check_same_config(identity: dict) -> None:
    """Raise on every rank if the ranks were launched with different configurations."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        bad = [r for r, d in enumerate(digests) if d != digests[0]]
        raise ValueError(f"ranks disagree on the training configuration (ranks {bad} differ from rank 0); "
                         "launch every rank with the same options")


def barrier() -> None:
    """Wait for every rank (no-op when not distributed). Used at the normal end of a run only: an
    error path must not wait for ranks that may never arrive."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
