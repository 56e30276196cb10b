"""Adversarial autoencoder: phase order, label conventions, learning rates, variants, learning on
digits (codes match the prior, reconstructions improve, codes separate the classes), the figure,
and the CLI."""
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from calae.config import ConfigError, TrainConfig
from calae.methods.aae import AAE, AAEConfig
from calae.methods.base import StepContext
from calae.metrics.probe import linear_probe
from calae.priors import energy_distance
from calae.training import Trainer, load_snapshot
from calae.viz.latents import latent_scatter

from conftest import tiny_model_cfg

CTX = StepContext(0, 0.0, 1.0)


def make(tmp_path=None, kimg=0.128, batch=16, data="digits", **model):
    cfg = TrainConfig(method="aae", data=data, resolution=16 if data == "digits" else None, kimg=kimg,
                      batch_size=batch, precision="fp32", log_every_kimg=1000, sample_every_kimg=1000,
                      snapshot_every_kimg=1000)
    return Trainer(cfg, {**tiny_model_cfg("aae"), **model}, tmp_path, progress=False)


def batch_of(tr, n=16):
    return tr.batch(n)


def test_phases_in_the_papers_order_with_their_networks(tmp_path):
    tr = make(tmp_path / "r", kimg=0.032)
    ph = tr.phases
    assert [p.name for p in ph] == ["recon", "reg_D", "reg_E"]
    assert [p.nets for p in ph] == [("E", "G"), ("D",), ("E",)]
    assert [p.optimizer for p in ph] == ["AE", "D", "E"]
    calls = []

    def spy(loss, name):
        def wrapped(m, b, c):
            calls.append(name)
            return loss(m, b, c)
        return wrapped

    for p in ph:  # the loop runs them in this order, every step
        p.loss = spy(p.loss, p.name)
    tr.run()
    assert calls == ["recon", "reg_D", "reg_E"] * 2


def test_learning_rates_reach_their_optimizers():
    tr = make(gen_lr=1e-3, dis_lr=3e-4)
    o, m = tr.optimizers, tr.method

    def params(*names):
        return {id(p) for n in names for p in m.nets[n].parameters()}

    for name, nets, lr in (("AE", ("E", "G"), 1e-3), ("D", ("D",), 3e-4), ("E", ("E",), 6e-5)):
        assert {id(p) for g in o[name].param_groups for p in g["params"]} == params(*nets)
        assert all(g["lr"] == pytest.approx(lr) for g in o[name].param_groups), name
    assert make(gen_lr=1e-3, dis_lr=3e-4, reg_lr=5e-5).optimizers["E"].param_groups[0]["lr"] == pytest.approx(5e-5)
    # fallbacks: gen_lr = lr, dis_lr = lr, reg_lr = dis_lr / 5
    assert AAEConfig(lr=2e-3).learning_rates() == pytest.approx((2e-3, 2e-3, 4e-4))
    assert tuple(AAEConfig().betas) == (0.5, 0.999)


def test_label_convention_prior_is_real():
    """D calls prior samples real (logit up) and codes fake (logit down); E's step raises D(E(x))."""
    torch.manual_seed(0)
    tr = make(gen_lr=1e-3, dis_lr=1e-2, reg_lr=1e-2)
    m, b = tr.method, batch_of(tr, 64)
    d_phase, e_phase = tr.phases[1], tr.phases[2]

    def margins():
        with torch.no_grad():
            torch.manual_seed(1)
            real = m.critic(m.prior_samples(64)).mean()
            fake = m.critic(m.code(b.x)).mean()
        return float(real), float(fake)

    r0, f0 = margins()
    for _ in range(10):
        tr.run_phase(d_phase, b, CTX)
    r1, f1 = margins()
    assert r1 > r0 and r1 - f1 > r0 - f0 + 0.5, (r0, f0, r1, f1)
    with torch.no_grad():
        out = d_phase.loss(m, b, CTX)
    assert float(out["real"]) > float(out["fake"])
    for _ in range(5):
        tr.run_phase(e_phase, b, CTX)
    assert margins()[1] > f1  # the encoder's codes now look more real to the same D


@pytest.mark.parametrize("variant", [
    {"encoder": "gaussian"},
    {"supervised": True},
    {"label_prior": True, "prior": "mixture", "z_dim": 2},
    {"recon": "mse", "prior": "kali", "arch": "conv", "base_channels": 8, "max_channels": 8},
])
def test_variants_isolate_gradients(variant):
    """Each phase's gradients equal autograd.grad of its loss for its networks; the others get none."""
    tr = make(**variant)
    m, b = tr.method, batch_of(tr)
    for spec in tr.optimizers.values():
        for g in spec.param_groups:
            g["lr"] = 0.0
    for ph in tr.phases:
        params = [p for n in ph.nets for p in m.nets[n].parameters()]
        torch.manual_seed(3)
        tr.set_trainable(ph.nets)
        out = ph.loss(m, b, CTX)
        assert all(torch.isfinite(v) for v in out.values()), (ph.name, out)
        expected = torch.autograd.grad(out["loss"], params, allow_unused=True)
        for p in m.parameters():
            p.grad = None
        torch.manual_seed(3)
        assert tr.run_phase(ph, b, CTX) is not None
        for p, e in zip(params, expected):
            assert (p.grad is None or not p.grad.any()) if e is None else torch.allclose(p.grad, e, atol=1e-5,
                                                                                         rtol=1e-4)
        for n, net in m.nets.items():
            if n not in ph.nets:
                assert all(p.grad is None for p in net.parameters()), (variant, ph.name, n)


def test_encoders_and_supervised_decoding():
    tr = make(encoder="gaussian", supervised=True)
    m, b = tr.method, batch_of(tr, 10)
    m.eval()
    with torch.no_grad():
        assert torch.equal(m.encode(b.x), m.encode(b.x))  # encode is μ: deterministic
        assert not torch.equal(m.code(b.x), m.code(b.x))  # training draws z = μ + σε
        z = m.encode(b.x)
        assert torch.equal(m.decode(z), m.generate(z, torch.arange(10) % 10, m.net("G")).sigmoid())  # i mod K
        assert m.decode(z).shape == b.x.shape and 0 <= float(m.decode(z).min())  # BCE: sigmoid output
        three = m.decode(z, label=3)
        assert torch.equal(three, m.generate(z, torch.full((10,), 3), m.net("G")).sigmoid())
        rec = m.reconstruct(b.x, b.y)
        assert torch.equal(rec, m.generate(z, b.y, m.net("G")).sigmoid())
    assert [o.name for o in m.decode_options()] == ["label"]
    assert m.prior(5, torch.Generator().manual_seed(0)).shape == (5, 4)


def test_label_tied_prior_places_classes_on_their_components():
    tr = make(label_prior=True, prior="mixture", z_dim=2)
    m = tr.method
    assert m.prior_dist.num_components == 10 and m.nets["D"].net[0].in_features == 2 + 10
    y = torch.tensor([0, 5, 5])
    torch.manual_seed(0)
    z = m.prior_samples(3, y)
    means = torch.tensor([[1.4, 0.0], [-1.4, 0.0], [-1.4, 0.0]])
    assert (z - means).norm(dim=1).max() < 2.0


def test_configuration_errors():
    with pytest.raises(ConfigError, match="unknown prior"):
        AAEConfig(prior="fractal-ish")
    with pytest.raises(ConfigError, match="unknown option.*for prior 'ifs'"):
        AAEConfig(prior="ifs", prior_opts={"sigma": 5})
    with pytest.raises(ConfigError, match="encoder must be one of"):
        AAEConfig(encoder="vae")
    with pytest.raises(ConfigError, match="dis_lr"):
        AAEConfig(dis_lr=0)
    with pytest.raises(ConfigError, match="label-tied components"):
        make(label_prior=True, prior="gaussian")
    with pytest.raises(ConfigError, match="must equal the number of classes"):
        make(label_prior=True, prior="mixture", prior_opts={"k": 4}, z_dim=2)
    with pytest.raises(ConfigError, match="labelled data"):
        make(data="toy:8gaussians", supervised=True)


def _measure(m, x, y, zp):
    m.eval()
    with torch.no_grad():
        codes = m.encode(x)
        mse = (m.reconstruct(x) - x).pow(2).mean().item()
    m.train()
    return energy_distance(codes, zp), mse, codes


@pytest.mark.parametrize("prior,opts", [("gaussian", {}), ("ifs", {})])
def test_aae_learns_digits(tmp_path, prior, opts):
    """On digits: codes match the prior (energy distance falls far below its start), reconstructions
    improve, and a linear probe on the codes separates the ten classes far above chance."""
    model = {"z_dim": 8, "arch": "mlp", "hidden": 256, "depth": 2, "d_hidden": 128, "d_depth": 2,
             "prior": prior, "prior_opts": opts}
    cfg = TrainConfig(method="aae", data="digits", resolution=16, kimg=14, batch_size=64, precision="fp32",
                      log_every_kimg=5, sample_every_kimg=100, snapshot_every_kimg=100)
    tr = Trainer(cfg, model, tmp_path / prior, progress=False)
    b = tr.batch(800)
    zp = tr.method.prior(800, torch.Generator().manual_seed(1))
    ed0, mse0, codes0 = _measure(tr.method, b.x, b.y, zp)
    tr.run()
    ed1, mse1, codes1 = _measure(tr.method, b.x, b.y, zp)
    floor = energy_distance(zp, tr.method.prior(800, torch.Generator().manual_seed(2)))
    assert ed1 < 0.35 * ed0 and ed1 < 60 * floor, (ed0, ed1, floor)
    assert mse1 < 0.2 * mse0, (mse0, mse1)
    assert linear_probe(codes1, b.y) > 0.7  # chance: 0.1


def test_latent_scatter_draws_the_papers_figure(tmp_path):
    from PIL import Image

    for z_dim, prior in ((2, "mixture"), (4, "ifs")):
        tr = make(z_dim=z_dim, prior=prior)
        out = latent_scatter(tr.method, tr.dataset, tmp_path / f"z{z_dim}.png", n=200)
        assert out.exists() and Image.open(out).size[0] > 300


def test_cli_trains_with_seed_knobs_and_interpolates(tmp_path, cli_env):
    """--epochs / --batch-size / --set gen_lr= / --set dis_lr= / a fractal prior, then the
    snapshot loads and `calae interpolate` draws linear interpolations between real pairs."""
    out = tmp_path / "run"
    args = ["train", "aae", "--data", "digits", "--epochs", "0.05", "--batch-size", "30", "--out", str(out),
            "--set", "gen_lr=0.002", "--set", "dis_lr=0.0005", "--set", "prior=ifs",
            "--set", 'prior_opts={"maps": 5, "contraction": 0.6}', "--precision", "fp32", "--no-progress"]
    for k, v in tiny_model_cfg("aae").items():
        args += ["--set", f"{k}={v}"]
    p = subprocess.run([sys.executable, "-m", "calae", *args], env=cli_env, capture_output=True, text=True,
                       timeout=240)
    assert p.returncode == 0, p.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["gen_lr"] == 0.002 and cfg["model"]["dis_lr"] == 0.0005
    assert cfg["model"]["prior"] == "ifs" and cfg["model"]["prior_opts"] == {"maps": 5, "contraction": 0.6}
    assert cfg["train"]["batch_size"] == 30 and cfg["train"]["epochs"] == 0.05
    m = load_snapshot(out)
    assert isinstance(m, AAE) and m.prior_dist.name == "ifs"
    from calae.cli import main

    assert main(["interpolate", str(out), "--pairs", "2", "--steps", "4", "--out", str(tmp_path / "i.gif")]) == 0
    assert Image.open(tmp_path / "i.gif").n_frames == 4 + 2  # ping-pong of 4 steps
    strip = Image.open(tmp_path / "i.png")
    assert strip.size[1] > strip.size[0]  # 4 steps stacked, 2 pairs across


def test_cli_seed_002_flag_names(tmp_path, capsys):
    """The seed's own flags, once the CLI has them: --epochs --batch_size --gen_lr --dis_lr
    --directory (--data mnist:DIR) --download."""
    from calae.cli import build_parser, main
    from calae.data.mnist import write_idx

    d = tmp_path / "mnist"
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte", torch.randint(0, 255, (40, 28, 28), dtype=torch.uint8).numpy())
    write_idx(d / "train-labels-idx1-ubyte", (torch.arange(40) % 10).to(torch.uint8).numpy())
    rc = main(["train", "aae", "--directory", str(d), "--epochs", "1", "--batch_size", "20", "--gen_lr", "0.002",
               "--dis_lr", "0.0004", "--out", str(tmp_path / "run"), "--dry-run", "--no-progress",
               *sum((["--set", f"{k}={v}"] for k, v in tiny_model_cfg("aae").items()), [])])
    assert rc == 0
    err = capsys.readouterr().err
    resolved, _ = json.JSONDecoder().raw_decode(err[err.index("{"):])
    assert resolved["train"]["data"] == f"mnist:{d}" and resolved["train"]["batch_size"] == 20
    assert resolved["train"]["epochs"] == 1
    assert resolved["model"]["gen_lr"] == 0.002 and resolved["model"]["dis_lr"] == 0.0004
    parse = build_parser().parse_args
    assert parse(["train", "aae", "--out", "o", "--download", "True"]).download is True  # the seed's spelling
    assert parse(["train", "aae", "--out", "o", "--download"]).download is True
    assert parse(["train", "aae", "--out", "o"]).download is False
    assert main(["train", "vae", "--data", "digits", "--dis_lr", "0.1", "--out", str(tmp_path / "v"), "--dry-run"]) == 2


@pytest.mark.parametrize("info,want", [
    (dict(kind="image", channels=1, resolution=28, name="mnist"), "mlp"),  # the seed's MNIST setup
    (dict(kind="image", channels=1, resolution=16, name="digits"), "mlp"),
    (dict(kind="points", dim=2, name="toy:rings"), "mlp"),
    (dict(kind="image", channels=1, resolution=32), "conv"),
    (dict(kind="image", channels=3, resolution=28), "conv"),
])
def test_arch_auto_chooses_by_data_as_alae(info, want):
    from calae.data.base import DataInfo
    from calae.methods.alae import ALAEConfig, resolve_arch

    info = DataInfo(**info)
    m = AAE(AAEConfig(hidden=32, depth=1, d_hidden=16, d_depth=1, base_channels=8, max_channels=16), info)
    has_conv = any(isinstance(x, torch.nn.Conv2d) for x in m.nets["E"].modules())
    assert (m.conv, has_conv) == (want == "conv", want == "conv")
    assert (resolve_arch(ALAEConfig(), info) == "mlp") == (want == "mlp")  # the same rule as ALAE's
    if info.kind == "image":  # an explicit arch still wins
        assert AAE(AAEConfig(arch="conv", base_channels=8, max_channels=16, d_hidden=16), info).conv
