"""β_neg schedules for Soft-IntroVAE / AS-IntroVAE, and the KL-gap monitor they share.

β_neg weighs the KL of generated images inside the encoder's exp(−2s·ELBO) term (methods.md §5).
The encoder pushes KL(E(fake)) up only while that term has gradient: the gradient of
exp(−2s·β_neg·KL) with respect to KL is −2s·β_neg·exp(−2s·β_neg·KL), largest in magnitude at KL = 0
and decaying on the scale KL ~ 1/(2s·β_neg), so the KL the encoder sustains on fakes scales like
1/β_neg. Hence the rule of the official code and of
methods.md: when KL(fake) − KL(real) turns negative (the encoder no longer tells fakes from data),
*lower* β_neg; a large β_neg is the stable setting (seed 003: "256 is more stable but slower"),
a small one the sharp-but-fragile one.

A schedule is an ``nn.Module`` held by the method, so its state (buffers) is part of the method's
``state_dict``: snapshots and training states carry it and resume is exact. The method consults
``value(ctx)`` in its encoder phase; the decoder phase logs each step's gap and the method's
``on_step_end`` reports it with ``observe``, which acts once per optimisation step (it ignores
repeated calls for the same step). Losses change no state, so calling one twice (tests, dry runs)
changes nothing.

Schedules (``make_beta_neg_schedule``):
- ``constant``: β_neg.
- ``piecewise``: a step function of kimg, ``points = ((kimg, value), ...)``: the value of the last
  point whose kimg is <= the current kimg (the first value before it). What seed 003's user did by
  hand.
- ``adaptive``: log β_neg moves at ``rate`` per kimg to keep the smoothed relative gap
  ρ = (KL(fake) − KL(real)) / max(KL(real), 1) inside ``band``: ρ < band[0] → lower β_neg,
  ρ > band[1] → raise it (back toward stability); clamped to ``bounds`` (seed 003: 4..256).

Every schedule monitors the smoothed gap and warns once (``KLGapWarning``) when it has stayed
negative for ``warn_kimg``, naming the remedy. The first ``smooth_kimg`` after the first observation
is a settling window: the smoothed values restart from each raw value and nothing adapts or warns.
When the introspective terms switch on after a VAE warm-up, KL(real) jumps for about a kimg (32 px
fractals: gap −66 nats averaged over 2.0–2.5 kimg, then +13 to +23); smoothing that transient in
kept the gap "negative" for over 2 kimg and raised a false warning.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
from torch import nn

__all__ = ["KLGapWarning", "BetaNegSchedule", "ConstantBetaNeg", "PiecewiseBetaNeg", "AdaptiveBetaNeg",
           "make_beta_neg_schedule", "SCHEDULES"]

SCHEDULES = ("constant", "piecewise", "adaptive")


class KLGapWarning(UserWarning):
    """KL(fake) − KL(real) stayed negative: the adversarial part of Soft-IntroVAE stopped working."""


class BetaNegSchedule(nn.Module):
    """Base: the KL-gap monitor (smoothed gap, negative-since, warned-once) in buffers.

    ``smooth_kimg`` is the half-life, in thousands of images, of the exponential smoothing of the
    gap and of KL(real); counting in images keeps it independent of the batch size.
    """

    kind = "base"

    def __init__(self, warn_kimg: float = 2.0, smooth_kimg: float = 1.0, name: str = "soft_intro_vae"):
        super().__init__()
        self.warn_kimg, self.smooth_kimg, self.method_name = float(warn_kimg), float(smooth_kimg), name
        f64 = dict(dtype=torch.float64)
        self.register_buffer("gap_ema", torch.zeros((), **f64))
        self.register_buffer("kl_real_ema", torch.zeros((), **f64))
        self.register_buffer("last_step", torch.full((), -1.0, **f64))
        self.register_buffer("last_kimg", torch.zeros((), **f64))
        self.register_buffer("start_kimg", torch.zeros((), **f64))  # first observation (settling window)
        self.register_buffer("neg_since_kimg", torch.full((), -1.0, **f64))  # -1: gap not negative
        self.register_buffer("warned", torch.zeros((), **f64))

    # ---- consulted by the losses --------------------------------------------------------------
    def value(self, ctx) -> float:
        raise NotImplementedError

    def observe(self, gap: float, kl_real: float, ctx) -> None:
        """Record this step's KL(fake) − KL(real) and KL(real); acts once per optimisation step."""
        if ctx.step <= int(self.last_step):
            return
        gap, kl_real = float(gap), float(kl_real)  # already rank means: the loop averages logged values
        if not (math.isfinite(gap) and math.isfinite(kl_real)):  # a skipped (non-finite) step teaches nothing
            return
        with torch.no_grad():
            first = int(self.last_step) < 0
            if first:
                self.start_kimg.fill_(ctx.kimg)
            settled_at = float(self.start_kimg) + self.smooth_kimg
            settling = ctx.kimg < settled_at
            fresh = first or settling or float(self.last_kimg) < settled_at  # restart from the raw value
            dk = 0.0 if first else max(0.0, ctx.kimg - float(self.last_kimg))
            a = 1.0 if fresh or self.smooth_kimg <= 0 else 1.0 - 0.5 ** (dk / self.smooth_kimg)
            self.gap_ema.lerp_(torch.full_like(self.gap_ema, gap), a)
            self.kl_real_ema.lerp_(torch.full_like(self.kl_real_ema, kl_real), a)
            self.last_step.fill_(ctx.step)
            self.last_kimg.fill_(ctx.kimg)
            if settling:
                return
            self._adapt(dk)
        self._monitor(ctx)

    def _adapt(self, dkimg: float) -> None:
        pass

    def _monitor(self, ctx) -> None:
        if float(self.gap_ema) >= 0:
            self.neg_since_kimg.fill_(-1.0)
            return
        if float(self.neg_since_kimg) < 0:
            self.neg_since_kimg.fill_(ctx.kimg)
        span = ctx.kimg - float(self.neg_since_kimg)
        if span >= self.warn_kimg and not bool(self.warned):
            self.warned.fill_(1.0)
            warnings.warn(self.warning_text(span, ctx), KLGapWarning, stacklevel=3)

    def warning_text(self, span: float, ctx) -> str:
        return (f"{self.method_name}: KL(fake) - KL(real) has stayed negative for {span:.2f} kimg "
                f"(smoothed gap {float(self.gap_ema):.3g} nats at {ctx.kimg:.2f} kimg): the encoder no longer "
                f"separates generated images from data, so samples stop improving. {self.remedy(ctx)}")

    def remedy(self, ctx) -> str:
        beta = self.value(ctx)
        return (f"Remedy: lower beta_neg (now {beta:.4g}; e.g. --set beta_neg={max(beta / 4, 1e-3):.4g}), or use "
                "--set beta_neg_schedule=adaptive")

    def extra_repr(self) -> str:
        return f"kind={self.kind}"


class ConstantBetaNeg(BetaNegSchedule):
    kind = "constant"

    def __init__(self, value: float, **kw):
        super().__init__(**kw)
        self.beta = float(value)

    def value(self, ctx) -> float:
        return self.beta


class PiecewiseBetaNeg(BetaNegSchedule):
    """Step function of kimg: ``points`` = ((kimg, value), ...), sorted by kimg."""

    kind = "piecewise"

    def __init__(self, points: Sequence[Sequence[float]], **kw):
        super().__init__(**kw)
        pts = sorted((float(k), float(v)) for k, v in points)
        if not pts:
            raise ValueError("piecewise beta_neg schedule needs at least one (kimg, value) point")
        self.points = pts

    def value(self, ctx) -> float:
        v = self.points[0][1]
        for k, val in self.points:
            if ctx.kimg >= k:
                v = val
        return v


class AdaptiveBetaNeg(BetaNegSchedule):
    """Keeps the relative KL gap in ``band`` by moving log β_neg at ``rate`` per kimg, in ``bounds``."""

    kind = "adaptive"

    def __init__(self, init: float, bounds: Sequence[float] = (4.0, 256.0), band: Sequence[float] = (0.05, 1.0),
                 rate: float = 0.5, **kw):
        super().__init__(**kw)
        self.bounds, self.band, self.rate = (float(bounds[0]), float(bounds[1])), (float(band[0]), float(band[1])), float(rate)
        if not self.bounds[0] <= init <= self.bounds[1]:
            raise ValueError(f"adaptive beta_neg: initial value {init} outside beta_neg_range {self.bounds}")
        self.register_buffer("log_beta", torch.tensor(math.log(init), dtype=torch.float64))

    def value(self, ctx) -> float:
        return float(self.log_beta.exp())

    def relative_gap(self) -> float:
        return float(self.gap_ema) / max(float(self.kl_real_ema), 1.0)

    def _adapt(self, dkimg: float) -> None:
        rho = self.relative_gap()
        step = self.rate * dkimg
        if rho < self.band[0]:
            self.log_beta.sub_(step)  # gap collapsing: the documented remedy, lower β_neg
        elif rho > self.band[1]:
            self.log_beta.add_(step)  # comfortable gap: drift back toward the stable, larger β_neg
        self.log_beta.clamp_(math.log(self.bounds[0]), math.log(self.bounds[1]))

    def remedy(self, ctx) -> str:
        lo, hi = self.bounds
        lower = f"--set 'beta_neg_range=[{max(lo / 4, 1e-3):.4g},{hi:.4g}]'"
        if self.value(ctx) <= lo * (1 + 1e-9):
            return (f"The adaptive schedule already sits at its lower bound {lo:.4g}: lower beta_neg_range "
                    f"(e.g. {lower})")
        return (f"The adaptive schedule is lowering beta_neg already (now {self.value(ctx):.4g}, range "
                f"{lo:.4g}..{hi:.4g}); if the gap stays negative, lower beta_neg_range (e.g. {lower})")


def make_beta_neg_schedule(cfg, name: str = "soft_intro_vae") -> BetaNegSchedule:
    """The schedule a Soft-IntroVAE config asks for (fields beta_neg, beta_neg_schedule, ...)."""
    kw = dict(warn_kimg=cfg.gap_warn_kimg, smooth_kimg=cfg.gap_smooth_kimg, name=name)
    kind = cfg.beta_neg_schedule
    if kind == "constant":
        return ConstantBetaNeg(cfg.beta_neg, **kw)
    if kind == "piecewise":
        return PiecewiseBetaNeg(cfg.beta_neg_points, **kw)
    if kind == "adaptive":
        return AdaptiveBetaNeg(cfg.beta_neg, cfg.beta_neg_range, cfg.gap_band, cfg.beta_neg_rate, **kw)
    raise ValueError(f"beta_neg_schedule must be one of {', '.join(SCHEDULES)}; got {kind!r}")
