"""MNIST / Fashion-MNIST from IDX files, and a checked downloader.

IDX format: 2 zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64), a byte with the number of dimensions, then one big-endian uint32 per dimension and
the big-endian data.  MNIST images have magic 2051 (0x00000803: uint8, 3-D), labels 2049
(0x00000801: uint8, 1-D).  Files may be gzipped (detected from the content, not the name).

``open_mnist(DIR, split="train"|"test")`` looks for ``train-images-idx3-ubyte[.gz]`` etc. (also the
``train-images.idx3-ubyte`` spelling) in ``DIR``, ``DIR/raw``, ``DIR/MNIST/raw`` and
``DIR/FashionMNIST/raw``; Fashion-MNIST uses the same names, so the same call reads it.

``download(DIR)`` fetches the four ``.gz`` files with urllib from a mirror (argument, else env
``CALAE_MNIST_MIRROR``, else :data:`DEFAULT_MIRROR`), checks MD5 sums (by default a file must match
the official MNIST *or* Fashion-MNIST sum), writes atomically (temporary file, then rename) and skips
files already present with a good sum.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .base import DataError, DataInfo, TensorDataset, check_image_args

__all__ = ["read_idx", "write_idx", "open_mnist", "download", "resize_images", "find_mnist_files",
           "MNIST_FILES", "MNIST_MD5", "FASHION_MNIST_MD5", "DEFAULT_MIRROR", "IMAGES_MAGIC", "LABELS_MAGIC"]

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
DEFAULT_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7768d8de",
}
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
_DEFAULT_SUMS = {k: (MNIST_MD5[k], FASHION_MNIST_MD5[k]) for k in MNIST_FILES}

_IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_CODES = {f"{d.kind}{d.itemsize}": c for c, d in _IDX_TYPES.items()}
_SPLITS = {"train": "train", "test": "t10k"}
_SEARCH = ("", "raw", "MNIST/raw", "FashionMNIST/raw")


# ---- IDX ------------------------------------------------------------------------------------------
MAX_IDX_BYTES = 1 << 30  # 1 GiB of IDX data (MNIST's largest file is 47 MB): more is a decompression bomb


def _read_bytes(path: Path, max_bytes: int | None = None) -> bytes:
    """The file's bytes, gunzipped when it is gzip. Decompression streams, and stops as soon as the
    output passes what the IDX header says the file holds (or ``MAX_IDX_BYTES``), so a small gzip
    that expands to gigabytes is refused having used about the header's size in memory."""
    cap = MAX_IDX_BYTES if max_bytes is None else max_bytes
    if not path.is_file():
        raise DataError(f"cannot read {path}: not a regular file")
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
            if magic != b"\x1f\x8b":
                return magic + f.read(cap + 1)
            f.seek(0)
            try:
                with gzip.GzipFile(fileobj=f) as gz:
                    head = gz.read(4)
                    need = cap
                    if len(head) == 4 and head[:2] == b"\0\0" and head[2] in _IDX_TYPES:
                        dims_raw = gz.read(4 * head[3])
                        head += dims_raw
                        if len(dims_raw) == 4 * head[3]:
                            dims = struct.unpack(f">{head[3]}I", dims_raw)
                            need = int(np.prod(dims, dtype=np.float64) * _IDX_TYPES[head[2]].itemsize)
                            if need > cap:
                                raise DataError(f"{path}: its IDX header claims {need:,} bytes of data, over the "
                                                f"limit of {cap:,}; it is not an MNIST file")
                    body = gz.read(need + 1)  # one byte more than needed: read_idx reports "longer"
                    return head + body
            except (OSError, EOFError, zlib.error) as e:
                raise DataError(f"{path} is a damaged gzip file ({e}); delete it and download again") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def read_idx(path: str | os.PathLike, expect_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a native-endian numpy array."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path} is not an IDX file (only {len(data)} bytes)")
    magic = struct.unpack(">I", data[:4])[0]
    zero, code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if zero != 0 or code not in _IDX_TYPES or ndim == 0:
        raise DataError(f"{path} is not an IDX file (bad magic number {magic:#010x})")
    if expect_magic is not None and magic != expect_magic:
        raise DataError(f"{path} has IDX magic {magic} but {expect_magic} was expected "
                        f"({'images' if expect_magic == IMAGES_MAGIC else 'labels'} file swapped or wrong?)")
    head = 4 + 4 * ndim
    if len(data) < head:
        raise DataError(f"{path} is truncated (header cut short)")
    dims = struct.unpack(f">{ndim}I", data[4:head])
    dtype = _IDX_TYPES[code]
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = len(data) - head
    if need > MAX_IDX_BYTES:
        raise DataError(f"{path}: its IDX header claims {need:,} bytes of data, over the limit of "
                        f"{MAX_IDX_BYTES:,}; it is not an MNIST file")
    if have != need:
        what = "truncated" if have < need else "longer than its header says"
        raise DataError(f"{path} is {what}: header {tuple(dims)} needs {need} data bytes, found {have}; "
                        "delete it and download again")
    arr = np.frombuffer(data, dtype=dtype, offset=head).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in .gz, with a fixed mtime so
    identical arrays give identical bytes)."""
    path = Path(path)
    a = np.asarray(array)
    if a.ndim == 0 or a.ndim > 255:
        raise ValueError("IDX needs an array with 1 to 255 dimensions")
    key = f"{a.dtype.kind}{a.dtype.itemsize}"
    if key not in _IDX_CODES:
        raise ValueError(f"IDX cannot store dtype {a.dtype}; use uint8, int8, int16, int32, float32 or float64")
    code = _IDX_CODES[key]
    body = (struct.pack(">I", (code << 8) | a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
            + np.ascontiguousarray(a, dtype=_IDX_TYPES[code]).tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            gz.write(body)
    else:
        path.write_bytes(body)
    return path


# ---- locating files -------------------------------------------------------------------------------
def _candidates(stem: str, kind: str) -> list[str]:
    base = f"{stem}-{kind}"
    dotted = base.replace("-idx", ".idx")
    return [base, base + ".gz", dotted, dotted + ".gz"]


def find_mnist_files(directory: str | os.PathLike, split: str = "train") -> tuple[Path | None, Path | None]:
    """(images, labels) paths for a split, or None for a file that is not there."""
    if split not in _SPLITS:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(directory).expanduser()
    stem = _SPLITS[split]
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        hit = None
        for sub in _SEARCH:
            for name in _candidates(stem, kind):
                p = root / sub / name if sub else root / name
                if p.is_file():
                    hit = p
                    break
            if hit:
                break
        found.append(hit)
    return found[0], found[1]


# ---- resizing (shared with digits) ----------------------------------------------------------------
def resize_images(x: torch.Tensor, resolution: int, chunk: int = 8192) -> torch.Tensor:
    """uint8 [N, C, H, W] -> uint8 [N, C, R, R], bilinear with antialiasing (chunked for memory)."""
    if x.shape[-2:] == (resolution, resolution):
        return x
    out = torch.empty((x.shape[0], x.shape[1], resolution, resolution), dtype=torch.uint8)
    for s in range(0, x.shape[0], chunk):
        y = F.interpolate(x[s:s + chunk].float(), size=(resolution, resolution), mode="bilinear",
                          align_corners=False, antialias=True)
        out[s:s + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


# ---- dataset ----------------------------------------------------------------------------------------
def open_mnist(directory: str | os.PathLike, resolution: int = 28, channels: int = 1, split: str = "train",
               download: bool = False, mirror: str | None = None, n: int | None = None,
               checksums: Mapping[str, str | Iterable[str]] | None = None,
               progress: bool = True) -> TensorDataset:
    """MNIST (or Fashion-MNIST) as a labelled ``TensorDataset`` (uint8 [N, C, R, R], labels 0..9)."""
    if split not in _SPLITS:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    check_image_args(resolution, channels, n)
    root = Path(directory).expanduser()
    images, labels = find_mnist_files(root, split)
    if (images is None or labels is None) and download:
        _download(root, mirror=mirror, checksums=checksums, progress=progress)
        images, labels = find_mnist_files(root, split)
    if images is None or labels is None:
        stem = _SPLITS[split]
        missing = f"{stem}-images-idx3-ubyte[.gz]" if images is None else f"{stem}-labels-idx1-ubyte[.gz]"
        where = f"{root}" if root.is_dir() else f"{root} (which does not exist)"
        raise DataError(f"mnist: {missing} not found in {where}; add --download to fetch MNIST there, "
                        "or point mnist:DIR at the folder holding the IDX files")
    x = read_idx(images, IMAGES_MAGIC)
    y = read_idx(labels, LABELS_MAGIC)
    if x.ndim != 3 or y.ndim != 1:
        raise DataError(f"{images} / {labels}: expected 3-D images and 1-D labels, got {x.shape} and {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{images} has {x.shape[0]} images but {labels} has {y.shape[0]} labels; "
                        "the files belong to different sets")
    if x.shape[0] == 0:
        raise DataError(f"{images} holds 0 images; point mnist:DIR at a complete set (or --download it)")
    if y.size and (int(y.min()) < 0 or int(y.max()) > 9):
        raise DataError(f"{labels} has labels outside 0..9 (min {int(y.min())}, max {int(y.max())})")
    if n is not None:
        x, y = x[: int(n)], y[: int(n)]
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8))[:, None]
    xt = resize_images(xt, int(resolution))
    if int(channels) == 3:
        xt = xt.repeat(1, 3, 1, 1)
    info = DataInfo(kind="image", resolution=int(resolution), channels=int(channels), num_classes=10,
                    name="mnist" if split == "train" else "mnist:test")
    return TensorDataset(x=xt.contiguous(), y=torch.from_numpy(y.astype(np.int64)), info=info)


# ---- download ---------------------------------------------------------------------------------------
def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _expected(checksums, name: str) -> tuple[str, ...] | None:
    if name not in checksums or checksums[name] is None:
        return None
    v = checksums[name]
    return (v.lower(),) if isinstance(v, str) else tuple(s.lower() for s in v)


def download(directory: str | os.PathLike, mirror: str | None = None, files: Iterable[str] = MNIST_FILES,
             checksums: Mapping[str, str | Iterable[str]] | None = None, progress: bool = True,
             timeout: float = 60.0) -> list[Path]:
    """Fetch ``files`` from ``mirror`` into ``directory``; returns their paths.

    ``checksums`` maps a file name to an MD5 hex digest (or several accepted ones); by default a file
    must match the official MNIST or Fashion-MNIST sum.  A file with no checksum is downloaded with a
    warning.  Files already present with a good sum are skipped.  Errors are :class:`DataError` and
    never leave a partial file behind.
    """
    base = mirror or os.environ.get("CALAE_MNIST_MIRROR") or DEFAULT_MIRROR
    if not base.endswith("/"):
        base += "/"
    sums = _DEFAULT_SUMS if checksums is None else checksums
    root = Path(directory).expanduser()
    created = [p for p in (root, *root.parents) if not p.exists()]  # what mkdir makes, deepest first
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {root}: {e.strerror or e}") from None
    out = []
    files = list(files)
    try:
        for name in files:
            dest = root / name
            expected = _expected(sums, name)
            if dest.is_file() and expected is not None and _md5(dest) in expected:
                out.append(dest)
                continue
            if expected is None:
                warnings.warn(f"no checksum known for {name}; downloading it unverified", UserWarning, stacklevel=2)
            _fetch(base + name, dest, expected, progress, timeout)
            out.append(dest)
    except DataError as e:
        for d in created:  # a failed first download leaves no empty folders behind
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise DataError(f"{e}; or copy the IDX files ({', '.join(files)}) into {root} by hand") from None
    return out


_download = download  # open_mnist's `download` flag shadows the function name


def _fetch(url: str, dest: Path, expected: tuple[str, ...] | None, progress: bool, timeout: float) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)
            except urllib.error.HTTPError as e:
                e.close()
                raise DataError(f"download of {url} failed: HTTP {e.code} {e.reason}; set CALAE_MNIST_MIRROR "
                                "to another mirror's URL") from None
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                raise DataError(f"download of {url} failed: {reason}; check your connection, or set "
                                "CALAE_MNIST_MIRROR to another mirror's URL") from None
            with resp:
                total = resp.headers.get("Content-Length")
                bar = _bar(int(total) if total and total.isdigit() else None, dest.name, progress)
                try:
                    while True:
                        try:
                            block = resp.read(1 << 16)
                        except (OSError, urllib.error.URLError) as e:
                            raise DataError(f"download of {url} was interrupted: {e}") from None
                        if not block:
                            break
                        f.write(block)
                        h.update(block)
                        if bar is not None:
                            bar.update(len(block))
                finally:
                    if bar is not None:
                        bar.close()
        got = h.hexdigest()
        if expected is not None and got not in expected:
            raise DataError(f"checksum mismatch for {dest.name} from {url}: expected MD5 "
                            f"{' or '.join(expected)}, got {got}; the file was discarded (wrong mirror?)")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _bar(total, desc, show):
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False)
