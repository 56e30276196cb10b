"""Latent-code quality on labelled data: linear-probe and k-NN accuracy (ALAE's MNIST protocol,
Pidhorskyi et al. 2020, uses codes of a frozen encoder as features for a simple classifier).

Both split the codes once, by seed, into a training part and a held-out part (25 % by default) and
report accuracy on the held-out part. Chance level is 1/num_classes for balanced labels (10 % for
digits). Codes are standardised with the training part's mean/std before the logistic regression,
so the probe does not depend on the code scale.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from .base import MetricError


def split_indices(n: int, test_fraction: float = 0.25, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) index tensors of a seeded random split; both non-empty."""
    if n < 4:
        raise ValueError(f"a probe needs at least 4 labelled codes, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    n_test = min(n - 1, max(1, int(round(test_fraction * n))))
    return perm[n_test:], perm[:n_test]


def _as_2d(codes) -> torch.Tensor:
    c = torch.as_tensor(codes).detach().float().cpu()
    return c.reshape(c.shape[0], -1)


def linear_probe(codes, labels, seed: int = 0, test_fraction: float = 0.25, C: float = 1.0,
                 max_iter: int = 1000) -> float:
    """Held-out accuracy of a multinomial logistic regression (scikit-learn, L-BFGS) on codes."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:  # scikit-learn is the optional "metrics" extra
        raise MetricError("the linear probe needs scikit-learn: pip install 'calae[metrics]'") from None
    x, y = _as_2d(codes), torch.as_tensor(labels).long().cpu()
    tr, te = split_indices(x.shape[0], test_fraction, seed)
    mean, std = x[tr].mean(0), x[tr].std(0).clamp_min(1e-8)
    xtr = ((x[tr] - mean) / std).double().numpy()
    xte = ((x[te] - mean) / std).double().numpy()
    if len(np.unique(y[tr].numpy())) < 2:
        raise MetricError("the linear probe needs at least two classes among the training codes")
    clf = LogisticRegression(C=C, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings: the accuracy is what we report
        clf.fit(xtr, y[tr].numpy())
    return float((clf.predict(xte) == y[te].numpy()).mean())


def knn_accuracy(codes, labels, k: int = 1, seed: int = 0, test_fraction: float = 0.25, chunk: int = 1024) -> float:
    """Held-out accuracy of a k-nearest-neighbour vote (Euclidean, raw codes) on codes.

    Ties in the vote go to the class of the nearest neighbour among the tied ones.
    """
    x, y = _as_2d(codes), torch.as_tensor(labels).long().cpu()
    tr, te = split_indices(x.shape[0], test_fraction, seed)
    xtr, ytr = x[tr], y[tr]
    k = min(int(k), len(tr))
    n_cls = int(y.max()) + 1
    # Each vote counts 1 plus 2^-(rank+1): the tie-breakers sum to < 1, so they never overturn a
    # count, and among tied classes the one holding the nearest neighbour wins.
    w = 1.0 + 0.5 ** (torch.arange(k, dtype=torch.float64) + 1)
    correct = 0
    for s in range(0, len(te), chunk):
        q = te[s : s + chunk]
        d = torch.cdist(x[q], xtr, compute_mode="donot_use_mm_for_euclid_dist")
        nn_idx = d.topk(k, dim=1, largest=False).indices  # [q, k], nearest first
        votes = torch.zeros(len(q), n_cls, dtype=torch.float64)
        votes.scatter_add_(1, ytr[nn_idx], w.expand(len(q), k).contiguous())
        correct += int((votes.argmax(1) == y[q]).sum())
    return correct / len(te)
