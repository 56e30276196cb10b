"""Procedural fractal images: Kali sets, Julia / Mandelbrot (Multibrot) sets and Kali–Julia mixtures.

Families (``FAMILIES``):

* ``kali``        z <- s |z| / (z.z) + k        (componentwise abs, 2-D), orbit colourings
* ``julia``       z <- z^d + c, z0 = pixel      (d = 2..5; standard, conjugate or burning-ship)
* ``mandelbrot``  z <- z^d + c, c = pixel       (the whole set or zooms onto its boundary)
* ``mix``         Kali–Julia mixtures: blended maps  z <- (1-w) K(z) + w J(z)  and alternating
                  maps  z <- J(K(z))  (a Kali step and a Julia step in turn)
* ``any``         draws one of the four families per image

Per image: constants, power, variant, view (centre, log-zoom, rotation), iteration count, colouring
(smooth escape count, potential, distance estimate, point / circle / line orbit traps, Kali orbit
mean or minimum of |z|) and a cosine palette ``a + b cos(2 pi (c t + d))``.  ``Batch.params``
carries all of them (``PARAM_NAMES``); ``render(params)`` reproduces the images exactly.

Determinism.  Image i is a pure function of (seed, i, options).  Its parameters come from a
counter-based hash of (seed, i, attempt) (splitmix64 in NumPy integer arithmetic); the chaotic
choices among them (zoom centres near a set's boundary) use exactly rounded float64 arithmetic
only, and all parameters are rounded to float32, so they are the same on every machine.  The
renderer uses only operations whose per-element result cannot depend on where the element sits in
a tensor (+ - * /, sqrt, abs, min, clamp, comparisons, round, integer bit operations, sort);
log2 and cos are our own branch-free polynomials on top, because library kernels may evaluate the
vectorised body and the scalar tail of a tensor differently.  Hence ``get([i])`` and
``get([..., i, ...])`` return the same bytes.

Rendering.  Images sharing a loop structure (map, power, burning-ship or not, colouring features)
are iterated together in cache-sized chunks, sorted by iteration count so that the images still
running are a contiguous prefix: per-image iteration counts cost nothing.  Images whose pixels
have all escaped retire early.  The loop uses float arithmetic only (bool tensors, ``where`` and
``masked_fill`` are an order of magnitude slower on CPU).  With k > 1 torch threads on the CPU,
chunks go to k worker threads running single-threaded ops (torch's thread count is set to 1
while a batch renders and restored afterwards): no fork/join per op.

No dull images.  Every render is tested with exact integer statistics (contrast, flat area,
structure, speckle noise; :func:`quality`); dull ones are re-drawn with the next attempt's
parameters, in rounds, up to 16 attempts (the last one is kept).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .base import Batch, DataError, DataInfo, Dataset

__all__ = ["FAMILIES", "PARAM_NAMES", "COLOR_MODES", "FractalDataset", "render", "sample_params",
           "describe_params", "export"]

FAMILIES = ("any", "kali", "julia", "mandelbrot", "mix")
_FAMILY_NAMES = ("kali", "julia", "mandelbrot", "mix")  # family id -> name
MAP_NAMES = ("kali", "poly", "blend", "alternate")
VARIANT_NAMES = ("standard", "conjugate", "burning")
COLOR_MODES = ("smooth", "potential", "distance", "trap", "orbit_mean", "orbit_min")
TRAP_NAMES = ("point", "circle", "line")

PARAM_NAMES = (
    "family",  # 0 kali, 1 julia, 2 mandelbrot, 3 mix
    "map",  # 0 kali, 1 polynomial z^d + c, 2 blend (1-w)K + wJ, 3 alternate J(K(z))
    "plane",  # 0 dynamical plane (z0 = pixel), 1 parameter plane (the constant = pixel)
    "power",  # d of z^d
    "variant",  # 0 standard, 1 conjugate (tricorn-like), 2 burning ship
    "c_re", "c_im",  # constant of the polynomial (Julia) step
    "k_re", "k_im",  # constant of the Kali step
    "kali_scale",  # s in s|z|/(z.z)
    "blend",  # w, weight of the polynomial step in blended maps
    "z0_re", "z0_im",  # start point in the parameter plane
    "center_x", "center_y", "log_zoom", "rotation",  # view: width = 2^-log_zoom, rotation in radians
    "iterations",
    "color_mode",  # index into COLOR_MODES
    "trap_type", "trap_x", "trap_y", "trap_r", "trap_angle",
    "interior",  # escape colourings: 0 dark interior, 1 interior shaded by the final |z|
    "cycles", "phase",  # palette argument = t * cycles + phase
    "pal_a_r", "pal_a_g", "pal_a_b", "pal_b_r", "pal_b_g", "pal_b_b",
    "pal_c_r", "pal_c_g", "pal_c_b", "pal_d_r", "pal_d_g", "pal_d_b",
    "attempt",  # which re-draw was kept (0 = first)
)
_C = {name: i for i, name in enumerate(PARAM_NAMES)}
NUM_PARAMS = len(PARAM_NAMES)

_BAIL = 65536.0  # escape when |z|^2 > 2^16 (|z| > 256): large radius for smooth colouring
_LOG2_BAIL = 16.0
_KALI_EPS = 1e-6  # |z|^2 floor in the Kali inversion (keeps alternating maps finite)
_CLAMP = 1e7  # escaped orbits are clamped to |x|, |y| <= 1e7 so that z^5 stays finite
_ATTEMPT_ROUNDS = (1, 1, 1, 2, 3, 8)  # re-draws per round for the images still dull; the last is kept
_MAX_ELEMS = 1 << 17  # pixels per iteration chunk (measured: per-op overhead outweighs L2 misses below this)


# ----------------------------------------------------------------------------------------------
# Counter-based random numbers: splitmix64 over (seed, index, attempt, slot)
# ----------------------------------------------------------------------------------------------
_M64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _image_keys(seed: int, idx: np.ndarray, attempt: np.ndarray) -> np.ndarray:
    """One 64-bit key per (seed, index, attempt)."""
    s = np.uint64(int(seed) & _M64)
    with np.errstate(over="ignore"):
        k = _mix64(np.full(idx.shape, s, dtype=np.uint64) + _GOLDEN)
        k = _mix64(k ^ (idx.astype(np.int64).astype(np.uint64) * np.uint64(0xD1B54A32D192ED03)))
        k = _mix64(k ^ (attempt.astype(np.int64).astype(np.uint64) + np.uint64(0x632BE59BD9B4E019)))
    return k


def _uniforms(keys: np.ndarray, slots: int) -> np.ndarray:
    """[N, slots] float64 uniforms in [0, 1), a pure function of each key."""
    with np.errstate(over="ignore"):
        j = (np.arange(1, slots + 1, dtype=np.uint64) * _GOLDEN)[None, :]
        h = _mix64(keys[:, None] + j)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# ----------------------------------------------------------------------------------------------
# Parameter sampling (vectorised over images, float64 NumPy)
# ----------------------------------------------------------------------------------------------
def _choice(u: np.ndarray, probs: Sequence[float]) -> np.ndarray:
    cum = np.cumsum(np.asarray(probs, dtype=np.float64))
    cum /= cum[-1]
    return np.minimum(np.searchsorted(cum, u, side="right"), len(probs) - 1)


def _lerp(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return lo + (hi - lo) * u


def _boundary_point(theta: np.ndarray, d: np.ndarray, shrink: np.ndarray) -> np.ndarray:
    """A point of the boundary of the main component of z^d + c, scaled by ``shrink``.

    The attracting fixed point z has |d z^(d-1)| = 1 on that boundary: z = d^(-1/(d-1)) e^(i theta/(d-1)),
    c = z - z^d.  Julia sets for c near it are the connected, spiralling, interesting ones.
    """
    z = d ** (-1.0 / (d - 1.0)) * np.exp(1j * theta / (d - 1.0))
    return (z - z ** d) * shrink


_PROBS_FAMILY = (0.25, 0.25, 0.25, 0.25)  # kali, julia, mandelbrot, mix
_PROBS_POWER = (0.5, 0.25, 0.13, 0.12)  # d = 2, 3, 4, 5
_PROBS_POWER_MIX = (0.65, 0.35)  # d = 2, 3 in mixtures


_CANDIDATES = 8  # candidate zoom centres per escape-time image


def _escape_counts(px, py, cx, cy, plane, d, variant, maxit: int) -> np.ndarray:
    """Iterations before escaping (|z| > 4; ``maxit`` if never) of points [n, K] under z^d + c.

    Rows where ``plane`` [n, 1] is true treat the points as parameters c (z0 = 0), the others as
    start points with constant (cx, cy) [n, 1].  Exactly rounded float64 operations only.
    """
    ax, ay = np.where(plane, px, cx), np.where(plane, py, cy)
    x, y = np.where(plane, 0.0, px), np.where(plane, 0.0, py)
    burn, conj = variant == 2, variant == 1
    any_burn, any_conj = bool(burn.any()), bool(conj.any())
    powers = [d >= p for p in (3, 4, 5) if (d >= p).any()]
    n_in = np.zeros(px.shape)
    with np.errstate(over="ignore", invalid="ignore"):  # escaped orbits run off to inf / nan
        for _ in range(maxit):
            n_in += (x * x + y * y) <= 16.0  # false for inf and nan: escaped points never return
            if any_burn:
                x, y = np.where(burn, np.abs(x), x), np.where(burn, np.abs(y), y)
            wx, wy = x * x - y * y, x * y + y * x
            for more in powers:
                wx, wy = np.where(more, wx * x - wy * y, wx), np.where(more, wx * y + wy * x, wy)
            x, y = wx + ax, (np.where(conj, -wy, wy) if any_conj else wy) + ay
    return n_in


def _boundary_centre(zx, zy, cx, cy, d, variant, plane, active, maxit: int = 48, rounds: int = 3,
                     splits: int = 12):
    """A point close to the boundary of the escape set, from candidates [N, K].

    Start points (Julia sets) or parameters where ``plane`` (Mandelbrot sets).  If some candidate
    never escapes, the segment from it to the candidate escaping last is cut ``rounds`` times into
    ``splits`` pieces, keeping the piece where the orbit starts to escape: the result lies within
    |segment| / splits^rounds of the boundary.  Otherwise the candidate escaping last is returned.
    Only exactly rounded float64 operations on float32-representable inputs, so the (chaotic) result
    is the same on every machine.  Returns (point as complex [N], escape count there [N]).
    """
    n, K = zx.shape
    best = np.zeros(n, dtype=np.complex128)
    count = np.zeros(n, dtype=np.float64)
    rows = np.nonzero(active)[0]
    if rows.size == 0:
        return best, count
    f32 = lambda a: np.asarray(a, dtype=np.float32).astype(np.float64)  # noqa: E731
    col = lambda a: np.broadcast_to(np.asarray(a, dtype=np.float64), (n,))[rows][:, None]  # noqa: E731
    px, py = f32(zx[rows]), f32(zy[rows])
    cxr, cyr, pl = f32(col(cx)), f32(col(cy)), col(plane) > 0.5
    dd, var = col(d), col(variant)
    cnt = _escape_counts(px, py, cxr, cyr, pl, dd, var, maxit)
    r = np.arange(rows.size)
    late = np.argmax(np.where(cnt < maxit, cnt, -1.0), axis=1)
    inside = np.argmax(cnt >= maxit, axis=1)
    has_in = cnt[r, inside] >= maxit
    has_out = cnt[r, late] < maxit
    ax, ay = px[r, inside], py[r, inside]  # never escapes
    bx, by = px[r, late], py[r, late]  # escapes last
    j = np.arange(splits + 1) / splits
    for _ in range(rounds):
        sx = ax[:, None] + (bx - ax)[:, None] * j
        sy = ay[:, None] + (by - ay)[:, None] * j
        out = _escape_counts(sx, sy, cxr, cyr, pl, dd, var, maxit) < maxit
        out[:, -1] = True
        k = np.argmax(out, axis=1)  # first escaping point along the segment (k >= 1)
        k = np.maximum(k, 1)
        ax, ay, bx, by = sx[r, k - 1], sy[r, k - 1], sx[r, k], sy[r, k]
    seg = has_in & has_out
    best[rows] = np.where(seg, 0.5 * (ax + bx) + 0.5j * (ay + by), px[r, late] + 1j * py[r, late])
    count[rows] = np.where(seg, maxit, np.maximum(cnt[r, late], 0.0))
    return best, count


def sample_params(seed: int, indices, attempt=0, family: str = "any") -> np.ndarray:
    """Parameters of images ``indices`` (attempt ``attempt``): float64 [N, NUM_PARAMS]."""
    if family not in FAMILIES:
        raise DataError(f"unknown fractal family {family!r}; choose one of {', '.join(FAMILIES)}")
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    att = np.broadcast_to(np.asarray(attempt, dtype=np.int64), idx.shape).copy()
    n = idx.shape[0]
    U = _uniforms(_image_keys(seed, idx, att), 48)
    u = lambda j: U[:, j]  # noqa: E731
    P = np.zeros((n, NUM_PARAMS), dtype=np.float64)
    col = lambda name: P[:, _C[name]]  # noqa: E731 - a view

    if family == "any":
        fam = _choice(u(0), _PROBS_FAMILY)
    else:
        fam = np.full(n, _FAMILY_NAMES.index(family))
    kali, julia, mandel, mix = (fam == 0), (fam == 1), (fam == 2), (fam == 3)
    col("family")[:] = fam

    # map and plane
    mp = np.where(kali, 0, np.where(mix, np.where(u(1) < 0.5, 2, 3), 1))
    col("map")[:] = mp
    plane = np.where(mandel, 1, np.where(kali, u(2) < 0.2, np.where(mix, u(2) < 0.3, 0))).astype(np.float64)
    col("plane")[:] = plane

    # power and variant
    d = np.where(mix, 2 + _choice(u(3), _PROBS_POWER_MIX), 2 + _choice(u(3), _PROBS_POWER))
    d = np.where(kali, 2, d).astype(np.float64)
    col("power")[:] = d
    variant = np.where(julia | mandel, _choice(u(4), (0.7, 0.15, 0.15)), 0)
    col("variant")[:] = variant

    # polynomial constant: near the boundary of the main component (or the period-2 bulb for d = 2)
    theta = 2 * np.pi * u(5)
    c = _boundary_point(theta, d, _lerp(u(6), 0.9, 1.06))
    bulb = (d == 2) & (u(7) < 0.3)
    c = np.where(bulb, -1.0 + 0.25 * np.exp(1j * theta) * _lerp(u(6), 0.9, 1.08), c)
    c = c + (_lerp(u(8), -1, 1) + 1j * _lerp(u(9), -1, 1)) * 0.02
    # mixtures tolerate (and need) larger constants
    cmix = (_lerp(u(8), -1.0, 0.6) + 1j * _lerp(u(9), -0.9, 0.9))
    c = np.where(mix & (u(47) >= 0.5), cmix, c)  # mixtures: half near the boundary, half anywhere
    c = np.where(kali, 0, c)
    col("c_re")[:], col("c_im")[:] = c.real, c.imag

    # Kali constant
    k = _lerp(u(10), -1.1, -0.25) + 1j * _lerp(u(11), -1.1, -0.25)
    swap = u(12)
    k = np.where(swap < 0.15, k.real - 1j * k.imag, np.where(swap < 0.3, -k.real + 1j * k.imag, k))
    k = np.where(kali | mix, k, 0)
    col("k_re")[:], col("k_im")[:] = k.real, k.imag
    col("kali_scale")[:] = np.where(kali | mix, np.where(u(13) < 0.4, 1.0, _lerp(u(14), 0.75, 1.3)), 0.0)
    col("blend")[:] = np.where(mp == 2, _lerp(u(15), 0.2, 0.8), np.where(mp == 1, 1.0, np.where(mp == 3, 0.5, 0.0)))
    z0 = np.where((plane == 1) & (u(16) < 0.25), (_lerp(u(17), -0.3, 0.3) + 1j * _lerp(u(18), -0.3, 0.3)), 0)
    col("z0_re")[:], col("z0_im")[:] = z0.real, z0.imag

    # view
    width = np.empty(n)
    center = np.zeros(n, dtype=np.complex128)
    # Kali: dynamical plane around the origin, parameter plane around the interesting k region
    wk = 2.0 ** _lerp(u(19), -1.0, 2.2)
    ck = (_lerp(u(20), -1.2, 1.2) + 1j * _lerp(u(21), -1.2, 1.2)) * np.minimum(1.0, 0.5 * wk)
    ckp = _lerp(u(20), -1.2, -0.2) + 1j * _lerp(u(21), -1.2, -0.2)
    width = np.where(kali, wk, width)
    center = np.where(kali, np.where(plane == 1, ckp, ck), center)
    # Julia: the whole set, or a zoom centred close to the boundary of the filled Julia set
    keys2 = _mix64(_image_keys(seed, idx, att) ^ np.uint64(0xC0FFEE))
    Uc = _uniforms(keys2, 2 * _CANDIDATES)
    whole = u(22) < 0.4
    wj = np.where(whole, _lerp(u(19), 2.4, 3.6), 2.0 ** _lerp(u(19), -4.0, 0.8))
    # Mandelbrot: a zoom centred close to the set's boundary, or the whole set
    wm = np.where(u(22) < 0.15, _lerp(u(19), 2.6, 3.6), 2.0 ** _lerp(u(19), -8.0, 0.5))
    std2 = (d == 2) & (variant == 0)  # the classic set lies in [-2, 0.5] x [-1.15, 1.15]
    bx, by = np.where(std2, 0.5, 2.0)[:, None], np.where(std2, 1.15, 2.0)[:, None]
    cand_x = np.where(mandel[:, None], -2.0 + (bx + 2.0) * Uc[:, 0::2], _lerp(Uc[:, 0::2], -1.4, 1.4))
    cand_y = np.where(mandel[:, None], by * (2.0 * Uc[:, 1::2] - 1.0), _lerp(Uc[:, 1::2], -1.4, 1.4))
    zc, n_late = _boundary_centre(cand_x, cand_y, c.real, c.imag, d, variant, plane=mandel,
                                  active=(julia & ~whole) | (mandel & (wm <= 2.5)))
    cj = np.where(whole, np.sqrt(u(20)) * 0.15 * np.exp(2j * np.pi * u(21)), zc)
    width = np.where(julia, wj, width)
    center = np.where(julia, cj, center)
    cb = np.where(wm > 2.5, -0.4 * (d == 2) + 0.1 * (_lerp(u(25), -1, 1) + 1j * _lerp(u(26), -1, 1)), zc)
    width = np.where(mandel, wm, width)
    center = np.where(mandel, cb, center)
    # mixtures
    wx = 2.0 ** _lerp(u(19), -2.0, 1.2)
    cx = (_lerp(u(20), -1, 1) + 1j * _lerp(u(21), -1, 1)) * np.minimum(1.0, 0.5 * wx)
    width = np.where(mix, wx, width)
    center = np.where(mix, cx, center)
    col("center_x")[:], col("center_y")[:] = center.real, center.imag
    col("log_zoom")[:] = -np.log2(width)
    col("rotation")[:] = 2 * np.pi * u(27)

    # iterations: escape-time sets need more the deeper the zoom
    it_esc = np.round(_lerp(u(28), 20, 48) + 6 * np.clip(-np.log2(width), 0, 8))
    it_esc = np.minimum(np.maximum(it_esc, np.minimum(n_late, 48) + 16), 160)
    it = np.where(kali, np.round(_lerp(u(28), 4.5, 10.5)), np.where(mix, np.round(_lerp(u(28), 5.5, 13.5)), it_esc))
    col("iterations")[:] = it

    # colouring
    esc_modes = np.where(variant == 0, _choice(u(29), (0.3, 0.2, 0.25, 0.25)), _choice(u(29), (0.4, 0.3, 0.0, 0.3)))
    kali_modes = np.array([4, 5, 3])[_choice(u(29), (0.45, 0.3, 0.25))]
    blend_modes = np.array([0, 1, 3])[_choice(u(29), (0.4, 0.25, 0.35))]
    mode = np.where(kali | (mp == 3), kali_modes, np.where(mp == 2, blend_modes, esc_modes))
    col("color_mode")[:] = mode
    tt = _choice(u(30), (0.4, 0.3, 0.3))
    col("trap_type")[:] = np.where(mode == 3, tt, 0)
    col("trap_x")[:] = np.where(mode == 3, _lerp(u(31), -1.0, 1.0), 0)
    col("trap_y")[:] = np.where(mode == 3, _lerp(u(32), -1.0, 1.0), 0)
    col("trap_r")[:] = np.where((mode == 3) & (tt == 1), _lerp(u(33), 0.1, 1.0), 0)
    col("trap_angle")[:] = np.where((mode == 3) & (tt == 2), np.pi * u(34), 0)
    col("interior")[:] = np.where(mode <= 2, u(35) < 0.5, 0)

    # cosine palette
    col("cycles")[:] = 2.0 ** _lerp(u(36), -0.5, 1.8)
    col("phase")[:] = u(37)
    # a: base brightness with a tint, b: amplitude, c: frequency, d: phase (a spread of d over the
    # channels from harmonious (small) to rainbow (large))
    V = _uniforms(_mix64(_image_keys(seed, idx, att) ^ np.uint64(0x5EED)), 12)
    base = _lerp(u(38), 0.35, 0.65)
    P[:, _C["pal_a_r"]:_C["pal_a_r"] + 3] = base[:, None] + _lerp(V[:, 0:3], -0.12, 0.12)
    amp = _lerp(u(39), 0.3, 0.5)
    P[:, _C["pal_b_r"]:_C["pal_b_r"] + 3] = amp[:, None] * _lerp(V[:, 3:6], 0.7, 1.15)
    freqs = np.array([0.5, 1.0, 1.0, 1.5, 2.0])
    cvar = freqs[np.minimum((V[:, 6:9] * 5).astype(np.int64), 4)]
    P[:, _C["pal_c_r"]:_C["pal_c_r"] + 3] = np.where((u(40) < 0.3)[:, None], cvar, 1.0)
    spread = np.where(u(41) < 0.6, _lerp(u(42), 0.05, 0.3), _lerp(u(42), 0.3, 0.7))
    P[:, _C["pal_d_r"]:_C["pal_d_r"] + 3] = u(43)[:, None] + spread[:, None] * V[:, 9:12]
    col("attempt")[:] = att
    return P.astype(np.float32).astype(np.float64)  # exactly what Batch.params carries


def describe_params(row) -> dict:
    """One parameter row -> a JSON-friendly dict with names (family, colouring, ...)."""
    row = [float(v) for v in (row.tolist() if hasattr(row, "tolist") else row)]
    out = {}
    for name, v in zip(PARAM_NAMES, row):
        if name == "family":
            out[name] = _FAMILY_NAMES[int(v)]
        elif name == "map":
            out[name] = MAP_NAMES[int(v)]
        elif name == "variant":
            out[name] = VARIANT_NAMES[int(v)]
        elif name == "color_mode":
            out[name] = COLOR_MODES[int(v)]
        elif name == "trap_type":
            out[name] = TRAP_NAMES[int(v)]
        elif name in ("plane", "power", "iterations", "interior", "attempt"):
            out[name] = int(v)
        else:
            out[name] = v
    return out


# ----------------------------------------------------------------------------------------------
# Deterministic transcendentals from exactly rounded operations
# ----------------------------------------------------------------------------------------------
def _log2(x: torch.Tensor) -> torch.Tensor:
    """A fast log2 of positive floats: exponent + quadratic in the mantissa (|error| < 0.008).

    Continuous and increasing (exact at powers of two), which is what colouring needs.  Values below
    1e-30 count as 1e-30, +inf gives 128.  Integer bit operations and exactly rounded arithmetic only.
    """
    m = x.clamp_min(1e-30)
    bits = m.view(torch.int32)
    e = (bits >> 23).to(torch.float32)
    bits.bitwise_and_(0x7FFFFF).bitwise_or_(0x3F800000)  # m <- mantissa in [1, 2)
    t = m.sub_(1.0)
    q = t * -0.3465
    return q.add_(1.3465).mul_(t).sub_(127.0).add_(e)


def _cos2pi_(x: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """In place: x <- cos(2 pi x) = 1 - 2 sin^2(pi a), a = |x - round(x)|; |error| < 1e-3.

    Branch-free, exactly rounded operations only; t1 and t2 are scratch buffers shaped like x.
    """
    torch.round(x, out=t1)
    x.sub_(t1).abs_().mul_(math.pi)  # pi a in [0, pi/2]
    torch.mul(x, x, out=t1)  # x^2
    torch.mul(t1, -1.0 / 5040.0, out=t2)
    t2.add_(1.0 / 120.0).mul_(t1).sub_(1.0 / 6.0).mul_(t1).add_(1.0)
    x.mul_(t2)  # sin(pi a)
    return x.mul_(x).mul_(-2.0).add_(1.0)


def _cos2pi(t: torch.Tensor) -> torch.Tensor:
    """cos(2 pi t), see :func:`_cos2pi_`."""
    return _cos2pi_(t.clone(), torch.empty_like(t), torch.empty_like(t))


# ----------------------------------------------------------------------------------------------
# The batched renderer
# ----------------------------------------------------------------------------------------------
_GRID_CACHE: dict = {}


def _grid(res: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres in [-1/2, 1/2): u (x, left->right), v (y, bottom->top), each [1, res*res]."""
    key = (res, str(device))
    g = _GRID_CACHE.get(key)
    if g is None:
        a = (torch.arange(res, dtype=torch.float64) + 0.5) / res - 0.5
        v, u = torch.meshgrid(-a, a, indexing="ij")
        g = (u.reshape(1, -1).to(torch.float32).to(device), v.reshape(1, -1).to(torch.float32).to(device))
        if len(_GRID_CACHE) > 16:
            _GRID_CACHE.clear()
        _GRID_CACHE[key] = g
    return g


def _fclass(map_kind: int, mode: int) -> str:
    """Which per-iteration statistics an image needs: its loop's feature class."""
    if mode == 3:
        return "trap"
    if map_kind in (0, 3):
        return "orbit"
    return "de" if (mode == 2 and map_kind == 1) else "esc"


def _group_keys(P: np.ndarray) -> list[tuple]:
    keys = []
    for mp, d, var, mode in zip(P[:, _C["map"]].astype(int), P[:, _C["power"]].astype(int),
                                P[:, _C["variant"]].astype(int), P[:, _C["color_mode"]].astype(int)):
        keys.append((int(mp), int(d) if mp != 0 else 0, int(var == 2 and mp == 1), _fclass(mp, mode)))
    return keys


class _Chunk:
    """Iteration state of images sharing one loop structure, sorted by decreasing iteration count.

    At iteration k the images still running are a contiguous prefix ``[:m]`` of every buffer, so
    per-image iteration counts cost nothing: the loop simply works on shorter views.  The loop uses
    only fast float arithmetic (no bool tensors, ``where`` or ``masked_fill``, which are one to two
    orders of magnitude slower on CPU).  Escape bookkeeping: ``cnt += inside`` counts the iterations
    before escaping, and the first-escape |z|^2 is ``min_k (|z_k|^2 + 1e30 inside_k)``, valid because
    |z| only grows after escaping (escaped orbits are clamped so that they stay finite).
    """

    def __init__(self, key: tuple, P: np.ndarray, res: int, device: torch.device):
        self.map, self.d, self.burn, self.fc = key
        G, HW = P.shape[0], res * res
        self.G, self.HW, self.res = G, HW, res
        dev = device

        def row(a):
            return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=torch.float32, device=dev).reshape(G, 1)

        def col(name):
            return row(P[:, _C[name]])

        u, v = _grid(res, dev)
        width = 2.0 ** (-P[:, _C["log_zoom"]])
        rot = P[:, _C["rotation"]]
        A, B = row(width * np.cos(rot)), row(width * np.sin(rot))
        X = (A * u - B * v) + col("center_x")
        Y = (B * u + A * v) + col("center_y")
        pl = P[:, _C["plane"]] > 0.5
        on, off = row(pl), row(~pl)  # parameter plane / dynamical plane, as 0/1 floats
        self.iters = P[:, _C["iterations"]].astype(np.int64)
        self.P = P.copy()
        self.order = np.arange(G)  # row i of the state is image order[i] of P
        self.row = row
        self.buf = b = {}
        b["zx"] = X * off + row(np.where(pl, P[:, _C["z0_re"]], 0.0))
        b["zy"] = Y * off + row(np.where(pl, P[:, _C["z0_im"]], 0.0))
        self.scale = col("kali_scale")
        if self.map == 0:  # Kali: in the parameter plane the Kali constant is the pixel
            b["kx"] = X * on + col("k_re") * off
            b["ky"] = Y * on + col("k_im") * off
        else:
            self.kx, self.ky = col("k_re"), col("k_im")
            cre, cim = P[:, _C["c_re"]], P[:, _C["c_im"]]
            if self.map == 2:  # blend: (1-w)(s|z|/z.z + k) + w (z^d + c) = ... + [(1-w) k + w c]
                w = P[:, _C["blend"]]
                self.w = row(w)
                self.kscale = row(P[:, _C["kali_scale"]] * (1.0 - w))
                kre, kim = P[:, _C["k_re"]] * (1.0 - w), P[:, _C["k_im"]] * (1.0 - w)
                b["cx"] = X * row(pl * w) + row(np.where(pl, 0.0, w * cre) + kre)
                b["cy"] = Y * row(pl * w) + row(np.where(pl, 0.0, w * cim) + kim)
            else:
                b["cx"] = X * on + row(cre) * off
                b["cy"] = Y * on + row(cim) * off
        self.sign = row(np.where(P[:, _C["variant"]] == 1, -1.0, 1.0))  # conjugate: negate Im(z^d)
        self.conj = bool((P[:, _C["variant"]] == 1).any()) and self.map == 1
        names = ["r2", "xx", "yy", "t1", "t2"]
        if self.d == 5 or self.fc in ("esc", "de", "trap"):
            names.append("t3")
        if self.fc != "esc" or self.d == 5:
            names.append("t4")
        if self.map == 2:
            names += ["ka", "kb"]
        for name in names:
            b[name] = torch.empty(G, HW, dtype=torch.float32, device=dev)
        inf = float("inf")
        if self.fc in ("esc", "de"):
            b["ins"] = torch.zeros(G, HW, device=dev)
            b["cnt"] = torch.zeros(G, HW, device=dev)
            b["rec"] = torch.full((G, HW), inf, device=dev)
            if self.fc == "de":
                b["dz"] = off.expand(G, HW).contiguous()  # |dz_0| = 1 (Julia) or 0 (parameter plane)
                b["recdz"] = torch.full((G, HW), inf, device=dev)
                self.dz_add = 0.0 if not pl.any() else (1.0 if pl.all() else None)
                self.plane_f = on
        elif self.fc == "orbit":
            b["sumr"] = torch.zeros(G, HW, device=dev)
            b["minr2"] = torch.full((G, HW), inf, device=dev)
        else:  # trap distance |a |z|^2 + u.z + o|: point / circle (a = 1, u = -2p, o = |p|^2 - r^2),
            # line (a = 0, u = unit normal, o = -offset)
            tt = P[:, _C["trap_type"]]
            ang = P[:, _C["trap_angle"]]
            px, py, r = P[:, _C["trap_x"]], P[:, _C["trap_y"]], P[:, _C["trap_r"]]
            line = tt == 2
            nx, ny = -np.sin(ang), np.cos(ang)
            ux, uy = np.where(line, nx, -2 * px), np.where(line, ny, -2 * py)
            o = np.where(line, -(nx * px + ny * py), px * px + py * py - r * r)
            self.tp = (row(np.where(line, 0.0, 1.0)), row(ux), row(uy), row(o))
            b["trap"] = torch.full((G, HW), inf, device=dev)
        self.escaping = self.map in (1, 2)
        # escaped orbits are clamped to stay finite: every 2nd iteration suffices for z^2
        self.clamp_every = 2 if self.d == 2 else 1

    def run(self) -> None:
        iters = self.iters
        kmax = int(iters.max()) if iters.size else 0
        m = self.G
        V = S = None
        for k in range(kmax):
            while m > 0 and iters[m - 1] <= k:
                m -= 1
                V = None
            if m == 0:
                break
            if V is None:
                V = {name: t[:m] for name, t in self.buf.items()}
                S = {name: getattr(self, name)[:m] for name in self._per_image if hasattr(self, name)}
                if self.fc == "trap":
                    S["tp"] = tuple(t[:m] for t in self.tp)
            self._step(V, S, k)
            if self.escaping and (k & 7) == 7:
                # retire the images whose pixels have all escaped: nothing they record changes any more
                if self.fc in ("esc", "de"):
                    alive = (V["ins"].amax(1) > 0).cpu().numpy()
                else:
                    alive = (V["r2"].amin(1) <= _BAIL).cpu().numpy()
                if not alive.all():
                    iters[:m][~alive] = k + 1
                    order = np.argsort(-iters[:m], kind="stable")
                    self._permute(order, m)
                    V = None

    _per_image = ("scale", "sign", "kx", "ky", "w", "kscale", "plane_f")

    def _permute(self, order: np.ndarray, m: int) -> None:
        """Reorder the first m images (all per-image state) by ``order``."""
        if (order == np.arange(m)).all():
            return
        idx = torch.as_tensor(order, device=self.buf["zx"].device)
        tensors = list(self.buf.values()) + [getattr(self, n) for n in self._per_image if hasattr(self, n)]
        if self.fc == "trap":
            tensors += list(self.tp)
        for t in tensors:
            if t.dim() == 2 and t.shape[0] == self.G:
                t[:m] = t[:m].index_select(0, idx)
        self.iters[:m] = self.iters[:m][order]
        self.P[:m] = self.P[:m][order]
        self.order[:m] = self.order[:m][order]

    def _features(self, V: dict, S: dict, record: bool) -> None:
        """Statistics of z_k from r2 = |z_k|^2; orbit statistics are recorded from k = 1 on."""
        r2 = V["r2"]
        fc = self.fc
        if fc in ("esc", "de"):
            if record:
                ins = V["ins"]
                torch.le(r2, _BAIL, out=ins)  # 1.0 while inside
                V["cnt"].add_(ins)
                torch.add(r2, ins, alpha=1e30, out=V["t3"])  # exact: 1e30 * {0, 1}
                torch.minimum(V["rec"], V["t3"], out=V["rec"])
                if fc == "de":
                    torch.add(V["dz"], ins, alpha=1e30, out=V["t3"])
                    torch.minimum(V["recdz"], V["t3"], out=V["recdz"])
            if fc == "de":  # |dz| <- d |z|^(d-1) |dz| + [parameter plane]  (a cheap upper bound)
                dz, g = V["dz"], V["t4"]
                d = self.d
                if d == 2:
                    torch.sqrt(r2, out=g)
                elif d == 3:
                    g = r2
                elif d == 4:
                    torch.sqrt(r2, out=g)
                    g.mul_(r2)
                else:
                    torch.mul(r2, r2, out=g)
                dz.mul_(g).mul_(float(d))
                if self.dz_add is None:
                    dz.add_(S["plane_f"])
                elif self.dz_add:
                    dz.add_(1.0)
        elif not record:
            return
        elif fc == "orbit":  # Kali orbit accumulation: sum of |z| and closest approach to 0
            g = V["t4"]
            torch.sqrt(r2, out=g)
            V["sumr"].add_(g)
            torch.minimum(V["minr2"], r2, out=V["minr2"])
        else:
            a, ux, uy, o = S["tp"]
            q, l = V["t3"], V["t4"]
            torch.mul(r2, a, out=q)
            torch.mul(V["zx"], ux, out=l)
            q.add_(l)
            torch.mul(V["zy"], uy, out=l)
            q.add_(l).add_(o).abs_()
            if self.escaping:  # only the bounded part of the orbit counts
                torch.gt(r2, _BAIL, out=l)
                q.add_(l, alpha=1e30)  # exact: 1e30 * {0, 1}
            torch.minimum(V["trap"], q, out=V["trap"])

    def _power(self, V: dict, S: dict) -> None:
        """z <- z^d (conjugated per image), given xx = x^2 and yy = y^2 in V."""
        zx, zy, xx, yy, t1, t2 = V["zx"], V["zy"], V["xx"], V["yy"], V["t1"], V["t2"]
        d = self.d
        if d == 2:
            torch.mul(zx, zy, out=t1)
            torch.sub(xx, yy, out=zx)
            torch.add(t1, t1, out=zy)
        elif d == 3:
            torch.mul(yy, 3.0, out=t1)
            torch.sub(xx, t1, out=t1)
            torch.mul(t1, zx, out=t2)  # Re = x (x^2 - 3 y^2)
            torch.mul(xx, 3.0, out=t1)
            t1.sub_(yy)
            zy.mul_(t1)  # Im = y (3 x^2 - y^2)
            zx, V["zx"], V["t2"] = t2, t2, zx  # swap buffers instead of copying
            self._swap("zx", "t2")
        elif d == 4:
            torch.sub(xx, yy, out=t1)  # a = Re z^2
            torch.mul(zx, zy, out=t2)
            t2.add_(t2)  # b = Im z^2
            torch.mul(t1, t2, out=zy)
            zy.add_(zy)
            t1.mul_(t1)
            t2.mul_(t2)
            torch.sub(t1, t2, out=zx)
        else:  # d == 5: z^4 z
            t3 = V["t3"]
            torch.sub(xx, yy, out=t1)
            torch.mul(zx, zy, out=t2)
            t2.add_(t2)
            torch.mul(t1, t2, out=t3)
            t3.add_(t3)  # B = Im z^4
            t1.mul_(t1)
            t2.mul_(t2)
            t1.sub_(t2)  # A = Re z^4
            torch.mul(t1, zy, out=t2)  # A y
            t1.mul_(zx)  # A x
            zx.mul_(t3)  # B x
            zy.mul_(t3)  # B y
            t1.sub_(zy)  # Re = A x - B y
            torch.add(t2, zx, out=zy)  # Im = A y + B x
            V["zx"], V["t1"] = t1, zx
            self._swap("zx", "t1")
        if self.conj:
            V["zy"].mul_(S["sign"])

    def _swap(self, a: str, b: str) -> None:
        self.buf[a], self.buf[b] = self.buf[b], self.buf[a]

    def _step(self, V: dict, S: dict, k: int) -> None:
        zx, zy, r2, xx, yy, t1 = V["zx"], V["zy"], V["r2"], V["xx"], V["yy"], V["t1"]
        mp = self.map
        if mp == 1 and self.burn:
            zx.abs_()
            zy.abs_()
        torch.mul(zx, zx, out=xx)
        torch.mul(zy, zy, out=yy)
        torch.add(xx, yy, out=r2)
        self._features(V, S, k > 0)
        if mp == 1:  # z <- z^d + c
            self._power(V, S)
            V["zx"].add_(V["cx"])
            V["zy"].add_(V["cy"])
        elif mp == 0:  # Kali: z <- s |z| / z.z + k
            torch.clamp_min(r2, _KALI_EPS, out=t1)
            torch.div(S["scale"], t1, out=t1)
            zx.abs_().mul_(t1).add_(V["kx"])
            zy.abs_().mul_(t1).add_(V["ky"])
        elif mp == 2:  # blend: (1-w) s |z| / z.z + w z^d + [(1-w) k + w c]
            ka, kb = V["ka"], V["kb"]
            torch.clamp_min(r2, _KALI_EPS, out=t1)
            torch.div(S["kscale"], t1, out=t1)
            torch.abs(zx, out=ka)
            ka.mul_(t1)
            torch.abs(zy, out=kb)
            kb.mul_(t1)
            self._power(V, S)
            w = S["w"]
            V["zx"].mul_(w).add_(ka).add_(V["cx"])
            V["zy"].mul_(w).add_(kb).add_(V["cy"])
        else:  # alternate: z <- J(K(z)),  K(z) = s |z| / z.z + k,  J(z) = z^d + c
            torch.clamp_min(r2, _KALI_EPS, out=t1)
            torch.div(S["scale"], t1, out=t1)
            zx.abs_().mul_(t1).add_(S["kx"])
            zy.abs_().mul_(t1).add_(S["ky"])
            torch.mul(zx, zx, out=xx)
            torch.mul(zy, zy, out=yy)
            self._power(V, S)
            V["zx"].add_(V["cx"])
            V["zy"].add_(V["cy"])
        if self.escaping and k % self.clamp_every == self.clamp_every - 1:
            V["zx"].clamp_(-_CLAMP, _CLAMP)
            V["zy"].clamp_(-_CLAMP, _CLAMP)

    # -- colouring: one value t in [0, 1] and a brightness per pixel ---------------------------
    def colour(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        P, b, G, row = self.P, self.buf, self.G, self.row
        mode = P[:, _C["color_mode"]].astype(np.int64)
        if self.fc in ("esc", "de"):
            ext = torch.lt(b["rec"], float("inf")).to(torch.float32)  # escaped pixels
            L = _log2(b["rec"].clamp_min(_BAIL))  # log2 |z_n|^2 >= 16
            v = None
            if self.fc == "esc" or (mode != 2).any():
                # continuous escape count  n + 1 - log_d(log|z_n| / log R)
                nu = _log2(L * (1.0 / _LOG2_BAIL)).mul_(row(-1.0 / np.log2(P[:, _C["power"]])))
                v = nu = nu.add_(b["cnt"]).add_(2.0).clamp_min_(0.0)
                if (mode == 1).any():  # potential-like: logarithmic in the escape count
                    v = nu + (_log2(nu + 1.0) - nu).mul_(row(mode == 1))
            if self.fc == "de":  # log2 of the distance estimate |z| log|z| / |dz|, in pixels
                pixw = 2.0 ** (-P[:, _C["log_zoom"]]) / self.res
                de = _log2(L).add_(L * 0.5).sub_(_log2(b["recdz"])).sub_(row(np.log2(pixw) + 2.0))
                v = de if v is None else v.add_((de - v).mul_(row(mode == 2)))
            t = _qnorm(v, ext, self.res).mul_(ext)  # exact selection: t_ext e + t_int (1 - e)
            inner = 1.0 - ext
            t.add_(_qnorm(_log2(b["r2"]), inner, self.res).mul_(inner))  # interior: final |z|
            shade = inner.mul_(row(P[:, _C["interior"]] > 0.5)).add_(ext)
            return t, shade
        if self.fc == "orbit":
            mean_r = b["sumr"] * row(1.0 / np.maximum(P[:, _C["iterations"]] - 1, 1))
            v = mean_r + (_log2(b["minr2"]) - mean_r) * row(mode == 5)
            return _qnorm(v, None, self.res), None
        return _qnorm(_log2(b["trap"]), None, self.res), None


def _qnorm(v: torch.Tensor, valid: torch.Tensor | None, res: int, lo: int = 2, hi: int = 98) -> torch.Tensor:
    """Per-image robust normalisation of finite v to [0, 1] between its lo% and hi% percentiles.

    The percentiles come from a fixed sub-grid of at most 16x16 pixels (``valid`` > 0 ones), sorted,
    so they are exact and independent of the batch.
    """
    G = v.shape[0]
    s = -(-res // 16)
    vs = v.view(G, res, res)[:, ::s, ::s].reshape(G, -1)
    if valid is None:
        srt = vs.sort(dim=1).values
        cnt = torch.full((G, 1), vs.shape[1], dtype=torch.long, device=v.device)
    else:
        oks = valid.view(G, res, res)[:, ::s, ::s].reshape(G, -1) > 0
        srt = torch.where(oks, vs, float("inf")).sort(dim=1).values
        cnt = oks.sum(dim=1, keepdim=True)  # exact integer count
    top = (cnt - 1).clamp_min(0)
    qlo = srt.gather(1, top * lo // 100)
    qhi = srt.gather(1, top * hi // 100)
    has = cnt > 0
    qlo = torch.where(has, qlo, 0.0)
    span = qhi - qlo
    inv = 1.0 / torch.where(has & (span > 1e-20), span, 1.0)
    return ((v - qlo) * inv).clamp_(0.0, 1.0)


def _palette(T: torch.Tensor, S: torch.Tensor | None, P: np.ndarray) -> torch.Tensor:
    """Cosine palettes  a + b cos(2 pi (c (t cycles + phase) + d)), times the shade S (None: 1).

    -> float RGB [N, 3, HW] in [0, 1].  In-place arithmetic (large temporaries are costly on CPU).
    """
    N = T.shape[0]
    dev = T.device

    def per_image(j, k=1):
        return torch.as_tensor(P[:, j:j + k], dtype=torch.float32, device=dev).reshape(N, k, 1)

    arg = (T * per_image(_C["cycles"]).view(N, 1)).add_(per_image(_C["phase"]).view(N, 1))
    out = arg.unsqueeze(1) * per_image(_C["pal_c_r"], 3)
    out.add_(per_image(_C["pal_d_r"], 3))
    _cos2pi_(out, torch.empty_like(out), torch.empty_like(out))
    out.mul_(per_image(_C["pal_b_r"], 3)).add_(per_image(_C["pal_a_r"], 3))
    if S is not None:
        out.mul_(S.unsqueeze(1))
    return out.clamp_(0.0, 1.0)


def _chunks(P: np.ndarray, res: int) -> list[tuple[tuple, np.ndarray]]:
    """Rows grouped by loop structure, sorted by decreasing iterations, cut to cache-sized chunks.

    Returned largest estimated work first (for load balancing over worker threads).
    """
    keys = _group_keys(P)
    per = max(1, _MAX_ELEMS // (res * res))

    groups: dict = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    out = []
    for k in sorted(groups):
        rows = np.asarray(groups[k], dtype=np.int64)
        rows = rows[np.argsort(-P[rows, _C["iterations"]], kind="stable")]
        for s in range(0, len(rows), per):
            out.append((k, rows[s:s + per]))
    out.sort(key=lambda kr: -float(P[kr[1], _C["iterations"]].sum()))
    return out


_POOL: dict = {}
_POOL_LOCK = threading.Lock()


def _pool(n: int) -> ThreadPoolExecutor:
    with _POOL_LOCK:
        ex = _POOL.get(n)
        if ex is None:
            ex = _POOL[n] = ThreadPoolExecutor(n, thread_name_prefix="fractals")
        return ex


@contextmanager
def _worker_threads(device: torch.device):
    """Yield how many worker threads to use; meanwhile torch ops run single-threaded.

    On the CPU with torch using k > 1 threads, chunks are rendered by k Python worker threads with
    single-threaded ops (torch releases the GIL inside ops): no OpenMP fork/join per op, which at
    these tensor sizes is faster and far more robust when the cores are shared with other
    processes.  torch's thread count is set to 1 for the duration and restored afterwards.
    """
    n = torch.get_num_threads() if device.type == "cpu" else 1
    if n <= 1:
        yield 1
        return
    torch.set_num_threads(1)
    try:
        yield n
    finally:
        torch.set_num_threads(n)


def _render_batch(P: np.ndarray, resolution: int, channels: int, supersample: int, device: torch.device,
                  workers: int = 1, test: bool = False) -> tuple[torch.Tensor, np.ndarray | None]:
    """Parameter rows -> (uint8 [N, channels, R, R], dull flags [N] when ``test``).

    Each chunk is rendered, coloured, box-filtered, quantised and (when ``test``) tested for
    dullness by one worker; results are assembled by row.
    """
    N, ss, R = P.shape[0], int(supersample), int(resolution)
    Rs = R * ss
    x = torch.empty(N, channels, R, R, dtype=torch.uint8, device=device)
    dull = np.zeros(N, dtype=bool) if test else None
    chunks = _chunks(P, Rs)

    def work(item):
        key, rows = item
        ch = _Chunk(key, P[rows], Rs, device)
        ch.run()
        t, s = ch.colour()
        rows = rows[ch.order]
        rgb = _palette(t, s, P[rows]).view(len(rows), 3, Rs, Rs)
        if ss > 1:  # box filter, summed in a fixed order
            v = rgb.view(len(rows), 3, R, ss, R, ss)
            acc = v[:, :, :, 0, :, 0].clone()
            for i in range(ss):
                for j in range(ss):
                    if i or j:
                        acc += v[:, :, :, i, :, j]
            rgb = acc * (1.0 / (ss * ss))
        out = _quantize(rgb, channels)
        flags = None
        if test:
            flags = is_dull(out if channels == 3 else _quantize(rgb, 3))
        return rows, out, flags

    results = _pool(workers).map(work, chunks) if workers > 1 and len(chunks) > 1 else map(work, chunks)
    xn = x.numpy() if x.device.type == "cpu" else None  # uint8 index_copy_ is slow on CPU
    for rows, out, flags in results:
        if xn is not None:
            xn[rows] = out.numpy()
        else:
            x.index_copy_(0, torch.as_tensor(rows, device=device), out)
        if test:
            dull[rows] = flags
    return x, dull


def _quantize(rgb: torch.Tensor, channels: int) -> torch.Tensor:
    if channels == 1:
        rgb = (rgb[:, 0:1] * 0.299 + rgb[:, 1:2] * 0.587) + rgb[:, 2:3] * 0.114
    return (rgb * 255.0).round().clamp_(0, 255).to(torch.uint8)


def render(P: np.ndarray, resolution: int, channels: int = 3, supersample: int = 1,
           device: str | torch.device = "cpu") -> torch.Tensor:
    """Render parameter rows ``P`` [N, NUM_PARAMS] -> uint8 [N, channels, resolution, resolution].

    No dullness test: exactly these parameters (see :func:`render_indices` for the dataset's images).
    """
    P = np.asarray(P, dtype=np.float64).reshape(-1, NUM_PARAMS)
    device = torch.device(device)
    with _worker_threads(device) as workers:
        return _render_batch(P, resolution, channels, supersample, device, workers)[0]


# ----------------------------------------------------------------------------------------------
# No dull images: integer statistics of each render, deterministic re-draws
# ----------------------------------------------------------------------------------------------
def quality(x: torch.Tensor) -> dict:
    """Statistics of uint8 RGB images [N, 3, H, W] used to reject dull renders.

    std: luminance standard deviation; flat: largest fraction of pixels (on a 2x-subsampled grid)
    within one band of 13 grey levels; busy: fraction of pixels whose gradient exceeds 12 grey levels
    at 64 px (scaled by 64/H); noise: mean |Y - 3x3 mean| / (std + 1), high for speckle.  Images of
    128 px and more are first box-reduced to 64..127 px.  Exact: integer-valued float32 sums stay
    below 2^24 (row by row), so nothing depends on summation order or on the batch.
    """
    x = x.to(torch.float32)
    Y = x[:, 0] * 77  # integer luminance; integer-valued products and sums are exact (alpha too)
    Y.add_(x[:, 1], alpha=150).add_(x[:, 2], alpha=29).add_(128).mul_(1.0 / 256).floor_()
    N, H, W = Y.shape
    f = max(1, H // 64)
    if f > 1:  # exact box reduction (sums of at most 16 * 16 levels, then integer means)
        H2, W2 = H // f, W // f
        Y = torch.floor(Y[:, : H2 * f, : W2 * f].reshape(N, H2, f, W2, f).sum((2, 4)) * (1.0 / (f * f)))
        N, H, W = Y.shape
    n = H * W

    def total(v):  # exact sum per image: rows in float32 (< 2^24), then float64
        return v.sum(-1).double().sum(-1)

    s1, s2 = total(Y), total(Y * Y)
    std = ((s2 * n - s1 * s1) / (n * n)).clamp_min(0).sqrt()
    sub = Y[:, ::2, ::2].flatten(1)
    hist = torch.zeros(N, 256 + 13, dtype=torch.float32, device=Y.device)
    hist[:, 1:257].scatter_add_(1, sub.long(), torch.ones_like(sub))
    cs = hist.cumsum(1)
    flat_frac = (cs[:, 13:] - cs[:, :-13]).max(1).values.double() / max(1, sub.shape[1])
    g = (Y[:, :-1, 1:] - Y[:, :-1, :-1]).abs_().add_((Y[:, 1:, :-1] - Y[:, :-1, :-1]).abs_())
    thr = max(2, round(12 * 64 / max(H, 1)))
    busy = total(torch.gt(g, thr).to(torch.float32)) / max(1, (H - 1) * (W - 1))
    if H >= 3 and W >= 3:
        r3 = Y[:, :, :-2] + Y[:, :, 1:-1] + Y[:, :, 2:]
        S9 = r3[:, :-2] + r3[:, 1:-1] + r3[:, 2:]
        hf = total((Y[:, 1:-1, 1:-1] * 9).sub_(S9).abs_()) / (9 * (H - 2) * (W - 2))
    else:
        hf = torch.zeros(N, dtype=torch.float64, device=Y.device)
    noise = hf / (std + 1.0)
    return {"std": std, "flat": flat_frac, "busy": busy, "noise": noise}


def is_dull(x: torch.Tensor) -> np.ndarray:
    """uint8 RGB [N, 3, H, W] -> bool [N]: near-uniform, mostly flat, featureless or speckle noise."""
    q = quality(x)
    dull = (q["std"] < 12.0) | (q["flat"] > 0.8) | (q["busy"] < 0.06) | (q["noise"] > 0.5)
    return dull.cpu().numpy()


def render_indices(seed: int, indices, resolution: int = 64, channels: int = 3, family: str = "any",
                   supersample: int = 1, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``indices`` of the stream ``(seed, family)``.

    Returns uint8 [N, C, R, R] (on ``device``) and float32 params [N, NUM_PARAMS] (CPU).  Attempt 0
    is rendered for every image; dull ones are re-drawn with attempt 1, then 2, 3, 4-5, 6-8, 9-16
    (a round at once) and the first good one is kept (the last one if none is).
    """
    device = torch.device(device)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    N, R = idx.shape[0], int(resolution)
    x = torch.empty(N, channels, R, R, dtype=torch.uint8, device=device)
    Pout = np.zeros((N, NUM_PARAMS), dtype=np.float64)
    pending = np.arange(N)
    a0 = 0
    with _worker_threads(device) as workers:
        for r, width in enumerate(_ATTEMPT_ROUNDS):
            if pending.size == 0:
                break
            ci = np.repeat(pending, width)
            ca = np.tile(np.arange(a0, a0 + width), pending.size)
            P = sample_params(seed, idx[ci], ca, family)
            img, dull = _render_batch(P, R, channels, supersample, device, workers, test=True)
            ok = ~dull.reshape(pending.size, width)
            last = r == len(_ATTEMPT_ROUNDS) - 1
            good = ok.any(1) | last
            pick = np.where(ok.any(1), ok.argmax(1), width - 1)
            sel = np.nonzero(good)[0]
            src = sel * width + pick[sel]
            if device.type == "cpu":
                x.numpy()[pending[sel]] = img.numpy()[src]
            else:
                x.index_copy_(0, torch.as_tensor(pending[sel], device=device), img[torch.as_tensor(src, device=device)])
            Pout[pending[sel]] = P[src]
            pending = pending[~good]
            a0 += width
    return x, torch.as_tensor(Pout, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------
_CACHE_VERSION = 1
_AUTO_MEMORY_CACHE_BYTES = 256 << 20


def _as_indices(indices) -> np.ndarray:
    """Indices as int64 [N]: a tensor, array, range, sequence or iterable of ints, or one int."""
    if isinstance(indices, torch.Tensor):
        arr = indices.detach().cpu().numpy()
    elif isinstance(indices, (int, np.integer)):
        arr = np.asarray([indices])
    elif isinstance(indices, range):
        arr = np.arange(indices.start, indices.stop, indices.step)
    elif isinstance(indices, np.ndarray):
        arr = indices
    else:
        arr = np.asarray(list(indices))
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"fractal indices must be integers, got {arr.dtype}")
    return arr.astype(np.int64).reshape(-1)


class FractalDataset(Dataset):
    """``n`` procedural fractal images; image ``i`` is a pure function of (seed, i, family, options).

    ``get(indices)`` renders the missing images of a batch at once (on ``device``) and returns them as
    uint8 [N, C, R, R] on the CPU with their parameters (float32 [N, P], names in ``param_names``);
    ``render_params(batch.params)`` reproduces the images exactly.

    Caches: ``memory_cache`` keeps every rendered image in a preallocated array (default: on when all
    n images fit in 256 MiB); ``cache_dir`` adds a transparent on-disk cache (raw memory-mapped
    arrays plus a rendered-mask, keyed by a hash of the options), shared by processes and runs.
    """

    def __init__(self, family: str = "any", n: int = 50_000, resolution: int = 64, channels: int = 3,
                 seed: int = 0, supersample: int = 1, cache_dir: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", memory_cache: bool | None = None):
        if family not in FAMILIES:
            raise DataError(f"unknown fractal family {family!r}; choose one of {', '.join(FAMILIES)}")
        n, resolution, channels, supersample = int(n), int(resolution), int(channels), int(supersample)
        if n < 1:
            raise DataError(f"a fractal dataset needs n >= 1 images, got {n}")
        if not 4 <= resolution <= 1024:
            raise DataError(f"fractal resolution must be between 4 and 1024, got {resolution}")
        if channels not in (1, 3):
            raise DataError(f"fractal channels must be 1 or 3, got {channels}")
        if not 1 <= supersample <= 8:
            raise DataError(f"supersample must be between 1 and 8, got {supersample}")
        self.family, self.n, self.seed = family, n, int(seed)
        self.resolution, self.channels, self.supersample = resolution, channels, supersample
        self.device = torch.device(device)
        self.param_names = list(PARAM_NAMES)
        self.category_names = {"family": list(_FAMILY_NAMES)}  # for legends of latent maps
        self.info = DataInfo(kind="image", resolution=resolution, channels=channels, num_classes=0,
                             num_params=NUM_PARAMS, name=f"fractals:{family}")
        per_image = channels * resolution * resolution
        self._use_memory = (n * per_image <= _AUTO_MEMORY_CACHE_BYTES) if memory_cache is None else bool(memory_cache)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._mem = None  # (x [n, C, R, R] uint8, params [n, P] float32, rendered mask np.bool_ [n])
        self._disk = None  # (x memmap, params memmap, mask memmap)

    def __len__(self) -> int:
        return self.n

    def options(self) -> dict:
        return {"version": _CACHE_VERSION, "family": self.family, "n": self.n, "resolution": self.resolution,
                "channels": self.channels, "seed": self.seed, "supersample": self.supersample}

    def cache_key(self) -> str:
        return hashlib.sha1(json.dumps(self.options(), sort_keys=True).encode()).hexdigest()[:16]

    # -- rendering ------------------------------------------------------------------------------
    def render(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Render ``indices`` (no caches): (uint8 [N, C, R, R] CPU, float32 params [N, P])."""
        idx = self._check(_as_indices(indices))
        x, p = render_indices(self.seed, idx, self.resolution, self.channels, self.family, self.supersample,
                              self.device)
        return x.cpu(), p

    def render_params(self, params) -> torch.Tensor:
        """The images of parameter rows (e.g. ``batch.params``): uint8 [N, C, R, R] on the CPU."""
        P = torch.as_tensor(params).detach().cpu().double().numpy()
        return render(P, self.resolution, self.channels, self.supersample, self.device).cpu()

    def _check(self, idx: np.ndarray) -> np.ndarray:
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            bad = idx[(idx < 0) | (idx >= self.n)][0]
            raise IndexError(f"fractal index {int(bad)} out of range for a dataset of {self.n} images")
        return idx

    def get(self, indices) -> Batch:
        idx = self._check(_as_indices(indices))
        C, R = self.channels, self.resolution
        if idx.size == 0:
            return Batch(torch.zeros(0, C, R, R, dtype=torch.uint8), None, torch.zeros(0, NUM_PARAMS))
        uniq, inv = np.unique(idx, return_inverse=True)
        x = torch.empty(len(uniq), C, R, R, dtype=torch.uint8)
        p = torch.empty(len(uniq), NUM_PARAMS, dtype=torch.float32)
        have = np.zeros(len(uniq), dtype=bool)
        mem = self._memory()
        if mem is not None:
            have = mem[2][uniq]
            if have.any():
                sel = torch.as_tensor(np.nonzero(have)[0])
                src = torch.as_tensor(uniq[have])
                x[sel], p[sel] = mem[0][src], mem[1][src]
        disk = self._open_disk()
        if disk is not None and not have.all():
            want = np.nonzero(~have)[0]
            on_disk = want[disk[2][uniq[want]] == 1]
            if on_disk.size:
                rows = uniq[on_disk]
                x[torch.as_tensor(on_disk)] = torch.from_numpy(np.ascontiguousarray(disk[0][rows]))
                p[torch.as_tensor(on_disk)] = torch.from_numpy(np.ascontiguousarray(disk[1][rows]))
                have[on_disk] = True
                if mem is not None:
                    self._store_memory(rows, x[torch.as_tensor(on_disk)], p[torch.as_tensor(on_disk)])
        missing = np.nonzero(~have)[0]
        if missing.size:
            xr, pr = self.render(uniq[missing])
            sel = torch.as_tensor(missing)
            x[sel], p[sel] = xr, pr
            if mem is not None:
                self._store_memory(uniq[missing], xr, pr)
            if disk is not None:
                rows = uniq[missing]
                disk[0][rows] = xr.numpy()
                disk[1][rows] = pr.numpy()
                disk[2][rows] = 1  # written after the data it vouches for
        if len(uniq) == len(idx) and (np.diff(idx) > 0).all():
            return Batch(x, None, p)
        inv_t = torch.as_tensor(inv.reshape(-1))
        return Batch(x[inv_t], None, p[inv_t])

    # -- caches -----------------------------------------------------------------------------------
    def _memory(self):
        if not self._use_memory:
            return None
        if self._mem is None:  # pages are only committed when written
            C, R = self.channels, self.resolution
            self._mem = (torch.empty(self.n, C, R, R, dtype=torch.uint8), torch.empty(self.n, NUM_PARAMS),
                         np.zeros(self.n, dtype=bool))
        return self._mem

    def _store_memory(self, rows: np.ndarray, x: torch.Tensor, p: torch.Tensor) -> None:
        mem = self._mem
        r = torch.as_tensor(rows)
        mem[0][r] = x
        mem[1][r] = p
        mem[2][rows] = True

    def cache_paths(self) -> tuple[Path, Path, Path] | None:
        if self.cache_dir is None:
            return None
        base = self.cache_dir / f"fractals-{self.family}-{self.resolution}px-{self.cache_key()}"
        return (base.with_name(base.name + ".images.u8"), base.with_name(base.name + ".params.f32"),
                base.with_name(base.name + ".rendered.u8"))

    def _open_disk(self):
        if self.cache_dir is None:
            return None
        if self._disk is None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            C, R, n = self.channels, self.resolution, self.n
            specs = ((np.uint8, (n, C, R, R)), (np.float32, (n, NUM_PARAMS)), (np.uint8, (n,)))
            maps = []
            for path, (dtype, shape) in zip(self.cache_paths(), specs):
                size = int(np.prod(shape)) * np.dtype(dtype).itemsize
                with open(path, "ab") as f:  # create if missing, never truncate what is there
                    if f.tell() != size:
                        if f.tell() > size:
                            raise DataError(f"fractal cache file {path} has an unexpected size; delete it")
                        f.truncate(size)  # sparse zeros: "not rendered"
                maps.append(np.memmap(path, dtype=dtype, mode="r+", shape=shape))
            meta = self.cache_dir / f"fractals-{self.cache_key()}.json"
            if not meta.exists():
                meta.write_text(json.dumps(self.options(), indent=1))
            self._disk = tuple(maps)
        return self._disk

    def clear_memory_cache(self) -> None:
        self._mem = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_mem"] = None  # workers build their own; memmaps are reopened lazily
        state["_disk"] = None
        return state


# ----------------------------------------------------------------------------------------------
# Export to a folder of PNGs
# ----------------------------------------------------------------------------------------------
#: the grid ``export`` writes next to the images (a hidden name: image folders skip it)
PREVIEW_NAME = ".preview.png"


def export(out: str | os.PathLike, n: int, resolution: int = 64, seed: int = 0, family: str = "any",
           channels: int = 3, supersample: int = 1, progress: bool = True, batch_size: int = 256,
           device: str | torch.device = "cpu") -> Path:
    """Write ``out/000000.png ...``, ``out/params.jsonl`` (one object per image) and ``out/.preview.png``
    (a grid of the first 64; hidden, so that training on ``out`` as an image folder sees only the n
    images).

    Renders in batches of ``batch_size`` with a tqdm progress bar when ``progress``.  Returns ``out``.
    """
    from tqdm import tqdm

    from ..viz.grid import save_image, to_pil

    n = int(n)
    if n < 1:
        raise DataError(f"export needs n >= 1 images, got {n}")
    ds = FractalDataset(family=family, n=n, resolution=resolution, channels=channels, seed=seed,
                        supersample=supersample, device=device, memory_cache=False)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    digits = max(6, len(str(n - 1)))
    preview = []
    bs = max(1, int(batch_size))
    with open(out / "params.jsonl", "w") as f, tqdm(total=n, unit="img", disable=not progress,
                                                    desc=f"fractals:{family}") as bar:
        for start in range(0, n, bs):
            stop = min(n, start + bs)
            batch = ds.get(range(start, stop))
            for j in range(stop - start):
                i = start + j
                to_pil(batch.x[j]).save(out / f"{i:0{digits}d}.png", format="PNG")
                f.write(json.dumps({"index": i, "seed": int(seed), **describe_params(batch.params[j])}) + "\n")
            if len(preview) < 64:
                preview.extend(batch.x[: 64 - len(preview)])
            bar.update(stop - start)
    save_image(torch.stack(preview), out / PREVIEW_NAME, upscale=max(1, 128 // int(resolution)) if resolution < 64 else 1)
    return out
