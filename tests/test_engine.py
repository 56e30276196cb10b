"""Contract tests of the training engine, parametrised over the METHODS registry."""
import json
import math

import pytest
import torch

from calae.config import ConfigError, TrainConfig
from calae.losses import kl_normal, recon_loss
from calae.methods.base import StepContext
from calae.registry import METHODS, load_all
from calae.training import Trainer, TrainingDiverged, load_snapshot
from calae.training.checkpoint import CheckpointError
from calae.training.stream import step_indices

from conftest import tiny_model_cfg

load_all()
ALL = sorted(METHODS)


def make_trainer(method, tmp_path=None, data="digits", kimg=0.256, batch=16, **train):
    cfg = TrainConfig(method=method, data=data, resolution=16 if data == "digits" else None, kimg=kimg,
                      batch_size=batch, log_every_kimg=0.064, sample_every_kimg=100, snapshot_every_kimg=0.128,
                      precision="fp32", **train)
    return Trainer(cfg, tiny_model_cfg(method), tmp_path, progress=False)


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    ref = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(kl_normal(mu, logvar, reduce=False), ref, atol=1e-5)
    assert torch.allclose(kl_normal(mu, logvar), ref.mean(), atol=1e-5)


def test_recon_losses_sum_over_pixels():
    x, y = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    assert recon_loss(y, x, "mse").item() == pytest.approx(4.0)
    logits = torch.zeros(2, 4)
    assert recon_loss(logits, torch.ones(2, 4), "bce").item() == pytest.approx(4 * math.log(2), rel=1e-5)


@pytest.mark.parametrize("method", ALL)
def test_phases_finite_and_isolated(method):
    """After a phase, gradients equal autograd.grad of that phase's loss w.r.t. its trainable
    parameters, and every other network holds none (DESIGN.md gradient-isolation test)."""
    tr = make_trainer(method)
    m = tr.method
    for spec in tr.optimizers.values():  # lr 0: the step keeps weights, gradients stay for inspection
        for g in spec.param_groups:
            g["lr"] = 0.0
    batch = tr.batch(16)
    ctx = StepContext(0, 0.0, 1.0)
    for ph in tr.phases:
        params = [p for n in ph.nets for p in m.nets[n].parameters()]
        torch.manual_seed(123)
        tr.set_trainable(ph.nets)
        out = ph.loss(m, batch, ctx)
        assert all(torch.isfinite(v).all() for v in out.values()), (ph.name, out)
        expected = torch.autograd.grad(out["loss"], params, allow_unused=True)
        for p in m.parameters():
            p.grad = None
        torch.manual_seed(123)
        logged = tr.run_phase(ph, batch, ctx)
        assert logged is not None and f"{ph.name}/loss" in logged
        for p, e in zip(params, expected):
            if e is None:
                assert p.grad is None or torch.count_nonzero(p.grad) == 0
            else:
                assert torch.allclose(p.grad, e, atol=1e-5, rtol=1e-4), ph.name
        for n, net in m.nets.items():
            if n not in ph.nets:
                assert all(p.grad is None for p in net.parameters()), f"{n} got gradient in phase {ph.name}"


@pytest.mark.parametrize("method", ALL)
def test_step_changes_only_phase_networks(method):
    tr = make_trainer(method)
    m = tr.method
    batch = tr.batch(16)
    for ph in tr.phases:
        before = {n: [p.detach().clone() for p in net.parameters()] for n, net in m.nets.items()}
        assert tr.run_phase(ph, batch, StepContext(0, 0.0, 1.0)) is not None
        for n, net in m.nets.items():
            changed = any(not torch.equal(a, b) for a, b in zip(before[n], net.parameters()))
            assert changed == (n in ph.nets), (ph.name, n, changed)


@pytest.mark.parametrize("method", ALL)
def test_snapshot_round_trip(method, tmp_path):
    tr = make_trainer(method, tmp_path / "run", kimg=0.064)
    tr.run()
    m = load_snapshot(tmp_path / "run")
    assert not m.training
    tr.method.eval()
    x = tr.batch(4).x
    with torch.no_grad():
        assert torch.equal(m.sample(4, seed=3), tr.method.sample(4, seed=3))
        if m.has_encoder:  # a GAN has none
            assert torch.equal(m.encode(x), tr.method.encode(x))
            assert torch.equal(m.reconstruct(x), tr.method.reconstruct(x))


@pytest.mark.parametrize("method", ALL)
def test_resume_equals_uninterrupted(method, tmp_path):
    a = make_trainer(method, tmp_path / "a")
    ra = a.run()
    b = make_trainer(method, tmp_path / "b")
    b.run(stop_at_step=5)
    b2 = make_trainer(method, tmp_path / "b")
    rb = b2.run()
    assert ra["steps"] == rb["steps"] == a.total_steps
    sa, sb = a.method.state_dict(), b2.method.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    stats = [json.loads(s) for s in (tmp_path / "b" / "stats.jsonl").read_text().splitlines()]
    kimgs = [s["kimg"] for s in stats if "step" in s]
    assert kimgs == sorted(kimgs) and len(kimgs) == len(set(kimgs))


def test_different_config_on_existing_folder_is_refused(tmp_path):
    make_trainer("vae", tmp_path / "r", kimg=0.032).run()
    cfg = TrainConfig(method="vae", data="digits", resolution=16, kimg=0.032, batch_size=8, precision="fp32")
    with pytest.raises(ConfigError, match="different config"):
        Trainer(cfg, tiny_model_cfg("vae"), tmp_path / "r", progress=False).run()
    # --force moves the old run aside and starts over
    Trainer(cfg, tiny_model_cfg("vae"), tmp_path / "r", force=True, progress=False).run()
    assert (tmp_path / "r.previous-1" / "snapshot.safetensors").exists()


def test_larger_budget_extends_a_finished_run(tmp_path):
    make_trainer("vae", tmp_path / "r", kimg=0.064).run()
    r = make_trainer("vae", tmp_path / "r", kimg=0.128).run()
    assert r["steps"] == 8


def test_nan_steps_are_skipped_then_diverge_stops(tmp_path, monkeypatch):
    tr = make_trainer("vae", tmp_path / "r", kimg=0.128, max_bad_steps=3)
    real = tr.phases[0].loss
    calls = {"n": 0}

    def flaky(m, batch, ctx):
        calls["n"] += 1
        out = real(m, batch, ctx)
        if calls["n"] == 2:
            out["loss"] = out["loss"] * float("nan")
        return out

    tr.phases[0].loss = flaky
    r = tr.run()
    assert r["skipped"] == 1 and r["steps"] == tr.total_steps
    good = (tmp_path / "r" / "state.safetensors").read_bytes()

    tr2 = make_trainer("vae", tmp_path / "r", kimg=0.5, max_bad_steps=3)
    tr2.phases[0].loss = lambda m, b, c: {"loss": real(m, b, c)["loss"] * float("inf")}
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        tr2.run()
    assert (tmp_path / "r" / "state.safetensors").read_bytes() == good


def test_stream_indices_disjoint_across_ranks_and_epochs():
    a = step_indices(10, 0, 0, 4, rank=0, world=2)
    b = step_indices(10, 0, 0, 4, rank=1, world=2)
    assert not set(a.tolist()) & set(b.tolist())
    # 10 items, batch 4 x 5 steps = 2 epochs: each epoch is a permutation
    seq = torch.cat([step_indices(10, 0, s, 4) for s in range(5)])
    assert sorted(seq[:10].tolist()) == list(range(10)) and sorted(seq[10:20].tolist()) == list(range(10))


def test_corrupt_snapshot_is_a_clear_error(tmp_path):
    p = tmp_path / "snapshot.safetensors"
    p.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_snapshot(p)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_snapshot(tmp_path / "missing")


def test_snapshot_has_no_pickle(tmp_path):
    make_trainer("vae", tmp_path / "r", kimg=0.032).run()
    raw = (tmp_path / "r" / "snapshot.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    meta = json.loads(header["__metadata__"]["calae"])
    assert meta["method"] == "vae" and meta["info"]["resolution"] == 16


def test_vae_learns_digits(tmp_path):
    """Reconstruction error on digits falls far below its starting value, in fp32 and bf16."""
    results = {}
    for prec in ("fp32", "bf16"):
        cfg = TrainConfig(method="vae", data="digits", resolution=16, kimg=6, batch_size=64, precision=prec,
                          log_every_kimg=1, sample_every_kimg=100, snapshot_every_kimg=100)
        tr = Trainer(cfg, {"z_dim": 16, "base_channels": 16, "max_channels": 32, "lr": 2e-3}, tmp_path / prec,
                     progress=False)
        x = tr.batch(256).x
        with torch.no_grad():
            start = (tr.method.reconstruct(x) - x).pow(2).mean().item()
        tr.run()
        with torch.no_grad():
            end = (tr.method.reconstruct(x) - x).pow(2).mean().item()
        results[prec] = (start, end)
        assert end < 0.35 * start, (prec, start, end)
    # bf16 ends within noise of fp32
    assert abs(results["bf16"][1] - results["fp32"][1]) < 0.25 * results["fp32"][1], results


def test_bad_train_options_name_the_option():
    with pytest.raises(ConfigError, match="--batch-size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="--precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match="z_dim"):
        make_trainer_cfg = METHODS["vae"].Config
        make_trainer_cfg(z_dim=0)


def test_metrics_at_intervals_land_in_stats(tmp_path):
    tr = make_trainer("vae", tmp_path / "r", kimg=0.128, metrics="recon", metrics_every_kimg=0.064, metrics_n=64)
    tr.run()
    recs = [json.loads(line) for line in (tmp_path / "r" / "stats.jsonl").read_text().splitlines()]
    vals = [r["metrics/recon/mse"] for r in recs if "metrics/recon/mse" in r]
    assert len(vals) == 2 and all(v > 0 for v in vals)
    assert tr.method.training  # the metric put the model back in training mode


def test_time_limit_stops_with_a_checkpoint(tmp_path):
    tr = make_trainer("vae", tmp_path / "r", kimg=50)
    r = tr.run(time_limit_s=0.5)
    assert 0 < r["steps"] < tr.total_steps
    assert (tmp_path / "r" / "state.safetensors").exists()


def test_vae_norm_choices_and_per_image_consistency():
    """GroupNorm (the default) keeps each image's code independent of its batch; bools still parse."""
    from calae.methods.vae import VAEConfig
    from calae.data.base import DataInfo

    info = DataInfo(kind="image", channels=3, resolution=16)
    cls = METHODS["vae"]
    m = cls(VAEConfig(z_dim=8, base_channels=8, max_channels=16), info).eval()
    assert any(isinstance(l, torch.nn.GroupNorm) for l in m.nets["E"].modules())
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(m.encode(x)[:1], m.encode(x[:1]), atol=1e-5)
    assert VAEConfig(norm=True).norm == "batch" and VAEConfig(norm=False).norm == "none"
    with pytest.raises(ConfigError, match="norm must be one of"):
        VAEConfig(norm="layer")


def test_conv_vae_learns_colour_on_fractals(tmp_path):
    """Reconstruction error on fractals falls far below its start, and colour (not only luminance) is learnt."""
    cfg = TrainConfig(method="vae", data="fractals", resolution=16, n_data=512, kimg=8, batch_size=32,
                      precision="fp32", log_every_kimg=2, sample_every_kimg=100, snapshot_every_kimg=100)
    tr = Trainer(cfg, {"z_dim": 32, "base_channels": 16, "max_channels": 64, "lr": 1e-3, "beta_kl": 0.1}, tmp_path,
                 progress=False)
    x = tr.batch(256).x

    def chroma(t):  # spread of colour around each pixel's grey level
        return (t - t.mean(1, keepdim=True)).std().item()

    with torch.no_grad():
        start = (tr.method.reconstruct(x) - x).pow(2).mean().item()
    tr.run()
    with torch.no_grad():
        r = tr.method.reconstruct(x)
    end = (r - x).pow(2).mean().item()
    assert end < 0.5 * start, (start, end)
    assert chroma(r) > 0.4 * chroma(x), (chroma(r), chroma(x))


def test_pictures_off_writes_no_pictures(tmp_path):
    """Trainer(pictures=False) (the benchmarks' setting) trains and checkpoints but draws nothing."""
    cfg = TrainConfig(method="vae", data="digits", resolution=16, kimg=0.128, batch_size=16, log_every_kimg=0.064,
                      sample_every_kimg=0.064, snapshot_every_kimg=0.064, precision="fp32")
    tr = Trainer(cfg, tiny_model_cfg("vae"), tmp_path / "run", progress=False, pictures=False)
    tr.run()
    files = {p.name for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert "snapshot.safetensors" in files
    assert not [f for f in files if f.endswith((".png", ".gif"))], files


def test_lr_step_schedule_decays_at_milestones_and_survives_resume(tmp_path):
    sched = dict(lr_decay_kimg=(0.128, 0.064), lr_decay=0.5)  # unsorted on purpose
    a = make_trainer("aae", tmp_path / "a", **sched)
    base = {(n, g["name"]): g["lr"] for n, o in a.optimizers.items() for g in o.param_groups}
    a.run()
    b = make_trainer("aae", tmp_path / "b", **sched)
    b.run(stop_at_step=6)  # 0.096 kimg: past the first milestone only
    for n, o in b.optimizers.items():
        for g in o.param_groups:
            assert g["lr"] == pytest.approx(base[(n, g["name"])] * 0.5)
    b2 = make_trainer("aae", tmp_path / "b", **sched)
    b2.run()
    for n, o in b2.optimizers.items():
        for g in o.param_groups:
            assert g["lr"] == pytest.approx(base[(n, g["name"])] * 0.25)
    sa, sb = a.method.state_dict(), b2.method.state_dict()
    for k in sa:  # the schedule depends on kimg only, so an interrupted run follows the same path
        assert torch.equal(sa[k], sb[k]), k
    stats = [json.loads(s) for s in (tmp_path / "a" / "stats.jsonl").read_text().splitlines()]
    assert [s["lr_scale"] for s in stats if "step" in s] == [1.0, 0.5, 0.25, 0.25]
    # a run without the schedule differs
    c = make_trainer("aae", tmp_path / "c")
    c.run()
    assert any(not torch.equal(v, c.method.state_dict()[k]) for k, v in sa.items())


def test_lr_schedule_options_are_checked():
    assert TrainConfig(lr_decay_kimg=5).lr_decay_kimg == (5.0,)
    with pytest.raises(ConfigError, match="lr_decay_kimg"):
        TrainConfig(lr_decay_kimg=(-1,))
    with pytest.raises(ConfigError, match="lr_decay_kimg"):
        TrainConfig(lr_decay_kimg=("soon",))
    with pytest.raises(ConfigError, match="lr_decay"):
        TrainConfig(lr_decay=0.0)
