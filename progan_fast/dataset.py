"""python -m progan_fast.dataset — build a multi-resolution dataset directory for fast training.

  create --source SRC --out DIR   decode SRC once, write every level from --resolution down to 4 px
  info DIR                        summary of a dataset directory
  verify DIR                      check every file against the manifest's sha256 (exit 1 if damaged)

SRC: a folder of PNG/JPEG images (searched recursively; other files ignored), a .zip of images,
MNIST/FashionMNIST IDX files (or their folder), or a uint8 .npy/.npz. Levels are 2x2 box means of the
previous level computed in float, rounded to uint8 when stored (as the official dataset tool does).
Small levels are raw uint8 .npy (memory-mapped when training); levels of --encode-from px and up are
JPEG (quality 95, 4:4:4) by default, decoded on the GPU by the DALI loader; --codec png/raw keeps
them lossless. Train with `python -m progan_fast.train --data DIR`.
"""
from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  python -m progan_fast.dataset create --source ~/celeba_hq/ --out data/celebahq --resolution 256
  python -m progan_fast.dataset create --source photos.zip --out data/photos --resolution 128 --crop center --resize lanczos
  python -m progan_fast.dataset create --source /usr/share/datasets/fashion-mnist --out data/fmnist
  python -m progan_fast.dataset info data/fmnist
  python -m progan_fast.dataset verify data/fmnist
"""


def build_parser() -> argparse.ArgumentParser:
    from .data.writer import CODECS, RESIZE_FILTERS
    p = argparse.ArgumentParser(prog="python -m progan_fast.dataset", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{create,info,verify}")
    c = sub.add_parser("create", help="build a dataset directory from images", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    c.add_argument("--source", required=True, help="image folder, .zip, IDX file/folder, or .npy/.npz")
    c.add_argument("--out", required=True, help="dataset directory to create (must not exist unless --overwrite)")
    c.add_argument("--resolution", type=int,
                   help="top level (power of two); default: the images' size padded to a power of two. "
                        "Smaller than the images: lower levels of the box chain (no resampling)")
    c.add_argument("--labels", help="integer labels: .npy (source order), .json (list, or {name: label}) or "
                                    ".csv (`name,label`); names are paths relative to SRC. npz/IDX labels are "
                                    "kept automatically")
    c.add_argument("--crop", choices=["none", "center"], default="none",
                   help="'center': crop non-square images to their shorter side (default 'none': error)")
    c.add_argument("--resize", nargs="?", const="lanczos", choices=RESIZE_FILTERS,
                   help="resample every image that is not --resolution px to it, with this filter (default lanczos); allows mixed "
                        "sizes and upscaling")
    c.add_argument("--codec", choices=CODECS, default="jpeg",
                   help="storage of levels >= --encode-from (default jpeg); smaller levels are always raw")
    c.add_argument("--encode-from", type=int, default=128, help="smallest level stored with --codec (default 128)")
    c.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    c.add_argument("--strict", action="store_true", help="stop at the first unreadable image (default: skip, "
                                                         "count and warn)")
    c.add_argument("--workers", type=int, help="decode/encode threads (default min(8, CPUs))")
    c.add_argument("--quiet", action="store_true", help="no progress lines")
    i = sub.add_parser("info", help="summarize a dataset directory")
    i.add_argument("dir")
    v = sub.add_parser("verify", help="check a dataset directory's files against its manifest")
    v.add_argument("dir")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .data import writer
    try:
        if args.command == "create":
            import warnings

            def log(msg):
                if not args.quiet:
                    print(msg, file=sys.stderr, flush=True)

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                m = writer.create_dataset(args.source, args.out, resolution=args.resolution, labels=args.labels,
                                          crop=args.crop, resize=args.resize, overwrite=args.overwrite,
                                          strict=args.strict, codec=args.codec, encode_from=args.encode_from,
                                          quality=args.quality, workers=args.workers, log=log)
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)
            print(writer.dataset_info(args.out))
        elif args.command == "info":
            print(writer.dataset_info(args.dir))
        else:
            problems = writer.verify_dataset(args.dir)
            for p in problems:
                print(f"error: {p}", file=sys.stderr)
            if problems:
                return 1
            print(f"{args.dir}: OK (every file matches the manifest)")
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full and friends: nothing was left behind (see writer.create_dataset)
        print(f"error: {exc}; no dataset was written", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
