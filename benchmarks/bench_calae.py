"""CALAE against ALAE on 32 px Kali fractals, side by side, with the ablation of each CALAE term.

Every variant trains the same networks (the ``style-32`` preset's: z 64, channels 16-64, growing
4 -> 32 px) on ``fractals:kali`` at 32 px for the same kimg with the same seed and growth schedule
(``--growth-kimg`` per level, shortened from the preset's 4 so that the budget reaches 32 px), and
is evaluated before training (at initialisation) and after, on the same 1,000 real images:

- reconstruction: PSNR / SSIM (``recon``), SWD between real images and their reconstructions
  (``swd_rec``), and the high-frequency power of the reconstructions relative to that of the same
  real images (``calae.metrics.spectrum.hf_power``: luma power above 1/4 cycle per pixel; 1 = as
  much fine detail as the data, < 1 = blurrier);
- samples: SWD (``swd_gen``) and the Fréchet distance in random-conv features (``fd_randconv``);
- disentanglement (``disentangle``): DCI (disentanglement, completeness, informativeness) and MIG
  of the codes E(x) against the renderer's parameters of the same images;
- the Hessian penalty of G (the trained G, not its EMA copy) with respect to w on 64 held-out
  z (a seed training never uses, frozen noise, k = 2, eps = 0.1, summed over G's block outputs and
  its image, averaged over 4 draws of the directions), the quantity CALAE's phase 5 penalises, at the full 32 px level (also before training);
- wall time of training and of the whole variant.

Variants (``--variants``; the ablations change one thing of ``calae``):
  alae                  ALAE, ``style-32``
  calae                 CALAE, ``calae-32`` (PatchNCE + Hessian penalty, Gaussian prior)
  calae-no-nce          nce_weight=0 (the Hessian penalty alone on top of ALAE)
  calae-no-hessian      hessian_weight=0 (PatchNCE alone)
  calae-hessian-paper   hessian_weight=0.1 (the paper's weight; the default is 1e-6)
  calae-fractal-prior   ``calae-32-fractal-prior`` (z from the IFS attractor prior)
  calae-fractal-prior-no-hessian  the same without the Hessian penalty
  calae-pixel           pixel_weight=1: phase 4 adds mean (x̂ − x)² to PatchNCE
  calae-pixel-10, -100  pixel_weight=10, 100 (the mean squared error is ~0.3 per value: at 1 its
                        gradient is small beside the adversarial terms)
  calae-nce-image       nce_negatives=image (CUT's choice, the default before 2026-12-06): PatchNCE's
                        negatives only from the same image, so a key can be told from its
                        negatives by its position alone (the default takes them from the batch)
  calae-patch           patch_weight=1: a patch discriminator on 16 px tiles of real images against
                        reconstructions, with its generator-side term in phase 4
  calae-patch-both      the same, P also judging samples G(F(z)) (patch_fakes=both)
  calae-nce-image-patch nce_negatives=image and patch_weight=1

Results are written after every variant (``--merge`` keeps the other variants' rows of the file
when it was measured at the same kimg, seed and growth), so a stopped run loses only the running
variant. ``--pictures DIR`` saves one panel per variant: 8 real images over their reconstructions,
16 samples (display truncation), and an interpolation between the codes of two real images.

    python -m benchmarks.bench_calae [--kimg 5] [--variants alae,calae] [--seeds 0,1,2] [--merge] [--quick] [--report]

With several seeds every variant trains once per seed (the seed sets the initial weights, the
draws and the evaluation sample alike) and the report adds a table of the mean and the standard
deviation over seeds of the after-training figures, so a difference can be read against the
seed-to-seed spread.

Writes benchmarks/results/calae.json (--quick: calae_quick.json).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from calae.training.runtime import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"
DATA = "fractals:kali"
# variant -> (preset, model overrides on top of it)
VARIANTS = {
    "alae": ("style-32", {}),
    "calae": ("calae-32", {}),
    "calae-no-nce": ("calae-32", {"nce_weight": 0.0}),
    "calae-no-hessian": ("calae-32", {"hessian_weight": 0.0}),
    "calae-hessian-paper": ("calae-32", {"hessian_weight": 0.1}),
    "calae-fractal-prior": ("calae-32-fractal-prior", {}),
    "calae-fractal-prior-no-hessian": ("calae-32-fractal-prior", {"hessian_weight": 0.0}),
    "calae-pixel": ("calae-32", {"pixel_weight": 1.0}),
    "calae-pixel-10": ("calae-32", {"pixel_weight": 10.0}),
    "calae-pixel-100": ("calae-32", {"pixel_weight": 100.0}),
    "calae-nce-image": ("calae-32", {"nce_negatives": "image"}),
    "calae-patch": ("calae-32", {"patch_weight": 1.0}),
    "calae-patch-both": ("calae-32", {"patch_weight": 1.0, "patch_fakes": "both"}),
    "calae-nce-image-patch": ("calae-32", {"nce_negatives": "image", "patch_weight": 1.0}),
}
METRICS = ["recon", "swd_rec", "swd_gen", "fd_randconv", "disentangle"]



def held_out_hessian(method, n: int = 64, seed: int = 987_654, draws: int = 4) -> dict:
    """Hessian penalty of the trained G w.r.t. w = F(z) on held-out z, per output and summed."""
    from calae.losses import hessian_penalty
    from calae.nets.style import broadcast_styles

    G, Fm = method.nets["G"], method.nets["F"]
    lod, alpha = G.levels - 1, 1.0  # the full resolution, before training too
    g = torch.Generator().manual_seed(seed)
    was = [m.training for m in (G, Fm)]
    G.eval(), Fm.eval()
    try:
        with torch.no_grad():
            z = method.prior.sample(n, g).float()
            w = Fm(z).float()
            noise = G.make_noise(n, lod, g)

            def outputs(ww):
                img, feats = G(broadcast_styles(ww, G.num_ws), lod, alpha, noise, features=True)
                return list(feats) + [img]

            per = []
            for _ in range(draws):
                per.append([float(hessian_penalty(lambda ww, i=i: outputs(ww)[i], w, 2, 0.1, generator=g))
                            for i in range(len(outputs(w)))])
    finally:
        G.train(was[0]), Fm.train(was[1])
    layers = [sum(p[i] for p in per) / draws for i in range(len(per[0]))]
    return {"total": sum(layers), "per_output": layers}


def spread(x: torch.Tensor, n: int = 256) -> float:
    """Mean pairwise RMS distance of the first n images (uint8 scale): how different they are."""
    v = x[:n].float().flatten(1) / 255.0
    d = torch.cdist(v, v) / v.shape[1] ** 0.5
    return float(d.sum() / (len(v) * (len(v) - 1)))


def evaluation(method, dataset, n: int, seed: int) -> dict:
    from calae.api import Model, inference
    from calae.metrics import evaluate
    from calae.metrics.base import real_indices
    from calae.metrics.spectrum import hf_power

    out = evaluate(method, dataset, METRICS, n=n, seed=seed)
    idx = real_indices(len(dataset), min(n, len(dataset)), seed)
    x = torch.cat([dataset.get(idx[s:s + 256]).x for s in range(0, len(idx), 256)])
    with inference(method):
        rec = Model(method).reconstruct(x)
    p_real, f_real = hf_power(x)
    p_rec, f_rec = hf_power(rec)
    out["hf_rec/ratio"] = p_rec / max(p_real, 1e-20)
    out["rec_spread"] = spread(rec) / max(spread(x), 1e-20)
    out["hf_rec/frac_ratio"] = f_rec / max(f_real, 1e-20)
    hp = held_out_hessian(method)
    out["hessian/total"], out["hessian/per_output"] = hp["total"], hp["per_output"]
    return out


def panel(method, dataset, path: Path, seed: int) -> None:
    """8 real over 8 reconstructions, 2 rows of samples, one interpolation row; uint8 PNG, 2x."""
    from calae.api import Model, inference
    from calae.viz.grid import make_grid, save_image

    with inference(method):
        m = Model(method)
        x = dataset.get(torch.arange(8) + 5000).x
        rec = m.reconstruct(x)
        smp = m.sample(16, seed=seed, **m.display_options())
        w = m.encode(x[:2])
        t = torch.linspace(0, 1, 8).view(-1, 1)
        itp = m.decode((1 - t) * w[0] + t * w[1])
    save_image(make_grid(torch.cat([x, rec, smp, itp]), nrow=8), path, upscale=2)


def run_variant(name: str, kimg: float, growth: float, seed: int, n_eval: int, threads: int, pictures,
                precision: str = "fp32") -> dict:
    from calae.config import TrainConfig, from_dict
    from calae.registry import PRESETS, load_all
    from calae.training import Trainer

    load_all()
    preset, extra = VARIANTS[name]
    pr = PRESETS[preset]
    tr = dict(pr["train"])
    tr.update(method=pr["method"], data=DATA, kimg=kimg, seed=seed, sample_every_kimg=0, snapshot_every_kimg=0,
              log_every_kimg=0.5, threads=threads, precision=precision)
    model = {**pr["model"], **extra, "growth_kimg": growth}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(from_dict(TrainConfig, tr), model, Path(tmp) / "run", progress=False, pictures=False,
                          log=lambda s: None)
        m, ds = trainer.method, trainer.dataset
        before = evaluation(m, ds, n_eval, seed)
        res = trainer.run()
        after = evaluation(m, ds, n_eval, seed)
        logged = [json.loads(line) for line in open(Path(tmp) / "run" / "stats.jsonl")]
    if pictures:
        panel(m, ds, Path(pictures) / (f"bench-calae-{name}.png" if seed == 0 else f"bench-calae-{name}-s{seed}.png"), seed)
    last = logged[-1] if logged else {}
    return {"variant": name, "seed": seed, "preset": preset, "overrides": extra, "kimg": res["kimg"], "train_s": res["time_s"],
            "wall_s": time.time() - t0, "model": trainer.resolved["model"], "before": before, "after": after,
            "last_logged": {k: v for k, v in last.items() if isinstance(v, (int, float))}}


COLS = [("PSNR", "recon/psnr", ".2f"), ("SSIM", "recon/ssim", ".3f"), ("SWD rec", "swd_rec/avg", ".1f"),
        ("HF rec/data", "hf_rec/ratio", ".3f"), ("rec spread", "rec_spread", ".2f"), ("SWD gen", "swd_gen/avg", ".1f"), ("FD randconv", "fd_randconv/fd", ".3g"),
        ("HP(w) held-out", "hessian/total", ".3g")]
DIS = [("DCI D", "disentangle/disentanglement", ".3f"), ("DCI C", "disentangle/completeness", ".3f"),
       ("DCI I", "disentangle/informativeness", ".3f"), ("MIG", "disentangle/mig", ".3f")]


def cell(d: dict, k: str, f: str) -> str:
    """One figure, or '–' for a key a row measured before it existed."""
    return format(d[k], f) if k in d else "–"


def row_seed(r: dict, meta: dict) -> int:
    """The seed of a row (files written before --seeds hold one seed, in the metadata)."""
    return r.get("seed", meta.get("seed", 0))


def seed_summary(rows: list[dict], meta: dict) -> list[dict]:
    """Per variant, in row order: the after-training figures' mean and sample standard deviation
    over its seeds (sd 0 for one seed), and train s."""
    import statistics

    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    out = []
    for v, rs in by.items():
        s = {"variant": v, "seeds": sorted(row_seed(r, meta) for r in rs), "mean": {}, "sd": {}}
        for _, k, _ in COLS + DIS + [("", "train_s", "")]:
            vals = [float(r["train_s"] if k == "train_s" else r["after"][k]) for r in rs
                    if k == "train_s" or k in r["after"]]
            if not vals:
                continue
            s["mean"][k] = statistics.fmean(vals)
            s["sd"][k] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            s.setdefault("count", {})[k] = len(vals)  # < len(seeds): a column some rows lack
        out.append(s)
    return out


def table(rows: list[dict], meta: dict) -> str:
    seeds = meta.get("seeds", [meta.get("seed", 0)])
    out = [f"\n{DATA} at 32 px, {meta['kimg']:g} kimg (growth {meta['growth_kimg']:g} kimg/level), seed(s) "
           f"{','.join(map(str, seeds))}, {meta['n_eval']} images; {meta['cpu']}, {meta['threads']} threads; before -> after",
           "| variant | seed | " + " | ".join(c[0] for c in COLS) + " | train s |",
           "|---" * (len(COLS) + 3) + "|"]
    for r in rows:
        cells = [f"{cell(r['before'], k, f)} → {cell(r['after'], k, f)}" for _, k, f in COLS]
        out.append(f"| {r['variant']} | {row_seed(r, meta)} | " + " | ".join(cells) + f" | {r['train_s']:.0f} |")
    out += ["", "Disentanglement of E(x) against the renderer's parameters (after training; before in brackets)",
            "| variant | seed | " + " | ".join(c[0] for c in DIS) + " |", "|---" * (len(DIS) + 2) + "|"]
    for r in rows:
        out.append(f"| {r['variant']} | {row_seed(r, meta)} | " + " | ".join(
            f"{cell(r['after'], k, f)} ({cell(r['before'], k, f)})" for _, k, f in DIS) + " |")
    summ = seed_summary(rows, meta)
    if any(len(s["seeds"]) > 1 for s in summ):
        out += ["", "After training, mean ± sd over seeds",
                "| variant | seeds | " + " | ".join(c[0] for c in COLS + DIS) + " | train s |",
                "|---" * (len(COLS) + len(DIS) + 3) + "|"]
        for s in summ:
            cells = [f"{cell(s['mean'], k, f)} ± {cell(s['sd'], k, f)}" if s["count"].get(k, 0) > 1
                     else f"{cell(s['mean'], k, f)} (1 seed)" if k in s["mean"] else "–" for _, k, f in COLS + DIS]
            out.append(f"| {s['variant']} | {len(s['seeds'])} | " + " | ".join(cells) + f" | {s['mean']['train_s']:.0f} |")
    return "\n".join(out)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="0.2 kimg, 200 images, alae and calae (a smoke run)")
    p.add_argument("--kimg", type=float, default=None, help="training images per variant, thousands (default 5)")
    p.add_argument("--growth-kimg", type=float, default=None,
                   help="kimg per level of progressive growing, the same for every variant (default 1)")
    p.add_argument("--variants", default=None, help=f"comma-separated, from {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; every variant trains once per seed (default 0)")
    p.add_argument("--n-eval", type=int, default=None, help="real images (and samples) per evaluation (1000)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                   help="autocast precision of every variant (the Hessian phase is fp32 in any case)")
    p.add_argument("--out", default=None, help="JSON path (default results/calae.json; --quick: calae_quick.json)")
    p.add_argument("--pictures", default=None, help="folder for one PNG panel per variant (default: none)")
    p.add_argument("--merge", action="store_true", help="keep the other variants' rows of --out")
    p.add_argument("--report", action="store_true", help="print the tables of --out and exit (no training)")
    a = p.parse_args(argv)
    if a.report:
        path = Path(a.out or RESULTS / ("calae_quick.json" if a.quick else "calae.json"))
        if not path.exists():
            raise SystemExit(f"--report: {path} does not exist; run the benchmark first")
        res = json.loads(path.read_text())
        print(table(res["rows"], res))
        return res["rows"]
    names = (a.variants or ("alae,calae" if a.quick else ",".join(VARIANTS))).split(",")
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    kimg = a.kimg if a.kimg is not None else (0.2 if a.quick else 5.0)
    growth = a.growth_kimg if a.growth_kimg is not None else (0.05 if a.quick else 1.0)
    n_eval = a.n_eval or (200 if a.quick else 1000)
    try:
        seeds = [int(v) for v in a.seeds.split(",")]
    except ValueError:
        raise SystemExit(f"--seeds: expected comma-separated integers, got {a.seeds!r}") from None
    torch.set_num_threads(a.threads)
    path = Path(a.out or RESULTS / ("calae_quick.json" if a.quick else "calae.json"))
    meta = {"benchmark": "calae", "date": time.strftime("%Y-%m-%d"), "data": DATA, "resolution": 32, "kimg": kimg,
            "growth_kimg": growth, "seeds": seeds, "n_eval": n_eval, "threads": a.threads, "cpu": cpu_model(),
            "torch": torch.__version__, "precision": a.precision}
    rows: list[dict] = []
    if a.merge and path.exists():
        old = json.loads(path.read_text())
        if (old.get("kimg"), old.get("growth_kimg"), old.get("n_eval"), old.get("precision", "fp32")) != \
                (kimg, growth, n_eval, a.precision):
            raise SystemExit(f"--merge: {path} was measured at {old.get('kimg')} kimg, growth {old.get('growth_kimg')}, "
                             f"{old.get('n_eval')} images, {old.get('precision', 'fp32')}; rerun with those or without --merge")
        rows = [{**r, "seed": row_seed(r, old)} for r in old["rows"]
                if not (r["variant"] in names and row_seed(r, old) in seeds)]
        meta["seeds"] = sorted(set(seeds) | {r["seed"] for r in rows})
    order = {v: i for i, v in enumerate(VARIANTS)}
    for seed in seeds:
        for name in names:
            t = time.time()
            r = run_variant(name, kimg, growth, seed, n_eval, a.threads, a.pictures, a.precision)
            rows.append(r)
            rows.sort(key=lambda x: (order.get(x["variant"], 99), x["seed"]))
            print(f"{name} seed {seed}: {r['kimg']:.1f} kimg, train {r['train_s']:.0f} s, variant {time.time() - t:.0f} s; "
                  + ", ".join(f"{k} {r['before'][k]:.4g} -> {r['after'][k]:.4g}" for _, k, _ in COLS + DIS), flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps({**meta, "rows": rows}, indent=1))
            os.replace(tmp, path)
    print(table(rows, meta))
    print(f"\nwrote {path}")
    return rows


if __name__ == "__main__":
    main()
