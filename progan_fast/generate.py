"""python -m progan_fast.generate — sample images from a checkpoint's Gs (the EMA generator).

Writes N uint8 images, shape N x H x W x C, under the key `images` of an .npz (plus the latents under
`latents`), at the resolution and fade the checkpoint was trained to; `--grid` also writes a PNG mosaic.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from .training.checkpoint import load_checkpoint
from .training.config import TrainConfig
from .utils.images import grid, save_png, to_uint8_nhwc


def load_generator(ckpt_path, device="cpu"):
    """(Gs, res_log2, alpha) from a checkpoint file or run directory."""
    from .models import Generator
    ckpt = load_checkpoint(ckpt_path)
    cfg = TrainConfig.from_json(ckpt["config"])
    G = Generator(cfg.resolution, cfg.num_channels, fmap_base=cfg.fmap_base, fmap_decay=cfg.fmap_decay,
                  fmap_max=cfg.fmap_max, latent_size=cfg.latent_size, fused_scale=cfg.fused_scale)
    try:
        G.load_state_dict(ckpt["step"]["Gs"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint does not match its recorded architecture: {exc}") from None
    phase = ckpt["phase"]
    return G.to(device).eval(), phase["res_log2"], phase["alpha"]


@torch.no_grad()
def generate(G, n: int, res_log2: int, alpha: float, *, seed: int = 0, batch: int = 64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.latent_size, generator=g)
    out = [to_uint8_nhwc(G(z[i:i + batch].to(device), res_log2, alpha)) for i in range(0, n, batch)]
    return np.concatenate(out), z.numpy()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m progan_fast.generate", description=__doc__)
    p.add_argument("--ckpt", required=True, help="checkpoint file, or a run directory (its latest checkpoint)")
    p.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--out", required=True, help="output .npz (key 'images': uint8 N x H x W x C)")
    p.add_argument("--seed", type=int, default=0, help="latent seed (default 0)")
    p.add_argument("--grid", help="also write a PNG grid of the images here")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    args = p.parse_args(argv)
    try:
        if args.n < 1:
            raise ValueError(f"--n must be >= 1, got {args.n}")
        if not args.out.endswith(".npz"):
            raise ValueError(f"--out must end in .npz, got {args.out}")
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if args.device == "auto" else args.device))
        G, res_log2, alpha = load_generator(args.ckpt, device)
        images, latents = generate(G, args.n, res_log2, alpha, seed=args.seed, device=device)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.out, images=images, latents=latents)
        if args.grid:
            save_png(grid(images), args.grid)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(images)} images {images.shape[1:]} to {args.out}" + (f" and {args.grid}" if args.grid else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
