"""A torchrun worker for tests/test_distributed.py: trains a tiny VAE on 8 px digits with the real
Trainer and writes, per rank, what that rank saw, for the test to compare across ranks and runs:

- ``rank{r}.safetensors``: the method's final state_dict (weights, EMA copies, buffers) on rank r;
- ``draws{r}.safetensors``: the Gaussian draws (torch.randn / randn_like) of rank r's first steps;
- ``rank{r}.json``: the run's result (steps, skipped).

Test-only hook: ``--nan-rank R --nan-step S`` makes rank R's loss NaN at step S (each phase's loss
function is wrapped here; the library has no hook for it).

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py --out DIR --steps 6
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

BATCH = 8  # per rank
RECORD_STEPS = 2  # draws of these first steps are written


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, required=True, help="the run's budget in optimisation steps")
    p.add_argument("--stop-at", type=int, default=None, help="stop (with a checkpoint) at this step")
    p.add_argument("--nan-rank", type=int, default=-1)
    p.add_argument("--nan-step", type=int, default=-1)
    p.add_argument("--norm", default="batch")
    a = p.parse_args()

    from calae.config import TrainConfig
    from calae.training import distributed as dist
    from calae.training.loop import Trainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    # just under steps x images per step: ceil() gives exactly `steps` with no float round-up
    kimg = (a.steps * BATCH * world - 0.5) / 1000.0
    cfg = TrainConfig(method="vae", data="digits", resolution=8, kimg=kimg, batch_size=BATCH, seed=3,
                      precision="fp32", device="cpu", log_every_kimg=0.0, sample_every_kimg=0.0,
                      snapshot_every_kimg=0.0, threads=1, prefetch=1)
    model = {"z_dim": 4, "base_channels": 8, "max_channels": 16, "norm": a.norm}
    trainer = Trainer(cfg, model, a.out, progress=False, pictures=False)
    rank = trainer.rank
    draws: list[torch.Tensor] = []

    def wrap(loss_fn):
        def loss(method, batch, ctx):
            seen: list[torch.Tensor] = []
            randn, randn_like = torch.randn, torch.randn_like

            def rec(f):
                def g(*args, **kw):
                    t = f(*args, **kw)
                    seen.append(t.detach().clone())
                    return t
                return g

            torch.randn, torch.randn_like = rec(randn), rec(randn_like)
            try:
                out = loss_fn(method, batch, ctx)
            finally:
                torch.randn, torch.randn_like = randn, randn_like
            if ctx.step < RECORD_STEPS:
                draws.extend(seen)
            if rank == a.nan_rank and ctx.step == a.nan_step:
                out = dict(out, loss=out["loss"] * float("nan"))
            return out
        return loss

    trainer.phases = [dataclasses.replace(ph, loss=wrap(ph.loss)) for ph in trainer.phases]
    try:
        res = trainer.run(stop_at_step=a.stop_at)
        out = Path(a.out)
        save_file({k: v.detach().contiguous().clone() for k, v in trainer.method.state_dict().items()},
                  str(out / f"rank{rank}.safetensors"))
        if draws:
            save_file({f"d{i}": t.contiguous() for i, t in enumerate(draws)}, str(out / f"draws{rank}.safetensors"))
        (out / f"rank{rank}.json").write_text(json.dumps({"steps": res["steps"], "skipped": res["skipped"]}))
    finally:
        dist.cleanup()


if __name__ == "__main__":
    main()
