"""scikit-learn's bundled 8x8 handwritten digits: a small labelled image set that needs no download.

1797 images with values 0..16 are scaled to uint8 0..255 (``round(v * 255 / 16)``) and resized to
``resolution`` with antialiased bilinear interpolation; labels are 0..9.  Used by learning tests.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import DataError, DataInfo, TensorDataset, check_image_args
from .mnist import resize_images

__all__ = ["open_digits"]


def open_digits(resolution: int = 16, channels: int = 1, n: int | None = None) -> TensorDataset:
    """The digits as a ``TensorDataset``: uint8 [N, C, R, R], int64 labels 0..9, ``num_classes=10``."""
    check_image_args(resolution, channels, n)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits data set needs scikit-learn: pip install scikit-learn "
                        "(or pip install calae[metrics])") from None
    d = load_digits()
    images = np.asarray(d.images, dtype=np.float64)  # [1797, 8, 8], 0..16
    labels = np.asarray(d.target, dtype=np.int64)
    if n is not None:
        images, labels = images[: int(n)], labels[: int(n)]
    x = torch.from_numpy(np.clip(np.rint(images * (255.0 / 16.0)), 0, 255).astype(np.uint8))[:, None]
    x = resize_images(x, int(resolution))
    if int(channels) == 3:
        x = x.repeat(1, 3, 1, 1)
    info = DataInfo(kind="image", resolution=int(resolution), channels=int(channels), num_classes=10,
                    name="digits")
    return TensorDataset(x=x.contiguous(), y=torch.from_numpy(labels), info=info)
