"""Fault injection (issue 16): run folders are never silently overwritten, one writer at a time,
checkpoints are checked on load, and every bad input is a one-line error with exit code 2."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from calae.cli import main
from calae.config import ConfigError, TrainConfig
from calae.training import Trainer
from calae.training.checkpoint import CheckpointError

from conftest import tiny_model_cfg


def make_trainer(out, kimg=0.064, force=False, model=None, **train):
    cfg = TrainConfig(method="vae", data="digits", resolution=16, kimg=kimg, batch_size=16, log_every_kimg=0.032,
                      sample_every_kimg=100, snapshot_every_kimg=0.032, precision="fp32", **train)
    return Trainer(cfg, dict(tiny_model_cfg("vae"), **(model or {})), out, force=force, progress=False)


@pytest.fixture
def run(tmp_path):
    """A finished tiny run folder."""
    out = tmp_path / "r"
    make_trainer(out).run()
    return out


# ---- 1. data loss -----------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["missing", "not json", "a list", "a directory"])
def test_run_without_a_readable_config_is_protected(run, damage):
    """A folder holding run files but no readable config.json is a run: a different config is
    refused and nothing is replaced; --force moves it aside to OUT.previous-N."""
    cfg = run / "config.json"
    cfg.unlink()
    if damage == "not json":
        cfg.write_text("{not json")
    elif damage == "a list":
        cfg.write_text("[1, 2]")
    elif damage == "a directory":
        cfg.mkdir()
    state, snap = (run / "state.safetensors").read_bytes(), (run / "snapshot.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="--force") as e:
        make_trainer(run, model={"z_dim": 8}).run()
    assert "config.json" in str(e.value) and "\n" not in str(e.value)
    assert (run / "state.safetensors").read_bytes() == state and (run / "snapshot.safetensors").read_bytes() == snap
    make_trainer(run, model={"z_dim": 8}, force=True).run()
    prev = Path(f"{run}.previous-1")
    assert (prev / "state.safetensors").read_bytes() == state and (prev / "snapshot.safetensors").read_bytes() == snap
    assert json.loads((run / "config.json").read_text())["model"]["z_dim"] == 8


@pytest.mark.parametrize("keep", ["stats.jsonl", "snapshot.safetensors", "state.safetensors"])
def test_any_run_file_makes_a_folder_a_run(run, keep):
    for name in ("config.json", "state.safetensors", "snapshot.safetensors", "stats.jsonl"):
        if name != keep:
            (run / name).unlink()
    before = (run / keep).read_bytes()
    with pytest.raises(ConfigError, match="no readable config.json|config.json is missing"):
        make_trainer(run).run()
    assert (run / keep).read_bytes() == before


def test_missing_state_is_refused_not_restarted(run):
    (run / "state.safetensors").unlink()
    snap = (run / "snapshot.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="state.safetensors is missing"):
        make_trainer(run).run()
    assert (run / "snapshot.safetensors").read_bytes() == snap
    make_trainer(run, force=True).run()
    assert (Path(f"{run}.previous-1") / "snapshot.safetensors").read_bytes() == snap
    assert (run / "state.safetensors").exists()


def test_a_run_killed_before_its_first_checkpoint_starts_over_cleanly(tmp_path):
    """config.json and a few stats records but no checkpoint yet: start over, without doubling the
    stats records."""
    out = tmp_path / "r"
    make_trainer(out).run()
    for name in ("state.safetensors", "snapshot.safetensors"):
        (out / name).unlink()
    make_trainer(out).run()
    steps = [json.loads(line)["step"] for line in (out / "stats.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


def test_out_pointing_at_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("precious")
    with pytest.raises(ConfigError, match="is a file"):
        make_trainer(f).run()
    assert f.read_text() == "precious"


# ---- 2. one writer per run folder ------------------------------------------------------------
HOLD = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('held', flush=True); "
        "time.sleep(600)")


def _hold_lock(folder):
    folder.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder / ".calae.lock")], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_naming_the_holder(run):
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    holder = _hold_lock(run)
    try:
        with pytest.raises(ConfigError, match=f"in use by another calae process \\(pid {holder.pid}\\)") as e:
            make_trainer(run, kimg=0.128).run()
        assert "\n" not in str(e.value)
        after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".calae.lock"}
        assert after == {k: v for k, v in before.items() if k != ".calae.lock"}
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the killed holder's lock: the run extends normally
    assert make_trainer(run, kimg=0.128).run()["steps"] == 8


def test_two_trainers_in_one_folder_never_both_write(tmp_path):
    out = tmp_path / "r"
    a = make_trainer(out)
    a._open_folder()  # a holds the lock (as a running trainer does)
    try:
        with pytest.raises(ConfigError, match="in use"):
            make_trainer(out).run()
    finally:
        a._release_folder()
    make_trainer(out).run()


def test_orphaned_temp_files_are_removed_by_the_lock_holder(run):
    names = [".state.safetensors.tmp12345", ".snapshot.safetensors.tmp999", ".tmpAb12Cd", "stats.tmp",
             ".config.json.tmp4242"]
    for n in names:
        (run / n).write_bytes(b"x" * 1000)
    (run / "keep.tmp").write_text("not ours")
    make_trainer(run, kimg=0.128).run()
    assert not [n for n in names if (run / n).exists()]
    assert (run / "keep.tmp").exists()


def test_divergence_message_is_true(tmp_path):
    """No checkpoint yet: it does not claim one; fp32 runs are not told to use fp32; the lr advice
    works (a new --out with --init-from, not --set lr on a folder that refuses a changed config)."""
    from calae.training import TrainingDiverged

    tr = make_trainer(tmp_path / "r", kimg=0.5, max_bad_steps=2)
    real = tr.phases[0].loss
    tr.phases[0].loss = lambda m, b, c: {"loss": real(m, b, c)["loss"] * float("nan")}
    with pytest.raises(TrainingDiverged) as e:
        tr.run()
    msg = str(e.value)
    assert "no checkpoint was written yet" in msg and "last good" not in msg
    assert "--precision fp32" not in msg and "--init-from" in msg and "--set lr" not in msg
