"""Digits, and every source reached through the spec strings of calae.data.open_dataset.

Folder, MNIST/IDX and toy details live in test_folder.py, test_mnist.py and test_toy2d.py.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from calae.data.base import DataError


def test_digits():
    from calae.data.digits import open_digits
    from sklearn.datasets import load_digits

    ds = open_digits()
    assert ds.x.shape == (1797, 1, 16, 16) and ds.x.dtype == torch.uint8
    assert ds.y.dtype == torch.int64 and ds.y.min() == 0 and ds.y.max() == 9
    assert torch.equal(ds.y, torch.from_numpy(load_digits().target).long())
    assert ds.x.max() == 255 and ds.x.min() == 0
    assert ds.info.num_classes == 10 and ds.info.name == "digits" and ds.info.shape == (1, 16, 16)
    small = open_digits(resolution=8, channels=3, n=10)
    assert small.x.shape == (10, 3, 8, 8) and torch.equal(small.x[:, 0], small.x[:, 1])
    expect = np.rint(load_digits().images[:10] * 255 / 16).astype(np.uint8)
    assert np.array_equal(small.x[:, 0].numpy(), expect)  # 8 px: no resize, exact scaling
    b = ds.get([0, 1])
    assert b.x.shape == (2, 1, 16, 16) and b.y.tolist() == [0, 1]


def test_digits_without_sklearn(monkeypatch):
    from calae.data.digits import open_digits

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match="pip install scikit-learn"):
        open_digits()


def test_specs_reach_each_source(tmp_path):
    from calae.data import open_dataset
    from calae.data.mnist import write_idx

    ds = open_dataset("toy:checkerboard", n=100, seed=1)
    assert len(ds) == 100 and ds.info.kind == "points"
    ds = open_dataset("digits", resolution=12)
    assert ds.info.shape == (1, 12, 12)
    write_idx(tmp_path / "m" / "train-images-idx3-ubyte.gz", np.zeros((4, 28, 28), np.uint8))
    write_idx(tmp_path / "m" / "train-labels-idx1-ubyte.gz", np.arange(4, dtype=np.uint8))
    ds = open_dataset(f"mnist:{tmp_path / 'm'}", channels=3)
    assert ds.info.shape == (3, 28, 28) and ds.info.num_classes == 10
    (tmp_path / "img").mkdir()
    Image.new("RGB", (30, 20), (10, 20, 30)).save(tmp_path / "img" / "a.png")
    ds = open_dataset(str(tmp_path / "img"), resolution=16, fit="pad")
    assert ds.info.shape == (3, 16, 16) and ds.info.name == "folder:img"
    with pytest.raises(DataError):
        open_dataset(str(tmp_path / "missing"))
