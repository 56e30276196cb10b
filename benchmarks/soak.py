"""Soak test of the hardening (issue 16): kill -9 trials, bad inputs, hostile files.

    python -m benchmarks.soak --trials 10 --out benchmarks/results/soak.json

- kill trials: a tiny VAE run is killed with SIGKILL at a random moment, half of the time inside a
  checkpoint write (the CALAE_FAULT_PAUSE_WRITE_S hook pauses between the temporary file and its
  rename), then the same command is rerun to the end; a trial survives when the final weights
  equal an uninterrupted run's bit for bit, stats.jsonl equals the uninterrupted run's (every
  field but the wall-clock rates img_per_s and data_wait; log and checkpoint intervals are
  staggered, so most checkpoints fall inside a logging window) and no temporary file is left.
- bad inputs: CLI commands that must each end with exit code 2 and one line on stderr.
- hostile files: pickles in the place of snapshots, states and configs that would create a marker
  file if anything unpickled them; the marker must never appear.
Prints survived / total for each part.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIMG, BATCH, SNAPSHOT_EVERY = 0.8, 16, 0.1
TRAIN = ["train", "vae", "--data", "digits", "--resolution", "16", "--kimg", str(KIMG), "--batch-size", str(BATCH),
         "--set", "z_dim=4", "--set", "base_channels=8", "--set", "max_channels=16",
         "--set", f"snapshot_every_kimg={SNAPSHOT_EVERY}",
         "--set", "log_every_kimg=0.08", "--no-progress", "--precision", "fp32", "--threads", "1"]


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    env.update(extra)
    return env


def _cli(args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "calae", *args], env=env or _env(), capture_output=True, text=True,
                          timeout=timeout)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(folder / "state.safetensors")).items() if k.startswith("model.")}


TIMING = {"img_per_s", "data_wait"}  # wall-clock rates: the only fields a resumed run may log differently


def _stats(folder: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(s).items() if k not in TIMING}
            for s in (folder / "stats.jsonl").read_text().splitlines()]


def _checkpoints() -> int:
    """How many checkpoints a run of TRAIN writes (at each snapshot interval crossed, and at the end)."""
    from calae.training.loop import _next_multiple

    steps = math.ceil(KIMG * 1000 / BATCH)
    n, nxt = 0, _next_multiple(0.0, SNAPSHOT_EVERY)
    for s in range(1, steps + 1):
        kimg = s * BATCH / 1000.0
        if kimg >= nxt or s == steps:
            n, nxt = n + 1, _next_multiple(kimg, SNAPSHOT_EVERY)
    return n


def _resume_point(stderr: str) -> str:
    m = re.search(r"resuming .* at ([0-9.]+) kimg \(step (\d+)\)", stderr)
    return f"resumed at step {m.group(2)}" if m else "started over (no checkpoint yet)"


def _kill_inside_write(proc, out: Path, k: int) -> bool:
    """Wait for the k-th checkpoint file write (state or snapshot, counted from 1) to reach its
    pause, between the temporary and the rename; False if the run ended first."""
    seen, present = 0, set()
    while proc.poll() is None:
        now = {f.name for n in ("state", "snapshot") for f in out.glob(f".{n}.safetensors.tmp*")}
        seen += len(now - present)
        present = now
        if seen >= k:
            return True
        time.sleep(0.02)
    return False


def kill_trials(work: Path, n: int, rng: random.Random) -> tuple[int, int, list[dict]]:
    import torch

    ref = work / "ref"
    t0 = time.perf_counter()
    p = _cli([*TRAIN, "--out", str(ref)])
    ref_s = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr
    want, want_stats = _weights(ref), _stats(ref)
    writes = 2 * _checkpoints()  # each checkpoint writes state.safetensors, then snapshot.safetensors
    survived, trials = 0, []
    for t in range(n):
        out = work / f"kill{t}"
        inside_write = t % 2 == 1
        env = _env(CALAE_FAULT_PAUSE_WRITE_S="0.5") if inside_write else _env()
        proc = subprocess.Popen([sys.executable, "-m", "calae", *TRAIN, "--out", str(out)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if inside_write:  # inside a random checkpoint write (state or snapshot), during its pause
            k = rng.randint(1, writes)
            where = f"inside checkpoint write {k}/{writes}"
            landed = _kill_inside_write(proc, out, k)
        else:  # at a random moment of an uninterrupted run's wall time
            wait = rng.uniform(0.5, ref_s)
            where = f"at {wait:.1f} s of {ref_s:.1f} s"
            time.sleep(wait)
            landed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        p = _cli([*TRAIN, "--out", str(out)])
        why = "" if p.returncode == 0 else "rerun failed: " + p.stderr[-300:]
        if not why:
            got = _weights(out)
            if not (got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)):
                why = "final weights differ from the uninterrupted run"
            elif _stats(out) != want_stats:
                why = "stats.jsonl differs from the uninterrupted run"
            elif [f for f in out.iterdir() if ".tmp" in f.name]:
                why = "a temporary file was left"
        ok = not why
        survived += ok
        trials.append({"trial": t, "kill": where, "landed_before_the_end": landed,
                       "rerun": _resume_point(p.stderr) if landed else "run had ended", "survived": ok,
                       **({"failure": why} if why else {})})
        print(f"kill trial {t}: {where}{'' if landed else ' (the run had already ended)'}: "
              f"{trials[-1]['rerun']}: {'survived' if ok else 'FAILED: ' + why}", flush=True)
    return survived, n, trials


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def hostile_files(work: Path) -> tuple[int, int, bool]:
    run = work / "ref"
    marker = str(work / "MARKER")
    evil = pickle.dumps(_Evil(marker))
    cases = []
    for name in ("snapshot.safetensors", "state.safetensors", "config.json", "stats.jsonl"):
        d = work / f"hostile-{name}"
        d.mkdir()
        for f in ("config.json", "state.safetensors", "snapshot.safetensors", "stats.jsonl"):
            (d / f).write_bytes((run / f).read_bytes())
        (d / name).write_bytes(evil)
        cases += [["sample", str(d), "--out", str(work / "s.png")], ["eval", str(d), "--json", "--n", "50"],
                  [*TRAIN, "--out", str(d)]]
    (work / "evil.safetensors").write_bytes(evil)
    cases.append(["sample", str(work / "evil.safetensors"), "--out", str(work / "s.png")])
    handled = 0
    for args in cases:
        p = _cli(args)
        lines = p.stderr.strip().splitlines()
        handled += (p.returncode == 0) or (p.returncode == 2 and len(lines) >= 1 and "Traceback" not in p.stderr)
    return handled, len(cases), os.path.exists(marker)


def bad_inputs(work: Path) -> tuple[int, int]:
    run = str(work / "ref")
    (work / "adir").mkdir(exist_ok=True)
    (work / "afile").write_text("x")
    os.mkfifo(work / "fifo.safetensors")
    base = ["train", "vae", "--data", "digits", "--out", str(work / "X")]
    cases = [[*base, "--kimg", v] for v in ("inf", "1e308", "nan", "-1", "abc", "0")]
    cases += [[*base, "--set", s] for s in ("kimg=Infinity", "batch_size=1.5", "seed=abc", "method=aae", "z_dim=0",
                                            "nope=1", "lr=NaN", "precision=7", "threads=-1", "kimg")]
    cases += [["train", "vae", "--epochs", "inf", "--out", str(work / "X")],
              ["train", "vae", "--data", "digits:foo", "--out", str(work / "X")],
              ["train", "vae", "--data", "toy:rings", "--resolution", "32", "--out", str(work / "X")],
              ["train", "vae", "--data", "toy:moons", "--out", str(work / "X")],
              ["train", "vae", "--data", str(work / "nowhere"), "--out", str(work / "X")],
              ["train", "vae", "--data", "mnist:" + str(work / "nowhere"), "--out", str(work / "X")],
              ["train", "vae", "--data", "digits", "--out", str(work / "afile")],
              ["sample", run, "--out", str(work / "adir") + "/"], ["sample", run, "--out", str(work / "x.jpg")],
              ["sample", run, "--n", "2000000", "--out", str(work / "x.png")],
              ["sample", str(work / "fifo.safetensors"), "--out", str(work / "x.png")],
              ["sample", str(work / "nowhere"), "--out", str(work / "x.png")],
              ["encode", run, "--out", str(work / "x.png")], ["interpolate", run, "--out", str(work / "x.png")]]
    handled = 0
    for args in cases:
        try:
            p = _cli(args, timeout=120)
            ok = p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
        except subprocess.TimeoutExpired:
            ok = False
        handled += ok
        if not ok:
            print("not handled:", " ".join(args), flush=True)
    return handled, len(cases)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10, help="kill -9 trials (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="JSON results file")
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ks, kn, trials = kill_trials(work, a.trials, rng)
        bs, bn = bad_inputs(work)
        hs, hn, executed = hostile_files(work)
    res = {"kill_trials_survived": ks, "kill_trials": kn, "bad_inputs_handled": bs, "bad_inputs": bn,
           "hostile_files_handled": hs, "hostile_files": hn, "hostile_files_executed": int(executed),
           "kill_trials_before_the_end": sum(t["landed_before_the_end"] for t in trials),
           "kill_trials_resumed_from_a_checkpoint": sum(t["rerun"].startswith("resumed") for t in trials),
           "trials": trials}
    print(f"kill -9 trials survived: {ks}/{kn} ({res['kill_trials_before_the_end']} killed before the run ended, "
          f"{res['kill_trials_resumed_from_a_checkpoint']} resumed from a checkpoint); bad inputs handled with a one-line error: {bs}/{bn}; "
          f"hostile files handled: {hs}/{hn}, executed: {int(executed)}")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0 if (ks == kn and bs == bn and hs == hn and not executed) else 1


if __name__ == "__main__":
    sys.exit(main())
