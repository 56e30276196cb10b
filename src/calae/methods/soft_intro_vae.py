"""Soft-IntroVAE (Daniel & Tamar, CVPR 2021) and AS-IntroVAE (Lu et al., ACML 2022); seed 003.

The encoder E plays the critic: it keeps the ELBO of real data high and pushes the ELBO of its
decoder's outputs (reconstructions and fakes G(z), z ~ N(0, I)) down through a soft exponential;
the decoder G makes its outputs look real to E. Notation as methods.md §5–6: L_r = Σ_pixels squared
error (batch mean), KL as the VAE, s = 1/(C·H·W) (2-D points: 1/2), t ∈ {rec = G(E(x)), fake = G(z)}.

Per optimisation step, on one batch, two phases (each one fresh forward; the loop freezes the other
network and steps one optimizer):

1. ``encoder`` (E learns, G frozen):
   ELBO_t = β_rec·L_r(t, G(E(t))) + β_neg·KL(E(t)) per item, t detached,
   L_E = s·(β_rec·L_r(x, G(E(x))) + β_kl·KL(E(x))) + ¼·Σ_t mean_b exp(−2s·ELBO_t).
2. ``decoder`` (G learns, E frozen), with the *same* z ~ q(z|x) sample and prior noise:
   L_G = s·[β_rec·L_r(x, G(z)) + ½β_kl·(KL(E(rec)) + KL(E(fake))) + ½γ_r·β_rec·(L_r(rec, G(E(rec))) +
   L_r(fake, G(E(fake))))]; the γ_r passes are skipped when γ_r < GAMMA_R_SKIP = 1e-6 (the default
   γ_r = 1e-8 skips them).

AS-IntroVAE replaces KL in the adversarial terms (both phases) by c·KL + (1−c)·dist, where dist is
the batch-level adversarial similarity distance between the posteriors of reconstructions and of
fakes (``as_distance``, μ and log σ² squashed by tanh) and c = min(1, tanh(5·t/T)) moves training
from the distance to the KL; samples use an EMA of G.

Decisions (methods.md "decide" items and defects of the official code not copied):
- Same z and noise in both phases: the encoder phase puts its draws (the detached z sample of x,
  the prior noise, the augmented real batch, KL(real)) in the step's shared cache
  (``ctx.cache["draws"]``) and the decoder phase of the same step reads them; nothing is kept on
  the method, and a resume starts at a step boundary, so the draws never need checkpointing. A
  decoder phase run without its encoder phase (a new context) draws fresh ones under no_grad.
  This reproduces the official computation exactly (its decoder reuses the z computed before E's
  update).
- The adversarial targets t are detached everywhere (the paper's formulation, methods.md "both
  detached"); the official encoder step leaves ``rec`` attached as the target of its re-reconstruction,
  which lets the exp term's gradient reach E through the real encoding.
- KL terms are always computed on the raw posteriors; AS-IntroVAE's official decoder step takes the
  KL of tanh-squashed μ and log σ² (so its logged KL(fake) and gap are not KLs): not copied. Only the
  distance sees the squashed values.
- The AS distance is normalised by the number of pairs (``as_reduce="mean"``, summed over latent
  dimensions) so that it has the scale of a per-item KL whatever the batch size; ``"sum"`` is the
  literal Σ_{i,j,dims} of methods.md (the official code sums in its encoder step and averages over
  pairs *and* dimensions in its decoder step).
- The annealing time t/T counts kimg after the warm-up, over ``anneal_kimg`` (0: the rest of the
  run's budget).
- EMA: the official 0.999 per step at batch b is a half-life of ln ½ / ln 0.999 = 692.8 steps =
  0.6928·b kimg (22.2 kimg at the official batch 32, 4.16 kimg at seed 003's batch 6); the loop
  takes half-lives in kimg (``ema_kimg``), see ``ema_kimg_for``.
- β_neg comes from a schedule object (``calae.schedules``) held by the method (state in buffers,
  so resume is exact). The encoder phase reads it; the decoder phase logs the step's
  KL(fake) − KL(real) and ``on_step_end`` reports it to the schedule (the losses change no state),
  which also drives the once-only negative-gap warning. The official
  CLI default β_neg = 1.0 (README: 256) and its ignored --gamma_r are not copied.
- One E and one G forward serve rec and fake together (concatenated along the batch): the same
  arithmetic as two calls without BatchNorm (GroupNorm is the default); with ``norm=batch`` batch
  statistics mix.
- Optional plain-VAE warm-up (``warmup_kimg``), gated by the Phase ``active`` schedule: one phase
  on the s-scaled VAE loss, one forward and backward, stepping the two optimizers the
  introspective phases use together, as the official code keeps one optimizer per network
  throughout (an unscaled warm-up would leave Adam second moments 1/s² too large for the scaled
  losses that follow). Two alternating phases (E, then G, one fresh forward each), as this
  module had before, learned far worse: 80 fractals at 64 px, batch 8, 500 steps, lr 5e-4,
  β_kl/β_rec = 0.04: 12.3 dB reconstruction PSNR with KL spiking to 2,700 nats, against 16.0 dB
  for the joint step. Expect KL(real) to jump when the exp terms switch on and to settle within
  about a kimg (64 px fractals: ~40 -> ~500 -> ~70 nats).
- Optional differentiable augmentation (``augment``, ``calae.augment``): every image the encoder
  sees (x, rec, fake) goes through T, and reconstruction targets are the encoder's inputs, so the
  model is a Soft-IntroVAE of the augmented distribution; translation and colour are the safe
  default for tiny sets, cutout can leak into samples because G reconstructs what E sees.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..augment import DiffAugment, parse_policy
from ..config import ConfigError, add_preset, add_tiny, check, check_choice, check_range
from ..data.base import Batch, DataInfo
from ..losses import kl_normal, recon_loss, reparameterize
from ..registry import METHODS, register
from ..schedules import SCHEDULES, make_beta_neg_schedule
from .base import OptimizerSpec, Phase, StepContext
from .vae import VAEBase, VAEConfig

__all__ = ["SoftIntroVAEConfig", "ASIntroVAEConfig", "SoftIntroVAE", "ASIntroVAE", "as_distance",
           "anneal_coefficient", "ema_kimg_for", "soft_intro_encoder_loss", "soft_intro_decoder_loss",
           "soft_intro_warmup_loss", "GAMMA_R_SKIP"]

GAMMA_R_SKIP = 1e-6  # γ_r below this: the re-reconstruction passes change nothing measurable; skip them


def ema_kimg_for(beta_per_step: float, batch_size: int) -> float:
    """EMA half-life in kimg equivalent to a per-step decay β at a batch size: b·ln ½ / (1000·ln β)."""
    return batch_size * math.log(0.5) / (1000.0 * math.log(beta_per_step))


@dataclass
class SoftIntroVAEConfig(VAEConfig):
    z_dim: int = 128
    beta_neg: float = 256.0  # constant value, or the adaptive schedule's start
    gamma_r: float = 1e-8
    beta_neg_schedule: str = "constant"  # constant | piecewise | adaptive
    beta_neg_points: tuple = ()  # piecewise: ((kimg, value), ...)
    beta_neg_range: tuple[float, float] = (4.0, 256.0)  # adaptive: bounds
    beta_neg_rate: float = 0.5  # adaptive: change of ln β_neg per kimg while the gap is out of band
    gap_band: tuple[float, float] = (0.05, 1.0)  # adaptive: target (KL_fake − KL_real) / max(KL_real, 1)
    gap_smooth_kimg: float = 1.0  # half-life of the gap's smoothing
    gap_warn_kimg: float = 2.0  # warn once when the smoothed gap stays negative this long
    warmup_kimg: float = 0.0  # plain-VAE training before the introspective phases
    augment: str = ""  # differentiable augmentation: comma list of translation, color, cutout
    augment_p: float = 1.0
    ema_kimg: float = 0.0  # half-life of the decoder EMA used for inference (0: none)

    def __post_init__(self):
        super().__post_init__()
        check_range("beta_neg", self.beta_neg, 0, lo_open=True)
        check_range("gamma_r", self.gamma_r, 0)
        check_choice("beta_neg_schedule", self.beta_neg_schedule, SCHEDULES)
        self.beta_neg_points = tuple(tuple(float(v) for v in p) for p in self.beta_neg_points)
        check(all(len(p) == 2 and p[1] > 0 for p in self.beta_neg_points),
              f"beta_neg_points must be (kimg, value > 0) pairs; got {self.beta_neg_points}")
        if self.beta_neg_schedule == "piecewise":
            check(len(self.beta_neg_points) > 0, "beta_neg_schedule=piecewise needs beta_neg_points, "
                  "e.g. --set 'beta_neg_points=[[0,256],[20,64]]'")
        self.beta_neg_range = tuple(float(v) for v in self.beta_neg_range)
        check(len(self.beta_neg_range) == 2 and 0 < self.beta_neg_range[0] <= self.beta_neg_range[1],
              f"beta_neg_range must be (low, high) with 0 < low <= high; got {self.beta_neg_range}")
        if self.beta_neg_schedule == "adaptive":
            lo, hi = self.beta_neg_range
            check(lo <= self.beta_neg <= hi, f"beta_neg (the adaptive start) must lie in beta_neg_range "
                  f"[{lo}, {hi}]; got {self.beta_neg}")
        check_range("beta_neg_rate", self.beta_neg_rate, 0)
        self.gap_band = tuple(float(v) for v in self.gap_band)
        check(len(self.gap_band) == 2 and self.gap_band[0] <= self.gap_band[1],
              f"gap_band must be (low, high) with low <= high; got {self.gap_band}")
        check_range("gap_smooth_kimg", self.gap_smooth_kimg, 0)
        check_range("gap_warn_kimg", self.gap_warn_kimg, 0)
        check_range("warmup_kimg", self.warmup_kimg, 0)
        try:
            parse_policy(self.augment)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        check_range("augment_p", self.augment_p, 0, 1)
        check_range("ema_kimg", self.ema_kimg, 0)


@dataclass
class ASIntroVAEConfig(SoftIntroVAEConfig):
    ema_kimg: float = 22.17  # 0.999 per step at the official batch 32 (ema_kimg_for(0.999, 32))
    anneal_kimg: float = 0.0  # T of c = min(1, tanh(5 t / T)), t counted after the warm-up; 0: the run's rest
    as_reduce: str = "mean"  # mean: Σ over pairs / pair count (batch-size free) | sum: literal Σ_{i,j,dims}

    def __post_init__(self):
        super().__post_init__()
        check_range("anneal_kimg", self.anneal_kimg, 0)
        check_choice("as_reduce", self.as_reduce, ("mean", "sum"))


class _KernelSum(torch.autograd.Function):
    """Σ_{i,j,d} exp(−(μ1_id − μ2_jd)² / (2 v)) / √v with v = var1_id + var2_jd, and its gradient.

    Works over blocks of rows of about ``chunk`` elements each, so the [rows, M, D] temporaries stay
    in cache, and computes the gradient in the same pass (it is only [N, D] + [M, D] numbers) instead
    of keeping autograd's ten intermediate N·M·D tensors: 3.3× faster forward + backward at batch 512,
    z 2 and 5.4× at batch 32, z 128 (``benchmarks/bench_as_distance.py``, one thread).
    With q = (μ1 − μ2)/√v and K the summand: ∂K/∂μ1 = −K·q/√v = −∂K/∂μ2, ∂K/∂v = K·(q² − 1)/(2v).
    """

    @staticmethod
    def forward(ctx, mu1, var1, mu2, var2, rows: int):
        grads = any(ctx.needs_input_grad[:4])
        tot = mu1.new_zeros(())
        if grads:
            g_mu1, g_var1 = torch.empty_like(mu1), torch.empty_like(var1)
            g_mu2, g_var2 = torch.zeros_like(mu2), torch.zeros_like(var2)
        for k in range(0, mu1.shape[0], rows):
            sl = slice(k, k + rows)
            r = (var1[sl, None, :] + var2[None, :, :]).rsqrt_()  # [rows, M, D] 1/√v
            q = (mu1[sl, None, :] - mu2[None, :, :]).mul_(r)
            kern = q.square().mul_(-0.5).exp_().mul_(r)
            tot += kern.sum()
            if grads:
                kr = kern.mul_(r)  # K/√v
                a = kr * q  # −∂K/∂μ1
                g_mu1[sl] = -a.sum(1)
                g_mu2 += a.sum(0)
                b = kr.mul_(r).mul_(q.square_().sub_(1.0)).mul_(0.5)  # ∂K/∂v
                g_var1[sl] = b.sum(1)
                g_var2 += b.sum(0)
        if grads:
            ctx.save_for_backward(g_mu1, g_var1, g_mu2, g_var2)
        return tot

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return (*(g * grad for g in ctx.saved_tensors), None)


def as_distance(mu_a: torch.Tensor, logvar_a: torch.Tensor, mu_b: torch.Tensor, logvar_b: torch.Tensor,
                reduce: str = "mean", chunk: int = 1 << 16) -> torch.Tensor:
    """AS-IntroVAE's batch distance between diagonal-Gaussian batches A and B (methods.md §6):

    S(P, Q) = Σ_{i∈P, j∈Q, d} exp(−(μ_id − μ_jd)² / (2(σ²_id + σ²_jd))) / √(σ²_id + σ²_jd),
    dist = S(A, A) + S(B, B) − 2·S(A, B)   (≥ 0: per dimension, √2π times the squared L2 distance
    between the two batches' mixture densities). ``reduce="mean"`` divides each S by its pair count.
    Inputs are used as given (the caller squashes them by tanh); half precision is computed in fp32.
    ``chunk``: elements per block of pairs (the block loop of ``_KernelSum``).
    """
    def s(mu1, lv1, mu2, lv2):
        n, m, d = mu1.shape[0], mu2.shape[0], mu1.shape[1]
        tot = _KernelSum.apply(mu1, lv1.exp(), mu2, lv2.exp(), max(1, chunk // max(1, m * d)))
        return tot / (n * m) if reduce == "mean" else tot

    mu_a, logvar_a, mu_b, logvar_b = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
                                      for t in (mu_a, logvar_a, mu_b, logvar_b))
    return s(mu_a, logvar_a, mu_a, logvar_a) + s(mu_b, logvar_b, mu_b, logvar_b) - 2 * s(mu_a, logvar_a, mu_b, logvar_b)


def anneal_coefficient(kimg: float, start_kimg: float, span_kimg: float) -> float:
    """c = min(1, tanh(5·t/T)) with t = kimg − start (clipped at 0) and T = span (AS-IntroVAE)."""
    if span_kimg <= 0:
        return 1.0
    return min(1.0, math.tanh(5.0 * max(0.0, kimg - start_kimg) / span_kimg))


@dataclass
class _Draws:
    """What the encoder phase drew, for the decoder phase of the same step (``ctx.cache``)."""

    x: torch.Tensor  # [N, ...] the (augmented) real batch: reconstruction target
    z: torch.Tensor  # [N, z] sample of q(z|x), detached
    noise: torch.Tensor  # [N, z] prior sample for the fakes
    kl_real: torch.Tensor  # scalar, detached


@register(METHODS, "soft_intro_vae")
class SoftIntroVAE(VAEBase):
    name = "soft_intro_vae"
    Config = SoftIntroVAEConfig
    uses_as_distance = False

    def __init__(self, cfg: SoftIntroVAEConfig, info: DataInfo):
        super().__init__(cfg, info)
        if cfg.augment and info.kind != "image":
            raise ConfigError("augment applies to images only; leave it empty for 2-D points")
        self.scale = 1.0 / info.numel  # s = 1/(C·H·W); 2-D points: 1/2
        self.augment = DiffAugment(cfg.augment, cfg.augment_p)
        self.beta_neg_schedule = make_beta_neg_schedule(cfg, self.name)
        if cfg.ema_kimg > 0:
            self.make_ema(("G",))

    def ema_halflife_kimg(self) -> float:
        return self.cfg.ema_kimg

    # ---- training description ------------------------------------------------------------------
    def optimizers(self):
        c = self.cfg
        return {"E": OptimizerSpec(("E",), c.lr, tuple(c.betas)), "G": OptimizerSpec(("G",), c.lr, tuple(c.betas))}

    def phases(self):
        warm = self.cfg.warmup_kimg
        if warm <= 0:
            return [Phase("encoder", ("E",), "E", soft_intro_encoder_loss),
                    Phase("decoder", ("G",), "G", soft_intro_decoder_loss)]
        before, after = (lambda ctx: ctx.kimg < warm), (lambda ctx: ctx.kimg >= warm)
        return [Phase("warmup", ("E", "G"), ("E", "G"), soft_intro_warmup_loss, active=before),
                Phase("encoder", ("E",), "E", soft_intro_encoder_loss, active=after),
                Phase("decoder", ("G",), "G", soft_intro_decoder_loss, active=after)]

    # ---- pieces the losses share -----------------------------------------------------------------
    def beta_neg(self, ctx: StepContext) -> float:
        return self.beta_neg_schedule.value(ctx)

    def anneal(self, ctx: StepContext) -> float:
        """Weight c of the KL against the AS distance in the adversarial terms (1: pure KL)."""
        return 1.0

    def adversarial_distance(self, mu: torch.Tensor, logvar: torch.Tensor, n: int) -> torch.Tensor:
        """AS distance between the first n posteriors (reconstructions) and the rest (fakes)."""
        sq_mu, sq_lv = torch.tanh(mu), torch.tanh(logvar)
        return as_distance(sq_mu[:n], sq_lv[:n], sq_mu[n:], sq_lv[n:], reduce=self.cfg.as_reduce)

    def on_step_end(self, ctx: StepContext) -> None:
        """The β_neg schedule learns the step's KL(fake) − KL(real) (when the decoder phase ran and
        was not skipped; a skipped step teaches nothing)."""
        gap, kl_real = ctx.logged.get("decoder/kl_gap"), ctx.logged.get("decoder/kl_real")
        if gap is not None and kl_real is not None:
            self.beta_neg_schedule.observe(gap, kl_real, ctx)


def soft_intro_warmup_loss(m: SoftIntroVAE, batch: Batch, ctx: StepContext) -> dict:
    """Plain VAE (methods.md §1) on the (augmented) data, scaled by s like the introspective losses.

    One phase: one forward and backward, then the E and G optimizers the introspective phases use
    step together, as the official pretraining does (one optimizer per network throughout); the
    scale s keeps Adam's moment estimates matched when the exp terms switch on.
    """
    cfg = m.cfg
    x = m.augment(batch.x)
    mu, logvar = m.posterior(x)
    rec = recon_loss(m.nets["G"](reparameterize(mu, logvar)), x, cfg.recon)
    kl = kl_normal(mu, logvar)
    return {"loss": m.scale * (cfg.beta_rec * rec + cfg.beta_kl * kl), "rec": rec, "kl": kl}


def soft_intro_encoder_loss(m: SoftIntroVAE, batch: Batch, ctx: StepContext) -> dict:
    """L_E of Soft-IntroVAE (methods.md §5; AS-IntroVAE's c·KL + (1−c)·dist in the exp terms, §6)."""
    cfg, s, G = m.cfg, m.scale, m.nets["G"]
    beta_neg, c = m.beta_neg(ctx), m.anneal(ctx)
    x = m.augment(batch.x)
    n = x.shape[0]
    mu, logvar = m.posterior(x)  # [N, z] each
    z = reparameterize(mu, logvar)
    noise = torch.randn_like(mu)
    rec_logits = G(z)  # gradient reaches E through z; G itself is frozen in this phase
    rec_err = recon_loss(rec_logits, x, cfg.recon)
    kl_real = kl_normal(mu, logvar)
    # detach: the reconstruction enters the exp term as a fixed negative sample (the paper's
    # "t detached"); blocks that term's gradient into E through the real encoding z.
    rec = m.output(rec_logits).detach()
    # detach: G is frozen here and the fake is a constant input for the encoder; blocks nothing
    # trainable, but keeps G's graph out of this phase.
    fake = m.output(G(noise)).detach()
    t = m.augment(torch.cat([rec, fake]))  # [2N, ...] rec first, then fake
    mu_t, logvar_t = m.posterior(t)
    rr_logits = G(reparameterize(mu_t, logvar_t))
    rec_t = recon_loss(rr_logits, t, cfg.recon, reduce=False)  # [2N]
    kl_t = kl_normal(mu_t, logvar_t, reduce=False)  # [2N]
    div_t = kl_t
    out = {}
    if m.uses_as_distance:
        dist = m.adversarial_distance(mu_t, logvar_t, n)
        div_t = c * kl_t + (1 - c) * dist
        out.update(as_dist=dist.detach(), c=torch.tensor(c))  # detach: logged only, no gradient wanted
    exp_elbo = torch.exp(-2 * s * (cfg.beta_rec * rec_t + beta_neg * div_t))  # [2N]
    exp_rec, exp_fake = exp_elbo[:n].mean(), exp_elbo[n:].mean()
    loss = s * (cfg.beta_rec * rec_err + cfg.beta_kl * kl_real) + 0.25 * (exp_rec + exp_fake)
    # detach: the decoder phase reuses this sample as a constant (blocks gradient into E there; this
    # phase's graph is freed by then anyway).
    ctx.cache["draws"] = _Draws(x.detach(), z.detach(), noise, kl_real.detach())
    out = {"loss": loss, "rec": rec_err, "kl_real": kl_real, "kl_rec": kl_t[:n].mean(), "kl_fake": kl_t[n:].mean(),
           "exp_elbo_rec": exp_rec, "exp_elbo_fake": exp_fake, "beta_neg": torch.tensor(beta_neg), **out}
    return out


def soft_intro_decoder_loss(m: SoftIntroVAE, batch: Batch, ctx: StepContext) -> dict:
    """L_G of Soft-IntroVAE (methods.md §5; AS-IntroVAE §6), with the encoder phase's z and noise."""
    cfg, s, G = m.cfg, m.scale, m.nets["G"]
    d = ctx.shared("draws", lambda: _fresh_draws(m, batch))
    n = d.x.shape[0]
    rec_logits = G(d.z)
    rec_err = recon_loss(rec_logits, d.x, cfg.recon)
    t = torch.cat([m.output(rec_logits), m.output(G(d.noise))])  # [2N, ...] rec, fake: G's gradient flows on
    t = m.augment(t)
    mu_t, logvar_t = m.posterior(t)  # through the frozen E
    kl_t = kl_normal(mu_t, logvar_t, reduce=False)
    kl_rec, kl_fake = kl_t[:n].mean(), kl_t[n:].mean()
    div = kl_rec + kl_fake
    out = {}
    if m.uses_as_distance:
        c = m.anneal(ctx)
        dist = m.adversarial_distance(mu_t, logvar_t, n)
        div = c * div + (1 - c) * dist
        out.update(as_dist=dist.detach(), c=torch.tensor(c))  # detach: logged only, no gradient wanted
    loss = cfg.beta_rec * rec_err + 0.5 * cfg.beta_kl * div
    if cfg.gamma_r >= GAMMA_R_SKIP:
        # detach z: G learns to decode the codes E gives its outputs, not to move those codes
        # (blocks gradient through E's encoding path; the KL term above already uses it). detach t:
        # the targets are constants, as in any reconstruction loss.
        rr = G(reparameterize(mu_t, logvar_t).detach())
        rr_err = recon_loss(rr, t.detach(), cfg.recon, reduce=False)
        rr_rec, rr_fake = rr_err[:n].mean(), rr_err[n:].mean()
        loss = loss + 0.5 * cfg.gamma_r * cfg.beta_rec * (rr_rec + rr_fake)
        out.update(rec_rec=rr_rec.detach(), rec_fake=rr_fake.detach())  # detach: logged only
    gap = kl_fake.detach() - d.kl_real  # detach: a monitored number (logged; on_step_end feeds the β_neg schedule)
    return {"loss": s * loss, "rec": rec_err, "kl_rec": kl_rec, "kl_fake": kl_fake, "kl_real": d.kl_real,
            "kl_gap": gap, **out}


@torch.no_grad()
def _fresh_draws(m: SoftIntroVAE, batch: Batch) -> _Draws:
    """Draws for a decoder phase run without its encoder phase (same distribution, new samples)."""
    x = m.augment(batch.x)
    mu, logvar = m.posterior(x)
    return _Draws(x, reparameterize(mu, logvar), torch.randn_like(mu), kl_normal(mu, logvar))


@register(METHODS, "as_intro_vae")
class ASIntroVAE(SoftIntroVAE):
    """AS-IntroVAE: Soft-IntroVAE + annealed adversarial similarity distance + decoder EMA (§6)."""

    name = "as_intro_vae"
    Config = ASIntroVAEConfig
    uses_as_distance = True

    def anneal(self, ctx: StepContext) -> float:
        warm = self.cfg.warmup_kimg
        span = self.cfg.anneal_kimg or (ctx.total_kimg - warm)
        return anneal_coefficient(ctx.kimg, warm, span)


# ---- presets ---------------------------------------------------------------------------------------
# 2-D toys (official soft_intro_vae_2d): z 2, batch 512, lr 2e-4, the official SoftIntroVAESimple(n_layers=3,
# num_hidden=256) nets (an input layer plus 3 hidden layers: 4 x Linear 256 + ReLU, then a linear output),
# 30k iterations (= 15,360 kimg) with 2k plain-VAE iterations (= 1,024 kimg) and lr x0.1 at 10k and 15k iterations (5,120 and
# 7,680 kimg); β (kl, rec, neg) per toy.
_TOY_BETAS = {"8gaussians": (0.3, 0.2, 0.9), "2spirals": (0.5, 0.2, 1.0), "checkerboard": (0.1, 0.2, 0.2),
              "rings": (0.2, 0.2, 1.0)}
_TOY_MODEL = {"z_dim": 2, "arch": "mlp", "hidden": 256, "depth": 4, "act": "relu", "lr": 2e-4,
              "gamma_r": 1e-8, "warmup_kimg": 1024.0, "gap_smooth_kimg": 51.2, "gap_warn_kimg": 512.0}
# (gap windows: 100 / 1000 steps)
_TOY_TRAIN = {"batch_size": 512, "kimg": 15360.0, "log_every_kimg": 51.2, "snapshot_every_kimg": 1024.0,
              "lr_decay_kimg": (5120.0, 7680.0), "lr_decay": 0.1}
for _toy, (_kl, _rec, _neg) in _TOY_BETAS.items():
    _b = {"beta_kl": _kl, "beta_rec": _rec, "beta_neg": _neg}
    add_preset(f"soft-intro-vae-{_toy}", "soft_intro_vae",
               f"Soft-IntroVAE on the {_toy} toy, the paper's betas (kl {_kl}, rec {_rec}, neg {_neg})",
               train={"data": f"toy:{_toy}", **_TOY_TRAIN}, model={**_TOY_MODEL, **_b}, default_for_data=True)
    add_preset(f"as-intro-vae-{_toy}", "as_intro_vae",
               f"AS-IntroVAE on the {_toy} toy, Soft-IntroVAE's betas, EMA 0.999/step",
               train={"data": f"toy:{_toy}", **_TOY_TRAIN},
               model={**_TOY_MODEL, **_b, "ema_kimg": round(ema_kimg_for(0.999, 512), 2)}, default_for_data=True)

add_preset("soft-intro-vae-digits", "soft_intro_vae", "Soft-IntroVAE on scikit-learn digits at 16 px",
           train={"data": "digits", "resolution": 16, "batch_size": 64, "kimg": 60, "log_every_kimg": 1},
           model={"z_dim": 16, "base_channels": 16, "max_channels": 64, "lr": 1e-3, "beta_neg": 64.0})
add_preset("as-intro-vae-digits", "as_intro_vae", "AS-IntroVAE on scikit-learn digits at 16 px",
           train={"data": "digits", "resolution": 16, "batch_size": 64, "kimg": 60, "log_every_kimg": 1},
           model={"z_dim": 16, "base_channels": 16, "max_channels": 64, "lr": 1e-3, "beta_neg": 64.0,
                  "ema_kimg": 2.0})
# MNIST (official README): z 32, batch 128, β_kl = β_rec = 1, β_neg 256, lr 2e-4, 200 epochs, images in
# [0, 1] (ToTensor, MSE, linear output: in [-1, 1] every reconstruction term would be 4x the official one).
add_preset("soft-intro-vae-mnist", "soft_intro_vae", "Soft-IntroVAE on MNIST, the official settings (use --data mnist:DIR)",
           train={"data": "mnist:data/mnist", "resolution": 28, "batch_size": 128, "kimg": 12000},
           model={"z_dim": 32, "base_channels": 64, "max_channels": 128, "lr": 2e-4, "beta_neg": 256.0,
                  "value_range": "unit"})
add_preset("as-intro-vae-mnist", "as_intro_vae", "AS-IntroVAE on MNIST (use --data mnist:DIR)",
           train={"data": "mnist:data/mnist", "resolution": 28, "batch_size": 128, "kimg": 12000},
           model={"z_dim": 32, "base_channels": 64, "max_channels": 128, "lr": 2e-4, "beta_neg": 256.0,
                  "value_range": "unit", "ema_kimg": round(ema_kimg_for(0.999, 128), 2)})
# Fractals at 64 px: β_neg 256 keeps KL(fake) − KL(real) clearly positive (CPU trial: 6 kimg, batch 16,
# lr 5e-4, 2 kimg warm-up: gap settles near +100 nats).
add_preset("soft-intro-vae-fractals", "soft_intro_vae", "Soft-IntroVAE on 64 px fractals",
           train={"data": "fractals", "resolution": 64, "batch_size": 32, "kimg": 200},
           model={"z_dim": 128, "base_channels": 32, "max_channels": 256, "lr": 5e-4, "beta_neg": 256.0,
                  "warmup_kimg": 4.0})
add_preset("as-intro-vae-fractals", "as_intro_vae", "AS-IntroVAE on 64 px fractals",
           train={"data": "fractals", "resolution": 64, "batch_size": 32, "kimg": 200},
           model={"z_dim": 128, "base_channels": 32, "max_channels": 256, "lr": 5e-4, "beta_neg": 256.0,
                  "warmup_kimg": 4.0, "ema_kimg": round(ema_kimg_for(0.999, 32), 2)})
# Seed 003: 256 px fantasy places, 80 images, batch 6, z 256, β_kl 1, β_rec 0.5, lr 2e-4, β_neg tuned by
# hand in 4..256: here the adaptive schedule over that range, starting at the stable end, with
# translation+colour DiffAugment for the tiny set and the decoder EMA at 0.999/step; images in [0, 1] as the
# official code trains them (the β's were tuned against that scale).
add_preset("fantasy-256", "as_intro_vae", "AS-IntroVAE on a folder of 256 px images, the paper-sized nets "
           "(a GPU job; on a CPU use fantasy-256-cpu; use --data DIR)",
           train={"data": "data/fantasy", "resolution": 256, "batch_size": 6, "kimg": 60, "log_every_kimg": 0.6,
                  "sample_every_kimg": 3, "snapshot_every_kimg": 3},
           model={"z_dim": 256, "beta_kl": 1.0, "beta_rec": 0.5, "beta_neg": 256.0, "lr": 2e-4,
                  "value_range": "unit", "base_channels": 32, "max_channels": 512, "beta_neg_schedule": "adaptive",
                  "beta_neg_range": (4.0, 256.0), "augment": "translation,color",
                  "ema_kimg": round(ema_kimg_for(0.999, 6), 2)})

# Seed 003's use on a 2-core CPU in one evening (issue 18): the same 256 px output and 256-D latent, with
# nets sized for a CPU (16-256 channels, stem strided4: the residual levels start at 64 px), batch 8, a long
# joint-VAE warm-up at lr 5e-4 then 8 kimg introspective at 2e-4 (β_neg adaptive in 4..256). β_kl/β_rec =
# 0.04, not the paper's 2: at σ² = 1 on [0, 1] pixels (β_rec 0.5) the VAE keeps ~30 nats of information
# (80 fractals at 64 px, 500 steps: 13.8 dB against 16.0 at 0.04). No augmentation:
# it would be more to reconstruct in the same time. Figures in the README ("An evening at 256 px").
add_preset("fantasy-256-cpu", "as_intro_vae", "AS-IntroVAE on a folder of about 80 images at 256 px, 256-D codes, "
           "sized for one evening on a 2-core CPU (use --data DIR)",
           train={"data": "data/fantasy", "resolution": 256, "batch_size": 8, "kimg": 84, "log_every_kimg": 1,
                  "sample_every_kimg": 12, "snapshot_every_kimg": 12, "lr_decay_kimg": [76], "lr_decay": 0.4},
           model={"z_dim": 256, "beta_kl": 0.04, "beta_rec": 1.0, "beta_neg": 256.0, "lr": 5e-4,
                  "value_range": "unit", "base_channels": 16, "max_channels": 256, "stem": "strided4",
                  "warmup_kimg": 76.0, "beta_neg_schedule": "adaptive", "beta_neg_range": (4.0, 256.0),
                  "ema_kimg": 1.0})

# The contract tests' tiny configs (calae.config.add_tiny): every schedule and option path runs.
add_tiny("soft_intro_vae", {"z_dim": 8, "base_channels": 8, "max_channels": 16, "hidden": 32, "depth": 2,
                            "beta_neg": 64.0, "gamma_r": 1e-3, "warmup_kimg": 0.064, "beta_neg_schedule": "adaptive",
                            "beta_neg_range": [4.0, 256.0], "augment": "translation,color,cutout"})
add_tiny("as_intro_vae", {"z_dim": 8, "base_channels": 8, "max_channels": 16, "hidden": 32, "depth": 2,
                          "beta_neg": 64.0, "ema_kimg": 0.05, "beta_neg_schedule": "piecewise",
                          "beta_neg_points": [[0, 64.0], [0.128, 16.0]]})
