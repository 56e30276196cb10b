"""Shared plumbing for the registered metrics: the error type and batched access to the model
through ``calae.api`` (``sample_tensor``, ``encode``, ``reconstruct_tensor``) and to the dataset.

Everything here is deterministic given a seed: real items are a seeded permutation of the dataset,
fake items come from ``model.sample(n, seed)`` called in chunks with seeds derived from the
evaluation seed (so the fake set depends on ``(seed, batch_size)``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..data.base import Dataset, from_model_range, to_model_range


class MetricError(ValueError):
    """A metric that cannot run on this model/data (wrong kind, no labels, no weights file...).

    The message is one line; the CLI prints it and exits 2, like DataError.
    """


# ------------------------------------------------------------------------------------------------
# Modes and devices


def model_device(model: nn.Module, device: torch.device | str | None = None) -> torch.device:
    """The device to run on: the one given, else the model's first parameter/buffer's, else cpu."""
    if device is not None:
        return torch.device(device)
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def chunk_seed(seed: int, i: int) -> int:
    """Seed of the i-th sampling chunk; distinct across chunks and evaluation seeds."""
    return (int(seed) * 1_000_003 + int(i)) % (2**31 - 1)


# ------------------------------------------------------------------------------------------------
# Data access


def real_indices(n_total: int, n: int, seed: int) -> torch.Tensor:
    """A seeded random subset of n indices (all of them, permuted, when n >= n_total)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(int(n_total), generator=g)[: min(int(n), int(n_total))]


def gather(dataset: Dataset, idx: torch.Tensor, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``dataset.get`` in chunks; returns (x as stored: uint8 images or float points, labels or None)."""
    xs, ys = [], []
    for s in range(0, len(idx), batch_size):
        b = dataset.get(idx[s : s + batch_size])
        xs.append(b.x.cpu())
        ys.append(None if b.y is None else b.y.cpu())
    x = torch.cat(xs) if xs else torch.empty(0)
    y = None if (not ys or any(t is None for t in ys)) else torch.cat(ys).long()
    return x, y


def to_uint8_images(x: torch.Tensor, value_range: str) -> torch.Tensor:
    """Model-range images -> uint8, i.e. exactly what a saved PNG would hold."""
    if x.dtype == torch.uint8:
        return x
    return from_model_range(x, value_range)


def to_unit(x: torch.Tensor, value_range: str) -> torch.Tensor:
    """uint8 or model-range images -> float32 in [0, 1] (model outputs are clamped)."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    x = x.detach().float()
    if value_range != "unit":
        x = (x + 1.0) * 0.5
    return x.clamp(0.0, 1.0)


def sample_model(model, n: int, seed: int, batch_size: int, device: torch.device) -> torch.Tensor:
    """n samples (``calae.api``'s ``sample_tensor``, untruncated) in chunks of batch_size, on the CPU,
    in the model range."""
    from ..api import Model

    mdl = model if isinstance(model, Model) else Model(model)
    out = []
    for i, s in enumerate(range(0, int(n), int(batch_size))):
        out.append(mdl.sample_tensor(min(int(batch_size), int(n) - s), seed=chunk_seed(seed, i)))
    return torch.cat(out)


def encode_all(model, x: torch.Tensor, value_range: str, batch_size: int, device: torch.device) -> torch.Tensor:
    """Codes [N, d] of stored items x (uint8 images or float points), as float32 on the CPU."""
    from ..api import Model

    mdl = model if isinstance(model, Model) else Model(model)
    return torch.cat([mdl.encode(x[s:s + batch_size]).reshape(min(batch_size, x.shape[0] - s), -1)
                      for s in range(0, x.shape[0], batch_size)])


def reconstruct_all(model, x: torch.Tensor, value_range: str, batch_size: int, device: torch.device) -> torch.Tensor:
    """Reconstructions of stored items x, in the model range, float32 on the CPU."""
    from ..api import Model

    mdl = model if isinstance(model, Model) else Model(model)
    return torch.cat([mdl.reconstruct_tensor(mdl.to_model(x[s:s + batch_size]))
                      for s in range(0, x.shape[0], batch_size)])
