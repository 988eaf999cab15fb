"""The training loop: schedule -> data -> TrainStep, with ticks (log, grids, checkpoints) and exact resume.

Everything random in training draws from seeded generators that are checkpointed (the step's
latent/mix generator and the data stream's state), so a resumed run continues bit-for-bit where an
uninterrupted one would be. Only rank 0 writes files; DDP (torchrun) slots in through
`world_size`/`rank` (global minibatch split across ranks, per-rank seeds).
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch

from .. import ops
from ..data import MultiResolutionDataset
from ..data.dali import make_batch_stream
from ..models import Discriminator, Generator, resolution_log2, use_channels_last
from ..utils.images import grid, save_png, to_uint8_nhwc
from .checkpoint import FORMAT_VERSION, LATEST, save_atomic, serialize
from .conditional import cond_kwargs, dataset_num_classes, grid_labels
from .config import TrainConfig
from .schedule import Schedule
from .step import AMP_DTYPES, TrainStep, default_cuda_graph, unwrap


def _arch_kwargs(cfg: TrainConfig) -> dict:
    return dict(fmap_base=cfg.fmap_base, fmap_decay=cfg.fmap_decay, fmap_max=cfg.fmap_max, fused_scale=cfg.fused_scale)


def build_generator(cfg: TrainConfig) -> Generator:
    """G as the run's config defines it (also what generate.py loads a checkpoint's Gs into)."""
    return Generator(cfg.resolution, cfg.num_channels, latent_size=cfg.latent_size, **_arch_kwargs(cfg),
                     **cond_kwargs(cfg)[0])


def build_models(cfg: TrainConfig):
    G = build_generator(cfg)  # G first: the initial weights follow the global RNG in this order
    D = Discriminator(cfg.resolution, cfg.num_channels, mbstd_group_size=cfg.mbstd_group_size, **_arch_kwargs(cfg),
                      **cond_kwargs(cfg)[1])
    return G, D


def build_schedule(cfg: TrainConfig) -> Schedule:
    return Schedule(resolution=cfg.resolution, initial_resolution=cfg.initial_resolution,
                    stable_kimg=cfg.stable_kimg, fade_kimg=cfg.fade_kimg, minibatch=cfg.minibatch,
                    lrate=cfg.lrate, lrate_base=cfg.lrate_base, world_size=cfg.world_size,
                    max_minibatch_per_gpu=cfg.max_minibatch_per_gpu)


def total_kimg(cfg: TrainConfig, schedule: Schedule) -> float:
    """--total-kimg, or by default through the last fade plus one stable phase."""
    if cfg.total_kimg is not None:
        return cfg.total_kimg
    return schedule.total_kimg_to_full() + cfg.stable_kimg


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _StopFlag:
    """SIGINT/SIGTERM set a flag the loop checks between steps (so the saved state is consistent);
    a second Ctrl-C aborts at once."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def configure_cudnn(device) -> None:
    """cuDNN autotuning on CUDA (`cudnn.benchmark`): shapes are static within a phase, so each conv
    is timed once and the fastest algorithm is kept, instead of a heuristic pick (which can be far
    off for bf16 and for the penalty's double-backward convs). The benchmarks set it the same way."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True


class Trainer:
    def __init__(self, cfg: TrainConfig, dataset: MultiResolutionDataset, run_dir: str | os.PathLike, *,
                 rank: int = 0, device: torch.device | None = None, progress: bool = True, log=None):
        self.cfg, self.dataset, self.run_dir = cfg, dataset, Path(run_dir)
        self.rank, self.is_main = rank, rank == 0
        self.device = device or torch.device("cpu")
        self.log = (log or _stderr) if self.is_main else (lambda *a, **k: None)
        self.progress = progress and self.is_main
        if cfg.metrics:
            from ..metrics.evaluate import check_training_metrics
            check_training_metrics(cfg.metrics, dataset.num_channels)
        ops.set_backend(cfg.backend)
        configure_cudnn(self.device)
        if cfg.cond and (k := dataset_num_classes(dataset)) != cfg.num_classes:
            raise ValueError(f"--cond: the dataset has {k} classes but the run was set up for {cfg.num_classes}")
        torch.manual_seed(cfg.seed)  # initial weights: identical on every rank
        self.G, self.D = build_models(cfg)
        channels_last = cfg.channels_last if cfg.channels_last is not None else self.device.type == "cuda"
        self.G.to(self.device)
        self.D.to(self.device)
        use_channels_last(self.G, self.D, enabled=channels_last)
        amp_dtype = AMP_DTYPES[cfg.amp_dtype] if cfg.amp else None
        gen = torch.Generator(self.device).manual_seed(cfg.seed * 1000 + 1)  # same on every rank: see TrainStep
        cuda_graph = cfg.cuda_graph if cfg.cuda_graph is not None else default_cuda_graph(self.device, cfg.world_size)
        self.step = TrainStep(self.G, self.D, lr=cfg.lrate_base, amp_dtype=amp_dtype, ema_beta=cfg.ema_beta,
                              channels_last=channels_last, device=self.device, generator=gen, rank=rank,
                              world_size=cfg.world_size, cuda_graph=cuda_graph,
                              graph_max_res_log2=resolution_log2(cfg.cuda_graph_max_res), cond_weight=cfg.cond_weight)
        self.stream = make_batch_stream(cfg.loader, dataset, seed=cfg.seed, rank=rank,
                                        world_size=cfg.world_size, mirror=cfg.mirror, device=self.device)
        self.schedule = build_schedule(cfg)
        self.total_nimg = int(round(total_kimg(cfg, self.schedule) * 1000))
        self.cur_nimg = 0
        self.tick = 0
        self.tick_start_nimg = 0
        self.lod_bounds = None
        self.elapsed = 0.0  # training seconds over all sessions of this run
        g = torch.Generator().manual_seed(cfg.seed + 12345)
        self.grid_latents = torch.randn(cfg.grid_size, self.G.latent_size, generator=g)
        self.grid_labels = grid_labels(cfg.grid_size, cfg.num_classes) if cfg.cond else None
        self._tb = None

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"format": "progan_fast", "format_version": FORMAT_VERSION, "config": self.cfg.to_json(),
                "step": self.step.state_dict(), "stream": self.stream.state_dict(), "cur_nimg": self.cur_nimg,
                "tick": self.tick, "tick_start_nimg": self.tick_start_nimg,
                "lod_bounds": self.lod_bounds, "elapsed": self.elapsed,
                "phase": self._phase_info(self.schedule.at(self.cur_nimg / 1000.0))}

    def load_state_dict(self, state: dict) -> None:
        self.step.load_state_dict(state["step"])
        self.stream.load_state_dict(state["stream"])
        self.cur_nimg, self.tick = state["cur_nimg"], state["tick"]
        self.tick_start_nimg = state["tick_start_nimg"]
        self.lod_bounds = tuple(state["lod_bounds"]) if state["lod_bounds"] is not None else None
        self.elapsed = state["elapsed"]

    @staticmethod
    def _phase_info(phase) -> dict:
        return {"lod": phase.lod, "res_log2": phase.res_log2, "alpha": phase.alpha, "minibatch": phase.minibatch}

    def save_checkpoint(self, snapshot: bool = False) -> None:
        if not self.is_main:
            return
        state = self.state_dict()
        if snapshot:  # serialized once, written twice
            state = serialize(state)
        save_atomic(state, self.run_dir / LATEST)
        if snapshot:
            save_atomic(state, self.run_dir / f"network-snapshot-{self.cur_nimg // 1000:06d}.pt")

    # -- outputs -------------------------------------------------------------------------------------
    @torch.no_grad()
    def save_grid(self, phase) -> None:
        if not self.is_main:
            return
        z = self.grid_latents.to(self.device)
        y = [] if self.grid_labels is None else [self.grid_labels.to(self.device)]
        imgs = torch.cat([self.step.Gs(z[i:i + 64], phase.res_log2, phase.alpha, *[t[i:i + 64] for t in y])
                          for i in range(0, len(z), 64)])
        mosaic = grid(to_uint8_nhwc(imgs), ncols=self.cfg.num_classes if y else None, size=self.cfg.resolution)
        save_png(mosaic, self.run_dir / f"fakes{self.cur_nimg // 1000:06d}.png")

    def save_reals_grid(self) -> None:
        if self.is_main and not (self.run_dir / "reals.png").exists():
            imgs = self.dataset.level(self.cfg.resolution)[: self.cfg.grid_size]
            save_png(grid(imgs.permute(0, 2, 3, 1).numpy()), self.run_dir / "reals.png")

    def _log_tick(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.cfg.tensorboard:
            if self._tb is None:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                    self._tb = SummaryWriter(str(self.run_dir / "tb"))
                except ImportError:
                    self.log("tensorboard is not installed; `pip install tensorboard` to log scalars there")
                    self.cfg.tensorboard = False
                    return
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "kimg":
                    self._tb.add_scalar(k, v, global_step=int(record["kimg"] * 1000))
            self._tb.flush()

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, stop_at_nimg: int | None = None) -> str:
        """Train until total_kimg (or `stop_at_nimg`, for tests). Returns 'done', 'stopped' or 'interrupted'."""
        cfg = self.cfg
        self.save_reals_grid()
        stop_nimg = self.total_nimg if stop_at_nimg is None else min(stop_at_nimg, self.total_nimg)
        tick_nimg = int(cfg.tick_kimg * 1000)
        sums: dict[str, torch.Tensor] = {}
        nsteps = 0
        t_tick = time.time()
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=round(self.total_nimg / 1000, 1), initial=round(self.cur_nimg / 1000, 1), unit="kimg",
                       dynamic_ncols=True, mininterval=1.0, file=sys.stderr,
                       bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} kimg [{elapsed}<{remaining}{postfix}]")
        status = "done"
        with _StopFlag() as stop:
            while self.cur_nimg < stop_nimg:
                if self._agree(stop.requested):
                    status = "interrupted"
                    break
                phase = self.schedule.at(self.cur_nimg / 1000.0)
                if phase.lod_bounds != self.lod_bounds:
                    if self.lod_bounds is not None:
                        self.step.reset_optimizers()
                    self.lod_bounds = phase.lod_bounds
                self.step.set_lr(phase.lrate)
                reals, labels = self.stream.next_batch(phase.resolution, phase.minibatch // cfg.world_size)
                if phase.alpha < 1.0:
                    reals = ops.fade_reals(reals, phase.alpha)
                t0 = time.time()
                stats = self.step(reals, phase.res_log2, phase.alpha, labels if cfg.cond else None)
                self.elapsed += time.time() - t0
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0) + v
                nsteps += 1
                self.cur_nimg += phase.minibatch
                if bar is not None:
                    bar.update(phase.minibatch / 1000)
                done = self.cur_nimg >= stop_nimg
                if self.cur_nimg >= self.tick_start_nimg + tick_nimg or done:
                    if self.device.type == "cuda":  # steps never wait for the GPU; the tick does, once
                        t_sync = time.time()
                        torch.cuda.synchronize(self.device)
                        self.elapsed += time.time() - t_sync
                    dt = time.time() - t_tick
                    record = self._tick_record(phase, sums, nsteps, dt)
                    record.update(self._tick_metrics(phase))
                    if bar is not None:
                        bar.set_postfix_str(f"lod {phase.lod:.2f} {phase.resolution}px {record['img_per_s']:.0f} img/s "
                                            f"D {record['d_loss']:.3f} G {record['g_loss']:.3f}", refresh=False)
                    self._log_tick(record)
                    self.tick += 1
                    self.tick_start_nimg = self.cur_nimg
                    self.save_grid(phase)
                    self.save_checkpoint(snapshot=self.tick % cfg.snapshot_ticks == 0 or self.cur_nimg >= self.total_nimg)
                    sums, nsteps, t_tick = {}, 0, time.time()
        if bar is not None:
            bar.close()
        if status == "interrupted":
            self.save_checkpoint()
            self.log(f"interrupted at {self.cur_nimg / 1000:.3f} kimg; checkpoint saved. Resume with "
                     f"`python -m progan_fast.train --resume {self.run_dir}`")
        elif self.cur_nimg < self.total_nimg:
            status = "stopped"
            self.save_checkpoint()
        return status

    def _tick_metrics(self, phase) -> dict:
        """--metrics: scores of Gs (rank 0) at the first tick past each --metrics-kimg boundary and at the end."""
        cfg = self.cfg
        if not cfg.metrics or not self.is_main:
            return {}
        every = int(round((cfg.metrics_kimg or cfg.tick_kimg) * 1000))
        if self.cur_nimg // every == self.tick_start_nimg // every and self.cur_nimg < self.total_nimg:
            return {}
        from ..metrics.evaluate import check_metrics, evaluate
        names = [m for m in check_metrics(cfg.metrics) if m != "swd" or phase.resolution >= 8]  # SWD: 7x7 patches
        if not names:
            return {}
        t0 = time.time()
        scores = evaluate(self.step.Gs, self.dataset, names, num_images=cfg.metrics_num, device=self.device,
                          seed=cfg.seed, res_log2=phase.res_log2, alpha=phase.alpha)
        skip = ("num_fakes", "num_reals", "resolution", "alpha")
        return {**{k: v for k, v in scores.items() if k not in skip}, "metrics_s": round(time.time() - t0, 2)}

    def _agree(self, flag: bool) -> bool:
        """True on every rank if any rank's flag is set (so all ranks stop at the same step)."""
        if self.cfg.world_size == 1:
            return flag
        import torch.distributed as dist
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _tick_record(self, phase, sums, nsteps, dt) -> dict:
        nimg = self.cur_nimg - self.tick_start_nimg
        means = {k: float(v) / max(nsteps, 1) for k, v in sums.items()}
        return {"tick": self.tick, "kimg": round(self.cur_nimg / 1000, 3), "lod": round(phase.lod, 4),
                "resolution": phase.resolution, "alpha": round(phase.alpha, 4), "minibatch": phase.minibatch,
                "lr": phase.lrate, "img_per_s": nimg / max(dt, 1e-9), "sec_per_kimg": dt / max(nimg / 1000, 1e-9),
                "skipped_steps": self.step.skipped_steps, "time_s": round(self.elapsed, 2),
                **{k: round(v, 5) for k, v in means.items()}}
