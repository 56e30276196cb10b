"""2-D toy metrics, reproducing the Soft-IntroVAE evaluation (Daniel & Tamar, CVPR 2021; official
taldatech/soft-intro-vae-pytorch, ``soft_intro_vae_2d/train_soft_intro_vae_2d.py``: functions
``calculate_sample_kl`` and ``calculate_elbo_with_grid``, read and re-implemented here).

Histogram KL / JSD (``hist_kl_jsd``), as the official code computes them:
- 5,000 real and 5,000 generated points; ``numpy.histogram2d(bins=100, density=True)`` over the
  square [-r, r]^2 with r = 2 for 8Gaussians and r = 4 for 2spirals, checkerboard and rings (its
  ``xy_range = (-2*scale, 2*scale)``, scale 1 for 8Gaussians and 2 otherwise). Points outside the
  square are dropped; ``density=True`` divides counts by (points inside) x (bin area), so the
  histograms are *densities*, not probabilities.
- KL(real || fake) = F.kl_div(log(fake + 1e-14), real, reduction="batchmean"), i.e.
  sum over bins with real > 0 of real * (ln real - ln(fake + 1e-14)), divided by 100 (batchmean
  divides by the first dimension of the 100x100 array). Natural log.
- "JSD" = 0.5 * (kl_div(log(real + 1e-14), M) + kl_div(log(fake + 1e-14), M)), M = (real + fake) / 2,
  i.e. 0.5 * (KL(M || real) + KL(M || fake)) on the same densities with the same /100.
  Note this is *not* the textbook JSD (which is 0.5 KL(real || M) + 0.5 KL(fake || M)): a bin
  holding fake but no real mass costs ~ M * ln(M / 1e-14), so it is unbounded and very sensitive
  to stray samples. Because both use densities, the values also scale with 1/(100 * bin area)
  (x6.25 for r = 2, x1.5625 for r = 4) relative to KL of bin probabilities.
  We reproduce both exactly (for comparability with the paper's Table), and add ``jsd_std``: the
  textbook JSD of the bin probabilities in nats (bounded by ln 2), which is easier to read.
- If a set has no point inside the square, numpy's density is 0/0; we use an all-zero histogram
  instead (the official code would return NaN).

Grid-normalised ELBO (``grid_normalized_elbo``):
- Per point, the negative ELBO with unit weights and a deterministic code:
  loss(x) = ||x - G(mu_E(x))||^2 (sum over coordinates) + KL(q(z|x) || N(0, I)), lower is better.
- Evaluated on a 1024 x 1024 grid ``linspace(-r, r, 1024)`` (r as above, endpoints included) and on
  100 batches of 128 = 12,800 real points; result = mean(loss(real)) / (sum(loss(grid)) +
  sum(loss(real))). Lower is better: the model's loss is small on the data relative to the rest of
  the square. We accumulate in float64 (the official code sums 1M float32 values).
- Our models expose ``elbo(x)`` returning the ELBO (higher is better) in that convention,
  ``-(||x - G(mu)||^2 + KL)``; we negate it.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np
import torch

from ..data.toy2d import TOY_RANGE as TOY_RANGES  # half-width r of the official square [-r, r]^2


def toy_range(name: str) -> float | None:
    """The official half-width for a toy name ("toy:8gaussians", "8Gaussians", ...), else None."""
    key = re.sub(r"[^a-z0-9]", "", str(name).lower().split(":")[-1])
    return TOY_RANGES.get(key)


def histogram_density(points: torch.Tensor | np.ndarray, xy_range: tuple[float, float], bins: int = 100) -> np.ndarray:
    """numpy.histogram2d(..., density=True) over [lo, hi]^2; all zeros when no point falls inside."""
    p = points if isinstance(points, np.ndarray) else torch.as_tensor(points).detach().cpu().numpy()
    p = np.asarray(p, dtype=np.float64)
    rng = [[xy_range[0], xy_range[1]], [xy_range[0], xy_range[1]]]
    counts, _, _ = np.histogram2d(p[:, 0], p[:, 1], bins=bins, range=rng)
    if counts.sum() == 0:
        return counts
    dens, _, _ = np.histogram2d(p[:, 0], p[:, 1], bins=bins, range=rng, density=True)
    return dens


def _kl_div_batchmean(log_q: np.ndarray, p: np.ndarray) -> float:
    # torch.nn.functional.kl_div(log_q, p, reduction="batchmean") for a 2-D array: zero where p == 0.
    pos = p > 0
    return float(np.sum(p[pos] * (np.log(p[pos]) - log_q[pos])) / p.shape[0])


def hist_kl_jsd(real, fake, xy_range: tuple[float, float] = (-2.0, 2.0), bins: int = 100,
                eps: float = 1e-14) -> dict[str, float]:
    """{"kl", "jsd"} exactly as the official Soft-IntroVAE 2-D code, plus "jsd_std" (see module doc)."""
    p = histogram_density(real, xy_range, bins)
    q = histogram_density(fake, xy_range, bins)
    m = 0.5 * (p + q)
    kl = _kl_div_batchmean(np.log(q + eps), p)
    jsd = 0.5 * (_kl_div_batchmean(np.log(p + eps), m) + _kl_div_batchmean(np.log(q + eps), m))
    # Textbook JSD of bin probabilities (nats).
    pp = p / p.sum() if p.sum() > 0 else p
    qq = q / q.sum() if q.sum() > 0 else q
    mm = 0.5 * (pp + qq)

    def kl_prob(a: np.ndarray, b: np.ndarray) -> float:
        pos = a > 0
        return float(np.sum(a[pos] * np.log(a[pos] / b[pos])))

    return {"kl": kl, "jsd": jsd, "jsd_std": 0.5 * kl_prob(pp, mm) + 0.5 * kl_prob(qq, mm)}


def on_support(real, fake, xy_range: tuple[float, float], bins: int = 100) -> float:
    """Fraction of generated points that land in a histogram bin holding real points (a sample
    precision, in [0, 1], higher is better; points outside the square count as off support).

    Complements the histogram KL(real || fake), which mostly punishes missing real mass: a model
    that covers the data but scatters samples between its modes scores a good KL and a low
    ``on_support``. Pass many real points (e.g. 50,000) so the support is well sampled.
    """
    p = histogram_density(real, xy_range, bins) > 0
    f = fake if isinstance(fake, np.ndarray) else torch.as_tensor(fake).detach().cpu().numpy()
    f = np.asarray(f, dtype=np.float64)
    if len(f) == 0:
        return float("nan")
    lo, hi = xy_range
    idx = np.floor((f - lo) / (hi - lo) * bins).astype(np.int64)
    idx[f == hi] = bins - 1  # numpy's histogram puts the right edge in the last bin
    inside = ((idx >= 0) & (idx < bins)).all(axis=1)
    hits = p[idx[inside, 0], idx[inside, 1]]
    return float(hits.sum() / len(f))


def grid_points(range_lim: float, n_pts: int = 1024) -> torch.Tensor:
    """The n_pts x n_pts grid over [-range_lim, range_lim]^2 (endpoints included): [n_pts^2, 2]."""
    t = torch.linspace(-range_lim, range_lim, n_pts)
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], dim=1)


def grid_normalized_elbo(elbo_fn: Callable[[torch.Tensor], torch.Tensor], real_points: torch.Tensor,
                         range_lim: float, n_pts: int = 1024, batch_size: int = 4096) -> float:
    """mean(-ELBO(real)) / (sum(-ELBO(grid)) + sum(-ELBO(real))); elbo_fn maps [M, 2] -> [M] ELBOs.

    ``elbo_fn`` receives CPU float32 points; move them to the model's device inside it.
    """
    def neg_elbo(points: torch.Tensor) -> torch.Tensor:
        out = [(-elbo_fn(points[s : s + batch_size]).detach().double().reshape(-1).cpu())
               for s in range(0, points.shape[0], batch_size)]
        return torch.cat(out)

    loss_real = neg_elbo(real_points.float().cpu())
    total = neg_elbo(grid_points(range_lim, n_pts)).sum() + loss_real.sum()
    return float(loss_real.mean() / total)
