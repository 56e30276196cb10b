"""Improved precision and recall of generative models (Kynkäänniemi et al., NeurIPS 2019).

Each set's manifold is the union of balls centred at its points with radius the distance to the
point's k-th nearest neighbour within the set (k = 3, the point itself excluded). Precision is the
fraction of fakes inside the real manifold (fidelity); recall the fraction of reals inside the fake
manifold (coverage: it drops when modes are missing). Euclidean distances in a feature space
(computed exactly, without the |a|^2 + |b|^2 - 2ab shortcut, in row chunks).
"""
from __future__ import annotations

import torch


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(feats: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """Distance of each point to its k-th nearest other point: [N]."""
    if feats.shape[0] <= k:
        raise ValueError(f"k-NN radii need more than k={k} points, got {feats.shape[0]}")
    out = []
    for s in range(0, feats.shape[0], chunk):
        d = _cdist(feats[s : s + chunk], feats)
        out.append(d.kthvalue(k + 1, dim=1).values)  # index 0 of the sorted row is the point itself
    return torch.cat(out)


def _coverage(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    inside = []
    for s in range(0, queries.shape[0], chunk):
        d = _cdist(queries[s : s + chunk], centres)  # [q, N]
        inside.append((d <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).float().mean())


def precision_recall(real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 3, chunk: int = 1024) -> dict[str, float]:
    """{"precision", "recall"} of fake_feats [M, D] against real_feats [N, D]."""
    real = real_feats.detach().reshape(real_feats.shape[0], -1).float().cpu()
    fake = fake_feats.detach().reshape(fake_feats.shape[0], -1).float().cpu()
    if real.shape[1] != fake.shape[1]:
        raise ValueError("precision_recall: the two feature sets have different dimensions")
    r_real, r_fake = knn_radii(real, k, chunk), knn_radii(fake, k, chunk)
    return {"precision": _coverage(fake, real, r_real, chunk), "recall": _coverage(real, fake, r_fake, chunk)}
