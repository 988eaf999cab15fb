"""python -m progan_fast.metrics.train_classifier — train the FashionMNIST classifier behind FID / IS.

Trains FMNISTClassifier on the 60k train split (needs the full dataset: Debian's dataset-fashion-mnist
or PROGAN_FAST_FMNIST_DIR), 28x28 zero-padded to 32x32 and scaled to [-1, 1] exactly as the GAN trainer
sees the data, with random horizontal flips; Adam with a cosine learning-rate decay; fixed seed. Reports
the accuracy on the t10k test split (never used for training or model selection) and stores the weights
as float16 (~380 KB) with that accuracy and the settings used.
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F

from .classifier import DEFAULT_WEIGHTS, FORMAT, FMNISTClassifier, fashion_mnist_split, to_classifier_input


@torch.no_grad()
def accuracy(model: FMNISTClassifier, images_u8: torch.Tensor, labels: torch.Tensor, batch: int = 500,
             device="cpu") -> float:
    """Top-1 accuracy of `model` on uint8 [N, 1, 32, 32] images."""
    model.eval()
    correct = 0
    for i in range(0, len(images_u8), batch):
        x = to_classifier_input(images_u8[i:i + batch]).to(device)
        correct += int((model(x).argmax(1).cpu() == labels[i:i + batch]).sum())
    return correct / len(images_u8)


def train(epochs: int = 5, batch: int = 128, lr: float = 2e-3, seed: int = 0, device="cpu", log=print):
    torch.manual_seed(seed)
    x_train, y_train = fashion_mnist_split("train")
    model = FMNISTClassifier().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(x_train) / batch)
    total = epochs * steps_per_epoch
    g = torch.Generator().manual_seed(seed)
    step = 0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=g)
        t0, loss_sum = time.time(), 0.0
        for i in range(0, len(perm), batch):
            idx = perm[i:i + batch]
            x = to_classifier_input(x_train[idx])
            flip = torch.rand(len(idx), generator=g) < 0.5
            x[flip] = x[flip].flip(-1)
            for group in opt.param_groups:  # cosine decay to 0 over the whole run
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(x.to(device)), y_train[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().item()
            step += 1
        log(f"epoch {epoch + 1}/{epochs}: loss {loss_sum / steps_per_epoch:.4f} ({time.time() - t0:.0f} s)")
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m progan_fast.metrics.train_classifier", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=DEFAULT_WEIGHTS, help=f"weights file (default: the shipped {DEFAULT_WEIGHTS})")
    p.add_argument("--epochs", type=int, default=5, help="default 5")
    p.add_argument("--batch", type=int, default=128, help="default 128")
    p.add_argument("--lr", type=float, default=2e-3, help="peak Adam learning rate (default 0.002)")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--device", default="cpu", help="'cpu' (default) or 'cuda'")
    args = p.parse_args(argv)
    try:
        if args.epochs < 1 or args.batch < 1 or args.lr <= 0:
            raise ValueError("--epochs, --batch and --lr must be positive")
        t0 = time.time()
        model = train(args.epochs, args.batch, args.lr, args.seed, torch.device(args.device))
        train_s = time.time() - t0
        model = model.cpu().eval()
        # Evaluate the float16-rounded weights: they are what ships.
        state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        x_test, y_test = fashion_mnist_split("test")
        acc = accuracy(model, x_test, y_test)
        torch.save({"format": FORMAT, "version": 1, "state_dict": state, "test_accuracy": acc,
                    "train": {"epochs": args.epochs, "batch": args.batch, "lr": args.lr, "seed": args.seed,
                              "seconds": round(train_s, 1), "torch": str(torch.__version__)}}, args.out)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"test accuracy {acc:.4f} on {len(x_test)} images; trained in {train_s:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
