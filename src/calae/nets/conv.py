"""Residual convolutional encoder / decoder scaled to the resolution (Soft-IntroVAE style).

Layout follows Daniel & Tamar (2021): a 5x5 stem, residual blocks with average-pool downsampling
(nearest upsampling in the decoder), a linear layer to/from the latent and a linear image output.
BatchNorm is off by default: at the small batches users train with (seed 003: batch 6) its
train/eval statistics differ and reconstructions change between training and inference.
"""
from __future__ import annotations

import torch
from torch import nn


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
    def __init__(self, cin: int, cout: int, norm: bool = False):
        super().__init__()
        self.skip = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=not norm)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=not norm)
        self.norm1 = nn.BatchNorm2d(cout) if norm else nn.Identity()
        self.norm2 = nn.BatchNorm2d(cout) if norm else nn.Identity()
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x):
        h = self.act(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return self.act(h + self.skip(x))


class ConvEncoder(nn.Module):
    """x [N, C, R, R] -> [N, out_dim] (out_dim = 2*z for a Gaussian posterior)."""

    def __init__(self, channels: int, resolution: int, out_dim: int, base: int = 32, max_ch: int = 256,
                 norm: bool = False):
        super().__init__()
        chans, size = plan_levels(resolution, base, max_ch)
        self.stem = nn.Sequential(nn.Conv2d(channels, chans[0], 5, padding=2), nn.LeakyReLU(0.2))
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
                 norm: bool = False):
        super().__init__()
        chans, size = plan_levels(resolution, base, max_ch)
        self.size, self.c0 = size, chans[-1]
        self.fc = nn.Sequential(nn.Linear(z_dim, chans[-1] * size * size), nn.LeakyReLU(0.2))
        blocks = [ResBlock(chans[-1], chans[-1], norm)]
        for cin, cout in zip(chans[::-1][:-1], chans[::-1][1:]):
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), ResBlock(cin, cout, norm)]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(chans[0], channels, 5, padding=2)

    def forward(self, z):
        h = self.fc(z).view(z.shape[0], self.c0, self.size, self.size)  # [N, C_last, s, s]
        return self.out(self.blocks(h))
