"""Seed 004's recipe on a folder of non-square images: VAE, VAE-GAN, GAN from scratch and GAN
started from the pretrained VAE, side by side at equal kimg and seed.

Data: ``--n`` fractals rendered at twice the training resolution, each cut to a rectangle of a
seeded aspect ratio (long side : short side up to ``--max-aspect``, landscape or portrait, random
offset along the short side) and written as PNGs to a folder; the runs read it as any user folder,
with the presets' ``--fit crop`` (centre square, Lanczos resize).

Runs, all with the same seed, batch, kimg, lr and E/G networks (so ``init_from`` copies the VAE's):

- ``vae``             the VAE (β_kl 0.1 as the demo and ``vae-folder-64``, MSE in [-1, 1]; at β_kl 1
                      its 64 px reconstructions at 8 kimg were grey, the colours lost);
- ``vae_gan``         VAE-GAN from scratch (Dis_l at D's layer 1, γ 1e-2, nonsat + R1, the gate,
                      the presets' β_kl 0.02 and pixel term β_pixel 1);
- ``vae_gan_from_vae`` the same VAE-GAN with E and G initialised from the ``vae`` run (seed 004);
- ``gan``             GAN from scratch (nonsat + R1);
- ``gan_from_vae``    the same GAN with G initialised from the ``vae`` run's decoder (``init_from``).

Every adversarial run uses Adam betas (0, 0.99) and D's minibatch-stddev feature (the defaults):
with betas (0.5, 0.999) and no such feature the GANs of the 2026-12-02 run collapsed to nearly
one image within 6 kimg.

Measured at the end, with the offline metrics on the same real subset: sample SWD (``swd_gen``),
Fréchet distance in random-conv features (``fd_randconv``), high-frequency power of samples
relative to the data (``hf_power``: < 1 blurrier than the data) and, for the models that
reconstruct, reconstruction PSNR. The two GANs are also evaluated at kimg 0 and every
``kimg/--points`` kimg (``metrics_every_kimg``, logged in stats.jsonl), giving a curve of sample
quality over kimg; ``race`` says at which kimg each GAN first reaches the from-scratch GAN's final
FD (and SWD). A picture grid (rows: data, VAE / VAE-GAN reconstructions, then samples of the four)
goes to results/vae_gan.png.

    python -m benchmarks.bench_vae_gan [--resolution 64] [--kimg 8] [--n 2048] [--runs vae,gan_from_vae,...]

Results are written after every run to benchmarks/results/vae_gan.json (rows replaced per run name).
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from calae.training.runtime import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ("vae", "gan_from_vae", "gan", "vae_gan", "vae_gan_from_vae")  # the *_from_vae runs need the vae run
SHOWN = ("vae", "vae_gan", "vae_gan_from_vae", "gan", "gan_from_vae")  # table and picture order
CURVE_METRICS = ("swd_gen", "fd_randconv")
# E/G nets shared by all four (CPU-sized: the 64 px presets' nets are ~30x slower per image)
NETS = {"z_dim": 64, "base_channels": 16, "max_channels": 64}
D_NETS = {"d_hidden": 128}
# the loss weights come from the folder presets (vae-folder-64, vae-gan-folder-64), so the benchmark
# measures what a user of the recipe trains; the presets' comments say why these values


def preset_weights(preset: str, keys: tuple[str, ...]) -> dict:
    from calae.registry import PRESETS, load_all

    load_all()
    return {k: PRESETS[preset]["model"][k] for k in keys}



def write_folder(out: Path, n: int, resolution: int, seed: int, max_aspect: float) -> dict:
    """n non-square PNGs cut from fractals rendered at 2·resolution; returns the aspect summary."""
    from calae.data.fractals import render_indices
    from calae.viz.grid import to_pil

    base = 2 * resolution
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ratios = np.exp(rng.uniform(-math.log(max_aspect), math.log(max_aspect), n))  # width / height
    offsets = rng.uniform(0, 1, n)
    sizes = []
    for s in range(0, n, 256):
        x, _ = render_indices(seed, range(s, min(n, s + 256)), resolution=base)
        for j in range(x.shape[0]):
            i, r = s + j, ratios[s + j]
            w, h = (base, max(8, round(base / r))) if r >= 1 else (max(8, round(base * r)), base)
            oy, ox = int(offsets[i] * (base - h)), int(offsets[i] * (base - w))
            to_pil(x[j, :, oy:oy + h, ox:ox + w]).save(out / f"{i:06d}.png", format="PNG")
            sizes.append((w, h))
    a = np.array([w / h for w, h in sizes])
    return {"n": n, "rendered_px": base, "aspect_w_over_h_min": float(a.min()), "aspect_w_over_h_max": float(a.max()),
            "share_square": float(np.mean(np.abs(np.log(a)) < 0.05)), "share_landscape": float(np.mean(a > 1.05)),
            "share_portrait": float(np.mean(a < 1 / 1.05))}


def train_cfg(name: str, folder: Path, a) -> tuple[str, dict, dict]:
    method = {"vae": "vae", "vae_gan": "vae_gan", "vae_gan_from_vae": "vae_gan", "gan": "gan",
              "gan_from_vae": "gan"}[name]
    train = dict(method=method, data=str(folder), resolution=a.resolution, fit="crop", kimg=a.kimg,
                 batch_size=a.batch, seed=a.seed, precision=a.precision, threads=a.threads, log_every_kimg=0.5,
                 sample_every_kimg=0, snapshot_every_kimg=0)
    model = dict(NETS, lr=a.lr)
    if method != "vae":
        model.update(D_NETS)
    if method == "vae_gan":
        model.update(preset_weights("vae-gan-folder-64", ("beta_kl", "beta_pixel")))
    if method == "vae":
        model.update(preset_weights("vae-folder-64", ("beta_kl",)))
    if method in ("gan", "vae_gan"):  # the sample-quality curve, logged by the loop
        train.update(metrics=",".join(CURVE_METRICS), metrics_every_kimg=a.kimg / a.points, metrics_n=a.n_curve)
    if name.endswith("_from_vae"):
        train["init_from"] = str(Path(a.work) / "vae")
    return method, train, model


def first_reach(curve: list[dict], key: str, level: float) -> float | None:
    """The first evaluated kimg at which curve[key] <= level (None: never)."""
    for p in curve:
        if p[key] <= level:
            return p["kimg"]
    return None


def run_one(name: str, folder: Path, a) -> dict:
    from calae.api import Model
    from calae.config import TrainConfig, from_dict
    from calae.metrics import evaluate
    from calae.training import Trainer

    method, train, model = train_cfg(name, folder, a)
    out = Path(a.work) / name
    tr = Trainer(from_dict(TrainConfig, train), model, out, force=True, progress=False, pictures=False)
    curve = []
    if "metrics" in train:
        if train.get("init_from"):  # kimg 0 of a run started from the VAE: its copied weights (the run copies
            tr._init_from()         # them again, the same tensors, when it starts)
        ev = evaluate(tr.method, tr.dataset, list(CURVE_METRICS), n=a.n_curve, seed=a.seed)
        curve.append({"kimg": 0.0, **{k: ev[k] for k in ("swd_gen/avg", "fd_randconv/fd")}})
    res = tr.run()
    for line in open(out / "stats.jsonl"):
        r = json.loads(line)
        if "metrics/fd_randconv/fd" in r:
            curve.append({"kimg": r["kimg"], "swd_gen/avg": r["metrics/swd_gen/avg"],
                          "fd_randconv/fd": r["metrics/fd_randconv/fd"]})
    names = ["swd_gen", "fd_randconv", "hf_power"] + (["recon"] if method != "gan" else [])
    t0 = time.perf_counter()
    scores = evaluate(tr.method, tr.dataset, names, n=a.n_eval, seed=a.seed)
    row = {"run": name, "method": method, "kimg": res["kimg"], "train_s": res["time_s"],
           "eval_s": time.perf_counter() - t0, "skipped": res["skipped"], "train": train, "model": model,
           **{k: scores[k] for k in ("swd_gen/avg", "fd_randconv/fd", "hf_power/ratio", "hf_power/frac_ratio")},
           "recon/psnr": scores.get("recon/psnr"), "recon/mse": scores.get("recon/mse"), "curve": curve}
    if method == "vae_gan":
        row["gate_skips"] = {"D": float(tr.method.gate.skips_D), "G": float(tr.method.gate.skips_G)}
    m = Model(tr.method)
    real = tr.dataset.get(torch.arange(a.n_pic)).x
    row["_pics"] = {"samples": m.sample(a.n_pic, seed=a.seed + 1)}
    if method != "gan":
        row["_pics"]["recon"] = m.reconstruct(real)
    row["_pics"]["real"] = real
    return row


def race(rows: dict) -> dict | None:
    """The quality the from-scratch GAN reaches (its best curve point after kimg 0) and the first
    evaluated kimg at which each GAN is at least that good."""
    if not ("gan" in rows and "gan_from_vae" in rows):
        return None
    out = {}
    for key in ("fd_randconv/fd", "swd_gen/avg"):
        level = min(p[key] for p in rows["gan"]["curve"] if p["kimg"] > 0)
        out[key] = {"level": level, "gan": first_reach(rows["gan"]["curve"], key, level),
                    "gan_from_vae": first_reach(rows["gan_from_vae"]["curve"], key, level),
                    "gan_from_vae_end_vs_start": rows["gan_from_vae"]["curve"][-1][key] / rows["gan_from_vae"]["curve"][0][key]}
    return out


def save_grid(rows: dict, path: Path, n: int) -> None:
    from calae.viz.grid import make_grid, save_image

    any_row = next(iter(rows.values()))
    parts = [any_row["_pics"]["real"][:n]]
    for name in SHOWN:
        if name in rows and "recon" in rows[name]["_pics"]:
            parts.append(rows[name]["_pics"]["recon"][:n])
    for name in SHOWN:
        if name in rows:
            parts.append(rows[name]["_pics"]["samples"][:n])
    save_image(make_grid(torch.cat(parts), nrow=n), path, upscale=2)


def fmt(v, spec=".3g"):
    return "-" if v is None else format(v, spec)


def print_table(rows: dict, rc: dict | None) -> None:
    print(f"\n{'run':<18}{'kimg':>6}{'train s':>9}{'SWD gen':>10}{'FD rconv':>10}{'HF ratio':>10}{'PSNR':>7}")
    for name in SHOWN:
        if name in rows:
            r = rows[name]
            print(f"{name:<18}{r['kimg']:>6.1f}{r['train_s']:>9.0f}{fmt(r['swd_gen/avg']):>10}"
                  f"{fmt(r['fd_randconv/fd']):>10}{fmt(r['hf_power/ratio']):>10}{fmt(r['recon/psnr'], '.1f'):>7}")
    for name in SHOWN:
        if name in rows and rows[name]["curve"]:
            print(f"curve {name}: " + "  ".join(f"{p['kimg']:.1f}k FD {p['fd_randconv/fd']:.3g} SWD "
                                               f"{p['swd_gen/avg']:.3g}" for p in rows[name]["curve"]))
    if rc:
        for k, v in rc.items():
            print(f"race to the scratch GAN's best {k} {v['level']:.3g}: gan at {fmt(v['gan'])} kimg, "
                  f"gan_from_vae at {fmt(v['gan_from_vae'])} kimg (its end / its start: "
                  f"{v['gan_from_vae_end_vs_start']:.2f})")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=64, help="training resolution")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="autocast precision of every run (auto: measured per run)")
    p.add_argument("--kimg", type=float, default=8.0, help="training length of every run (thousands of images)")
    p.add_argument("--points", type=int, default=4, help="GAN curve: evaluations after kimg 0")
    p.add_argument("--batch", type=int, default=16, help="batch size (16: twice the steps of the presets' 32)")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam lr of every network (the presets'; at 5e-4 the "
                   "VAE's 64 px reconstructions kept a third of the colour: chroma spread 5.3 against 15.3, data 38.8)")
    p.add_argument("--n", type=int, default=2048, help="images in the generated folder")
    p.add_argument("--max-aspect", type=float, default=1.8, help="largest long:short side ratio of the images")
    p.add_argument("--n-eval", type=int, default=1000, help="images per final metric")
    p.add_argument("--n-curve", type=int, default=500, help="images per curve point")
    p.add_argument("--n-pic", type=int, default=8, help="images per picture row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default=",".join(ORDER), help="comma list of: " + ", ".join(ORDER))
    p.add_argument("--work", default=None, help="folder for the data and run folders (default: a temporary one)")
    p.add_argument("--out", default=str(RESULTS / "vae_gan.json"))
    p.add_argument("--picture", default=str(RESULTS / "vae_gan.png"))
    p.add_argument("--table", action="store_true", help="print the table of --out (race recomputed) and train nothing")
    a = p.parse_args(argv)
    if a.table:
        doc = json.loads(Path(a.out).read_text())
        rows = {r["run"]: r for r in doc["rows"]}
        doc["race"] = race(rows)
        Path(a.out).write_text(json.dumps(doc, indent=1))
        print_table(rows, doc["race"])
        return doc
    from calae.registry import load_all

    load_all()
    torch.set_num_threads(a.threads)
    wanted = [r for r in ORDER if r in a.runs.split(",")]
    if any(w.endswith("_from_vae") for w in wanted) and "vae" not in wanted and not a.work:
        p.error("the *_from_vae runs need the vae run: include vae in --runs or give --work with a finished vae run")
    tmp = None
    if a.work is None:
        tmp = tempfile.TemporaryDirectory()
        a.work = tmp.name
    folder = Path(a.work) / "data"
    t0 = time.perf_counter()
    data = write_folder(folder, a.n, a.resolution, a.seed, a.max_aspect)
    data["write_s"] = time.perf_counter() - t0
    path = Path(a.out)
    old = json.loads(path.read_text()) if path.exists() else {}
    keep = {r["run"]: r for r in old.get("rows", [])}
    rows: dict = {}
    doc = {}
    for name in wanted:
        rows[name] = run_one(name, folder, a)
        keep[name] = {k: v for k, v in rows[name].items() if not k.startswith("_")}
        rc = race(keep)
        doc = {"benchmark": "vae_gan", "date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(),
               "torch": torch.__version__, "threads": a.threads, "resolution": a.resolution, "fit": "crop",
               "kimg": a.kimg, "batch": a.batch, "precision": a.precision, "lr": a.lr, "seed": a.seed, "n_eval": a.n_eval, "n_curve": a.n_curve,
               "data": data, "race": rc, "rows": [keep[r] for r in ORDER if r in keep]}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1))
        save_grid(rows, Path(a.picture), a.n_pic)
        print(f"{name}: {rows[name]['kimg']:.1f} kimg in {rows[name]['train_s']:.0f} s (written)", flush=True)
    print_table(keep, doc.get("race"))
    print(f"\nwrote {path} and {a.picture}")
    if tmp is not None:
        tmp.cleanup()
    return doc


if __name__ == "__main__":
    main()
