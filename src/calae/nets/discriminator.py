"""Image discriminator whose intermediate feature maps are reachable (VAE-GAN's "Dis_l", GANs).

The trunk is laid out as ``ConvEncoder`` (a 5x5 stem, residual blocks with average-pool
downsampling, a last block at the smallest size; ``plan_levels`` scales it to the resolution),
followed by a hidden linear layer and one logit. Larsen et al. (2016) measure reconstructions in
the features of a middle layer of D; ``run(x, layer)`` returns those features together with the
logit from one forward, so a loss needs no second pass through D for them. Feature index ``i``
counts the stem as 0 and each residual block after it (negative indices from the end: -1 is the
last block, at resolution/8 for 32 and 64 px, the depth the official CelebA script uses).

Normalisation defaults to none: a GAN discriminator with R1 is usually unnormalised, and
BatchNorm would mix real and generated items of one batch.

Minibatch standard deviation (Karras et al. 2018, PGGAN §3): before the linear head, one feature
map is appended holding, for each group of ``mbstd_group`` consecutive items, the standard
deviation over the group of every feature averaged to one number. A generator that collapses
to a few images gives low values there, which D can see; without it, small GANs here collapsed
(``benchmarks/bench_vae_gan.py``). Groups never cross the boundary of a set: phases that
concatenate real and generated items pass ``set_size`` (every set that long), and the group is
the largest divisor of it not above ``mbstd_group``, so D cannot tell a set from the mixture.
"""
from __future__ import annotations

import torch
from torch import nn

from .conv import ResBlock, plan_levels


class ImageDiscriminator(nn.Module):
    """x [N, C, R, R] -> logit [N] (float32); ``run(x, layer)`` -> (features at ``layer``, logit)."""

    def __init__(self, channels: int, resolution: int, base: int = 32, max_ch: int = 256,
                 norm: bool | str = "none", hidden: int = 256, mbstd_group: int = 4):
        super().__init__()
        self.mbstd_group = int(mbstd_group)  # 0: no minibatch-stddev feature
        chans, size = plan_levels(resolution, base, max_ch)
        self.stem = nn.Sequential(nn.Conv2d(channels, chans[0], 5, padding=2), nn.LeakyReLU(0.2))
        blocks = [ResBlock(cin, cout, norm) for cin, cout in zip(chans[:-1], chans[1:])]
        blocks.append(ResBlock(chans[-1], chans[-1], norm))
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AvgPool2d(2)
        self.n_down = len(chans) - 1  # the first n_down blocks are followed by a 2x downsampling
        extra = 1 if self.mbstd_group > 0 else 0
        self.fc = nn.Sequential(nn.Linear((chans[-1] + extra) * size * size, hidden), nn.LeakyReLU(0.2))
        self.out = nn.Linear(hidden, 1)

    @property
    def num_features(self) -> int:
        """How many feature maps ``run`` can return: the stem and every residual block."""
        return 1 + len(self.blocks)

    def feature_index(self, layer: int) -> int:
        n = self.num_features
        if not -n <= layer < n:
            raise ValueError(f"dis_layer must lie in [{-n}, {n - 1}] for this discriminator; got {layer}")
        return layer % n

    def group_size(self, set_size: int) -> int:
        """The minibatch-stddev group: the largest divisor of ``set_size`` that is <= mbstd_group."""
        g = min(self.mbstd_group, set_size)
        while set_size % g:
            g -= 1
        return g

    def mbstd(self, h: torch.Tensor, set_size: int) -> torch.Tensor:
        """h [N, C, s, s] -> [N, C + 1, s, s]: each item's group's mean feature stddev appended."""
        n, c, hh, ww = h.shape
        g = self.group_size(set_size)
        if g < 2:  # a group of one has no spread: a zero map keeps the shapes
            return torch.cat([h, h.new_zeros(n, 1, hh, ww)], 1)
        y = h.float().reshape(n // g, g, c, hh, ww)  # consecutive items form a group
        std = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # [N/g]
        std = std.repeat_interleave(g).reshape(n, 1, 1, 1).expand(n, 1, hh, ww).to(h.dtype)
        return torch.cat([h, std], 1)

    def run(self, x: torch.Tensor, layer: int | None = None,
            set_size: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """One forward: (the feature map at ``layer`` [N, C_l, H_l, W_l], or None, and the logit [N]).
        ``set_size``: x is a concatenation of sets of this many items each (real, generated, ...);
        minibatch-stddev groups stay inside a set. Default: x is one set."""
        want = None if layer is None else self.feature_index(layer)
        h = self.stem(x)
        feat = h if want == 0 else None
        for i, block in enumerate(self.blocks):
            h = block(h)
            if want == i + 1:
                feat = h
            if i < self.n_down:
                h = self.pool(h)
        if self.mbstd_group > 0:
            n = x.shape[0] if set_size is None else int(set_size)
            if x.shape[0] % n:
                raise ValueError(f"set_size {n} does not divide the batch of {x.shape[0]}")
            h = self.mbstd(h, n)
        logit = self.out(self.fc(h.flatten(1))).float().squeeze(1)
        return feat, logit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[1]
