"""PGGAN generator and discriminator (G_paper / D_paper of the official code, DESIGN §2).

Both compute at the current native resolution 2**res_log2 (not the official full-resolution
recursion): G runs its blocks up to res_log2 and emits images of that size; D takes images of that
size. `alpha` in [0, 1] is the fade-in weight of the newest block (1 = fully faded in); it may be a
Python float or a 0-d tensor (a tensor always takes the blend path, so shapes and graphs stay static
through a fade).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import ops
from .nn import SQRT2, BiasAct, EqualizedConv2d, EqualizedEmbedding, EqualizedLinear, MinibatchStdDev

COND_HEADS = ("acgan", "projection")


def nf(stage: int, fmap_base: int = 8192, fmap_decay: float = 1.0, fmap_max: int = 512) -> int:
    """Feature maps of a stage; the block at resolution 2**r uses nf(r - 1)."""
    return min(int(fmap_base / (2.0 ** (stage * fmap_decay))), fmap_max)


def resolution_log2(resolution: int) -> int:
    r = int(round(math.log2(resolution))) if resolution > 0 else -1
    if resolution < 4 or 2 ** r != resolution:
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
    return r


def _fading(alpha) -> bool:
    return isinstance(alpha, torch.Tensor) or alpha < 1.0


class _Arch(nn.Module):
    def __init__(self, resolution, num_channels, fmap_base, fmap_decay, fmap_max):
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {num_channels}")
        self.resolution = resolution
        self.resolution_log2 = resolution_log2(resolution)
        self.num_channels = num_channels
        self.fmap_base, self.fmap_decay, self.fmap_max = fmap_base, fmap_decay, fmap_max

    def nf(self, stage: int) -> int:
        return nf(stage, self.fmap_base, self.fmap_decay, self.fmap_max)

    def _check_res(self, res_log2: int) -> None:
        if not 2 <= res_log2 <= self.resolution_log2:
            raise ValueError(f"res_log2 must lie in [2, {self.resolution_log2}], got {res_log2}")

    def _check_labels(self, labels, n: int) -> None:
        """Conditional nets need int labels [N]; unconditional ones refuse them (no silent ignoring)."""
        name = type(self).__name__
        if not self.num_classes:
            if labels is not None:
                raise ValueError(f"{name}: this network is unconditional (num_classes=0) but labels were given")
            return
        if labels is None:
            raise ValueError(f"{name}: this network is class-conditional ({self.num_classes} classes); pass labels")
        if labels.shape != (n,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"{name}: labels must be integers of shape [{n}], got {labels.dtype} {tuple(labels.shape)}")


class Generator(_Arch):
    """z [N, latent] (+ labels [N] when conditional) -> images [N, C, 2**res_log2, 2**res_log2]
    (linear output, data in [-1, 1]).

    Class-conditional (num_classes > 0): a learned equalized-LR embedding of the label (label_embed_size
    wide, default latent_size) is concatenated to z before the latent pixel norm, where the official code
    concatenates a one-hot vector; the 4x4 dense layer then takes latent_size + label_embed_size inputs.
    forward = synthesize(latent(z, labels)): `latent` is the pixel-normalized network input, the space
    the truncation trick of generate.py works in.
    """

    def __init__(self, resolution: int = 1024, num_channels: int = 3, *, fmap_base: int = 8192,
                 fmap_decay: float = 1.0, fmap_max: int = 512, latent_size: int | None = None,
                 normalize_latents: bool = True, use_pixelnorm: bool = True, pixelnorm_eps: float = 1e-8,
                 fused_scale: bool = False, num_classes: int = 0, label_embed_size: int | None = None):
        super().__init__(resolution, num_channels, fmap_base, fmap_decay, fmap_max)
        self.latent_size = latent_size or self.nf(0)
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.label_embed_size = (label_embed_size or self.latent_size) if num_classes else 0
        if num_classes:
            self.embed = EqualizedEmbedding(num_classes, self.label_embed_size)
        self.normalize_latents, self.pixelnorm_eps = normalize_latents, pixelnorm_eps
        self.channels_last = False
        pn = dict(pixel_norm=use_pixelnorm, eps=pixelnorm_eps)
        c4 = self.nf(1)
        # 4x4: dense (gain sqrt(2)/4, as the official code), reshape to [N, c4, 4, 4], bias+lrelu+PN, conv.
        self.dense = EqualizedLinear(self.latent_size + self.label_embed_size, c4 * 16, gain=SQRT2 / 4, bias=False)
        self.dense_act = BiasAct(c4, **pn)
        self.conv4 = EqualizedConv2d(c4, c4, 3, **pn)
        self.blocks = nn.ModuleDict()
        for r in range(3, self.resolution_log2 + 1):
            cin, cout = self.nf(r - 2), self.nf(r - 1)
            self.blocks[str(2 ** r)] = nn.Sequential(
                EqualizedConv2d(cin, cout, 3, up=True, fused_scale=fused_scale, **pn),
                EqualizedConv2d(cout, cout, 3, **pn))
        self.torgb = nn.ModuleDict({str(2 ** r): EqualizedConv2d(self.nf(r - 1), num_channels, 1, gain=1.0,
                                                                 act="linear")
                                    for r in range(2, self.resolution_log2 + 1)})

    def forward(self, z: torch.Tensor, res_log2: int | None = None, alpha: float | torch.Tensor = 1.0,
                labels: torch.Tensor | None = None):
        return self.synthesize(self.latent(z, labels), res_log2, alpha)

    def latent(self, z: torch.Tensor, labels: torch.Tensor | None = None, *,
               label_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """The network input: pixel_norm(concat(z, embed(labels))) [N, latent_size + label_embed_size].
        `label_embedding` [N, label_embed_size] replaces embed(labels) (e.g. to interpolate classes)."""
        if z.ndim != 2 or z.shape[1] != self.latent_size:
            raise ValueError(f"Generator: z must be [N, {self.latent_size}], got {tuple(z.shape)}")
        if label_embedding is not None:
            if not self.num_classes:
                raise ValueError("Generator: this network is unconditional (num_classes=0) but a label embedding was given")
            if label_embedding.shape != (z.shape[0], self.label_embed_size):
                raise ValueError(f"Generator: label_embedding must be [{z.shape[0]}, {self.label_embed_size}], "
                                 f"got {tuple(label_embedding.shape)}")
            z = torch.cat([z, label_embedding.to(z.dtype)], dim=1)
        else:
            self._check_labels(labels, z.shape[0])
            if self.num_classes:
                z = torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)
        if self.normalize_latents:
            z = ops.pixel_norm(z, eps=self.pixelnorm_eps)
        return z

    def synthesize(self, w: torch.Tensor, res_log2: int | None = None, alpha: float | torch.Tensor = 1.0):
        """Images from network inputs w = latent(z, labels) (taken as they are: not normalized again)."""
        res_log2 = self.resolution_log2 if res_log2 is None else res_log2
        self._check_res(res_log2)
        width = self.latent_size + self.label_embed_size
        if w.ndim != 2 or w.shape[1] != width:
            raise ValueError(f"Generator: network input must be [N, {width}], got {tuple(w.shape)}")
        x = self.dense(w).reshape(w.shape[0], -1, 4, 4)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.conv4(self.dense_act(x))
        for r in range(3, res_log2 + 1):
            prev = x
            x = self.blocks[str(2 ** r)](x)
        img = self.torgb[str(2 ** res_log2)](x)
        if res_log2 > 2 and _fading(alpha):
            img = ops.upsample_blend(img, self.torgb[str(2 ** (res_log2 - 1))](prev), alpha)
        return img


class Discriminator(_Arch):
    """images [N, C, 2**res_log2, 2**res_log2] -> scores [N, 1] (WGAN critic, linear output).

    Class-conditional (num_classes > 0), by `cond_head`:
      'acgan'      the official D_paper with label_size > 0: the last dense layer emits 1 + num_classes
                   values, [score, class logits] -> [N, 1 + num_classes]; labels are not an input.
      'projection' Miyato & Koyama (2018): score = dense1(h) + <embed(y), h>, h the last hidden
                   features (nf(0) wide), embed an equalized-LR embedding with the scale of a dense
                   layer of fan-in nf(0); needs labels; -> [N, 1].
    """

    def __init__(self, resolution: int = 1024, num_channels: int = 3, *, fmap_base: int = 8192,
                 fmap_decay: float = 1.0, fmap_max: int = 512, mbstd_group_size: int = 4,
                 fused_scale: bool = False, num_classes: int = 0, cond_head: str = "projection"):
        super().__init__(resolution, num_channels, fmap_base, fmap_decay, fmap_max)
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if num_classes and cond_head not in COND_HEADS:
            raise ValueError(f"cond_head must be one of {COND_HEADS}, got {cond_head!r}")
        self.num_classes = num_classes
        self.cond_head = cond_head if num_classes else None
        self.mbstd_group_size = mbstd_group_size
        self.fromrgb = nn.ModuleDict({str(2 ** r): EqualizedConv2d(num_channels, self.nf(r - 1), 1)
                                      for r in range(2, self.resolution_log2 + 1)})
        self.blocks = nn.ModuleDict()
        for r in range(self.resolution_log2, 2, -1):
            c = self.nf(r - 1)
            self.blocks[str(2 ** r)] = nn.Sequential(
                EqualizedConv2d(c, c, 3),
                EqualizedConv2d(c, self.nf(r - 2), 3, down=True, fused_scale=fused_scale))
        c4 = self.nf(1)
        self.mbstd = MinibatchStdDev(mbstd_group_size) if mbstd_group_size > 1 else None
        self.conv4 = EqualizedConv2d(c4 + (1 if self.mbstd else 0), c4, 3)
        self.dense0 = EqualizedLinear(c4 * 16, self.nf(0), act="lrelu")
        acgan = self.cond_head == "acgan"
        self.dense1 = EqualizedLinear(self.nf(0), 1 + (num_classes if acgan else 0), gain=1.0)
        if self.cond_head == "projection":
            self.embed = EqualizedEmbedding(num_classes, self.nf(0), scale=1.0 / math.sqrt(self.nf(0)))

    def forward(self, img: torch.Tensor, res_log2: int | None = None, alpha: float | torch.Tensor = 1.0,
                labels: torch.Tensor | None = None):
        res_log2 = self.resolution_log2 if res_log2 is None else res_log2
        self._check_res(res_log2)
        if self.cond_head != "acgan":  # projection needs labels, unconditional refuses them (AC-GAN: optional)
            self._check_labels(labels, img.shape[0])
        size = 2 ** res_log2
        if img.ndim != 4 or tuple(img.shape[1:]) != (self.num_channels, size, size):
            raise ValueError(f"Discriminator: expected images [N, {self.num_channels}, {size}, {size}] at "
                             f"res_log2={res_log2}, got {tuple(img.shape)}")
        x = self.fromrgb[str(size)](img)
        if res_log2 > 2:
            x = self.blocks[str(size)](x)
            if _fading(alpha):
                old = self.fromrgb[str(size // 2)](ops.downsample2x(img))
                x = ops.lerp(old, x, alpha)
            for r in range(res_log2 - 1, 2, -1):
                x = self.blocks[str(2 ** r)](x)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv4(x)
        x = self.dense0(x.flatten(1))
        if self.cond_head == "projection":
            return self.dense1(x) + (self.embed(labels).to(x.dtype) * x).sum(dim=1, keepdim=True)
        return self.dense1(x)


def use_channels_last(*networks: nn.Module, enabled: bool = True) -> None:
    """Lay G / D out for channels_last (or back to NCHW): 4-D parameters converted in place, and a
    Generator's 4x4 input laid out so. The resampling ops keep their input's layout, so every
    activation then stays channels_last: cuDNN runs NHWC kernels without transposes and the fused
    ops' channel reductions are contiguous. Call it before any optimizer state or gradient exists.
    (Converting the reals alone left G, and D on the fakes, in NCHW.)"""
    fmt = torch.channels_last if enabled else torch.contiguous_format
    for net in networks:
        for p in net.parameters():  # in place, as Module.to does: the Parameter objects are kept
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=fmt)
        for module in net.modules():
            if isinstance(module, Generator):
                module.channels_last = enabled


def count_parameters(module: nn.Module, res_log2: int | None = None) -> int:
    """Parameters of the network as grown to res_log2 (all toRGB/fromRGB layers up to it included)."""
    if res_log2 is None:
        return sum(p.numel() for p in module.parameters())
    total = 0
    for name, p in module.named_parameters():
        parts = name.split(".")
        if parts[0] in ("blocks", "torgb", "fromrgb") and int(parts[1]) > 2 ** res_log2:
            continue
        total += p.numel()
    return total
