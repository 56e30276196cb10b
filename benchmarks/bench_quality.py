"""Quality at equal budget: every image method trained for the same wall-clock training time on
fractals (32 px) and on digits (16 px), then evaluated with the offline metrics.

Each method uses its preset for that data when one exists (a preset whose method matches and
whose data starts with the data name), otherwise its defaults. Training time counts only
optimisation steps (pictures, checkpoints and evaluation are excluded), so methods with costlier
iterations see fewer images: that is the point of an equal budget.

    python -m benchmarks.bench_quality [--quick] [--seconds S] [--methods vae,aae]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
DATA = {"fractals": {"data": "fractals", "resolution": 32, "metrics": ["recon", "swd_rec", "swd_gen", "fd_randconv"]},
        "digits": {"data": "digits", "resolution": 16, "metrics": ["recon", "fd_classifier", "probe_1nn", "probe_linear"]}}


def preset_for(method: str, data: str) -> tuple[str | None, dict, dict]:
    from calae.registry import PRESETS

    for name in sorted(PRESETS):
        pr = PRESETS[name]
        if pr["method"] == method and str(pr["train"].get("data", "")).startswith(data):
            return name, dict(pr["train"]), dict(pr["model"])
    return None, {}, {}


def run_one(method: str, data: str, seconds: float, n_eval: int, seed: int = 0) -> dict:
    from calae.config import TrainConfig, from_dict
    from calae.metrics import evaluate
    from calae.training import Trainer

    spec = DATA[data]
    pname, tr, model = preset_for(method, data)
    tr.update(method=method, data=spec["data"], resolution=spec["resolution"], kimg=10_000, seed=seed,
              sample_every_kimg=0, snapshot_every_kimg=0, log_every_kimg=1, n_data=20_000)
    tr.pop("epochs", None)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(from_dict(TrainConfig, tr), model, Path(tmp) / "run", progress=False)
        trainer._pictures = lambda *a, **k: None
        trainer._finish_pictures = lambda *a, **k: None
        res = trainer.run(time_limit_s=seconds)
        t0 = time.perf_counter()
        scores = evaluate(trainer.method, trainer.dataset, spec["metrics"], n=n_eval, seed=seed)
        return {"method": method, "data": data, "preset": pname, "train_s": res["time_s"], "kimg": res["kimg"],
                "eval_s": time.perf_counter() - t0, **scores}


def main(argv=None) -> list[dict]:
    from calae.registry import METHODS, load_all

    load_all()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="20 s per run, fewer evaluation samples")
    p.add_argument("--seconds", type=float, help="training seconds per (method, data)")
    p.add_argument("--methods", default=",".join(sorted(METHODS)))
    p.add_argument("--data", default="fractals,digits")
    a = p.parse_args(argv)
    seconds = a.seconds or (20 if a.quick else 150)
    n_eval = 500 if a.quick else 1000
    rows = []
    for data in a.data.split(","):
        for m in a.methods.split(","):
            row = run_one(m, data, seconds, n_eval)
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    keys = {"fractals": ["recon/mse", "recon/psnr", "swd_rec/avg", "swd_gen/avg", "fd_randconv/fd"],
            "digits": ["recon/mse", "recon/psnr", "fd_classifier/fd", "probe_1nn/acc", "probe_linear/acc"]}
    for data in a.data.split(","):
        print(f"\n{data} ({DATA[data]['resolution']} px), {seconds:.0f} s of training each")
        print(f"{'method':<16}{'kimg':>7}" + "".join(f"{k:>18}" for k in keys[data]))
        for r in rows:
            if r["data"] == data:
                print(f"{r['method']:<16}{r['kimg']:>7.1f}" + "".join(f"{r.get(k, float('nan')):>18.4g}" for k in keys[data]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(
        {"date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(), "seconds": seconds,
         "n_eval": n_eval, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
