"""Residual convolutional encoder / decoder scaled to the resolution (Soft-IntroVAE style).

Layout follows Daniel & Tamar (2021): a 5x5 stem, residual blocks with average-pool downsampling
(nearest upsampling in the decoder), a linear layer to/from the latent and a linear image output.
Normalisation in the residual blocks (``norm``): "group" (GroupNorm, 8 groups; per image, so
training and inference compute the same thing at any batch size), "batch" (the official
Soft-IntroVAE's BatchNorm; at the small batches users train with, seed 003's batch 6, its train/eval
statistics differ and reconstructions change between training and inference) or "none".
GroupNorm is what the VAE family uses by default. The demo's VAE (32 px fractals, 12 kimg) learnt
luminance but hardly any colour without it: reconstruction chroma spread 0.013 at lr 5e-4 and
0.093 at lr 2e-4, against 0.221 with GroupNorm at lr 2e-4 (data 0.31; MSE 0.159 / 0.151 / 0.119).
"""
from __future__ import annotations

import math

import torch
from torch import nn

NORMS = ("none", "group", "batch")


def norm_name(norm: bool | str | None) -> str:
    """Normalisation choice from a name or the older bool (True: BatchNorm, False: none)."""
    if norm is None or norm is False:
        return "none"
    if norm is True:
        return "batch"
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")
    return norm


def norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


def plan_levels(resolution: int, base: int = 32, max_ch: int = 256) -> tuple[list[int], int]:
    """Channel list per level and the final spatial size: halve while the size stays even and >= 4.

    28 -> 14 -> 7 (two levels); 64 -> 32 -> 16 -> 8 -> 4 (four levels).
    """
    size, chans = resolution, [base]
    while size % 2 == 0 and size // 2 >= 4:
        size //= 2
        chans.append(min(chans[-1] * 2, max_ch))
    return chans, size


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, norm: bool | str = "none"):
        super().__init__()
        norm = norm_name(norm)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none")
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=norm == "none")
        self.norm1 = norm_layer(norm, cout)
        self.norm2 = norm_layer(norm, cout)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x):
        h = self.act(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return self.act(h + self.skip(x))


#: the stems, and how many times each halves the image before the residual levels
STEM_HALVINGS = {"full": 0, "strided": 1, "strided4": 2}
STEMS = tuple(STEM_HALVINGS)


def _check_stem(stem: str, resolution: int) -> int:
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {', '.join(STEMS)}; got {stem!r}")
    k = STEM_HALVINGS[stem]
    if resolution % (2 ** k):
        raise ValueError(f"stem={stem} needs an image size divisible by {2 ** k}; got {resolution} px")
    return k


def _stem_mid(c0: int) -> int:
    """Channels between the two stride-2 convs of ``strided4`` (at R/2)."""
    return max(c0 // 2, 8)


def resolve_stem(stem: str, channels: int, resolution: int) -> str:
    """``stem=auto`` from the data: ``strided`` for one-channel images of at most 32 px with an
    even size (MNIST-like: the full-resolution first block of ``full`` spends about 60 % of the
    nets' FLOPs on a 28 px digit), ``full`` for everything else."""
    if stem != "auto":
        return stem
    return "strided" if channels == 1 and resolution <= 32 and resolution % 2 == 0 else "full"


class ConvEncoder(nn.Module):
    """x [N, C, R, R] -> [N, out_dim] (out_dim = 2*z for a Gaussian posterior).

    ``stem``: ``full`` (a 5x5 conv at full resolution, then the residual levels from R) or
    ``strided`` (a 4x4 stride-2 conv to R/2, the levels from there: about a quarter of the
    FLOPs; the decoder ends in the matching 4x4 stride-2 transposed conv) or ``strided4`` (two
    such convs to R/4, for 256 px on a CPU; the decoder ends in two transposed convs).
    """

    def __init__(self, channels: int, resolution: int, out_dim: int, base: int = 32, max_ch: int = 256,
                 norm: bool | str = "none", stem: str = "full"):
        super().__init__()
        k = _check_stem(stem, resolution)
        chans, size = plan_levels(resolution >> k, base, max_ch)
        if k == 0:
            layers = [nn.Conv2d(channels, chans[0], 5, padding=2), nn.LeakyReLU(0.2)]
        elif k == 1:
            layers = [nn.Conv2d(channels, chans[0], 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        else:
            mid = _stem_mid(chans[0])
            layers = [nn.Conv2d(channels, mid, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                      nn.Conv2d(mid, chans[0], 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.stem = nn.Sequential(*layers)
        blocks = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            blocks += [ResBlock(cin, cout, norm), nn.AvgPool2d(2)]
        blocks.append(ResBlock(chans[-1], chans[-1], norm))
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(chans[-1] * size * size, out_dim)

    def features(self, x) -> list[torch.Tensor]:
        """Feature maps after the stem and after each block (for patch losses and probes)."""
        feats, h = [], self.stem(x)
        feats.append(h)
        for layer in self.blocks:
            h = layer(h)
            if isinstance(layer, ResBlock):
                feats.append(h)
        return feats

    def forward(self, x):
        h = self.blocks(self.stem(x))  # [N, C_last, s, s]
        return self.fc(h.flatten(1))


class ConvDecoder(nn.Module):
    """z [N, z_dim] -> x [N, C, R, R] (linear output; the loss decides the output range)."""

    def __init__(self, channels: int, resolution: int, z_dim: int, base: int = 32, max_ch: int = 256,
                 norm: bool | str = "none", stem: str = "full"):
        super().__init__()
        k = _check_stem(stem, resolution)
        chans, size = plan_levels(resolution >> k, base, max_ch)
        self.size, self.c0 = size, chans[-1]
        self.fc = nn.Sequential(nn.Linear(z_dim, chans[-1] * size * size), nn.LeakyReLU(0.2))
        blocks = [ResBlock(chans[-1], chans[-1], norm)]
        for cin, cout in zip(chans[::-1][:-1], chans[::-1][1:]):
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), ResBlock(cin, cout, norm)]
        self.blocks = nn.Sequential(*blocks)
        if k == 0:
            self.out = nn.Conv2d(chans[0], channels, 5, padding=2)
        elif k == 1:
            self.out = nn.ConvTranspose2d(chans[0], channels, 4, stride=2, padding=1)
        else:
            mid = _stem_mid(chans[0])
            self.out = nn.Sequential(nn.ConvTranspose2d(chans[0], mid, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                                     nn.ConvTranspose2d(mid, channels, 4, stride=2, padding=1))

    def forward(self, z):
        h = self.fc(z).view(z.shape[0], self.c0, self.size, self.size)  # [N, C_last, s, s]
        return self.out(self.blocks(h))
