"""Video as training data (``video:PATH``): decoding throughput and the data wait while training.

The source is the kind of recording seed 000 trained on: a 512x512 H.264 video of a Julia set whose
constant c moves along a line (``calae fractals --video``'s renderer; 120 rendered frames played
forward then back, 240 frames at 30 fps, CRF 18).  Measured on it, at 64 px training resolution:

(a) PyAV alone: demux + decode of every frame, no conversion (the floor of any reader);
(b) ``VideoFrames`` building its cache, i.e. decode + RGB conversion + square crop + Lanczos resize
    of the kept frames, with every=1 (every frame kept), every=10, and 5 random 256 px crops per
    frame; counted in decoded frames/s and in training items/s;
(c) reopening from the disk cache (no decoding) and ``get`` of random batches of 32 from memory;
(d) two short training runs (VAE with small nets, 64 px, batch 32) on ``video:...?every=1``, with the
    items held in memory and served from the memory-mapped cache file (a memory budget below the
    set's size): the loop's data wait (time it waited for the prefetch thread, as a fraction of the
    training time), next to the images per second training consumes and what (b) decodes.

Every timing is the best of ``--repeat`` runs (the machine may be shared); the load average is
recorded.  ``python -m benchmarks.bench_video [--quick]`` writes benchmarks/results/video.json
(--quick: video_quick.json, fewer frames and steps).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
# small conv nets: the faster training runs, the harder the data has to keep up (default nets
# train at a few img/s on 2 cores, where any reader keeps up)
NETS = {"z_dim": 32, "base_channels": 8, "max_channels": 32}


def make_source(path: Path, frames: int, side: int) -> dict:
    from calae.viz.video import fractal_sweep, save_video

    t = time.perf_counter()
    x, _ = fractal_sweep([("c_re", -0.80, -0.74), ("c_im", 0.156, 0.17)], frames, seed=3, family="julia",
                         resolution=side, batch=8)
    t_render = time.perf_counter() - t
    seq = list(x) + list(x.flip(0))  # forward then back: 2 x frames of real side x side detail
    t = time.perf_counter()
    save_video(seq, path, fps=30, crf=18)
    t_encode = time.perf_counter() - t
    return {"frames": len(seq), "side": side, "bytes": path.stat().st_size, "render_s": round(t_render, 2),
            "encode_fps": round(len(seq) / t_encode, 1)}


def best(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def raw_decode(path: Path) -> int:
    import av

    n = 0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for _ in c.decode(s):
            n += 1
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer frames and training steps")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch threads for the training run (default 2)")
    p.add_argument("--frames", type=int, help="rendered frames (the video has twice as many; default 120, quick 40)")
    p.add_argument("--side", type=int, default=512, help="video side in pixels (default 512)")
    p.add_argument("--kimg", type=float, help="training budget (default 0.96, quick 0.32)")
    a = p.parse_args(argv)
    from calae.data.video import VideoFrames

    torch.set_num_threads(a.threads)
    frames, kimg = (40, 0.32) if a.quick else (120, 0.96)
    frames, kimg = a.frames or frames, a.kimg or kimg
    work = Path(tempfile.mkdtemp(prefix="calae-bench-video-"))
    res: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                             "loadavg_start": os.getloadavg()[0]}, "quick": a.quick}
    try:
        src = work / "julia512.mp4"
        res["source"] = make_source(src, frames, a.side)
        n_frames = res["source"]["frames"]
        rows = []

        t, n = best(lambda: raw_decode(src), a.repeat)
        rows.append((f"PyAV decode only ({a.side} px)", n / t, n / t, n))

        def build(**kw):
            return VideoFrames(src, resolution=64, cache="none", **kw)

        for label, kw in (("every=1, whole frame -> 64 px", {"every": 1}),
                          ("every=10, whole frame -> 64 px", {"every": 10}),
                          (f"every=1, 5 crops of {a.side // 2} px -> 64 px", {"every": 1, "crops": 5, "crop": a.side // 2})):
            t, ds = best(lambda: build(**kw), a.repeat)
            rows.append((label, n_frames / t, len(ds) / t, len(ds)))

        cache = work / "cache"
        VideoFrames(src, resolution=64, every=1, cache_dir=cache)  # write the cache
        t_open, ds = best(lambda: VideoFrames(src, resolution=64, every=1, cache_dir=cache), a.repeat)
        rows.append(("reopen from the disk cache", float("nan"), len(ds) / t_open, len(ds)))
        g = torch.Generator().manual_seed(0)
        batches = [torch.randint(0, len(ds), (32,), generator=g) for _ in range(200)]
        t_get, _ = best(lambda: [ds.get(b) for b in batches], a.repeat)
        rows.append(("get(32 random) from memory", float("nan"), 200 * 32 / t_get, 200 * 32))
        res["decode"] = [{"case": r[0], "decoded_frames_per_s": None if np.isnan(r[1]) else round(r[1], 1),
                          "items_per_s": round(r[2], 1), "items": r[3]} for r in rows]

        # (d) training on the video: data wait
        from calae.config import TrainConfig, from_dict
        from calae.training import train

        os.environ["CALAE_CACHE_DIR"] = str(work / "train-cache")
        res["training"] = []
        for where, budget_mb in (("in memory", None), ("memory-mapped cache file", "0.01")):
            if budget_mb:
                os.environ["CALAE_FOLDER_CACHE_MB"] = budget_mb  # over budget: get() reads the cache file
            t = time.perf_counter()
            cfg = from_dict(TrainConfig, {"method": "vae", "data": f"video:{src}?every=1", "resolution": 64,
                                          "kimg": kimg, "batch_size": 32, "precision": "fp32", "threads": a.threads,
                                          "sample_every_kimg": 0, "snapshot_every_kimg": 0, "log_every_kimg": 0.32})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = train(cfg, dict(NETS), work / f"run-{len(res['training'])}", progress=False)
            os.environ.pop("CALAE_FOLDER_CACHE_MB", None)
            wall = time.perf_counter() - t
            res["training"].append({"items": where, "method": "vae", "nets": NETS, "resolution": 64, "batch_size": 32,
                                    "kimg": kimg, "wall_s": round(wall, 1), "train_s": round(out["time_s"], 2),
                                    "data_wait_s": round(out["data_wait_s"], 4),
                                    "data_wait_fraction": round(out["data_wait_s"] / out["time_s"], 5),
                                    "train_img_per_s": round(kimg * 1000 / out["time_s"], 1)})
        res["machine"]["loadavg_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    s = res["source"]
    print(f"source: {s['frames']} frames of {s['side']}x{s['side']} H.264, {s['bytes'] / 1e6:.2f} MB "
          f"(rendered in {s['render_s']} s, encoded at {s['encode_fps']} frames/s)")
    print(f"{'case (64 px training resolution)':<40} {'decoded frames/s':>17} {'items/s':>10} {'items':>7}")
    for r in res["decode"]:
        d = "-" if r["decoded_frames_per_s"] is None else f"{r['decoded_frames_per_s']:.1f}"
        print(f"{r['case']:<40} {d:>17} {r['items_per_s']:>10.1f} {r['items']:>7}")
    print(f"training vae {NETS} at 64 px, batch 32, {kimg} kimg on video:...?every=1 "
          f"(decoding alone: {res['decode'][1]['items_per_s']} items/s):")
    for tr in res["training"]:
        print(f"  items {tr['items']:<26} {tr['train_img_per_s']:>7} img/s, data wait {tr['data_wait_s']} s "
              f"of {tr['train_s']} s ({100 * tr['data_wait_fraction']:.2f} %)")
    RESULTS.mkdir(exist_ok=True)
    custom = a.frames or a.kimg or a.side != 512
    path = RESULTS / ("video_custom.json" if custom else "video_quick.json" if a.quick else "video.json")
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
