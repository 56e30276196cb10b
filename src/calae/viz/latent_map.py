"""A latent map of thumbnails: each image drawn at its 2-D position (PCA / t-SNE of its code).

The positions are scaled to fill a square canvas, and an image is drawn only where it overlaps
none drawn before it (in the order given), so the map shows a non-overlapping subset that covers
every populated region.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .grid import to_pil


def thumbnail_map(xy: np.ndarray, images: torch.Tensor, size: int = 1024, thumb: int | None = None,
                  background: int = 255) -> tuple[Image.Image, int]:
    """(the picture, how many thumbnails it shows) for positions ``xy`` [N, 2] of uint8 images
    [N, C, H, W]. ``thumb``: thumbnail side in px (default: about size / sqrt(N) * 1.5, 24..96)."""
    xy = np.asarray(xy, dtype=np.float64)
    n = len(xy)
    if n != len(images):
        raise ValueError(f"{n} positions for {len(images)} images")
    if thumb is None:
        thumb = int(np.clip(size / max(1.0, np.sqrt(n)) * 1.5, 24, 96))
    thumb = max(4, min(int(thumb), size // 2))
    canvas = Image.new("RGB", (size, size), (background,) * 3)
    if n == 0:
        return canvas, 0
    lo, hi = xy.min(0), xy.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    pos = (xy - lo) / span * (size - thumb)  # top-left corners within the canvas
    pos[:, 1] = (size - thumb) - pos[:, 1]  # y grows upwards on the map
    placed = np.empty((0, 2))
    shown = 0
    for i in range(n):
        if len(placed) and (np.abs(placed - pos[i]).max(1) < thumb).any():
            continue  # it would overlap one already drawn
        placed = np.vstack([placed, pos[i]])
        im = to_pil(images[i]).convert("RGB")
        im = im.resize((thumb, thumb), Image.NEAREST if thumb >= im.width else Image.LANCZOS)
        canvas.paste(im, (int(round(pos[i, 0])), int(round(pos[i, 1]))))
        shown += 1
    return canvas, shown


__all__ = ["thumbnail_map"]
