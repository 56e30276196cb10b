"""A folder of the user's own images as a dataset.

``ImageFolder(path, resolution=64, channels=3, fit="crop")`` scans ``path`` recursively for
``.jpg .jpeg .png .webp .bmp`` files (extension case-insensitive; hidden files and folders, i.e.
names starting with ".", are ignored), in sorted order of their relative POSIX paths, and serves
them as uint8 ``[N, C, R, R]`` batches.  Class sub-folders are *not* turned into labels: the set is
unlabelled (``num_classes == 0``).

Decisions (documented so they can be relied on):

* Geometry (``fit``): ``"crop"`` (default) centre-crops to the largest square and resizes with
  Lanczos (``reducing_gap=3`` so big photos shrink fast without visible loss); ``"pad"`` resizes the
  long side to ``resolution`` and letterboxes with **black**; ``"stretch"`` resizes to the square,
  ignoring the aspect ratio.  EXIF orientation is applied first.
* Colour: everything becomes ``"L"`` (ITU-R 601 luma) for ``channels=1`` or ``"RGB"`` for
  ``channels=3``.  Images with alpha (RGBA, LA, PA, palette images with a transparent index) are
  composited over **black** by default (``background="white"`` is available): black matches the
  letterbox colour and is the model's "-1" value.  CMYK/YCbCr/1-bit are converted by Pillow;
  16-bit greyscale (``I;16``/``I``) is scaled 0..65535 -> 0..255.
* Bad files never crash and never pass silently: a file that cannot be identified, is corrupt or
  truncated (every image is fully decoded with ``.load()``; ``ImageFile.LOAD_TRUNCATED_IMAGES`` is
  left at its default ``False``), or is larger than ``max_pixels`` is skipped with exactly one
  :class:`BadImageWarning` naming it.  Decompression bombs: ``width * height`` is checked against
  ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS` = 64 Mpx, and never more than Pillow's own
  ``Image.MAX_IMAGE_PIXELS``) right after the header is read and before any pixel is decoded;
  Pillow's ``DecompressionBombError`` is likewise a bad file.
* Memory: when the decoded set fits in ``cache_bytes`` (default :data:`DEFAULT_CACHE_BYTES` = 2 GiB,
  env ``CALAE_FOLDER_CACHE_MB`` overrides) every image is decoded once (2 threads, a tqdm bar
  above 256 files) into one uint8 tensor.  Larger folders *stream*: headers are checked up front,
  pixels are decoded on ``get`` (2 threads) with a small LRU.  A streamed file that turns out to be
  truncated only when decoded is warned about once and replaced, from then on, by the next good
  image, so ``len(ds)`` never changes mid-training.
* ``limit=n`` keeps the first ``n`` files of the sorted list (bad ones among them are dropped, so
  the result can be smaller than ``n``).
* Multi-crop views (``crops=N``, ``crop=SIDE``; spec ``PATH?crops=5,crop=256``): each file gives
  N items, square crops of SIDE source pixels (default half the image's short side; ``crop`` alone
  takes one) resized to the resolution, as seed 000's loader took several random crops of each
  image, so a small folder of large images trains at full detail.  The positions come from
  (``seed``, the file's path relative to the folder, crop number): the same crops every run for a
  seed and wherever the folder is.  Item ``i`` is crop ``i % N`` of file ``i // N``; an image
  smaller than SIDE is a bad file (skipped with one warning).
"""
from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from .base import Batch, DataError, DataInfo, Dataset, check_image_args, crop_boxes

__all__ = ["ImageFolder", "BadImageWarning", "IMAGE_EXTENSIONS", "FITS", "DEFAULT_MAX_PIXELS",
           "DEFAULT_CACHE_BYTES", "scan_images", "load_image", "parse_folder_spec"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
FITS = ("crop", "pad", "stretch")
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024  # 64 Mpx, e.g. 8192 x 8192
DEFAULT_CACHE_BYTES = 2 * 1024 ** 3
_PROGRESS_MIN = 256  # show a progress bar above this many files
_WORKERS = 2
_LRU_ITEMS = 512


class BadImageWarning(UserWarning):
    """An image file was skipped because it could not be read (message names the file and why)."""


class _BadImage(Exception):
    """Internal: why one file is unusable."""


def scan_images(root: str | os.PathLike) -> list[Path]:
    """All image files under ``root`` (recursive, case-insensitive extensions), sorted by their
    relative POSIX path; hidden files/folders (".name") are skipped."""
    root = Path(root)
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if f.startswith(".") or not f.lower().endswith(IMAGE_EXTENSIONS):
                continue
            p = Path(dirpath) / f
            if not p.is_file():  # a named pipe or device called x.png would block forever on open
                continue
            found.append((p.relative_to(root).as_posix(), p))
    found.sort(key=lambda t: t[0])
    return [p for _, p in found]


def _effective_limit(max_pixels: int | None) -> int | None:
    pil = Image.MAX_IMAGE_PIXELS
    if max_pixels is None:
        return pil
    return int(max_pixels) if pil is None else min(int(max_pixels), int(pil))


def _open_checked(path: Path, max_pixels: int | None) -> Image.Image:
    """Open (header only) and refuse oversized images before any pixel is decoded."""
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise _BadImage(f"refused as a decompression bomb ({e})") from None
    except Exception as e:  # UnidentifiedImageError, OSError, SyntaxError, ...
        raise _BadImage(_reason(e)) from None
    w, h = im.size
    limit = _effective_limit(max_pixels)
    if w <= 0 or h <= 0:
        im.close()
        raise _BadImage(f"has an empty size {w}x{h}")
    if limit is not None and w * h > limit:
        im.close()
        raise _BadImage(f"is {w}x{h} = {w * h:,} pixels, over the limit of {limit:,} "
                        "(decompression-bomb guard; raise max_pixels if the file is genuine)")
    return im


def _reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    name = type(e).__name__
    if "cannot identify image file" in msg:
        return "is not a readable image (cannot identify the format)"
    return f"could not be decoded ({name}: {msg})" if msg else f"could not be decoded ({name})"


def _to_mode(im: Image.Image, channels: int, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode -> 'L' (channels=1) or 'RGB' (channels=3)."""
    mode = im.mode
    target = "L" if channels == 1 else "RGB"
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im)
        if mode == "F":
            a = a.astype(np.float64)
            a = a * 255.0 if a.size and np.nanmax(a) <= 1.0 else a
        else:
            a = a.astype(np.float64) / 257.0  # 16-bit range 0..65535 -> 0..255
        a = np.nan_to_num(a, nan=0.0)
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        return im if target == "L" else im.convert("RGB")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    elif mode in ("L", "1") and "transparency" in im.info:
        im = im.convert("LA")
        mode = im.mode
    elif mode == "RGB" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background + (255,))
        im = Image.alpha_composite(base, rgba).convert("RGB")
        mode = "RGB"
    if mode == target:
        return im
    if target == "L" and mode not in ("RGB", "L", "1"):
        im = im.convert("RGB")  # CMYK / YCbCr / LAB -> RGB -> luma
    return im.convert(target)


def _fit(im: Image.Image, resolution: int, fit: str) -> Image.Image:
    r = resolution
    w, h = im.size
    if fit == "crop":
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        if w != h:
            im = im.crop((left, top, left + s, top + s))  # a clean crop: no bleed from outside it
        return im if s == r else im.resize((r, r), Image.LANCZOS, reducing_gap=3.0)
    if fit == "stretch":
        return im if (w, h) == (r, r) else im.resize((r, r), Image.LANCZOS, reducing_gap=3.0)
    # pad: long side -> r, letterbox in black
    scale = r / max(w, h)
    nw, nh = max(1, min(r, round(w * scale))), max(1, min(r, round(h * scale)))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.LANCZOS, reducing_gap=3.0)
    canvas = Image.new(im.mode, (r, r), 0)
    canvas.paste(im, ((r - nw) // 2, (r - nh) // 2))
    return canvas


def load_image(path: str | os.PathLike, resolution: int, channels: int = 3, fit: str = "crop",
               max_pixels: int | None = DEFAULT_MAX_PIXELS, background: str = "black") -> np.ndarray:
    """Decode one file to a uint8 ``[C, R, R]`` array; raises :class:`DataError` if it is unusable."""
    try:
        return _decode(Path(path), resolution, channels, fit, max_pixels, _background(background))
    except _BadImage as e:
        raise DataError(f"{path} {e}") from None


def parse_folder_spec(arg: str) -> tuple[str, dict]:
    """'photos/?crops=5,crop=256' -> ('photos/', {'crops': 5, 'crop': 256}); a path that exists
    as written (even with a '?' in its name) has no options."""
    path, sep, opts = str(arg).rpartition("?")
    if not sep or os.path.exists(os.path.expanduser(str(arg))):
        return str(arg), {}
    out: dict = {}
    for item in filter(None, (t.strip() for t in opts.split(","))):
        key, eq, val = (v.strip() for v in item.partition("="))
        if key not in ("crops", "crop") or not eq:
            raise DataError(f"folder option {item!r} is not crops= or crop= (e.g. {path}?crops=5,crop=256)")
        try:
            v = int(val)
            if v < 1:
                raise ValueError
        except ValueError:
            raise DataError(f"folder option {key} must be a whole number >= 1, got {val!r}") from None
        out[key] = v
    return path, out


def crop_side(crop: int | None, w: int, h: int) -> int:
    """The side of multi-crop views: ``crop``, or by default half the image's short side."""
    return crop or max(1, min(w, h) // 2)


def crop_views(im: Image.Image, resolution: int, n: int, side: int, seed: int, name: str,
               frame_no: int = 0) -> list[Image.Image]:
    """n fixed crops of ``side`` pixels (``crop_boxes``), each resized to the square resolution:
    the multi-crop views of an image (folders) or of a video frame. The caller checks side <= the
    short side."""
    return [_fit(im.crop(box), resolution, "stretch")
            for box in crop_boxes(seed, name, frame_no, n, side, *im.size)]


def _views(im: Image.Image, resolution: int, fit: str, crops: int, crop: int | None, seed: int,
           name: str) -> list[Image.Image]:
    """The items one decoded image gives: itself fitted to the square, or its multi-crop views."""
    if not crops:
        return [_fit(im, resolution, fit)]
    w, h = im.size
    side = crop_side(crop, w, h)
    if side > min(w, h):
        raise _BadImage(f"is {w}x{h}, smaller than crop={side}; use a smaller crop= or drop the file")
    return crop_views(im, resolution, crops, side, seed, name)


def _decode(path: Path, resolution: int, channels: int, fit: str, max_pixels: int | None,
            background: tuple[int, int, int], crops: int = 0, crop: int | None = None, seed: int = 0,
            name: str = "") -> np.ndarray:
    """One file -> uint8 [C, R, R], or [crops, C, R, R] with multi-crop views."""
    im = _open_checked(path, max_pixels)
    try:
        with im:
            if im.format == "JPEG" and im.mode in ("RGB", "L", "CMYK", "YCbCr") and not crops:
                # DCT-domain downscale for big photos; keeps >= 2x the target on both sides
                im.draft(im.mode, (2 * resolution, 2 * resolution))
            im.load()  # full decode: truncated files raise here
            im = ImageOps.exif_transpose(im)
            im = _to_mode(im, channels, background)
            views = [np.asarray(v, dtype=np.uint8) for v in _views(im, resolution, fit, crops, crop, seed, name)]
    except _BadImage:
        raise
    except Image.DecompressionBombError as e:
        raise _BadImage(f"refused as a decompression bomb ({e})") from None
    except MemoryError:
        raise _BadImage("could not be decoded (out of memory)") from None
    except Exception as e:
        raise _BadImage(_reason(e)) from None
    views = [a[None] if a.ndim == 2 else a.transpose(2, 0, 1) for a in views]
    if any(a.shape != (channels, resolution, resolution) for a in views):  # pragma: no cover - defensive
        raise _BadImage(f"decoded to an unexpected shape {views[0].shape}")
    return np.ascontiguousarray(np.stack(views) if crops else views[0])


def _probe(path: Path, max_pixels: int | None) -> None:
    im = _open_checked(path, max_pixels)
    im.close()


def _background(background: str | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(background, str):
        named = {"black": (0, 0, 0), "white": (255, 255, 255)}
        if background not in named:
            raise DataError(f"background must be 'black' or 'white', got {background!r}")
        return named[background]
    t = tuple(int(v) for v in background)
    if len(t) != 3 or not all(0 <= v <= 255 for v in t):
        raise DataError(f"background must be 'black', 'white' or an (r, g, b) triple, got {background!r}")
    return t  # type: ignore[return-value]


def _cache_budget(cache_bytes: int | None) -> int:
    if cache_bytes is not None:
        return int(cache_bytes)
    env = os.environ.get("CALAE_FOLDER_CACHE_MB")
    if env:
        try:
            return int(float(env) * 1024 * 1024)
        except ValueError:
            raise DataError(f"CALAE_FOLDER_CACHE_MB must be a number of megabytes, got {env!r}") from None
    return DEFAULT_CACHE_BYTES


def _warn_bad(path: Path, reason: str) -> None:
    warnings.warn(f"skipping image {path}: {reason}", BadImageWarning, stacklevel=3)


class ImageFolder(Dataset):
    """A folder of images (see the module docstring for every decision).

    Attributes: ``files`` (the usable files, in order), ``skipped`` (``[(path, reason)]``),
    ``cached`` (True when decoded into memory), ``root``.
    """

    def __init__(self, path: str | os.PathLike, resolution: int = 64, channels: int = 3, fit: str = "crop",
                 limit: int | None = None, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 background: str | Sequence[int] = "black", cache: bool | None = None,
                 cache_bytes: int | None = None, workers: int = _WORKERS, progress: bool | None = None,
                 crops: int | None = None, crop: int | None = None, seed: int = 0):
        root = Path(os.path.expanduser(str(path)))
        if fit not in FITS:
            raise DataError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
        check_image_args(resolution, channels, limit, "limit")
        if not root.exists():
            raise DataError(f"image folder {root} does not exist; check the path (or use --data fractals, "
                            "mnist:DIR, digits or toy:NAME)")
        if not root.is_dir():
            raise DataError(f"{root} is a file, not a folder; pass the folder that contains your images")
        self.root = root
        self.resolution = int(resolution)
        self.channels = int(channels)
        self.fit = fit
        self.max_pixels = max_pixels
        self.background = _background(background)
        self.workers = max(1, int(workers))
        if crop is not None and crops is None:
            crops = 1
        for k, v in (("crops", crops), ("crop", crop)):
            if v is not None and int(v) < 1:
                raise DataError(f"{k} must be a whole number >= 1, got {v}")
        self.crops = int(crops or 0)  # 0: one item per file
        self.crop = None if crop is None else int(crop)
        self.seed = int(seed)
        self.views = max(1, self.crops)  # items per file
        try:
            os.listdir(root)  # os.walk would hide an unreadable folder as an empty one
        except OSError as e:
            raise DataError(f"cannot read the folder {root} ({e.strerror or e}); check its permissions") from None
        files = scan_images(root)
        if not files:
            raise DataError(f"no images (.jpg .jpeg .png .webp .bmp) found in {root}; put your images there "
                            "(sub-folders are searched too)")
        if limit is not None:
            files = files[: int(limit)]
        n_found = len(files)
        show = (n_found > _PROGRESS_MIN) if progress is None else bool(progress)
        item_bytes = self.channels * self.resolution * self.resolution * self.views
        do_cache = (n_found * item_bytes <= _cache_budget(cache_bytes)) if cache is None else bool(cache)

        self.skipped: list[tuple[Path, str]] = []
        self._lock = threading.Lock()
        self._lru: OrderedDict[int, np.ndarray] = OrderedDict()
        self._warned: set[Path] = set()
        self._x: torch.Tensor | None = None
        if do_cache:
            results = self._map(self._decode_one, files, show, "decoding images")
            good = [(p, a) for p, a in zip(files, results) if not isinstance(a, str)]
            self._record_bad(files, results)
            self.files = [p for p, _ in good]
            if good:
                x = np.empty((len(good) * self.views, self.channels, self.resolution, self.resolution), np.uint8)
                for i, (_, a) in enumerate(good):
                    x[i * self.views:(i + 1) * self.views] = a.reshape(self.views, *x.shape[1:])
                self._x = torch.from_numpy(x)
        else:
            results = self._map(self._probe_one, files, show, "checking images")
            self._record_bad(files, results)
            self.files = [p for p, r in zip(files, results) if r is None]
        self.cached = self._x is not None
        if not self.files:
            raise DataError(f"none of the {n_found} image files in {root} could be read (see the warnings "
                            "above); replace or remove the broken files")
        self._alias: dict[int, int] = {}  # streaming: index of a file found broken late -> replacement
        self.info = DataInfo(kind="image", resolution=self.resolution, channels=self.channels,
                             num_classes=0, name=f"folder:{root.resolve().name or root}")

    # -- decoding -------------------------------------------------------------------------------
    def _decode_one(self, path: Path):
        """uint8 [views, C, R, R] (or [C, R, R] without crops), or the reason it is unusable."""
        try:
            return _decode(path, self.resolution, self.channels, self.fit, self.max_pixels, self.background,
                           self.crops, self.crop, self.seed, path.relative_to(self.root).as_posix())
        except _BadImage as e:
            return str(e)

    def _probe_one(self, path: Path):
        try:
            _probe(path, self.max_pixels)
            return None
        except _BadImage as e:
            return str(e)

    def _map(self, fn, items: list, show: bool, desc: str) -> list:
        if len(items) <= 1 or self.workers == 1:
            it = map(fn, items)
            return list(_progress(it, len(items), show, desc))
        with ThreadPoolExecutor(max_workers=self.workers) as ex:
            return list(_progress(ex.map(fn, items), len(items), show, desc))

    def _record_bad(self, files: list[Path], results: list) -> None:
        for p, r in zip(files, results):
            if isinstance(r, str):
                self.skipped.append((p, r))
                self._warned.add(p)
                _warn_bad(p, r)

    # -- Dataset API ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.files) * self.views

    def get(self, indices) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        n = len(self)
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise IndexError(f"index out of range for a folder of {n} images")
        if self._x is not None:
            return Batch(self._x[idx])
        items = [int(i) % n for i in idx.tolist()]
        wanted = [i // self.views for i in items]  # files; the LRU holds a file's views together
        out = np.empty((len(wanted), self.channels, self.resolution, self.resolution), np.uint8)
        unique = list(dict.fromkeys(wanted))
        missing = [i for i in unique if self._lru_get(i) is None]
        if missing:
            decoded = self._map(self._decode_index, missing, False, "")
            for i, a in zip(missing, decoded):
                self._lru_put(i, a)
        for k, (i, item) in enumerate(zip(wanted, items)):
            a = self._lru_get(i)
            if a is None:  # evicted by a huge batch: decode directly
                a = self._decode_index(i)
            out[k] = a[item % self.views] if self.crops else a
        return Batch(torch.from_numpy(out))

    def _decode_index(self, i: int) -> np.ndarray:
        n = len(self.files)
        j = self._alias.get(i, i)
        for _ in range(n):
            p = self.files[j]
            a = self._decode_one(p)
            if not isinstance(a, str):
                if j != i:
                    self._alias[i] = j
                return a
            with self._lock:
                if p not in self._warned:
                    self._warned.add(p)
                    self.skipped.append((p, a))
                    warnings.warn(f"skipping image {p}: {a}; using the next readable image in its place",
                                  BadImageWarning, stacklevel=2)
            j = (j + 1) % n
        raise DataError(f"none of the images in {self.root} could be decoded; replace the broken files")

    def _lru_get(self, i: int):
        with self._lock:
            a = self._lru.get(i)
            if a is not None:
                self._lru.move_to_end(i)
            return a

    def _lru_put(self, i: int, a: np.ndarray) -> None:
        with self._lock:
            self._lru[i] = a
            self._lru.move_to_end(i)
            while len(self._lru) > _LRU_ITEMS:
                self._lru.popitem(last=False)

    # DataLoader workers pickle datasets: drop the lock and the LRU
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_lru"] = OrderedDict()
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _progress(it, total: int, show: bool, desc: str):
    if not show:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return it
    return tqdm(it, total=total, desc=desc, unit="img", leave=False)

