"""BatchStream: deterministic, shardable, exactly resumable minibatches from a MultiResolutionDataset.

The plain-PyTorch data path (no worker processes: the data already sits in memory as uint8 levels,
so a batch is one index_select plus a host->device copy of uint8, converted to float on the device).

Determinism without hidden state: everything random is a pure function of (seed, epoch).
  * epoch e's order is a permutation of all N samples drawn from numpy's PCG64 seeded with
    SeedSequence(seed, spawn_key=(0, e));
  * mirror flips are one Bernoulli(0.5) draw per position of that permutation, from its own stream,
    SeedSequence(seed, spawn_key=(1, e));
  * rank r of W takes positions r, r+W, r+2W, ... of the first W*floor(N/W) positions, so the ranks
    hold disjoint shards of equal size (the N mod W tail is dropped for the epoch);
  * a batch never straddles epochs: when fewer than batch_size samples remain in this rank's shard,
    they are skipped and the next epoch begins. All ranks see the same batch sizes, so they stay in
    lockstep and produce the same number of batches.
The whole position is therefore (seed, epoch, cursor), identical on every rank. A checkpoint written by
rank 0 resumes every rank exactly, and changing the batch size or resolution between calls is fine.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from .multires import MultiResolutionDataset

__all__ = ["BatchStream"]

_STATE_VERSION = 1


def _rng(seed: int, stream: int, epoch: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(stream, epoch))))


class BatchStream:
    """Infinite stream of (images, labels) batches; see the module docstring for the guarantees.

    dataset: a MultiResolutionDataset. seed: non-negative int. rank / world_size: this process's shard
    (torch.distributed rank and world size under DDP). mirror: horizontal flip with p = 0.5.
    device, channels_last, dtype: where and how the float images are returned.
    """

    def __init__(self, dataset: MultiResolutionDataset, *, seed: int, rank: int = 0, world_size: int = 1,
                 mirror: bool = False, device="cpu", channels_last: bool = False,
                 dtype: torch.dtype = torch.float32):
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if len(dataset) < world_size:
            raise ValueError(f"{len(dataset)} samples cannot be split over {world_size} ranks")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be floating point, got {dtype}")
        self.dataset = dataset
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.mirror = bool(mirror)
        self.device = torch.device(device)
        self.channels_last = bool(channels_last)
        self.dtype = dtype
        self.samples_per_epoch = len(dataset) // self.world_size  # per rank
        self.epoch = 0
        self.cursor = 0  # position inside this rank's shard of the current epoch
        self._plan_epoch = None
        self._plan = None

    # --------------------------------------------------------------------------------- plan

    def _epoch_plan(self, epoch: int):
        """(sample indices, flip flags or None) of this rank's shard of `epoch`, cached per epoch."""
        if self._plan_epoch != epoch:
            n, w = len(self.dataset), self.world_size
            perm = _rng(self.seed, 0, epoch).permutation(n)
            positions = np.arange(self.rank, self.samples_per_epoch * w, w)
            flips = None
            if self.mirror:
                flips = torch.from_numpy(_rng(self.seed, 1, epoch).random(n)[positions] < 0.5)
            self._plan = (torch.from_numpy(perm[positions].astype(np.int64)), flips)
            self._plan_epoch = epoch
        return self._plan

    def peek_indices(self, batch_size: int) -> torch.Tensor:
        """Sample indices the next next_batch(…, batch_size) will return, without advancing."""
        epoch, cursor = self._advance(batch_size)
        return self._epoch_plan(epoch)[0][cursor:cursor + batch_size].clone()

    def _advance(self, batch_size: int) -> tuple[int, int]:
        if not 1 <= batch_size <= self.samples_per_epoch:
            raise ValueError(f"batch_size must be in 1..{self.samples_per_epoch} (samples per rank per epoch), "
                             f"got {batch_size}")
        if self.cursor + batch_size > self.samples_per_epoch:
            return self.epoch + 1, 0
        return self.epoch, self.cursor

    # --------------------------------------------------------------------------------- batches

    def _take(self, res: int, batch_size: int):
        """Advance the plan by one batch: (the level's images, sample indices [B], flips [B] bool or None)."""
        level = self.dataset.level(res)
        self.epoch, cursor = self._advance(batch_size)
        indices, flips = self._epoch_plan(self.epoch)
        self.cursor = cursor + batch_size
        window = slice(cursor, cursor + batch_size)
        return level, indices[window], (None if flips is None else flips[window])

    def next_batch(self, res: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, C, res, res] in [-1, 1] (dtype, device, memory format as configured), labels int64 [B]."""
        level, idx, flips = self._take(res, batch_size)
        x = level.index_select(0, idx)
        if flips is not None:
            x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
        labels = self.dataset.labels.index_select(0, idx)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
            labels = labels.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            x, labels = x.to(self.device), labels.to(self.device)
        x = x.to(torch.float32).div_(127.5).sub_(1.0)
        if self.dtype != torch.float32:
            x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, labels

    # --------------------------------------------------------------------------------- resume

    def state_dict(self) -> dict:
        """The position, as plain ints (safe for torch.save / torch.load(weights_only=True) and JSON).

        The random streams need no saved state: they are functions of (seed, epoch).
        """
        return {"version": _STATE_VERSION, "seed": self.seed, "epoch": self.epoch, "cursor": self.cursor,
                "world_size": self.world_size, "num_samples": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        """Resume from state_dict(); exact when the dataset and world size are the same.

        The saved seed replaces the constructor's. A different world size keeps the epoch and the
        global number of samples consumed (cursor * world_size), which is sensible but not exact.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown BatchStream state version {state.get('version')!r}")
        if state["num_samples"] != len(self.dataset):
            raise ValueError(f"BatchStream state is for a dataset of {state['num_samples']} samples, this one "
                             f"has {len(self.dataset)}; resume with the same --data")
        cursor = int(state["cursor"])
        if state["world_size"] != self.world_size:
            warnings.warn(f"BatchStream: resuming a world_size={state['world_size']} stream with "
                          f"world_size={self.world_size}; the order continues from the same epoch but is "
                          f"not an exact continuation", stacklevel=2)
            cursor = min(cursor * int(state["world_size"]) // self.world_size, self.samples_per_epoch)
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.cursor = cursor
        self._plan_epoch = None
