"""Data sources and the one spec string that selects them everywhere in the CLI.

Specs:
  fractals | fractals:kali | fractals:julia | fractals:mandelbrot | fractals:mix   procedural
  mnist:DIR                                                                     IDX files
  digits                                                 scikit-learn's bundled 8x8 digits
  toy:8gaussians | toy:2spirals | toy:checkerboard | toy:rings                  2-D points
  video:PATH[?every=K,start=S,end=S,crops=N,crop=SIDE]     frames of a video file or folder
  PATH[?crops=N,crop=SIDE]                  a folder of images (multi-crop views: N per image)
"""
from __future__ import annotations

from .base import Batch, DataError, DataInfo, Dataset, TensorDataset, from_model_range, to_model_range
from ..registry import DATASETS, register

__all__ = ["Batch", "DataError", "DataInfo", "Dataset", "TensorDataset", "open_dataset",
           "to_model_range", "from_model_range", "parse_spec", "DEFAULT_RESOLUTION", "DEFAULT_CHANNELS"]

# Sensible defaults per source; the user overrides with --resolution / --channels.
DEFAULT_RESOLUTION = {"fractals": 64, "mnist": 28, "digits": 16, "folder": 64, "video": 64}
DEFAULT_CHANNELS = {"fractals": 3, "mnist": 1, "digits": 1, "folder": 3, "video": 3}


def parse_spec(spec: str) -> tuple[str, str]:
    """'fractals:kali' -> ('fractals', 'kali'); a path -> ('folder', path)."""
    spec = str(spec).strip()
    if not spec:
        raise DataError("empty data spec; use e.g. --data fractals, --data mnist:DIR or --data PATH")
    head, sep, arg = spec.partition(":")
    if head in DATASETS and head != "folder" and not (len(head) == 1 and sep):  # 'C:\...' is a path
        return head, arg
    return "folder", spec


def open_dataset(spec: str, resolution: int | None = None, channels: int | None = None, **options) -> Dataset:
    """Open the dataset a spec names. ``options`` go to the source (n, seed, fit, download...)."""
    kind, arg = parse_spec(spec)
    if resolution is not None and not (4 <= int(resolution) <= 1024):
        raise DataError(f"--resolution must be between 4 and 1024, got {resolution}")
    if channels is not None and int(channels) not in (1, 3):
        raise DataError(f"--channels must be 1 or 3, got {channels}")
    if kind != "toy":
        resolution = resolution or DEFAULT_RESOLUTION[kind]
        channels = channels or DEFAULT_CHANNELS[kind]
    return DATASETS[kind](arg, resolution=resolution, channels=channels, **options)


@register(DATASETS, "fractals")
def _fractals(arg: str, resolution: int, channels: int, n: int | None = None, seed: int = 0, **kw) -> Dataset:
    from .fractals import FAMILIES, FractalDataset

    family = arg or "any"
    if family not in FAMILIES:
        raise DataError(f"unknown fractal family {family!r}; choose one of {', '.join(FAMILIES)}")
    return FractalDataset(family=family, n=n or 50_000, resolution=resolution, channels=channels, seed=seed,
                          **{k: v for k, v in kw.items() if k in ("supersample", "cache_dir")})


@register(DATASETS, "mnist")
def _mnist(arg: str, resolution: int, channels: int, download: bool = False, split: str = "train",
           n: int | None = None, mirror: str | None = None, **kw) -> Dataset:
    from .mnist import open_mnist

    if not arg:
        raise DataError("mnist needs a directory: --data mnist:DIR (add --download to fetch it there)")
    return open_mnist(arg, resolution=resolution, channels=channels, split=split, download=download,
                      mirror=mirror, n=n)


@register(DATASETS, "digits")
def _digits(arg: str, resolution: int, channels: int, n: int | None = None, **kw) -> Dataset:
    from .digits import open_digits

    if arg:
        raise DataError(f"digits takes no option (got 'digits:{arg}'); use --data digits")

    return open_digits(resolution=resolution, channels=channels, n=n)


@register(DATASETS, "toy")
def _toy(arg: str, resolution=None, channels=None, n: int | None = None, seed: int = 0, **kw) -> Dataset:
    from .toy2d import TOYS, ToyDataset

    if arg not in TOYS:
        raise DataError(f"unknown toy set {arg!r}; choose one of {', '.join('toy:' + t for t in TOYS)}")
    if resolution is not None or channels is not None:
        raise DataError(f"toy:{arg} is a set of 2-D points: --resolution and --channels do not apply; leave them out")
    return ToyDataset(arg, n=n or 50_000, seed=seed)


@register(DATASETS, "folder")
def _folder(arg: str, resolution: int, channels: int, fit: str = "crop", n: int | None = None, seed: int = 0,
            **kw) -> Dataset:
    from .folder import ImageFolder, parse_folder_spec
    from .video import VIDEO_EXTENSIONS

    path, opts = parse_folder_spec(arg)
    if path.lower().endswith(VIDEO_EXTENSIONS):
        raise DataError(f"{path} is a video; train on its frames with --data video:{path}")
    return ImageFolder(path, resolution=resolution, channels=channels, fit=fit, limit=n, seed=seed, **opts)


@register(DATASETS, "video")
def _video(arg: str, resolution: int, channels: int, fit: str = "crop", n: int | None = None, seed: int = 0,
           **kw) -> Dataset:
    from .video import VideoFrames, parse_video_spec

    path, opts = parse_video_spec(arg)
    return VideoFrames(path, resolution=resolution, channels=channels, fit=fit, limit=n, seed=seed, **opts,
                       **{k: v for k, v in kw.items() if k in ("cache_dir", "cache_bytes")})
