"""2-D toys: shapes, determinism and the geometry of each distribution."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from calae.data.base import DataError
from calae.data.toy2d import TOY_RANGE, TOYS, ToyDataset, sample_toy

N = 4000


@pytest.mark.parametrize("name", TOYS)
def test_shapes_and_determinism(name):
    ds = ToyDataset(name, n=N, seed=3)
    assert len(ds) == N and ds.info.kind == "points" and ds.info.dim == 2 and ds.info.num_classes == 0
    assert ds.info.shape == (2,) and ds.info.name == f"toy:{name}"
    b = ds.get([0, 5, N - 1])
    assert b.x.dtype == torch.float32 and b.x.shape == (3, 2) and b.y is None
    assert torch.equal(ds.x, ToyDataset(name, n=N, seed=3).x)
    assert not torch.equal(ds.x, ToyDataset(name, n=N, seed=4).x)
    a = sample_toy(name, 7, seed=3)
    assert a.dtype == np.float32 and a.shape == (7, 2)
    assert np.array_equal(a, sample_toy(name, 7, seed=3))
    assert sample_toy(name, 1, seed=0).shape == (1, 2) and len(ToyDataset(name, n=1001)) == 1001
    # nearly all mass inside the evaluation square the Soft-IntroVAE metrics use
    assert (ds.x.abs() <= TOY_RANGE[name]).all(dim=1).float().mean() > 0.995


def test_8gaussians_clusters():
    x = sample_toy("8gaussians", N, seed=0).astype(np.float64)
    ang = np.arange(8) * np.pi / 4
    centers = 2.0 / 1.414 * np.stack([np.cos(ang), np.sin(ang)], 1)
    d = np.linalg.norm(x[:, None] - centers[None], axis=2)
    k, dist = d.argmin(1), d.min(1)
    assert dist.max() < 0.1  # tight clusters (std 0.014)
    counts = np.bincount(k, minlength=8) / N
    assert np.all(np.abs(counts - 1 / 8) < 0.03)
    for j in range(8):
        assert np.linalg.norm(x[k == j].mean(0) - centers[j]) < 0.005
    assert 0.01 < np.std(x[k == 0] - centers[0]) < 0.02


def test_rings_radii():
    x = sample_toy("rings", N, seed=0).astype(np.float64)
    r = np.linalg.norm(x, axis=1)
    radii = np.array([0.75, 1.5, 2.25, 3.0])
    k = np.abs(r[:, None] - radii[None]).argmin(1)
    assert np.mean(np.abs(r - radii[k]) < 0.3) > 0.995
    assert np.all(np.abs(np.bincount(k, minlength=4) / N - 0.25) < 0.03)
    for j in range(4):
        assert abs(np.median(r[k == j]) - radii[j]) < 0.02
    # angles cover the circle evenly
    assert np.all(np.histogram(np.arctan2(x[:, 1], x[:, 0]), bins=8)[0] > N / 8 * 0.8)


def test_checkerboard_squares():
    x = sample_toy("checkerboard", N, seed=0).astype(np.float64)
    assert (np.abs(x) <= 4).all()
    cell = np.floor(x / 2).astype(int)
    assert np.all((cell[:, 0] + cell[:, 1]) % 2 == 0)  # only the "black" squares
    occupied = {tuple(c) for c in cell}
    assert len(occupied) == 8  # all eight of them
    counts = np.unique(cell, axis=0, return_counts=True)[1] / N
    assert np.all(np.abs(counts - 1 / 8) < 0.03)


def test_2spirals_on_curve():
    x = sample_toy("2spirals", 1000, seed=0).astype(np.float64)
    t = np.linspace(0, 3 * np.pi, 1200)
    arm = np.stack([-np.cos(t) * t + 0.25, np.sin(t) * t + 0.25], 1) / 3
    curve = np.concatenate([arm, -arm])
    d = np.sqrt(((x[:, None] - curve[None]) ** 2).sum(2)).min(1)
    assert np.mean(d < 0.35) > 0.99
    assert np.abs(x.mean(0)).max() < 0.1  # the two arms are point-symmetric
    # a blob with the same spread would not lie on the spiral
    blob = np.random.default_rng(0).normal(0, x.std(), (300, 2))
    assert np.mean(np.sqrt(((blob[:, None] - curve[None]) ** 2).sum(2)).min(1) < 0.35) < 0.95


def test_unknown_toy():
    with pytest.raises(DataError, match="unknown toy set"):
        ToyDataset("moons")
    assert ToyDataset("8Gaussians", n=10).name == "8gaussians"


def _mlp_layers(net):
    return [m for m in net.modules() if isinstance(m, (torch.nn.Linear, torch.nn.ReLU, torch.nn.LeakyReLU))]


@pytest.mark.parametrize("preset", ["vae-toy", "soft-intro-vae-8gaussians", "as-intro-vae-rings"])
def test_toy_nets_are_the_official_2d_nets(preset):
    """Official soft_intro_vae_2d SoftIntroVAESimple(n_layers=3, num_hidden=256): an input Linear + ReLU,
    3 hidden Linear(256, 256) + ReLU, a linear output (2·z for E, 2 for G)."""
    from calae.registry import METHODS, PRESETS, load_all

    load_all()
    p = PRESETS[preset]
    cls = METHODS[p["method"]]
    m = cls(cls.Config(**p["model"]), ToyDataset("8gaussians", n=64).info)
    for name, d_in, d_out in (("E", 2, 4), ("G", 2, 2)):
        layers = _mlp_layers(m.nets[name])
        kinds = [type(x).__name__ for x in layers]
        assert kinds == ["Linear", "ReLU"] * 4 + ["Linear"], (name, kinds)
        lin = [x for x in layers if isinstance(x, torch.nn.Linear)]
        assert [(x.in_features, x.out_features) for x in lin] == \
            [(d_in, 256)] + [(256, 256)] * 3 + [(256, d_out)]
    assert p["train"]["batch_size"] == 512


def test_bench_toys_uses_the_official_2d_nets():
    from benchmarks.bench_toys import model_config

    for method in ("vae", "soft_intro_vae", "as_intro_vae"):
        cfg = model_config(method, "rings", 300)
        assert (cfg["hidden"], cfg["depth"], cfg["act"]) == (256, 4, "relu")
