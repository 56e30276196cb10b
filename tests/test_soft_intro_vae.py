"""Soft-IntroVAE / AS-IntroVAE: loss terms by hand, the AS distance by brute force, the β_neg
schedules and the KL-gap warning, augmentation, a 256 px folder run, and learning on digits."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from calae.augment import DiffAugment, parse_policy
from calae.config import ConfigError, TrainConfig, from_dict, preset
from calae.data.base import Batch, DataInfo
from calae.methods.base import StepContext
from calae.methods.soft_intro_vae import (ASIntroVAEConfig, SoftIntroVAEConfig, anneal_coefficient, as_distance,
                                          ema_kimg_for, soft_intro_decoder_loss, soft_intro_encoder_loss)
from calae.registry import METHODS, PRESETS, load_all
from calae.schedules import AdaptiveBetaNeg, ConstantBetaNeg, KLGapWarning, PiecewiseBetaNeg
from calae.training import Trainer, load_snapshot

load_all()
BOTH = ("soft_intro_vae", "as_intro_vae")


# ---- helpers ---------------------------------------------------------------------------------------
def linear(w, b):
    lin = nn.Linear(len(w[0]), len(w))
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w, dtype=torch.float32))
        lin.bias.copy_(torch.tensor(b, dtype=torch.float32))
    return lin


def points_method(kind: str, E: nn.Module, G: nn.Module, **cfg):
    """A method on 2-D points (s = 1/2) whose E and G are the given linear maps."""
    cls = METHODS[kind]
    conf = dict(z_dim=2, arch="mlp", hidden=4, depth=1, ema_kimg=0.0)
    conf.update(cfg)
    m = cls(from_dict(cls.Config, conf), DataInfo(kind="points", dim=2, name="toy:hand"))
    m.nets["E"], m.nets["G"] = E, G
    return m


@pytest.fixture
def no_noise(monkeypatch):
    """ε = 0 and prior noise = 0: z = μ and every fake is G(0), so the losses are closed forms."""
    monkeypatch.setattr(torch, "randn_like", lambda t, **kw: torch.zeros_like(t))


@pytest.fixture
def one_thread():
    """Training tests on one thread: on the shared 2-core machine a second OpenMP thread mostly spins."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def brute_distance(mu_a, lv_a, mu_b, lv_b, reduce="mean"):
    def s(m1, v1, m2, v2):
        tot = 0.0
        for i in range(m1.shape[0]):
            for j in range(m2.shape[0]):
                for d in range(m1.shape[1]):
                    var = math.exp(v1[i, d]) + math.exp(v2[j, d])
                    tot += math.exp(-(m1[i, d] - m2[j, d]) ** 2 / (2 * var)) / math.sqrt(var)
        return tot / (m1.shape[0] * m2.shape[0]) if reduce == "mean" else tot

    a, la, b, lb = (t.double().tolist() for t in (mu_a, lv_a, mu_b, lv_b))
    a, la, b, lb = (np.array(t) for t in (a, la, b, lb))
    return s(a, la, a, la) + s(b, lb, b, lb) - 2 * s(a, la, b, lb)


# ---- loss terms against hand computations ------------------------------------------------------------
def test_soft_intro_losses_hand_case(no_noise):
    """E(x) = (μ = x, log σ² = 0), G = identity, x = [[1, 0], [0, 2]], β_kl = β_neg = 1, β_rec = 0.2.

    Encoder: rec = x so L_r = 0; KL(real) = mean(½·1, ½·4) = 1.25; fake = G(0) = 0 has KL 0 and
    L_r 0, so exp(−2s·ELBO_fake) = 1; rec has KL (½, 2) and L_r 0, so with s = ½ its exp terms are
    e^(−½), e^(−2). L_E = ½·(0 + 1.25) + ¼·((e^−½ + e^−2)/2 + 1).
    Decoder: L_G = ½·(0 + ½·(KL_rec 1.25 + KL_fake 0) + ½γ_r·0) = 0.3125; gap = 0 − 1.25.
    """
    E = linear([[1, 0], [0, 1], [0, 0], [0, 0]], [0, 0, 0, 0])
    G = linear([[1, 0], [0, 1]], [0, 0])
    m = points_method("soft_intro_vae", E, G, beta_kl=1.0, beta_rec=0.2, beta_neg=1.0, gamma_r=0.5)
    batch = Batch(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    ctx = StepContext(0, 0.0, 1.0)
    enc = soft_intro_encoder_loss(m, batch, ctx)
    want = 0.5 * 1.25 + 0.25 * ((math.exp(-0.5) + math.exp(-2.0)) / 2 + 1.0)
    assert enc["loss"].item() == pytest.approx(want, rel=1e-6)
    assert enc["kl_real"].item() == pytest.approx(1.25) and enc["rec"].item() == pytest.approx(0.0)
    assert enc["exp_elbo_fake"].item() == pytest.approx(1.0)
    dec = soft_intro_decoder_loss(m, batch, ctx)
    assert dec["loss"].item() == pytest.approx(0.3125, rel=1e-6)
    assert dec["kl_rec"].item() == pytest.approx(1.25) and dec["kl_fake"].item() == pytest.approx(0.0)
    assert dec["kl_gap"].item() == pytest.approx(-1.25)


@pytest.mark.parametrize("kind", BOTH)
def test_losses_match_the_formulas(kind, no_noise):
    """General linear E, G (σ ≠ 1, biased G), β's ≠ 1, γ_r > 0: L_E and L_G re-derived independently."""
    torch.manual_seed(0)
    E, G = nn.Linear(2, 4), nn.Linear(2, 2)
    cfg = dict(beta_kl=0.7, beta_rec=0.3, beta_neg=1.7, gamma_r=0.4)
    m = points_method(kind, E, G, **cfg)
    x = torch.randn(5, 2)
    batch, ctx = Batch(x), StepContext(3, 0.25, 1.0)
    c = math.tanh(5 * 0.25) if kind == "as_intro_vae" else 1.0
    s, n = 0.5, 5

    def kl(mu, lv):
        return 0.5 * (mu ** 2 + lv.exp() - lv - 1).sum(1)

    with torch.no_grad():
        mu, lv = E(x).chunk(2, 1)
        rec = G(mu)
        lr_x = ((x - rec) ** 2).sum(1).mean()
        kl_x = kl(mu, lv).mean()
        t = torch.cat([rec, G(torch.zeros(n, 2))])
        mu_t, lv_t = E(t).chunk(2, 1)
        rr = G(mu_t)
        lr_t = ((t - rr) ** 2).sum(1)
        kl_t = kl(mu_t, lv_t)
        dist = 0.0
        if kind == "as_intro_vae":
            dist = brute_distance(mu_t[:n].tanh(), lv_t[:n].tanh(), mu_t[n:].tanh(), lv_t[n:].tanh())
        div_t = c * kl_t + (1 - c) * dist
        e = torch.exp(-2 * s * (cfg["beta_rec"] * lr_t + cfg["beta_neg"] * div_t))
        want_e = s * (cfg["beta_rec"] * lr_x + cfg["beta_kl"] * kl_x) + 0.25 * (e[:n].mean() + e[n:].mean())
        div = c * (kl_t[:n].mean() + kl_t[n:].mean()) + (1 - c) * dist
        want_g = s * (cfg["beta_rec"] * lr_x + 0.5 * cfg["beta_kl"] * div
                      + 0.5 * cfg["gamma_r"] * cfg["beta_rec"] * (lr_t[:n].mean() + lr_t[n:].mean()))
    enc = soft_intro_encoder_loss(m, batch, ctx)
    dec = soft_intro_decoder_loss(m, batch, ctx)
    assert enc["loss"].item() == pytest.approx(want_e.item(), rel=1e-5)
    assert dec["loss"].item() == pytest.approx(want_g.item(), rel=1e-5)
    assert dec["kl_gap"].item() == pytest.approx((kl_t[n:].mean() - kl_x).item(), rel=1e-5, abs=1e-6)
    if kind == "as_intro_vae":
        assert enc["c"].item() == pytest.approx(c, rel=1e-6) and enc["as_dist"].item() == pytest.approx(dist, abs=1e-6)


def test_gamma_r_passes_skipped_when_negligible(no_noise):
    torch.manual_seed(0)
    calls = {"n": 0}
    G = nn.Linear(2, 2)
    G.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    batch, ctx = Batch(torch.randn(4, 2)), StepContext(0, 0.0, 1.0)
    for gamma_r, g_calls in ((1e-8, 2), (1e-2, 3)):
        m = points_method("soft_intro_vae", nn.Linear(2, 4), G, gamma_r=gamma_r)
        soft_intro_encoder_loss(m, batch, ctx)
        calls["n"] = 0
        out = soft_intro_decoder_loss(m, batch, ctx)
        assert calls["n"] == g_calls and (("rec_rec" in out) == (gamma_r > 1e-6))


def test_decoder_phase_reuses_the_encoder_draws():
    """Same z ~ q(z|x) and prior noise in both phases of a step: with the networks unchanged the
    decoder's reconstruction error equals the encoder's; another step's batch gets fresh draws."""
    cls = METHODS["soft_intro_vae"]
    m = cls(from_dict(cls.Config, {"z_dim": 8, "base_channels": 8, "max_channels": 16}),
            DataInfo(kind="image", resolution=16, channels=1))
    torch.manual_seed(1)
    batch = Batch(torch.rand(6, 1, 16, 16) * 2 - 1)
    ctx = StepContext(7, 1.0, 2.0)
    enc = soft_intro_encoder_loss(m, batch, ctx)
    assert set(ctx.cache) == {"draws"} and not hasattr(m, "_draws")  # shared through the step, not the method
    dec = soft_intro_decoder_loss(m, batch, ctx)
    assert torch.equal(enc["rec"], dec["rec"]) and torch.equal(enc["kl_real"], dec["kl_real"])
    other = soft_intro_decoder_loss(m, batch, StepContext(8, 1.1, 2.0))  # a new step: fresh draws
    assert not torch.equal(other["rec"], enc["rec"])


def test_losses_change_no_state_and_on_step_end_feeds_the_schedule():
    """The decoder loss only logs the KL gap; the β_neg schedule learns it in on_step_end, once per
    step, and not at all when the decoder phase was skipped."""
    cls = METHODS["soft_intro_vae"]
    m = cls(from_dict(cls.Config, {"z_dim": 8, "base_channels": 8, "max_channels": 16}),
            DataInfo(kind="image", resolution=16, channels=1))
    batch = Batch(torch.rand(4, 1, 16, 16) * 2 - 1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ctx = StepContext(0, 0.0, 2.0)
    soft_intro_encoder_loss(m, batch, ctx)
    dec = soft_intro_decoder_loss(m, batch, ctx)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # the losses wrote nothing
    sched = m.beta_neg_schedule
    assert int(sched.last_step) == -1
    m.on_step_end(ctx)  # nothing logged: the decoder phase did not run through the loop
    assert int(sched.last_step) == -1
    ctx.logged.update({"decoder/kl_gap": float(dec["kl_gap"]), "decoder/kl_real": float(dec["kl_real"])})
    m.on_step_end(ctx)
    assert int(sched.last_step) == 0 and float(sched.gap_ema) == pytest.approx(float(dec["kl_gap"]))


# ---- the AS distance -----------------------------------------------------------------------------------
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_as_distance_matches_brute_force(reduce):
    torch.manual_seed(0)
    mu_a, lv_a, mu_b, lv_b = torch.randn(3, 4), torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 4)
    want = brute_distance(mu_a, lv_a, mu_b, lv_b, reduce)
    assert as_distance(mu_a, lv_a, mu_b, lv_b, reduce).item() == pytest.approx(want, rel=1e-5)
    # chunked over dimensions: same number
    assert as_distance(mu_a, lv_a, mu_b, lv_b, reduce, chunk=1).item() == pytest.approx(want, rel=1e-5)
    # a distance: zero for identical batches, positive otherwise
    assert abs(as_distance(mu_a, lv_a, mu_a, lv_a, reduce).item()) < 1e-5
    assert want > 0


def test_as_distance_gradient_matches_autograd_of_the_formula():
    """The hand-written gradient (computed in the forward pass, by blocks) against double-precision
    finite differences and against autograd through the plain broadcast formula."""
    torch.manual_seed(2)
    args = [torch.randn(n, 3, dtype=torch.double, requires_grad=True) for n in (4, 4, 5, 5)]
    assert torch.autograd.gradcheck(lambda *a: as_distance(*a, "mean", chunk=7), args)

    def formula(mu_a, lv_a, mu_b, lv_b):
        def s(m1, l1, m2, l2):
            v = l1[:, None].exp() + l2[None].exp()
            return (torch.exp(-(m1[:, None] - m2[None]) ** 2 / (2 * v)) * v.rsqrt()).sum()
        return s(mu_a, lv_a, mu_a, lv_a) + s(mu_b, lv_b, mu_b, lv_b) - 2 * s(mu_a, lv_a, mu_b, lv_b)

    want = torch.autograd.grad(formula(*args), args)
    got = torch.autograd.grad(as_distance(*args, "sum", chunk=1), args)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    # no gradient wanted: no gradient work, same value
    with torch.no_grad():
        assert as_distance(*args, "sum").item() == pytest.approx(formula(*args).item())


def test_anneal_coefficient():
    assert anneal_coefficient(0.0, 0.0, 10.0) == 0.0
    assert anneal_coefficient(5.0, 0.0, 10.0) == pytest.approx(math.tanh(2.5))
    assert anneal_coefficient(3.0, 2.0, 10.0) == pytest.approx(math.tanh(0.5))  # t counted after warm-up
    assert anneal_coefficient(1.0, 2.0, 10.0) == 0.0 and anneal_coefficient(50.0, 0.0, 10.0) <= 1.0
    assert anneal_coefficient(1.0, 0.0, 0.0) == 1.0


def test_ema_conversion_reproduces_0999_per_step():
    for b in (6, 32, 512):
        hl = ema_kimg_for(0.999, b)
        assert 0.5 ** (b / (hl * 1000.0)) == pytest.approx(0.999, abs=1e-12)  # the loop's formula
    assert ema_kimg_for(0.999, 32) == pytest.approx(22.17, abs=0.01)


# ---- β_neg schedules and the KL-gap warning ------------------------------------------------------------
def ctx_at(step, kimg):
    return StepContext(step, kimg, 100.0)


def test_constant_and_piecewise_schedules():
    assert ConstantBetaNeg(7.0).value(ctx_at(0, 50.0)) == 7.0
    p = PiecewiseBetaNeg([(10, 64), (0, 256), (20, 16)])
    assert [p.value(ctx_at(0, k)) for k in (0, 9.9, 10, 19, 20, 1e4)] == [256, 256, 64, 64, 16, 16]
    assert PiecewiseBetaNeg([(5, 32), (8, 4)]).value(ctx_at(0, 1)) == 32  # before the first point


def test_adaptive_schedule_direction_bounds_and_once_per_step():
    a = AdaptiveBetaNeg(64.0, bounds=(4, 256), band=(0.05, 1.0), rate=0.5, smooth_kimg=0.0, warn_kimg=1e9)
    a.observe(5.0, 10.0, ctx_at(0, 0.0))  # first observation: ρ = 0.5, in band
    assert a.value(ctx_at(0, 0)) == pytest.approx(64.0)
    a.observe(-3.0, 10.0, ctx_at(1, 1.0))  # gap collapsed: lower by e^(0.5 · 1 kimg)
    assert a.value(ctx_at(1, 1)) == pytest.approx(64.0 * math.exp(-0.5))
    a.observe(-3.0, 10.0, ctx_at(1, 1.0))  # the same step again: no change
    assert a.value(ctx_at(1, 1)) == pytest.approx(64.0 * math.exp(-0.5))
    for i in range(2, 20):
        a.observe(-3.0, 10.0, ctx_at(i, float(i)))
    assert a.value(ctx_at(0, 0)) == pytest.approx(4.0)  # lower bound
    for i in range(20, 40):
        a.observe(50.0, 10.0, ctx_at(i, float(i)))  # ρ = 5 > 1: back up toward stability
    assert a.value(ctx_at(0, 0)) == pytest.approx(256.0)  # upper bound
    before = a.value(ctx_at(0, 0))
    a.observe(2.0, 10.0, ctx_at(40, 40.0))  # ρ = 0.2 in band: unchanged
    assert a.value(ctx_at(0, 0)) == before


def test_adaptive_schedule_warning_does_not_advise_itself():
    """Its remedy is about the range it moves in, not 'use the adaptive schedule' (already in use)."""
    a = AdaptiveBetaNeg(64.0, bounds=(4, 256), rate=0.5, smooth_kimg=0.0, warn_kimg=1.0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for i in range(4):
            a.observe(-3.0, 10.0, ctx_at(i, 0.5 * i))
    assert len(rec) == 1
    text = str(rec[0].message)
    assert "beta_neg_schedule=adaptive" not in text and "lowering beta_neg already" in text
    assert "beta_neg_range=[1,256]" in text
    for i in range(4, 40):
        a.observe(-3.0, 10.0, ctx_at(i, 0.5 * i))
    assert "already sits at its lower bound 4" in a.remedy(ctx_at(0, 0))


def test_schedule_state_survives_state_dict_round_trip():
    a = AdaptiveBetaNeg(64.0, smooth_kimg=1.0, warn_kimg=1e9)
    for i in range(5):
        a.observe(-1.0 - i, 8.0, ctx_at(i, 0.5 * i))
    b = AdaptiveBetaNeg(64.0, smooth_kimg=1.0, warn_kimg=1e9)
    b.load_state_dict(a.state_dict())
    assert b.value(ctx_at(0, 0)) == a.value(ctx_at(0, 0)) and float(b.gap_ema) == float(a.gap_ema)
    for s in (a, b):
        s.observe(3.0, 8.0, ctx_at(5, 2.5))
    assert b.value(ctx_at(0, 0)) == a.value(ctx_at(0, 0))
    # and it is part of the method's state_dict (snapshot + training state)
    m = METHODS["soft_intro_vae"](SoftIntroVAEConfig(beta_neg_schedule="adaptive", beta_neg=64.0, z_dim=2, arch="mlp"),
                                  DataInfo(kind="points", dim=2))
    assert "beta_neg_schedule.log_beta" in m.state_dict() and "beta_neg_schedule.gap_ema" in m.state_dict()


def test_kl_gap_warning_once_with_remedy():
    sch = ConstantBetaNeg(256.0, warn_kimg=1.0, smooth_kimg=0.0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        sch.observe(-1.0, 5.0, ctx_at(0, 0.0))
        sch.observe(-1.0, 5.0, ctx_at(1, 0.5))
        assert not rec
        sch.observe(-1.0, 5.0, ctx_at(2, 1.0))  # negative for 1 kimg: warn
        assert len(rec) == 1 and issubclass(rec[0].category, KLGapWarning)
        assert "lower beta_neg" in str(rec[0].message) and "beta_neg=64" in str(rec[0].message)
        for i in range(3, 10):  # once per run
            sch.observe(-1.0, 5.0, ctx_at(i, float(i)))
        assert len(rec) == 1
    # a positive gap resets the window
    sch2 = ConstantBetaNeg(4.0, warn_kimg=1.0, smooth_kimg=0.0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for i, g in enumerate((-1, -1, 1, -1, -1)):
            sch2.observe(g, 5.0, ctx_at(i, 0.6 * i))
        assert not rec


def test_negative_gap_in_training_warns(no_noise):
    """Through the real decoder loss: the hand case has KL(fake) − KL(real) = −1.25 at every step."""
    E = linear([[1, 0], [0, 1], [0, 0], [0, 0]], [0, 0, 0, 0])
    G = linear([[1, 0], [0, 1]], [0, 0])
    m = points_method("soft_intro_vae", E, G, beta_neg=2.0, gap_warn_kimg=1.0)
    batch = Batch(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    with pytest.warns(KLGapWarning, match="lower beta_neg"):
        for step in range(6):  # 1 kimg settling window, then 1 kimg negative
            ctx = StepContext(step, 0.5 * step, 10.0)
            soft_intro_encoder_loss(m, batch, ctx)
            dec = soft_intro_decoder_loss(m, batch, ctx)
            ctx.logged.update({f"decoder/{k}": float(v.detach()) for k, v in dec.items()})  # as the loop logs it
            m.on_step_end(ctx)


def test_config_errors_name_the_option():
    with pytest.raises(ConfigError, match="beta_neg"):
        SoftIntroVAEConfig(beta_neg_schedule="adaptive", beta_neg=1000.0, beta_neg_range=(4, 256))
    with pytest.raises(ConfigError, match="beta_neg_points"):
        SoftIntroVAEConfig(beta_neg_schedule="piecewise")
    with pytest.raises(ConfigError, match="augment"):
        SoftIntroVAEConfig(augment="translation,rotate")
    with pytest.raises(ConfigError, match="as_reduce"):
        ASIntroVAEConfig(as_reduce="max")
    with pytest.raises(ConfigError, match="augment"):
        METHODS["soft_intro_vae"](SoftIntroVAEConfig(augment="color", z_dim=2, arch="mlp"), DataInfo(kind="points", dim=2))
    cfg = from_dict(SoftIntroVAEConfig, {"beta_neg_schedule": "piecewise", "beta_neg_points": [[0, 256], [5, 64]]})
    assert cfg.beta_neg_points == ((0.0, 256.0), (5.0, 64.0))


# ---- augmentation --------------------------------------------------------------------------------------
def test_diffaugment_ops():
    assert parse_policy("Translation, color") == ("translation", "color") and parse_policy("none") == ()
    torch.manual_seed(0)
    x = torch.zeros(16, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    y = DiffAugment("translation")(x)
    assert torch.allclose(y.sum(dim=(1, 2, 3)), torch.ones(16))  # shifted by ≤ 2 px, never lost
    pos = y.flatten(1).argmax(1)
    dy, dx = pos // 16 - 8, pos % 16 - 8
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2 and (dy != 0).any()
    ones = torch.ones(8, 3, 16, 16)
    cut = DiffAugment("cutout")(ones)
    assert torch.all(cut.flatten(1).mean(1) < 1.0) and torch.all(cut.flatten(1).mean(1) >= 0.74)
    # p = 0 is the identity; color is differentiable and per image
    assert torch.equal(DiffAugment("translation,color,cutout", p=0.0)(ones), ones)
    z = torch.randn(4, 3, 8, 8, requires_grad=True)
    out = DiffAugment("translation,color,cutout")(z)
    out.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


# ---- presets, a 256 px folder run, learning --------------------------------------------------------------
def test_presets_parse():
    names = [n for n, p in PRESETS.items() if p["method"] in BOTH]
    for toy, betas in {"8gaussians": (0.3, 0.2, 0.9), "2spirals": (0.5, 0.2, 1.0), "checkerboard": (0.1, 0.2, 0.2),
                       "rings": (0.2, 0.2, 1.0)}.items():
        p = preset(f"soft-intro-vae-{toy}")
        assert (p["model"]["beta_kl"], p["model"]["beta_rec"], p["model"]["beta_neg"]) == betas
        assert p["train"]["batch_size"] == 512 and p["train"]["kimg"] == 30_000 * 512 / 1000
        assert p["model"]["warmup_kimg"] == 2_000 * 512 / 1000
    assert {"fantasy-256", "soft-intro-vae-digits", "as-intro-vae-digits", "soft-intro-vae-mnist",
            "soft-intro-vae-fractals", "as-intro-vae-fractals"} <= set(names)
    for n in names:
        p = PRESETS[n]
        from_dict(METHODS[p["method"]].Config, json.loads(json.dumps(p["model"])))
        TrainConfig(method=p["method"], **p["train"])
    f = preset("fantasy-256")["model"]
    assert (f["z_dim"], f["beta_kl"], f["beta_rec"], f["lr"]) == (256, 1.0, 0.5, 2e-4)
    assert preset("fantasy-256")["train"]["batch_size"] == 6


def test_fantasy_256_on_a_tiny_folder(tmp_path, monkeypatch, one_thread):
    from PIL import Image

    import calae.explore as explore

    # The loop's picture grids (64 samples, 16 reconstructions) are 2048 px PNGs, a GIF and TensorBoard
    # images at 256 px: ~20 s of PNG/GIF encoding on CPU. Smaller grids, same code path.
    sample_grid, load_real = explore.sample_grid, explore.load_real
    monkeypatch.setattr(explore, "sample_grid", lambda m, n, seed=0: sample_grid(m, 4, seed=seed))
    monkeypatch.setattr(explore, "load_real", lambda m, ds, n, seed=0: load_real(m, ds, 2, seed))

    folder = tmp_path / "places"
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    for i in range(4):
        img = np.stack([(xx + 40 * i) % 256, (yy * (i + 1)) % 256, rng.integers(0, 256, (256, 256))], -1)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"p{i}.png")
    p = preset("fantasy-256")
    train = {**p["train"], "data": str(folder), "batch_size": 2, "kimg": 0.006, "log_every_kimg": 0.002,
             "sample_every_kimg": 100, "snapshot_every_kimg": 100, "precision": "fp32"}
    model = {**p["model"], "base_channels": 4, "max_channels": 8, "z_dim": 16}
    tr = Trainer(TrainConfig(method=p["method"], **train), model, tmp_path / "run", progress=False)
    r = tr.run()
    assert r["steps"] == 3 and r["skipped"] == 0
    stats = [json.loads(s) for s in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert any("decoder/kl_gap" in s for s in stats)
    m = load_snapshot(tmp_path / "run")
    assert m.name == "as_intro_vae" and "G" in m.ema
    x = m.sample(2, seed=0)
    assert x.shape == (2, 3, 256, 256) and torch.isfinite(x).all()
    assert (tmp_path / "run" / "samples.png").exists()


@pytest.mark.parametrize("kind", BOTH)
def test_learns_digits(kind, tmp_path, one_thread):
    """Reconstruction error falls far below its start and KL(fake) − KL(real) ends ≥ 0 (no warning)."""
    cfg = TrainConfig(method=kind, data="digits", resolution=16, kimg=2.0, batch_size=32, precision="fp32",
                      log_every_kimg=0.5, sample_every_kimg=100, snapshot_every_kimg=100)
    model = {"z_dim": 16, "base_channels": 8, "max_channels": 16, "lr": 2e-3, "beta_neg": 64.0, "gap_warn_kimg": 1.0}
    if kind == "as_intro_vae":
        model["ema_kimg"] = 0.3
    tr = Trainer(cfg, model, tmp_path / kind, progress=False)
    x = tr.batch(256).x
    with torch.no_grad():
        start = (tr.method.reconstruct(x) - x).pow(2).mean().item()
    with warnings.catch_warnings():
        warnings.simplefilter("error", KLGapWarning)
        tr.run()
    with torch.no_grad():
        end = (tr.method.reconstruct(x) - x).pow(2).mean().item()
    assert end < 0.45 * start, (start, end)
    stats = [json.loads(s) for s in (tmp_path / kind / "stats.jsonl").read_text().splitlines()]
    gaps = [s["decoder/kl_gap"] for s in stats if "decoder/kl_gap" in s]
    assert all(g >= 0 for g in gaps[len(gaps) // 2:]), gaps
    assert float(tr.method.beta_neg_schedule.gap_ema) >= 0


def test_switch_on_transient_is_not_a_negative_gap():
    """A large negative gap in the first smooth_kimg (the warm-up switch) neither warns nor moves β_neg;
    a gap that stays negative after it still warns."""
    import warnings

    sch = ConstantBetaNeg(256.0, warn_kimg=2.0, smooth_kimg=1.0)
    ada = AdaptiveBetaNeg(64.0, smooth_kimg=1.0, warn_kimg=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KLGapWarning)
        for i in range(40):  # kimg 4.0 .. 7.9: -500 nats for the first kimg, then +15
            gap = -500.0 if i < 10 else 15.0
            sch.observe(gap, 30.0, ctx_at(i, 4.0 + 0.1 * i))
            ada.observe(gap, 30.0, ctx_at(i, 4.0 + 0.1 * i))
            if i < 10:
                assert ada.value(ctx_at(i, 4.0 + 0.1 * i)) == pytest.approx(64.0)
    assert float(sch.gap_ema) == pytest.approx(15.0)
    with pytest.warns(KLGapWarning):
        for i in range(40, 120):  # the smoothed gap crosses zero ~2.6 kimg in, then 2 kimg negative
            sch.observe(-3.0, 30.0, ctx_at(i, 4.0 + 0.1 * i))


# ---- value range (issue 12 §4: the official code trains MSE in [0, 1]) -------------------------------
class _ConstImage(nn.Module):
    """G(z) = the same image c for every code (a hand 'reconstruction')."""

    def __init__(self, c: torch.Tensor):
        super().__init__()
        self.c = nn.Parameter(c.clone())

    def forward(self, z):
        return self.c.expand(z.shape[0], *self.c.shape)


class _ZeroPosterior(nn.Module):
    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim, self.w = z_dim, nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.w * torch.zeros(x.shape[0], 2 * self.z_dim, device=x.device)


def _rec_term(value_range: str, recon_u8: torch.Tensor):
    """The encoder loss's logged L_r of 4 digits against the hand reconstruction ``recon_u8``, and the
    official formula on the same uint8 images (ToTensor: /255; MSE summed over pixels, batch mean)."""
    model = {"z_dim": 4, "base_channels": 8, "max_channels": 16, "value_range": value_range, "beta_neg": 256.0}
    tr = Trainer(TrainConfig(method="soft_intro_vae", data="digits", resolution=16, kimg=1, batch_size=4,
                             precision="fp32"), model, None, progress=False)
    m = tr.method
    m.nets["E"] = _ZeroPosterior(4)
    c = recon_u8.float() / 255.0 if value_range == "unit" else recon_u8.float() / 127.5 - 1.0
    m.nets["G"] = _ConstImage(c)
    u8 = tr.dataset.get(torch.arange(4)).x  # [4, 1, 16, 16] uint8
    out = soft_intro_encoder_loss(m, tr.batch(4), tr.context(0))
    x01, r01 = u8.float() / 255.0, recon_u8.float().expand_as(u8) / 255.0
    official = torch.nn.functional.mse_loss(r01.flatten(1), x01.flatten(1), reduction="none").sum(1).mean()
    return float(out["rec"].detach()), float(official), m.value_range


def test_recon_term_in_unit_range_is_the_official_one_and_a_quarter_of_tanh():
    recon = (torch.arange(256).view(1, 16, 16) * 7 % 256).to(torch.uint8)  # a fixed hand image
    unit, official, vr_u = _rec_term("unit", recon)
    tanh, _, vr_t = _rec_term("tanh", recon)
    assert (vr_u, vr_t) == ("unit", "tanh")
    assert unit == pytest.approx(official, rel=1e-5) and official > 1.0
    assert tanh == pytest.approx(4.0 * unit, rel=1e-5)


@pytest.mark.parametrize("name", ["soft-intro-vae-mnist", "as-intro-vae-mnist", "fantasy-256"])
def test_official_presets_train_in_unit_range(name):
    p = PRESETS[name]
    cls = METHODS[p["method"]]
    cfg = from_dict(cls.Config, {**p["model"], "z_dim": 4, "base_channels": 8, "max_channels": 16})
    m = cls(cfg, DataInfo(kind="image", channels=1 if "mnist" in name else 3, resolution=16))
    assert m.value_range == "unit"


def test_value_range_auto_and_checks():
    info = DataInfo(kind="image", channels=1, resolution=16)
    tiny = {"z_dim": 4, "base_channels": 8, "max_channels": 16}
    assert METHODS["soft_intro_vae"](SoftIntroVAEConfig(**tiny), info).value_range == "tanh"
    assert METHODS["vae"](METHODS["vae"].Config(recon="bce", **tiny), info).value_range == "unit"
    with pytest.raises(ConfigError, match="value_range must be one of"):
        SoftIntroVAEConfig(value_range="zero-one")
    with pytest.raises(ConfigError, match="recon=bce needs images in"):
        SoftIntroVAEConfig(recon="bce", value_range="tanh")


def test_warmup_is_one_joint_vae_step_on_both_optimizers():
    """The warm-up runs one forward and backward and steps E's and G's optimizers together (the
    official pretraining). Alternating E then G phases, each with a fresh forward, learned far
    worse on 256 px and 64 px folders (the module docstring has the figures)."""
    model = {"z_dim": 4, "base_channels": 8, "max_channels": 16, "warmup_kimg": 10.0, "beta_neg": 64.0}
    tr = Trainer(TrainConfig(method="soft_intro_vae", data="digits", resolution=16, kimg=1, batch_size=4,
                             precision="fp32"), model, None, progress=False, pictures=False)
    assert [(p.name, p.nets, p.optimizer_names) for p in tr.phases if p.active(tr.context(0))] == \
        [("warmup", ("E", "G"), ("E", "G"))]
    calls = []
    hook = tr.method.nets["G"].register_forward_hook(lambda *a: calls.append(1))
    before = {n: [p.detach().clone() for p in net.parameters()] for n, net in tr.method.nets.items()}
    ctx = tr.train_step(tr.batch(4))
    hook.remove()
    assert len(calls) == 1 and "warmup/loss" in ctx.logged and not ctx.skipped
    for n in ("E", "G"):
        steps = {int(s["step"]) for s in tr.optimizers[n].state.values()}
        assert steps == {1}, f"{n}'s optimizer stepped {steps} times"
        assert all(not torch.equal(a, b) for a, b in zip(before[n], tr.method.nets[n].parameters()))
