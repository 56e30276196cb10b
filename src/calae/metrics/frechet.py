"""Fréchet distance between Gaussian fits of two feature sets (Heusel et al., NeurIPS 2017).

    FD = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)

which is the squared 2-Wasserstein distance between N(mu_a, S_a) and N(mu_b, S_b). The value depends
on the feature extractor and on the sample count (it is biased upwards for small n), so metric names
say which extractor was used and results carry n.

Numerics: statistics in float64; covariances with the unbiased (n-1) estimator as in the reference
FID code. Instead of a general matrix square root of the non-symmetric product S_a S_b (scipy's
sqrtm, which can return complex parts and needs an "add eps to the diagonal" fallback), we use
Tr((S_a S_b)^1/2) = Tr((S_a^1/2 S_b S_a^1/2)^1/2): S_a^1/2 from a symmetric eigendecomposition with
negative round-off eigenvalues clipped to 0, then the eigenvalues of the symmetric PSD matrix
S_a^1/2 S_b S_a^1/2, clipped to 0, square-rooted and summed. Both steps are symmetric eigenproblems,
which are stable even for rank-deficient covariances (fewer samples than dimensions).
"""
from __future__ import annotations

import torch


def gaussian_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and unbiased covariance [D, D] of feats [N, D], in float64."""
    f = torch.as_tensor(feats).detach().reshape(feats.shape[0], -1).double().cpu()
    if f.shape[0] < 2:
        raise ValueError(f"frechet_distance needs at least 2 samples, got {f.shape[0]}")
    mu = f.mean(0)
    fc = f - mu
    return mu, fc.T @ fc / (f.shape[0] - 1)


def _sqrt_psd(s: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((s + s.T) * 0.5)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance_from_stats(mu_a, sigma_a, mu_b, sigma_b) -> float:
    mu_a, mu_b = torch.as_tensor(mu_a).double(), torch.as_tensor(mu_b).double()
    sigma_a, sigma_b = torch.as_tensor(sigma_a).double(), torch.as_tensor(sigma_b).double()
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape:
        raise ValueError("frechet_distance: the two feature sets have different dimensions")
    root_a = _sqrt_psd(sigma_a)
    m = root_a @ sigma_b @ root_a
    tr_cross = torch.linalg.eigvalsh((m + m.T) * 0.5).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).square().sum() + torch.trace(sigma_a) + torch.trace(sigma_b) - 2.0 * tr_cross
    # A distance; tiny negative values are eigen-solver round-off.
    return max(float(fd), 0.0)


def frechet_distance(feat_a: torch.Tensor, feat_b: torch.Tensor) -> float:
    """Fréchet distance between feature sets [N_a, D] and [N_b, D]."""
    return frechet_distance_from_stats(*gaussian_stats(feat_a), *gaussian_stats(feat_b))
