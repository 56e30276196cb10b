"""Image grids and GIFs from uint8 CHW tensors, with Pillow only (no torchvision)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image


VIEW_WIDTH = 512  # pictures the CLI writes are enlarged (nearest) to at least this width ...
MAX_SCALE = 8  # ... by at most this factor ...
MAX_SIDE = 4096  # ... and never past this many pixels on the longer side


def viewable_scale(width: int, height: int | None = None, target: int = VIEW_WIDTH, cap: int = MAX_SCALE,
                   max_side: int = MAX_SIDE) -> int:
    """The smallest whole factor that makes a picture ``width`` px wide at least ``target`` px wide
    (1 when it is already), at most ``cap``, and small enough that its longer side stays within
    ``max_side`` (never below 1)."""
    width = max(1, int(width))
    s = min(cap, max(1, -(-target // width)))
    longest = max(width, int(height or 0))
    while s > 1 and longest * s > max_side:
        s -= 1
    return s


def resolve_scale(scale: int | None, image: torch.Tensor) -> int:
    """``--scale``: None picks ``viewable_scale`` for the [C, H, W] (or [N, C, H, W]) picture, an int is used."""
    if scale is not None:
        return int(scale)
    return viewable_scale(image.shape[-1], image.shape[-2])


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2, pad_value: int = 0) -> torch.Tensor:
    """uint8 [N, C, H, W] -> uint8 [C, rows*(H+pad)+pad, nrow*(W+pad)+pad]."""
    if images.dim() != 4:
        raise ValueError(f"expected [N, C, H, W], got {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value, dtype=images.dtype)
    for i in range(n):
        r, k = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        grid[:, y : y + h, x : x + w] = images[i]
    return grid


def to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 [C, H, W] (C = 1 or 3) -> PIL image."""
    arr = image.detach().cpu().numpy()
    if arr.shape[0] == 1:
        return Image.fromarray(arr[0], mode="L")
    return Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0)), mode="RGB")


def _atomic_save(save, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save(tmp)
    os.replace(tmp, path)


def save_image(image: torch.Tensor, path: str | os.PathLike, upscale: int = 1) -> None:
    """Save uint8 [C, H, W] (or a batch [N, C, H, W], gridded) as PNG, atomically."""
    if image.dim() == 4:
        image = make_grid(image)
    pil = to_pil(image)
    if upscale > 1:
        pil = pil.resize((pil.width * upscale, pil.height * upscale), Image.NEAREST)
    _atomic_save(lambda p: pil.save(p, format="PNG"), path)


def save_gif(frames: Sequence[torch.Tensor], path: str | os.PathLike, duration_ms: int = 80,
             upscale: int = 1, loop: int = 0) -> None:
    """Save uint8 [C, H, W] frames as an animated GIF, atomically."""
    pils = [to_pil(f) for f in frames]
    if upscale > 1:
        pils = [p.resize((p.width * upscale, p.height * upscale), Image.NEAREST) for p in pils]
    pils = [p.convert("RGB") if p.mode == "L" else p for p in pils]
    _atomic_save(lambda p: pils[0].save(p, format="GIF", save_all=True, append_images=pils[1:],
                                        duration=duration_ms, loop=loop), path)


def save_figure(fig, out: str | os.PathLike) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
