"""IDX reading/writing, open_mnist on fake files, and the downloader against a local HTTP server."""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import threading

import numpy as np
import pytest
import torch

from calae.data.base import DataError
from calae.data.mnist import (IMAGES_MAGIC, LABELS_MAGIC, MNIST_FILES, download, open_mnist, read_idx,
                              write_idx)

RNG = np.random.default_rng(0)
IMAGES = {"train": RNG.integers(0, 256, (30, 28, 28), dtype=np.uint8),
          "t10k": RNG.integers(0, 256, (12, 28, 28), dtype=np.uint8)}
LABELS = {"train": RNG.integers(0, 10, 30, dtype=np.uint8), "t10k": RNG.integers(0, 10, 12, dtype=np.uint8)}


def _write_mnist(d, gz=True):
    ext = ".gz" if gz else ""
    for stem in ("train", "t10k"):
        write_idx(d / f"{stem}-images-idx3-ubyte{ext}", IMAGES[stem])
        write_idx(d / f"{stem}-labels-idx1-ubyte{ext}", LABELS[stem])
    return d


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    for i, a in enumerate([IMAGES["train"], LABELS["train"], np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 7,
                           np.linspace(-1, 1, 10, dtype=np.float32), np.arange(-5, 5, dtype=np.int16)]):
        p = write_idx(tmp_path / f"a{i}{suffix}", a)
        b = read_idx(p)
        assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)
    raw = (tmp_path / f"a0{suffix}").read_bytes()
    if suffix:
        assert raw[:2] == b"\x1f\x8b"
        raw = gzip.decompress(raw)
    assert raw[:4] == IMAGES_MAGIC.to_bytes(4, "big") and raw[4:8] == (30).to_bytes(4, "big")
    assert read_idx(tmp_path / f"a1{suffix}", LABELS_MAGIC).shape == (30,)
    # gz output is byte-for-byte deterministic (checksums in the download test rely on it)
    assert write_idx(tmp_path / "x.gz", IMAGES["train"]).read_bytes() == write_idx(
        tmp_path / "y.gz", IMAGES["train"]).read_bytes()


def test_idx_malformed(tmp_path):
    good = write_idx(tmp_path / "good", IMAGES["t10k"]).read_bytes()
    (tmp_path / "magic").write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "magic")
    (tmp_path / "short").write_bytes(good[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "short.gz").write_bytes(gzip.compress(good[:100]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(good)[:50])
    with pytest.raises(DataError, match="gzip"):
        read_idx(tmp_path / "broken.gz")
    with pytest.raises(DataError, match="magic 2051 but 2049"):
        read_idx(tmp_path / "good", LABELS_MAGIC)


@pytest.mark.parametrize("gz", [True, False])
def test_open_mnist(tmp_path, gz):
    _write_mnist(tmp_path, gz)
    ds = open_mnist(tmp_path)
    assert ds.x.shape == (30, 1, 28, 28) and ds.x.dtype == torch.uint8
    assert torch.equal(ds.x[:, 0], torch.from_numpy(IMAGES["train"]))
    assert torch.equal(ds.y, torch.from_numpy(LABELS["train"]).long()) and ds.y.dtype == torch.int64
    assert ds.info.num_classes == 10 and ds.info.shape == (1, 28, 28) and ds.info.name == "mnist"
    test = open_mnist(tmp_path, split="test", resolution=32, channels=3, n=5)
    assert test.x.shape == (5, 3, 32, 32) and len(test) == 5
    assert torch.equal(test.x[:, 0], test.x[:, 2])
    assert torch.equal(test.y, torch.from_numpy(LABELS["t10k"][:5]).long())
    # a constant image stays constant through the resize
    write_idx(tmp_path / "c" / "train-images-idx3-ubyte", np.full((2, 28, 28), 77, np.uint8))
    write_idx(tmp_path / "c" / "train-labels-idx1-ubyte", np.array([1, 2], np.uint8))
    assert (open_mnist(tmp_path / "c", resolution=14).x == 77).all()


def test_open_mnist_errors(tmp_path):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\[\.gz\] not found.*--download"):
        open_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", IMAGES["train"])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\[\.gz\] not found"):
        open_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", LABELS["t10k"])
    with pytest.raises(DataError, match="30 images but .* 12 labels"):
        open_mnist(tmp_path)
    with pytest.raises(DataError, match="split"):
        open_mnist(tmp_path, split="val")


def test_open_mnist_torchvision_layout(tmp_path):
    _write_mnist(tmp_path / "MNIST" / "raw", gz=False)
    assert len(open_mnist(tmp_path)) == 30


# ---- downloader ---------------------------------------------------------------------------------
class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = _write_mnist(tmp_path / "served")
    sums = {f: hashlib.md5((root / f).read_bytes()).hexdigest() for f in MNIST_FILES}
    requests = []

    class Handler(_Handler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield {"url": f"http://127.0.0.1:{httpd.server_address[1]}/", "sums": sums, "requests": requests,
               "root": root}
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_download_success_and_skip(server, tmp_path):
    dest = tmp_path / "dl"
    paths = download(dest, mirror=server["url"], checksums=server["sums"], progress=False)
    assert [p.name for p in paths] == list(MNIST_FILES)
    for f in MNIST_FILES:
        assert (dest / f).read_bytes() == (server["root"] / f).read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == sorted(MNIST_FILES)  # no temp files left
    assert len(server["requests"]) == 4
    download(dest, mirror=server["url"].rstrip("/"), checksums=server["sums"], progress=False)
    assert len(server["requests"]) == 4  # already present with the right checksum: skipped
    ds = open_mnist(dest, split="test")
    assert torch.equal(ds.x[:, 0], torch.from_numpy(IMAGES["t10k"]))


def test_open_mnist_download_flag_and_env_mirror(server, tmp_path, monkeypatch):
    monkeypatch.setenv("CALAE_MNIST_MIRROR", server["url"])
    ds = open_mnist(tmp_path / "new", download=True, checksums=server["sums"], progress=False)
    assert len(ds) == 30 and ds.info.num_classes == 10
    assert len(server["requests"]) == 4


def test_download_checksum_mismatch(server, tmp_path):
    dest = tmp_path / "dl"
    sums = dict(server["sums"], **{MNIST_FILES[1]: "0" * 32})
    with pytest.raises(DataError) as e:
        download(dest, mirror=server["url"], checksums=sums, progress=False)
    msg = str(e.value)
    assert MNIST_FILES[1] in msg and "0" * 32 in msg and server["sums"][MNIST_FILES[1]] in msg
    assert sorted(p.name for p in dest.iterdir()) == [MNIST_FILES[0]]  # nothing partial left
    # the default sums (official MNIST / Fashion-MNIST) reject our fake files
    with pytest.raises(DataError, match="checksum mismatch.*f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        download(tmp_path / "d2", mirror=server["url"], progress=False)
    assert not (tmp_path / "d2").exists()  # a failed first download leaves no empty folder behind


def test_download_404(server, tmp_path):
    dest = tmp_path / "dl"
    with pytest.raises(DataError, match="HTTP 404"):
        download(dest, mirror=server["url"], files=("missing.gz",), checksums={"missing.gz": "0" * 32},
                 progress=False)
    assert not dest.exists()  # nothing partial, and no empty folder
    with pytest.raises(DataError, match="failed"):
        download(dest, mirror=server["url"] + "nowhere/", checksums=server["sums"], progress=False)
    assert not dest.exists()
    dest.mkdir()  # a folder the user made is kept
    with pytest.raises(DataError, match="copy the IDX files"):
        download(dest, mirror=server["url"] + "nowhere/", checksums=server["sums"], progress=False)
    assert dest.is_dir() and list(dest.iterdir()) == []
