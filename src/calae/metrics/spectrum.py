"""High-frequency power of images: blur shows as missing power at high spatial frequencies.

``hf_power(x)``: per image, the luma (ITU-R 601 weights; one-channel images as they are) in [0, 1]
minus its mean, a Hann window against the edges' wrap-around, the 2-D power spectrum |FFT|², and
the share of power at radial frequencies above ``cutoff`` cycles per pixel (0.25 = half of
Nyquist) plus that power's absolute mean per pixel. Averaged over the images.

The registered metric ``hf_power`` compares n samples with n real images:
  ``ratio``      mean HF power of samples / of the data (1: as sharp as the data, < 1: blurrier,
                 > 1: noisier or more contrasted at fine scales),
  ``frac_fake``, ``frac_real``  the HF share of the total (contrast-free), and ``frac_ratio``.
"""
from __future__ import annotations

import torch

from .suite import Context, metric

CUTOFF = 0.25  # cycles per pixel; Nyquist is 0.5


def _luma(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float64 [N, H, W] in [0, 1]."""
    x = x.double() / 255.0 if x.dtype == torch.uint8 else x.double()
    if x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)
        return (x * w).sum(1)
    return x.mean(1)


def hf_power(x: torch.Tensor, cutoff: float = CUTOFF, batch_size: int = 512) -> tuple[float, float]:
    """(mean HF power per pixel, mean HF share of the total power) of images x [N, C, H, W]."""
    n, _, h, w = x.shape
    win = torch.outer(torch.hann_window(h, periodic=False, dtype=torch.float64),
                      torch.hann_window(w, periodic=False, dtype=torch.float64))
    fy = torch.fft.fftfreq(h, dtype=torch.float64).view(h, 1)
    fx = torch.fft.fftfreq(w, dtype=torch.float64).view(1, w)
    high = (fy.square() + fx.square()).sqrt() > cutoff  # [H, W]
    hf, frac = [], []
    for s in range(0, n, batch_size):
        g = _luma(x[s:s + batch_size].cpu())
        g = (g - g.mean(dim=(1, 2), keepdim=True)) * win
        p = torch.fft.fft2(g).abs().square() / (h * w)  # [B, H, W]
        tot = p.flatten(1).sum(1).clamp_min(1e-20)
        hi = p[:, high].sum(1)
        hf.append(hi / (h * w))
        frac.append(hi / tot)
    return float(torch.cat(hf).mean()), float(torch.cat(frac).mean())


@metric("hf_power", kinds=("image",))
def hf_power_metric(ctx: Context) -> dict[str, float]:
    """High-frequency power (above a quarter cycle per pixel) of samples relative to the data."""
    p_real, f_real = hf_power(ctx.real()[0])
    p_fake, f_fake = hf_power(ctx.fake_uint8())
    return {"ratio": p_fake / max(p_real, 1e-20), "frac_fake": f_fake, "frac_real": f_real,
            "frac_ratio": f_fake / max(f_real, 1e-20)}
