"""Frames of videos as a dataset: the spec ``video:PATH[?OPTIONS]``.

``PATH`` is a video file or a folder searched recursively for ``.mp4 .webm .mov .mkv .avi`` (sorted
by relative path, hidden names skipped, like image folders).  Decoding goes through PyAV (the
optional extra ``pip install 'calae[video]'``), whose wheels ship FFmpeg's codecs.

Options, after a ``?`` and separated by commas (``video:rec.mp4?every=20,start=5,end=60,crops=5,crop=512``):

* ``every=K``: keep every K-th decoded frame.  Default ``auto``: about three frames per second of
  video (``round(fps / 3)``, every 10th frame at 30 fps); neighbouring frames are nearly identical.
* ``start=S`` / ``end=S``: seconds (frame timestamps); frames before ``start`` and from ``end`` on are
  left out.  Counting for ``every`` starts at the first frame at or after ``start``.
* ``crops=N`` and ``crop=SIDE``: N square crops of SIDE source pixels per kept frame, at positions
  drawn from (seed, file name, frame number) so every run sees the same items, each resized to the
  training resolution (seed 000 took five 512-pixel crops of each frame).  ``crops`` alone takes
  crops of half the frame's short side; ``crop`` alone takes one.  Without them the whole frame
  becomes square by ``--fit`` (crop / pad / stretch) as in image folders; a square frame that only
  shrinks (or any with ``fit=stretch``) is scaled by FFmpeg's area averaging straight from YUV,
  the rest by Pillow's Lanczos like folders.
* ``cache=auto|memory|none``: see below.

Streaming and caching.  Each file is decoded once, front to back, one frame at a time (only the
current frame and the already-resized items are held), into a cache file under
``$CALAE_CACHE_DIR/video`` (default ``~/.cache/calae/video``) named by a hash of the file's identity
(resolved path, size, modification time) and of every option above; a later run, or ``calae
interpolate`` reopening the run's data, reads that file instead of decoding again.  The items of
every file are then held in memory when they fit in ``cache_bytes`` (2 GiB,
``CALAE_FOLDER_CACHE_MB`` overrides as for folders), else read from the memory-mapped cache files.
``cache=memory`` never writes to disk (the items must fit in memory); ``cache=none`` neither reads
nor writes cache files.

Bad input never crashes and never passes silently: a file that is not a video, has no video stream,
is corrupt or truncated, or decodes to zero frames is skipped with one :class:`BadVideoWarning`
naming it (a single file given as PATH is a one-line :class:`DataError`); a stream that breaks off
part-way keeps the frames decoded before the break, with a warning; a variable frame rate is
warned about (``every`` counts frames, so kept frames are then unevenly spaced in time).

Each item carries ``params`` = (time in seconds, file number) in ``param_names``, so latent maps
can be coloured by time (for a parameter-sweep recording that is the swept parameter).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import Batch, DataError, DataInfo, Dataset, check_image_args
from .folder import FITS, _cache_budget, _fit, _to_mode, crop_side, crop_views

__all__ = ["VideoFrames", "BadVideoWarning", "VIDEO_EXTENSIONS", "parse_video_spec", "scan_videos",
           "require_av", "default_cache_dir"]

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi")
_CACHE_VERSION = 3
_OPTION_NAMES = ("every", "start", "end", "crops", "crop", "cache")
_CACHE_MODES = ("auto", "memory", "none")
_VFR_RATIO = 1.5  # frame intervals differing by more than this factor: a variable frame rate
MISSING_AV = "reading or writing video needs PyAV: pip install 'calae[video]'"


class BadVideoWarning(UserWarning):
    """A video file was skipped or only partly used (the message names the file and why)."""


class _BadVideo(Exception):
    pass


def require_av():
    """The ``av`` module, or a one-line DataError naming the extra that provides it."""
    try:
        import av
    except ImportError:
        raise DataError(MISSING_AV) from None
    return av


def default_cache_dir() -> Path:
    env = os.environ.get("CALAE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "calae"


def parse_video_spec(arg: str) -> tuple[str, dict]:
    """'rec.mp4?every=20,crops=5' -> ('rec.mp4', {'every': 20, 'crops': 5}) with checked values."""
    if not arg:
        raise DataError("video needs a file or folder: --data video:PATH (e.g. video:recording.mp4)")
    path, sep, opts = arg.rpartition("?")
    if not sep or os.path.exists(os.path.expanduser(arg)):
        return arg, {}
    out: dict = {}
    for item in filter(None, (s.strip() for s in opts.split(","))):
        key, eq, val = item.partition("=")
        key = key.strip()
        if key not in _OPTION_NAMES or not eq:
            raise DataError(f"video option {item!r} is not one of {', '.join(k + '=' for k in _OPTION_NAMES)} "
                            f"(e.g. video:{path}?every=20,start=5,end=60,crops=5,crop=256)")
        val = val.strip()
        try:
            if key in ("every", "crops", "crop"):
                if key == "every" and val == "auto":
                    continue
                v = int(val)
                if v < 1:
                    raise ValueError
            elif key in ("start", "end"):
                v = float(val)
                if not (v >= 0 and np.isfinite(v)):
                    raise ValueError
            else:
                if val not in _CACHE_MODES:
                    raise ValueError
                v = val
        except ValueError:
            want = {"every": "a whole number >= 1 or auto", "crops": "a whole number >= 1",
                    "crop": "a side in pixels >= 1", "start": "seconds >= 0", "end": "seconds >= 0",
                    "cache": " or ".join(_CACHE_MODES)}[key]
            raise DataError(f"video option {key} must be {want}, got {val!r}") from None
        out[key] = v
    if "start" in out and "end" in out and out["end"] <= out["start"]:
        raise DataError(f"video option end={out['end']:g} must be after start={out['start']:g}")
    return path, out


def scan_videos(root: Path) -> list[Path]:
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if f.startswith(".") or not f.lower().endswith(VIDEO_EXTENSIONS):
                continue
            p = Path(dirpath) / f
            if p.is_file():  # not a named pipe called x.mp4
                found.append((p.relative_to(root).as_posix(), p))
    found.sort(key=lambda t: t[0])
    return [p for _, p in found]


def _reason(e: BaseException) -> str:
    msg = (str(e).strip().splitlines() or [""])[0]
    low = msg.lower()
    if "invalid data" in low or "moov atom" in low or "end of file" in low:
        return "is not a readable video (corrupt, truncated, or not a video file)"
    return f"could not be decoded ({type(e).__name__}: {msg})" if msg else f"could not be decoded ({type(e).__name__})"


class VideoFrames(Dataset):
    """Kept frames (or crops of them) of one video or a folder of videos; see the module docstring.

    Attributes: ``files`` (usable files), ``skipped`` (``[(path, reason)]``), ``counts`` (items per
    file), ``every`` (the stride used per file), ``cached`` (True when held in memory),
    ``cache_files`` (the cache file per video, or None).
    """

    def __init__(self, path: str | os.PathLike, resolution: int = 64, channels: int = 3, fit: str = "crop",
                 every: int | None = None, start: float = 0.0, end: float | None = None,
                 crops: int | None = None, crop: int | None = None, seed: int = 0, limit: int | None = None,
                 cache: str = "auto", cache_dir: str | os.PathLike | None = None,
                 cache_bytes: int | None = None):
        check_image_args(resolution, channels, limit, "limit")
        if fit not in FITS:
            raise DataError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
        if cache not in _CACHE_MODES:
            raise DataError(f"video cache must be one of {', '.join(_CACHE_MODES)}, got {cache!r}")
        if end is not None and end <= start:
            raise DataError(f"video end={end:g} must be after start={start:g}")
        self.av = require_av()
        root = Path(os.path.expanduser(str(path)))
        if not root.exists():
            raise DataError(f"video {root} does not exist; check the path (a video file or a folder of videos)")
        if root.is_dir():
            files = scan_videos(root)
            if not files:
                raise DataError(f"no videos ({' '.join(VIDEO_EXTENSIONS)}) found in {root}; put your videos there "
                                "(sub-folders are searched too)")
        elif not root.is_file():
            raise DataError(f"{root} is not a regular file; pass a video file or a folder of videos")
        else:
            files = [root]
        self.root, self.single = root, root.is_file()
        self.resolution, self.channels, self.fit = int(resolution), int(channels), fit
        self.start, self.end, self.seed = float(start), None if end is None else float(end), int(seed)
        self.every_opt = None if every is None else int(every)
        if crop is not None and crops is None:
            crops = 1
        self.crops, self.crop = (None if crops is None else int(crops)), crop
        self.cache_mode = cache
        self.cache_dir = None if cache != "auto" else Path(cache_dir) if cache_dir else default_cache_dir() / "video"
        self.item_bytes = self.channels * self.resolution * self.resolution
        budget = _cache_budget(cache_bytes)

        self.files: list[Path] = []
        self.skipped: list[tuple[Path, str]] = []
        self.counts: list[int] = []
        self.every: list[int] = []
        self.cache_files: list[Path | None] = []
        parts: list[tuple[np.ndarray, np.ndarray]] = []  # (items [n, C, R, R] uint8, times [n] float32)
        held = 0
        for p in files:
            remaining = None if limit is None else int(limit) - sum(self.counts)
            if remaining is not None and remaining <= 0:
                break
            try:
                x, t, every_used, cache_file = self._load_file(p, len(self.files), budget - held, remaining)
            except _BadVideo as e:
                if self.single:
                    raise DataError(f"{p} {e}") from None
                self.skipped.append((p, str(e)))
                warnings.warn(f"skipping video {p}: {e}", BadVideoWarning, stacklevel=2)
                continue
            held += 0 if isinstance(x, np.memmap) else x.nbytes
            self.files.append(p)
            self.counts.append(int(x.shape[0]))
            self.every.append(every_used)
            self.cache_files.append(cache_file)
            parts.append((x, t))
        if not self.files:
            raise DataError(f"none of the {len(files)} video files in {root} could be read (see the warnings "
                            "above); replace or remove the broken files")
        total = sum(self.counts)
        self._offsets = np.cumsum([0] + self.counts)
        self._times = torch.from_numpy(np.concatenate([t for _, t in parts]).astype(np.float32))
        self._file_no = torch.repeat_interleave(torch.arange(len(self.files), dtype=torch.float32),
                                                torch.tensor(self.counts))
        self.cached = total * self.item_bytes <= budget
        if self.cached:
            self._x = torch.from_numpy(np.concatenate([np.asarray(x) for x, _ in parts]))  # [n, C, R, R]
            self._parts = None
        else:
            self._x, self._parts = None, [x for x, _ in parts]
        self.param_names = ["time", "file"]
        name = root.resolve().name or str(root)
        self.info = DataInfo(kind="image", resolution=self.resolution, channels=self.channels, num_classes=0,
                             num_params=2, name=f"video:{name}")

    # -- decoding -------------------------------------------------------------------------------
    def _options(self, every: int) -> dict:
        return {"version": _CACHE_VERSION, "resolution": self.resolution, "channels": self.channels,
                "fit": self.fit, "every": every, "start": self.start, "end": self.end,
                "crops": self.crops, "crop": self.crop, "seed": self.seed if self.crops else None}

    @staticmethod
    def _identity(p: Path) -> dict:
        st = p.stat()
        return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def _load_file(self, p: Path, file_no: int, room: int, max_items: int | None):
        av = self.av
        try:
            container = av.open(str(p), mode="r", metadata_errors="ignore")
        except Exception as e:  # av.FFmpegError (InvalidDataError, ...), OSError, UnicodeDecodeError
            raise _BadVideo(_reason(e)) from None
        try:
            if not container.streams.video:
                raise _BadVideo("has no video stream (no frames, audio only, or not a video)")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 0) or 30.0
            every = self.every_opt or max(1, round(fps / 3))
            key_doc = {"file": self._identity(p), **self._options(every), "max_items": max_items}
            key = hashlib.sha1(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:20]
            cached = self._read_cache(p, key, room)
            if cached is not None:
                return (*cached, every)
            sink = _Sink(self._paths(p, key) if self.cache_dir is not None else None, self.item_bytes)
            try:
                t, notes = self._decode(container, stream, p, file_no, every, room, max_items, sink)
            except BaseException:
                sink.discard()
                raise
        finally:
            container.close()
        for note in notes:
            warnings.warn(f"video {p}: {note}", BadVideoWarning, stacklevel=3)
        x, cache_file = sink.finish({**key_doc, "items": int(t.size), "times": [float(v) for v in t],
                                     "notes": notes}, (self.channels, self.resolution, self.resolution), room, p)
        return x, t, every, cache_file

    def _decode(self, container, stream, p: Path, file_no: int, every: int, room: int, max_items: int | None,
                sink: "_Sink"):
        """One pass, front to back, one frame at a time; kept items go to ``sink``."""
        stream.thread_type = "AUTO"
        tb = float(stream.time_base) if stream.time_base else None
        if self.start > 0 and tb:
            try:  # to the keyframe before start; frames before start are then skipped below
                container.seek(int(self.start / tb), stream=stream, backward=True, any_frame=False)
            except Exception:
                container.seek(0)
        times: list[float] = []
        notes: list[str] = []
        stamps: list[float] = []
        k = 0  # frames seen at or after start
        decoded = 0
        bar = _progress_bar(stream, p, self.start, self.end)
        try:
            for frame in container.decode(stream):
                decoded += 1
                if bar is not None:
                    bar.update()
                ft = frame.time
                if ft is None:
                    ft = (decoded - 1) / 30.0
                if ft < self.start - 1e-9:
                    continue
                if self.end is not None and ft >= self.end - 1e-9:
                    break
                stamps.append(ft)
                if k % every == 0:
                    for a in self._items(frame, p, file_no, k):
                        sink.add(a)
                        times.append(ft)
                    if sink.path is None and sink.count * self.item_bytes > room:
                        raise DataError(f"{p}: the kept frames need more than the memory budget "
                                        f"({room / 2**20:.0f} MiB) without a disk cache; use cache=auto, a larger "
                                        "every=, or an end= time")
                    if max_items is not None and sink.count >= max_items:
                        break
                k += 1
        except (DataError, _BadVideo):
            raise
        except MemoryError:
            raise _BadVideo("could not be decoded (out of memory)") from None
        except Exception as e:  # a stream that breaks off part-way: keep what came before
            if not sink.count:
                raise _BadVideo(_reason(e)) from None
            why = (str(e).strip().splitlines() or [""])[0]
            notes.append(f"is corrupt or truncated after {len(stamps)} frames ({type(e).__name__}: {why}); "
                         f"using the {sink.count} items before that point")
        finally:
            if bar is not None:
                bar.close()
        if not sink.count:
            if decoded == 0:
                raise _BadVideo("has zero decodable frames")
            when = f"between {self.start:g} s and {self.end:g} s" if self.end is not None else f"after {self.start:g} s"
            raise _BadVideo(f"has no frames {when} (its {decoded} frames end earlier); check start=/end=")
        if len(stamps) >= 3:
            d = np.diff(np.asarray(stamps))
            d = d[d > 0]
            if d.size >= 2 and d.max() > _VFR_RATIO * d.min():
                notes.append(f"has a variable frame rate (frame intervals {d.min():.4g} to {d.max():.4g} s): "
                             f"every={every} counts frames, so kept frames are unevenly spaced in time; "
                             "re-encode at a constant rate if that matters")
        return np.asarray(times, dtype=np.float32), notes

    def _items(self, frame, p: Path, file_no: int, k: int) -> list[np.ndarray]:
        R = self.resolution
        if not self.crops and min(frame.width, frame.height) >= R and (frame.width == frame.height
                                                                        or self.fit == "stretch"):
            # a plain downscale: FFmpeg's area averaging straight from YUV (3-4x faster than RGB + Lanczos)
            fmt = "rgb24" if self.channels == 3 else "gray"
            return [_chw(frame.reformat(width=R, height=R, format=fmt, interpolation="AREA").to_ndarray())]
        im = _to_mode(frame.to_image(), self.channels, (0, 0, 0))
        if self.crops:
            w, h = im.size
            side = crop_side(self.crop, w, h)
            if side > min(w, h):
                raise DataError(f"{p}: crop={side} is larger than the frame ({w}x{h}); use crop<={min(w, h)}")
            return [_chw(c) for c in crop_views(im, R, self.crops, side, self.seed, p.name, k)]
        return [_chw(_fit(im, R, self.fit))]

    # -- cache files ----------------------------------------------------------------------------
    def _paths(self, p: Path, key: str) -> tuple[Path, Path]:
        base = self.cache_dir / f"{p.stem[:40]}-{self.resolution}px-{key}"
        return base.with_name(base.name + ".u8"), base.with_name(base.name + ".json")

    def _read_cache(self, p: Path, key: str, room: int):
        if self.cache_dir is None:
            return None
        data, meta = self._paths(p, key)
        try:
            doc = json.loads(meta.read_text())
            n = int(doc["items"])
            if data.stat().st_size != n * self.item_bytes or len(doc["times"]) != n or n < 1:
                return None
            shape = (n, self.channels, self.resolution, self.resolution)
            x = np.memmap(data, dtype=np.uint8, mode="r", shape=shape)
            if x.nbytes <= room:
                x = np.array(x)
            t = np.asarray(doc["times"], dtype=np.float32)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or damaged: decode again
        for note in doc.get("notes", []):
            warnings.warn(f"video {p}: {note}", BadVideoWarning, stacklevel=4)
        return x, t, data

    # -- Dataset API ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._offsets[-1])

    def get(self, indices) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        n = len(self)
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise IndexError(f"index out of range for a video set of {n} items")
        idx = idx % n
        params = torch.stack([self._times.index_select(0, idx), self._file_no.index_select(0, idx)], 1)
        if self._x is not None:
            return Batch(self._x.index_select(0, idx), None, params)
        a = idx.numpy()
        part = np.searchsorted(self._offsets, a, side="right") - 1
        out = np.empty((a.size, self.channels, self.resolution, self.resolution), np.uint8)
        for f in np.unique(part):
            sel = np.nonzero(part == f)[0]
            out[sel] = self._parts[f][a[sel] - self._offsets[f]]
        return Batch(torch.from_numpy(out), None, params)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["av"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.av = require_av()


class _Sink:
    """Where one file's items go while it is decoded: straight into the cache file (written to a
    temporary, renamed when complete) or, without a cache directory, into a list in memory."""

    def __init__(self, paths: tuple[Path, Path] | None, item_bytes: int):
        self.item_bytes, self.count, self.items = item_bytes, 0, []
        self.path = self.meta = self._f = None
        if paths is not None:
            self.path, self.meta = paths
            self._tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._f = open(self._tmp, "wb")
            except OSError as e:
                warnings.warn(f"video cache {self.path.parent} not usable ({e.strerror or e}); decoding into "
                              "memory (set CALAE_CACHE_DIR to a writable folder)", BadVideoWarning, stacklevel=5)
                self.path = None

    def add(self, a: np.ndarray) -> None:
        if self._f is not None:
            try:
                self._f.write(a.tobytes())
            except OSError as e:
                raise DataError(f"could not write the video cache in {self.path.parent} ({e.strerror or e}); free "
                                "some space or set CALAE_CACHE_DIR to another folder") from None
        else:
            self.items.append(a)
        self.count += 1

    def discard(self) -> None:
        if self._f is not None:
            self._f.close()
            self._tmp.unlink(missing_ok=True)
            self._f = None

    def finish(self, doc: dict, item_shape: tuple, room: int, p: Path):
        """-> (items: array in memory, or a memory map when over ``room``; the cache file or None)."""
        if self._f is None:
            return np.stack(self.items), None
        shape = (self.count, *item_shape)
        tmp_m = self.meta.with_name(f".{self.meta.name}.tmp{os.getpid()}")
        try:
            self._f.close()
            self._f = None
            tmp_m.write_text(json.dumps(doc))
            os.replace(self._tmp, self.path)
            os.replace(tmp_m, self.meta)  # the metadata, written last, vouches for the data
        except OSError as e:
            raise DataError(f"could not write the video cache for {p} in {self.path.parent} ({e.strerror or e}); "
                            "free some space or set CALAE_CACHE_DIR to another folder") from None
        x = np.memmap(self.path, dtype=np.uint8, mode="r", shape=shape)
        return (np.array(x) if x.nbytes <= room else x), self.path


_PROGRESS_FRAMES = 3000  # a bar for files longer than this (about 6 s of decoding at 512 px)


def _progress_bar(stream, p: Path, start: float, end: float | None):
    """A tqdm bar on stderr while a long file is decoded (its frame count estimated from the header)."""
    n = int(stream.frames or 0)
    if not n and stream.duration and stream.time_base and stream.average_rate:
        n = int(float(stream.duration * stream.time_base) * float(stream.average_rate))
    if end is not None and stream.average_rate:
        n = min(n, int(end * float(stream.average_rate))) if n else int(end * float(stream.average_rate))
    if n <= _PROGRESS_FRAMES:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=n, unit="frame", desc=f"decoding {p.name}", leave=False, mininterval=1.0)


def _chw(im: Image.Image) -> np.ndarray:
    a = np.asarray(im, dtype=np.uint8)
    return np.ascontiguousarray(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
