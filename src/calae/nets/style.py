"""Style-based networks of StyleALAE (Pidhorskyi et al., CVPR 2020, §4 and Fig. 3): the StyleGAN-v1
generator (Karras et al., CVPR 2019), the encoder that reads styles back out of instance-norm
statistics, the mapping network F, the latent discriminator D, style mixing, truncation and the
progressive-growing schedule.

Levels ("lod", as in the official code): level k works at 4·2^k px; k = 0 is 4×4. A generator for
R px has n = log2(R) − 1 levels and 2n style inputs (two AdaIN per level). During the fade-in of
level k (0 < α < 1) the image is lerp(upsample(rgb_{k−1}), rgb_k, α) in G, and in E the input at
level k is lerp(from_rgb_{k−1}(avgpool(x)), block_k(from_rgb_k(x)), α) with block k's style
contributions scaled by α (the official EncoderDefault.encode2 / Generator.decode2).

Equalized layers everywhere (``calae.nets.layers``); F and D use lrmul 0.1 (ALAE's MappingF and
MappingD). Noise: every noise input gets a learned per-channel scale (zero at init, StyleGAN). The
``noise`` argument of the generator is "random" (fresh N(0, 1) maps from torch's global RNG, so a
training state's saved RNG makes resume exact), None (no noise) or a list of tensors from
``make_noise`` (frozen noise: G is then a deterministic function of w, as CALAE's Hessian penalty
needs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Blur, EqConv2d, EqLinear, downsample2x, lrelu, pixel_norm, upsample2x

__all__ = ["MappingNetwork", "LatentDiscriminator", "StyleGenerator", "StyleEncoder", "GrowthSchedule",
           "mix_styles", "truncate", "broadcast_styles", "num_levels", "level_channels"]


def num_levels(resolution: int) -> int:
    """Levels of a style network for `resolution` px (4 -> 1, 8 -> 2, ..., 64 -> 5)."""
    lv = int(round(math.log2(resolution))) - 1
    if resolution < 4 or 4 * 2 ** (lv - 1) != resolution:
        raise ValueError(f"style networks need a power-of-two resolution >= 4, got {resolution}")
    return lv


def level_channels(resolution: int, base: int, max_ch: int) -> list[int]:
    """Feature maps per level, coarse to fine: `base` at full resolution, doubling per halving, capped."""
    n = num_levels(resolution)
    return [min(max_ch, base * 2 ** (n - 1 - k)) for k in range(n)]


# ---- F and D ---------------------------------------------------------------------------------
class MappingNetwork(nn.Module):
    """F: z -> w. Pixel norm of z, then `layers` equalized linear layers with LeakyReLU 0.2 after
    each one (StyleGAN's G_mapping and ALAE's MappingF, lrmul 0.1). layers = 0 is the identity (the
    official MNIST setup, ``mnist_ref`` branch)."""

    def __init__(self, z_dim: int, w_dim: int, layers: int = 8, hidden: int | None = None, lrmul: float = 0.1,
                 normalize: bool = True):
        super().__init__()
        hidden = hidden or w_dim
        if layers == 0 and z_dim != w_dim:
            raise ValueError(f"an identity mapping (mapping_layers=0) needs z_dim == w_dim, got {z_dim}, {w_dim}")
        dims = [z_dim] + [hidden] * max(0, layers - 1) + [w_dim]
        self.layers = nn.ModuleList(EqLinear(a, b, lrmul=lrmul) for a, b in zip(dims[:-1], dims[1:])) if layers else \
            nn.ModuleList()
        self.normalize = normalize and layers > 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(z) if self.normalize else z
        for layer in self.layers:
            x = lrelu(layer(x))
        return x  # [N, w_dim]


class LatentDiscriminator(nn.Module):
    """D: w -> logit [N]. `layers` equalized linear layers, lrmul 0.1 (ALAE's MappingD).

    ``linear=True`` drops the activations: the official code's D is three linear layers with no
    non-linearity, i.e. a linear function of w (kept "for consistency" by its author, issue #44).
    The default is the non-linear MLP with LeakyReLU 0.2 (methods.md §3: decide; we decide non-linear).
    """

    def __init__(self, w_dim: int, layers: int = 3, hidden: int | None = None, lrmul: float = 0.1,
                 linear: bool = False):
        super().__init__()
        hidden = hidden or w_dim
        dims = [w_dim] + [hidden] * (layers - 1) + [1]
        self.layers = nn.ModuleList(EqLinear(a, b, lrmul=lrmul) for a, b in zip(dims[:-1], dims[1:]))
        self.linear = linear

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        x = w
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1 and not self.linear:
                x = lrelu(x)
        return x.squeeze(1)


# ---- style mixing and truncation ---------------------------------------------------------------
def broadcast_styles(w: torch.Tensor, num_ws: int) -> torch.Tensor:
    """[N, w_dim] -> [N, num_ws, w_dim] (the same w for every AdaIN); [N, L, w_dim] passes through."""
    if w.dim() == 3:
        if w.shape[1] != num_ws:
            raise ValueError(f"expected {num_ws} per-layer styles, got {w.shape[1]}")
        return w
    return w[:, None, :].expand(w.shape[0], num_ws, w.shape[1])


def mix_styles(ws1: torch.Tensor, ws2: torch.Tensor, cutoff: int) -> torch.Tensor:
    """Style mixing (StyleGAN §3.1): layers [0, cutoff) take ws1, layers [cutoff, L) take ws2."""
    idx = torch.arange(ws1.shape[1], device=ws1.device)[None, :, None]
    return torch.where(idx < cutoff, ws1, ws2)


def truncate(ws: torch.Tensor, w_avg: torch.Tensor, psi: float, cutoff: int | None = None) -> torch.Tensor:
    """Truncation trick (StyleGAN §B): w' = w̄ + ψ(w − w̄) on layers [0, cutoff). ψ = 1 is the
    identity, ψ = 0 gives w̄ everywhere it applies."""
    if psi == 1.0:
        return ws
    L = ws.shape[1]
    cutoff = L if cutoff is None else min(int(cutoff), L)
    coef = torch.where(torch.arange(L, device=ws.device) < cutoff, torch.tensor(float(psi), device=ws.device),
                       torch.tensor(1.0, device=ws.device))[None, :, None]
    return torch.lerp(w_avg.to(ws.dtype)[None, None, :].expand_as(ws), ws, coef.to(ws.dtype))


# ---- the generator -----------------------------------------------------------------------------
def _adain(x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """x [N, C, H, W] (instance-normalised) modulated by style [N, 2C]: x·(1 + s) + b."""
    s, b = style[:, :, None, None].chunk(2, dim=1)
    return torch.addcmul(b, x, s + 1.0)


def _instance_stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over H, W (population, eps inside the root). [N, C, 1, 1] each."""
    m = x.mean(dim=(2, 3), keepdim=True)
    var = (x - m).pow(2).mean(dim=(2, 3), keepdim=True)
    return m, torch.sqrt(var + eps)


class _GBlock(nn.Module):
    """One generator level: [upsample, conv3×3, blur] (not on level 0, which starts from the
    learned constant), noise, bias, LeakyReLU, instance norm, AdaIN; conv3×3, noise, bias, LeakyReLU,
    instance norm, AdaIN (StyleGAN v1 synthesis block; ALAE's DecodeBlock)."""

    def __init__(self, cin: int, cout: int, w_dim: int, first: bool):
        super().__init__()
        self.first = first
        self.conv1 = None if first else EqConv2d(cin, cout, 3, bias=False)
        self.blur = None if first else Blur(cout)
        self.conv2 = EqConv2d(cout, cout, 3, bias=False)
        self.noise1 = nn.Parameter(torch.zeros(1, cout, 1, 1))
        self.noise2 = nn.Parameter(torch.zeros(1, cout, 1, 1))
        self.bias1 = nn.Parameter(torch.zeros(1, cout, 1, 1))
        self.bias2 = nn.Parameter(torch.zeros(1, cout, 1, 1))
        self.style1 = EqLinear(w_dim, 2 * cout, gain=1.0)
        self.style2 = EqLinear(w_dim, 2 * cout, gain=1.0)

    def forward(self, x, w1, w2, n1, n2):
        if not self.first:
            x = self.blur(self.conv1(upsample2x(x)))
        if n1 is not None:
            x = x + self.noise1 * n1.to(x.dtype)
        x = lrelu(x + self.bias1)
        m, s = _instance_stats(x, 1e-8)
        x = _adain((x - m) / s, self.style1(w1))
        x = self.conv2(x)
        if n2 is not None:
            x = x + self.noise2 * n2.to(x.dtype)
        x = lrelu(x + self.bias2)
        m, s = _instance_stats(x, 1e-8)
        return _adain((x - m) / s, self.style2(w2))


class StyleGenerator(nn.Module):
    """G: per-layer styles [N, 2n, w_dim] (or one w [N, w_dim]) -> image at level `lod`.

    ``forward(w, lod=None, alpha=1.0, noise="random", features=False)``: lod None is the last level;
    with features=True also returns the output of every level (CALAE, probes).
    """

    def __init__(self, w_dim: int, channels: int, resolution: int, base: int = 32, max_ch: int = 256,
                 rgb_gain: float = 1.0):
        super().__init__()
        self.levels = num_levels(resolution)
        self.resolution, self.w_dim, self.channels = resolution, w_dim, channels
        self.chans = level_channels(resolution, base, max_ch)
        self.num_ws = 2 * self.levels
        self.const = nn.Parameter(torch.ones(1, self.chans[0], 4, 4))
        self.blocks = nn.ModuleList(
            _GBlock(self.chans[max(k - 1, 0)], self.chans[k], w_dim, first=k == 0) for k in range(self.levels))
        self.to_rgb = nn.ModuleList(EqConv2d(c, channels, 1, gain=rgb_gain) for c in self.chans)

    def make_noise(self, n: int, lod: int | None = None, generator: torch.Generator | None = None,
                   device=None) -> list[torch.Tensor]:
        """Noise maps for levels 0..lod: two [n, 1, r, r] tensors per level (freeze them to make G
        deterministic). Drawn on the CPU from `generator` (or the global RNG) then moved."""
        lod = self.levels - 1 if lod is None else lod
        out = []
        for k in range(lod + 1):
            r = 4 * 2 ** k
            for _ in range(2):
                out.append(torch.randn(n, 1, r, r, generator=generator).to(device or self.const.device))
        return out

    def forward(self, w: torch.Tensor, lod: int | None = None, alpha: float = 1.0, noise="random",
                features: bool = False):
        lod = self.levels - 1 if lod is None else int(lod)
        ws = broadcast_styles(w, self.num_ws)
        n = ws.shape[0]
        if isinstance(noise, str):
            if noise != "random":
                raise ValueError(f"noise must be 'random', None or a list of tensors, got {noise!r}")
            noise = self.make_noise(n, lod, None, ws.device)
        x = self.const.expand(n, -1, -1, -1)
        feats, prev = [], None
        for k in range(lod + 1):
            if k == lod and alpha < 1.0 and lod > 0:
                prev = self.to_rgb[k - 1](x)  # [N, C, r/2, r/2]
            n1 = n2 = None
            if noise is not None:
                n1, n2 = noise[2 * k], noise[2 * k + 1]
            x = self.blocks[k](x, ws[:, 2 * k], ws[:, 2 * k + 1], n1, n2)
            feats.append(x)
        img = self.to_rgb[lod](x)
        if prev is not None:
            # one dtype: under bf16 autocast the two branches can differ (lerp refuses mixed dtypes)
            img = torch.lerp(upsample2x(prev).to(img.dtype), img, alpha)
        return (img, feats) if features else img


# ---- the encoder -------------------------------------------------------------------------------
class _EBlock(nn.Module):
    """One encoder level (ALAE's EncodeBlock, non-fused): conv3×3, bias, LeakyReLU, [style 1 =
    mean and std per channel], instance norm; blur, conv3×3, 2×2 average pool, bias, LeakyReLU,
    [style 2], instance norm. Each style vector [N, 2C] is mapped to w by its own linear layer."""

    def __init__(self, cin: int, cout: int, w_dim: int):
        super().__init__()
        self.conv1 = EqConv2d(cin, cin, 3, bias=False)
        self.bias1 = nn.Parameter(torch.zeros(1, cin, 1, 1))
        self.blur = Blur(cin)
        self.conv2 = EqConv2d(cin, cout, 3, bias=False)
        self.bias2 = nn.Parameter(torch.zeros(1, cout, 1, 1))
        self.style1 = EqLinear(2 * cin, w_dim)
        self.style2 = EqLinear(2 * cout, w_dim)

    def forward(self, x):
        x = lrelu(self.conv1(x) + self.bias1)
        m, s = _instance_stats(x, 1e-8)
        w1 = self.style1(torch.cat([m, s], dim=1).flatten(1))  # [N, w_dim]
        x = (x - m) / s
        x = lrelu(downsample2x(self.conv2(self.blur(x))) + self.bias2)
        m, s = _instance_stats(x, 1e-8)
        w2 = self.style2(torch.cat([m, s], dim=1).flatten(1))
        return (x - m) / s, w1, w2


class StyleEncoder(nn.Module):
    """E: image at level `lod` -> w [N, w_dim], the sum over levels of linear maps of the per-channel
    mean/std taken before each instance norm (ALAE §4, "style encoder").

    Level k reads a 4·2^k px input and halves it; its channels mirror the generator's level k.
    ``forward(x, lod=None, alpha=1.0, features=False)``; features=True also returns the normalised
    feature map after every level, finest first (CALAE's PatchNCE reads them).
    """

    def __init__(self, w_dim: int, channels: int, resolution: int, base: int = 32, max_ch: int = 256):
        super().__init__()
        self.levels = num_levels(resolution)
        self.resolution, self.w_dim = resolution, w_dim
        gch = level_channels(resolution, base, max_ch)
        # level k maps gch[k] -> gch[k-1] channels (4 px level: gch[0] -> gch[0])
        self.chans = [(gch[k], gch[max(k - 1, 0)]) for k in range(self.levels)]
        self.from_rgb = nn.ModuleList(EqConv2d(channels, cin, 1) for cin, _ in self.chans)
        self.blocks = nn.ModuleList(_EBlock(cin, cout, w_dim) for cin, cout in self.chans)

    def forward(self, x: torch.Tensor, lod: int | None = None, alpha: float = 1.0, features: bool = False):
        lod = self.levels - 1 if lod is None else int(lod)
        expect = 4 * 2 ** lod
        if x.shape[-1] != expect:
            raise ValueError(f"encoder at level {lod} expects {expect} px inputs, got {x.shape[-1]}")
        h = lrelu(self.from_rgb[lod](x))
        h, w1, w2 = self.blocks[lod](h)
        feats = [h]
        if alpha < 1.0 and lod > 0:
            w = (w1 + w2) * alpha
            low = lrelu(self.from_rgb[lod - 1](downsample2x(x)))
            # the block's output is fp32 (its norm) while from_rgb's is bf16 under autocast
            h = torch.lerp(low.to(h.dtype), h, alpha)
        else:
            w = w1 + w2
        for k in range(lod - 1, -1, -1):
            h, w1, w2 = self.blocks[k](h)
            feats.append(h)
            w = w + w1 + w2
        return (w, feats) if features else w


# ---- progressive growing -----------------------------------------------------------------------
@dataclass(frozen=True)
class GrowthSchedule:
    """Progressive growing (PGGAN §3, ALAE's LODDriver) as a pure function of kimg.

    Level k (4·2^k px) is trained from k·phase_kimg to (k+1)·phase_kimg; for k > 0 the first
    `fade` fraction of that phase (ALAE: half) fades the new level in, α going 0 -> 1, with the
    official half-cosine ramp α = ½ − ½cos(πt) or a linear ramp; then α = 1. After the last level
    the schedule stays there. phase_kimg = 0 disables growing (always the last level, α = 1).
    Being a pure function of the images seen, it makes a resumed run identical to an
    uninterrupted one, also in the middle of a fade-in.
    """

    levels: int
    phase_kimg: float = 0.0
    fade: float = 0.5
    ramp: str = "cosine"  # cosine (official) | linear (PGGAN)

    def at(self, kimg: float) -> tuple[int, float]:
        """(level, alpha) to train with after `kimg` thousand images."""
        last = self.levels - 1
        if self.phase_kimg <= 0:
            return last, 1.0
        k = min(last, int(math.floor(kimg / self.phase_kimg + 1e-9)))
        if k == 0 or self.fade <= 0:
            return k, 1.0
        t = (kimg - k * self.phase_kimg) / (self.fade * self.phase_kimg)
        if t >= 1.0:
            return k, 1.0
        t = max(t, 0.0)
        alpha = t if self.ramp == "linear" else 0.5 - 0.5 * math.cos(math.pi * t)
        return k, float(alpha)

    def resolution(self, kimg: float) -> int:
        return 4 * 2 ** self.at(kimg)[0]
