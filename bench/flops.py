"""Model FLOPs of PGGAN's G and D (DESIGN §2 architecture), counted analytically from the layer list.

Only convolutions and dense layers count (multiply-accumulates, 1 MAC = 2 FLOPs); bias, activations,
pixel norm, minibatch stddev, resampling and the fade-in lerps are O(activations) and ignored, as
MFU conventions do. The layer list also yields parameter counts, which tests check against the
paper's numbers so a wrong channel formula cannot go unnoticed.

Training-step factor (per image, `train_step_flops`), with F_G, F_D the forward FLOPs:
  D step:  G forward (no G backward)                              1 F_G
           D fwd + bwd (dgrad + wgrad) on reals and on fakes      2 x 3 F_D = 6 F_D
           WGAN-GP: D fwd on the mix (1), grad wrt the input with
           create_graph (dgrad, 1), backward of that graph: wgrad
           and grad-of-dgrad (2), and the path back through the
           forward graph via minibatch stddev (dgrad + wgrad, 2)   6 F_D
  G step:  G fwd + bwd (3 F_G); D fwd + dgrad only, since TrainStep
           freezes D's parameters for the G step (2 F_D)           3 F_G + 2 F_D
  total:   4 F_G + 14 F_D    (EMA and Adam are O(params): ignored)
The first layer's dgrad, which autograd skips where the input needs no gradient, is counted
anyway; it is a 1x1 conv from 3 channels, well under 1% of either network.
This is what the eager reference executes (bench/step_anatomy.py traces it to within 0.1 %). The
fused backends skip the backward passes that only carry zero gradients in the penalty's double
backward (the reference runs its 4x4 block and dense layers over zeros there): about 22 GFLOP per
step at paper widths, so at 4 px they execute ~11 % fewer FLOPs than credited, at >= 16 px < 0.3 %.
"""
from __future__ import annotations

from dataclasses import dataclass

from .paper import nf

STEP_FACTOR_G = 4
STEP_FACTOR_D = 14


@dataclass(frozen=True)
class Layer:
    name: str
    cin: int
    cout: int
    k: int          # kernel size (1 for dense)
    out_hw: int     # output pixels per image (1 for dense)
    macs: int       # multiply-accumulates per image
    params: int     # weights + biases


def _conv(name, cin, cout, k, out_res, *, taps=None, bias=True):
    """A conv with `taps` MACs per (output pixel, cin, cout); default k*k."""
    taps = k * k if taps is None else taps
    return Layer(name, cin, cout, k, out_res * out_res, out_res * out_res * taps * cin * cout,
                 cin * cout * k * k + (cout if bias else 0))


def _dense(name, cin, cout, bias_size=None):
    return Layer(name, cin, cout, 1, 1, cin * cout, cin * cout + (cout if bias_size is None else bias_size))


def generator_layers(res_log2: int, *, num_channels=3, fmap_base=8192, fmap_decay=1.0, fmap_max=512,
                     latent_size=None, fused_scale=False, fading=False) -> list[Layer]:
    """G_paper's convs/dense layers up to 2**res_log2 px. `fading`: also the old toRGB of a fade."""
    f = dict(fmap_base=fmap_base, fmap_decay=fmap_decay, fmap_max=fmap_max)
    latent = nf(0, **f) if latent_size is None else latent_size
    c4 = nf(1, **f)
    layers = [_dense("G4.dense", latent, c4 * 16, bias_size=c4), _conv("G4.conv", c4, c4, 3, 4)]
    for r in range(3, res_log2 + 1):
        res, cin, c = 2 ** r, nf(r - 2, **f), nf(r - 1, **f)
        if fused_scale:  # 4x4 stride-2 transposed conv: 16 taps per input pixel = 4 per output pixel
            layers.append(_conv(f"G{res}.conv0_up", cin, c, 3, res, taps=4))
        else:
            layers.append(_conv(f"G{res}.conv0_up", cin, c, 3, res))
        layers.append(_conv(f"G{res}.conv1", c, c, 3, res))
    layers.append(_conv(f"G{2 ** res_log2}.torgb", nf(res_log2 - 1, **f), num_channels, 1, 2 ** res_log2))
    if fading and res_log2 > 2:
        layers.append(_conv(f"G{2 ** (res_log2 - 1)}.torgb", nf(res_log2 - 2, **f), num_channels, 1,
                            2 ** (res_log2 - 1)))
    return layers


def discriminator_layers(res_log2: int, *, num_channels=3, fmap_base=8192, fmap_decay=1.0, fmap_max=512,
                         mbstd_group_size=4, fused_scale=False, fading=False) -> list[Layer]:
    """D_paper's convs/dense layers from 2**res_log2 px down. `fading`: also the old fromRGB."""
    f = dict(fmap_base=fmap_base, fmap_decay=fmap_decay, fmap_max=fmap_max)
    top = 2 ** res_log2
    layers = [_conv(f"D{top}.fromrgb", num_channels, nf(res_log2 - 1, **f), 1, top)]
    if fading and res_log2 > 2:
        layers.append(_conv(f"D{top // 2}.fromrgb", num_channels, nf(res_log2 - 2, **f), 1, top // 2))
    for r in range(res_log2, 2, -1):
        res, c, cout = 2 ** r, nf(r - 1, **f), nf(r - 2, **f)
        layers.append(_conv(f"D{res}.conv0", c, c, 3, res))
        if fused_scale:  # 4x4 stride-2 conv at the output resolution
            layers.append(_conv(f"D{res}.conv1_down", c, cout, 3, res // 2, taps=16))
        else:  # 3x3 conv at full resolution, then 2x2 average pool
            layers.append(_conv(f"D{res}.conv1_down", c, cout, 3, res))
    c4 = nf(1, **f)
    extra = 1 if mbstd_group_size > 1 else 0
    layers += [_conv("D4.conv", c4 + extra, c4, 3, 4),
               _dense("D4.dense0", c4 * 16, nf(0, **f)),
               _dense("D4.dense1", nf(0, **f), 1)]
    return layers


def macs(layers: list[Layer]) -> int:
    return sum(layer.macs for layer in layers)


def params(layers: list[Layer]) -> int:
    return sum(layer.params for layer in layers)


def forward_flops(res_log2: int, **cfg) -> tuple[int, int]:
    """(G forward FLOPs, D forward FLOPs) per image at 2**res_log2 px."""
    g_keys = {"num_channels", "fmap_base", "fmap_decay", "fmap_max", "latent_size", "fused_scale", "fading"}
    d_keys = {"num_channels", "fmap_base", "fmap_decay", "fmap_max", "mbstd_group_size", "fused_scale", "fading"}
    g = macs(generator_layers(res_log2, **{k: v for k, v in cfg.items() if k in g_keys}))
    d = macs(discriminator_layers(res_log2, **{k: v for k, v in cfg.items() if k in d_keys}))
    return 2 * g, 2 * d


def train_step_flops(res_log2: int, **cfg) -> int:
    """Model FLOPs per image of one D step (with WGAN-GP) + one G step: 4 F_G + 14 F_D (see module doc)."""
    fg, fd = forward_flops(res_log2, **cfg)
    return STEP_FACTOR_G * fg + STEP_FACTOR_D * fd
