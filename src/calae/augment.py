"""Differentiable augmentation for tiny image sets (DiffAugment, Zhao et al., NeurIPS 2020).

The same random transform family is applied to real and generated images alike, inside the losses,
and every operation is differentiable in the image, so a generator's gradient flows through it.
Augmenting only the reals (or only the fakes) lets the critic learn the augmentation instead of the
data; applying it to both is what keeps the augmentation from leaking (DiffAugment §3).

Operations (DiffAugment's magnitudes; images in [-1, 1] or [0, 1], per-image random draws from the
global torch RNG, which the training loop saves and restores for an exact resume):
- ``color``: brightness x + (u − ½); saturation (x − mean_c)·2u + mean_c; contrast
  (x − mean_chw)·(u + ½) + mean_chw (saturation is the identity on one-channel images).
- ``translation``: an integer shift of up to ``translation_ratio``·size pixels on each axis, zero
  filled.
- ``cutout``: a square of side ``cutout_ratio``·size set to zero at a random centre.
``p`` is the probability that each operation is applied to each image (1.0 = DiffAugment); with
p < 1 unaugmented images stay in the mix (ADA's argument against leaking).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["DiffAugment", "POLICIES", "parse_policy"]

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
    """'translation, color' -> ('translation', 'color'); '' or 'none' -> ()."""
    ops = tuple(p.strip().lower() for p in str(policy or "").split(",") if p.strip())
    if ops == ("none",):
        return ()
    bad = [o for o in ops if o not in POLICIES]
    if bad:
        raise ValueError(f"augment: unknown operation(s) {', '.join(bad)}; choose from {', '.join(POLICIES)}")
    return ops


class DiffAugment:
    """Callable x [N, C, H, W] -> augmented x, differentiable in x. No parameters, no state."""

    def __init__(self, policy: str = "translation,color", p: float = 1.0, translation_ratio: float = 0.125,
                 cutout_ratio: float = 0.5):
        self.ops = parse_policy(policy)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augment_p must be in [0, 1]; got {p}")
        self.p, self.translation_ratio, self.cutout_ratio = float(p), float(translation_ratio), float(cutout_ratio)

    def __bool__(self) -> bool:
        return bool(self.ops) and self.p > 0

    def __repr__(self) -> str:
        return f"DiffAugment({','.join(self.ops)!r}, p={self.p})"

    def _on(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1, 1, 1] mask: 1 where this operation applies to the image."""
        if self.p >= 1.0:
            return torch.ones(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype)
        return (torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self.p).to(x.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self:
            return x
        for op in self.ops:
            x = getattr(self, op)(x)
        return x

    # ---- operations --------------------------------------------------------------------------
    def color(self, x: torch.Tensor) -> torch.Tensor:
        n, dt, dev = x.shape[0], x.dtype, x.device
        on = self._on(x)
        x = x + (torch.rand(n, 1, 1, 1, device=dev, dtype=dt) - 0.5) * on
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (1 + (torch.rand(n, 1, 1, 1, device=dev, dtype=dt) * 2 - 1) * on) + m
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - m) * (1 + (torch.rand(n, 1, 1, 1, device=dev, dtype=dt) - 0.5) * on) + m
        return x

    def translation(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        sh, sw = int(h * self.translation_ratio + 0.5), int(w * self.translation_ratio + 0.5)
        on = self._on(x).view(n, 1).long()
        ty = torch.randint(-sh, sh + 1, (n, 1), device=x.device) * on  # [N, 1]
        tx = torch.randint(-sw, sw + 1, (n, 1), device=x.device) * on
        # Gather from a zero-padded copy: output pixel (i, j) reads input (i − ty, j − tx), or the
        # zero border when that falls outside (indices clamped onto the one-pixel pad).
        iy = (torch.arange(h, device=x.device).view(1, h) - ty + 1).clamp(0, h + 1)  # [N, H]
        ix = (torch.arange(w, device=x.device).view(1, w) - tx + 1).clamp(0, w + 1)  # [N, W]
        pad = F.pad(x, (1, 1, 1, 1))  # [N, C, H+2, W+2]
        b = torch.arange(n, device=x.device).view(n, 1, 1)
        out = pad.permute(0, 2, 3, 1)[b, iy.view(n, h, 1), ix.view(n, 1, w)]  # [N, H, W, C]
        return out.permute(0, 3, 1, 2).contiguous()

    def cutout(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        ch, cw = max(1, int(h * self.cutout_ratio + 0.5)), max(1, int(w * self.cutout_ratio + 0.5))
        on = self._on(x).view(n, 1, 1)
        cy = torch.randint(0, h, (n, 1, 1), device=x.device)
        cx = torch.randint(0, w, (n, 1, 1), device=x.device)
        yy = torch.arange(h, device=x.device).view(1, h, 1)
        xx = torch.arange(w, device=x.device).view(1, 1, w)
        inside = ((yy - cy + ch // 2) >= 0) & ((yy - cy + ch // 2) < ch) & \
                 ((xx - cx + cw // 2) >= 0) & ((xx - cx + cw // 2) < cw)  # [N, H, W]
        keep = 1 - inside.to(x.dtype) * on
        return x * keep.unsqueeze(1)
