"""Reconstruction quality: MSE, PSNR and SSIM between images x and y: [N, C, H, W] floats.

- MSE: mean over all elements.
- PSNR = 10 log10(L^2 / MSE_i) per image, averaged over images (L = data_range; an exact copy's
  MSE is floored at 1e-10, i.e. 100 dB for L = 1).
- SSIM (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 2004): Gaussian window 11x11, sigma 1.5,
  K1 = 0.01, K2 = 0.03, C1 = (K1 L)^2, C2 = (K2 L)^2, weighted (population) local moments,
  "valid" filtering as in the authors' MATLAB code (no padding: the map is (H-10) x (W-10)),
  per channel, mean over the map, the channels and the images. For images under 11 px the window
  shrinks to the largest odd size that fits (sigma unchanged). Computed in float64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    return x.detach().double().cpu(), y.detach().double().cpu()


def mse(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = _check(x, y)
    return float((x - y).square().mean())


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> float:
    x, y = _check(x, y)
    per_image = (x - y).square().reshape(x.shape[0], -1).mean(1).clamp_min(1e-10)
    return float((10.0 * torch.log10(data_range**2 / per_image)).mean())


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-t.square() / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> float:
    x, y = _check(x, y)
    if x.dim() != 4:
        raise ValueError(f"ssim needs [N, C, H, W] images, got {tuple(x.shape)}")
    n, c, h, w = x.shape
    size = min(win_size, h if h % 2 else h - 1, w if w % 2 else w - 1)
    g = gaussian_window(size, sigma)
    gh, gv = g.view(1, 1, 1, size).expand(c, 1, 1, size), g.view(1, 1, size, 1).expand(c, 1, size, 1)

    def filt(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid
        return F.conv2d(F.conv2d(t, gh, groups=c), gv, groups=c)

    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(smap.mean())

