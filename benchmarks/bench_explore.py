"""How fast the explorer answers: decoding one image of the demo model, at 32 px (what `make demo`
trains) and 64 px (the same nets at the fractal set's default size), on 1 and 2 threads.

For each size a short run of the `vae-demo` preset (its nets: z 64, base 32 / max 128 channels,
GroupNorm residual decoder) is trained (``--kimg``, default 0.2: the nets are the demo's, the
weights barely trained; decode time depends on the nets, not on the weights); ``--run`` adds a
trained run (then only the sizes --resolutions names are trained). Then, one image at a time after a warm-up:

- ``api``: ``calae.api.Model.decode`` of one code (the decoder, uint8 conversion);
- ``explorer``: ``Explorer.decode`` as a request reaches it (sliders applied, decode, PNG data URL);
- ``http``: a POST to ``/api/decode`` on a real uvicorn server on 127.0.0.1, answer read and parsed
  (what the page waits for, short of drawing);
- ``http+bend``: the same with a live bend (rotate:90 on the decoder's second block).

    python -m benchmarks.bench_explore [--quick] [--resolutions 32,64] [--run RUN ...]

Prints milliseconds (median and 95th percentile) and writes benchmarks/results/explore_latency.json
(--quick: explore_latency_quick.json).
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def train_demo(resolution: int, kimg: float, out: Path) -> Path:
    from calae.config import TrainConfig, from_dict, preset
    from calae.training import Trainer

    pr = preset("vae-demo")
    tr = dict(pr["train"], method="vae", resolution=resolution, kimg=kimg, n_data=256, precision="fp32",
              sample_every_kimg=1e6, snapshot_every_kimg=1e6)
    Trainer(from_dict(TrainConfig, tr), dict(pr["model"]), out, progress=False, pictures=False).run()
    return out


def timed(fn, repeats: int, warmup: int = 5) -> dict:
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ms.append(1e3 * (time.perf_counter() - t0))
    ms.sort()
    return {"median_ms": statistics.median(ms), "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))],
            "min_ms": ms[0], "n": repeats}


class Server:
    """The explorer's app on a real uvicorn server in a thread, on a free port of 127.0.0.1."""

    def __init__(self, ex):
        import uvicorn

        from calae.web.server import bind, create_app

        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        cfg = uvicorn.Config(create_app(ex), log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def post(self, path: str, body: dict) -> dict:
        self.conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = json.loads(r.read())
        if r.status != 200:
            raise RuntimeError(f"{path}: HTTP {r.status}: {data}")
        return data

    def close(self):
        self.conn.close()
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def bench_run(run: Path, threads: list[int], repeats: int) -> list[dict]:
    import calae.api as ca
    from calae.bending import layers
    from calae.web.server import Explorer

    m = ca.load(run)
    ex = Explorer(m, None, directions=8)
    code = m.sample_latents(1, seed=0)
    req = {"code": code[0].tolist(), "sliders": [0.5, -0.5]}
    names = list(layers(m))
    bend = [{"layer": names[min(1, len(names) - 1)], "transform": "rotate:90"}]
    srv = Server(ex)
    rows = []
    saved = torch.get_num_threads()
    try:
        for t in threads:
            torch.set_num_threads(t)
            row = {"run": str(run), "resolution": m.info.resolution, "threads": t,
                   "params_decoder": sum(p.numel() for p in m.decoder.parameters())}
            row["api"] = timed(lambda: m.decode(code), repeats)
            row["explorer"] = timed(lambda: ex.decode(req), repeats)
            row["http"] = timed(lambda: srv.post("/api/decode", req), repeats)
            row["http+bend"] = timed(lambda: srv.post("/api/decode", dict(req, bends=bend)), repeats)
            row["bend"] = bend[0]
            rows.append(row)
    finally:
        torch.set_num_threads(saved)
        srv.close()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats, 32 px only")
    p.add_argument("--resolutions", help="sizes of the demo nets to train and time (default 32,64)")
    p.add_argument("--kimg", type=float, default=0.2, help="training of each timed run (default 0.2)")
    p.add_argument("--run", action="append", default=[], help="also time this trained run (repeatable; without --resolutions, only the runs)")
    p.add_argument("--threads", default="1,2", help="torch thread counts (default 1,2)")
    p.add_argument("--repeats", type=int, help="timed decodes per row (default 100; --quick 20)")
    p.add_argument("--out", help="JSON path (default benchmarks/results/explore_latency.json)")
    a = p.parse_args(argv)
    repeats = a.repeats or (20 if a.quick else 100)
    threads = [int(t) for t in a.threads.split(",")]
    rows, trained = [], []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(Path(r), None) for r in a.run]
        sizes = a.resolutions or ("" if a.run else "32" if a.quick else "32,64")
        for r in [int(x) for x in sizes.split(",") if x]:
            runs.append((train_demo(r, a.kimg, Path(tmp) / f"demo{r}"), f"vae-demo nets at {r} px, {a.kimg} kimg"))
            trained.append(r)
        for run, name in runs:
            for row in bench_run(run, threads, repeats):
                rows.append(dict(row, run=name or str(run), trained_here=name is not None))
    print(f"one image per request; milliseconds, median (95th percentile) over {repeats}")
    hdr = f"{'model':<34}{'px':>4}{'thr':>4}" + "".join(f"{k:>18}" for k in ("api", "explorer", "http", "http+bend"))
    print(hdr)
    for r in rows:
        print(f"{r['run'][-34:]:<34}{r['resolution']:>4}{r['threads']:>4}" + "".join(
            f"{r[k]['median_ms']:>10.2f} ({r[k]['p95_ms']:>5.1f})" for k in ("api", "explorer", "http", "http+bend")))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = Path(a.out) if a.out else RESULTS / ("explore_latency_quick.json" if a.quick else "explore_latency.json")
    path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                                "cpu_threads_available": torch.get_num_threads(), "repeats": repeats,
                                "kimg_trained_here": a.kimg if trained else None, "rows": rows}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
