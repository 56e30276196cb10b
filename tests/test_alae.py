"""ALAE (methods.md §3): R1, equalized learning rate, phases, growth schedule, style mixing,
truncation, resume inside a fade-in, and learning on digits."""
import math

import pytest
import torch
import torch.nn.functional as F

from calae.config import TrainConfig
from calae.data.base import Batch, DataInfo
from calae.methods.alae import ALAE, ALAEConfig, disc_phase, recip_phase
from calae.methods.base import StepContext
from calae.nets.layers import EqLinear
from calae.nets.style import GrowthSchedule, mix_styles, truncate
from calae.training import Trainer

IMG8 = DataInfo(kind="image", resolution=8, channels=1, name="test8")
TINY_STYLE = dict(arch="style", z_dim=8, base_channels=4, max_channels=8, mapping_layers=2, d_layers=2)
TINY_MLP = dict(arch="mlp", z_dim=6, hidden=16, depth=1, mapping_layers=2, d_layers=2)


def make(info=IMG8, **kw) -> ALAE:
    torch.manual_seed(0)
    return ALAE(ALAEConfig(**kw), info)


# ---- R1 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["mlp", "style"])
def test_r1_matches_finite_differences(arch):
    """Phase 1's R1 term is mean_i ‖∇_x D(E(x_i))‖² on the real inputs (central differences in float64),
    and enters the loss as γ/2 · R1."""
    m = make(**(TINY_MLP if arch == "mlp" else TINY_STYLE)).double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64) * 2 - 1
    torch.manual_seed(1)
    out = disc_phase(m, Batch(x), StepContext(0, 0.0, 1.0))
    loss, adv, r1 = (float(out[k].detach()) for k in ("loss", "adv", "r1"))
    assert loss == pytest.approx(adv + 5.0 * r1, rel=1e-6)

    h, norms = 1e-5, []
    for xi in x:  # E works per image (instance statistics), so all 2·D perturbations go in one batch
        eye = torch.eye(xi.numel(), dtype=torch.float64).view(-1, *xi.shape) * h
        with torch.no_grad():
            d = m.nets["D"](m.nets["E"](torch.cat([xi + eye, xi - eye]), None, 1.0))
        g = (d[: xi.numel()] - d[xi.numel():]) / (2 * h)
        norms.append(g.pow(2).sum())
    fd = torch.stack(norms).mean()
    assert fd > 0
    assert r1 == pytest.approx(float(fd), rel=1e-4)


def test_phase1_fakes_carry_no_gradient_and_phase3_flag_controls_F():
    m = make(**TINY_MLP)
    x = torch.rand(4, 1, 8, 8)
    ctx = StepContext(0, 0.0, 1.0)
    out = disc_phase(m, Batch(x), ctx)
    gen_params = list(m.nets["F"].parameters()) + list(m.nets["G"].parameters())
    assert all(g is None for g in torch.autograd.grad(out["loss"], gen_params, allow_unused=True))
    for flag in (False, True):
        m = make(**TINY_MLP, f_in_reciprocity=flag)
        assert ("F" in m.phases()[2].nets) == flag
        assert set(m.phases()[2].nets) >= {"E", "G"} and "D" not in m.phases()[2].nets
        out = recip_phase(m, Batch(x), ctx)
        grads = torch.autograd.grad(out["loss"], list(m.nets["F"].parameters()), allow_unused=True)
        got = [g for g in grads if g is not None and torch.count_nonzero(g) > 0]
        assert bool(got) == flag


# ---- equalized learning rate ---------------------------------------------------------------------------
def _adam_step(layer_params, loss_fn, opt):
    opt.zero_grad()
    loss_fn().backward()
    opt.step()


@pytest.mark.parametrize("lrmul", [1.0, 0.1])
def test_equalized_layer_update_matches_pggan(lrmul):
    """Runtime scaling: forward uses W = c·v with c = gain/√fan_in·lrmul, v ~ N(0, 1/lrmul²); one Adam
    step moves every effective weight by lr·lrmul times its initial scale gain/√fan_in, whatever the
    fan-in (PGGAN §4.1: the same learning speed for all weights)."""
    lr, rel = 1e-3, []
    for fan_in in (16, 1024):
        torch.manual_seed(0)
        layer = EqLinear(fan_in, 64, lrmul=lrmul).double()
        scale = math.sqrt(2.0) / math.sqrt(fan_in)
        assert layer.coef == pytest.approx(scale * lrmul)
        assert layer.weight.std().item() == pytest.approx(1.0 / lrmul, rel=0.05)
        x = torch.randn(32, fan_in, dtype=torch.float64)
        ref = x @ (layer.weight * layer.coef).T + layer.bias * lrmul
        assert torch.allclose(layer(x), ref, atol=1e-6)
        w0 = layer.effective_weight().detach().clone()
        opt = torch.optim.Adam(layer.parameters(), lr=lr, betas=(0.0, 0.99), eps=0.0)
        _adam_step(layer, lambda: layer(x).pow(2).mean(), opt)
        step = (layer.effective_weight().detach() - w0).abs()
        rel.append(step / scale)
    for r in rel:
        assert torch.allclose(r, torch.full_like(r, lr * lrmul), rtol=1e-3)


def test_plain_layers_with_adam_are_not_equalized():
    """He-initialised weights trained directly: the relative step lr/std grows like √fan_in (8× from
    fan-in 16 to 1024) - what equalization removes."""
    lr, rel = 1e-3, {}
    for fan_in in (16, 1024):
        torch.manual_seed(0)
        layer = torch.nn.Linear(fan_in, 64).double()
        scale = math.sqrt(2.0) / math.sqrt(fan_in)
        with torch.no_grad():
            layer.weight.normal_(0, scale)
        x = torch.randn(32, fan_in, dtype=torch.float64)
        w0 = layer.weight.detach().clone()
        opt = torch.optim.Adam(layer.parameters(), lr=lr, betas=(0.0, 0.99), eps=0.0)
        _adam_step(layer, lambda: layer(x).pow(2).mean(), opt)
        rel[fan_in] = ((layer.weight.detach() - w0).abs() / scale).median().item()
    assert rel[1024] / rel[16] == pytest.approx(8.0, rel=1e-2)


def _train_pair(eps: float, optimizer: str, steps: int = 20):
    """Effective weights (initial, after (a), after (b)) for `steps` of (a) runtime scaling + torch Adam
    and (b) the official stored-weight formulation (W = c·v stored) + `optimizer`, on the same batches."""
    torch.manual_seed(0)
    a = EqLinear(32, 16, lrmul=0.1).double()
    w = torch.nn.Parameter(a.effective_weight().detach().clone())
    b = torch.nn.Parameter(a.effective_bias().detach().clone())
    w0 = w.detach().clone()
    opt_a = torch.optim.Adam(a.parameters(), lr=2e-3, betas=(0.0, 0.99), eps=eps)
    if optimizer == "lreq":
        opt_b = LREQAdam([{"params": [w], "coef": a.coef}, {"params": [b], "coef": a.lrmul}], lr=2e-3,
                         betas=(0.0, 0.99), eps=eps)
    else:  # the pitfall: stored (pre-scaled) weights with a plain Adam
        opt_b = torch.optim.Adam([w, b], lr=2e-3, betas=(0.0, 0.99), eps=eps)
    target = torch.randn(16, 32, dtype=torch.float64)
    for _ in range(steps):
        x = torch.randn(64, 32, dtype=torch.float64)
        y = x @ target.T
        _adam_step(a, lambda: (a(x) - y).pow(2).mean(), opt_a)
        _adam_step(None, lambda: (F.linear(x, w, b) - y).pow(2).mean(), opt_b)
    return w0, a.effective_weight().detach(), w.detach()


def test_lreqadam_formulation_agrees_up_to_eps():
    """The official LREQAdam (stored W = c·v, steps scaled by c) follows the same trajectory as runtime
    scaling + Adam; they differ only where ε enters. Stored weights + a plain Adam do not: every step
    is 1/c (here 40×) too large - the equalization is silently lost."""
    w0, wa, wb = _train_pair(eps=0.0, optimizer="lreq")
    assert torch.allclose(wa, wb, rtol=1e-9, atol=1e-12)
    w0, wa, wb = _train_pair(eps=1e-8, optimizer="lreq")
    assert (wa - wb).norm() < 1e-3 * (wa - w0).norm()
    w0, wa, wb = _train_pair(eps=1e-8, optimizer="plain")
    assert (wb - w0).norm() > 10 * (wa - w0).norm()


# ---- progressive growing -----------------------------------------------------------------------------
def test_growth_schedule_resolution_and_fade():
    s = GrowthSchedule(levels=4, phase_kimg=10.0, fade=0.5)
    assert s.at(0.0) == (0, 1.0) and s.at(9.99) == (0, 1.0)
    assert s.at(10.0) == (1, 0.0)
    lod, a = s.at(12.5)
    assert lod == 1 and a == pytest.approx(0.5)  # half-cosine ramp: midpoint 0.5
    assert s.at(11.0)[1] == pytest.approx(0.5 - 0.5 * math.cos(math.pi * 0.2))
    assert s.at(15.0) == (1, 1.0) and s.at(19.99) == (1, 1.0)
    assert s.at(30.0) == (3, 0.0) and s.at(35.0) == (3, 1.0) and s.at(1e4) == (3, 1.0)
    assert [s.resolution(k) for k in (0, 10, 20, 30, 99)] == [4, 8, 16, 32, 32]
    assert GrowthSchedule(4, 10.0, 0.5, "linear").at(11.0)[1] == pytest.approx(0.2)
    assert GrowthSchedule(4, 0.0).at(0.0) == (3, 1.0)  # growing off: the last level from the start


def test_fade_in_is_continuous():
    """At α = 0 a new level changes nothing: G(level k, α=0) = upsample(G(level k−1)), E(x, level k,
    α=0) = E(avgpool(x), level k−1), and the real batch is the upsampled coarse one."""
    m = make(info=DataInfo(kind="image", resolution=16, channels=1), **TINY_STYLE)
    G, E = m.nets["G"], m.nets["E"]
    w = torch.randn(3, 8)
    noise = G.make_noise(3, 2, torch.Generator().manual_seed(0))
    lo = G(w, 1, 1.0, noise[:4])
    assert torch.allclose(G(w, 2, 0.0, noise), F.interpolate(lo, scale_factor=2.0), atol=1e-6)
    x = torch.randn(3, 1, 16, 16)
    assert torch.allclose(E(x, 2, 0.0), E(F.avg_pool2d(x, 2), 1, 1.0), atol=1e-5)
    assert torch.allclose(m.real_at(x, 2, 0.0), F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0), atol=1e-6)
    assert torch.allclose(m.real_at(x, 1, 1.0), F.avg_pool2d(x, 2), atol=1e-6)


def test_resume_in_the_middle_of_a_fade_in_equals_uninterrupted(tmp_path):
    model = {**TINY_STYLE, "growth_kimg": 0.064, "ema_kimg": 0.05}

    def trainer(out):
        cfg = TrainConfig(method="alae", data="digits", resolution=16, kimg=0.144, batch_size=16, precision="fp32",
                          log_every_kimg=0.064, sample_every_kimg=100, snapshot_every_kimg=100)
        return Trainer(cfg, dict(model), out, progress=False)

    a = trainer(tmp_path / "a")
    stop = 5  # 0.08 kimg: level 1 (8 px) fading in
    lod, alpha = a.method.growth.at(stop * 16 / 1000)
    assert lod == 1 and 0.0 < alpha < 1.0
    a.run()
    trainer(tmp_path / "b").run(stop_at_step=stop)
    b = trainer(tmp_path / "b")
    b.run()
    sa, sb = a.method.state_dict(), b.method.state_dict()
    assert float(sa["trained_kimg"]) >= 0.128  # the last step trained the 16 px level
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ---- style mixing and truncation ------------------------------------------------------------------------
def test_truncation_identity_and_mean():
    ws, avg = torch.randn(5, 6, 4), torch.randn(4)
    assert torch.equal(truncate(ws, avg, 1.0), ws)
    t = truncate(ws, avg, 0.0, cutoff=4)
    assert torch.allclose(t[:, :4], avg.expand(5, 4, 4)) and torch.equal(t[:, 4:], ws[:, 4:])
    assert torch.allclose(truncate(ws, avg, 0.5), avg + 0.5 * (ws - avg))
    m = make(**TINY_STYLE, noise=False, truncation_cutoff=99)
    s0 = m.sample(4, seed=3, psi=0.0)
    assert torch.allclose(s0, s0[:1].expand_as(s0), atol=1e-6)  # ψ = 0: every sample is G(w̄)
    assert torch.allclose(s0[:1], m.decode(m.w_avg()[None]), atol=1e-6)
    assert torch.equal(m.sample(4, seed=3, psi=1.0), m.sample(4, seed=3))


def test_style_mixing_changes_crossover_layers_only():
    a, b = torch.randn(3, 6, 8), torch.randn(3, 6, 8)
    mixed = mix_styles(a, b, 2)
    assert torch.equal(mixed[:, :2], a[:, :2]) and torch.equal(mixed[:, 2:], b[:, 2:])
    m = make(info=DataInfo(kind="image", resolution=16, channels=1), **TINY_STYLE)
    G = m.nets["G"]
    noise = G.make_noise(3, None, torch.Generator().manual_seed(0))
    _, fa = G(a, None, 1.0, noise, features=True)
    _, fm = G(mix_styles(a, b, 2), None, 1.0, noise, features=True)
    assert torch.equal(fa[0], fm[0])  # level 0 reads styles 0 and 1 only
    assert not torch.allclose(fa[1], fm[1]) and not torch.allclose(fa[2], fm[2])
    # during training two z are mixed with probability 0.9, at a crossover in [1, 2(lod+1)]
    torch.manual_seed(0)
    z, mixed_count = torch.randn(2, 8), 0
    for _ in range(200):
        ws = m.styles(z, 2, mixing=True)
        mixed_count += int(not torch.equal(ws[:, 0], ws[:, -1]))
    cut_is_last = 1 / 6  # a crossover at the last layer leaves the active layers unmixed
    assert 200 * 0.9 * (1 - cut_is_last) * 0.8 < mixed_count < 200 * 0.9 * 1.1
    assert all(torch.equal(m.styles(z, 2, mixing=False)[:, i], m.nets["F"](z)) for i in range(6))


def test_frozen_noise_makes_G_deterministic_and_E_exposes_features():
    """CALAE needs G as a function of w alone (Hessian penalty) and E's feature maps (PatchNCE)."""
    m = make(info=DataInfo(kind="image", resolution=16, channels=1), **TINY_STYLE)
    G, E = m.nets["G"], m.nets["E"]
    with torch.no_grad():
        for blk in G.blocks:  # noise scales start at zero; make the noise visible
            blk.noise1.fill_(0.5)
            blk.noise2.fill_(0.5)
    w = torch.randn(2, 8)
    noise = G.make_noise(2)
    assert torch.equal(G(w, noise=noise), G(w, noise=noise))
    assert not torch.allclose(G(w), G(w))  # "random": fresh noise per call
    x = torch.randn(2, 1, 16, 16)
    w_e, feats = E(x, features=True)
    assert torch.equal(w_e, E(x)) and [f.shape[-1] for f in feats] == [8, 4, 2]
    assert torch.equal(m.decode(w), m.decode(w))  # inference: fixed noise


# ---- learning -------------------------------------------------------------------------------------------
def test_mlp_alae_learns_digits(tmp_path):
    """A small budget of MLP-ALAE on digits: reconstructions G(E(x)) get much closer to x, and a linear
    probe and 1-NN on the codes w separate the ten classes far above chance (ALAE's MNIST protocol)."""
    from calae.metrics.probe import knn_accuracy, linear_probe

    torch.set_num_threads(1)
    cfg = TrainConfig(method="alae", data="digits", resolution=16, kimg=16, batch_size=32, precision="fp32",
                      log_every_kimg=4, sample_every_kimg=100, snapshot_every_kimg=100)
    model = {"arch": "mlp", "z_dim": 32, "hidden": 256, "depth": 2, "mapping_layers": 3, "lr": 0.005,
             "ema_kimg": 1.0}
    tr = Trainer(cfg, model, tmp_path / "r", progress=False)
    batch = tr.dataset.get(torch.arange(len(tr.dataset)))
    x = tr.prepare(batch).x
    with torch.no_grad():
        start = (tr.method.reconstruct(x) - x).pow(2).mean().item()
    tr.run()
    tr.method.eval()
    with torch.no_grad():
        end = (tr.method.reconstruct(x) - x).pow(2).mean().item()
        w = tr.method.encode(x)
    assert end < 0.3 * start, (start, end)
    assert linear_probe(w, batch.y) > 0.85
    assert knn_accuracy(w, batch.y, k=1) > 0.85


# ---- the official MNIST networks (branch mnist_ref) -----------------------------------------------------
MNIST28 = DataInfo(kind="image", resolution=28, channels=1, num_classes=10, name="mnist")


def _preset_model(name: str, **over):
    from calae.config import from_dict
    from calae.registry import PRESETS, load_all

    load_all()
    torch.manual_seed(0)
    return ALAE(from_dict(ALAEConfig, {**PRESETS[name]["model"], **over}), MNIST28)


def test_mnist_mlp_preset_builds_the_official_networks():
    """mnist-mlp is mnist_ref's GeneratorFC / EncoderFC / linear D with F the identity: E = 784 →
    1024 → 1024 → 50 with LeakyReLU 0.2 inside and LeakyReLU 0.01 on w; G = 50 → 1024 → 1024 → 784
    with LeakyReLU 0.01 inside and a linear output whose He gain is √2; D three linear layers."""
    m = _preset_model("mnist-mlp", hidden=32)  # narrower hidden layers, same structure
    E, G, D, Fm = (m.nets[k] for k in "EGDF")
    assert m.arch == "mlp" and m.w_dim == 50 and m.value_range == "unit"
    # F is the identity and has nothing to learn (official MappingFromLatent ignores its layers)
    z = torch.randn(5, 50)
    assert not any(True for _ in Fm.parameters()) and torch.equal(Fm(z), z)
    assert "F" not in m.phases()[1].nets and "F" not in m.ema
    # E by hand: two LeakyReLU 0.2 layers, then LeakyReLU 0.01 on the 50-D code
    x = torch.rand(6, 1, 28, 28)
    l1, l2, l3 = E.net.layers
    h = F.leaky_relu(l2(F.leaky_relu(l1(x.flatten(1)), 0.2)), 0.2)
    w = E(x)
    assert torch.allclose(w, F.leaky_relu(l3(h), 0.01), atol=1e-6)
    assert (w < 0).any()  # negative codes survive, shrunk 100x (not a ReLU)
    assert l3.gain == pytest.approx(math.sqrt(2.0))
    # G by hand: two LeakyReLU 0.01 layers, a linear output layer with gain √2
    g1, g2, g3 = G.net.layers
    hg = F.leaky_relu(g2(F.leaky_relu(g1(w), 0.01)), 0.01)
    assert torch.allclose(G(w), g3(hg).view(6, 1, 28, 28), atol=1e-6)
    assert g3.gain == pytest.approx(math.sqrt(2.0)) and g3.coef == pytest.approx(math.sqrt(2.0) / math.sqrt(32))
    assert G(w).min() < 0  # linear output: no squashing
    # D is linear (affine) in w, three layers of lrmul 0.1
    assert len(D.layers) == 3 and all(layer.lrmul == pytest.approx(0.1) for layer in D.layers)
    a, b = torch.randn(4, 50), torch.randn(4, 50)
    assert torch.allclose(D(0.3 * a + 0.7 * b), 0.3 * D(a) + 0.7 * D(b), atol=1e-5)
    cfg = m.cfg
    assert (cfg.lr, tuple(cfg.betas), cfg.r1_gamma, cfg.ema_kimg) == (0.002, (0.0, 0.99), 10.0, 10.0)


def test_mlp_activation_and_gain_options_default_to_the_earlier_networks():
    """The defaults keep the earlier MLP (linear E output, slope 0.2 in G, G's output gain 1)."""
    m = make(**TINY_MLP)
    E, G = m.nets["E"], m.nets["G"]
    x = torch.rand(3, 1, 8, 8)
    l1, l2 = E.net.layers
    assert torch.allclose(E(x), l2(F.leaky_relu(l1(x.flatten(1)), 0.2)), atol=1e-6)
    w = torch.randn(3, 6)
    g1, g2 = G.net.layers
    assert g2.gain == 1.0 and torch.allclose(G(w).flatten(1), g2(F.leaky_relu(g1(w), 0.2)), atol=1e-6)
    m = make(**TINY_MLP, e_out_slope=0.5, g_slope=0.1, g_out_gain=3.0)
    E, G = m.nets["E"], m.nets["G"]
    l1, l2 = E.net.layers
    assert torch.allclose(E(x), F.leaky_relu(l2(F.leaky_relu(l1(x.flatten(1)), 0.2)), 0.5), atol=1e-6)
    g1, g2 = G.net.layers
    assert g2.gain == 3.0 and torch.allclose(G(w).flatten(1), g2(F.leaky_relu(g1(w), 0.1)), atol=1e-6)
    st = make(**TINY_STYLE, g_out_gain=0.03)  # the official ToRGB gain
    assert all(rgb.gain == pytest.approx(0.03) for rgb in st.nets["G"].to_rgb)
    with pytest.raises(Exception, match="g_out_gain"):
        ALAEConfig(g_out_gain=0.0)
    with pytest.raises(Exception, match="e_out_slope"):
        ALAEConfig(e_out_slope=2.0)


def test_optimizer_epoch_is_the_growth_level():
    """The loop resets Adam's state when optimizer_epoch changes: the growth level (official
    LODDriver resets both optimizers when a level starts); one stage without growth."""
    info16 = DataInfo(kind="image", resolution=16, channels=1)  # levels 4, 8, 16 px
    m = make(info16, **TINY_STYLE, growth_kimg=1.0)
    assert [m.optimizer_epoch(k) for k in (0.0, 0.99, 1.0, 1.4, 2.5, 9.0)] == [0, 0, 1, 1, 2, 2]
    assert make(info16, **TINY_STYLE, growth_kimg=1.0, level_resets_adam=False).optimizer_epoch(2.5) == 0
    for m in (make(**TINY_MLP), make(**TINY_STYLE)):  # no growth: one stage, never a reset
        assert len({m.optimizer_epoch(k) for k in (0.0, 0.5, 3.0, 50.0)}) == 1


def test_adam_state_restarts_when_a_growth_level_starts(tmp_path):
    """Trained across a level boundary, every Adam state's step count restarts at the new level."""
    cfg = TrainConfig(method="alae", data="digits", resolution=8, kimg=0.096, batch_size=16, precision="fp32",
                      log_every_kimg=1, sample_every_kimg=100, snapshot_every_kimg=100, n_data=64)
    model = {**TINY_STYLE, "growth_kimg": 0.064, "ema_kimg": 0.05}
    tr = Trainer(cfg, model, tmp_path / "r", progress=False, pictures=False)
    tr.run()  # 6 steps: 4 at level 0 (0 .. 0.064 kimg), 2 at level 1
    steps = {float(s["step"]) for opt in tr.optimizers.values() for s in opt.state.values() if "step" in s}
    assert max(steps) == 4, steps  # E and G update in two phases a step: 2 x 2 since the reset
    tr2 = Trainer(cfg, {**model, "level_resets_adam": False}, tmp_path / "r2", progress=False, pictures=False)
    tr2.run()
    steps2 = {float(s["step"]) for opt in tr2.optimizers.values() for s in opt.state.values() if "step" in s}
    assert max(steps2) == 12, steps2  # 6 steps x 2 phases


# ---- the official ALAE optimizer, as a reference only --------------------------------------------
# Official ALAE (custom_adam.py) stores each equalized weight pre-scaled, W = c·v, and scales each
# Adam step by the layer's constant c: with β1 = 0, v_t = β2·v_{t−1} + (1 − β2)·g²,
# W ← W − lr·c·√(1 − β2^t)·g / (√v_t + ε). Runtime scaling (calae.nets.layers) trains v with plain
# Adam; the two agree except where ε enters, which test_lreq_adam_matches_runtime_scaling shows.


class LREQAdam(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.0, 0.99), eps: float = 1e-8):
        if lr < 0 or eps < 0 or not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"invalid LREQAdam settings lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, coef=1.0))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
                t = st["step"]
                st["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = st["exp_avg_sq"].sqrt().add_(group["eps"])
                step = group["lr"] * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * group["coef"]
                p.addcdiv_(st["exp_avg"], denom, value=-step)
        return loss
