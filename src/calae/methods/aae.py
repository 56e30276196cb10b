"""Adversarial Autoencoder (Makhzani, Shlens, Jaitly, Goodfellow & Frey, ICLR 2016; seed 002).

An autoencoder x -> z = E(x) -> x̂ = G(z) whose aggregated posterior q(z) = E_x q(z|x) is made to
match a prior p(z) of the user's choice by a GAN played in code space (methods.md §2). Both are
trained on every minibatch in two phases, reconstruction then regularisation, in this order:

  1. reconstruction  (E, G):  min  L_rec(x, G(E(x)))                 BCE on logits for [0, 1] data
                                                                      (the seed's choice) or MSE
  2. regularisation, D step (D):  min  softplus(−D(z_p)) + softplus(D(E(x)))   z_p ~ p(z) is
                                   *real* (label 1), the code E(x) is *fake* (label 0)
  3. regularisation, E step (E):  min  softplus(−D(E(x)))    non-saturating: E makes its codes
                                   look like prior samples

Encoders (paper §2): "deterministic", q(z|x) = δ(E(x)) (the seed's choice, the paper's
MNIST choice), or "gaussian", E(x) = (μ, log σ²) and z = μ + σ·ε (reparameterised, so phases 1
and 3 differentiate through the sample). ``encode`` returns E(x), resp. μ.

Learning rates under the seed's names: ``gen_lr`` for the reconstruction optimizer of E and G,
``dis_lr`` for D, and ``reg_lr`` for E's regularisation optimizer. Defaults: gen_lr = dis_lr = lr,
reg_lr = dis_lr / 5, Adam β = (0.5, 0.999): a two-time-scale choice, D tracks the current codes
and E follows D's gradient field more slowly. Measured on digits (MLP 256, z 8, N(0, I), batch 64;
energy distance codes-prior 1.5 at the start): reg_lr = 5·dis_lr (gen 1e-3, dis 2e-4) let E outrun
D, push the codes to where the piecewise-linear D extrapolates "real" and blow up their scale
(distance 130 after 8 kimg); all three at 1e-3 oscillated (1.2 after 20 kimg); dis = reg = 2e-4
reached 0.5-0.9 after 12 kimg and 0.05-0.07 after 24; the defaults (1e-3, 1e-3, 2e-4) 0.23-0.38
after 12 kimg and 0.04-0.08 after 24 (three seeds each). Phases 1 and 3 keep separate Adam states,
as is common in AAE code: the small adversarial gradient is not normalised by the reconstruction
gradient's history.

Labels (when the data have them):
  - ``supervised`` (paper: "Supervised adversarial autoencoders"): the one-hot label is
    concatenated to z at the decoder's input, so z need only carry the style and the label the
    content. ``decode`` takes [z, one-hot] codes, or bare z, then item i is drawn as class i mod K.
  - ``label_prior`` (paper: "Incorporating label information in the adversarial
    regularization"): D sees [z, one-hot(y)]; a real pair is a sample of the prior's component y
    (mixture petals, swiss-roll arcs), a fake pair is (E(x), y), so every class is pushed onto its
    own component.

The prior is any registered one (``calae.priors``): gaussian (the seed: sigma=5), uniform, sphere,
mixture, swiss_roll and the fractal priors ifs, sierpinski and kali, with options in
``prior_opts``. Networks are the shared encoder/decoder of the VAE (``build_encoder_decoder``)
and an MLP latent discriminator.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..config import ConfigError, MethodConfig, NetConfig, add_preset, add_tiny, check, check_choice, check_range
from ..data.base import Batch, DataInfo
from ..losses import nonsat_logistic, recon_loss, reparameterize
from ..nets import MLP
from ..priors import make_prior
from ..registry import METHODS, register
from .base import Method, OptimizerSpec, Phase, StepContext
from .vae import build_encoder_decoder, resolve_arch

__all__ = ["AAEConfig", "AAE", "recon_phase", "disc_phase", "enc_phase"]


@dataclass
class AAEConfig(NetConfig, MethodConfig):
    lr: float = 1e-3  # what --lr sets: the fallback of gen_lr and dis_lr (reg_lr: dis_lr / 5)
    betas: tuple[float, float] = (0.5, 0.999)  # β1 = 0.5, the usual choice for adversarial games
    z_dim: int = 8
    encoder: str = "deterministic"  # deterministic | gaussian (posterior N(μ, σ²), reparameterised)
    recon: str = "bce"  # bce (images in [0, 1], decoder emits logits) | mse (images in [-1, 1])
    gen_lr: float | None = None  # Adam lr of E, G (reconstruction); None: lr
    dis_lr: float | None = None  # Adam lr of the latent discriminator D; None: lr
    reg_lr: float | None = None  # Adam lr of E's regularisation step; None: dis_lr / 5
    prior: str = "gaussian"  # a name in calae.priors (calae list shows them)
    prior_opts: dict = field(default_factory=dict)  # e.g. {"sigma": 5} or {"maps": 16, "contraction": 0.7}
    supervised: bool = False  # give the one-hot label to G (style / content separation)
    label_prior: bool = False  # label-tied prior components; D sees the one-hot label
    # network options from NetConfig; arch auto: mlp for points and one-channel images of at most
    # 28 px (the seed's and the paper's MNIST nets), conv otherwise
    hidden: int = 512  # mlp width (E and G)
    depth: int = 2  # mlp hidden layers (E and G)
    norm: str = "none"
    d_hidden: int = 512  # latent discriminator width (the paper: 1000)
    d_depth: int = 2  # latent discriminator hidden layers (the paper: 2)

    ARCHS = ("auto", "conv", "mlp")

    def __post_init__(self):
        super().__post_init__()
        check_range("z_dim", self.z_dim, 1, 4096)
        check_choice("encoder", self.encoder, ("deterministic", "gaussian"))
        check_choice("recon", self.recon, ("bce", "mse"))
        for k in ("gen_lr", "dis_lr", "reg_lr"):
            v = getattr(self, k)
            if v is not None:
                check(isinstance(v, (int, float)), f"{k} must be a number; got {v!r}")
                check_range(k, v, 0, 1, lo_open=True)
        check(isinstance(self.prior_opts, dict), f"prior_opts must be a JSON object; got {self.prior_opts!r}")
        make_prior(self.prior, self.z_dim, **self.prior_opts)  # names and values checked now, not mid-run
        check_range("d_hidden", self.d_hidden, 1, 65536)
        check_range("d_depth", self.d_depth, 0, 64)

    def learning_rates(self) -> tuple[float, float, float]:
        """(gen_lr, dis_lr, reg_lr) with their fallbacks (lr, lr, dis_lr / 5)."""
        gen = float(self.lr if self.gen_lr is None else self.gen_lr)
        dis = float(self.lr if self.dis_lr is None else self.dis_lr)
        return gen, dis, float(dis / 5 if self.reg_lr is None else self.reg_lr)


@register(METHODS, "aae")
class AAE(Method):
    name = "aae"
    Config = AAEConfig

    def __init__(self, cfg: AAEConfig, info: DataInfo):
        super().__init__(cfg, info)
        K = info.num_classes
        if (cfg.supervised or cfg.label_prior) and K < 2:
            raise ConfigError(f"supervised / label_prior need labelled data; {info.name or 'this data'} has "
                              f"{K} classes (use e.g. --data digits or mnist:DIR)")
        self.num_labels = K if (cfg.supervised or cfg.label_prior) else 0
        opts = dict(cfg.prior_opts)
        prior = make_prior(cfg.prior, cfg.z_dim, **opts)
        if cfg.label_prior:
            check(prior.supports_labels, f"label_prior needs a prior with label-tied components (mixture, "
                                         f"swiss_roll); got {cfg.prior!r}")
            if "k" not in opts:
                opts["k"] = K
                prior = make_prior(cfg.prior, cfg.z_dim, **opts)
            check(prior.num_components == K, f"label_prior: prior_opts.k={prior.num_components} must equal the "
                                              f"number of classes {K}")
        self.prior_dist = prior
        g_in = cfg.z_dim + (K if cfg.supervised else 0)
        enc_out = 2 * cfg.z_dim if cfg.encoder == "gaussian" else cfg.z_dim
        arch = resolve_arch(cfg.arch, info, mlp_for_small_gray=True)
        E, G = build_encoder_decoder(cfg.net_config(), info, enc_out, g_in, arch)
        self.nets["E"], self.nets["G"] = E, G
        self.nets["D"] = MLP(cfg.z_dim + (K if cfg.label_prior else 0), 1, cfg.d_hidden, cfg.d_depth)
        self.conv = arch == "conv"
        self.value_range = "unit" if cfg.recon == "bce" else "tanh"

    # ---- training description -------------------------------------------------------------
    def optimizers(self):
        b = tuple(self.cfg.betas)
        gen_lr, dis_lr, reg_lr = self.cfg.learning_rates()
        return {"AE": OptimizerSpec(("E", "G"), gen_lr, b),  # phase 1
                "D": OptimizerSpec(("D",), dis_lr, b),  # phase 2
                "E": OptimizerSpec(("E",), reg_lr, b)}  # phase 3

    def phases(self):
        return [Phase("recon", ("E", "G"), "AE", recon_phase),
                Phase("reg_D", ("D",), "D", disc_phase),
                Phase("reg_E", ("E",), "E", enc_phase)]

    # ---- pieces the phases share ------------------------------------------------------------
    def onehot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y.long(), self.info.num_classes).float()

    def labels(self, batch: Batch) -> torch.Tensor | None:
        if not self.num_labels:
            return None
        check(batch.y is not None, "supervised / label_prior: this batch has no labels")
        return batch.y

    def code(self, x: torch.Tensor, E: torch.nn.Module | None = None) -> torch.Tensor:
        """A draw from q(z|x): E(x), or μ + σ·ε for the Gaussian-posterior encoder. [N, z_dim]"""
        h = (E or self.nets["E"])(x).float()
        if self.cfg.encoder == "gaussian":
            mu, logvar = h.chunk(2, dim=1)
            return reparameterize(mu, logvar)
        return h

    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None, G: torch.nn.Module | None = None):
        """G's raw output (logits under BCE) for codes z, with the one-hot label when supervised."""
        if self.cfg.supervised:
            if y is None:  # bare codes: item i gets class i mod K
                y = torch.arange(z.shape[0], device=z.device) % self.info.num_classes
            z = torch.cat([z, self.onehot(y).to(z.dtype)], dim=1)  # [N, z_dim + K]
        return (G or self.nets["G"])(z)

    def critic(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """D's logit per code [N]; with label_prior D judges the pair (z, one-hot(y))."""
        if self.cfg.label_prior:
            z = torch.cat([z, self.onehot(y).to(z.dtype)], dim=1)
        return self.nets["D"](z).float().squeeze(1)

    def prior_samples(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """z ~ p(z) (or p(z | y) with label_prior) from torch's global CPU generator, so that the
        training state's saved RNG makes a resumed run draw the same samples. [n, z_dim]"""
        z = self.prior_dist.sample_for_labels(y.cpu()) if self.cfg.label_prior else self.prior_dist.sample(n)
        return z.to(self.device())

    # ---- inference surface -----------------------------------------------------------------
    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.prior_dist.sample(n, generator).to(self.device())

    def output(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(raw) if self.cfg.recon == "bce" else raw

    def encode(self, x):
        h = self.net("E")(x).float()
        return h.chunk(2, dim=1)[0] if self.cfg.encoder == "gaussian" else h

    def decode_options(self) -> tuple:
        if not self.cfg.supervised:
            return ()
        from ..api import DecodeOption

        k = self.info.num_classes
        return (DecodeOption("label", -1, f"class drawn (0..{k - 1}); -1: item i gets class i mod {k}", -1, k - 1),)

    def decode(self, w, label: int = -1):
        """w: codes [N, z_dim]; supervised, the class comes from ``label`` (-1: item i is drawn as
        class i mod K)."""
        y = None
        if self.cfg.supervised and label >= 0:
            y = torch.full((w.shape[0],), int(label), dtype=torch.long, device=w.device)
        return self.output(self.generate(w, y, self.net("G")).float())

    @torch.no_grad()
    def reconstruct(self, x, y: torch.Tensor | None = None):
        """G(E(x)); supervised models need the labels y to reconstruct the content (without them
        item i is drawn as class i mod K in the style of x)."""
        return self.output(self.generate(self.encode(x), y, self.net("G")).float())


# ---- the three phases (methods.md §2), in the paper's order ---------------------------------------
def recon_phase(m: AAE, batch: Batch, ctx: StepContext) -> dict:
    """Phase 1, E and G: L_rec(x, G(z)), z ~ q(z|x); BCE or MSE summed over pixels, batch mean."""
    x = batch.x
    rec = recon_loss(m.generate(m.code(x), m.labels(batch)), x, m.cfg.recon)
    return {"loss": rec, "rec": rec}


def disc_phase(m: AAE, batch: Batch, ctx: StepContext) -> dict:
    """Phase 2, D: prior samples are real (label 1), codes are fake (label 0)."""
    x, y = batch.x, m.labels(batch)
    z_prior = m.prior_samples(x.shape[0], y)
    # detach: this phase trains D only; the code is D's input, no gradient may flow back into E
    z_code = m.code(x).detach()
    real, fake = m.critic(z_prior, y), m.critic(z_code, y)
    loss = nonsat_logistic(real, True) + nonsat_logistic(fake, False)
    acc = 0.5 * ((real > 0).float().mean() + (fake < 0).float().mean())
    return {"loss": loss, "real": real.mean(), "fake": fake.mean(), "acc": acc}


def enc_phase(m: AAE, batch: Batch, ctx: StepContext) -> dict:
    """Phase 3, E: make codes look real to D, softplus(−D(E(x))) (non-saturating)."""
    x, y = batch.x, m.labels(batch)
    fake = m.critic(m.code(x), y)
    return {"loss": nonsat_logistic(fake, True), "fake": fake.mean()}


# ---- presets ------------------------------------------------------------------------------------
_DIGITS_NETS = {"z_dim": 8, "arch": "mlp", "hidden": 512, "depth": 2, "d_hidden": 256, "d_depth": 2, "lr": 1e-3}
add_preset("aae-digits", "aae", "AAE on scikit-learn digits at 16 px, N(0, I) prior",
           train={"data": "digits", "resolution": 16, "batch_size": 64, "kimg": 100},
           model={**_DIGITS_NETS, "prior": "gaussian"})
add_preset("aae-digits-fractal", "aae", "AAE on digits, fractal prior: random IFS, 9 maps, similarity dim 3.2 in 8-D",
           train={"data": "digits", "resolution": 16, "batch_size": 64, "kimg": 100},
           model={**_DIGITS_NETS, "prior": "ifs"})
add_preset("aae-digits-2d", "aae", "AAE on digits, 2-D codes on the paper's 10-petal mixture, label-tied",
           train={"data": "digits", "resolution": 16, "batch_size": 64, "kimg": 100},
           model={**_DIGITS_NETS, "z_dim": 2, "prior": "mixture", "label_prior": True})
add_preset("aae-mnist", "aae", "AAE on MNIST: MLP 2x1000, N(0, 5^2) prior, BCE, batch 100, 100 epochs "
           "(use --data mnist:DIR --download)",
           train={"data": "mnist:data/mnist", "resolution": 28, "batch_size": 100, "kimg": 6000},
           model={"z_dim": 8, "arch": "mlp", "hidden": 1000, "depth": 2, "d_hidden": 1000, "d_depth": 2,
                  "prior": "gaussian", "prior_opts": {"sigma": 5.0}, "recon": "bce", "gen_lr": 1e-4,
                  "dis_lr": 5e-5})
add_preset("aae-mnist-2d", "aae", "MNIST, 2-D codes on the paper's mixture of 10 Gaussians, label-tied (Fig. 4)",
           train={"data": "mnist:data/mnist", "resolution": 28, "batch_size": 100, "kimg": 3000},
           model={"z_dim": 2, "arch": "mlp", "hidden": 1000, "depth": 2, "d_hidden": 1000, "d_depth": 2,
                  "prior": "mixture", "label_prior": True, "recon": "bce", "gen_lr": 1e-4, "dis_lr": 5e-5})
# Colour fractals: the convolutional nets of the VAE demo (GroupNorm, lr 2e-4, MSE in [-1, 1]); with
# the digits settings (z 8, BCE, lr 1e-3, no normalisation) 90 s on 32 px fractals left the
# reconstructions at their untrained error (MSE 0.0787 -> 0.0789, unit range).
add_preset("aae-fractals", "aae", "AAE on 32 px fractals, N(0, I) prior, convolutional nets",
           train={"data": "fractals", "resolution": 32, "batch_size": 32, "kimg": 100},
           model={"z_dim": 64, "arch": "conv", "base_channels": 32, "max_channels": 128, "norm": "group",
                  "recon": "mse", "lr": 2e-4, "prior": "gaussian"})

# The contract tests' tiny config (calae.config.add_tiny).
add_tiny("aae", {"z_dim": 4, "arch": "mlp", "hidden": 32, "depth": 1, "d_hidden": 32, "d_depth": 1})
