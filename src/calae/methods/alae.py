"""ALAE: Adversarial Latent Autoencoder (Pidhorskyi, Adjeroh & Doretto, CVPR 2020; seed 001).

Networks: F maps z ~ N(0, I) to w; G decodes w to an image; E encodes an image to w; D scores a
w (the discriminator lives on the latent, never on pixels: D∘E is the GAN's discriminator).
Per batch, three phases (Algorithm 1 of the paper; methods.md §3), all non-saturating:

  1. E, D   softplus(D(E(G(F(z))))) + softplus(−D(E(x))) + γ/2·E‖∇_x D(E(x))‖²   R1 on reals, γ = 10;
            the fakes are made without gradient.
  2. F, G   softplus(−D(E(G(F(z)))))                                          E and D frozen.
  3. E, G   mean ‖F(z) − E(G(F(z)))‖²   latent reciprocity (the mean over batch and w's dimensions,
            as the official code). There is no pixel loss in ALAE.

Decisions (methods.md asks for them):
- F in phase 3 (``f_in_reciprocity``, default False): the paper's Algorithm 1 updates θ_E, θ_G in
  step 3, and so do we. The official code lets F learn here too, as a side effect of F sitting in
  G's optimizer: the target F(z) is detached but the gradient reaches F through G's input. Set
  True to reproduce that. Either way the target F(z) is detached.
- D (``d_linear``, default False): a 3-layer MLP with LeakyReLU 0.2. The official D is three linear
  layers with no activation - a linear function of w, which its author called an error kept for
  consistency (issue #44); ``d_linear=True`` reproduces it.
- One Adam over E, D, F, G with one parameter group per network, shared by the three phases. The
  loop clears every gradient to None before a phase and only the phase's networks get one; torch's
  Adam skips parameters without a gradient, so each network's Adam state advances only in the
  phases that train it and E's second-moment estimate sees both its phase-1 and phase-3
  gradients - the official code's behaviour (its phase 3 steps the same two optimizers as
  phases 1 and 2). Adam β = (0, 0.99).
- Equalized learning rate by runtime He scaling (``calae.nets.layers``), trained by the loop's
  plain Adam; F and D learn 10× slower through their layers' lrmul = 0.1 (not an optimizer
  multiplier, which would apply it twice).
- Value range (``value_range=auto``): [0, 1] for the MLP (the official MNIST code divides by 255 and
  has a linear output), [−1, 1] for the style networks (official x/127.5 − 1).
- EMA (half-life ``ema_kimg`` = 10 kimg, the official β = 0.5^(batch/10k)) of F, G and - as the
  official code, whose reconstructions use the averaged encoder - of E (``ema_encoder``). Every
  picture and metric goes through ``net()``, i.e. the EMA copies.
- Truncation (ψ = ``truncation_psi`` 0.7 on the first ``truncation_cutoff`` = 8 style inputs,
  towards the mean w̄ of F_ema over 4,096 fixed z) is for display only: ``sample(n, seed)`` is
  untruncated (metrics use it), ``sample(n, seed, psi=...)`` and pictures (``display_options``) truncate. w̄
  is recomputed from F_ema when needed instead of kept as a running buffer (the official
  ``dlatent_avg``): no hidden state, the same value in every snapshot.

Architectures (``arch``): ``mlp`` is the official MNIST setup (branch ``mnist_ref``): E numel → 1024
→ 1024 → w, G w → 1024 → 1024 → numel, equalized layers. Its activations and gains are options
(official values in brackets, which the ``mnist-mlp`` preset sets; the defaults are the earlier
networks of this project): E's hidden LeakyReLU ``e_slope`` [0.2] and a LeakyReLU on its w output
``e_out_slope`` [0.01, torch's default slope; None: linear], G's hidden slope ``g_slope`` [0.01] and
the He gain of its output layer ``g_out_gain`` [√2, lreq's default; for the style nets the same
option is the ToRGB gain, official 0.03]. The official MNIST F (MappingFromLatent) is the identity
(``mapping_layers=0``) and its D (MappingToLatentNoStyle) three linear layers of lrmul 0.1
(``d_linear``). When a growth level starts the official LODDriver forgets both Adam states;
``optimizer_epoch`` returns the level so that the loop does the same (``level_resets_adam``; the
MLP and the official MNIST run have one level, so nothing is reset there).
Deliberate differences from ``mnist_ref`` in the preset: ``encode`` reads the EMA encoder (the
official evaluation uses the trained one; ``benchmarks/bench_alae_mnist.py`` reports both); the
official F and D keep unused parameters (F's six ignored layers, D's 49 unread outputs) that get
no gradient, so leaving them out changes nothing; the budget (600 kimg, against the official 400
epochs = 24,000 kimg). ``style`` is
StyleALAE: the StyleGAN-v1 generator and the style encoder of ``calae.nets.style``, with style
mixing (p = 0.9 in phases 1 and 2; not in phase 3, as the official code) and progressive growing
from 4×4 (``growth_kimg`` per level, fade-in over the first ``fade`` = half of each level). The
growth schedule is a pure function of ``ctx.kimg``: each loss asks it for (level, α), trains G and
E at that level and downsamples the real batch to it (blended with its 2× coarser version during
the fade-in, as the official loop). Inference uses the level reached in training
(``trained_kimg``, a buffer) and shows images upsampled to the data resolution.

For CALAE: ``E(x, lod, alpha, features=True)`` returns (w, feature maps); ``G(w, lod, alpha,
noise=G.make_noise(...))`` with frozen noise is deterministic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, MethodConfig, NetConfig, add_preset, add_tiny, check, check_choice, check_range
from ..data.base import Batch, DataInfo
from ..losses import nonsat_logistic, r1_penalty
from ..nets.layers import EqMLP, downsample2x, upsample2x
from ..priors import make_prior
from ..nets.style import (GrowthSchedule, LatentDiscriminator, MappingNetwork, StyleEncoder, StyleGenerator,
                          broadcast_styles, mix_styles, num_levels, truncate)
from ..registry import METHODS, register
from .base import Method, OptimizerSpec, Phase, StepContext

__all__ = ["ALAEConfig", "ALAE", "MLPEncoder", "MLPGenerator", "disc_phase", "gen_phase", "recip_phase"]

W_AVG_SEED = 0x5EED  # z used for the truncation centre w̄
DECODE_NOISE_SEED = 0  # frozen noise of decode(): the same picture for the same w, every call


@dataclass
class ALAEConfig(NetConfig, MethodConfig):
    lr: float = 0.002  # official: 0.002 (MNIST), 0.0015 at low resolutions (FFHQ)
    betas: tuple[float, float] = (0.0, 0.99)
    z_dim: int = 128
    w_dim: int | None = None  # None: z_dim
    # p(z), F's input: any registered prior (calae list), e.g. the fractal ones ifs, sierpinski, kali
    # (seed 000: "the fractal distribution as a prior in place of the usual Gaussian")
    prior: str = "gaussian"
    prior_opts: dict = field(default_factory=dict)
    # network options (arch, hidden, depth, base_channels, max_channels) from NetConfig; arch auto:
    # mlp for points and <= 28 px one-channel images, else style
    ARCHS = ("auto", "mlp", "style")
    UNUSED = ("act", "norm", "stem")  # the MLP's slopes are e_slope / g_slope below; style nets use AdaIN
    value_range: str = "auto"  # auto: unit for mlp, tanh for style | unit | tanh
    # mlp (official MNIST)
    hidden: int = 1024
    depth: int = 2
    # style networks (base_channels, max_channels from NetConfig)
    noise: bool = True  # noise inputs of the generator
    style_mixing: float = 0.9  # probability of mixing two w in phases 1 and 2
    truncation_psi: float = 0.7  # display only
    truncation_cutoff: int = 8  # style inputs the truncation applies to
    growth_kimg: float = 0.0  # kimg per level of progressive growing; 0: train the last level from the start
    fade: float = 0.5  # fraction of a level's kimg spent fading it in
    fade_ramp: str = "cosine"  # cosine (official) | linear (PGGAN)
    # activations and output gains of E and G (official mnist_ref values in brackets; the defaults
    # are this project's earlier choices, the mnist-mlp preset sets the official ones)
    e_slope: float = 0.2  # LeakyReLU slope in the MLP E's hidden layers [0.2]
    e_out_slope: float | None = None  # LeakyReLU on the MLP E's w output; None: linear [0.01]
    g_slope: float = 0.2  # LeakyReLU slope in the MLP G's hidden layers [0.01]
    g_out_gain: float = 1.0  # He gain of G's last layer: the MLP's output layer [√2], the style ToRGB [0.03]
    level_resets_adam: bool = True  # forget Adam's state when a growth level starts (official LODDriver)
    # F and D
    mapping_layers: int = 8  # F's layers; 0: identity (official MNIST)
    mapping_hidden: int | None = None  # None: w_dim
    mapping_lrmul: float = 0.1
    d_layers: int = 3
    d_hidden: int | None = None  # None: w_dim
    d_lrmul: float = 0.1
    d_linear: bool = False  # True: the official linear D
    # losses and averaging
    r1_gamma: float = 10.0
    f_in_reciprocity: bool = False  # True: F also learns in phase 3 (official code); False: the paper
    ema_kimg: float = 10.0
    ema_encoder: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_range("z_dim", self.z_dim, 1, 4096)
        if self.w_dim is not None:
            check_range("w_dim", self.w_dim, 1, 4096)
        check_choice("arch", self.arch, ("auto", "mlp", "style"))
        check_choice("value_range", self.value_range, ("auto", "unit", "tanh"))
        check_range("hidden", self.hidden, 1, 65536)
        check_range("depth", self.depth, 0, 64)
        check_range("base_channels", self.base_channels, 1, 4096)
        check_range("max_channels", self.max_channels, 1, 4096)
        check_range("style_mixing", self.style_mixing, 0, 1)
        check_range("truncation_psi", self.truncation_psi, -2, 2)
        check_range("truncation_cutoff", self.truncation_cutoff, 0)
        check_range("growth_kimg", self.growth_kimg, 0)
        check_range("fade", self.fade, 0, 1)
        check_choice("fade_ramp", self.fade_ramp, ("cosine", "linear"))
        check_range("mapping_layers", self.mapping_layers, 0, 64)
        check_range("mapping_lrmul", self.mapping_lrmul, 0, 1, lo_open=True)
        check_range("d_layers", self.d_layers, 1, 64)
        check_range("d_lrmul", self.d_lrmul, 0, 1, lo_open=True)
        check_range("r1_gamma", self.r1_gamma, 0)
        check_range("ema_kimg", self.ema_kimg, 0)
        check_range("e_slope", self.e_slope, 0, 1)
        check_range("g_slope", self.g_slope, 0, 1)
        if self.e_out_slope is not None:
            check_range("e_out_slope", self.e_out_slope, 0, 1)
        check_range("g_out_gain", self.g_out_gain, 0, 100, lo_open=True)
        check(isinstance(self.prior_opts, dict), f"prior_opts must be a JSON object; got {self.prior_opts!r}")
        make_prior(self.prior, self.z_dim, **self.prior_opts)  # names and values checked now, not mid-run
        check(self.mapping_layers > 0 or self.w_dim in (None, self.z_dim),
              f"mapping_layers=0 (F = identity) needs w_dim == z_dim; got w_dim={self.w_dim}, z_dim={self.z_dim}")


# ---- the official MNIST networks -----------------------------------------------------------------
class MLPEncoder(nn.Module):
    """E of the official MNIST setup: flattened x -> hidden x depth (LeakyReLU `slope`) -> w, linear or
    through LeakyReLU `out_slope` (official EncoderFC: 0.2, and 0.01 on w). Same call signature as the
    style encoder; ``features=True`` adds the hidden activations."""

    levels = 1

    def __init__(self, in_dim: int, w_dim: int, hidden: int = 1024, depth: int = 2, slope: float = 0.2,
                 out_slope: float | None = None):
        super().__init__()
        self.net = EqMLP(in_dim, w_dim, hidden, depth, slope=slope, out_slope=out_slope)

    def forward(self, x, lod=None, alpha: float = 1.0, features: bool = False):
        w, feats = self.net.features(x)
        return (w, feats) if features else w


class MLPGenerator(nn.Module):
    """G of the official MNIST setup: w -> hidden x depth (LeakyReLU `slope`) -> pixels, a linear output
    layer of He gain `out_gain` (official GeneratorFC: slope 0.01, gain √2)."""

    levels, num_ws = 1, 1

    def __init__(self, w_dim: int, shape: tuple[int, ...], hidden: int = 1024, depth: int = 2, slope: float = 0.2,
                 out_gain: float = 1.0):
        super().__init__()
        self.shape = tuple(shape)
        numel = 1
        for s in self.shape:
            numel *= s
        self.net = EqMLP(w_dim, numel, hidden, depth, out_gain=out_gain, slope=slope)

    def make_noise(self, n, lod=None, generator=None, device=None):
        return None  # no noise inputs: G is deterministic

    def forward(self, w, lod=None, alpha: float = 1.0, noise=None, features: bool = False):
        if w.dim() == 3:  # per-layer styles: an MLP has one input
            w = w[:, 0]
        x, feats = self.net.features(w)
        x = x.view(w.shape[0], *self.shape)
        return (x, feats) if features else x


def resolve_arch(cfg: ALAEConfig, info: DataInfo) -> str:
    if cfg.arch != "auto":
        return cfg.arch
    if info.kind != "image" or (info.channels == 1 and info.resolution <= 28):
        return "mlp"
    return "style"


# ---- the method --------------------------------------------------------------------------------
@register(METHODS, "alae")
class ALAE(Method):
    name = "alae"
    Config = ALAEConfig

    def __init__(self, cfg: ALAEConfig, info: DataInfo):
        super().__init__(cfg, info)
        self.arch = arch = resolve_arch(cfg, info)
        self.w_dim = w_dim = cfg.w_dim or cfg.z_dim
        if arch == "style":
            if info.kind != "image":
                raise ConfigError("arch=style needs image data; use arch=mlp for points")
            try:
                num_levels(info.resolution)
            except ValueError:
                raise ConfigError(f"arch=style needs a power-of-two resolution (4, 8, 16, 32, 64, ...); the data "
                                  f"is {info.resolution} px: pass --resolution 32, or use --set arch=mlp") from None
            E = StyleEncoder(w_dim, info.channels, info.resolution, cfg.base_channels, cfg.max_channels)
            G = StyleGenerator(w_dim, info.channels, info.resolution, cfg.base_channels, cfg.max_channels,
                               rgb_gain=cfg.g_out_gain)
        else:
            E = MLPEncoder(info.numel, w_dim, cfg.hidden, cfg.depth, cfg.e_slope, cfg.e_out_slope)
            G = MLPGenerator(w_dim, info.shape, cfg.hidden, cfg.depth, cfg.g_slope, cfg.g_out_gain)
        self.nets["E"] = E
        self.nets["D"] = LatentDiscriminator(w_dim, cfg.d_layers, cfg.d_hidden, cfg.d_lrmul, cfg.d_linear)
        self.nets["F"] = MappingNetwork(cfg.z_dim, w_dim, cfg.mapping_layers, cfg.mapping_hidden, cfg.mapping_lrmul)
        self.nets["G"] = G
        self.prior = make_prior(cfg.prior, cfg.z_dim, **cfg.prior_opts)
        self.has_F = any(True for _ in self.nets["F"].parameters())  # False for the identity mapping
        self.growth = GrowthSchedule(G.levels, cfg.growth_kimg if arch == "style" else 0.0, cfg.fade, cfg.fade_ramp)
        # training progress, so that inference uses the level training reached (saved in snapshots)
        self.register_buffer("trained_kimg", torch.zeros((), dtype=torch.float64))
        self.make_ema((("E",) if cfg.ema_encoder else ()) + (("F",) if self.has_F else ()) + ("G",))
        self.conv = arch == "style"
        vr = cfg.value_range
        self.value_range = ("unit" if arch == "mlp" else "tanh") if vr == "auto" else vr

    # ---- training description -------------------------------------------------------------------
    def _trained(self, *names: str) -> tuple[str, ...]:
        return tuple(n for n in names if n != "F" or self.has_F)

    def optimizer_epoch(self, kimg: float) -> int:
        """The growth level at ``kimg``: the loop resets Adam's state whenever it changes, as the
        official LODDriver does when a level starts (``level_resets_adam``). Always 0 without growth
        (the MLP, and the official MNIST run, which starts at its only level)."""
        return self.growth.at(kimg)[0] if self.cfg.level_resets_adam else 0

    def optimizers(self):
        return {"adam": OptimizerSpec(self._trained("E", "D", "F", "G"), self.cfg.lr, tuple(self.cfg.betas))}

    def phases(self):
        recip = ("E", "G", "F") if self.cfg.f_in_reciprocity else ("E", "G")
        return [Phase("disc", ("E", "D"), "adam", disc_phase),
                Phase("gen", self._trained("F", "G"), "adam", gen_phase),
                Phase("recip", self._trained(*recip), "adam", recip_phase)]

    # ---- pieces the phases share ----------------------------------------------------------------
    def level(self, ctx: StepContext) -> tuple[int, float]:
        """(level, alpha) of the progressive-growing schedule after ctx.kimg thousand images."""
        return self.growth.at(ctx.kimg)

    def on_step_end(self, ctx: StepContext) -> None:
        """Inference uses the growth level training has reached: remember this step's kimg."""
        self.trained_kimg.fill_(max(float(self.trained_kimg), float(ctx.kimg)))

    def draw_z(self, n: int) -> torch.Tensor:
        """z ~ p(z) (the ``prior``; N(0, I) by default) from torch's global CPU RNG (saved in training
        states: exact resume). [n, z_dim]"""
        p = next(self.nets["G"].parameters())
        return self.prior.sample(n).to(p.device, p.dtype)

    def real_at(self, x: torch.Tensor, lod: int, alpha: float) -> torch.Tensor:
        """Real images at the level's resolution: 2×2-average down to 4·2^lod px, and during a
        fade-in lerp(upsample(downsample(x)), x, α) - what G can draw at that moment."""
        if self.arch != "style":
            return x
        r = 4 * 2 ** lod
        if x.shape[-1] != r:
            x = F.avg_pool2d(x, x.shape[-1] // r)
        if alpha < 1.0 and lod > 0:
            x = torch.lerp(upsample2x(downsample2x(x)), x, alpha)
        return x

    def to_full(self, img: torch.Tensor) -> torch.Tensor:
        """Nearest-upsample a lower-level image to the data resolution (pictures, metrics)."""
        if self.arch == "style" and img.shape[-1] != self.info.resolution:
            img = F.interpolate(img, size=(self.info.resolution, self.info.resolution), mode="nearest")
        return img

    def styles(self, z: torch.Tensor, lod: int, mixing: bool, Fnet: nn.Module | None = None) -> torch.Tensor:
        """Per-layer styles [N, L, w_dim] from z; with probability `style_mixing` (when `mixing`) the
        layers from a random crossover in [1, 2(lod+1)] on take the w of a second z (StyleGAN §3.1,
        official Model.generate). All draws come from the global RNG."""
        Fnet = Fnet or self.nets["F"]
        ws = broadcast_styles(Fnet(z), self.nets["G"].num_ws)
        p = self.cfg.style_mixing if self.arch == "style" else 0.0
        if mixing and p > 0 and float(torch.rand(())) < p:
            ws2 = broadcast_styles(Fnet(self.draw_z(z.shape[0])), ws.shape[1])
            cutoff = int(torch.randint(1, 2 * (lod + 1) + 1, ()))
            ws = mix_styles(ws, ws2, cutoff)
        return ws

    def generate(self, ws: torch.Tensor, lod: int, alpha: float, G: nn.Module | None = None, noise="random"):
        G = G or self.nets["G"]
        return G(ws, lod, alpha, noise if (self.cfg.noise and self.arch == "style") else None)

    def critic(self, x: torch.Tensor, lod: int, alpha: float) -> torch.Tensor:
        """D(E(x)): the logit [N] of the GAN's discriminator."""
        return self.nets["D"](self.nets["E"](x, lod, alpha)).float()

    # ---- inference surface ----------------------------------------------------------------------
    def current_level(self) -> tuple[int, float]:
        return self.growth.at(float(self.trained_kimg))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """w = E(x) [N, w_dim] (EMA encoder), x at the data resolution."""
        lod, alpha = self.current_level()
        return self.net("E")(self.real_at(x, lod, alpha), lod, alpha).float()

    latent_name = "w"

    @property
    def latent_dim(self) -> int:
        return self.w_dim

    def latent_space(self):
        from ..api import LatentSpace

        return LatentSpace("w", self.w_dim, f"{self.name.upper()}: w = F(z), z ~ {self.cfg.prior} prior; E(x) lives "
                                            f"in the same space")

    def decode_options(self) -> tuple:
        from ..api import DecodeOption

        opts = [DecodeOption("psi", 1.0, "truncation towards the mean w of F (1: none; StyleGAN shows 0.7)",
                             -2.0, 2.0)]
        if self.arch == "style" and self.cfg.noise:
            opts.append(DecodeOption("noise_seed", DECODE_NOISE_SEED, "seed of the generator's noise inputs", 0))
        return tuple(opts)

    def display_options(self) -> dict:
        return {"psi": self.cfg.truncation_psi}

    @torch.no_grad()
    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """w = F_ema(z), z ~ p(z): the codes decode takes (not z: that is F's input). [n, w_dim]"""
        z = self.prior.sample(n, generator).to(self.device())
        return self.net("F")(z).float()

    def decode(self, w: torch.Tensor, noise=None, psi: float = 1.0, noise_seed: int = DECODE_NOISE_SEED) -> torch.Tensor:
        """G_ema(w) at the data resolution; w [N, w_dim] or per-layer [N, L, w_dim]. ``psi`` < 1
        truncates the first ``truncation_cutoff`` styles towards w̄. The noise inputs get a fixed
        draw (seed ``noise_seed``) unless ``noise`` (a make_noise list) is given."""
        lod, alpha = self.current_level()
        G = self.net("G")
        if psi != 1.0:
            ws = broadcast_styles(w, G.num_ws) if w.dim() == 2 else w
            w = truncate(ws, self.w_avg(), float(psi), self.cfg.truncation_cutoff)
        if noise is None:
            noise = G.make_noise(w.shape[0], lod, torch.Generator().manual_seed(int(noise_seed)), w.device)
        return self.to_full(self.generate(w, lod, alpha, G, noise).float())

    @torch.no_grad()
    def w_avg(self, n: int = 4096) -> torch.Tensor:
        """w̄ = mean of F_ema(z) over n fixed z: the centre of the truncation trick. [w_dim]"""
        z = self.prior.sample(n, torch.Generator().manual_seed(W_AVG_SEED)).to(self.device())
        return self.net("F")(z).float().mean(0)

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, psi: float | None = None, noise_seed: int | None = None) -> torch.Tensor:
        """G_ema(F_ema(z)), z and noise from a generator seeded by `seed` (or the noise from
        ``noise_seed``); untruncated unless psi is given (metrics call it untruncated)."""
        g = torch.Generator().manual_seed(int(seed))
        ws = broadcast_styles(self.sample_latents(n, g), self.nets["G"].num_ws)
        if psi is not None and psi != 1.0:
            ws = truncate(ws, self.w_avg(), float(psi), self.cfg.truncation_cutoff)
        lod, _ = self.current_level()
        ng = g if noise_seed is None else torch.Generator().manual_seed(int(noise_seed))
        noise = self.net("G").make_noise(n, lod, ng, ws.device)
        return self.decode(ws, noise)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


# ---- the three phases (Algorithm 1), in the paper's order -------------------------------------------
def disc_phase(m: ALAE, batch: Batch, ctx: StepContext) -> dict:
    """Phase 1, E and D: softplus(D(E(G(F(z))))) + softplus(−D(E(x))) + γ/2·E‖∇_x D(E(x))‖²."""
    lod, alpha = m.level(ctx)
    gamma = m.cfg.r1_gamma
    # detach: the batch is data, nothing upstream to train; a fresh leaf so that R1 can take the
    # gradient of D(E(x)) with respect to the pixels (not to any parameter)
    x = m.real_at(batch.x, lod, alpha).detach().requires_grad_(gamma > 0)
    with torch.no_grad():  # fakes made without gradient: this phase trains E and D only
        fake = m.generate(m.styles(m.draw_z(x.shape[0]), lod, mixing=True), lod, alpha)
    real_logit = m.critic(x, lod, alpha)
    fake_logit = m.critic(fake, lod, alpha)
    adv = nonsat_logistic(fake_logit, real=False) + nonsat_logistic(real_logit, real=True)
    r1 = r1_penalty(real_logit, x) if gamma > 0 else torch.zeros((), device=x.device)
    return {"loss": adv + 0.5 * gamma * r1, "adv": adv, "r1": r1, "real": real_logit.mean(),
            "fake": fake_logit.mean()}


def gen_phase(m: ALAE, batch: Batch, ctx: StepContext) -> dict:
    """Phase 2, F and G: softplus(−D(E(G(F(z))))), E and D frozen (not in this phase's networks)."""
    lod, alpha = m.level(ctx)
    fake = m.generate(m.styles(m.draw_z(batch.x.shape[0]), lod, mixing=True), lod, alpha)
    logit = m.critic(fake, lod, alpha)
    return {"loss": nonsat_logistic(logit, real=True), "fake": logit.mean()}


def recip_phase(m: ALAE, batch: Batch, ctx: StepContext) -> dict:
    """Phase 3, E and G (and F with f_in_reciprocity): latent reciprocity mean‖F(z) − E(G(F(z)))‖²."""
    lod, alpha = m.level(ctx)
    w = m.nets["F"](m.draw_z(batch.x.shape[0]))  # [N, w_dim]
    # detach (unless f_in_reciprocity): the paper's step 3 updates E and G only; this blocks the
    # gradient into F through G's input (the official code lets it through)
    w_in = w if m.cfg.f_in_reciprocity else w.detach()
    fake = m.generate(broadcast_styles(w_in, m.nets["G"].num_ws), lod, alpha)  # no style mixing here
    w_rec = m.nets["E"](fake, lod, alpha).float()
    # detach: F(z) is the regression target; no gradient flows into F through the target
    loss = (w_rec - w.detach().float()).pow(2).mean()
    return {"loss": loss, "recip": loss}


# ---- presets (seed 001's steps) -----------------------------------------------------------------
# Official MNIST: lr 0.002, batch 128 for 400+ epochs. On a CPU budget batch 32 and a higher lr learn
# much faster per image (digits, 60 kimg: Fréchet distance in classifier features 84 vs 647). Likewise
# the style presets use lr 0.004 / 0.003 at batch 16 (official: 0.0015 at batch 64-512 for millions of
# images); on 16 px fractals, 10 kimg: SWD(gen) 44 at lr 0.004 vs 65 at 0.002.
_MLP = {"arch": "mlp", "z_dim": 50, "hidden": 1024, "depth": 2, "mapping_layers": 3, "lr": 0.002}
# The official MNIST networks (branch mnist_ref, GeneratorFC / EncoderFC / MappingToLatentNoStyle, F the
# identity): E's w output through LeakyReLU 0.01, slope 0.01 in G, G's output layer at the default gain √2,
# a linear D of three layers.
_MNIST_REF = {"arch": "mlp", "z_dim": 50, "hidden": 1024, "depth": 2, "mapping_layers": 0, "lr": 0.002,
              "e_slope": 0.2, "e_out_slope": 0.01, "g_slope": 0.01, "g_out_gain": math.sqrt(2.0),
              "d_layers": 3, "d_linear": True, "r1_gamma": 10.0, "ema_kimg": 10.0}
add_preset("mnist-mlp", "alae", "MLP-ALAE on MNIST (784-1024-1024-50), the official batch 128 and "
           "lr 0.002 (use --data mnist:DIR --download)",
           train={"data": "mnist:data/mnist", "resolution": 28, "batch_size": 128, "kimg": 600,
                  "sample_every_kimg": 30, "snapshot_every_kimg": 60, "log_every_kimg": 5},
           model=dict(_MNIST_REF))
add_preset("digits-mlp", "alae", "MLP-ALAE on scikit-learn digits at 16 px",
           train={"data": "digits", "resolution": 16, "batch_size": 32, "kimg": 150,
                  "sample_every_kimg": 10, "snapshot_every_kimg": 25, "log_every_kimg": 2},
           model={**_MLP, "hidden": 512, "lr": 0.005, "ema_kimg": 2.0})
_STYLE = {"arch": "style", "mapping_layers": 4, "lr": 0.004, "style_mixing": 0.9, "truncation_psi": 0.7,
          "fade": 0.5}
add_preset("style-32", "alae", "StyleALAE on 32 px fractals, growing 4 -> 32 px",
           train={"data": "fractals", "resolution": 32, "n_data": 10000, "batch_size": 16, "kimg": 20,
                  "sample_every_kimg": 2, "snapshot_every_kimg": 4, "log_every_kimg": 0.5},
           model={**_STYLE, "z_dim": 64, "base_channels": 16, "max_channels": 64, "growth_kimg": 4,
                  "ema_kimg": 1.0})
add_preset("style-64", "alae", "StyleALAE on 64 px fractals, growing 4 -> 64 px",
           train={"data": "fractals", "resolution": 64, "n_data": 20000, "batch_size": 16, "kimg": 60,
                  "sample_every_kimg": 4, "snapshot_every_kimg": 8, "log_every_kimg": 1},
           model={**_STYLE, "z_dim": 128, "base_channels": 16, "max_channels": 128, "growth_kimg": 8,
                  "lr": 0.003, "ema_kimg": 2.0})

# The contract tests' tiny config: style arch with progressive growing; on 16 px digits the levels are
# 4, 8, 16 px and growth_kimg 0.064 puts the engine's resume point (step 5 of batch 16 = 0.08 kimg) in
# the middle of the 8 px fade-in.
add_tiny("alae", {"arch": "style", "z_dim": 8, "base_channels": 4, "max_channels": 8, "mapping_layers": 2,
                "d_layers": 2, "growth_kimg": 0.064, "ema_kimg": 0.05})
