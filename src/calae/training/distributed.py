"""Data-parallel training under torchrun: gloo on CPU, nccl on CUDA.

Why not wrap each network in ``DistributedDataParallel``: our phases train different subsets of
networks from separate forwards (ALAE: E,D then F,G then E,G), and DDP's reducer assumes one
forward per backward per wrapped module and complains about parameters that get no gradient. The
loop instead averages the phase's gradients with one flattened all-reduce after each backward,
which is the same arithmetic DDP performs (sum / world size), bucketed into a single call.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup(device_type: str) -> tuple[int, int, int]:
    """Initialise the process group when launched by torchrun; returns (rank, world, local_rank)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    return dist.get_rank(), dist.get_world_size(), local


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: torch.nn.Module) -> None:
    """Make every rank start from rank 0's weights and buffers."""
    if world()[1] == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def allreduce_grads(params: list[torch.Tensor], bad: torch.Tensor) -> torch.Tensor:
    """Average gradients over ranks in one call; ``bad`` (a 0-d flag) is summed alongside so that
    every rank takes the same skip decision. Returns the summed flag."""
    _, n = world()
    grads = [p.grad for p in params if p.grad is not None]
    if n == 1:
        return bad
    flat = torch.cat([g.reshape(-1) for g in grads] + [bad.reshape(1).to(grads[0].dtype if grads else torch.float32)])
    dist.all_reduce(flat)
    off = 0
    for g in grads:
        k = g.numel()
        g.copy_(flat[off:off + k].view_as(g) / n)
        off += k
    return flat[-1]


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def check_in_sync(module: torch.nn.Module) -> None:
    """Every rank must hold the same weights after training (a cheap end-of-run invariant)."""
    _, n = world()
    if n == 1:
        return
    with torch.no_grad():
        s = torch.stack([sum(p.double().sum() for p in module.parameters()),
                         sum(p.double().abs().sum() for p in module.parameters())]).cpu()
    got = [torch.zeros_like(s) for _ in range(n)]
    dist.all_gather(got, s)
    if any(not torch.allclose(g, got[0], rtol=0, atol=1e-9) for g in got):
        raise RuntimeError(f"data-parallel ranks diverged: weight checksums {[g.tolist() for g in got]}")
