"""Throughput of the procedural fractal dataset (``calae.data.fractals``) on this machine.

Side by side, in one run:

(a) the batched torch renderer: ``FractalDataset.get`` on fresh indices (the full pipeline: parameter
    sampling, rendering, dullness test and deterministic re-draws), at 32 and 64 px, with torch using
    2 threads (and 1 thread, for reference); also one pass of ``render`` over the same parameters;
(b) a plain NumPy reference: a straightforward per-image NumPy renderer (complex arrays, boolean
    masks, ``np.percentile``, ``np.cos``) of the same Julia / Mandelbrot / Kali iterations on the same
    parameter rows, a few images;
(c) arithmetic: the element operations the torch renderer executed (counted with a dispatch mode),
    their rate, and the machine's limits measured in the same script: ``a * b + c`` on in-cache and
    large float32 tensors, and a 2048x2048 float32 matmul (GFLOP/s).

The machine may be shared with other processes: every timing is the best of several repetitions
and the load average is recorded.

    python -m benchmarks.bench_fractals [--quick]

Writes benchmarks/results/fractals.json (--quick: fractals_quick.json).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from calae.data import fractals as F
from calae.data.fractals import FractalDataset

RESULTS = Path(__file__).resolve().parent / "results"
C = F._C


# ----------------------------------------------------------------------------------------------
# (b) the NumPy reference: one image at a time, vectorised over its pixels only
# ----------------------------------------------------------------------------------------------
def numpy_render(row: np.ndarray, res: int) -> np.ndarray:
    """Straightforward NumPy rendering of one parameter row (Julia / Mandelbrot / Kali maps).

    Polynomial maps use the smooth escape count, Kali the mean |z| of the orbit; colours come from
    the row's cosine palette.  Returns uint8 [3, res, res].
    """
    d, iters = int(row[C["power"]]), int(row[C["iterations"]])
    width = 2.0 ** -row[C["log_zoom"]]
    rot = row[C["rotation"]]
    a = (np.arange(res) + 0.5) / res - 0.5
    U, V = np.meshgrid(a, -a)
    x = row[C["center_x"]] + width * (np.cos(rot) * U - np.sin(rot) * V)
    y = row[C["center_y"]] + width * (np.sin(rot) * U + np.cos(rot) * V)
    p = x + 1j * y
    plane = row[C["plane"]] > 0.5
    z0 = complex(row[C["z0_re"]], row[C["z0_im"]])
    if int(row[C["map"]]) == 0:  # Kali: z <- s |z| / (z.z) + k, mean |z| along the orbit
        k = p if plane else complex(row[C["k_re"]], row[C["k_im"]])
        z = np.full_like(p, z0) if plane else p.copy()
        acc = np.zeros(p.shape)
        for it in range(iters):
            if it > 0:
                acc += np.abs(z)
            r2 = np.maximum(z.real ** 2 + z.imag ** 2, 1e-6)
            z = row[C["kali_scale"]] * (np.abs(z.real) + 1j * np.abs(z.imag)) / r2 + k
        v = acc / max(iters - 1, 1)
        valid = np.ones(p.shape, dtype=bool)
    else:  # z <- z^d + c, smooth escape count
        c = p if plane else np.full_like(p, complex(row[C["c_re"]], row[C["c_im"]]))
        z = np.full_like(p, z0) if plane else p.copy()
        n = np.zeros(p.shape)
        zn = np.zeros_like(p)
        alive = np.ones(p.shape, dtype=bool)
        for it in range(iters):
            z[alive] = z[alive] ** d + c[alive]
            esc = alive & (np.abs(z) > 256.0)
            n[esc], zn[esc] = it, z[esc]
            alive &= ~esc
            if not alive.any():
                break
        valid = ~alive
        v = np.zeros(p.shape)
        v[valid] = n[valid] + 1 - np.log(np.log(np.abs(zn[valid])) / np.log(256.0)) / np.log(d)
    lo, hi = np.percentile(v[valid], [2, 98]) if valid.any() else (0.0, 1.0)
    t = np.clip((v - lo) / max(hi - lo, 1e-20), 0, 1)
    arg = t * row[C["cycles"]] + row[C["phase"]]
    rgb = np.empty((3, res, res))
    for ch in range(3):
        val = row[C["pal_a_r"] + ch] + row[C["pal_b_r"] + ch] * np.cos(
            2 * np.pi * (row[C["pal_c_r"] + ch] * arg + row[C["pal_d_r"] + ch]))
        rgb[ch] = np.where(valid | (int(row[C["map"]]) == 0) | (row[C["interior"]] > 0.5), val, 0.0)
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def numpy_params(n_each: int, seed: int = 11) -> np.ndarray:
    """Julia, Mandelbrot and Kali rows the reference understands (escape colourings / orbit mean),
    interleaved so that any prefix holds all three."""
    rows = []
    for fam, modes in (("julia", (0, 1, 2)), ("mandelbrot", (0, 1, 2)), ("kali", (4,))):
        P = F.sample_params(seed, np.arange(8 * n_each), 0, fam)
        ok = np.isin(P[:, C["color_mode"]], modes) & (P[:, C["variant"]] == 0)
        P = P[ok][:n_each].copy()
        if fam != "kali":
            P[:, C["color_mode"]] = 0  # smooth escape count, as the reference does
        rows.append(P)
    return np.stack(rows, 1).reshape(-1, P.shape[1])


# ----------------------------------------------------------------------------------------------
# (c) element operations executed by the renderer, and the machine's limits
# ----------------------------------------------------------------------------------------------
_ARITH = {"add", "sub", "mul", "div", "minimum", "maximum", "sqrt", "abs", "clamp", "clamp_min", "clamp_max",
          "le", "lt", "gt", "ge", "round", "bitwise_and", "bitwise_or", "bitwise_right_shift", "neg"}


def count_element_ops(P: np.ndarray, res: int) -> dict:
    """Run ``render`` once (1 thread) counting output elements of elementwise arithmetic ops."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = {"arith": 0, "other": 0}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__.rstrip("_")
            first = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(first, torch.Tensor):
                counts["arith" if name in _ARITH else "other"] += first.numel()
            return out

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the sequential path: every op runs in this thread, under the mode
    try:
        with Count():
            F.render(P, res)
    finally:
        torch.set_num_threads(threads)
    return counts


def best_time(fn, reps: int, cpu: bool = False):
    """Best and median wall time of ``reps`` calls (and the best process CPU time when ``cpu``)."""
    times, cpus = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    if cpu:
        return min(times), statistics.median(times), min(cpus)
    return min(times), statistics.median(times)


def machine_limits(quick: bool) -> dict:
    out = {}
    for label, n in (("in_cache_64k", 1 << 16), ("large_16m", 1 << 24)):
        a, b, c = (torch.rand(n) for _ in range(3))
        o = torch.empty(n)
        reps = 50 if n < 1 << 20 else (3 if quick else 8)

        def fma():
            torch.mul(a, b, out=o)
            o.add_(c)

        fma()
        t, _ = best_time(fma, reps)
        out[f"axpb_{label}_gflops"] = 2 * n / t / 1e9  # a*b+c: 2 flops per element
        out[f"elementwise_{label}_gelem_per_s"] = 2 * n / t / 1e9  # two element ops
    m = 1024 if quick else 2048
    A, B = torch.rand(m, m), torch.rand(m, m)
    A @ B
    t, _ = best_time(lambda: A @ B, 3 if quick else 5)
    out["matmul_gflops"] = 2 * m ** 3 / t / 1e9
    out["matmul_size"] = m
    return out


# ----------------------------------------------------------------------------------------------
def bench_torch(res: int, n_images: int, batch: int, reps: int, threads: int, offset: int) -> dict:
    torch.set_num_threads(threads)
    start = [offset]

    def run():  # fresh indices every time: no cache can help
        ds = FractalDataset("any", n=10 ** 9, resolution=res, seed=0, memory_cache=False)
        for s in range(0, n_images, batch):
            ds.get(range(start[0] + s, start[0] + s + batch))
        start[0] += n_images

    run()  # warm-up (thread pool, grids)
    best, med, cpu = best_time(run, reps, cpu=True)
    return {"images_per_s": n_images / best, "images_per_s_median": n_images / med, "seconds_best": best,
            "images_per_cpu_s": n_images / cpu}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer images and repetitions")
    args = ap.parse_args(argv)
    quick = args.quick
    torch.set_num_threads(2)
    n_images = 256 if quick else 1024
    batch = 256
    reps = 2 if quick else 4
    n_np = 2 if quick else 4  # per family (Julia, Mandelbrot, Kali) for the NumPy reference

    load_before = os.getloadavg()
    limits = machine_limits(quick)
    rows = []
    for res in (32, 64):
        r2 = bench_torch(res, n_images * (2 if res == 32 else 1), batch, reps, 2, offset=res * 10 ** 6)
        r1 = bench_torch(res, n_images // (2 if res == 64 else 1), batch, max(1, reps - 1), 1,
                         offset=res * 10 ** 6 + 10 ** 8)
        torch.set_num_threads(2)
        # one render pass over accepted parameters (no dullness test), for the arithmetic rate
        P = F.sample_params(0, np.arange(n_images), 0, "any")
        F.render(P[:64], res)
        t_render, _ = best_time(lambda: F.render(P, res), reps)
        ops = count_element_ops(P, res)
        # the NumPy reference on a few rows; torch renders a batch of rows drawn the same way
        # (a prefix of which are the NumPy rows)
        Q = numpy_params(max(n_np, 86))
        Qn = Q[: 3 * n_np]
        numpy_render(Qn[0], res)
        t_np, _ = best_time(lambda: [numpy_render(q, res) for q in Qn], 1 if quick else 2)
        F.render(Q[:32], res)
        t_same, _ = best_time(lambda: F.render(Q, res), reps)
        np_ips = len(Qn) / t_np
        rows.append({
            "resolution": res,
            "torch_dataset_images_per_s": r2["images_per_s"],
            "torch_dataset_images_per_s_median": r2["images_per_s_median"],
            "torch_dataset_images_per_s_1thread": r1["images_per_s"],
            "torch_dataset_images_per_cpu_second_1thread": r1["images_per_cpu_s"],
            "torch_render_images_per_s": len(P) / t_render,
            "numpy_reference_images_per_s": np_ips,
            "torch_render_same_rows_images_per_s": len(Q) / t_same,
            "speedup_vs_numpy_same_rows": (len(Q) / t_same) / np_ips,
            "speedup_dataset_vs_numpy": r2["images_per_s"] / np_ips,
            "element_ops_per_image": ops["arith"] / len(P),
            "other_elements_per_image": ops["other"] / len(P),
            "achieved_gops": ops["arith"] / t_render / 1e9,
            "numpy_images": len(Qn),
        })
    load_after = os.getloadavg()

    print(f"fractals: torch {torch.__version__}, 2 threads, {platform.processor() or platform.machine()}, "
          f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    hdr = (f"{'res':>4} {'dataset img/s':>14} {'(median)':>9} {'1 thread':>9} {'img/CPU-s':>10} {'render img/s':>13} "
           f"{'numpy img/s':>12} {'same-rows x':>12} {'ops/img':>9} {'Gop/s':>7} {'% a*b+c':>8} {'% matmul':>9}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        pc = 100 * r["achieved_gops"] / limits["elementwise_in_cache_64k_gelem_per_s"]
        pm = 100 * r["achieved_gops"] / limits["matmul_gflops"]
        print(f"{r['resolution']:>4} {r['torch_dataset_images_per_s']:>14.0f} "
              f"{r['torch_dataset_images_per_s_median']:>9.0f} {r['torch_dataset_images_per_s_1thread']:>9.0f} "
              f"{r['torch_dataset_images_per_cpu_second_1thread']:>10.0f} "
              f"{r['torch_render_images_per_s']:>13.0f} {r['numpy_reference_images_per_s']:>12.1f} "
              f"{r['speedup_vs_numpy_same_rows']:>11.0f}x {r['element_ops_per_image'] / 1e6:>8.2f}M "
              f"{r['achieved_gops']:>7.2f} {pc:>7.0f}% {pm:>8.1f}%")
        r["percent_of_elementwise_in_cache"] = pc
        r["percent_of_matmul_peak"] = pm
    print(f"limits: a*b+c in cache {limits['elementwise_in_cache_64k_gelem_per_s']:.1f} Gop/s, "
          f"on 16M floats {limits['elementwise_large_16m_gelem_per_s']:.1f} Gop/s, "
          f"matmul {limits['matmul_size']}^3 {limits['matmul_gflops']:.0f} GFLOP/s")
    print("dataset: FractalDataset.get on fresh indices (sampling, rendering, dullness test, re-draws), "
          "batches of 256, best wall time (median beside it); 1 thread: the same with torch.set_num_threads(1); "
          "img/CPU-s: images per second of process CPU time, 1 thread (insensitive to other processes); "
          "render: one pass over attempt-0 parameters; same-rows x: torch render vs the NumPy reference "
          "on Julia/Mandelbrot/Kali rows drawn alike; Gop/s: element ops of the render pass per wall second")

    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "fractals",
        "quick": quick,
        "torch": torch.__version__,
        "threads": 2,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "load_average_before": load_before, "load_average_after": load_after},
        "limits": limits,
        "rows": rows,
    }
    path = RESULTS / ("fractals_quick.json" if quick else "fractals.json")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
