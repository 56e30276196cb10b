"""A resumable, rank-aware batch stream with a prefetch thread.

The indices of step s are a pure function of (seed, s, rank, world): item g of the global stream is
``perm_e[g % L]`` with e = g // L and ``perm_e`` a permutation seeded by (seed, e). Resuming at step
s therefore needs nothing but s, and DDP ranks read disjoint slices of each global batch.
A background thread prepares the next batches (decode / render) while the model trains; the time the
loop waits for it is measured so benchmarks can report the data-wait fraction.
"""
from __future__ import annotations

import queue
import threading
import time

import torch

from ..data.base import Batch, Dataset


def step_indices(n_items: int, seed: int, step: int, batch_size: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    start = (step * world + rank) * batch_size
    g = torch.arange(start, start + batch_size)
    epochs = g // n_items
    out = torch.empty(batch_size, dtype=torch.long)
    for e in epochs.unique().tolist():
        perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 1_000_003 + e))
        sel = epochs == e
        out[sel] = perm[g[sel] % n_items]
    return out


class BatchStream:
    def __init__(self, dataset: Dataset, batch_size: int, seed: int, start_step: int = 0,
                 rank: int = 0, world: int = 1, prefetch: int = 4, pin: bool = False):
        self.ds, self.bs, self.seed = dataset, batch_size, seed
        self.rank, self.world, self.pin = rank, world, pin
        self.step = start_step
        self.wait_s = 0.0
        self._q: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, args=(start_step,), daemon=True)
        self._thread.start()

    def _work(self, step: int) -> None:
        try:
            while not self._stop.is_set():
                idx = step_indices(len(self.ds), self.seed, step, self.bs, self.rank, self.world)
                b = self.ds.get(idx)
                if self.pin:
                    b = b.pin()
                while not self._stop.is_set():
                    try:
                        self._q.put(b, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                step += 1
        except BaseException as e:  # surfaced in the consumer
            self._error = e
            self._q.put(None)

    def next(self) -> Batch:
        t = time.perf_counter()
        b = self._q.get()
        self.wait_s += time.perf_counter() - t
        if b is None:
            raise self._error  # type: ignore[misc]
        self.step += 1
        return b

    def close(self) -> None:
        self._stop.set()
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=5)
