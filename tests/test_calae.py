"""CALAE: PatchNCE and the Hessian penalty against hand-computed values, frozen noise, the fractal
prior, gradient isolation of the added phases, and a learning test on tiny fractals."""
import math

import pytest
import torch

from calae.config import ConfigError, TrainConfig, from_dict
from calae.losses import hessian_penalty, patch_nce
from calae.methods.base import StepContext
from calae.methods.calae import CALAE, CALAEConfig, gen_patch_phase, hessian_phase, nce_phase, patch_phase
from calae.training import Trainer

CTX = StepContext(step=0, kimg=1e6, total_kimg=1e6)  # past any growth: the last level


def make(tmp_path=None, data="fractals", kimg=0.2, **model):
    cfg = from_dict(TrainConfig, {"method": "calae", "data": data, "resolution": 16, "n_data": 64, "batch_size": 8,
                                  "kimg": kimg, "precision": "fp32", "log_every_kimg": 0.05})
    base = {"z_dim": 8, "base_channels": 8, "max_channels": 16, "mapping_layers": 2, "d_layers": 2, "nce_dim": 16,
            "nce_patches": 16, "hessian_every": 2}
    return Trainer(cfg, {**base, **model}, tmp_path, progress=False, pictures=False, log=lambda s: None)


# ---- PatchNCE ----------------------------------------------------------------------------------
def test_patch_nce_hand_case():
    """One image, two locations, identity heads, τ = 1: query i's positive is key i, its negative
    the other location's key."""
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]]).T.reshape(1, 2, 1, 2)  # locations (1,0) and (0.6,0.8)
    k = torch.tensor([[0.8, 0.6], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)
    got = patch_nce([q], [k], None, n_patches=256, tau=1.0)
    # q0·k0 = 0.8, q0·k1 = 0; q1·k1 = 0.8, q1·k0 = 0.48 + 0.48 = 0.96
    l0 = -math.log(math.exp(0.8) / (math.exp(0.8) + math.exp(0.0)))
    l1 = -math.log(math.exp(0.8) / (math.exp(0.8) + math.exp(0.96)))
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # τ divides every logit
    got_t = patch_nce([q], [k], None, tau=0.5)
    l0 = -math.log(math.exp(1.6) / (math.exp(1.6) + math.exp(0.0)))
    l1 = -math.log(math.exp(1.6) / (math.exp(1.6) + math.exp(1.92)))
    assert got_t.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_patch_nce_negatives_image_vs_batch_and_normalisation():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    # scaling a feature vector changes nothing: features are L2-normalised
    assert patch_nce([q * 5], [k], None).item() == pytest.approx(patch_nce([q], [k], None).item(), rel=1e-5)
    # batch negatives: each query sees 2·9 − 1 negatives instead of 8, so the loss is larger here
    img, bat = patch_nce([q], [k], None, negatives="image"), patch_nce([q], [k], None, negatives="batch")
    qn = torch.nn.functional.normalize(q.flatten(2).transpose(1, 2).reshape(18, 4), dim=1)
    kn = torch.nn.functional.normalize(k.flatten(2).transpose(1, 2).reshape(18, 4), dim=1)
    logits = qn @ kn.T / 0.07  # row i: positive at column i, every other column a negative
    want = torch.nn.functional.cross_entropy(logits, torch.arange(18))
    assert bat.item() == pytest.approx(want.item(), rel=1e-5) and bat > img
    # identical images with orthogonal locations: q·k⁺ = 1, q·k⁻ = 0, loss log(1 + 3·e^(−1/τ))
    e = torch.eye(4).reshape(1, 4, 2, 2)
    assert patch_nce([e], [e.clone()], None).item() == pytest.approx(math.log1p(3 * math.exp(-1 / 0.07)), rel=0.1)  # fp32


def test_patch_nce_keys_get_no_gradient_and_patches_are_sampled():
    fq = torch.randn(1, 3, 20, 20, requires_grad=True)
    fk = torch.randn(1, 3, 20, 20, requires_grad=True)
    loss = patch_nce([fq], [fk], None, n_patches=16, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert fk.grad is None or not fk.grad.any()  # stop-gradient on the keys
    assert (fq.grad.flatten(2).abs().sum(1) > 0).sum() == 16  # 16 of the 400 locations sampled


# ---- Hessian penalty ---------------------------------------------------------------------------
def test_hessian_penalty_of_a_cross_term_is_known():
    """f(x) = c·x1·x2: vᵀHv = 2c·v1·v2 = ±2c. Two directions with opposite signs of v1·v2 give the
    second differences +2c and −2c, unbiased variance 8c²; equal signs give 0."""
    c = 3.0
    f = lambda x: (c * x[:, 0] * x[:, 1]).unsqueeze(1)  # noqa: E731
    x = torch.randn(4, 2, dtype=torch.float64)
    opposite = torch.tensor([[[1.0, 1.0]] * 4, [[1.0, -1.0]] * 4], dtype=torch.float64)
    same = torch.tensor([[[1.0, 1.0]] * 4, [[-1.0, -1.0]] * 4], dtype=torch.float64)
    assert hessian_penalty(f, x, directions=opposite).item() == pytest.approx(8 * c * c, rel=1e-6)
    assert hessian_penalty(f, x, directions=same).item() == pytest.approx(0.0, abs=1e-6)


def test_hessian_penalty_estimates_the_off_diagonal_energy_of_a_quadratic():
    """f(x) = xᵀAx, H = A + Aᵀ: E[Var(vᵀHv)] = 2·Σ_{i≠j} H_ij² for Rademacher v (exact differences on
    a quadratic)."""
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, -2.0, 0.25], [1.0, 0.0, 0.5]], dtype=torch.float64)
    H = A + A.T
    want = 2 * (H.pow(2).sum() - H.diag().pow(2).sum()).item()
    f = lambda x: torch.einsum("ni,ij,nj->n", x, A, x).unsqueeze(1)  # noqa: E731
    x = torch.randn(1, 3, dtype=torch.float64)
    got = hessian_penalty(f, x, k=20000, generator=torch.Generator().manual_seed(0))
    assert got.item() == pytest.approx(want, rel=0.05)


def test_hessian_penalty_is_zero_for_an_additive_function_and_sums_layers():
    """An additive function has a diagonal Hessian: vᵀHv = Σ f_i'' for every ±1 direction, so the
    variance over directions is zero; several outputs add up."""
    add = lambda x: (x[:, :1] ** 2 + 3 * x[:, 1:2] ** 2 + x[:, 2:3] ** 3)  # noqa: E731
    x = torch.randn(5, 3, dtype=torch.float64)
    assert hessian_penalty(add, x, k=8).item() == pytest.approx(0.0, abs=1e-8)
    c = lambda x: (x[:, 0] * x[:, 1]).unsqueeze(1)  # noqa: E731
    d = torch.tensor([[[1.0, 1.0, 1.0]] * 5, [[1.0, -1.0, 1.0]] * 5], dtype=torch.float64)
    both = hessian_penalty(lambda x: [add(x), c(x)], x, directions=d)
    assert both.item() == pytest.approx(hessian_penalty(c, x, directions=d).item(), rel=1e-9)
    with pytest.raises(ValueError):
        hessian_penalty(add, x, k=1)


# ---- the method -----------------------------------------------------------------------------------
def test_frozen_noise_makes_G_deterministic():
    tr = make()
    m = tr.method
    w = m.nets["F"](m.draw_z(4)).detach()
    G = m.nets["G"]
    for blk in G.blocks:  # noise strengths start at 0: give them a value so that noise matters
        blk.noise1.data.fill_(0.5)
        blk.noise2.data.fill_(0.5)
    noise = G.make_noise(4, None, torch.Generator().manual_seed(1))
    a, b = m.g_layers(w, G.levels - 1, 1.0, noise), m.g_layers(w, G.levels - 1, 1.0, noise)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    r1, r2 = G(w, None, 1.0, "random"), G(w, None, 1.0, "random")
    assert not torch.equal(r1, r2)  # the noise inputs matter, so freezing them is what makes HP valid


def test_phases_heads_and_options():
    tr = make()
    names = [p.name for p in tr.phases]
    assert names == ["disc", "gen", "recip", "recon", "hessian"]
    hp = tr.phases[-1]
    assert hp.every == 2 and hp.precision == "fp32" and hp.nets == ("G",)
    assert [p for p in tr.phases if p.name == "recon"][0].nets == ("E", "G", "H")
    m = tr.method
    assert len(m.nets["H"]) == m.nets["E"].levels  # one head per encoder level
    assert make(hessian_wrt="z").phases[-1].nets == ("F", "G")
    assert [p.name for p in make(hessian_weight=0, nce_weight=0).phases] == ["disc", "gen", "recip"]
    assert CALAEConfig().nce_negatives == "batch"  # the same image's locations alone let position decide
    with pytest.raises(ConfigError, match="nce_negatives"):
        CALAEConfig(nce_negatives="all")
    with pytest.raises(ConfigError, match="arch=style"):
        make(arch="mlp")


def test_lazy_hessian_is_scaled_and_warmed_up():
    tr = make(hessian_weight=0.5, hessian_every=3, hessian_warmup_kimg=2.0)
    m, b = tr.method, tr.batch()
    torch.manual_seed(0)
    out = hessian_phase(m, b, StepContext(0, 1.0, 10.0))  # half-way through the warm-up
    assert out["loss"].item() == pytest.approx(0.5 * 3 * 0.5 * out["hp"].item(), rel=1e-6)
    assert m.hessian_ramp(0.0) == 0.0 and m.hessian_ramp(5.0) == 1.0


def test_fractal_prior_feeds_F():
    tr = make(prior="sierpinski", prior_opts={})
    m = tr.method
    torch.manual_seed(0)
    z = m.draw_z(512)
    from calae.priors import make_prior

    ref = make_prior("sierpinski", 8).sample(512, torch.Generator().manual_seed(0))
    # the same distribution: matching moments, not N(0, I)
    assert torch.allclose(z.mean(0), ref.mean(0), atol=0.25) and torch.allclose(z.std(0), ref.std(0), atol=0.25)
    assert "sierpinski" in m.latent_space().doc
    with pytest.raises(ConfigError, match="prior"):
        make(prior="nope")


def test_nce_phase_trains_E_G_H_and_keys_are_stopped():
    """The reconstruction phase's gradient reaches E (through w and the queries), G and the heads;
    replacing the real image's feature maps by detached copies leaves every gradient unchanged."""
    tr = make()
    m, b = tr.method, tr.batch()
    tr.set_trainable(("E", "G", "H"))
    torch.manual_seed(5)
    out = nce_phase(m, b, CTX)
    params = [p for n in ("E", "G", "H") for p in m.nets[n].parameters()]
    g1 = torch.autograd.grad(out["loss"], params, allow_unused=True)
    assert all(torch.isfinite(v) for v in out.values()) and "nce" in out and "pixel" not in out
    for name in ("E", "G", "H"):
        got = [g for p, g in zip(params, g1) if any(p is q for q in m.nets[name].parameters())]
        assert any(g is not None and g.abs().sum() > 0 for g in got), name
    # the same loss with E's real-branch maps explicitly detached: identical gradients
    E = m.nets["E"]
    orig = E.forward

    calls = {"n": 0}

    def forward(x, lod=None, alpha=1.0, features=False):
        w, feats = orig(x, lod, alpha, features=True)
        calls["n"] += 1
        if calls["n"] == 1:  # the real image's pass: keep w's graph, cut the key maps
            feats = [f.detach() for f in feats]
        return (w, feats) if features else w

    E.forward = forward
    try:
        torch.manual_seed(5)
        out2 = nce_phase(m, b, CTX)
        g2 = torch.autograd.grad(out2["loss"], params, allow_unused=True)
    finally:
        E.forward = orig
    assert out2["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-6)
    for a, c in zip(g1, g2):
        assert (a is None) == (c is None) and (a is None or torch.allclose(a, c, atol=1e-6, rtol=1e-5))


def test_patch_tiles_are_crops_of_the_full_resolution_image():
    tr = make(patch_weight=1.0, patch_size=8)
    m = tr.method
    n, r = 5, 16
    # every pixel holds its own (row, column): a tile is a crop iff its values step by one
    rows = torch.arange(r).view(1, 1, r, 1).expand(n, 1, r, r).float()
    cols = torch.arange(r).view(1, 1, 1, r).expand(n, 1, r, r).float()
    img = torch.cat([rows, cols, rows * 0], 1)
    torch.manual_seed(3)
    t = m.tiles(img)
    assert t.shape == (n, 3, 8, 8)
    top, left = t[:, 0, 0, 0], t[:, 1, 0, 0]
    assert torch.equal(t[:, 0], top.view(n, 1, 1) + torch.arange(8).view(1, 8, 1).float().expand(n, 8, 8))
    assert torch.equal(t[:, 1], left.view(n, 1, 1) + torch.arange(8).view(1, 1, 8).float().expand(n, 8, 8))
    assert len(set(top.tolist()) | set(left.tolist())) > 1  # positions drawn per image
    torch.manual_seed(3)
    assert torch.equal(m.tiles(img), t)  # from the global RNG: resumed runs draw the same tiles
    # a lower growth level is upsampled to the data resolution first; the whole image when smaller
    assert m.tiles(torch.zeros(2, 3, 4, 4)).shape == (2, 3, 8, 8)
    assert make(patch_weight=1.0, patch_size=64).method.tiles(img).shape == (n, 3, 16, 16)


@pytest.mark.parametrize("fakes", ["rec", "both"])
def test_patch_discriminator_phases_gradient_isolation(fakes):
    """Phase 'patch' trains P alone (its fakes carry no graph back to E, F or G); phase 4's
    generator-side term softplus(−P(t(G(E(x))))) reaches E and G and not P; with fakes=both phase 2
    adds it on its samples, reaching F and G only."""
    tr = make(patch_weight=0.5, patch_size=8, patch_fakes=fakes, nce_weight=0.0, hessian_weight=0.0)
    m, b = tr.method, tr.batch()
    names = [p.name for p in tr.phases]
    assert names == ["disc", "gen", "recip", "patch", "recon"]
    ph = {p.name: p for p in tr.phases}
    assert ph["patch"].nets == ("P",) and ph["recon"].nets == ("E", "G")
    assert (ph["gen"].loss is gen_patch_phase) == (fakes == "both")
    assert "P" in m.optimizers()["adam"].nets
    nets = {k: list(m.nets[k].parameters()) for k in ("E", "D", "F", "G", "P")}

    def reached(loss):
        """Which networks the loss's gradient reaches among those that require it (a frozen net,
        requires_grad off as the loop sets it for the nets a phase does not train, is not reached)."""
        flat = [p for k in nets for p in nets[k] if p.requires_grad]
        gs = dict(zip(map(id, flat), torch.autograd.grad(loss, flat, allow_unused=True, retain_graph=True)))
        return {k: any(gs.get(id(p)) is not None and gs[id(p)].abs().sum() > 0 for p in ps)
                for k, ps in nets.items()}

    torch.manual_seed(1)
    out = patch_phase(m, b, CTX)
    assert out["r1"] > 0 and torch.isfinite(out["loss"])
    assert reached(out["loss"]) == {"E": False, "D": False, "F": False, "G": False, "P": True}
    tr.set_trainable(("E", "G"))  # as the loop runs phase 4: P frozen
    assert not any(p.requires_grad for p in nets["P"])
    torch.manual_seed(1)
    out = nce_phase(m, b, CTX)
    got = reached(out["loss"])
    assert got["E"] and got["G"] and not got["P"] and not got["F"] and not got["D"]
    assert out["loss"].item() == pytest.approx(0.5 * out["patch_g"].item(), rel=1e-6)
    if fakes == "both":
        tr.set_trainable(("F", "G"))
        torch.manual_seed(1)
        out = gen_patch_phase(m, b, CTX)
        got = reached(out["loss"])
        assert got["F"] and got["G"] and not (got["E"] or got["D"] or got["P"])
        assert "patch_g" in out and out["loss"] > 0.5 * out["patch_g"]


def test_calae_trains_and_resumes_exactly_with_the_patch_discriminator(tmp_path):
    kw = dict(patch_weight=0.5, patch_size=8, patch_fakes="both", patch_channels=8, hessian_weight=0.0)
    full = make(tmp_path / "full", kimg=0.096, **kw)
    full.run()
    half = make(tmp_path / "half", kimg=0.096, **kw)
    half.run(stop_at_step=6)
    again = make(tmp_path / "half", kimg=0.096, **kw)
    again.run()
    for k in ("P", "G", "E"):
        for a, c in zip(full.method.nets[k].state_dict().values(), again.method.nets[k].state_dict().values()):
            assert torch.equal(a, c), k
    stats = [__import__("json").loads(s) for s in (tmp_path / "full" / "stats.jsonl").read_text().splitlines()]
    assert any("patch/r1" in s for s in stats) and any("recon/patch_g" in s for s in stats)


def test_calae_reconstruction_improves_on_tiny_fractals(tmp_path):
    """A learning test: on 16 px fractals CALAE's reconstruction error and PatchNCE fall well below
    their start."""
    tr = make(tmp_path / "run", kimg=1.6, nce_patches=32, pixel_weight=1.0, hessian_weight=0.0, lr=0.004,
              ema_kimg=0.1)
    m = tr.method
    x = tr.batch(32).x

    def rec_err():
        with torch.no_grad():
            m.eval()
            e = (m.reconstruct(x) - x).pow(2).mean().item()
            m.train()
        return e

    start = rec_err()
    tr.run()
    stats = [__import__("json").loads(s) for s in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    nce = [s["recon/nce"] for s in stats if "recon/nce" in s]
    assert rec_err() < 0.5 * start
    assert nce[-1] < 0.7 * nce[0]


# ---- the disentanglement metric ------------------------------------------------------------------
def _toy_codes(seed=0, n=2000):
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(n, 3, generator=g)  # three independent factors
    noise = 0.05 * torch.randn(n, 5, generator=g)
    clean = torch.cat([v, torch.zeros(n, 2)], 1) + noise  # code i = factor i (+ 2 idle dims)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    return v, clean, clean @ q  # the same information, rotated: every code mixes every factor


def test_dci_and_mig_separate_a_disentangled_from_an_entangled_code():
    from calae.metrics.disentangle import dci, mig

    v, clean, mixed = _toy_codes()
    a, b = dci(clean, v), dci(mixed, v)
    assert a["disentanglement"] > 0.9 and a["completeness"] > 0.9
    assert b["disentanglement"] < 0.6 and b["completeness"] < 0.6
    assert a["informativeness"] > 0.95 and b["informativeness"] > 0.95  # both keep the information
    assert mig(clean, v) > 0.4 > 0.3 > mig(mixed, v)
    # constant columns are ignored; an unrelated code carries no information
    const = torch.cat([v, torch.ones(v.shape[0], 1)], 1)
    assert dci(clean, const)["factors"] == 3
    assert dci(torch.randn(2000, 5), v)["informativeness"] < 0.05


def test_disentangle_metric_reads_the_renderers_parameters():
    from calae.api import load  # noqa: F401  (the metric uses only the inference surface)
    from calae.data import open_dataset
    from calae.metrics import evaluate

    tr = make()
    ds = open_dataset("fractals:kali", resolution=16, n=64, seed=0)
    out = evaluate(tr.method, ds, ["disentangle"], n=64)
    assert {"disentangle/disentanglement", "disentangle/completeness", "disentangle/informativeness",
            "disentangle/mig"} <= set(out)
    assert all(math.isfinite(v) for v in out.values())
