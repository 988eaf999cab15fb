"""python -m progan_fast.generate — sample images from a checkpoint's Gs (the EMA generator).

Writes uint8 images N x H x W x C under the key `images` of an .npz (with `latents`, `seeds` and, for
class-conditional models, `labels`), and/or a PNG grid, at the resolution and fade the checkpoint was
trained to; or a latent interpolation (slerp between seeds) as an animated GIF or a PNG strip.
See docs/generate.md.

Latents: `--seeds 0-63,100` gives one latent per seed (image i depends only on its seed: the same
seed always gives the same image, whatever else is asked); without --seeds, `--n` latents come from
one generator seeded with `--seed`.

Truncation trick (trades diversity for typicality):
  --truncation-resample T  BigGAN: redraw every latent entry with |z| > T (from the same seeded
                           generator) until all lie in [-T, T].
  --truncation-psi PSI     lerp toward the mean latent: w' = mean + PSI * (w - mean). PGGAN has no
                           mapping network, so "latent" here is G's actual input, w = pixel_norm(z)
                           (pixel_norm(concat(z, embed(y))) when conditional), and the mean is taken
                           over many z (per class when conditional). For an unconditional model that
                           mean is ~0, so PSI shrinks w toward the origin; w' is fed to G as is (G does
                           not normalize it again, which would undo the lerp), and G's first, linear
                           layer turns the shrink into a pull toward its bias-only "average" features.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import torch

from .training.checkpoint import load_checkpoint
from .training.config import TrainConfig
from .utils.devices import pick_device
from .utils.images import grid, save_png, to_uint8_nhwc, zoom

EPILOG = """examples:
  python -m progan_fast.generate --ckpt runs/00000-fashion-mnist-32 --n 1000 --out samples.npz
  python -m progan_fast.generate --ckpt RUN --seeds 0-63 --grid grid.png --truncation-psi 0.7
  python -m progan_fast.generate --ckpt RUN --seeds 0-9 --per-class --grid classes.png   (conditional)
  python -m progan_fast.generate --ckpt RUN --seeds 0-15 --class 7 --out bags.npz        (conditional)
  python -m progan_fast.generate --ckpt RUN --seeds 3,17,42 --interp walk.gif --steps 24 --loop
"""

MEAN_LATENT_SEED = 0x5EED  # fixed, so a truncated image depends only on its own seed


def load_generator(ckpt_path, device="cpu", ckpt: dict | None = None):
    """(Gs, res_log2, alpha) from a checkpoint file or run directory (`ckpt`: that checkpoint, if the
    caller has already loaded it). A conditional Gs has num_classes > 0 and needs labels (see
    `sample_labels`)."""
    from .training.trainer import build_generator
    ckpt = load_checkpoint(ckpt_path) if ckpt is None else ckpt
    try:
        cfg = TrainConfig.from_json(ckpt["config"])
        G = build_generator(cfg)
        G.load_state_dict(ckpt["step"]["Gs"])
        phase = ckpt["phase"]
        res_log2, alpha = phase["res_log2"], phase["alpha"]
    except (RuntimeError, KeyError, TypeError) as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        detail = next((ln for ln in lines if ln.startswith(("size mismatch", "Missing key", "Unexpected key"))),
                      lines[0] if lines else type(exc).__name__)
        raise ValueError(f"checkpoint {ckpt_path}: its weights do not match its recorded architecture "
                         f"({detail[:200]})") from None
    return G.to(device).eval(), res_log2, alpha


# -- latents and labels ----------------------------------------------------------------------------------

def parse_seeds(text: str) -> list[int]:
    """'0-3,10,12-13' -> [0, 1, 2, 3, 10, 12, 13] (order kept, ranges inclusive)."""
    seeds = []
    for item in text.split(","):
        item = item.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not m:
            raise ValueError(f"--seeds: expected non-negative integers and ranges like '0-63,100', got {item!r}")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"--seeds: range {item!r} runs backwards")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise ValueError("--seeds: no seeds given")
    return seeds


def check_psi(psi: float | None, flag: str = "--truncation-psi") -> None:
    if psi is not None and not 0.0 < psi <= 1.0:
        raise ValueError(f"{flag} must lie in (0, 1] (1 = no truncation), got {psi}")


def resample_truncated(z: torch.Tensor, threshold: float, generator: torch.Generator) -> torch.Tensor:
    """BigGAN's truncation: redraw the entries with |z| > threshold until none is left."""
    if not threshold > 0:
        raise ValueError(f"--truncation-resample must be > 0, got {threshold}")
    z = z.clone()
    while True:
        bad = z.abs() > threshold
        count = int(bad.sum())
        if count == 0:
            return z
        z[bad] = torch.randn(count, generator=generator, dtype=z.dtype)


def seed_latents(latent_size: int, seeds, *, num_classes: int = 0, resample: float | None = None):
    """One latent (and, for a conditional model, one uniform label) per seed: (z [N, L], labels [N] | None)."""
    zs, ys = [], []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        z = torch.randn(1, latent_size, generator=g)
        if num_classes:
            ys.append(torch.randint(num_classes, (1,), generator=g))
        zs.append(resample_truncated(z, resample, g) if resample else z)
    return torch.cat(zs), (torch.cat(ys) if num_classes else None)


def stream_latents(latent_size: int, n: int, seed: int, *, num_classes: int = 0, resample: float | None = None):
    """n latents from one generator seeded `seed` (then n uniform labels for a conditional model)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, latent_size, generator=g)
    labels = torch.randint(num_classes, (n,), generator=g) if num_classes else None
    return (resample_truncated(z, resample, g) if resample else z), labels


def sample_labels(G, n: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
    """Uniform class labels for a conditional G (None for an unconditional one)."""
    return torch.randint(G.num_classes, (n,), generator=generator) if G.num_classes else None


def check_class(G, cls: int | None, per_class: bool = False) -> None:
    if cls is None and not per_class:
        return
    flag = "--per-class" if per_class else f"--class {cls}"
    if not G.num_classes:
        raise ValueError(f"{flag}: this checkpoint's generator is unconditional (trained without --cond)")
    if cls is not None and not 0 <= cls < G.num_classes:
        raise ValueError(f"--class {cls} is out of range: the model has {G.num_classes} classes (0..{G.num_classes - 1})")


# -- the truncation trick's mean latent ------------------------------------------------------------------

@torch.no_grad()
def mean_latent(G, *, labels: torch.Tensor | None = None, label_embedding: torch.Tensor | None = None,
                samples: int = 10000, device="cpu") -> torch.Tensor:
    """Mean of G.latent(z, y) over `samples` z ~ N(0, I) from a fixed generator: [1, W] for an
    unconditional G, else one row per entry of `labels` (or of `label_embedding` rows) [M, W]."""
    if samples < 1:
        raise ValueError(f"--truncation-samples must be >= 1, got {samples}")
    z = torch.randn(samples, G.latent_size, generator=torch.Generator().manual_seed(MEAN_LATENT_SEED)).to(device)
    if not G.num_classes:
        return G.latent(z).mean(0, keepdim=True)
    emb = G.embed(labels.to(device)) if label_embedding is None else label_embedding.to(device)
    rows, index = torch.unique(emb, dim=0, return_inverse=True)  # each distinct embedding once (interp frames repeat)
    return torch.stack([G.latent(z, label_embedding=e.expand(samples, -1)).mean(0) for e in rows])[index]


# -- generation ------------------------------------------------------------------------------------------

@torch.no_grad()
def synthesize(G, z: torch.Tensor, res_log2: int, alpha, *, labels=None, label_embedding=None, psi=None,
               truncation_samples: int = 10000, batch: int = 64, device="cpu") -> np.ndarray:
    """uint8 NHWC images of latents z [N, L] (with labels [N], or label embeddings [N, E], when
    conditional), optionally truncated toward the mean latent with psi in (0, 1]."""
    check_psi(psi)
    truncate = psi is not None and psi < 1.0
    means = None  # per class (or the one unconditional mean), computed once
    if truncate and label_embedding is None:
        classes = torch.arange(G.num_classes) if G.num_classes else None
        means = mean_latent(G, labels=classes, samples=truncation_samples, device=device)
    out = []
    for i in range(0, len(z), batch):
        zb = z[i:i + batch].to(device)
        yb = None if labels is None else labels[i:i + batch].to(device)
        eb = None if label_embedding is None else label_embedding[i:i + batch].to(device)
        w = G.latent(zb, yb, label_embedding=eb)
        if truncate:
            if eb is not None:  # blended classes (interpolation): the mean of each row's own embedding
                mean = mean_latent(G, label_embedding=eb, samples=truncation_samples, device=device)
            else:
                mean = means[yb] if G.num_classes else means
            w = torch.lerp(mean, w, psi)
        out.append(to_uint8_nhwc(G.synthesize(w, res_log2, alpha)))
    return np.concatenate(out)


# -- interpolation ---------------------------------------------------------------------------------------

def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of directions, linear of norms: a, b [L], t [T] -> [T, L]; t=0 -> a, t=1 -> b.
    (G pixel-normalizes its input, so the direction is what matters; the norm is kept for the
    relative weight of z and the label embedding in a conditional G.)"""
    na, nb = a.norm(), b.norm()
    ua, ub = a / na, b / nb
    omega = torch.arccos(torch.clamp(ua @ ub, -1.0, 1.0))
    t = t[:, None]
    if omega.abs() < 1e-6:
        u = torch.lerp(ua, ub, t)
    else:
        u = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / torch.sin(omega)
    out = u * torch.lerp(na, nb, t)
    out[t[:, 0] == 0] = a
    out[t[:, 0] == 1] = b
    return out


def interpolation_path(z_keys: torch.Tensor, steps: int, loop: bool = False):
    """Frames along slerps between consecutive key latents: (z [F, L], segment index [F], t [F])."""
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    keys = torch.cat([z_keys, z_keys[:1]]) if loop else z_keys
    if len(keys) < 2:
        raise ValueError("interpolation needs at least two seeds (e.g. --seeds 0,1)")
    t = torch.arange(steps + 1, dtype=torch.float32) / steps
    zs, seg, ts = [], [], []
    for k in range(len(keys) - 1):
        zs.append(slerp(keys[k], keys[k + 1], t))
        seg.append(torch.full((steps + 1,), k))
        ts.append(t)
    return torch.cat(zs), torch.cat(seg), torch.cat(ts)


def save_gif(frames: np.ndarray, path, fps: float = 12.0) -> None:
    from PIL import Image
    imgs = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=int(round(1000 / fps)), loop=0)


# -- command line ----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m progan_fast.generate", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint file, or a run directory (its latest checkpoint)")
    o = p.add_argument_group("outputs (at least one)")
    o.add_argument("--out", help="output .npz (keys images: uint8 N x H x W x C, latents, seeds, labels)")
    o.add_argument("--grid", help="PNG grid of the images (with --per-class: one row per class)")
    o.add_argument("--interp", metavar="PATH", help="latent interpolation between the --seeds, in order: "
                                                    "an animated .gif or a .png strip (one row per segment)")
    s = p.add_argument_group("latents")
    s.add_argument("--n", type=int, default=64, help="number of images without --seeds (default 64)")
    s.add_argument("--seed", type=int, default=0, help="seed of the --n latents (default 0)")
    s.add_argument("--seeds", help="one latent per seed, e.g. '0-63' or '3,17,42' (overrides --n/--seed)")
    c = p.add_argument_group("classes (class-conditional checkpoints)")
    c.add_argument("--class", dest="cls", type=int, metavar="K", help="generate class K only (default: uniform random classes)")
    c.add_argument("--per-class", action="store_true",
                   help="every latent once per class: a grid with one row per class, one column per latent")
    t = p.add_argument_group("truncation trick")
    t.add_argument("--truncation-psi", type=float, metavar="PSI", help="lerp G's input toward the mean latent, psi in (0, 1]")
    t.add_argument("--truncation-resample", type=float, metavar="T",
                   help="BigGAN: redraw latent entries with |z| > T (T > 0, e.g. 0.5 .. 2)")
    t.add_argument("--truncation-samples", type=int, default=10000, metavar="N", help="latents averaged for the mean (10000)")
    i = p.add_argument_group("interpolation")
    i.add_argument("--steps", type=int, default=16, help="frames per segment between two seeds (default 16)")
    i.add_argument("--loop", action="store_true", help="return to the first seed at the end")
    i.add_argument("--fps", type=float, default=12.0, help="GIF frame rate (default 12)")
    p.add_argument("--zoom", type=int, help="nearest-neighbour upscale factor for PNG/GIF output "
                                            "(default 1 for grids; GIF/strip frames to >= 128 px)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    return p


def _validate(args) -> None:
    if args.out is None and args.grid is None and args.interp is None:
        raise ValueError("nothing to write: give --out FILE.npz, --grid FILE.png and/or --interp FILE.gif|png")
    if args.out is not None and not args.out.endswith(".npz"):
        raise ValueError(f"--out must end in .npz, got {args.out}")
    if args.interp is not None and not args.interp.lower().endswith((".gif", ".png")):
        raise ValueError(f"--interp must end in .gif or .png, got {args.interp}")
    if args.seeds is None and args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    check_psi(args.truncation_psi)
    if args.truncation_resample is not None and not args.truncation_resample > 0:
        raise ValueError(f"--truncation-resample must be > 0, got {args.truncation_resample}")
    if args.truncation_samples < 1:
        raise ValueError(f"--truncation-samples must be >= 1, got {args.truncation_samples}")
    if args.cls is not None and args.per_class:
        raise ValueError("give --class K or --per-class, not both")
    if args.zoom is not None and args.zoom < 1:
        raise ValueError(f"--zoom must be >= 1, got {args.zoom}")
    if args.interp is not None and args.seeds is None:
        raise ValueError("--interp needs the key frames as --seeds, e.g. --seeds 3,17,42")
    if args.interp is not None and args.per_class:
        raise ValueError("--interp and --per-class do not combine; use --class K to fix the class")



def _run(args) -> str:
    _validate(args)
    device = pick_device(args.device)
    G, res_log2, alpha = load_generator(args.ckpt, device)
    check_class(G, args.cls, args.per_class)
    K = G.num_classes
    if args.seeds is not None:
        seeds = parse_seeds(args.seeds)
        z, labels = seed_latents(G.latent_size, seeds, num_classes=K, resample=args.truncation_resample)
    else:
        seeds = list(range(args.seed, args.seed + args.n))  # recorded for reference only (stream latents)
        z, labels = stream_latents(G.latent_size, args.n, args.seed, num_classes=K, resample=args.truncation_resample)
    if args.cls is not None:
        labels = torch.full((len(z),), args.cls, dtype=torch.int64)
    zoom_factor = args.zoom
    kw = dict(psi=args.truncation_psi, truncation_samples=args.truncation_samples, device=device)
    written = []

    if args.interp is not None:
        path_z, seg, t = interpolation_path(z, args.steps, args.loop)
        emb = None
        if K:
            keys = torch.cat([labels, labels[:1]]) if args.loop else labels
            e = G.embed(keys.to(device)).cpu()
            emb = torch.lerp(e[seg], e[seg + 1], t[:, None])  # class changes blend in embedding space
        frames = synthesize(G, path_z, res_log2, alpha, label_embedding=emb, **kw)
        frames = zoom(frames, zoom_factor or max(1, 128 // frames.shape[1]))
        _ensure_parent(args.interp)
        if args.interp.lower().endswith(".gif"):  # shared key frames once each; a loop ends before its start
            keep = (t < 1).numpy()
            keep[-1] |= not args.loop
            frames = frames[keep]
            save_gif(frames, args.interp, args.fps)
        else:
            save_png(grid(frames, ncols=args.steps + 1), args.interp)
        written.append(f"{len(frames)} interpolation frames to {args.interp}")
        if args.out is None and args.grid is None:
            return "wrote " + "; ".join(written)

    ncols = None
    if args.per_class:
        n = len(z)
        z = z.repeat(K, 1)
        labels = torch.arange(K).repeat_interleave(n)
        seeds = seeds * K
        ncols = n
    images = synthesize(G, z, res_log2, alpha, labels=labels, **kw)
    if args.out is not None:
        _ensure_parent(args.out)
        extra = {} if labels is None else {"labels": labels.numpy()}
        np.savez(args.out, images=images, latents=z.numpy(), seeds=np.asarray(seeds, dtype=np.int64), **extra)
        written.append(f"{len(images)} images {images.shape[1:]} to {args.out}")
    if args.grid is not None:
        _ensure_parent(args.grid)
        save_png(grid(zoom(images, zoom_factor or 1), ncols=ncols), args.grid)
        written.append(f"a grid to {args.grid}")
    return "wrote " + "; ".join(written)


def _ensure_parent(path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        msg = _run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(msg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
