"""AS-IntroVAE's batch distance: the blockwise kernel sum with its gradient computed in the forward
pass (``calae.methods.soft_intro_vae.as_distance``) against the same formula through autograd
(three broadcast [N, M, D] terms, autograd keeping every intermediate), forward + backward, side
by side in one run. Also checks that both give the same value and gradient.

    python -m benchmarks.bench_as_distance [--quick] [--threads 1] [--out PATH]

Writes benchmarks/results/as_distance.json (``--quick``: as_distance_quick.json).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
# (batch, z): the 2-D toys; digits; the official CIFAR / 128 px settings; seed 003 (batch 6, z 256)
SHAPES = ((512, 2), (64, 16), (32, 128), (16, 128), (6, 256))


def autograd_distance(mu_a, lv_a, mu_b, lv_b):
    """The formula written plainly (pair means), for reference."""
    def s(m1, l1, m2, l2):
        v = l1[:, None].exp() + l2[None].exp()
        return (torch.exp(-(m1[:, None] - m2[None]) ** 2 / (2 * v)) * v.rsqrt()).sum() / (m1.shape[0] * m2.shape[0])
    return s(mu_a, lv_a, mu_a, lv_a) + s(mu_b, lv_b, mu_b, lv_b) - 2 * s(mu_a, lv_a, mu_b, lv_b)


def time_fn(fn, mu, lv, n, reps):
    def once():
        mu.grad = lv.grad = None
        m, l = torch.tanh(mu), torch.tanh(lv)
        d = fn(m[:n], l[:n], m[n:], l[n:])
        d.backward()
        return d

    for _ in range(3):
        d = once()
    t0 = time.perf_counter()
    for _ in range(reps):
        once()
    return (time.perf_counter() - t0) / reps, float(d.detach()), (mu.grad.clone(), lv.grad.clone())


def main(argv=None) -> dict:
    from calae.methods.soft_intro_vae import as_distance

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    reps = 5 if a.quick else 30
    rows = []
    print(f"{'batch':>6}{'z':>5}{'autograd ms':>13}{'blockwise ms':>14}{'speed-up':>10}{'grad max |diff|':>17}")
    for n, z in SHAPES:
        g = torch.Generator().manual_seed(0)
        mu = torch.randn(2 * n, z, generator=g).requires_grad_()
        lv = torch.randn(2 * n, z, generator=g).requires_grad_()
        t_ref, v_ref, g_ref = time_fn(autograd_distance, mu, lv, n, reps)
        t_new, v_new, g_new = time_fn(as_distance, mu, lv, n, reps)
        diff = max(float((x - y).abs().max()) for x, y in zip(g_new, g_ref))
        scale = max(float(x.abs().max()) for x in g_ref)
        rows.append({"batch": n, "z": z, "autograd_s": t_ref, "blockwise_s": t_new, "speedup": t_ref / t_new,
                     "value_autograd": v_ref, "value_blockwise": v_new, "grad_max_abs_diff": diff,
                     "grad_max_abs": scale})
        print(f"{n:>6}{z:>5}{t_ref * 1e3:>13.2f}{t_new * 1e3:>14.2f}{t_ref / t_new:>9.2f}x{diff:>17.2e}", flush=True)
    out = {"threads": a.threads, "reps": reps, "rows": rows}
    path = Path(a.out or RESULTS / ("as_distance_quick.json" if a.quick else "as_distance.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
