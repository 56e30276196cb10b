"""Soft-IntroVAE and AS-IntroVAE on images: do they learn, and does the KL gap stay >= 0?

Trains each method for a fixed number of images (not time: the point is learning, not speed) and
evaluates the untrained and the trained model with the offline metrics:

- ``fractals``: 32 px, 4,096 images, batch 32, 12 kimg with a 2 kimg VAE warm-up, z 64, residual
  nets 32-128 channels (GroupNorm), lr 2e-4, β_neg 256; recon / SWD / random-conv FD.
- ``digits``: 16 px, batch 64, 60 kimg, z 16, nets 16-64, lr 1e-3, β_neg 64 (the digits presets);
  recon / classifier FD / probes.

AS-IntroVAE's decoder EMA has a 2 kimg half-life. Also reported: KL(fake) − KL(real) at the end
(smoothed) and its lowest logged interval mean (the warm-up switch makes it briefly negative).
One torch thread per run; ``--jobs 2`` runs two methods side by side.

    python -m benchmarks.bench_intro_images [--data fractals] [--methods soft_intro_vae,as_intro_vae] [--jobs 2]

Writes benchmarks/results/intro_images.json (rows replaced per (method, data)).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
SETUPS = {
    "fractals": (dict(data="fractals", resolution=32, n_data=4096, kimg=12, batch_size=32, log_every_kimg=0.5),
                 {"z_dim": 64, "base_channels": 32, "max_channels": 128, "lr": 2e-4, "beta_neg": 256.0,
                  "warmup_kimg": 2.0},
                 ["recon", "swd_rec", "swd_gen", "fd_randconv"]),
    "digits": (dict(data="digits", resolution=16, kimg=60, batch_size=64, log_every_kimg=1),
               {"z_dim": 16, "base_channels": 16, "max_channels": 64, "lr": 1e-3, "beta_neg": 64.0},
               ["recon", "fd_classifier", "probe_1nn", "probe_linear"]),
}


def run_one(task: tuple) -> dict:
    method, data, seed, kimg = task
    from calae.config import TrainConfig
    from calae.metrics import evaluate
    from calae.registry import load_all
    from calae.training import Trainer

    torch.set_num_threads(1)
    load_all()
    train, model, metrics = SETUPS[data]
    train = dict(train, **({"kimg": kimg} if kimg else {}))
    model = dict(model, **({"ema_kimg": 2.0} if method == "as_intro_vae" else {}))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(method=method, seed=seed, sample_every_kimg=0, snapshot_every_kimg=0, **train)
        tr = Trainer(cfg, model, Path(tmp) / "run", progress=False, pictures=False)
        t0 = time.time()
        start = evaluate(tr.method, tr.dataset, metrics, n=1000, seed=seed)
        res = tr.run()
        end = evaluate(tr.method, tr.dataset, metrics, n=1000, seed=seed)
        logged = [json.loads(line) for line in open(Path(tmp) / "run" / "stats.jsonl")]
    gaps = [r[k] for r in logged for k in r if k.endswith("kl_gap")]
    return {"method": method, "data": data, "kimg": res["kimg"], "train_s": res["time_s"], "wall_s": time.time() - t0,
            "kl_gap_end": float(tr.method.beta_neg_schedule.gap_ema), "kl_gap_min_logged": min(gaps) if gaps else None,
            "start": start, "end": end}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fractals", help="comma list of: " + ", ".join(SETUPS))
    p.add_argument("--methods", default="soft_intro_vae,as_intro_vae")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel processes (one thread each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kimg", type=float, default=None, help="override the training length (a smoke run)")
    p.add_argument("--out", default=str(RESULTS / "intro_images.json"))
    a = p.parse_args(argv)
    tasks = [(m, d, a.seed, a.kimg) for d in a.data.split(",") for m in a.methods.split(",")]
    if a.jobs > 1 and len(tasks) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(a.jobs, maxtasksperchild=1) as pool:
            rows = pool.map(run_one, tasks)
    else:
        rows = [run_one(t) for t in tasks]
    path = Path(a.out)
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    keep = [r for r in old if (r["method"], r["data"]) not in {(t[0], t[1]) for t in tasks}]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": keep + rows}, indent=1))
    for r in rows:
        print(f"{r['method']} on {r['data']}: {r['kimg']:.1f} kimg in {r['train_s']:.0f} s, KL gap "
              f"{r['kl_gap_end']:+.2f} (lowest logged {r['kl_gap_min_logged']:+.1f})")
        for k, v in r["end"].items():
            print(f"    {k:<20} {r['start'][k]:>10.4g} -> {v:.4g}")
    print(f"\nwrote {path}")
    return rows


if __name__ == "__main__":
    main()
