"""2-D toy distributions used by Soft-IntroVAE (Daniel & Tamar 2021), generated deterministically.

The definitions follow the official soft-intro-vae-pytorch 2-D code, which takes 2spirals,
checkerboard and rings from the FFJORD/BNAF ``sample_2d_data`` and its own 8Gaussians:

* ``8gaussians``: a centre ``c`` is chosen uniformly from the 8 directions (±1, 0), (0, ±1),
  (±1/√2, ±1/√2) times scale 2; ``x = (c + 0.02 · N(0, I)) / 1.414``.  So 8 tight clusters on the
  circle of radius 2/1.414 ≈ 1.414 with std 0.02/1.414 ≈ 0.014.  (FFJORD's variant uses scale 4 and
  noise 0.5 before the division, which Soft-IntroVAE does not.)  Evaluation square [-2, 2]².
* ``2spirals``: ``t = √U · 3π`` (540° in radians), ``d = (-cos t · t + U'/2, sin t · t + U''/2)``;
  half the points are ``d``, half ``-d``; all divided by 3, plus ``0.1 · N(0, I)``.
* ``checkerboard``: ``x1 ~ U(-2, 2)``, ``x2 = U(0, 1) - 2·Bernoulli(½) + (floor(x1) mod 2)``, times 2.
  Points land exactly in the squares of side 2 of [-4, 4]² where ``floor(x/2) + floor(y/2)`` is even.
* ``rings``: 4 concentric circles of radii 3, 2.25, 1.5, 0.75 (3 · {1, ¾, ½, ¼}), each holding a
  quarter of an evenly spaced angle grid; points are drawn from those grid points with replacement
  and get ``0.08 · N(0, I)`` noise.

The three FFJORD sets are evaluated on [-4, 4]² (:data:`TOY_RANGE` holds the half-widths, as used
by the Soft-IntroVAE 100×100-histogram KL/JSD metrics).  Randomness comes only from
``numpy.random.default_rng(seed)``; samples are shuffled so any prefix is representative.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import DataError, DataInfo, TensorDataset

__all__ = ["TOYS", "TOY_RANGE", "ToyDataset", "sample_toy"]

TOYS = ("8gaussians", "2spirals", "checkerboard", "rings")
TOY_RANGE = {"8gaussians": 2.0, "2spirals": 4.0, "checkerboard": 4.0, "rings": 4.0}


def _name(name: str) -> str:
    key = str(name).strip().lower()
    if key not in TOYS:
        raise DataError(f"unknown toy set {name!r}; choose one of {', '.join(TOYS)}")
    return key


def _8gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    s = 1.0 / np.sqrt(2.0)
    centers = 2.0 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)])
    pts = centers[rng.integers(0, 8, size=n)] + 0.02 * rng.standard_normal((n, 2))
    return pts / 1.414


def _2spirals(n: int, rng: np.random.Generator) -> np.ndarray:
    h = (n + 1) // 2
    t = np.sqrt(rng.random(h)) * 540.0 * (2.0 * np.pi) / 360.0
    dx = -np.cos(t) * t + rng.random(h) * 0.5
    dy = np.sin(t) * t + rng.random(h) * 0.5
    d = np.stack([dx, dy], axis=1)
    pts = np.concatenate([d, -d])[:n] / 3.0
    pts = pts + 0.1 * rng.standard_normal((n, 2))
    return pts[rng.permutation(n)]


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    x1 = rng.random(n) * 4.0 - 2.0
    x2 = rng.random(n) - rng.integers(0, 2, size=n) * 2.0
    x2 = x2 + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1) * 2.0


def _rings(n: int, rng: np.random.Generator) -> np.ndarray:
    n4 = n3 = n2 = n // 4
    n1 = n - n4 - n3 - n2
    parts = []
    for count, radius in ((n4, 1.0), (n3, 0.75), (n2, 0.5), (n1, 0.25)):
        a = np.linspace(0.0, 2.0 * np.pi, count, endpoint=False)
        parts.append(np.stack([np.cos(a), np.sin(a)], axis=1) * radius)
    grid = np.concatenate(parts) * 3.0
    pts = grid[rng.integers(0, n, size=n)]
    return pts + 0.08 * rng.standard_normal((n, 2))


_SAMPLERS = {"8gaussians": _8gaussians, "2spirals": _2spirals, "checkerboard": _checkerboard, "rings": _rings}


def sample_toy(name: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points of a toy set as float32 ``[n, 2]``; the same (name, n, seed) gives the same array."""
    key = _name(name)
    if int(n) < 1:
        raise DataError(f"n must be at least 1, got {n}")
    rng = np.random.default_rng(int(seed))
    return _SAMPLERS[key](int(n), rng).astype(np.float32)


class ToyDataset(TensorDataset):
    """A fixed sample of a toy set: ``Batch.x`` is float32 [N, 2]; info kind "points", dim 2."""

    def __init__(self, name: str, n: int = 50_000, seed: int = 0):
        key = _name(name)
        super().__init__(x=torch.from_numpy(sample_toy(key, n, seed)), y=None, params=None,
                         info=DataInfo(kind="points", dim=2, num_classes=0, name=f"toy:{key}"))
        self.name = key
        self.seed = int(seed)
        self.range = TOY_RANGE[key]

    def __repr__(self) -> str:
        return f"ToyDataset({self.name!r}, n={len(self)}, seed={self.seed})"
