"""The dataset contract every data source follows.

A dataset is indexable in *batches*: ``ds.get(indices)`` returns a :class:`Batch` whose ``x`` is a
uint8 tensor ``[N, C, H, W]`` for images or a float32 tensor ``[N, D]`` for point sets (2-D toys).
Batch-level access lets procedural sources (the fractal renderer) work on whole batches at once and
lets in-memory sources answer with one gather instead of N Python calls.

Each dataset describes itself with a :class:`DataInfo`; networks are built from that description,
never from duplicated config fields.  Normalisation to a model's range happens once, on the
device, in :func:`to_model_range`.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch


class DataError(ValueError):
    """A problem with the user's data or data spec; the CLI prints it as one line, exit 2."""


def check_image_args(resolution: int, channels: int, n: int | None = None, n_name: str = "n") -> None:
    """The checks every image source makes on its size arguments (one message per mistake)."""
    if int(channels) not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    if int(resolution) < 1:
        raise DataError(f"resolution must be a positive number of pixels, got {resolution}")
    if n is not None and int(n) < 1:
        raise DataError(f"{n_name} must be at least 1, got {n}")


@dataclass(frozen=True)
class DataInfo:
    kind: str  # "image" or "points"
    resolution: int = 0  # images: H == W
    channels: int = 0  # images: 1 or 3
    dim: int = 0  # points: dimensionality
    num_classes: int = 0  # 0 when unlabelled
    num_params: int = 0  # procedural sources: length of the per-item parameter vector
    name: str = ""

    @property
    def shape(self) -> tuple[int, ...]:
        if self.kind == "image":
            return (self.channels, self.resolution, self.resolution)
        return (self.dim,)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class Batch:
    x: torch.Tensor  # uint8 [N, C, H, W] (images) or float32 [N, D] (points)
    y: torch.Tensor | None = None  # int64 [N] labels
    params: torch.Tensor | None = None  # float32 [N, P] generating parameters (fractals)

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> "Batch":
        nb = device != "cpu" and torch.device(device).type == "cuda"
        return Batch(
            self.x.to(device, non_blocking=nb),
            None if self.y is None else self.y.to(device, non_blocking=nb),
            None if self.params is None else self.params.to(device, non_blocking=nb),
        )

    def pin(self) -> "Batch":
        return Batch(
            self.x.pin_memory(),
            None if self.y is None else self.y.pin_memory(),
            None if self.params is None else self.params.pin_memory(),
        )


class Dataset:
    """Base class: subclasses set ``self.info`` and implement ``__len__`` and ``get``."""

    info: DataInfo

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def get(self, indices: Sequence[int] | torch.Tensor) -> Batch:  # pragma: no cover
        raise NotImplementedError

    def __getitem__(self, i: int) -> Batch:
        return self.get([int(i)])


@dataclass
class TensorDataset(Dataset):
    """An in-memory dataset (decoded folders, MNIST, toys)."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    params: torch.Tensor | None = None
    info: DataInfo = field(default=None)  # type: ignore[assignment]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def get(self, indices) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        # index_select, not x[idx]: advanced indexing was ~1000x slower for small batches here
        return Batch(
            self.x.index_select(0, idx),
            None if self.y is None else self.y.index_select(0, idx),
            None if self.params is None else self.params.index_select(0, idx),
        )


def to_model_range(x: torch.Tensor, value_range: str = "tanh") -> torch.Tensor:
    """uint8 images -> float in [-1, 1] ("tanh") or [0, 1] ("unit"); points pass through."""
    if x.dtype != torch.uint8:
        return x.float()
    x = x.float()
    if value_range == "unit":
        return x / 255.0
    return x / 127.5 - 1.0


def from_model_range(x: torch.Tensor, value_range: str = "tanh") -> torch.Tensor:
    """Model output -> uint8 images (clamped)."""
    x = x.detach().float()
    if value_range == "unit":
        x = x * 255.0
    else:
        x = (x + 1.0) * 127.5
    return x.round().clamp(0, 255).to(torch.uint8)


def crop_boxes(seed: int, name: str, frame_no: int, n: int, side: int, w: int, h: int) -> list[tuple]:
    """n square crop boxes (left, top, right, bottom) of ``side`` pixels in a w x h image, from
    (seed, name, frame number) alone: the same for a file wherever it sits in a folder (video
    frames and folder images' multi-crop views, whose caches are keyed by path, not position)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode()), frame_no, 0xC0])
    xs = rng.integers(0, w - side + 1, size=n)
    ys = rng.integers(0, h - side + 1, size=n)
    return [(int(x), int(y), int(x) + side, int(y) + side) for x, y in zip(xs, ys)]
