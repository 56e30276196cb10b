"""Quality at equal budget: every image method trained for the same wall-clock training time on
fractals (32 px) and on digits (16 px), then evaluated with the offline metrics.

Each method uses its preset for that data when one exists (a preset whose method matches and
whose data starts with the data name), otherwise its defaults. Training time counts only
optimisation steps (pictures, checkpoints and evaluation are excluded), so methods with costlier
iterations see fewer images: that is the point of an equal budget.

    python -m benchmarks.bench_quality [--quick] [--seconds S] [--methods vae,aae] [--data digits] [--merge]
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


def run_one(method: str, data: str, seconds: float, n_eval: int, seed: int = 0, sets: tuple[str, ...] = ()) -> dict:
    from calae.config import TrainConfig, from_dict, parse_value
    from calae.metrics import evaluate
    from calae.training import Trainer

    spec = DATA[data]
    pname, tr, model = preset_for(method, data)
    for kv in sets:  # --set key=value on the preset's model config
        k, _, v = kv.partition("=")
        model[k] = parse_value(v)
    tr.update(method=method, data=spec["data"], resolution=spec["resolution"], kimg=10_000, seed=seed,
              sample_every_kimg=0, snapshot_every_kimg=0, log_every_kimg=1, n_data=20_000)
    tr.pop("epochs", None)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(from_dict(TrainConfig, tr), model, Path(tmp) / "run", progress=False, pictures=False)
        # The untrained model's scores: the reference that shows each method learnt.
        start = evaluate(trainer.method, trainer.dataset, spec["metrics"], n=n_eval, seed=seed)
        res = trainer.run(time_limit_s=seconds)
        t0 = time.perf_counter()
        scores = evaluate(trainer.method, trainer.dataset, spec["metrics"], n=n_eval, seed=seed)
        sched = getattr(trainer.method, "beta_neg_schedule", None)  # Soft-/AS-IntroVAE: KL(fake) - KL(real)
        return {"method": method, "data": data, "preset": pname, "sets": list(sets), "train_s": res["time_s"], "kimg": res["kimg"],
                "eval_s": time.perf_counter() - t0, "skipped": res["skipped"],
                "kl_gap": None if sched is None else float(sched.gap_ema),
                **scores, **{f"start:{k}": v for k, v in start.items()}}


KEYS = {"fractals": ["recon/mse", "recon/psnr", "swd_rec/avg", "swd_gen/avg", "fd_randconv/fd"],
        "digits": ["recon/mse", "recon/psnr", "fd_classifier/fd", "probe_1nn/acc", "probe_linear/acc"]}


def table(rows: list[dict], seconds: float) -> str:
    """Markdown tables, one per data set: each metric as start -> end, then kimg and the KL gap."""
    out = []
    for data in dict.fromkeys(r["data"] for r in rows):
        keys = KEYS[data]
        out += [f"\n{data} ({DATA[data]['resolution']} px), {seconds:.0f} s of training each, untrained -> trained",
                "| method | kimg | " + " | ".join(keys) + " | KL gap |", "|---" * (len(keys) + 3) + "|"]
        for r in rows:
            if r["data"] != data:
                continue
            cells = [f"{r.get('start:' + k, float('nan')):.4g} → {r.get(k, float('nan')):.4g}" for k in keys]
            gap = "" if r.get("kl_gap") is None else f"{r['kl_gap']:+.3g}"
            name = r["method"] + "".join(f" {kv}" for kv in r.get("sets", []))
            out.append(f"| {name} | {r['kimg']:.1f} | " + " | ".join(cells) + f" | {gap} |")
    return "\n".join(out)


def main(argv=None) -> list[dict]:
    from calae.registry import METHODS, load_all

    load_all()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="20 s per run, fewer evaluation samples")
    p.add_argument("--out", default=None, help="JSON path (default results/quality.json, --quick: quality_quick.json)")
    p.add_argument("--seconds", type=float, help="training seconds per (method, data)")
    p.add_argument("--methods", default=",".join(sorted(METHODS)))
    p.add_argument("--data", default="fractals,digits")
    p.add_argument("--merge", action="store_true",
                   help="keep the other (method, data) rows of --out and replace only the ones run now")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model option of every run (repeatable), e.g. --set stem=full")
    a = p.parse_args(argv)
    seconds = a.seconds or (20 if a.quick else 90)
    n_eval = 500 if a.quick else 1000
    path = Path(a.out or RESULTS / ("quality_quick.json" if a.quick else "quality.json"))
    rows = []
    if a.merge and path.exists():
        old = json.loads(path.read_text())
        if old.get("seconds") != seconds or old.get("n_eval") != n_eval:
            raise SystemExit(f"--merge: {path} was measured with {old.get('seconds')} s and n_eval "
                             f"{old.get('n_eval')}; run with the same budget or without --merge")
        rows = old["rows"]
    for data in a.data.split(","):
        for m in a.methods.split(","):
            row = run_one(m, data, seconds, n_eval, sets=tuple(a.set))
            rows = [r for r in rows if (r["method"], r["data"], r.get("sets", [])) != (m, data, a.set)] + [row]
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    order = {d: i for i, d in enumerate(DATA)}
    rows.sort(key=lambda r: (order.get(r["data"], 99), r["method"]))
    print(table(rows, seconds))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(
        {"date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(), "seconds": seconds,
         "n_eval": n_eval, "rows": rows}, indent=2))
    print(f"\nwrote {path}")
    return rows


if __name__ == "__main__":
    main()
