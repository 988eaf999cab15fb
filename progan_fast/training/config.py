"""Training configuration: presets, parsing of per-resolution dicts, validation, resume checks."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from ..data.dali import LOADERS
from ..models import COND_HEADS, resolution_log2
from ..ops._backend import DEFAULT_IMPLS


# Per-resolution options ('4:128,8:64' on the command line, string keys in JSON) and their value type.
RES_DICT_KEYS = {"minibatch": int, "lrate": float, "max_minibatch_per_gpu": int}

# Keys that define the run; a resumed run must agree on all of them.
IDENTITY_KEYS = ("data", "resolution", "num_channels", "fmap_base", "fmap_decay", "fmap_max", "latent_size",
                 "fused_scale", "mbstd_group_size", "stable_kimg", "fade_kimg", "minibatch", "lrate",
                 "lrate_base", "amp", "amp_dtype", "mirror", "seed", "ema_beta", "initial_resolution")
# Class-conditional runs (docs/conditional.md); num_classes follows from the data.
IDENTITY_KEYS += ("cond", "cond_head", "cond_weight", "label_embed_size")
# world_size is not among them: a run may resume on any number of GPUs (the minibatch is global).

PRESETS = {
    # The paper's networks and schedule (official G_paper / D_paper, 600 + 600 kimg per resolution).
    "paper": dict(fmap_base=8192, fmap_max=512, latent_size=None, stable_kimg=600.0, fade_kimg=600.0,
                  minibatch=None, tick_kimg=20.0, grid_size=64),
    # Narrow networks and a short schedule: FashionMNIST 4 -> 32 px in ~10 min on a 2-core CPU (measured).
    # ema_beta 0.99: the official 0.999 assumes phases of thousands of steps; with ~1000 steps per
    # phase, Gs would still hold ~40% of a new block's random initial weights at the end of a fade.
    "cpu": dict(fmap_base=512, fmap_max=64, latent_size=64, stable_kimg=30.0, fade_kimg=30.0,
                minibatch={4: 32, 8: 32, 16: 32, 32: 32}, tick_kimg=10.0, grid_size=64, ema_beta=0.99),
}


@dataclass
class TrainConfig:
    data: str = "fashion-mnist"
    resolution: int | None = None  # None: the dataset's
    num_channels: int | None = None  # filled from the dataset
    preset: str = "auto"
    fmap_base: int = 8192
    fmap_decay: float = 1.0
    fmap_max: int = 512
    latent_size: int | None = None
    fused_scale: bool = False
    mbstd_group_size: int = 4
    cond: bool = False  # class-conditional G and D (labels from the dataset)
    cond_head: str = "projection"  # D's conditioning: 'projection' or 'acgan' (auxiliary classifier, official)
    cond_weight: float = 1.0  # AC-GAN label-loss weight (official cond_weight)
    label_embed_size: int | None = None  # G's label embedding width; None: latent_size
    num_classes: int = 0  # filled from the dataset's labels when cond
    initial_resolution: int = 4
    stable_kimg: float = 600.0
    fade_kimg: float = 600.0
    total_kimg: float | None = None  # None: through the last fade plus one stable phase
    minibatch: dict | None = None  # resolution -> global minibatch; None: the paper's
    lrate: dict | None = None
    max_minibatch_per_gpu: dict | None = None  # resolution -> per-rank cap (official presets)
    lrate_base: float = 0.001
    ema_beta: float = 0.999
    amp: bool = False
    amp_dtype: str = "bf16"
    mirror: bool = False
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"
    loader: str = "auto"  # data loader: torch | dali | auto (dali when installed and on CUDA)
    channels_last: bool | None = None  # None: on for CUDA
    cuda_graph: bool | None = None  # capture each phase's iteration in a CUDA graph; None: on for one CUDA device
    cuda_graph_max_res: int = 256  # ... at resolutions up to this one (faster at every size measured, 4-256 px; eager above)
    tick_kimg: float = 20.0
    snapshot_ticks: int = 10
    grid_size: int = 64
    tensorboard: bool = False
    metrics: str | None = None  # e.g. 'swd,fid': scored at tick boundaries (progan_fast.metrics.evaluate)
    metrics_kimg: float | None = None  # None: every tick
    metrics_num: int = 1000  # generated (and real) images per evaluation
    world_size: int = 1
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        for key in RES_DICT_KEYS:
            if d[key] is not None:
                d[key] = {str(k): v for k, v in d[key].items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        for key in RES_DICT_KEYS:
            if d.get(key) is not None:
                d[key] = {int(k): v for k, v in d[key].items()}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def identity(self) -> dict:
        d = self.to_json()
        return {k: d[k] for k in IDENTITY_KEYS}

    def validate(self) -> None:
        if self.resolution is not None:
            try:
                resolution_log2(self.resolution)
            except ValueError as exc:
                raise ValueError(f"--{exc}") from None
        try:
            resolution_log2(self.cuda_graph_max_res)
        except ValueError as exc:
            raise ValueError(f"--cuda-graph-max-res: {exc}") from None
        if self.amp_dtype not in ("bf16", "fp16"):
            raise ValueError(f"--amp-dtype must be bf16 or fp16, got {self.amp_dtype!r}")
        for name in ("stable_kimg", "fade_kimg", "tick_kimg", "lrate_base"):
            if getattr(self, name) < 0 or (name in ("tick_kimg", "lrate_base") and getattr(self, name) == 0):
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.total_kimg is not None and self.total_kimg <= 0:
            raise ValueError(f"--total-kimg must be positive, got {self.total_kimg}")
        if not 0.0 <= self.ema_beta < 1.0:
            raise ValueError(f"--ema-beta must lie in [0, 1), got {self.ema_beta}")
        for res, mb in (self.minibatch or {}).items():
            if mb < 1:
                raise ValueError(f"--minibatch: {res}px has minibatch {mb}; must be >= 1")
        if self.backend not in DEFAULT_IMPLS:  # igemm: eq_conv2d only, not a model backend
            raise ValueError(f"--backend must be auto, ref, triton or cuda, got {self.backend!r}")
        if self.cond_head not in COND_HEADS:
            raise ValueError(f"--cond-head must be acgan or projection, got {self.cond_head!r}")
        if self.cond_weight < 0 or (self.label_embed_size is not None and self.label_embed_size < 1):
            raise ValueError("--cond-weight must be >= 0 and --label-embed-size >= 1")
        if self.loader not in LOADERS:
            raise ValueError(f"--loader must be auto, torch or dali, got {self.loader!r}")
        if self.metrics:
            from ..metrics.evaluate import check_metrics
            check_metrics(self.metrics)
            if (self.metrics_kimg is not None and self.metrics_kimg <= 0) or self.metrics_num < 2:
                raise ValueError("--metrics-kimg must be positive and --metrics-num >= 2")
        if self.fmap_base < 1 or self.fmap_max < 1:
            raise ValueError("--fmap-base and --fmap-max must be >= 1")


def parse_res_dict(text: str, cast=int) -> dict:
    """'4:128,8:64' -> {4: 128, 8: 64}."""
    out = {}
    try:
        for item in text.split(","):
            if item.strip():
                k, v = item.split(":")
                out[int(k)] = cast(v)
    except ValueError:
        raise ValueError(f"expected RES:VALUE[,RES:VALUE...] like '4:128,8:64', got {text!r}") from None
    return out


def check_resume_compatible(saved: TrainConfig, given: dict) -> None:
    """Refuse to resume when an explicitly given option contradicts the saved run."""
    saved_d = saved.to_json()
    current = TrainConfig.from_json({**saved_d, **given}).to_json()
    diffs = [f"{k}: run has {json.dumps(saved_d[k])}, asked for {json.dumps(current[k])}"
             for k in IDENTITY_KEYS if saved_d[k] != current[k]]
    if diffs:
        raise ValueError("cannot resume a run with a different configuration (" + "; ".join(diffs) +
                         "); drop those options or start a new run")
