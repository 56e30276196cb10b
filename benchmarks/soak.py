"""Soak test of the hardening (issue 16): kill -9 trials, bad inputs, hostile files.

    python -m benchmarks.soak --trials 10 --out benchmarks/results/soak.json

- kill trials: a tiny VAE run is killed with SIGKILL at a random moment, half of the time inside a
  checkpoint write (the CALAE_FAULT_PAUSE_WRITE_S hook pauses between the temporary file and its
  rename), then the same command is rerun to the end; a trial survives when the final weights
  equal an uninterrupted run's bit for bit, stats.jsonl has one record per log step and no
  temporary file is left.
- bad inputs: CLI commands that must each end with exit code 2 and one line on stderr.
- hostile files: pickles in the place of snapshots, states and configs that would create a marker
  file if anything unpickled them; the marker must never appear.
Prints survived / total for each part.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "vae", "--data", "digits", "--resolution", "16", "--kimg", "0.8", "--batch-size", "16",
         "--set", "z_dim=4", "--set", "base_channels=8", "--set", "max_channels=16", "--set", "snapshot_every_kimg=0.1",
         "--set", "log_every_kimg=0.05", "--no-progress", "--precision", "fp32", "--threads", "1"]


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


def kill_trials(work: Path, n: int, rng: random.Random) -> tuple[int, int]:
    import torch

    ref = work / "ref"
    p = _cli([*TRAIN, "--out", str(ref)])
    assert p.returncode == 0, p.stderr
    want = _weights(ref)
    survived = 0
    for t in range(n):
        out = work / f"kill{t}"
        inside_write = t % 2 == 1
        env = _env(CALAE_FAULT_PAUSE_WRITE_S="2") if inside_write else _env()
        proc = subprocess.Popen([sys.executable, "-m", "calae", *TRAIN, "--out", str(out)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if inside_write:  # wait until a temporary checkpoint exists, then kill inside the pause
            deadline = time.time() + 120
            while time.time() < deadline and not (out.exists() and list(out.glob(".*.tmp*"))):
                time.sleep(0.05)
        else:
            time.sleep(rng.uniform(3.0, 12.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        p = _cli([*TRAIN, "--out", str(out)])
        ok = p.returncode == 0
        if ok:
            got = _weights(out)
            ok = got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
            steps = [json.loads(s)["step"] for s in (out / "stats.jsonl").read_text().splitlines()]
            ok = ok and steps == sorted(set(steps)) and not [f for f in out.iterdir() if ".tmp" in f.name]
        survived += ok
        print(f"kill trial {t}: {'inside a checkpoint write' if inside_write else 'random moment'}: "
              f"{'survived' if ok else 'FAILED ' + p.stderr[-300:]}", flush=True)
    return survived, n


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
        ks, kn = kill_trials(work, a.trials, rng)
        bs, bn = bad_inputs(work)
        hs, hn, executed = hostile_files(work)
    res = {"kill_trials_survived": ks, "kill_trials": kn, "bad_inputs_handled": bs, "bad_inputs": bn,
           "hostile_files_handled": hs, "hostile_files": hn, "hostile_files_executed": int(executed)}
    print(f"kill -9 trials survived: {ks}/{kn}; bad inputs handled with a one-line error: {bs}/{bn}; "
          f"hostile files handled: {hs}/{hn}, executed: {int(executed)}")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0 if (ks == kn and bs == bn and hs == hn and not executed) else 1


if __name__ == "__main__":
    sys.exit(main())
