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
from calae.training.stats import read_stats

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


# snapshots every 3 steps, log records every 4: every other checkpoint falls inside a logging window
KILL_RUN = ["train", "vae", "--data", "digits", "--resolution", "16", "--kimg", "0.192", "--batch-size", "16",
            "--set", "z_dim=4", "--set", "base_channels=8", "--set", "max_channels=16",
            "--set", "snapshot_every_kimg=0.048", "--set", "log_every_kimg=0.064", "--set", "sample_every_kimg=100",
            "--no-progress", "--precision", "fp32", "--threads", "1"]
TIMING = {"img_per_s", "data_wait"}  # wall-clock rates: the only fields a resumed run may log differently


def _stats(out):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_stats(out / "stats.jsonl")]


def test_logged_losses_after_a_kill_and_resume_equal_an_uninterrupted_run(tmp_path, cli_env):
    """kill -9 inside the checkpoint write of step 9, after the record of step 8: the run resumes
    from step 6's checkpoint, whose logging window holds steps 5-6, and step 8's record is redone
    over steps 5-8 as in the uninterrupted run (not over 7-8)."""
    cmd = [sys.executable, "-m", "calae", *KILL_RUN]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    p = subprocess.run([*cmd, "--out", str(ref)], env=cli_env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    want = _stats(ref)
    assert [r["step"] for r in want] == [4, 8, 12]
    proc = subprocess.Popen([*cmd, "--out", str(out)], env=dict(cli_env, CALAE_FAULT_PAUSE_WRITE_S="1.5"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            recs = _stats(out)
            if any(r.get("step") == 8 for r in recs) and list(out.glob(".state.safetensors.tmp*")):
                break  # paused inside step 9's state write: step 6's checkpoint is the last intact one
            time.sleep(0.02)
        else:
            pytest.fail("the run never reached step 9's checkpoint write")
    finally:
        proc.kill()
        proc.wait()
    assert [r["step"] for r in _stats(out)] == [4, 8]
    p = subprocess.run([*cmd, "--out", str(out)], env=cli_env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "resuming" in p.stderr and "at 0.10 kimg (step 6)" in p.stderr
    assert _stats(out) == want


def test_a_damaged_logging_window_refuses_resume(run):
    def meta(m):
        c = json.loads(m["counters"])
        c["log_window"] = {"sums": {"vae/loss": "x"}, "counts": {"vae/loss": 1}}
        return {**m, "counters": json.dumps(c)}

    _rewrite(run / "state.safetensors", meta)
    with pytest.raises(CheckpointError, match="log_window") as e:
        make_trainer(run, kimg=0.128).run()
    assert "\n" not in str(e.value)


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



def test_divergence_after_a_checkpoint_names_it_and_bf16_runs_are_told_fp32(tmp_path):
    """The other branch of each claim: a checkpoint exists (named with its kimg, and intact), and a
    bf16 run is offered fp32."""
    from calae.training import TrainingDiverged
    from calae.training.checkpoint import load_state

    cfg = TrainConfig(method="vae", data="digits", resolution=16, kimg=0.5, batch_size=16, log_every_kimg=0.032,
                      sample_every_kimg=100, snapshot_every_kimg=0.032, precision="bf16", max_bad_steps=2)
    tr = Trainer(cfg, tiny_model_cfg("vae"), tmp_path / "r", progress=False)
    real = tr.phases[0].loss

    def loss(m, b, c):  # finite for steps 0-1 (checkpoint at step 2), then NaN
        out = real(m, b, c)
        return out if c.step < 2 else dict(out, loss=out["loss"] * float("nan"))

    tr.phases[0].loss = loss
    with pytest.raises(TrainingDiverged) as e:
        tr.run()
    msg = str(e.value)
    assert "the last good checkpoint in" in msg and "(at 0.03 kimg) is intact" in msg and "no checkpoint" not in msg
    assert "--precision fp32" in msg and "--init-from" in msg
    fresh = Trainer(cfg, tiny_model_cfg("vae"), tmp_path / "r2", progress=False)
    assert load_state(tmp_path / "r" / "state.safetensors", fresh.method, fresh.optimizers)["step"] == 2

# ---- 3. checked checkpoints ------------------------------------------------------------------
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from calae.training import load_snapshot  # noqa: E402
from calae.training.checkpoint import digest  # noqa: E402


def _rewrite(path, meta_fn=None, tensors_fn=None, rehash=True):
    """Rewrite a checkpoint with changed metadata / tensors; ``rehash`` keeps its content hash
    consistent (a hostile file, not a damaged one)."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    if tensors_fn:
        tensors = tensors_fn(tensors)
    if meta_fn:
        meta = meta_fn(meta)
    if rehash and "sha256" in meta:
        meta["sha256"] = digest(tensors)
    save_file(tensors, str(path), metadata=meta)


def _flip_bytes(path, n):
    raw = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    for i in range(n):
        j = header + (i * 7919) % (len(raw) - header)
        raw[j] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_flipped_bytes_in_a_snapshot_are_detected(run, tmp_path, capsys):
    _flip_bytes(run / "snapshot.safetensors", 2000)
    with pytest.raises(CheckpointError, match="content hash"):
        load_snapshot(run)
    assert main(["sample", str(run), "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "damaged" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s.png").exists()


def test_non_finite_weights_are_refused(run):
    def poison(t):
        k = next(k for k in t if k.startswith("nets.G.") and t[k].is_floating_point())
        t[k] = t[k].clone()
        t[k].view(-1)[0] = float("nan")
        return t

    _rewrite(run / "snapshot.safetensors", tensors_fn=poison)
    with pytest.raises(CheckpointError, match="NaN or infinite") as e:
        load_snapshot(run)
    assert "\n" not in str(e.value)


def test_eval_json_is_valid_json_with_null_for_non_finite(run, capsys, monkeypatch):
    import calae.metrics

    monkeypatch.setattr(calae.metrics, "evaluate", lambda *a, **k: {"recon/mse": float("nan"), "recon/psnr": 3.5,
                                                                     "x/inf": float("inf")})
    assert main(["eval", str(run), "--metrics", "recon", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) == {
        "recon/mse": None, "recon/psnr": 3.5, "x/inf": None}
    assert "recon/mse" in out.err and "null" in out.err


@pytest.mark.parametrize("damage", ["truncated", "pickle", "flipped", "missing"])
def test_rerun_of_a_finished_run_verifies_its_snapshot(run, damage, tmp_path):
    snap = run / "snapshot.safetensors"
    marker = tmp_path / "MARKER"
    if damage == "truncated":
        snap.write_bytes(snap.read_bytes()[:500])
    elif damage == "pickle":
        import pickle

        class Evil:
            def __reduce__(self):
                return (open, (str(marker), "w"))

        snap.write_bytes(pickle.dumps(Evil()))
    elif damage == "flipped":
        _flip_bytes(snap, 50)
    else:
        snap.unlink()
    logs = []
    tr = make_trainer(run)
    tr.log = logs.append
    tr.run()
    assert any("rewritten from state.safetensors" in s for s in logs), logs
    assert not marker.exists()
    m = load_snapshot(run)
    assert torch.equal(next(iter(m.state_dict().values())), next(iter(tr.method.state_dict().values())))


def test_flipped_byte_in_the_state_refuses_resume(run):
    state = run / "state.safetensors"
    raw = bytearray(state.read_bytes())
    raw[12] ^= 0x55  # inside the JSON header
    state.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as e:
        make_trainer(run, kimg=0.128).run()
    assert "state.safetensors" in str(e.value) and "\n" not in str(e.value)


HOSTILE_META = {
    "not json": lambda h: "{nope",
    "a list": lambda h: "[1, 2]",
    "missing keys": lambda h: json.dumps({"format": "calae-snapshot-1", "method": "vae"}),
    "unknown keys": lambda h: json.dumps(dict(h, model=dict(h["model"], evil=1))),
    "wrong format": lambda h: json.dumps(dict(h, format="something-else")),
    "resolution -5": lambda h: json.dumps(dict(h, info=dict(h["info"], resolution=-5))),
    "resolution 2**20": lambda h: json.dumps(dict(h, info=dict(h["info"], resolution=2 ** 20))),
    "points dim 1e9": lambda h: json.dumps(dict(h, info={"kind": "points", "dim": 10 ** 9})),
    "unknown info key": lambda h: json.dumps(dict(h, info=dict(h["info"], evil=1))),
    "shape mismatch": lambda h: json.dumps(dict(h, model=dict(h["model"], z_dim=h["model"]["z_dim"] + 1))),
    "unknown method": lambda h: json.dumps(dict(h, method="os.system")),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_META))
def test_hostile_snapshot_metadata_is_a_one_line_error(run, kind, tmp_path, capsys):
    def meta_fn(meta):
        meta["calae"] = HOSTILE_META[kind](json.loads(meta["calae"]))
        return meta

    _rewrite(run / "snapshot.safetensors", meta_fn=meta_fn)
    with pytest.raises(CheckpointError):
        load_snapshot(run)
    assert main(["sample", str(run), "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_named_pipe_as_snapshot_does_not_hang(tmp_path):
    p = tmp_path / "snapshot.safetensors"
    os.mkfifo(p)
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_snapshot(p)


# ---- 4. every bad input is a one-line error, exit 2 --------------------------------------------
D = ["train", "vae", "--data", "digits", "--resolution", "16", "--no-progress"]
BAD_TRAIN = [
    (["--kimg", "inf"], "--kimg"),
    (["--kimg", "1e308"], "--kimg"),
    (["--epochs", "inf"], "--epochs"),
    (["--kimg", "nan"], "--kimg"),
    (["--set", "kimg=Infinity"], "kimg"),
    (["--set", "kimg=NaN"], "kimg"),
    (["--set", "batch_size=1.5"], "batch_size must be a whole number"),
    (["--set", "seed=abc"], "seed must be a whole number"),
    (["--set", "z_dim=2.5"], "z_dim"),
    (["--set", "method=aae"], "calae train aae"),
    (["--set", "precision=true"], "precision"),
    (["--set", "lr=Infinity"], "lr"),
]
BAD_DATA = [
    (["train", "vae", "--data", "digits:foo", "--out", "X"], "digits takes no option"),
    (["train", "vae", "--data", "toy:rings", "--resolution", "32", "--out", "X"], "--resolution"),
    (["train", "vae", "--data", "toy:rings", "--channels", "3", "--out", "X"], "--channels"),
]


@pytest.mark.parametrize("extra,needle", BAD_TRAIN + BAD_DATA, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_options_are_one_line_errors(extra, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = extra if extra[0] == "train" else [*D, "--out", "X", *extra]
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(args))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "X").exists()


def _bad_sample_cases(run, tmp_path):
    (tmp_path / "adir").mkdir()
    return [
        (["sample", str(run), "--out", str(tmp_path / "adir") + "/"], "is a folder"),
        (["sample", str(run), "--out", str(tmp_path / "adir")], "is a folder"),
        (["sample", str(run), "--out", str(tmp_path / "x.jpg")], ".png or .npz"),
        (["sample", str(run), "--n", "2000000", "--out", str(tmp_path / "x.png")], "at most 4096"),
        (["sample", str(run), "--n", "200000000", "--out", str(tmp_path / "x.npz")], "at most"),
        (["interpolate", str(run), "--out", str(tmp_path / "x.png")], ".gif"),
        (["reconstruct", str(run), "--out", str(tmp_path / "adir")], "is a folder"),
        (["train", "vae", "--data", "digits", "--out", str(run / "config.json")], "is a file"),
    ]


def test_bad_outputs_are_one_line_errors(run, tmp_path, capsys):
    for args, needle in _bad_sample_cases(run, tmp_path):
        before = sorted(p.name for p in tmp_path.rglob("*"))
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, (args, err)
        assert sorted(p.name for p in tmp_path.rglob("*")) == before, args  # no temp file left anywhere


def test_hostile_stats_lines_do_not_block_resume(tmp_path):
    out = tmp_path / "r"
    make_trainer(out, kimg=0.064).run()
    with open(out / "stats.jsonl", "ab") as f:
        f.write(b"\xff\xfe not utf-8\n[1, 2]\n" + b'{"kimg": "abc", "step": 3}\n"a string"\n')
    assert make_trainer(out, kimg=0.128).run()["steps"] == 8
    lines = [json.loads(s) for s in (out / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6, 8]


def test_a_full_disk_keeps_the_last_checkpoint_and_says_so(tmp_path, monkeypatch):
    import errno

    import calae.training.checkpoint as ck

    real, calls = ck.save_file, {"n": 0}

    def full(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] > 2:  # the first checkpoint (state + snapshot) fits, then the disk is full
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(ck, "save_file", full)
    out = tmp_path / "r"
    with pytest.raises(CheckpointError) as e:
        make_trainer(out, kimg=0.128).run()
    msg = str(e.value)
    assert "no space left" in msg and "at 0.03 kimg" in msg and "rerun" in msg and "\n" not in msg
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    monkeypatch.setattr(ck, "save_file", real)
    tr = make_trainer(out, kimg=0.128)
    assert tr.run()["steps"] == 8


def test_bf16_on_a_cpu_without_fast_bf16_warns(monkeypatch):
    from calae.training import precision

    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    dtype, why = precision.resolve_precision("bf16", torch.device("cpu"))
    assert dtype == torch.bfloat16 and "warning" in why and "slower" in why
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert "warning" not in precision.resolve_precision("bf16", torch.device("cpu"))[1]


# ---- data ------------------------------------------------------------------------------------
def test_a_named_pipe_in_an_image_folder_is_skipped(tmp_path):
    import numpy as np
    from PIL import Image

    from calae.data import open_dataset

    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / "imgs" / "a.png")
    os.mkfifo(tmp_path / "imgs" / "x.png")
    ds = open_dataset(str(tmp_path / "imgs"), resolution=8)
    assert len(ds) == 1


def test_an_unreadable_folder_is_named_unreadable(tmp_path, monkeypatch):
    from calae.data import DataError, open_dataset

    (tmp_path / "imgs").mkdir()
    real = os.listdir

    def deny(p="."):
        if str(p) == str(tmp_path / "imgs"):
            raise PermissionError(13, "Permission denied")
        return real(p)

    monkeypatch.setattr(os, "listdir", deny)
    with pytest.raises(DataError, match="cannot read the folder .*Permission denied"):
        open_dataset(str(tmp_path / "imgs"), resolution=8)


def test_mnist_gzip_bomb_is_refused_early(tmp_path, monkeypatch):
    """A header that claims 10 images followed by ~200 MB of zeros: refused, having decompressed
    only about the header's size."""
    import gzip
    import struct
    import tracemalloc

    from calae.data import DataError, mnist

    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(struct.pack(">IIII", 2051, 10, 28, 28) + bytes(10 * 28 * 28))
        block = bytes(1 << 20)
        for _ in range(200):
            f.write(block)
    assert path.stat().st_size < 2_000_000
    tracemalloc.start()
    with pytest.raises(DataError, match="longer than its header"):
        mnist.read_idx(path, mnist.IMAGES_MAGIC)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20_000_000
    # a header that itself claims too much is refused before decompressing
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">IIII", 2051, 4_000_000, 28, 28) + bytes(100))
    with pytest.raises(DataError, match="over the limit"):
        mnist.read_idx(path, mnist.IMAGES_MAGIC)


def test_mnist_with_zero_items_is_a_clear_error(tmp_path):
    import numpy as np

    from calae.data import DataError
    from calae.data.mnist import open_mnist, write_idx

    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((0,), np.uint8))
    with pytest.raises(DataError, match="0 images"):
        open_mnist(tmp_path)


def test_offline_download_error_names_no_missing_option(tmp_path, monkeypatch):
    import urllib.request

    from calae.data import DataError
    from calae.data.mnist import download

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as e:
        download(tmp_path, progress=False)
    assert "--mirror" not in str(e.value) and "CALAE_MNIST_MIRROR" in str(e.value)
