"""Data-parallel training under torchrun: gloo on CPU, nccl on CUDA.

Why not wrap each network in ``DistributedDataParallel``: our phases train different subsets of
networks from separate forwards (ALAE: E,D then F,G then E,G), and DDP's reducer assumes one
forward per backward per wrapped module and complains about parameters that get no gradient. The
loop instead averages the phase's gradients with one flattened all-reduce after each backward,
which is the same arithmetic DDP performs (sum / world size), bucketed into a single call.
"""
from __future__ import annotations

import functools
import os
import time

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
    """Leave the process group so that the process can exit cleanly.

    Each gloo collective is finished when ``wait`` returns, but the gloo worker thread drops its
    references to the work's tensors just after, and that drop takes the GIL (torch's tensors hold
    their Python objects). If the main thread reaches interpreter shutdown first, the worker is
    made to exit while it waits for the GIL, inside a destructor, and the process aborts with
    "terminate called without an active exception" (gdb on a core of the 2-process test, about 1
    run in 12). Sleeping a moment hands the GIL to those threads; no collective is involved, so a
    rank that failed cannot hang here waiting for the others."""
    if dist.is_available() and dist.is_initialized():
        time.sleep(0.1)
        dist.destroy_process_group()
        time.sleep(0.1)


def broadcast_module(module: torch.nn.Module) -> None:
    """Make every rank start from rank 0's weights and buffers."""
    if world()[1] == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def allreduce_grads(params: list[torch.Tensor], bad: torch.Tensor) -> torch.Tensor:
    """Average gradients over ranks in one call; ``bad`` (a 0-d flag) is summed alongside so that
    every rank takes the same skip decision. Returns the summed flag.

    Every rank must hand the collective the same buffer, so a parameter without a gradient (the
    rank skipped backward after a non-finite loss, or its loss did not reach the parameter)
    contributes zeros, as DDP's unused parameters do. A one-per-parameter "had a gradient" count
    travels in the same buffer: a parameter no rank gave a gradient gets ``grad = None`` back, so
    the optimizer skips it exactly as a single process would (Adam would otherwise move it on
    its old moments)."""
    _, n = world()
    if n == 1:
        return bad
    # from the parameters, not the gradients: a rank that skipped backward has none to ask
    dtype = functools.reduce(torch.promote_types, (p.dtype for p in params), torch.float32)
    had = torch.tensor([p.grad is not None for p in params], dtype=dtype, device=bad.device)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1).to(dtype) for p in params] + [had, bad.reshape(1).to(dtype)])
    dist.all_reduce(flat)
    off = 0
    for p, used in zip(params, flat[-1 - len(params):-1].tolist()):
        k = p.grad.numel()
        if used == 0:
            p.grad = None
        else:
            p.grad.copy_(flat[off:off + k].view_as(p.grad) / n)
        off += k
    return flat[-1]


def sync_buffers(module: torch.nn.Module) -> None:
    """Average the floating buffers (BatchNorm running mean/var, any running average of rank-local
    batches) over ranks in one flattened all-reduce, so every rank, its EMA copies and its
    checkpoints hold the same statistics; DDP instead overwrites them with rank 0's at every
    forward, which throws the other ranks' batches away. The sum runs in float64 and is divided
    there: n equal float32 values come back bit-identical, so constant buffers (blur kernels)
    never drift. Integer buffers (``num_batches_tracked``) count forwards, which every rank runs
    equally; they are left alone (``check_in_sync`` checks them at the end of a run)."""
    if world()[1] == 1:
        return
    bufs = [b for b in module.buffers() if b.is_floating_point()]
    if not bufs:
        return
    flat = torch.cat([b.detach().reshape(-1).double() for b in bufs])
    dist.all_reduce(flat)
    flat /= world()[1]
    off = 0
    with torch.no_grad():
        for b in bufs:
            k = b.numel()
            b.copy_(flat[off:off + k].view_as(b))
            off += k


def seed_rank(seed: int) -> None:
    """Give each data-parallel rank its own random stream, a pure function of (seed, rank), once
    the model is built and broadcast: every rank draws different z, ε, noise and mixing coins
    (global, not per-rank, diversity per step) and a rerun draws the same ones. A single process
    keeps the stream ``manual_seed(seed)`` started, so its runs do not change."""
    rank, n = world()
    if n == 1:
        return
    torch.manual_seed((seed * 1_000_003 + 7_919 * (rank + 1)) % (2 ** 63))  # CUDA generators too


def rng_state() -> torch.Tensor:
    """This process's CPU RNG state followed by the current CUDA device's (if initialised), uint8."""
    parts = [torch.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        parts.append(torch.cuda.get_rng_state())
    return torch.cat(parts)


def set_rng_state(state: torch.Tensor) -> None:
    """Inverse of ``rng_state``."""
    k = torch.get_rng_state().numel()
    torch.set_rng_state(state[:k].clone())
    if state.numel() > k and torch.cuda.is_available():
        torch.cuda.set_rng_state(state[k:].clone())


def gather_rng_states() -> list[torch.Tensor] | None:
    """Every rank's ``rng_state()``, on every rank (a checkpoint written by rank 0 then resumes
    each rank where it was); None in a single process. A collective: every rank must call it."""
    _, n = world()
    if n == 1:
        return None
    mine = rng_state()
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    size = torch.tensor([mine.numel()], device=dev)
    sizes = [torch.zeros_like(size) for _ in range(n)]
    dist.all_gather(sizes, size)
    if any(int(s) != mine.numel() for s in sizes):  # CUDA initialised on some ranks only
        raise RuntimeError(f"data-parallel ranks hold RNG states of different sizes {[int(s) for s in sizes]}")
    got = [torch.zeros_like(mine, device=dev) for _ in range(n)]
    dist.all_gather(got, mine.to(dev))
    return [g.cpu() for g in got]


def all_mean(values: list[float]) -> list[float]:
    """Average scalars over ranks (float64, in one call); returns them unchanged in one process."""
    _, n = world()
    if n == 1 or not values:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return (t / n).cpu().tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any (a decision all ranks must take together)."""
    if world()[1] == 1:
        return bool(flag)
    return all_mean([1.0 if flag else 0.0])[0] > 0


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def check_in_sync(module: torch.nn.Module) -> None:
    """Every rank must hold the same weights and buffers after training (a cheap end-of-run
    invariant)."""
    _, n = world()
    if n == 1:
        return
    with torch.no_grad():
        ts = list(module.parameters()) + list(module.buffers())
        s = torch.stack([sum(t.double().sum() for t in ts), sum(t.double().abs().sum() for t in ts)]).cpu()
    if dist.get_backend() == "nccl":
        s = s.cuda()
    got = [torch.zeros_like(s) for _ in range(n)]
    dist.all_gather(got, s)
    if any(not torch.allclose(g, got[0], rtol=0, atol=1e-9) for g in got):
        raise RuntimeError(f"data-parallel ranks diverged: weight and buffer checksums {[g.tolist() for g in got]}")
