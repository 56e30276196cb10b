"""CLI smoke tests: the real commands on tiny data, and every user-error path."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from calae.cli import main

TINY = ["--set", "z_dim=4", "--set", "base_channels=8", "--set", "max_channels=16", "--no-progress",
        "--precision", "fp32"]


def run_cli(args, env, timeout=240, check=True):
    p = subprocess.run([sys.executable, "-m", "calae", *args], env=env, capture_output=True, text=True,
                       timeout=timeout)
    if check:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cli_env):
    out = tmp_path_factory.mktemp("cli") / "run"
    p = run_cli(["train", "vae", "--data", "digits", "--resolution", "16", "--kimg", "0.2", "--batch-size", "16",
                 "--out", str(out), *TINY], cli_env)
    assert "run folder" in p.stdout
    return out


def test_train_writes_a_complete_run_folder(trained):
    for name in ("config.json", "state.safetensors", "snapshot.safetensors", "stats.jsonl", "samples.png",
                 "reconstructions.png", "losses.png", "progress.gif"):
        assert (trained / name).exists(), name
    assert list((trained / "tb").glob("events.out.tfevents.*"))
    # the pictures are pictures of this run: 64 samples of 16 px in an 8x8 grid, 16 real/reconstruction
    # pairs in alternating rows, not blank; the progress GIF has a frame per picture interval
    grid = np.asarray(Image.open(trained / "samples.png").convert("L"), dtype=np.float32)
    assert grid.shape[0] >= 8 * 16 and grid.shape[1] >= 8 * 16 and grid.std() > 1.0
    rec = Image.open(trained / "reconstructions.png")
    assert rec.size[1] >= 4 * 16 and np.asarray(rec).std() > 1.0
    assert Image.open(trained / "progress.gif").n_frames >= 2
    assert Image.open(trained / "losses.png").size[0] > 200
    recs = [json.loads(line) for line in (trained / "stats.jsonl").read_text().splitlines()]
    kimgs = [r["kimg"] for r in recs if "step" in r]
    assert kimgs == sorted(kimgs) and kimgs[-1] == pytest.approx(0.208) and all("vae/loss" in r for r in recs if "step" in r)
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["method"] == "vae" and cfg["model"]["z_dim"] == 4


def test_inference_commands(trained, tmp_path, capsys):
    assert main(["sample", str(trained), "--n", "9", "--out", str(tmp_path / "s.png")]) == 0
    assert Image.open(tmp_path / "s.png").size[0] > 16 * 3
    assert main(["sample", str(trained / "snapshot.safetensors"), "--n", "5", "--out", str(tmp_path / "s.npz")]) == 0
    assert np.load(tmp_path / "s.npz")["samples"].shape == (5, 1, 16, 16)
    assert main(["reconstruct", str(trained), "--n", "8", "--out", str(tmp_path / "r.png")]) == 0
    assert main(["reconstruct", str(trained), "--n", "8", "--out", str(tmp_path / "r.npz")]) == 0
    r = np.load(tmp_path / "r.npz")
    assert r["real"].shape == r["reconstruction"].shape == (8, 1, 16, 16) and r["labels"].shape == (8,)
    assert main(["interpolate", str(trained), "--pairs", "2", "--steps", "5", "--out", str(tmp_path / "i.gif")]) == 0
    gif = Image.open(tmp_path / "i.gif")
    assert gif.n_frames == 5 + 3  # ping-pong
    assert (tmp_path / "i.png").exists()
    assert main(["encode", str(trained), "--n", "50", "--out", str(tmp_path / "c.npz")]) == 0
    c = np.load(tmp_path / "c.npz")
    assert c["codes"].shape == (50, 4) and c["labels"].shape == (50,)
    assert main(["latents", str(trained), "--n", "100", "--out", str(tmp_path / "l.png")]) == 0
    assert Image.open(tmp_path / "l.png").size[0] > 100
    assert main(["list"]) == 0
    assert "vae" in capsys.readouterr().out


def test_dry_run_writes_nothing(tmp_path, cli_env):
    p = run_cli(["train", "vae", "--data", "digits", "--resolution", "16", "--out", str(tmp_path / "d"),
                 "--dry-run", *TINY], cli_env)
    assert "trainable in" in p.stderr and "one step of each phase" in p.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("preset,want", [(None, "soft-intro-vae-rings"), ("none", None)])
def test_toy_data_gets_the_papers_settings_without_a_preset(preset, want, tmp_path, capsys):
    """Soft-IntroVAE pointed at toy:NAME trains with the paper's toy settings (official 4x256 ReLU
    net, batch 512, the toy's betas) unless --preset none; flags still override the preset."""
    args = ["train", "soft_intro_vae", "--data", "toy:rings", "--kimg", "1", "--out", str(tmp_path / "r"),
            "--dry-run", "--no-progress", "--precision", "fp32"] + (["--preset", preset] if preset else [])
    assert main(args) == 0
    err = capsys.readouterr().err
    resolved = json.loads(err[err.index("{"):err.index("\n}") + 2])
    if want:
        assert f"using preset {want!r}" in err
        assert resolved["train"]["batch_size"] == 512 and resolved["train"]["kimg"] == 1.0
        m = resolved["model"]
        assert (m["hidden"], m["depth"], m["act"], m["z_dim"]) == (256, 4, "relu", 2)
        assert (m["beta_kl"], m["beta_rec"], m["beta_neg"]) == (0.2, 0.2, 1.0)
    else:
        assert "using preset" not in err and resolved["model"]["act"] == "lrelu"


@pytest.mark.parametrize("args,needle", [
    (["train", "vae", "--data", "/no/such/folder", "--out", "X"], "/no/such/folder"),
    (["train", "vae", "--kimg", "-1", "--out", "X"], "--kimg"),
    (["train", "vae", "--kimg", "abc", "--out", "X"], "--kimg"),
    (["train", "vae", "--data", "digits", "--set", "nope=1", "--out", "X"], "nope"),
    (["train", "vae", "--data", "digits", "--set", "z_dim=0", "--out", "X"], "z_dim"),
    (["train", "vae", "--preset", "nope", "--out", "X"], "preset"),
    (["train", "vae", "--data", "mnist:/no/such", "--out", "X"], "download"),
    (["train", "vae", "--data", "toy:moons", "--out", "X"], "toy"),
    (["sample", "/no/such/run", "--out", "x.png"], "no such checkpoint"),
    (["encode", "/no/such/run", "--out", "x.png"], ".npz"),
])
def test_user_errors_are_one_line_exit_2(args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(args))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "X").exists()


def test_corrupt_snapshot_and_bad_folder(tmp_path, capsys):
    (tmp_path / "snapshot.safetensors").write_bytes(b"\x00" * 40)
    assert main(["sample", str(tmp_path), "--out", str(tmp_path / "s.png")]) == 2
    assert "not a readable" in capsys.readouterr().err
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_text("not an image")
    assert main(["train", "vae", "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "r")]) == 2
    assert "imgs" in capsys.readouterr().err


def test_changed_config_is_refused(trained, capsys):
    args = ["train", "vae", "--data", "digits", "--resolution", "16", "--kimg", "0.2", "--batch-size", "16",
            "--out", str(trained), *TINY]
    args[args.index("z_dim=4")] = "z_dim=6"
    before = (trained / "state.safetensors").read_bytes()
    assert main(args) == 2
    assert "different config" in capsys.readouterr().err
    assert (trained / "state.safetensors").read_bytes() == before


def test_kill_and_resume(tmp_path, cli_env):
    """kill -9 in the middle of training, then the same command finishes from the last checkpoint."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "calae", "train", "vae", "--data", "digits", "--resolution", "16", "--kimg", "3",
            "--batch-size", "16", "--out", str(out), "--set", "snapshot_every_kimg=0.1", *TINY]
    proc = subprocess.Popen(args, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "state.safetensors").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "state.safetensors").exists()
    p = subprocess.run(args, env=cli_env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "resuming" in p.stderr
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    steps = [s["step"] for s in stats if "step" in s]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) and steps[-1] == 188  # ceil(3000/16)


def test_torchrun_two_cpu_processes(tmp_path, cli_env):
    """DDP with gloo on 2 CPU processes: both ranks train in lock-step, only rank 0 writes."""
    out = tmp_path / "ddp"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(cli_env, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "calae",
           "train", "vae", "--data", "digits", "--resolution", "16", "--kimg", "0.128", "--batch-size", "16",
           "--out", str(out), *TINY]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers too
        raise
    assert proc.returncode == 0, stderr[-2000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["step"] == 4  # 128 images / (16 x 2 ranks)
    assert len(stats) == len({s["kimg"] for s in stats})  # one writer
    assert stdout.count("run folder") == 1


def test_eval_command(trained, capsys):
    assert main(["eval", str(trained), "--metrics", "recon,probe_1nn,swd_rec", "--n", "200", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 < res["recon/mse"] < 1 and res["probe_1nn/acc"] > 0.3 and "swd_rec/avg" in res
    assert main(["eval", str(trained), "--metrics", "nope"]) == 2
    assert "unknown metric" in capsys.readouterr().err
    assert main(["eval", str(trained), "--metrics", "toy_hist"]) == 2


def test_list_shows_budgets_and_times_the_presets_asked(tmp_path, capsys, monkeypatch):
    """`calae list` gives every preset's budget; `--durations NAME...` times those presets here (a few
    steps each), on fractals of the same size when their data is not on this machine."""
    monkeypatch.setenv("CALAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # no data/mnist here
    assert main(["list"]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ")}
    assert lines["vae-mnist"].endswith("[600 kimg]") and " here" not in lines["vae-toy"]
    assert main(["list", "--durations", "vae-toy", "vae-mnist"]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ")}
    assert re.search(r"\[2000 kimg, about .+ here\]$", lines["vae-toy"]), lines["vae-toy"]
    assert lines["vae-mnist"].endswith("here (timed on fractals of its size)]"), lines["vae-mnist"]
    assert lines["vae-digits"].endswith("[60 kimg]")  # not asked: not timed
    assert main(["list", "--durations", "no-such-preset"]) != 0
    assert "no preset no-such-preset" in capsys.readouterr().err
