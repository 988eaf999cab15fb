"""The progressive-growing schedule (official TrainingSchedule, DESIGN §2).

lod = log2(res_max) - log2(res_initial) - phase_idx - max(phase_kimg - stable_kimg, 0) / fade_kimg, >= 0.
The current resolution is 2**(log2(res_max) - floor(lod)): it switches up as soon as a fade starts,
and alpha = 1 - frac(lod) is the weight of the new block during that fade.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# Official 1-GPU presets (config.py), resolution -> minibatch / learning rate.
PAPER_MINIBATCH = {4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4, 1024: 4}
PAPER_LRATE = {1024: 0.0015}


@dataclass(frozen=True)
class Phase:
    lod: float
    res_log2: int
    alpha: float
    minibatch: int
    lrate: float

    @property
    def resolution(self) -> int:
        return 2 ** self.res_log2

    @property
    def lod_bounds(self) -> tuple[int, int]:
        """(floor(lod), ceil(lod)): the optimizer state is reset when either changes."""
        return math.floor(self.lod), math.ceil(self.lod)


@dataclass
class Schedule:
    resolution: int
    initial_resolution: int = 4
    stable_kimg: float = 600.0
    fade_kimg: float = 600.0
    minibatch: dict[int, int] | None = None
    minibatch_base: int = 16
    lrate: dict[int, float] | None = None
    lrate_base: float = 0.001
    world_size: int = 1
    max_minibatch_per_gpu: dict[int, int] | None = None  # official: caps the global batch at cap * GPUs

    def lod_at(self, kimg: float) -> float:
        phase_dur = self.stable_kimg + self.fade_kimg
        phase_idx = int(math.floor(kimg / phase_dur)) if phase_dur > 0 else 0
        phase_kimg = kimg - phase_idx * phase_dur
        lod = math.log2(self.resolution) - math.floor(math.log2(self.initial_resolution)) - phase_idx
        if self.fade_kimg > 0:
            lod -= max(phase_kimg - self.stable_kimg, 0.0) / self.fade_kimg
        return max(lod, 0.0)

    def at(self, kimg: float) -> Phase:
        lod = self.lod_at(kimg)
        res_log2 = int(math.log2(self.resolution)) - int(math.floor(lod))
        res = 2 ** res_log2
        alpha = 1.0 - (lod - math.floor(lod))
        mb = (self.minibatch or PAPER_MINIBATCH).get(res, self.minibatch_base)
        cap = (self.max_minibatch_per_gpu or {}).get(res)
        if cap is not None:
            mb = min(mb, cap * self.world_size)
        mb -= mb % self.world_size  # the official code rounds down to a multiple of the GPU count
        if mb <= 0:
            raise ValueError(f"minibatch at {res}px is smaller than the world size {self.world_size}")
        lr = (self.lrate or PAPER_LRATE).get(res, self.lrate_base)
        return Phase(lod=lod, res_log2=res_log2, alpha=alpha, minibatch=mb, lrate=lr)

    def total_kimg_to_full(self) -> float:
        """kimg at which the last fade ends (lod reaches 0)."""
        steps = int(math.log2(self.resolution)) - int(math.floor(math.log2(self.initial_resolution)))
        return steps * (self.stable_kimg + self.fade_kimg)
