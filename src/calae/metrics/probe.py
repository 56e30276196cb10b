"""Latent-code quality on labelled data: codes of a frozen encoder as features for a simple classifier.

Two protocols:
- ``linear_probe`` / ``knn_accuracy``: split one sample of codes once, by seed, into a training part
  and a held-out part (25 % by default) and report accuracy on the held-out part. Codes are
  standardised with the training part's mean/std before the logistic regression, so that probe
  does not depend on the code scale.
- ``svm_accuracy`` / ``nn1_accuracy``: ALAE's MNIST protocol (Pidhorskyi et al. 2020, Table 2; the
  official ``eval`` of branch ``mnist_ref``): the classifier is fitted on the codes of a training set
  and scored on the codes of a *separate* test set (MNIST's train and t10k files); a linear SVM
  (scikit-learn's LinearSVC, one-vs-rest squared hinge, C = 0.02, up to 5,000 iterations) on the raw
  codes, and 1-NN with the Euclidean distance. The raw codes are not standardised, as the official
  code: the SVM's margin then depends on the code scale, which is part of that protocol.

Chance level is 1/num_classes for balanced labels (10 % for digits).
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


SVM_C = 0.02  # the official MNIST evaluation's LinearSVC(C=0.02, max_iter=5000)
SVM_MAX_ITER = 5000


def _labels(y) -> torch.Tensor:
    return torch.as_tensor(y).long().cpu().reshape(-1)


def _check_sets(xtr, ytr, xte, yte) -> None:
    if xtr.shape[0] != ytr.shape[0] or xte.shape[0] != yte.shape[0]:
        raise ValueError(f"codes and labels differ in length: {xtr.shape[0]} vs {ytr.shape[0]} (train), "
                         f"{xte.shape[0]} vs {yte.shape[0]} (test)")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train and test codes differ in width: {xtr.shape[1]} vs {xte.shape[1]}")
    if xtr.shape[0] < 1 or xte.shape[0] < 1:
        raise ValueError("a probe needs at least one training and one test code")


def svm_accuracy(train_codes, train_labels, test_codes, test_labels, C: float = SVM_C,
                 max_iter: int = SVM_MAX_ITER) -> float:
    """Test accuracy of a linear SVM fitted on the training codes (ALAE's MNIST protocol): raw codes,
    LinearSVC(C=0.02, max_iter=5000), scored on the separate test codes."""
    try:
        from sklearn.svm import LinearSVC
    except ImportError:  # scikit-learn is the optional "metrics" extra
        raise MetricError("the SVM probe needs scikit-learn: pip install 'calae[metrics]'") from None
    xtr, xte = _as_2d(train_codes), _as_2d(test_codes)
    ytr, yte = _labels(train_labels), _labels(test_labels)
    _check_sets(xtr, ytr, xte, yte)
    if len(np.unique(ytr.numpy())) < 2:
        raise MetricError("the SVM probe needs at least two classes among the training codes")
    clf = LinearSVC(C=C, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings: the accuracy is what we report
        clf.fit(xtr.double().numpy(), ytr.numpy())
    return float((clf.predict(xte.double().numpy()) == yte.numpy()).mean())


def nn1_accuracy(train_codes, train_labels, test_codes, test_labels, chunk: int = 1024) -> float:
    """Test accuracy of 1-nearest-neighbour (Euclidean, raw codes) against the training codes (ALAE's
    MNIST protocol). An exact tie in distance goes to the training code that comes first."""
    xtr, xte = _as_2d(train_codes).double(), _as_2d(test_codes).double()
    ytr, yte = _labels(train_labels), _labels(test_labels)
    _check_sets(xtr, ytr, xte, yte)
    correct = 0
    for s in range(0, xte.shape[0], chunk):
        d = torch.cdist(xte[s : s + chunk], xtr, compute_mode="donot_use_mm_for_euclid_dist")
        nearest = d.argmin(dim=1)  # first index among equal minima
        correct += int((ytr[nearest] == yte[s : s + chunk]).sum())
    return correct / xte.shape[0]
