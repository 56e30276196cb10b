"""Training throughput of every method: images/s at 32 and 64 px, fp32 and bf16 side by side.

For each (method, resolution, precision) the real loop trains on the fractal data for a few warm-up
steps, then for a timed stretch; we report images/s, the bf16/fp32 ratio measured in the same
run, the fraction of step time spent waiting for data, and the achieved FLOP/s (forward +
backward FLOPs of every phase counted with torch's FLOP formulas) against the machine's measured
matmul and convolution peaks.

    python -m benchmarks.bench_train [--quick] [--methods vae,aae] [--resolutions 32,64] [--device cuda]

Writes benchmarks/results/train_throughput.json (--quick: train_throughput_quick.json; --device cuda:
train_throughput_cuda[_quick].json).

--device cuda trains on the GPU (bf16 rows under CUDA autocast), measures the peaks on the GPU, and
times honestly: the clocks are read only after ``torch.cuda.synchronize()`` (the loop's ``time_s``
sums host time per step, which on an asynchronous device need not include the kernels still queued,
so the benchmark synchronises at the end of every timed step). On CUDA the fractal images are rendered
once before timing and shared by the trainers, so the rows measure the model rather than the CPU
renderer (the data-wait column still says what waiting remains); the CPU path is unchanged.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device: str):
    """Waits for the device's queued kernels (a no-op on the CPU)."""
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def measure_peaks(seconds: float = 1.0, device: str = "cpu") -> dict:
    """Dense matmul and 3x3 convolution throughput in fp32 and bf16 (TFLOP/s) on ``device``.

    On CUDA the problems are larger (a GPU needs them to reach its peak), calls are issued in groups
    and the clock is read only after synchronising; fp32 matmuls use torch's default TF32 setting,
    the one training runs with (recorded in the JSON)."""
    out = {}
    sync = _sync(device)
    # CPU: 1024^2 matmul, 32x128x32x32 conv; CUDA: 8192^2 matmul, 64x256x64x64 conv
    m, (nb, ch, hw), reps = (1024, (32, 128, 32), 1) if device == "cpu" else (8192, (64, 256, 64), 10)
    a = torch.randn(m, m, device=device)
    x = torch.randn(nb, ch, hw, hw, device=device).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(ch, ch, 3, padding=1).to(device).to(memory_format=torch.channels_last)
    for prec in ("fp32", "bf16"):
        ctx = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=prec == "bf16")  # noqa: E731
        for name, fn, flops in (("matmul", lambda: a @ a, 2 * m ** 3),
                                ("conv3x3", lambda: conv(x), 2 * nb * ch * ch * 9 * hw * hw)):
            with torch.no_grad(), ctx():
                fn()
                sync()
                n, t0 = 0, time.perf_counter()
                while True:
                    for _ in range(reps):
                        fn()
                    n += reps
                    sync()
                    if time.perf_counter() - t0 >= seconds:
                        break
            out[f"{name}_{prec}"] = n * flops / (time.perf_counter() - t0) / 1e12
    return out


def step_flops(trainer, items: int = 4) -> float:
    """FLOPs of one training step (all phases, forward + backward), counted on ``items`` images and
    scaled to the batch (every method's cost is linear in the batch but AS-IntroVAE's pairwise
    distance, which is negligible next to its networks); a full-batch count would cost a step."""
    from calae.methods.base import StepContext

    items = min(items, trainer.cfg.batch_size)
    batch = trainer.batch(items)
    saved = {k: v.detach().clone() for k, v in trainer.method.state_dict().items()}
    with _FlopCount() as fc:
        for ph in trainer.phases:
            trainer.run_phase(ph, batch, StepContext(0, 0.0, 1.0))
    trainer.method.load_state_dict(saved)
    return float(fc.total) * trainer.cfg.batch_size / items


class _FlopCount(TorchDispatchMode):
    """torch's FLOP formulas (``flop_counter.flop_registry``) summed over every dispatched op.

    torch's own FlopCounterMode also tracks modules with backward hooks, which breaks
    ``autograd.grad(create_graph=True)`` (ALAE's R1 penalty); the total needs no module tracking.
    """

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils.flop_counter import flop_registry

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


_SHARED_DATA: dict = {}  # (resolution, n) -> a fractal dataset rendered once (CUDA runs only)


def _shared_dataset(trainer, n: int):
    """The trainer's fractal dataset with all ``n`` items rendered, kept for the next trainers of the
    same resolution (rendering is CPU work that would otherwise starve a GPU in the timed stretch)."""
    key = (trainer.cfg.resolution, n)
    if key not in _SHARED_DATA:
        ds = trainer.dataset
        for i in range(0, n, 512):  # fills its memory cache
            ds.get(torch.arange(i, min(i + 512, n)))
        _SHARED_DATA[key] = ds
    return _SHARED_DATA[key]


def bench_one(method: str, resolution: int, precision: str, steps: int, batch: int, model_over: dict,
              seconds: float | None = None, device: str = "cpu") -> dict:
    """Warm up (2 steps; 5 on CUDA), then time up to ``steps`` steps or ``seconds`` of training,
    whichever ends first."""
    from calae.config import TrainConfig
    from calae.training import Trainer

    n_data = 4096
    cuda = device == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        def make(kimg):
            cfg = TrainConfig(method=method, data="fractals", resolution=resolution, batch_size=batch,
                              kimg=kimg, precision=precision, sample_every_kimg=0, snapshot_every_kimg=0,
                              log_every_kimg=0, n_data=n_data, device=device)
            tr = Trainer(cfg, dict(model_over), Path(tmp) / "run", progress=False, pictures=False)
            if cuda:
                tr.dataset = _shared_dataset(tr, n_data)
                step = tr.train_step

                def synced_step(b, ctx=None):  # the loop reads its clock after this returns
                    out = step(b, ctx)
                    torch.cuda.synchronize()
                    return out

                tr.train_step = synced_step
            return tr

        warm = 5 if cuda else 2
        total_kimg = (warm + steps) * batch / 1000
        tr = make(total_kimg)
        flops = step_flops(tr)
        r1 = tr.run(stop_at_step=warm)
        tr2 = make(total_kimg)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        r2 = tr2.run(time_limit_s=None if seconds is None else r1["time_s"] + seconds)
        dt = r2["time_s"] - r1["time_s"]
        n_img = (r2["steps"] - r1["steps"]) * batch
        row = {"method": method, "resolution": resolution, "precision": precision, "batch": batch,
               "img_per_s": n_img / dt, "data_wait_frac": r2["data_wait_s"] / dt,
               "gflop_per_step": flops / 1e9, "tflops": flops * (n_img / batch) / dt / 1e12}
        if cuda:
            row.update(device="cuda", timed_steps=r2["steps"] - r1["steps"], skipped=r2["skipped"],
                       max_mem_gib=torch.cuda.max_memory_allocated() / 2 ** 30)
        return row


def main(argv=None) -> list[dict]:
    from calae.registry import METHODS, load_all

    load_all()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer steps, 32 px only")
    p.add_argument("--methods", default=",".join(sorted(METHODS)))
    p.add_argument("--resolutions", default=None)
    p.add_argument("--batch", type=int, default=None, help="images per step (default 32; 128 on CUDA)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where to train and measure the peaks (cuda: bf16 rows under CUDA autocast)")
    p.add_argument("--out", default=None, help="JSON path (default results/train_throughput.json, --quick: *_quick.json)")
    a = p.parse_args(argv)
    cuda = a.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error(f"--device cuda: torch {torch.__version__} sees no CUDA device "
                f"(built for CUDA {torch.version.cuda}); install a CUDA build of torch")
    unknown = [m for m in a.methods.split(",") if m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}; known: {', '.join(sorted(METHODS))}")
    batch = a.batch or (128 if cuda else 32)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    res = [int(r) for r in (a.resolutions or ("32" if a.quick else "32,64")).split(",")]
    if cuda:  # GPU steps take milliseconds: more of them, each timed after a synchronisation
        steps, seconds = (300, 4.0) if a.quick else (3000, 20.0)
    else:
        steps, seconds = (6, 8.0) if a.quick else (20, 20.0)
    peaks = measure_peaks(0.5 if a.quick else 1.5, a.device)
    rows = []
    for m in a.methods.split(","):
        for r in res:
            for prec in ("fp32", "bf16"):
                rows.append(bench_one(m, r, prec, steps, batch, {}, seconds, a.device))
                if cuda:
                    print(f"  {m} {r}px {prec}: {rows[-1]['img_per_s']:.0f} img/s", flush=True)
    # ratios measured side by side
    for row in rows:
        ref = next(x for x in rows if x["method"] == row["method"] and x["resolution"] == row["resolution"]
                   and x["precision"] == "fp32")
        row["speedup_vs_fp32"] = row["img_per_s"] / ref["img_per_s"]
        peak = peaks[f"conv3x3_{row['precision']}"]
        row["frac_of_conv_peak"] = row["tflops"] / peak
    hdr = f"{'method':<16}{'px':>4}{'prec':>6}{'img/s':>9}{'vs fp32':>9}{'GFLOP/step':>12}{'TFLOP/s':>9}{'of peak':>9}{'data wait':>11}"
    print(f"peaks (TFLOP/s): " + ", ".join(f"{k} {v:.3f}" for k, v in peaks.items()))
    from calae.training.precision import cpu_has_fast_bf16, resolve_precision

    if cuda:
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, batch {batch}")
        print(f"--precision auto here: {resolve_precision('auto', torch.device('cuda'))[1]}")
    else:
        print(f"bf16 autocast chosen by --precision auto here: {cpu_has_fast_bf16()}")
    print(hdr)
    for r in rows:
        print(f"{r['method']:<16}{r['resolution']:>4}{r['precision']:>6}{r['img_per_s']:>9.1f}"
              f"{r['speedup_vs_fp32']:>8.2f}x{r['gflop_per_step']:>12.2f}{r['tflops']:>9.3f}"
              f"{r['frac_of_conv_peak']:>8.1%}{r['data_wait_frac']:>10.1%}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "train_throughput" + ("_cuda" if cuda else "") + ("_quick" if a.quick else "")
    path = Path(a.out) if a.out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(), "peaks_tflops": peaks}
    if cuda:
        info.update(device=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, batch=batch,
                    timing="torch.cuda.synchronize() at the end of every timed step")
    path.write_text(json.dumps({**info, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
