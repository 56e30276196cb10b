"""Priors: every registered sampler (shape, dtype, determinism by seed) and each one's statistics."""
import math

import pytest
import torch

from calae.config import ConfigError
from calae.priors import (energy_distance, ifs_maps, make_prior, mixture_means, mmd_rbf, prior_options,
                          simplex_vertices)
from calae.registry import PRIORS, load_all

load_all()
ALL = sorted(PRIORS)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_registry_has_the_promised_priors():
    assert {"gaussian", "uniform", "sphere", "mixture", "swiss_roll", "ifs", "sierpinski", "kali"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dim", [2, 5])
def test_shape_dtype_determinism(name, dim):
    p = make_prior(name, dim)
    a = p.sample(300, gen(1))
    assert a.shape == (300, dim) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert torch.isfinite(a).all()
    assert torch.equal(a, p.sample(300, gen(1)))  # a pure function of the seed
    assert not torch.equal(a, p.sample(300, gen(2)))
    assert a.std(0).min() > 0 or name == "swiss_roll"  # swiss_roll pads extra coordinates with 0
    torch.manual_seed(5)
    b = p.sample(10)  # generator=None: torch's global generator
    torch.manual_seed(5)
    assert torch.equal(b, p.sample(10))


def test_gaussian_sigma():
    z = make_prior("gaussian", 4, sigma=5.0).sample(40000, gen())
    assert z.mean(0).abs().max() < 0.1
    assert z.std(0).sub(5.0).abs().max() < 0.1
    # Gaussian marginals: kurtosis 3
    k = ((z - z.mean(0)) / z.std(0)).pow(4).mean()
    assert abs(float(k) - 3.0) < 0.15


def test_uniform_range_and_moments():
    z = make_prior("uniform", 3, low=-2.0, high=4.0).sample(40000, gen())
    assert z.min() >= -2.0 and z.max() <= 4.0
    assert z.mean(0).sub(1.0).abs().max() < 0.05
    assert z.var(0).sub(36 / 12).abs().max() < 0.1


def test_sphere_norms_are_the_radius():
    z = make_prior("sphere", 6, radius=2.0).sample(5000, gen())
    assert torch.allclose(z.norm(dim=1), torch.full((5000,), 2.0), atol=1e-5)
    assert z.mean(0).abs().max() < 0.05  # uniform on the sphere: centred


def _angle_modes(z: torch.Tensor, bins: int = 120) -> int:
    """Number of separate peaks of the circular histogram of the angle of 2-D points."""
    h = torch.histc(torch.atan2(z[:, 1], z[:, 0]), bins=bins, min=-math.pi, max=math.pi)
    above = (h > h.mean()).int()
    return int(((above - above.roll(1)) == 1).sum())  # rising edges, circularly


def test_mixture_paper_layout_and_modes():
    p = make_prior("mixture", 2)  # the paper's 10 petals at radius 1.4
    means = mixture_means(10, 2, 1.4)
    ang = torch.atan2(means[:, 1], means[:, 0])
    assert torch.allclose(means.norm(dim=1), torch.full((10,), 1.4))
    assert torch.allclose(torch.remainder(ang, 2 * math.pi), 2 * math.pi * torch.arange(10) / 10, atol=1e-5)
    z = p.sample(30000, gen())
    assert _angle_modes(z) == 10
    assert _angle_modes(make_prior("mixture", 2, k=4).sample(30000, gen())) == 4
    # components have equal weights: each petal holds ~1/10 of the points
    nearest = torch.cdist(z, means).argmin(1)
    share = torch.bincount(nearest, minlength=10).float() / len(z)
    assert share.sub(0.1).abs().max() < 0.02


@pytest.mark.parametrize("dim,layout", [(2, "circle"), (8, "axes"), (16, "axes")])
def test_mixture_label_tied_components(dim, layout):
    p = make_prior("mixture", dim)
    means = mixture_means(10, dim, 1.4, layout)
    y = torch.arange(4000) % 10
    z = p.sample_for_labels(y, gen())
    # each point sits in its own component: radial spread 0.5 along u_k, 0.1 across it
    own = z - means[y]
    u = means[y] / 1.4
    along = (own * u).sum(1)
    across = own - along[:, None] * u
    assert abs(float(along.std()) - 0.5) < 0.03
    assert abs(float(across.pow(2).sum(1).mean().sqrt()) - 0.1 * math.sqrt(dim - 1)) < 0.02 * math.sqrt(dim)
    if dim > 2:  # d-dimensional generalisation: means on orthogonal axes (then their negatives)
        assert (torch.cdist(z, means).argmin(1) == y).float().mean() > 0.97
    assert p.num_components == 10


def test_swiss_roll_geometry():
    z = make_prior("swiss_roll", 2).sample(5000, gen())
    r, th = z.norm(dim=1), torch.atan2(z[:, 1], z[:, 0])
    assert r.max() <= 3.0 + 1e-5
    # θ = 4π√t = (4π/3)·r: the angle follows the radius (mod 2π)
    diff = torch.remainder(th - 4 * math.pi / 3 * r + math.pi, 2 * math.pi) - math.pi
    assert diff.abs().max() < 1e-3
    # label-tied arcs: label k holds t in [k/K, (k+1)/K), i.e. r in [3√(k/K), 3√((k+1)/K))
    y = torch.arange(1000) % 10
    r = make_prior("swiss_roll", 2).sample_for_labels(y, gen()).norm(dim=1)
    assert (r >= 3 * (y / 10).sqrt() - 1e-5).all() and (r <= 3 * ((y + 1) / 10).sqrt() + 1e-5).all()
    # d > 2: zero padding, or a fixed rotation that keeps the geometry
    pad = make_prior("swiss_roll", 5).sample(100, gen(3))
    assert torch.equal(pad[:, 2:], torch.zeros(100, 3))
    rot = make_prior("swiss_roll", 5, rotate=True).sample(100, gen(3))
    assert torch.allclose(rot.norm(dim=1), pad.norm(dim=1), atol=1e-5) and rot[:, 2:].abs().max() > 0.1


# ---- fractal priors ---------------------------------------------------------------------------------
def _correlation_dimension(z: torch.Tensor, r_lo: float, r_hi: float) -> float:
    """Slope of log C(r) against log r (Grassberger & Procaccia 1983), C(r) = P(‖X − X'‖ < r)."""
    d = torch.pdist(z.double())
    rs = torch.logspace(math.log10(r_lo), math.log10(r_hi), 8, dtype=torch.float64)
    c = torch.stack([(d < r).double().mean() for r in rs])
    x, y = rs.log(), c.log()
    return float(((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).pow(2).sum())


def test_sierpinski_points_lie_on_the_attractor():
    from calae.priors import sierpinski

    dim = 2
    z = sierpinski(4000, dim, gen(), normalize=False).double()  # raw attractor: triangle of circumradius 1
    v = simplex_vertices(dim).double()  # [3, 2]
    # barycentric coordinates λ: z = Σ λ_i v_i, Σ λ_i = 1
    M = torch.cat([v.T, torch.ones(1, dim + 1, dtype=torch.float64)])  # [3, 3]
    lam = torch.linalg.solve(M, torch.cat([z.T, torch.ones(1, len(z), dtype=torch.float64)])).T
    assert (lam > -1e-5).all()  # inside the triangle
    for _ in range(4):  # level by level: some λ_i >= 1/2 (never in the removed middle triangle)
        mx, i = lam.max(1)
        assert (mx >= 0.5 - 1e-4).all()
        lam = 2 * lam - torch.nn.functional.one_hot(i, dim + 1).double()  # undo the map f_i
    # fractal: correlation dimension near log 3 / log 2 ≈ 1.585, not 2 (a filled triangle) or 1
    cd = _correlation_dimension(z[:2000], 0.02, 0.3)
    assert 1.4 < cd < 1.75, cd
    assert 1.85 < _correlation_dimension(torch.rand(2000, 2, generator=gen()), 0.02, 0.2) < 2.1  # the estimator's check


@pytest.mark.parametrize("dim", [2, 8])
def test_ifs_invariant_bounded_non_degenerate(dim):
    from calae.priors import chaos_game, ifs

    A, b = ifs_maps(dim, dim + 1, 0.5, 0)
    assert torch.linalg.matrix_norm(A, ord=2).max() <= 0.5 + 1e-5  # contractions
    n = 2000
    z = ifs(n, dim, gen(1), normalize=False).double()
    # invariance: if z ~ μ then f_I(z) ~ μ for a random map I; the energy distance between the
    # sample and its image is at the level of two independent samples
    i = torch.randint(0, dim + 1, (n,), generator=gen(2))
    fz = torch.einsum("nij,nj->ni", A[i].double(), z) + b[i].double()
    floor = energy_distance(z, ifs(n, dim, gen(3), normalize=False).double())
    ed_inv = energy_distance(z, fz)
    assert ed_inv < 3 * floor + 1e-3
    # and the test has teeth: one chaos-game step from the start is far from invariant
    z1 = chaos_game(A, b, n, gen(4), burn_in=1).double()
    fz1 = torch.einsum("nij,nj->ni", A[i].double(), z1) + b[i].double()
    assert energy_distance(z1, fz1) > max(5 * floor, 3 * ed_inv)
    # bounded by the attractor's radius bound max|b| / (1 − s), non-degenerate in every direction
    assert z.norm(dim=1).max() <= b.norm(dim=1).max() / (1 - 0.5) + 1e-4
    assert torch.linalg.eigvalsh(torch.cov(z.T)).min() > 1e-3
    # normalised: mean 0, root mean variance = scale
    zn = make_prior("ifs", dim, scale=2.0).sample(8000, gen(5))
    assert zn.mean(0).abs().max() < 0.15 and abs(float(zn.var(0).mean().sqrt()) - 2.0) < 0.1


def test_ifs_maps_are_fixed_by_their_seed_not_the_sampling_generator():
    a = ifs_maps(3, 4, 0.5, 0)
    b = ifs_maps(3, 4, 0.5, 1)
    assert not torch.equal(a[0], b[0])
    p, q = make_prior("ifs", 3, seed=0), make_prior("ifs", 3, seed=1)
    assert energy_distance(p.sample(2000, gen(0)), q.sample(2000, gen(1))) > 0.05


def test_kali_finite_bounded_non_gaussian():
    p = make_prior("kali", 8)
    z = p.sample(4000, gen())
    assert torch.isfinite(z).all() and z.abs().max() < 4.0  # clip·tanh bounds every coordinate
    assert z.median(0).values.abs().max() < 0.2  # robustly centred
    # non-Gaussian: every marginal is skewed (a Gaussian's sample skewness has sd √(6/n) ≈ 0.04)
    skew = ((z - z.mean(0)) / z.std(0)).pow(3).mean(0)
    assert skew.abs().min() > 0.2, skew
    # without the squash the push-forward keeps its heavy tails, still finite
    raw = make_prior("kali", 2, clip=0.0).sample(4000, gen())
    assert torch.isfinite(raw).all()
    k = ((raw - raw.mean(0)) / raw.std(0)).pow(4).mean()
    assert k > 10  # far heavier tails than a Gaussian (3)


# ---- make_prior and the two-sample statistics -----------------------------------------------------
def test_make_prior_validates_names_options_and_values():
    with pytest.raises(ConfigError, match="unknown prior 'gauss'.*gaussian"):
        make_prior("gauss", 4)
    with pytest.raises(ConfigError, match="unknown option.*sigmaa.*known: sigma"):
        make_prior("gaussian", 4, sigmaa=2)
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        make_prior("gaussian", 4, sigma=-1)
    with pytest.raises(ConfigError, match="contraction"):
        make_prior("ifs", 4, contraction=1.5)
    with pytest.raises(ConfigError, match="no label-tied components"):
        make_prior("gaussian", 2).sample_for_labels(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ConfigError, match="labels must lie in 0..9"):
        make_prior("mixture", 2).sample_for_labels(torch.tensor([0, 10]))
    assert "sigma" in prior_options("gaussian") and "labels" not in prior_options("mixture")
    assert "mixture" in repr(make_prior("mixture", 2, k=3))


def test_two_sample_statistics():
    a = torch.randn(500, 3, generator=gen(0))
    b = torch.randn(500, 3, generator=gen(1))
    assert energy_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert mmd_rbf(a, a) == pytest.approx(0.0, abs=1e-9)
    same, shifted, far = energy_distance(a, b), energy_distance(a, b + 0.5), energy_distance(a, b + 2.0)
    assert same < 0.06 < shifted < far
    assert energy_distance(a, b) == pytest.approx(energy_distance(b, a))
    assert mmd_rbf(a, b) < mmd_rbf(a, b + 0.5) < mmd_rbf(a, b + 2.0)
