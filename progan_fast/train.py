"""python -m progan_fast.train — train a PGGAN (DESIGN §2) on FashionMNIST or your own images.

With no arguments it trains on FashionMNIST (the full 60k split when Debian's dataset-fashion-mnist is
installed, else the 10k split bundled in the package), 28x28 padded to 32x32: the paper's networks and
schedule on a GPU, a narrow 15-minute preset on a CPU. Ctrl-C saves a checkpoint; --resume continues
exactly where it stopped, mid-fade included.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import torch

from . import ops
from .training.checkpoint import LATEST, load_checkpoint
from .training.config import PRESETS, RES_DICT_KEYS, TrainConfig, check_resume_compatible, parse_res_dict
from .utils.devices import pick_device

EPILOG = """examples:
  python -m progan_fast.train --amp                     # FashionMNIST, preset picked for this machine
  python -m progan_fast.train --data imgs/ --resolution 128 --mirror --amp
  python -m progan_fast.train --resume runs/00000-fashion-mnist-32
  python -m progan_fast.train --amp --cond                          # class-conditional (docs/conditional.md)
  torchrun --nproc_per_node=8 -m progan_fast.train --data imgs/ --amp     (multi-GPU: see README)
"""


def build_parser() -> argparse.ArgumentParser:
    S = argparse.SUPPRESS  # defaults live in TrainConfig; SUPPRESS tells us what the user really gave
    p = argparse.ArgumentParser(prog="python -m progan_fast.train", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=S)
    d = p.add_argument_group("data")
    d.add_argument("--data", help="dataset: 'fashion-mnist' (default), a dataset directory made by "
                                  "`python -m progan_fast.dataset create` (fastest), a folder of images, a .npy/.npz "
                                  "array (uint8, key 'images'), or a folder of MNIST-style IDX files")
    d.add_argument("--resolution", type=int, help="training resolution (power of two); default: the data's")
    d.add_argument("--mirror", action="store_true", help="mirror augment: horizontal flips with p=0.5")
    m = p.add_argument_group("networks")
    m.add_argument("--preset", choices=["auto", "paper", "cpu"],
                   help="'paper': official networks and 600+600 kimg schedule; 'cpu': narrow, ~15 min to 32px "
                        "on 2 cores; 'auto' (default): paper on CUDA, cpu otherwise")
    m.add_argument("--fmap-base", type=int, help="feature maps: nf(s) = min(fmap_base / 2**s, fmap_max)")
    m.add_argument("--fmap-max", type=int)
    m.add_argument("--latent-size", type=int, help="default: nf(0)")
    m.add_argument("--fused-scale", action="store_true", help="official strided 4x4 form of up/down convs")
    c = p.add_argument_group("class-conditional (docs/conditional.md)")
    c.add_argument("--cond", action="store_true", help="condition G and D on the dataset's class labels")
    c.add_argument("--cond-head", choices=["acgan", "projection"],
                   help="D's conditioning: 'projection' (default; measured, docs/conditional.md) or 'acgan' "
                        "auxiliary classifier (the official code's)")
    c.add_argument("--cond-weight", type=float, metavar="W", help="AC-GAN label-loss weight (default 1.0, official)")
    c.add_argument("--label-embed-size", type=int, metavar="E", help="width of G's learned label embedding (default: latent size)")
    t = p.add_argument_group("schedule and optimization")
    t.add_argument("--stable-kimg", type=float, help="kimg at each resolution before its successor fades in")
    t.add_argument("--fade-kimg", type=float, help="kimg of each fade-in")
    t.add_argument("--total-kimg", type=float, help="default: through the last fade + one stable phase")
    t.add_argument("--minibatch", help="global minibatch per resolution, e.g. '4:128,8:128,16:128,32:64'")
    t.add_argument("--max-minibatch-per-gpu", help="cap per rank, e.g. '256:16,512:8,1024:4' (global batch = "
                                                  "min(minibatch, cap x ranks))")
    t.add_argument("--lr", dest="lrate_base", type=float, help="Adam learning rate (default 0.001)")
    t.add_argument("--lrate", help="per-resolution learning rates, e.g. '1024:0.0015'")
    t.add_argument("--ema-beta", type=float, help="Gs = lerp(G, Gs, beta) after every step (default 0.999)")
    t.add_argument("--seed", type=int, help="seed for weights, latents and data order (default 0)")
    x = p.add_argument_group("precision and hardware")
    x.add_argument("--amp", action="store_true", help="mixed precision (autocast; bf16 unless --amp-dtype fp16)")
    x.add_argument("--amp-dtype", choices=["bf16", "fp16"], help="fp16 adds dynamic loss scaling (CUDA only)")
    x.add_argument("--device", help="'auto' (default), 'cpu', 'cuda', 'cuda:N'")
    x.add_argument("--backend", choices=["auto", "ref", "triton", "cuda"],
                   help="operator backend (default auto: on CUDA, per op, the backend the committed bench results favour for this GPU architecture, progan_fast/ops/auto_backends.json; the reference elsewhere)")
    x.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction,
                   help="capture each phase's iteration (D step + penalty, G step, EMA) in a CUDA graph and replay "
                        "it at <= --cuda-graph-max-res: the eager step is launch-bound even at 256 px (measured on "
                        "an H100, img/s of the graphed over the eager step: 9.8x at 4 px, 1.6x at 16 px, 1.5x at "
                        "64 px, 3.2x at 256 px). Default: on when training on one CUDA device; --no-cuda-graph "
                        "turns it off (also on --resume)")
    x.add_argument("--cuda-graph-max-res", type=int,
                   help="highest resolution whose iteration --cuda-graph captures (default 256, the largest "
                        "measured; above it the step runs eagerly; the current phase's graphs hold their own "
                        "memory pool, freed when the run moves to the next resolution)")
    x.add_argument("--loader", choices=["auto", "torch", "dali"],
                   help="data loader: 'dali' (NVIDIA DALI; GPU JPEG decode), 'torch', or 'auto' (default: dali "
                        "when installed and on CUDA)")
    o = p.add_argument_group("output")
    o.add_argument("--outdir", default="runs", help="runs are created here as NNNNN-<data>-<res> (default runs/)")
    o.add_argument("--run-dir", help="exact run directory (must not already hold a run)")
    o.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    o.add_argument("--tick-kimg", type=float, help="log, sample grid and checkpoint every this many kimg")
    o.add_argument("--snapshot-ticks", type=int, help="keep a numbered snapshot every N ticks (default 10)")
    o.add_argument("--grid-size", type=int, help="images in each sample grid (default 64)")
    o.add_argument("--tensorboard", action="store_true", help="also log scalars to RUN_DIR/tb")
    o.add_argument("--metrics", help="score Gs during training, e.g. 'swd,fid' (see python -m progan_fast.metrics); "
                                     "results go to log.jsonl (and tensorboard)")
    o.add_argument("--metrics-kimg", type=float,
                   help="evaluate at the first tick after every N kimg (default: every tick)")
    o.add_argument("--metrics-num", type=int, help="images per evaluation (default 1000)")
    o.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def _fail(msg: str) -> "NoReturn":  # noqa: F821
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def _given_to_config(args: dict) -> dict:
    given = {k: v for k, v in args.items() if k not in ("outdir", "run_dir", "resume", "progress")}
    for key, cast in RES_DICT_KEYS.items():
        if key in given:
            given[key] = parse_res_dict(given[key], cast)
    return given


def resolve_config(given: dict, device: torch.device) -> TrainConfig:
    """Defaults <- preset <- explicit options."""
    preset = given.get("preset", "auto")
    if preset == "auto":
        preset = "paper" if device.type == "cuda" else "cpu"
    cfg = TrainConfig.from_json({**TrainConfig().to_json(), **PRESETS[preset], "preset": preset})
    for k, v in given.items():
        if k != "preset":
            setattr(cfg, k, v)
    _check_precision_device(cfg, device)
    cfg.device = str(device)
    cfg.validate()
    return cfg


def _check_precision_device(cfg: TrainConfig, device: torch.device) -> None:
    """fp16 mixed precision uses dynamic loss scaling, which runs on CUDA only (new runs and resumes)."""
    if cfg.amp and cfg.amp_dtype == "fp16" and device.type != "cuda":
        raise ValueError("--amp-dtype fp16 needs a CUDA device (dynamic loss scaling on GPU); use --amp-dtype bf16 on CPU")
    if cfg.cuda_graph and device.type != "cuda":
        raise ValueError("--cuda-graph needs a CUDA device")
    if cfg.cuda_graph and cfg.world_size > 1:
        raise ValueError("--cuda-graph is single-GPU only for now (the gradient all-reduce is not captured)")
    if cfg.backend in ("triton", "cuda"):
        from .ops import _backend
        if device.type != "cuda" and not (cfg.backend == "triton" and _backend.triton_interpret()):
            raise ValueError(f"--backend {cfg.backend} needs a CUDA device (here: {device}); use --backend auto")
        if not _backend._ensure_loaded(cfg.backend):
            raise ValueError(f"--backend {cfg.backend} is unavailable: {_backend.backend_error(cfg.backend)}")


def load_dataset(cfg: TrainConfig):
    from .data import load_dataset as _load  # fashion-mnist, dataset dirs, image folders, arrays, IDX
    dataset, desc = _load(cfg.data, cfg.resolution)
    if cfg.resolution is None:
        cfg.resolution = dataset.resolution
    cfg.num_channels = dataset.num_channels
    return dataset, desc


def _check_cond(cfg: TrainConfig, dataset, desc: str, given: dict) -> None:
    """--cond: the class count comes from the labels (one clear error without them); cond options
    without --cond are refused rather than silently ignored."""
    from .training.conditional import dataset_num_classes
    if cfg.cond:
        cfg.num_classes = dataset_num_classes(dataset, desc)
    else:
        stray = [k for k in ("cond_head", "cond_weight", "label_embed_size") if k in given]
        if stray:
            raise ValueError(f"--{stray[0].replace('_', '-')} needs --cond")


def new_run_dir(outdir: str, name: str) -> Path:
    root = Path(outdir)
    root.mkdir(parents=True, exist_ok=True)
    ids = [int(m.group(1)) for p in root.iterdir() if (m := re.match(r"^(\d+)-", p.name))]
    run = root / f"{max(ids, default=-1) + 1:05d}-{name}"
    run.mkdir()
    return run


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    try:
        return _main(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, TypeError) as exc:
        _fail(str(exc))


def _main(args: dict) -> int:
    from .training import distributed
    try:
        return _train(args, distributed)
    finally:
        distributed.shutdown()


def _train(args: dict, distributed) -> int:
    from .training.trainer import Trainer
    given = _given_to_config(args)
    rank, world, dist_device = distributed.init_from_env(given.get("device", "auto"))
    if world > 1:
        given["world_size"] = world
        given["device"] = str(dist_device)
    ckpt = None
    if "resume" in args:
        run_dir = Path(args["resume"])
        if rank == 0 and not (run_dir / LATEST).is_file():
            raise FileNotFoundError(f"--resume {run_dir}: no {LATEST} there (is it a progan_fast run directory?)")
        ckpt = distributed.broadcast_object(load_checkpoint(run_dir) if rank == 0 else None)
        saved = TrainConfig.from_json(ckpt["config"])
        check_resume_compatible(saved, given)  # compares the run-defining keys only
        device = pick_device(given.get("device", "auto"))
        cfg = saved
        saved.world_size = world
        for k in ("backend", "cuda_graph", "cuda_graph_max_res", "loader", "tensorboard", "tick_kimg", "total_kimg", "snapshot_ticks",
                  "metrics", "metrics_kimg", "metrics_num"):
            if k in given:
                setattr(cfg, k, given[k])
        _check_precision_device(cfg, device)
        cfg.device = str(device)
    else:
        device = pick_device(given.get("device", "auto"))
        cfg = resolve_config(given, device)
    dataset, desc = load_dataset(cfg)
    _check_cond(cfg, dataset, desc, given)
    distributed.check_same_config(cfg.identity())
    if ckpt is None and rank != 0:
        run_dir = None
    elif ckpt is None:
        if "run_dir" in args:
            run_dir = Path(args["run_dir"])
            if run_dir.exists() and any(run_dir.iterdir()):
                raise ValueError(f"--run-dir {run_dir} is not empty; use --resume {run_dir} to continue it")
            run_dir.mkdir(parents=True, exist_ok=True)
        else:
            name = "fashion-mnist" if cfg.data.startswith("f") and not os.path.exists(cfg.data) else Path(cfg.data).stem
            run_dir = new_run_dir(args.get("outdir", "runs"), f"{name}-{cfg.resolution}")
        with open(run_dir / "config.json", "w") as f:
            json.dump({**cfg.to_json(), "dataset_description": desc}, f, indent=2)
    run_dir = Path(distributed.broadcast_object(str(run_dir) if rank == 0 else None))
    trainer = Trainer(cfg, dataset, run_dir, rank=rank, device=device, progress=args.get("progress", True))
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
    if rank == 0:
        print(f"progan_fast: {desc}; {cfg.resolution}px x{cfg.num_channels}; preset {cfg.preset}; device {device}"
              f"{f' x{world} ranks' if world > 1 else ''}; amp {cfg.amp_dtype if cfg.amp else 'off'}; "
              f"ops {ops.describe(device)}; run dir {run_dir}",
              file=sys.stderr)
    status = trainer.run()
    if rank == 0:
        print(f"progan_fast: {status} at {trainer.cur_nimg / 1000:.3f} kimg; outputs in {run_dir}", file=sys.stderr)
    distributed.barrier()  # no rank tears the process group down while rank 0 still writes its checkpoint
    return 130 if status == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main())
