"""python -m progan_fast.metrics — score a checkpoint's generator (Gs) against real images.

Metrics: swd (sliced Wasserstein distance x1e3 per Laplacian level and average, the paper's), msssim
(MS-SSIM of generated pairs; lower = more diverse; the reals' value is given beside it), fid and is
(FID and Inception-style score in the feature space of the shipped FashionMNIST classifier: grayscale
data only), fid_inception (FID with your own Inception TorchScript file, --inception; never downloaded),
class_acc (class-conditional generators: how often the shipped classifier puts a sample in the class it
was made for; the baseline is the classifier's accuracy on real test images).
Images are made at the checkpoint's current resolution and fade. Results are printed as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ..utils.devices import pick_device
from .evaluate import METRICS, check_metrics, compare, evaluate

EPILOG = """examples:
  python -m progan_fast.metrics --ckpt runs/00000-fashion-mnist-32 --metrics swd,msssim,fid,is
  python -m progan_fast.metrics --ckpt run/network-snapshot-000060.pt --data imgs/ --metrics swd --num 16384
  python -m progan_fast.metrics --real-baseline --out baseline.json   # FashionMNIST test vs train split
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m progan_fast.metrics", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="checkpoint file, or a run directory (its latest checkpoint)")
    src.add_argument("--real-baseline", action="store_true",
                     help="score the FashionMNIST test split against the train split (what a perfect "
                          "generator would get); needs the 60k train split")
    p.add_argument("--data", help="real images: 'fashion-mnist' or a dataset path as for training "
                                  "(default: the checkpoint's training data)")
    p.add_argument("--metrics", default="swd,msssim,fid,is",
                   help=f"comma-separated, from {', '.join(METRICS)} (default swd,msssim,fid,is)")
    p.add_argument("--num", type=int, default=10000, help="images per set (default 10000; the paper's SWD used 16384)")
    p.add_argument("--seed", type=int, default=0, help="latents, real subset, SWD randomness (default 0)")
    p.add_argument("--device", default="auto", help="'auto' (default), 'cpu' or 'cuda'")
    p.add_argument("--inception", metavar="PATH", help="TorchScript Inception feature network for fid_inception")
    p.add_argument("--classifier", metavar="PATH", help="classifier weights for fid/is (default: the shipped ones)")
    p.add_argument("--out", metavar="JSON", help="also write the results here")
    return p



def real_baseline(metrics, num: int, seed: int, device, **kw) -> dict:
    """FashionMNIST t10k test split (as 'fakes') vs a random subset of the 60k train split, at 32 px."""
    from .classifier import fashion_mnist_split
    from .evaluate import _subset
    train, _ = fashion_mnist_split("train")
    test, test_labels = fashion_mnist_split("test")
    pick = _subset(torch.arange(len(test)), num, seed)  # the same subset of images and labels
    out = compare(_subset(train, num, seed), test[pick], metrics, seed=seed, device=device,
                  fake_labels=test_labels[pick], **kw)
    out["baseline"] = "FashionMNIST test split vs train split"
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        metrics = check_metrics(args.metrics)
        if args.num < 1:
            raise ValueError(f"--num must be >= 1, got {args.num}")
        if args.out and not args.out.endswith(".json"):
            raise ValueError(f"--out must end in .json, got {args.out}")
        if "fid_inception" in metrics and not args.inception:
            raise ValueError("fid_inception needs --inception PATH (a TorchScript Inception; nothing is downloaded)")
        device = pick_device(args.device)
        kw = dict(classifier_weights=args.classifier, inception=args.inception)
        t0 = time.time()
        if args.real_baseline:
            if args.data:
                raise ValueError("--real-baseline uses FashionMNIST's own splits; drop --data")
            out = real_baseline(metrics, args.num, args.seed, device, **kw)
        else:
            from ..generate import load_generator
            from ..training.checkpoint import load_checkpoint
            ckpt = load_checkpoint(args.ckpt)
            G, res_log2, alpha = load_generator(args.ckpt, device, ckpt=ckpt)
            data = args.data or ckpt["config"].get("data", "fashion-mnist")
            out = evaluate(G, data, metrics, num_images=args.num, device=device, seed=args.seed,
                           res_log2=res_log2, alpha=alpha, **kw)
            out["ckpt"] = str(args.ckpt)
        out["seconds"] = round(time.time() - t0, 1)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
