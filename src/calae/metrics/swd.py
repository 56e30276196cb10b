"""Sliced Wasserstein distance between Laplacian-pyramid patch distributions.

Protocol of Karras et al., "Progressive Growing of GANs" (ICLR 2018), Appendix D, as implemented in
their ``metrics/sliced_wasserstein.py`` (checked; written anew here in torch):

- Laplacian pyramid with the 5-tap binomial filter [1 4 6 4 1]/16 (separable, i.e. the 5x5 filter
  /256 of cv2.pyrDown), borders mirrored without repeating the edge pixel (scipy "mirror" ==
  torch "reflect"); one level per resolution from the full size down to 16 px. The coarsest level
  is the low-pass image itself, the others are band-pass differences.
- From every level, 128 random 7x7 neighbourhoods per image (centres drawn so the patch lies inside
  the image), all channels: descriptors of C*7*7 numbers.
- Each *set* of descriptors (reals, then fakes) is normalised per channel by its own mean and
  standard deviation (population std). This is what the official code does; it makes SWD blind to a
  global per-channel gain/offset of one level, so pass ``normalize="combined"`` to normalise both
  sets with the statistics of their union instead (sensitive to colour/contrast shifts, not
  comparable with published numbers).
- SWD per level: 4 repeats x 128 random unit directions (512 projections in all), sort the
  projections of each set, mean absolute difference, averaged over directions then repeats.
- Values are multiplied by 1e3, as the official code reports them ("SWDx1e3"); "avg" is the mean
  over levels.

Differences from the official code: any channel count (it asserts 3); images smaller than 16 px get
one level (the image itself) instead of none; a channel with zero spread is divided by 1 instead of
producing NaN; randomness comes from one seeded torch.Generator.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Separable 5x5 binomial filter (times gain), mirrored borders. x: [N, C, H, W] float."""
    c = x.shape[1]
    k = (_BINOMIAL * gain**0.5).to(x)
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """Blur then keep even rows/columns (cv2.pyrDown)."""
    return _blur(x)[:, :, ::2, ::2]


def pyr_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-insertion upsampling then blur with gain 4 (cv2.pyrUp), cropped to size."""
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    return _blur(up, gain=4.0)[:, :, : size[0], : size[1]]


def laplacian_pyramid(x: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """[band-pass at full size, ..., low-pass at the coarsest size]."""
    levels = [x.float()]
    for _ in range(1, num_levels):
        low = pyr_down(levels[-1])
        levels[-1] = levels[-1] - pyr_up(low, levels[-1].shape[-2:])
        levels.append(low)
    return levels


def pyramid_resolutions(res: int, min_res: int = 16) -> list[int]:
    out = []
    while res >= min_res:
        out.append(res)
        res //= 2
    return out or [res]


def _patches(level: torch.Tensor, per_image: int, size: int, g: torch.Generator) -> torch.Tensor:
    """per_image random size x size neighbourhoods of every image: [N*per_image, C, size, size]."""
    n, c, h, w = level.shape
    r = size // 2
    m = n * per_image
    img = torch.arange(n).repeat_interleave(per_image)
    cy = torch.randint(r, h - r, (m,), generator=g)
    cx = torch.randint(r, w - r, (m,), generator=g)
    off = torch.arange(-r, r + 1)
    rows = (cy[:, None] + off)[:, :, None]  # [M, size, 1]
    cols = (cx[:, None] + off)[:, None, :]  # [M, 1, size]
    nhwc = level.permute(0, 2, 3, 1)
    return nhwc[img[:, None, None], rows, cols].permute(0, 3, 1, 2)  # [M, C, size, size]


def _channel_stats(desc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = desc.double()
    mean = d.mean(dim=(0, 2, 3), keepdim=True)
    std = d.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def _normalise(desc: torch.Tensor, stats) -> torch.Tensor:
    mean, std = stats
    return ((desc.double() - mean) / std).float().reshape(desc.shape[0], -1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, g: torch.Generator, dir_repeats: int = 4,
                       dirs_per_repeat: int = 128, dir_chunk: int = 32) -> float:
    """SWD between two equally sized point sets a, b: [M, D] (no 1e3 factor).

    Directions are projected dir_chunk at a time to bound memory (M x dir_chunk per sort).
    """
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    at, bt = a.float().T.contiguous(), b.float().T.contiguous()  # [D, M]
    results = []
    for _ in range(dir_repeats):
        dirs = torch.randn(a.shape[1], dirs_per_repeat, generator=g)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)  # [D, dirs] unit columns
        total = 0.0
        for s in range(0, dirs_per_repeat, dir_chunk):
            d = dirs[:, s : s + dir_chunk].T.contiguous()  # [chunk, D]
            # Projections with torch's matmul, sorted by numpy: on CPU numpy's sort along contiguous
            # rows is several times faster than torch's.
            pa = np.sort((d @ at).numpy(), axis=1)  # [chunk, M] sorted projections
            pb = np.sort((d @ bt).numpy(), axis=1)
            total += float(np.abs(pa - pb).sum(dtype=np.float64))
        results.append(total / (a.shape[0] * dirs_per_repeat))
    return float(sum(results) / len(results))


def swd(real: torch.Tensor, fake: torch.Tensor, seed: int = 0, *, nhood_size: int = 7,
        nhoods_per_image: int = 128, dir_repeats: int = 4, dirs_per_repeat: int = 128,
        min_res: int = 16, normalize: str = "separate", batch_size: int = 256) -> dict[str, float]:
    """SWDx1e3 per pyramid level and their average between two image sets.

    real, fake: [N, C, H, W], both uint8 or both float in the same range, same N (the descriptor
    sets must have equal size). Returns {"<res>": value per level (e.g. "32", "16"), "avg": mean}.
    """
    if real.dim() != 4 or real.shape != fake.shape:
        raise ValueError(f"swd needs two [N, C, H, W] sets of equal shape, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if (real.dtype == torch.uint8) != (fake.dtype == torch.uint8):
        raise ValueError("swd: pass both sets as uint8 or both as float in the same range")
    if normalize not in ("separate", "combined"):
        raise ValueError(f"swd: normalize must be 'separate' or 'combined', got {normalize!r}")
    h, w = real.shape[-2:]
    if min(h, w) < nhood_size:
        raise ValueError(f"swd needs images of at least {nhood_size} px, got {h}x{w}")
    resolutions = pyramid_resolutions(int(h), min_res)
    # Coarser levels than the patch size cannot hold a neighbourhood.
    while len(resolutions) > 1 and min(h, w) >> (len(resolutions) - 1) < nhood_size:
        resolutions.pop()
    g = torch.Generator().manual_seed(int(seed))

    def descriptors(images: torch.Tensor, lod: int) -> torch.Tensor:
        # One level at a time (the pyramid is recomputed per level) to bound memory.
        out = []
        for s in range(0, images.shape[0], batch_size):
            # Level lod is band-pass only once level lod + 1 exists; the last level stays low-pass.
            level = laplacian_pyramid(images[s : s + batch_size].float(), min(lod + 2, len(resolutions)))[lod]
            out.append(_patches(level, nhoods_per_image, nhood_size, g))
        return torch.cat(out)

    out: dict[str, float] = {}
    for lod, res in enumerate(resolutions):
        dr, df = descriptors(real, lod), descriptors(fake, lod)
        if normalize == "separate":
            a, b = _normalise(dr, _channel_stats(dr)), _normalise(df, _channel_stats(df))
        else:
            stats = _channel_stats(torch.cat([dr, df]))
            a, b = _normalise(dr, stats), _normalise(df, stats)
        del dr, df
        out[str(res)] = 1e3 * sliced_wasserstein(a, b, g, dir_repeats, dirs_per_repeat)
    out["avg"] = float(sum(out.values()) / len(resolutions))
    return out
