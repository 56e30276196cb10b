"""VAE-GAN (Larsen, Sønderby, Larochelle & Winther, ICML 2016) and a plain GAN; seed 004.

VAE-GAN: the VAE's encoder E and decoder G plus an image discriminator D (``nets.discriminator``)
whose layer-l features measure reconstructions ("Dis_l", methods.md §7). With x a real batch,
z = μ + σ·ε ~ q(z|x), x̃ = G(z), x_p = G(z_p), z_p ~ N(0, I), and D's logistic costs

  L_real = mean softplus(−D(x)),   L_gen = mean over the generated items of softplus(D(·)),
  L_Dis_l = ½ Σ_features (D_l(x̃) − D_l(x))², batch mean    (a Gaussian log-likelihood, σ = 1),

three phases per step, in this order, each with its own fresh forward and its own Adam:

  1. ``E`` (E learns):  β_kl·KL(q(z|x) || N(0, I)) + β_rec·L_Dis_l [+ β_pixel·Σ(x̃ − x)²]
  2. ``G`` (G learns):  γ·(β_rec·L_Dis_l [+ β_pixel·Σ(x̃ − x)²]) − (1 − γ)·GAN_G
  3. ``D`` (D learns):  w_real·L_real + (1 − w_real)·L_gen [+ r1_gamma/2·E‖∇_x D(x)‖²]

GAN_G is D's cost on the generated sets (x̃, unless ``gan_on_recon`` is off, and x_p), each set's
batch mean summed over the sets, as the official ``model/aegan.py`` (it undoes the real/generated
weights on the path into the decoder). With ``gan_loss="bce"`` (the paper's) the G term is exactly
−(1−γ)·Σ_sets mean softplus(D(·)), the minimax form; with ``"nonsat"`` it is the non-saturating
+(1−γ)·Σ_sets mean softplus(−D(·)), and D gets R1 (``r1_gamma``, default 10 under nonsat, 0 under
bce). The official code sums over the batch where we take batch means: every term carries the same
factor, so the balance is the same.

How the official weighting is reproduced without its gradient tricks: E never receives GAN
gradient (official: a zero gradient scale on z) because E is not trainable in G's phase and z is
drawn there without a graph; D never learns from L_Dis_l (official: weight 0 on that path) because
D is frozen in E's and G's phases; G's gradient is the gradient of its own phase's loss and nothing
else. pythae's VAEGAN calls three backward passes before stepping, so D's backward leaks
+(1−a)·∇(D's loss) into the decoder; the loop here zeroes and steps one optimizer per phase, and
``tests/test_vae_gan.py`` checks by autograd that G's gradient is exactly γ·∇Dis_l − (1−γ)·∇GAN_G.

The phases of one step share their noise (ε of the reparameterisation and z_p) through
``ctx.shared("draws")``, as the official single forward does; each phase recomputes E(x) with the
current weights.

Equilibrium gate (official ``GradientDescent.train_epoch``, ``EquilibriumGate`` below): when D's
cost on real or on generated items falls below ``equilibrium − margin`` (0.68 − 0.35), D is winning
and its update is skipped; when either rises above ``equilibrium + margin``, G is losing nothing and
G's update is skipped (the official skips the decoder's whole update, its Dis_l part included; so
does this); if both would be skipped, both run. The gate object is fed the costs in
``on_step_end`` (D's phase's, or G's when D was gated off) and decides the *next* step (the
official decides with the costs of the forward whose gradients it is about to apply; a one-step
lag here, since the loop's gates are consulted before a phase runs). Its state lives in buffers
(exact resume); E's phase logs the state in effect (``E/gate_D``, ``E/gate_G``).

``gan``: G (the VAE's decoder architecture, so ``--init-from runs/vae`` copies a VAE's G) and the
same image D; phases ``D`` (nonsat + R1) then ``G`` (non-saturating). No encoder: ``encode`` and
``reconstruct`` are refused by ``calae.api`` with a one-line message (``has_encoder = False``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ConfigError, MethodConfig, NetConfig, add_preset, add_tiny, check, check_choice, check_range
from ..data.base import Batch, DataInfo
from ..losses import kl_normal, r1_penalty, recon_loss, reparameterize
from ..nets import ImageDiscriminator
from ..registry import METHODS, register
from .base import Method, OptimizerSpec, Phase, StepContext
from .vae import VAEBase, VAEConfig, build_encoder_decoder, resolve_arch

__all__ = ["VAEGANConfig", "VAEGAN", "GANConfig", "GAN", "EquilibriumGate"]


class _DiscOptions:
    """The image discriminator's options, shared by vae_gan and gan (mixed into their configs)."""

    def check_disc(self) -> None:
        check_choice("gan_loss", self.gan_loss, ("nonsat", "bce"))
        if self.r1_gamma is not None:
            check_range("r1_gamma", self.r1_gamma, 0)
        for k in ("d_base_channels", "d_max_channels"):
            v = getattr(self, k)
            if v is not None:
                check_range(k, v, 1, 4096)
        check_range("d_hidden", self.d_hidden, 1, 65536)
        check_range("d_mbstd", self.d_mbstd, 0, 4096)
        check_choice("d_norm", self.d_norm, ("none", "group", "batch"))
        if self.d_lr is not None:
            check_range("d_lr", self.d_lr, 0, 1, lo_open=True)

    def r1(self) -> float:
        """R1 weight: r1_gamma, or its default (10 under nonsat, 0 under the paper's bce)."""
        if self.r1_gamma is not None:
            return float(self.r1_gamma)
        return 10.0 if self.gan_loss == "nonsat" else 0.0


def build_discriminator(cfg, info: DataInfo) -> ImageDiscriminator:
    if info.kind != "image":
        raise ConfigError(f"the image discriminator needs image data; {info.name or 'this data'} is {info.kind} "
                          "(use --data fractals, a folder, digits or mnist:DIR)")
    return ImageDiscriminator(info.channels, info.resolution, cfg.d_base_channels or cfg.base_channels,
                              cfg.d_max_channels or cfg.max_channels, cfg.d_norm, cfg.d_hidden, cfg.d_mbstd)


# ---- the equilibrium gate ----------------------------------------------------------------------------
class EquilibriumGate(torch.nn.Module):
    """Larsen et al.'s equilibrium rule as a schedule object: from D's costs on real and generated
    items (mean logistic losses, ln 2 ≈ 0.69 at chance) it decides whether D and G update at the
    next step. State in buffers, so checkpoints carry it; ``observe`` acts once per step."""

    def __init__(self, equilibrium: float = 0.68, margin: float = 0.35, enabled: bool = True):
        super().__init__()
        self.equilibrium, self.margin, self.enabled = float(equilibrium), float(margin), bool(enabled)
        f64 = dict(dtype=torch.float64)
        self.register_buffer("open_D", torch.ones((), **f64))
        self.register_buffer("open_G", torch.ones((), **f64))
        self.register_buffer("last_step", torch.full((), -1.0, **f64))
        self.register_buffer("skips_D", torch.zeros((), **f64))  # steps on which D's update was gated off
        self.register_buffer("skips_G", torch.zeros((), **f64))

    def allows(self, net: str) -> bool:
        """Whether ``net`` ("D" or "G") updates at this step."""
        return not self.enabled or bool((self.open_D if net == "D" else self.open_G) > 0)

    @staticmethod
    def decide(real_cost: float, fake_cost: float, equilibrium: float, margin: float) -> tuple[bool, bool]:
        """(update D, update G) as the official ``train_epoch``."""
        lo, hi = equilibrium - margin, equilibrium + margin
        d = not (real_cost < lo or fake_cost < lo)  # D is winning: let G catch up
        g = not (real_cost > hi or fake_cost > hi)  # D is losing: let D catch up
        if not (d or g):
            d = g = True
        return d, g

    def observe(self, real_cost: float, fake_cost: float, step: int) -> None:
        """Record step ``step``'s costs and set the gate for the next step."""
        if not self.enabled or step <= int(self.last_step):
            return
        real_cost, fake_cost = float(real_cost), float(fake_cost)
        if not (torch.isfinite(torch.tensor(real_cost)) and torch.isfinite(torch.tensor(fake_cost))):
            return  # a non-finite step teaches nothing
        d, g = self.decide(real_cost, fake_cost, self.equilibrium, self.margin)
        self.open_D.fill_(float(d))
        self.open_G.fill_(float(g))
        self.skips_D.add_(float(not d))
        self.skips_G.add_(float(not g))
        self.last_step.fill_(step)

    def extra_repr(self) -> str:
        return f"equilibrium={self.equilibrium}, margin={self.margin}, enabled={self.enabled}"


# ---- VAE-GAN -----------------------------------------------------------------------------------------
@dataclass
class VAEGANConfig(_DiscOptions, VAEConfig):
    """E and G are the VAE's (its network options, so ``--init-from`` a VAE run copies them);
    D's trunk takes base/max channels from d_base_channels / d_max_channels (None: the same)."""

    lr: float = 2e-4  # E's and G's Adam lr; D's is d_lr (None: lr)
    # Adam betas of every net (StyleGAN2's): with the DCGAN (0.5, 0.999) the GANs of
    # benchmarks/bench_vae_gan.py collapsed (32 px, 3 kimg: sample spread 0.19 of the data's, 0.54 here)
    betas: tuple[float, float] = (0.0, 0.99)
    z_dim: int = 64
    beta_rec: float = 1.0  # weight of the Dis_l reconstruction in E's loss (G's: γ·β_rec)
    gamma: float = 1e-2  # official recon_vs_gan_weight: G minimises γ·rec − (1−γ)·GAN (1e-5 in the CelebA script)
    beta_pixel: float = 0.0  # optional pixel squared error next to Dis_l (0: the paper's VAE-GAN)
    # D feature map for Dis_l: 0 = stem, i = i-th residual block (1: the first, at full resolution),
    # -1 = the last (R/8, the official CelebA depth). 16 px digits, 4 kimg, β_kl 0.1, pixel MSE
    # 0.63 at the start: layer 1 -> 0.17 (bce) / 0.08 (nonsat), layer 2 -> 0.20, the last -> 0.74
    # (its few small features make Dis_l weak against the KL: the posterior collapsed to ~1 nat)
    dis_layer: int = 1
    gan_loss: str = "nonsat"  # nonsat (non-saturating G, R1 on D) | bce (the paper's minimax)
    r1_gamma: float | None = None  # None: 10 under nonsat, 0 under bce
    real_weight: float = 0.5  # official real_vs_gen_weight: D's weight of real vs generated items
    gan_on_recon: bool = True  # x̃ = G(E(x)) in the GAN loss (the official scripts keep it; False: x_p only)
    equilibrium_gate: bool = True
    equilibrium: float = 0.68
    margin: float = 0.35
    d_lr: float | None = None
    d_base_channels: int | None = None
    d_max_channels: int | None = None
    d_hidden: int = 256
    d_norm: str = "none"
    d_mbstd: int = 4  # minibatch-stddev group size in D (PGGAN; 0: off); groups never mix real and generated

    def __post_init__(self):
        super().__post_init__()
        self.check_disc()
        check(self.recon == "mse", f"vae_gan decodes linear images in [-1, 1]: recon must be mse; got {self.recon!r}")
        check(self.value_range in ("auto", "tanh"), f"vae_gan uses images in [-1, 1]: value_range must be auto or "
                                                    f"tanh; got {self.value_range!r}")
        check_range("gamma", self.gamma, 0, 1)
        check_range("beta_pixel", self.beta_pixel, 0)
        check_range("real_weight", self.real_weight, 0, 1, lo_open=True)
        check(self.real_weight < 1, f"real_weight must be < 1 (the generated items need weight); got {self.real_weight}")
        check_range("margin", self.margin, 0)
        check(isinstance(self.dis_layer, int) and not isinstance(self.dis_layer, bool),
              f"dis_layer must be an integer; got {self.dis_layer!r}")


@register(METHODS, "vae_gan")
class VAEGAN(VAEBase):
    name = "vae_gan"
    Config = VAEGANConfig

    def __init__(self, cfg: VAEGANConfig, info: DataInfo):
        super().__init__(cfg, info)
        self.nets["D"] = build_discriminator(cfg, info)
        try:
            self.nets["D"].feature_index(cfg.dis_layer)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.gate = EquilibriumGate(cfg.equilibrium, cfg.margin, cfg.equilibrium_gate)

    def optimizers(self):
        b, c = tuple(self.cfg.betas), self.cfg
        return {"E": OptimizerSpec(("E",), c.lr, b), "G": OptimizerSpec(("G",), c.lr, b),
                "D": OptimizerSpec(("D",), c.d_lr or c.lr, b)}

    def phases(self):
        return [Phase("E", ("E",), "E", vae_gan_encoder_phase),
                Phase("G", ("G",), "G", vae_gan_decoder_phase, active=lambda ctx: self.gate.allows("G")),
                Phase("D", ("D",), "D", vae_gan_disc_phase, active=lambda ctx: self.gate.allows("D"))]

    def on_step_end(self, ctx: StepContext) -> None:
        """The gate learns D's costs of this step: from D's phase, or from G's when D did not run."""
        for ph in ("D", "G"):
            real, fake = ctx.logged.get(f"{ph}/real_cost"), ctx.logged.get(f"{ph}/fake_cost")
            if real is not None and fake is not None and ph not in ctx.skipped:
                self.gate.observe(real, fake, ctx.step)
                return

    # ---- pieces the phases share ------------------------------------------------------------------
    def draws(self, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε, z_p) of this step, the same in every phase. [N, z_dim] each"""
        def make():
            n, dev = batch.x.shape[0], batch.x.device
            return torch.randn(n, self.z_dim, device=dev), torch.randn(n, self.z_dim, device=dev)
        return ctx.shared("draws", make)

    def dis_l(self, f_rec: torch.Tensor, f_real: torch.Tensor) -> torch.Tensor:
        """½ Σ_features (D_l(x̃) − D_l(x))², batch mean (Gaussian NLL with σ = 1, constants dropped)."""
        return 0.5 * (f_rec.float() - f_real.float()).pow(2).flatten(1).sum(1).mean()


def _pixel(m: VAEGAN, x_tilde: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return recon_loss(x_tilde, x, "mse") if m.cfg.beta_pixel > 0 else torch.zeros((), device=x.device)


def vae_gan_encoder_phase(m: VAEGAN, batch: Batch, ctx: StepContext) -> dict:
    """Phase 1, E: β_kl·KL + β_rec·Dis_l(x̃, x) [+ β_pixel·pixel]; G and D are frozen, the gradient
    reaches E through them."""
    x, cfg = batch.x, m.cfg
    eps, _ = m.draws(batch, ctx)
    mu, logvar = m.posterior(x)
    x_tilde = m.nets["G"](reparameterize(mu, logvar, eps))
    n = x.shape[0]
    feats, _ = m.nets["D"].run(torch.cat([x_tilde, x]), cfg.dis_layer, set_size=n)  # [2N, C_l, H_l, W_l]
    # detach: D_l(x) is the target, a constant of this loss
    rec = m.dis_l(feats[:n], feats[n:].detach())
    kl = kl_normal(mu, logvar)
    pixel = _pixel(m, x_tilde, x)
    loss = cfg.beta_kl * kl + cfg.beta_rec * rec + cfg.beta_pixel * pixel
    out = {"loss": loss, "kl": kl, "dis_l": rec,
           "gate_D": torch.tensor(float(m.gate.allows("D"))), "gate_G": torch.tensor(float(m.gate.allows("G")))}
    if cfg.beta_pixel > 0:
        out["pixel"] = pixel
    return out


def _generated(m: VAEGAN, batch: Batch, ctx: StepContext, grad: bool):
    """(x̃, x_p) of this step's draws; E is always run without a graph (no GAN gradient reaches E)."""
    eps, z_p = m.draws(batch, ctx)
    with torch.no_grad():  # E is not trained here: z is a constant (official: gradient scale 0 on z)
        mu, logvar = m.posterior(batch.x)
        z = reparameterize(mu, logvar, eps)
    with torch.set_grad_enabled(grad):
        return m.nets["G"](z), m.nets["G"](z_p)


def vae_gan_decoder_phase(m: VAEGAN, batch: Batch, ctx: StepContext) -> dict:
    """Phase 2, G: γ·(β_rec·Dis_l [+ β_pixel·pixel]) − (1−γ)·GAN_G (bce), or + (1−γ)·non-saturating."""
    x, cfg = batch.x, m.cfg
    n = x.shape[0]
    x_tilde, x_p = _generated(m, batch, ctx, grad=True)
    feats, logits = m.nets["D"].run(torch.cat([x, x_tilde, x_p]), cfg.dis_layer, set_size=n)  # D frozen; [3N]
    # detach: D_l(x) is the target
    rec = m.dis_l(feats[n:2 * n], feats[:n].detach())
    pixel = _pixel(m, x_tilde, x)
    gen = [logits[n:2 * n], logits[2 * n:]] if cfg.gan_on_recon else [logits[2 * n:]]
    d_cost = sum(F.softplus(l).mean() for l in gen)  # D's cost on the generated sets
    if cfg.gan_loss == "bce":
        gan = -d_cost  # minimax: G raises D's cost
    else:
        gan = sum(F.softplus(-l).mean() for l in gen)  # non-saturating
    loss = cfg.gamma * (cfg.beta_rec * rec + cfg.beta_pixel * pixel) + (1 - cfg.gamma) * gan
    gen_all = torch.cat(gen)
    return {"loss": loss, "dis_l": rec, "gan": gan,
            "real_cost": F.softplus(-logits[:n]).mean().detach(), "fake_cost": F.softplus(gen_all).mean().detach()}


def vae_gan_disc_phase(m: VAEGAN, batch: Batch, ctx: StepContext) -> dict:
    """Phase 3, D: w_real·mean softplus(−D(x)) + (1−w_real)·mean softplus(D(generated)) [+ γ_R1/2·R1]."""
    cfg = m.cfg
    gamma = cfg.r1()
    n = batch.x.shape[0]
    x_tilde, x_p = _generated(m, batch, ctx, grad=False)  # constants: this phase trains D only
    gen = torch.cat([x_tilde, x_p]) if cfg.gan_on_recon else x_p
    # detach: the batch is data; a fresh leaf so that R1 differentiates D(x) with respect to pixels
    x = batch.x.detach().requires_grad_(gamma > 0)
    _, logits = m.nets["D"].run(torch.cat([x, gen]), set_size=n)
    real_cost = F.softplus(-logits[:n]).mean()
    fake_cost = F.softplus(logits[n:]).mean()
    loss = cfg.real_weight * real_cost + (1 - cfg.real_weight) * fake_cost
    out = {"real_cost": real_cost, "fake_cost": fake_cost}
    if gamma > 0:
        r1 = r1_penalty(logits[:n], x)
        loss = loss + 0.5 * gamma * r1
        out["r1"] = r1
    return {"loss": loss, **out}


# ---- GAN -------------------------------------------------------------------------------------------
@dataclass
class GANConfig(_DiscOptions, NetConfig, MethodConfig):
    """G is the VAE's decoder (same network options: ``--init-from`` a VAE copies it); D as in vae_gan."""

    lr: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.99)  # as vae_gan's (why: VAEGANConfig.betas)
    z_dim: int = 64
    gan_loss: str = "nonsat"  # nonsat (R1 on D) | bce (minimax G: −softplus(D(G(z))))
    r1_gamma: float | None = None  # None: 10 under nonsat, 0 under bce
    d_lr: float | None = None
    d_base_channels: int | None = None
    d_max_channels: int | None = None
    d_hidden: int = 256
    d_norm: str = "none"
    d_mbstd: int = 4  # minibatch-stddev group size in D (PGGAN; 0: off); groups never mix real and generated

    ARCHS = ("auto", "conv", "mlp")

    def __post_init__(self):
        super().__post_init__()
        self.check_disc()
        check_range("z_dim", self.z_dim, 1, 4096)


@register(METHODS, "gan")
class GAN(Method):
    name = "gan"
    Config = GANConfig
    has_encoder = False

    def __init__(self, cfg: GANConfig, info: DataInfo):
        super().__init__(cfg, info)
        arch = resolve_arch(cfg.arch, info)
        # built as the VAE builds its pair (E discarded), so G's architecture, names and, for the
        # same seed, initial weights are the VAE decoder's
        _, G = build_encoder_decoder(cfg.net_config(), info, 2 * cfg.z_dim, cfg.z_dim, arch)
        self.nets["G"] = G
        self.nets["D"] = build_discriminator(cfg, info)
        self.conv = arch == "conv"

    def optimizers(self):
        b, c = tuple(self.cfg.betas), self.cfg
        return {"G": OptimizerSpec(("G",), c.lr, b), "D": OptimizerSpec(("D",), c.d_lr or c.lr, b)}

    def phases(self):
        return [Phase("D", ("D",), "D", gan_disc_phase), Phase("G", ("G",), "G", gan_gen_phase)]

    def draw(self, batch: Batch, ctx: StepContext) -> torch.Tensor:
        return ctx.shared("z", lambda: torch.randn(batch.x.shape[0], self.z_dim, device=batch.x.device))

    def encode(self, x):
        from ..api import APIError

        raise APIError("gan has no encoder: it cannot encode or reconstruct images (vae_gan can)")

    def decode(self, w):
        return self.net("G")(w).float()

    @torch.no_grad()
    def reconstruct(self, x):
        return self.encode(x)


def gan_disc_phase(m: GAN, batch: Batch, ctx: StepContext) -> dict:
    """D: softplus(−D(x)) + softplus(D(G(z))) [+ γ_R1/2·E‖∇_x D(x)‖²]."""
    gamma = m.cfg.r1()
    n = batch.x.shape[0]
    with torch.no_grad():  # the fakes are constants: this phase trains D only
        fake = m.nets["G"](m.draw(batch, ctx))
    # detach: the batch is data; a fresh leaf so that R1 differentiates D(x) with respect to pixels
    x = batch.x.detach().requires_grad_(gamma > 0)
    _, logits = m.nets["D"].run(torch.cat([x, fake]), set_size=n)
    real_cost, fake_cost = F.softplus(-logits[:n]).mean(), F.softplus(logits[n:]).mean()
    loss, out = real_cost + fake_cost, {"real_cost": real_cost, "fake_cost": fake_cost}
    if gamma > 0:
        r1 = r1_penalty(logits[:n], x)
        loss = loss + 0.5 * gamma * r1
        out["r1"] = r1
    return {"loss": loss, **out}


def gan_gen_phase(m: GAN, batch: Batch, ctx: StepContext) -> dict:
    """G: softplus(−D(G(z))) (non-saturating) or −softplus(D(G(z))) (bce, minimax)."""
    logits = m.nets["D"](m.nets["G"](m.draw(batch, ctx)))  # D frozen; its gradient reaches G
    loss = F.softplus(-logits).mean() if m.cfg.gan_loss == "nonsat" else -F.softplus(logits).mean()
    return {"loss": loss, "fake_cost": F.softplus(logits).mean().detach()}


# ---- presets -----------------------------------------------------------------------------------------
# 64 px folders (seed 004: comic faces, rectangles): --fit crop (the folder default) centre-crops them.
_NETS64 = {"z_dim": 128, "base_channels": 32, "max_channels": 256}
_NETS32 = {"z_dim": 64, "base_channels": 32, "max_channels": 128}
# VAE-GAN's KL and pixel weights (benchmarks/bench_vae_gan.py reads them from here): at 32 px, 3 kimg,
# Dis_l alone at β_kl 1 left the codes at ~16 nats and PSNR at 11.7 dB; β_kl 0.02 with β_pixel 1 gave
# 13.5 dB (the VAE's 13.6) and samples with 16x the VAE's high-frequency power
_VG = {"beta_kl": 0.02, "beta_pixel": 1.0}
add_preset("vae-gan-folder-64", "vae_gan", "VAE-GAN on a 64 px folder of your images (--data DIR, "
           "non-square images centre-cropped: --fit crop)",
           train={"resolution": 64, "batch_size": 32, "kimg": 200, "fit": "crop"}, model={**_NETS64, **_VG})
add_preset("gan-folder-64", "gan", "GAN on a 64 px folder (--data DIR; --init-from a vae run with the same "
           "nets: vae-folder-64)", train={"resolution": 64, "batch_size": 32, "kimg": 200, "fit": "crop"},
           model=dict(_NETS64))
add_preset("vae-folder-64", "vae", "VAE on a 64 px folder whose E, G fit vae-gan-folder-64 / gan-folder-64 "
           "(--data DIR)", train={"resolution": 64, "batch_size": 32, "kimg": 200, "fit": "crop"},
           model={**_NETS64, "beta_kl": 0.1})  # the demo's; at 1 the 64 px reconstructions were grey
add_preset("vae-gan-fractals-64", "vae_gan", "VAE-GAN on 64 px fractals",
           train={"data": "fractals", "resolution": 64, "batch_size": 32, "kimg": 200}, model={**_NETS64, **_VG})
add_preset("vae-gan-fractals-32", "vae_gan", "VAE-GAN on 32 px fractals",
           train={"data": "fractals", "resolution": 32, "batch_size": 32, "kimg": 50, "n_data": 4096},
           model={**_NETS32, **_VG})
add_preset("gan-fractals-64", "gan", "GAN (nonsat + R1) on 64 px fractals",
           train={"data": "fractals", "resolution": 64, "batch_size": 32, "kimg": 200}, model=dict(_NETS64))
add_preset("gan-fractals-32", "gan", "GAN (nonsat + R1) on 32 px fractals",
           train={"data": "fractals", "resolution": 32, "batch_size": 32, "kimg": 50, "n_data": 4096},
           model=dict(_NETS32))

add_tiny("vae_gan", {"z_dim": 8, "base_channels": 8, "max_channels": 16, "d_hidden": 16})
add_tiny("gan", {"z_dim": 8, "base_channels": 8, "max_channels": 16, "d_hidden": 16})
