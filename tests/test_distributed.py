"""Data-parallel training under torchrun with 2 CPU processes (gloo), on a tiny BatchNorm VAE at
8 px digits (tests/ddp_worker.py): a NaN on one rank is skipped by both, ranks draw different
random numbers, buffers agree, and an interrupted run resumes bit-identically on every rank."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_worker.py")
STEPS = 6

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(out: Path, env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(WORKER), "--out", str(out), "--steps", str(STEPS), *args]
    proc = subprocess.Popen(cmd, env=dict(env, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers too
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def ok(p: subprocess.CompletedProcess) -> None:
    assert p.returncode == 0, p.stderr[-3000:]


def states(out: Path) -> list[dict[str, torch.Tensor]]:
    return [load_file(str(out / f"rank{r}.safetensors")) for r in range(2)]


@pytest.fixture(scope="module")
def plain(tmp_path_factory, cli_env) -> Path:
    """An uninterrupted 6-step run."""
    out = tmp_path_factory.mktemp("ddp") / "plain"
    ok(torchrun(out, cli_env))
    return out


def test_nan_on_one_rank_is_skipped_by_both(tmp_path, cli_env):
    out = tmp_path / "nan"
    ok(torchrun(out, cli_env, "--nan-rank", "1", "--nan-step", "3"))
    res = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert res == [{"steps": STEPS, "skipped": 1}] * 2
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["step"] == STEPS and stats[-1]["skipped"] == 1
    s0, s1 = states(out)
    assert all(torch.equal(s0[k], s1[k]) for k in s0)  # both ranks skipped the same update


def test_ranks_draw_different_numbers(plain):
    d = [load_file(str(plain / f"draws{r}.safetensors")) for r in range(2)]
    assert d[0].keys() == d[1].keys() and len(d[0]) >= 2  # the VAE's ε, step by step
    for k in d[0]:
        assert d[0][k].shape == d[1][k].shape
        assert not torch.allclose(d[0][k], d[1][k]), f"ranks drew the same {k}"


def test_buffers_agree_across_ranks(plain):
    s0, s1 = states(plain)
    bn = [k for k in s0 if k.endswith("running_mean") or k.endswith("running_var")]
    assert bn, "the test net has no BatchNorm"
    for k in s0:
        assert torch.equal(s0[k], s1[k]), f"rank 0 and rank 1 differ in {k}"
    # the statistics moved from their start (mean 0, var 1): the sync did not freeze them
    assert any(not torch.equal(s0[k], torch.zeros_like(s0[k])) for k in bn if k.endswith("running_mean"))


def test_interrupted_run_resumes_exactly_on_every_rank(plain, tmp_path, cli_env):
    out = tmp_path / "resumed"
    ok(torchrun(out, cli_env, "--stop-at", "3"))
    assert json.loads((out / "rank1.json").read_text())["steps"] == 3
    p = torchrun(out, cli_env)
    ok(p)
    assert "resuming" in p.stderr
    for r, (a, b) in enumerate(zip(states(plain), states(out))):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"rank {r}: {k} differs from the uninterrupted run"



def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d))
    return kids


def _rank_of(pid: int) -> int | None:
    for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if kv.startswith(b"RANK="):
            return int(kv[5:])
    return None


def test_rank_0_holds_the_run_lock_and_a_killed_rank_resumes(plain, tmp_path, cli_env):
    """A run stopped at step 3 is resumed by a torchrun job; while it writes the folder (paused
    inside rank 0's final checkpoint write by the fault hook), a second command on the same folder is refused on one line naming rank 0's pid
    and changes nothing. Then rank 1 is killed with SIGKILL: torchrun tears the job down, the
    kernel releases rank 0's lock, and a rerun removes the orphaned temporary, resumes from step 3
    again and ends with the uninterrupted run's weights on every rank."""
    import time

    from calae.training.runlock import RunLock

    out = tmp_path / "locked"
    ok(torchrun(out, cli_env, "--stop-at", "3"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(WORKER), "--out", str(out), "--steps", str(STEPS)]
    job = subprocess.Popen(cmd, env=dict(cli_env, OMP_NUM_THREADS="1", CALAE_FAULT_PAUSE_WRITE_S="120"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not list(out.glob(".state.safetensors.tmp*")):
            assert job.poll() is None, "the torchrun job ended before its checkpoint write"
            assert time.time() < deadline, "the torchrun job never reached its checkpoint write"
            time.sleep(0.05)
        holder = int((out / ".calae.lock").read_text())
        assert _rank_of(holder) == 0, "the lock holder is not rank 0"
        before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        p = subprocess.run([sys.executable, "-m", "calae", "train", "vae", "--data", "digits", "--resolution", "8",
                            "--kimg", "0.1", "--no-progress", "--out", str(out)],
                           env=cli_env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, p.stderr
        last = p.stderr.strip().splitlines()[-1]
        assert f"is in use by another calae process (pid {holder})" in last and "Traceback" not in p.stderr
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
        (rank1,) = [k for k in _children(job.pid) if _rank_of(k) == 1]
        os.kill(rank1, signal.SIGKILL)
        assert job.wait(timeout=120) != 0  # torchrun stops rank 0 too and reports the failure
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    deadline = time.time() + 30
    while True:  # rank 0 is gone, and with it its flock
        try:
            RunLock(out).acquire().release()
            break
        except Exception:
            assert time.time() < deadline, "the lock outlived the killed torchrun job"
            time.sleep(0.1)
    assert list(out.glob(".*.tmp*")), "the kill left no temporary to clean (the test did not kill inside a write)"
    p = torchrun(out, cli_env)
    ok(p)
    assert "removed 1 temporary file" in p.stderr and "at 0.05 kimg (step 3)" in p.stderr and not list(out.glob(".*.tmp*"))
    for r, (a, b) in enumerate(zip(states(plain), states(out))):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"rank {r} differs"
