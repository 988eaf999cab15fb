"""Per-layer timing of the fused Triton eq_conv2d against the reference (cuDNN conv + torch epilogue)
on PGGAN's real layer shapes and paper batch sizes. A GPU script, not a test: nothing asserts a time.

    python bench/triton_conv_layers.py --res 8 32 128 --dtype bf16 [--backward] [--no-autotune]

Prints, per layer: reference ms, Triton ms, speed-up, Triton TFLOP/s (counting the folded FLOPs the
kernel really does), and the max |error| vs the reference as a sanity check.
"""
import argparse
import math

import torch
import triton.testing

from paper import BATCH_1GPU as BATCH, nf  # sibling module (bench/ is on sys.path when run as a script)

from progan_fast.ops import reference
from progan_fast.triton import conv
from progan_fast.triton.conv_op import eq_conv2d_triton


def layers(res):
    """(name, N, Cin, Cout, H_in, k, kwargs) of every eq_conv2d of G and D at one resolution."""
    r, n = int(math.log2(res)), BATCH[res]
    c = nf(r - 1)
    out = []
    if res == 4:
        out.append(("G dense z->4x4", n, 512, 8192, 1, 1, dict(gain=math.sqrt(2) / 4, act="linear")))
        out.append(("G conv3x3 PN", n, 512, 512, 4, 3, dict(pixel_norm=True)))
    else:
        out.append(("G up conv3x3 PN", n, nf(r - 2), c, res // 2, 3, dict(up=True, pixel_norm=True)))
        out.append(("G conv3x3 PN", n, c, c, res, 3, dict(pixel_norm=True)))
    out.append(("G toRGB", n, c, 3, res, 1, dict(gain=1.0, act="linear")))
    out.append(("D fromRGB", n, 3, c, res, 1, {}))
    if res == 4:
        out.append(("D conv3x3 (+stddev)", n, 513, 512, 4, 3, {}))
        out.append(("D conv4x4 valid", n, 512, 512, 4, 4, {}))
    else:
        out.append(("D conv3x3", n, c, c, res, 3, {}))
        out.append(("D conv3x3 down", n, c, nf(r - 2), res, 3, dict(down=True)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--res", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--backward", action="store_true", help="time forward + backward")
    ap.add_argument("--no-autotune", action="store_true")
    args = ap.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    conv.set_autotune(not args.no_autotune)
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__} "
          f"{args.dtype} channels_last {'fwd+bwd' if args.backward else 'fwd'}")
    print(f"{'res':>5} {'layer':<22} {'ref ms':>8} {'triton ms':>9} {'speedup':>7} {'TFLOP/s':>8} {'max err':>8}")
    for res in args.res:
        for name, n, cin, cout, h, k, extra in layers(res):
            kw = dict(gain=math.sqrt(2), act="lrelu", slope=0.2, pixel_norm=False, up=False, down=False,
                      fused_scale=True, eps=1e-8)
            kw.update(extra)
            x = torch.randn(n, cin, h, h, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
            w = torch.randn(cout, cin, k, k, device="cuda")
            b = torch.randn(cout, device="cuda")
            ho, wo = conv.output_size(h, h, k, kw["up"], kw["down"])
            taps = 4 if kw["up"] else (16 if kw["down"] else k * k)
            flops = 2 * n * ho * wo * cout * cin * taps * (3 if args.backward else 1)
            err = (eq_conv2d_triton(x, w, b, **kw).float() - reference.eq_conv2d(x, w, b, **kw).float()).abs().max()
            if args.backward:
                for t in (x, w, b):
                    t.requires_grad_()
                gy = torch.randn(n, cout, ho, wo, device="cuda", dtype=dtype)

                def step(fn):
                    return lambda: torch.autograd.grad(fn(x, w, b, **kw), (x, w, b), gy)
            else:
                def step(fn):
                    return lambda: fn(x, w, b, **kw)
            t_ref = triton.testing.do_bench(step(reference.eq_conv2d))
            t_tri = triton.testing.do_bench(step(eq_conv2d_triton))
            print(f"{res:>5} {name:<22} {t_ref:8.3f} {t_tri:9.3f} {t_ref / t_tri:7.2f} "
                  f"{flops / t_tri / 1e9:8.1f} {err.item():8.2e}")


if __name__ == "__main__":
    main()
