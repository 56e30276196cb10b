"""The step contract between the loop and a method: the per-step cache, logged values, on_step_end,
optimizer stages, per-phase precision, init_from and the declared tiny configs."""
import dataclasses
import json

import pytest
import torch

from calae.config import TINY, ConfigError, TrainConfig, tiny
from calae.registry import METHODS, load_all
from calae.training import Trainer, load_snapshot

from conftest import tiny_model_cfg

load_all()
ALL = sorted(METHODS)


def trainer(method, out=None, kimg=0.128, model=None, **train):
    train = {"precision": "fp32", **train}
    cfg = TrainConfig(method=method, data="digits", resolution=16, kimg=kimg, batch_size=16,
                      log_every_kimg=0.032, sample_every_kimg=100, snapshot_every_kimg=100, **train)
    return Trainer(cfg, {**tiny_model_cfg(method), **(model or {})}, out, progress=False, pictures=False)


@pytest.mark.parametrize("method", ALL)
def test_every_method_declares_a_tiny_config_that_builds(method):
    assert method in TINY, f"{method} has no add_tiny(...) next to its presets"
    cfg = tiny(method)
    tr = trainer(method, model=cfg["model"])
    n = sum(p.numel() for p in tr.method.parameters())
    assert n < 2_000_000, f"{method}'s tiny config builds {n:,} parameters"


@pytest.mark.parametrize("method", ALL)
def test_train_step_logs_every_due_phase_and_calls_on_step_end(method, monkeypatch):
    tr = trainer(method)
    seen = []
    monkeypatch.setattr(tr.method, "on_step_end", lambda ctx: seen.append(dict(ctx.logged)))
    ctx = tr.train_step(tr.batch(16), tr.context(0))
    due = [ph.name for ph in tr.phases if tr.due(ph, ctx)]
    assert due and not ctx.skipped
    assert {k.split("/")[0] for k in ctx.logged} == set(due)
    assert seen == [ctx.logged]  # called once, after every phase, with what they logged


def test_soft_intro_phases_share_one_cache_entry_per_step():
    tr = trainer("soft_intro_vae", model={"warmup_kimg": 0.0})
    ctx = tr.train_step(tr.batch(16), tr.context(0))
    assert list(ctx.cache) == ["draws"]
    assert ctx.logged["decoder/kl_real"] == pytest.approx(ctx.logged["encoder/kl_real"])  # the same z|x draw
    assert int(tr.method.beta_neg_schedule.last_step) == 0  # fed by on_step_end


def test_shared_makes_once_per_context():
    from calae.methods.base import StepContext

    calls = []
    ctx = StepContext(0, 0.0, 1.0)
    make = lambda: calls.append(1) or len(calls)  # noqa: E731
    assert ctx.shared("z", make) == 1 and ctx.shared("z", make) == 1 and calls == [1]
    assert StepContext(1, 0.1, 1.0).shared("z", make) == 2


def test_a_phase_can_declare_fp32_under_bf16_autocast():
    tr = trainer("vae", precision="bf16")
    assert tr.amp is torch.bfloat16
    seen = {}

    def probe(name, loss):
        def wrapped(m, batch, ctx):
            seen[name] = torch.is_autocast_enabled("cpu")
            return loss(m, batch, ctx)
        return wrapped

    ph = tr.phases[0]
    auto = dataclasses.replace(ph, name="auto", loss=probe("auto", ph.loss))
    fp32 = dataclasses.replace(ph, name="fp32", loss=probe("fp32", ph.loss), precision="fp32")
    b, ctx = tr.batch(8), tr.context(0)
    assert tr.run_phase(auto, b, ctx) is not None and tr.run_phase(fp32, b, ctx) is not None
    assert seen == {"auto": True, "fp32": False}
    with pytest.raises(ValueError, match="precision"):
        dataclasses.replace(ph, precision="fp16")


def _adam_steps(tr):
    return sorted({int(st["step"]) for opt in tr.optimizers.values() for st in opt.state.values()})


def test_optimizer_state_resets_when_the_stage_changes_and_resume_follows(tmp_path, monkeypatch):
    """A method whose stage changes at 0.064 kimg (step 4 of batch 16): Adam's step counts restart
    there, and a run interrupted right before the boundary resumes bit-identically."""
    from calae.methods.vae import VAE

    monkeypatch.setattr(VAE, "optimizer_epoch", lambda self, kimg: int(kimg >= 0.064))
    a = trainer("vae", tmp_path / "a", kimg=0.128)  # 8 steps
    a.run()
    assert _adam_steps(a) == [4]  # 4 steps since the reset at step 4
    b = trainer("vae", tmp_path / "b", kimg=0.128)
    b.run(stop_at_step=4)  # the checkpoint sits exactly at the boundary
    assert _adam_steps(b) == [4]
    b2 = trainer("vae", tmp_path / "b", kimg=0.128)
    b2.run()
    assert _adam_steps(b2) == [4]
    sa, sb = a.method.state_dict(), b2.method.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_init_from_copies_the_named_networks_and_is_not_repeated_on_resume(tmp_path, monkeypatch):
    src = trainer("vae", tmp_path / "vae", kimg=0.064)
    src.run()
    snap = load_snapshot(tmp_path / "vae")
    dst = trainer("soft_intro_vae", tmp_path / "sivae", kimg=0.128, init_from=str(tmp_path / "vae"),
                  init_nets=("E", "G"), model={"warmup_kimg": 0.0})
    dst.run(stop_at_step=0)  # checkpoint before any update: the copied weights exactly
    got = load_snapshot(tmp_path / "sivae")
    for n in ("E", "G"):
        a, b = snap.nets[n].state_dict(), got.nets[n].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), n
    cfg = json.loads((tmp_path / "sivae" / "config.json").read_text())
    assert cfg["train"]["init_from"] == str(tmp_path / "vae") and cfg["train"]["init_nets"] == ["E", "G"]
    # resume: the state is loaded, the source is not read again (even if it has gone)
    import calae.training.checkpoint as ck

    monkeypatch.setattr(ck, "copy_networks", lambda *a, **k: pytest.fail("init_from repeated on resume"))
    again = trainer("soft_intro_vae", tmp_path / "sivae", kimg=0.128, init_from=str(tmp_path / "vae"),
                    init_nets=("E", "G"), model={"warmup_kimg": 0.0})
    assert again.run()["steps"] == again.total_steps


def test_init_from_shape_mismatch_is_one_line_and_writes_nothing(tmp_path):
    trainer("vae", tmp_path / "vae", kimg=0.032).run()
    bad = trainer("vae", tmp_path / "big", kimg=0.032, init_from=str(tmp_path / "vae"), model={"z_dim": 12})
    with pytest.raises(ConfigError, match=r"network E tensor .* has shape .* there but .* here") as e:
        bad.run()
    assert "\n" not in str(e.value)
    assert not (tmp_path / "big").exists()
    with pytest.raises(ConfigError, match="has no network D"):
        trainer("vae", tmp_path / "x", kimg=0.032, init_from=str(tmp_path / "vae"), init_nets=("E", "D")).run()
    with pytest.raises(ConfigError, match="--init-nets needs --init-from"):
        TrainConfig(init_nets=("E",))


def test_cli_init_from(tmp_path, cli_env):
    import subprocess
    import sys

    base = [sys.executable, "-m", "calae", "train", "vae", "--data", "digits", "--resolution", "16", "--kimg",
            "0.032", "--batch-size", "16", "--no-progress",
            *sum((["--set", f"{k}={v}"] for k, v in tiny_model_cfg("vae").items()), [])]
    subprocess.run(base + ["--out", str(tmp_path / "a")], env=cli_env, check=True, capture_output=True)
    r = subprocess.run(base + ["--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a"), "--init-nets", "G"],
                       env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "initialised G from" in r.stderr
    r = subprocess.run(base + ["--out", str(tmp_path / "c"), "--init-from", str(tmp_path / "nope")],
                       env=cli_env, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
