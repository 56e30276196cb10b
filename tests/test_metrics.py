"""Metrics measure what they claim: closed forms, hand-computed cases, orderings under corruption,
and the registered metrics' contract (eval mode, determinism, clear errors). Tiny data throughout."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from calae.data.base import DataInfo, TensorDataset, to_model_range
from calae.metrics import (ClassifierFeatures, InceptionFeatures, InceptionV3, RandConvFeatures, default_metrics, evaluate,
                           frechet_distance, frechet_distance_from_stats, grid_normalized_elbo, hist_kl_jsd,
                           knn_accuracy, laplacian_pyramid, linear_probe, MetricError, mse, precision_recall, psnr,
                           ssim, toy_range)
from calae.metrics.swd import pyr_up, swd
from calae.registry import METRICS


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tests are tiny; on a shared 2-core machine one intra-op thread is faster and steadier.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


# ------------------------------------------------------------------------------------------------
# Tiny synthetic data


def blobs(n: int, seed: int, size: int = 32, channels: int = 1, width: float = 1.0) -> torch.Tensor:
    """uint8 images of 3 Gaussian blobs at random places: a 'distribution' with structure."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    c = torch.rand(n, 3, 2, generator=g) * (size - 8) + 4
    s = (torch.rand(n, 3, 1, 1, generator=g) * size / 10 + size / 20) * width
    img = torch.exp(-((yy - c[..., 0, None, None]) ** 2 + (xx - c[..., 1, None, None]) ** 2) / (2 * s**2)).sum(1)
    img = img[:, None].expand(n, channels, size, size)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def stripes(n: int, seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(n, 1, 1, 1, generator=g) * 0.8 + 0.4
    ph = torch.rand(n, 1, 1, 1, generator=g) * 6.3
    x = torch.arange(size, dtype=torch.float32).view(1, 1, 1, size)
    img = 0.5 + 0.5 * torch.sin(f * x + ph)
    return (img.expand(n, 1, size, size) * 255).round().to(torch.uint8)


def add_noise(x: torch.Tensor, sigma: float, seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x.float() + sigma * torch.randn(x.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    t = torch.arange(-4.0, 5.0)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x.float(), (4, 4, 4, 4), mode="reflect")
    y = F.conv2d(y, (k[:, None] * k[None]).expand(c, 1, 9, 9), groups=c)
    return y.round().clamp(0, 255).to(torch.uint8)


def labelled_images(n: int, seed: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """10 classes: a blob at one of 10 class positions (jittered), plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    pos = torch.tensor([[4, 4], [4, 8], [4, 12], [8, 4], [8, 8], [8, 12], [12, 4], [12, 8], [12, 12], [6, 10]],
                       dtype=torch.float32) * size / 16
    c = pos[y] + torch.randn(n, 2, generator=g) * 0.5
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    img = torch.exp(-((yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2) / (2 * 1.5**2))
    img = img + 0.05 * torch.randn(img.shape, generator=g)
    return (img[:, None].clamp(0, 1) * 255).round().to(torch.uint8), y


def eight_gaussians(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """The official 8Gaussians set (radius 2 / 1.414, sigma 0.02 / 1.414)."""
    g = torch.Generator().manual_seed(seed)
    ang = torch.randint(0, 8, (n,), generator=g).float() * math.pi / 4
    centres = torch.stack([torch.cos(ang), torch.sin(ang)], 1) * 2.0
    return ((centres + 0.02 * torch.randn(n, 2, generator=g)) / 1.414 + shift).float()


class FakeSurface(nn.Module):
    """What calae.api needs of a method besides encode / decode / sample / reconstruct."""

    name, conv, latent_dim = "fake", False, 2

    def latent_space(self):
        from calae.api import LatentSpace

        return LatentSpace("z", self.latent_dim, "fake")

    def decode_options(self):
        return ()

    def display_options(self):
        return {}

    def device(self):
        return torch.device("cpu")


class FakeImageModel(FakeSurface):
    """The inference surface of a method, faked: samples are bank images plus noise."""

    def __init__(self, info: DataInfo, bank: torch.Tensor, noise: float = 0.0, rec_noise: float = 0.0,
                 value_range: str = "tanh"):
        super().__init__()
        self.info, self.value_range = info, value_range
        self.bank, self.noise, self.rec_noise = bank, noise, rec_noise
        self.drop = nn.Dropout(0.5)  # makes training mode observable
        self.frozen = nn.Linear(1, 1)
        self.calls = 0

    def _check(self):
        if self.training or self.drop.training:
            raise RuntimeError("metric used the model in training mode")

    def sample(self, n: int, seed: int) -> torch.Tensor:
        self._check()
        self.calls += 1
        g = torch.Generator().manual_seed(seed)
        x = to_model_range(self.bank[torch.randint(len(self.bank), (n,), generator=g)], self.value_range)
        return x + self.noise * torch.randn(x.shape, generator=g)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check()
        return F.adaptive_avg_pool2d(x, 4).flatten(1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        self._check()
        g = torch.Generator().manual_seed(x.shape[0])
        return x + self.rec_noise * torch.randn(x.shape, generator=g)


class FakeToyModel(FakeSurface):
    def __init__(self, info: DataInfo, shift: float = 0.0, with_elbo: bool = True):
        super().__init__()
        self.info, self.value_range, self.shift = info, "tanh", shift
        self.lin = nn.Linear(2, 2)
        if with_elbo:
            self.elbo = lambda x, beta_rec=1.0, beta_kl=1.0: -(x.square().sum(1))

    def sample(self, n: int, seed: int) -> torch.Tensor:
        assert not self.training
        return eight_gaussians(n, seed + 1000, self.shift)

    def encode(self, x):
        return x

    def reconstruct(self, x):
        return x


def image_dataset(labelled: bool, n: int = 300):
    if labelled:
        x, y = labelled_images(n, seed=1)
        info = DataInfo(kind="image", resolution=16, channels=1, num_classes=10, name="tiny-digits")
        return TensorDataset(x, y, info=info)
    x = blobs(n, seed=1, size=32, channels=3)
    return TensorDataset(x, info=DataInfo(kind="image", resolution=32, channels=3, name="tiny-blobs"))


# ------------------------------------------------------------------------------------------------
# SWD


def test_laplacian_pyramid_reconstructs_exactly():
    x = blobs(4, 0, size=32).float()
    levels = laplacian_pyramid(x, 3)
    assert [lv.shape[-1] for lv in levels] == [32, 16, 8]
    rec = levels[-1]
    for lv in levels[-2::-1]:
        rec = pyr_up(rec, lv.shape[-2:]) + lv
    assert torch.allclose(rec, x, atol=1e-3)


def test_swd_same_distribution_small_different_large():
    a, b = blobs(128, 1), blobs(128, 2)
    same = swd(a, b, seed=0)
    other = swd(a, stripes(128, 3), seed=0)
    assert set(same) == {"32", "16", "avg"}
    assert same["avg"] * 5 < other["avg"]
    assert all(same[k] < other[k] for k in ("32", "16"))
    # Even a set against itself is not 0: each set draws its own random patches (the noise floor).
    assert swd(a, a, seed=0)["avg"] * 5 < other["avg"]
    assert swd(a, b, seed=0) == same  # deterministic given the seed


def test_swd_monotone_in_noise_and_blur():
    a, b = blobs(128, 1), blobs(128, 2)
    noisy = [swd(a, add_noise(b, s), seed=0)["avg"] for s in (0, 8, 24, 64)]
    blurred = [swd(a, blur(b, s), seed=0)["avg"] for s in (0.7, 1.5, 3.0)]
    assert noisy == sorted(noisy) and noisy[-1] > 3 * noisy[0]
    assert blurred == sorted(blurred) and blurred[-1] > 3 * noisy[0]


def test_swd_levels_and_normalisation_options():
    a = blobs(64, 1, size=28)
    out = swd(a, blobs(64, 2, size=28), seed=0)
    assert set(out) == {"28", "avg"}  # 28 -> 14 < 16 px: one level, as in PGGAN
    # A global contrast change is invisible with PGGAN's per-set normalisation, visible when combined.
    dim = (a.float() * 0.5).round().to(torch.uint8)
    floor = swd(a, a, seed=0)["avg"]  # same patch positions, so this isolates the contrast change
    assert swd(a, dim, seed=0)["avg"] == pytest.approx(floor, rel=0.05)
    assert swd(a, dim, seed=0, normalize="combined")["avg"] > 10 * floor
    with pytest.raises(ValueError):
        swd(a, blobs(32, 2, size=28))


# ------------------------------------------------------------------------------------------------
# Fréchet distance


def _sqrtm_trace_2x2(a: np.ndarray, b: np.ndarray) -> float:
    # For 2x2 SPD M: Tr sqrt(M) = sqrt(Tr M + 2 sqrt(det M)); with M ~ A B (similar matrices).
    return math.sqrt(np.trace(a @ b) + 2 * math.sqrt(np.linalg.det(a) * np.linalg.det(b)))


def test_frechet_closed_form_two_gaussians():
    mu_a, mu_b = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    sa = np.array([[2.0, 0.6], [0.6, 1.0]])
    sb = np.array([[0.5, -0.3], [-0.3, 1.5]])  # does not commute with sa
    expected = 8.0 + np.trace(sa) + np.trace(sb) - 2 * _sqrtm_trace_2x2(sa, sb)
    assert frechet_distance_from_stats(mu_a, sa, mu_b, sb) == pytest.approx(expected, rel=1e-10)
    # Diagonal case: squared W2 = |dmu|^2 + sum (sigma_a - sigma_b)^2.
    da, db = np.diag([4.0, 1.0, 0.25]), np.diag([1.0, 1.0, 1.0])
    assert frechet_distance_from_stats(np.zeros(3), da, np.ones(3), db) == pytest.approx(3 + 1 + 0 + 0.25)


def test_frechet_on_samples():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 2, generator=g) @ torch.tensor([[1.4, 0.0], [0.4, 0.8]])
    b = torch.randn(20000, 2, generator=g) @ torch.tensor([[1.4, 0.0], [0.4, 0.8]])
    assert frechet_distance(a, b) < 0.01
    shifted = [frechet_distance(a, b + d) for d in (0.5, 1.0, 2.0)]
    assert shifted == sorted(shifted)
    assert shifted[-1] == pytest.approx(8.0, rel=0.02)  # |(2, 2)|^2
    # Fewer samples than dimensions: rank-deficient covariances stay finite and non-negative.
    x = torch.randn(10, 64, generator=g)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert math.isfinite(frechet_distance(x, torch.randn(12, 64, generator=g)))


# ------------------------------------------------------------------------------------------------
# Precision / recall


def test_precision_recall():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(600, 8, generator=g)
    same = precision_recall(real, torch.randn(600, 8, generator=g))
    assert same["precision"] > 0.85 and same["recall"] > 0.85
    shifted = precision_recall(real, torch.randn(600, 8, generator=g) + 3.0)
    assert shifted["precision"] < 0.1
    centres = torch.eye(8)[:4] * 20
    modes = centres[torch.randint(0, 4, (800,), generator=g)] + torch.randn(800, 8, generator=g)
    one_mode = centres[0] + torch.randn(800, 8, generator=g)
    dropped = precision_recall(modes, one_mode)
    assert dropped["precision"] > 0.75  # the fakes sit on a real mode
    assert dropped["recall"] < 0.35  # about a quarter of the real modes covered


# ------------------------------------------------------------------------------------------------
# Probes


def test_probes_chance_on_random_codes_high_on_informative():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (1200,), generator=g)
    random_codes = torch.randn(1200, 16, generator=g)
    informative = torch.randn(10, 16, generator=g)[y] * 3 + torch.randn(1200, 16, generator=g)
    assert linear_probe(random_codes, y, seed=0) < 0.2
    assert knn_accuracy(random_codes, y, k=1, seed=0) < 0.2
    assert linear_probe(informative, y, seed=0) > 0.95
    assert knn_accuracy(informative, y, k=1, seed=0) > 0.95
    assert knn_accuracy(informative, y, k=5, seed=0) > 0.95


def test_knn_tie_goes_to_nearest():
    # Train points after the seeded split are found by construction: use identical duplicates.
    codes = torch.tensor([[0.0], [1.0], [3.0], [0.2]] * 4)
    labels = torch.tensor([0, 1, 1, 0] * 4)
    assert knn_accuracy(codes, labels, k=1, seed=0) == 1.0


# ------------------------------------------------------------------------------------------------
# Reconstruction


def test_psnr_mse_ssim_hand_cases():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g) * 0.6 + 0.2
    y = x + 0.1  # constant offset: MSE = 0.01, PSNR = 10 log10(1 / 0.01) = 20 dB
    assert mse(x, y) == pytest.approx(0.01)
    assert psnr(x, y) == pytest.approx(20.0)
    assert psnr(x * 255, y * 255, data_range=255.0) == pytest.approx(20.0)
    assert ssim(x, x) == pytest.approx(1.0)
    # Constant images a, b: sigma = 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 0.3, 0.5, 0.01**2
    ca, cb = torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b)
    assert ssim(ca, cb) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))
    # Within a window, y = -x around the same mean: structure term -1, i.e. SSIM of a negated pattern.
    assert ssim(x, 1.0 - x) < 0.0
    noisy = [ssim(x, (x + s * torch.randn(x.shape, generator=g)).clamp(0, 1)) for s in (0.02, 0.1, 0.3)]
    assert noisy == sorted(noisy, reverse=True)


# ------------------------------------------------------------------------------------------------
# 2-D toys


def test_toy_histograms_hand_computed():
    # Range (-2, 2), 100 bins: width 0.04, bin area A = 0.0016; put points at bin centres.
    centre = lambda i: -2 + 0.04 * (i + 0.5)  # noqa: E731
    real = torch.tensor([[centre(50), centre(50)]] * 10)
    fake = torch.tensor([[centre(50), centre(50)]] * 5 + [[centre(10), centre(20)]] * 5)
    out = hist_kl_jsd(real, fake, xy_range=(-2.0, 2.0))
    A, eps = 0.0016, 1e-14
    p, q = 1 / A, 0.5 / A  # densities: real all in one bin, fake half there and half elsewhere
    assert out["kl"] == pytest.approx(p * math.log(p / (q + eps)) / 100, rel=1e-9)
    m1, m2 = 0.75 / A, 0.25 / A  # M = (real + fake) / 2 in the two occupied bins
    kl_m_real = (m1 * math.log(m1 / (p + eps)) + m2 * math.log(m2 / eps)) / 100
    kl_m_fake = (m1 * math.log(m1 / (q + eps)) + m2 * math.log(m2 / (q + eps))) / 100
    assert out["jsd"] == pytest.approx(0.5 * (kl_m_real + kl_m_fake), rel=1e-9)
    # Textbook JSD on probabilities: P = (1, 0), Q = (.5, .5), M = (.75, .25).
    jsd = 0.5 * math.log(1 / 0.75) + 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    assert out["jsd_std"] == pytest.approx(jsd, rel=1e-9)
    # Points outside the square are dropped (numpy's density over the in-range points).
    outside = torch.cat([real, torch.tensor([[5.0, 5.0]] * 7)])
    assert hist_kl_jsd(outside, fake)["kl"] == pytest.approx(out["kl"])
    same = hist_kl_jsd(real, real)
    assert same["kl"] == 0.0 and same["jsd"] == pytest.approx(0.0, abs=1e-12)


def test_on_support_counts_generated_points_in_occupied_bins():
    from calae.metrics.toy import on_support

    centre = lambda i: -2 + 0.04 * (i + 0.5)  # noqa: E731
    real = np.array([[centre(50), centre(50)], [centre(3), centre(97)]])
    fake = np.array([[centre(50), centre(50)]] * 3  # on support
                    + [[centre(3) + 0.015, centre(97) - 0.015]]  # same bin, off centre
                    + [[centre(51), centre(50)]] * 2  # the next bin: off
                    + [[9.0, 9.0], [2.0, 2.0]])  # outside the square: off; the right edge: last bin, off
    assert on_support(real, fake, (-2.0, 2.0)) == pytest.approx(4 / 8)
    assert on_support(real, real, (-2.0, 2.0)) == 1.0
    # the checkerboard: uniform points fall on the data's squares about half the time
    from calae.data.toy2d import sample_toy
    real = sample_toy("checkerboard", 50_000, seed=0)
    unif = np.random.default_rng(1).uniform(-4, 4, size=(20_000, 2))
    assert on_support(real, unif, (-4.0, 4.0)) == pytest.approx(0.5, abs=0.02)
    assert on_support(real, sample_toy("checkerboard", 5000, seed=3), (-4.0, 4.0)) > 0.99


def test_toy_ranges_follow_the_official_code():
    assert toy_range("toy:8gaussians") == 2.0 and toy_range("8Gaussians") == 2.0
    assert toy_range("2spirals") == toy_range("checkerboard") == toy_range("toy:rings") == 4.0
    assert toy_range("swissroll") is None


def test_grid_normalized_elbo_hand_case():
    elbo = lambda p: -(p.square().sum(1))  # noqa: E731 - loss = |x|^2
    real = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Grid linspace(-2, 2, 5) = -2..2: sum over the grid of x^2 + y^2 = 2 * 5 * (4 + 1 + 0 + 1 + 4) = 100.
    assert grid_normalized_elbo(elbo, real, range_lim=2.0, n_pts=5) == pytest.approx(1.0 / 102.0)


# ------------------------------------------------------------------------------------------------
# Registered metrics


def test_registry_names():
    expected = {"swd_gen", "swd_rec", "fd_classifier", "pr_classifier", "fd_randconv", "pr_randconv",
                "fid_inception", "probe_linear", "probe_1nn", "recon", "toy_hist", "toy_elbo"}
    assert expected <= set(METRICS)


def test_evaluate_labelled_images_contract_and_ordering():
    ds = image_dataset(labelled=True)
    good = FakeImageModel(ds.info, ds.x, noise=0.0)
    bad = FakeImageModel(ds.info, ds.x, noise=0.5, rec_noise=0.3)
    names = default_metrics(ds.info)
    assert {"fd_classifier", "pr_classifier", "probe_linear", "probe_1nn", "swd_gen", "recon"} <= set(names)
    # Training mode going in, with one submodule deliberately frozen in eval mode.
    good.train()
    good.frozen.eval()
    kw = dict(n=200, seed=3, batch_size=64, clf_steps=60)
    r1 = evaluate(good, ds, names, **kw)
    assert good.training and good.drop.training and not good.frozen.training  # modes restored one by one
    r2 = evaluate(good, ds, names, **kw)
    assert r1 == r2  # deterministic given the seed
    assert all(k.split("/")[0] in names for k in r1) and all(math.isfinite(v) for v in r1.values())
    assert r1["fd_classifier/clf_acc"] > 0.8 and r1["fd_classifier/n"] == 200
    assert r1["recon/psnr"] >= 99.0 and r1["recon/ssim"] == pytest.approx(1.0)
    assert r1["probe_1nn/acc"] > 0.8 and r1["probe_linear/acc"] > 0.8
    rb = evaluate(bad, ds, names, **kw)
    for key in ("fd_classifier/fd", "swd_gen/avg", "swd_rec/avg", "recon/mse"):
        assert rb[key] > 2 * r1[key] + 1e-6, key
    assert rb["pr_classifier/precision"] < r1["pr_classifier/precision"]
    assert rb["recon/psnr"] < 25 and rb["recon/ssim"] < 0.8
    assert evaluate(good, ds, ["swd_gen"], n=200, seed=4, batch_size=64) != {k: v for k, v in r1.items()
                                                                              if k.startswith("swd_gen")}


def test_unlabelled_images_randconv_and_errors():
    ds = image_dataset(labelled=False, n=200)
    good = FakeImageModel(ds.info, ds.x, noise=0.0, value_range="unit")
    bad = FakeImageModel(ds.info, ds.x, noise=0.3, value_range="unit")
    assert "fd_randconv" in default_metrics(ds.info) and "probe_linear" not in default_metrics(ds.info)
    kw = dict(n=150, seed=0, batch_size=64)
    g = evaluate(good, ds, ["fd_randconv", "pr_randconv"], **kw)
    b = evaluate(bad, ds, ["fd_randconv", "pr_randconv"], **kw)
    assert b["fd_randconv/fd"] > 3 * g["fd_randconv/fd"]
    assert b["pr_randconv/precision"] < g["pr_randconv/precision"]
    for name in ("probe_linear", "fd_classifier", "toy_hist", "toy_elbo"):
        with pytest.raises(MetricError):
            METRICS[name](good, ds, n=20)
    with pytest.raises(MetricError, match="unknown metric"):
        evaluate(good, ds, ["nope"])
    with pytest.raises(MetricError, match="unknown metric option"):
        evaluate(good, ds, ["recon"], n=8, clf_stepz=3)
    with pytest.raises(MetricError, match="CALAE_INCEPTION_WEIGHTS"):
        METRICS["fid_inception"](good, ds, n=8)
    wrong = FakeImageModel(DataInfo(kind="image", resolution=16, channels=3), ds.x)
    with pytest.raises(MetricError, match="built for"):
        METRICS["recon"](wrong, ds, n=8)


def test_random_conv_features_are_fixed():
    x = blobs(8, 0, size=16, channels=3)
    f1 = RandConvFeatures(3, seed=0).extract(x)
    assert f1.shape == (8, 480)
    assert torch.equal(f1, RandConvFeatures(3, seed=0).extract(x))
    assert not torch.equal(f1, RandConvFeatures(3, seed=1).extract(x))


def test_toy_metrics_registered():
    pts = eight_gaussians(6000, seed=0)
    ds = TensorDataset(pts, info=DataInfo(kind="points", dim=2, name="toy:8gaussians"))
    good, bad = FakeToyModel(ds.info), FakeToyModel(ds.info, shift=0.3)
    assert default_metrics(ds.info, good)[:2] == ["toy_hist", "toy_elbo"]
    rg = evaluate(good, ds, ["toy_hist", "toy_elbo"], n=3000, seed=0, grid_pts=64)
    rb = evaluate(bad, ds, ["toy_hist", "toy_elbo"], n=3000, seed=0, grid_pts=64)
    assert rg["toy_hist/range"] == 2.0
    assert rb["toy_hist/kl"] > 3 * rg["toy_hist/kl"] and rb["toy_hist/jsd_std"] > 3 * rg["toy_hist/jsd_std"]
    assert rg["toy_hist/jsd_std"] < 0.1 < rb["toy_hist/jsd_std"] <= math.log(2) + 1e-12
    # toy_elbo is a model-only quantity here (loss |x|^2): same for both fakes, and hand-checkable.
    real = ds.get(torch.randperm(6000, generator=torch.Generator().manual_seed(0))[:3000]).x
    expected = grid_normalized_elbo(lambda p: -(p.square().sum(1)), real, 2.0, n_pts=64)
    assert rg["toy_elbo/gnelbo"] == pytest.approx(expected) == rb["toy_elbo/gnelbo"]
    # The official evaluation uses unit weights: elbo(x, beta_rec, beta_kl) is called with 1.0 for both.
    weighted = FakeToyModel(ds.info)
    weighted.elbo = lambda x, beta_rec=0.2, beta_kl=0.3: -(beta_rec * x.square().sum(1) + beta_kl)
    rw = evaluate(weighted, ds, ["toy_elbo"], n=3000, seed=0, grid_pts=64)
    expected_w = grid_normalized_elbo(lambda p: -(p.square().sum(1) + 1.0), real, 2.0, n_pts=64)
    assert rw["toy_elbo/gnelbo"] == pytest.approx(expected_w)
    no_elbo = FakeToyModel(ds.info, with_elbo=False)
    assert "toy_elbo" not in default_metrics(ds.info, no_elbo)
    with pytest.raises(MetricError, match="model.elbo"):
        METRICS["toy_elbo"](no_elbo, ds, n=100)
    with pytest.raises(MetricError):
        METRICS["swd_gen"](good, ds, n=100)


# ------------------------------------------------------------------------------------------------
# Feature extractors


def test_classifier_features_learn_and_are_deterministic():
    x, y = labelled_images(400, seed=2)
    a = ClassifierFeatures.fit(x, y, 10, steps=60, seed=0)
    b = ClassifierFeatures.fit(x, y, 10, steps=60, seed=0)
    assert a.heldout_accuracy > 0.8
    assert torch.equal(a.extract(x[:16]), b.extract(x[:16])) and a.extract(x[:4]).shape == (4, 128)


def test_inception_loads_torchvision_key_names(tmp_path):
    from safetensors.torch import save_file

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = InceptionV3(num_classes=1008, variant="fid")
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    sd["AuxLogits.fc.weight"] = torch.zeros(1008, 768)  # torchvision extras are ignored
    save_file(sd, str(tmp_path / "inc.safetensors"))
    ex = InceptionFeatures(str(tmp_path / "inc.safetensors"))
    assert ex.variant == "fid" and ex.net.Mixed_7c.pool == "max" and not ex.net.Mixed_5b.branch_pool.bn.training
    feats = ex.extract(blobs(2, 0, size=16, channels=1))
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    # A torch file with wrong keys: a clear one-line error, never an unpickle.
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(MetricError, match="missing"):
        InceptionFeatures(str(tmp_path / "bad.pt"))
    with pytest.raises(MetricError, match="not found"):
        InceptionFeatures(str(tmp_path / "none.pt"))


def test_feature_classifier_is_shared_by_datasets_with_the_same_data(monkeypatch):
    """Re-opening the same data reuses the fitted classifier (exact: the fit is deterministic); other data refits."""
    fits = []
    real_fit = ClassifierFeatures.fit.__func__

    def counting_fit(cls, *a, **k):
        fits.append(1)
        return real_fit(cls, *a, **k)

    monkeypatch.setattr(ClassifierFeatures, "fit", classmethod(counting_fit))
    model_ds = image_dataset(labelled=True, n=120)
    model = FakeImageModel(model_ds.info, model_ds.x)
    kw = dict(n=100, seed=0, batch_size=64, clf_steps=7)  # steps unused elsewhere: a fresh cache key
    r1 = evaluate(model, image_dataset(labelled=True, n=120), ["fd_classifier"], **kw)
    r2 = evaluate(model, image_dataset(labelled=True, n=120), ["fd_classifier"], **kw)
    assert len(fits) == 1 and r1 == r2
    x, y = labelled_images(120, seed=2)
    evaluate(model, TensorDataset(x, y, info=model_ds.info), ["fd_classifier"], **kw)
    assert len(fits) == 2


# ------------------------------------------------------------------------------------------------
# ALAE's probe protocol: train codes against a separate test set


def test_official_probes_hand_cases():
    from calae.metrics.probe import nn1_accuracy, svm_accuracy

    xtr, ytr = torch.tensor([[0.0], [10.0]]), [0, 1]
    xte = torch.tensor([[1.0], [9.0], [4.0], [6.0]])
    assert nn1_accuracy(xtr, ytr, xte, [0, 1, 0, 1]) == 1.0
    assert nn1_accuracy(xtr, ytr, xte, [1, 0, 1, 0]) == 0.0  # scored on the test labels, not the training ones
    assert nn1_accuracy(xtr, ytr, xte, [0, 0, 0, 0]) == 0.5  # predictions 0, 1, 0, 1
    assert nn1_accuracy(xtr, ytr, torch.tensor([[5.0]]), [0]) == 1.0  # a tie goes to the first training code
    # 1-D, separable: a linear SVM puts the threshold between the groups
    x1, y1 = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]]), [0, 0, 1, 1]
    xt = torch.tensor([[-3.0], [3.0], [-0.5], [0.5]])
    assert svm_accuracy(x1, y1, xt, [0, 1, 0, 1]) == 1.0
    assert svm_accuracy(x1, y1, xt, [1, 0, 1, 0]) == 0.0
    # three classes in 2-D, one-vs-rest
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 6.0], [6.0, 0.0], [-6.0, -6.0]])
    ytr3, yte3 = torch.arange(3).repeat(20), torch.arange(3).repeat(10)
    ctr = centres[ytr3] + 0.5 * torch.randn(60, 2, generator=g)
    cte = centres[yte3] + 0.5 * torch.randn(30, 2, generator=g)
    assert svm_accuracy(ctr, ytr3, cte, yte3) == 1.0 and nn1_accuracy(ctr, ytr3, cte, yte3) == 1.0
    with pytest.raises(ValueError, match="width"):
        nn1_accuracy(ctr, ytr3, cte[:, :1], yte3)


def test_probe_svm_and_1nn_split_use_the_separate_test_set(tmp_path):
    from calae.data.mnist import write_idx

    ds = image_dataset(labelled=True)
    xt, yt = labelled_images(120, seed=5)
    test = TensorDataset(xt, yt, info=ds.info)
    model = FakeImageModel(ds.info, ds.x)
    r = evaluate(model, ds, ["probe_svm", "probe_1nn_split"], probe_test=test)
    assert r["probe_svm/n_train"] == 300 and r["probe_svm/n_test"] == 120 and r["probe_1nn_split/n_test"] == 120
    assert r["probe_svm/acc"] > 0.8 and r["probe_1nn_split/acc"] > 0.95  # C = 0.02 on raw codes: 0.9 here
    # the same images with every test label shifted: if the metric scored anything but this test set's
    # labels it would stay high
    wrong = TensorDataset(xt, (yt + 1) % 10, info=ds.info)
    r = evaluate(model, ds, ["probe_svm", "probe_1nn_split"], probe_test=wrong)
    assert r["probe_svm/acc"] < 0.1 and r["probe_1nn_split/acc"] < 0.1
    # a data spec: mnist:DIR opens DIR's t10k files (40 items) while the training codes are the dataset's
    write_idx(tmp_path / "t10k-images-idx3-ubyte", xt[:40, 0].numpy())
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", yt[:40].numpy().astype(np.uint8))
    r = evaluate(model, ds, ["probe_1nn_split"], probe_test=f"mnist:{tmp_path}")
    assert r["probe_1nn_split/n_test"] == 40 and r["probe_1nn_split/acc"] > 0.9
    # without a test set: a seeded quarter of the sample is held out, disjoint from the training codes
    r = evaluate(model, ds, ["probe_svm"], n=200)
    assert (r["probe_svm/n_train"], r["probe_svm/n_test"]) == (150, 50)
    other = TensorDataset(xt[:, :, :8, :8].contiguous(), yt,
                          info=DataInfo(kind="image", resolution=8, channels=1, num_classes=10))
    with pytest.raises(MetricError, match="probe_test"):
        evaluate(model, ds, ["probe_svm"], probe_test=other)
