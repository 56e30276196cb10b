"""Video output (MP4 / WebM / MKV / MOV) from uint8 CHW frames, through PyAV (``calae[video]``).

GIFs are limited to 256 colours and grow large; H.264 at a low CRF keeps fractal colour gradients.
Frames are upscaled by whole factors (nearest neighbour, like the GIFs) and padded to even sides,
which the 4:2:0 pixel format H.264 players expect requires.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..data.base import DataError

__all__ = ["VIDEO_OUT_EXTENSIONS", "save_video", "video_available", "fractal_sweep", "SWEEPABLE"]

VIDEO_OUT_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov")
_CODECS = {".mp4": ("libx264", "mpeg4"), ".mov": ("libx264", "mpeg4"), ".mkv": ("libx264", "mpeg4"),
           ".webm": ("libvpx-vp9", "libvpx")}


def video_available() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _frame_array(f: torch.Tensor | np.ndarray, upscale: int) -> np.ndarray:
    a = f.detach().cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f)
    if a.ndim != 3 or a.shape[0] not in (1, 3) or a.dtype != np.uint8:
        raise ValueError(f"video frames are uint8 [C, H, W] with C = 1 or 3, got {a.dtype} {a.shape}")
    a = a.transpose(1, 2, 0)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if upscale > 1:
        a = a.repeat(upscale, 0).repeat(upscale, 1)
    h, w = a.shape[:2]
    if h % 2 or w % 2:
        a = np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)))
    return np.ascontiguousarray(a)


def save_video(frames: Iterable[torch.Tensor], path: str | os.PathLike, fps: float = 24, upscale: int = 1,
               crf: int = 18) -> Path:
    """Write uint8 [C, H, W] frames as a video (codec by extension), atomically; returns the path.

    ``frames`` may be a generator: each frame is encoded as it arrives, so long videos never sit
    in memory."""
    from ..data.video import require_av

    av = require_av()
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in _CODECS:
        raise DataError(f"{path}: video output is {' '.join(VIDEO_OUT_EXTENSIONS)}; got {ext or 'no extension'}")
    arrays = (_frame_array(f, max(1, int(upscale))) for f in frames)
    first = next(arrays, None)
    if first is None:
        raise ValueError("save_video needs at least one frame")
    h, w = first.shape[:2]
    codec = next((c for c in _CODECS[ext] if c in av.codecs_available), None)
    if codec is None:  # pragma: no cover - PyAV wheels carry both
        raise DataError(f"this PyAV build has no encoder for {ext} ({', '.join(_CODECS[ext])})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{ext}")
    fmt = {".mkv": "matroska", ".mov": "mov", ".mp4": "mp4", ".webm": "webm"}[ext]
    try:
        with av.open(str(tmp), mode="w", format=fmt) as out:
            from fractions import Fraction

            s = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            if codec == "libx264":
                s.options = {"crf": str(int(crf)), "preset": "medium"}
            elif codec.startswith("libvpx"):
                s.options = {"crf": str(int(crf) + 12), "b": "0"}
            for a in itertools.chain([first], arrays):
                if a.shape[:2] != (h, w):
                    raise ValueError(f"video frames differ in size: {a.shape[:2]} after {(h, w)}")
                for packet in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                    out.mux(packet)
            for packet in s.encode():
                out.mux(packet)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---- fractal parameter sweeps ---------------------------------------------------------------------
# Parameters that change an image continuously; the others (family, map, plane, power, variant,
# colour mode, trap type, interior, attempt) select a different formula, so sweeping them jumps.
SWEEPABLE = ("c_re", "c_im", "k_re", "k_im", "kali_scale", "blend", "z0_re", "z0_im", "center_x", "center_y",
             "log_zoom", "rotation", "iterations", "trap_x", "trap_y", "trap_r", "trap_angle", "cycles", "phase",
             "pal_a_r", "pal_a_g", "pal_a_b", "pal_b_r", "pal_b_g", "pal_b_b", "pal_c_r", "pal_c_g", "pal_c_b",
             "pal_d_r", "pal_d_g", "pal_d_b")


def parse_sweep(text: str) -> tuple[str, float, float]:
    """'c_re=-0.8:-0.7' -> ('c_re', -0.8, -0.7), checked against :data:`SWEEPABLE`."""
    name, eq, rng = text.partition("=")
    name = name.strip()
    parts = rng.split(":")
    try:
        if not eq or len(parts) != 2:
            raise ValueError
        a, b = float(parts[0]), float(parts[1])
        if not (np.isfinite(a) and np.isfinite(b)):
            raise ValueError
    except ValueError:
        raise DataError(f"--sweep takes PARAM=A:B, as c_re=-0.8:-0.7 or log_zoom=0:3; got {text!r}") from None
    if name not in SWEEPABLE:
        raise DataError(f"--sweep {name!r} is not a continuous renderer parameter; choose one of {', '.join(SWEEPABLE)}")
    return name, a, b


def fractal_sweep(sweeps: Sequence[tuple[str, float, float]], frames: int, seed: int = 0, index: int = 0,
                  family: str = "any", resolution: int = 64, channels: int = 3, supersample: int = 1,
                  batch: int = 16, progress: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """Frames of image ``index`` of the fractal dataset (seed, family) with the swept parameters moved
    linearly from A to B and every other parameter fixed: (uint8 [frames, C, R, R], params [frames, P]).

    The start image is the dataset's own (its dull-image re-draws included), so the sweep is a pure
    function of (seed, index, family, sweeps, frames, resolution).  :func:`iter_fractal_sweep`
    yields the same frames batch by batch.
    """
    parts = list(iter_fractal_sweep(sweeps, frames, seed, index, family, resolution, channels, supersample,
                                    batch, progress))
    return torch.cat([x for x, _ in parts]), np.concatenate([p for _, p in parts])


def iter_fractal_sweep(sweeps: Sequence[tuple[str, float, float]], frames: int, seed: int = 0, index: int = 0,
                       family: str = "any", resolution: int = 64, channels: int = 3, supersample: int = 1,
                       batch: int = 16, progress: bool = False) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """:func:`fractal_sweep` in batches of ``batch`` frames: (uint8 [b, C, R, R], params [b, P])."""
    from ..data.fractals import PARAM_NAMES, render, render_indices

    if index < 0:
        raise DataError(f"--index must be >= 0 (an image of the dataset), got {index}")
    if frames < 1:
        raise DataError(f"--frames must be at least 1, got {frames}")
    if not sweeps:
        raise DataError("a sweep video needs at least one --sweep PARAM=A:B")
    names = [s[0] for s in sweeps]
    if len(set(names)) != len(names):
        raise DataError(f"--sweep names a parameter twice: {', '.join(names)}")
    _, base = render_indices(seed, [int(index)], resolution, channels, family, supersample)
    P = np.repeat(base.double().numpy().reshape(1, -1), frames, axis=0)
    t = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    for name, a, b in sweeps:
        P[:, PARAM_NAMES.index(name)] = a + (b - a) * t
    steps = range(0, frames, batch)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, unit="batch", desc="rendering sweep", leave=False)
    for s in steps:
        yield render(P[s:s + batch], resolution, channels, supersample), P[s:s + batch].astype(np.float32)
