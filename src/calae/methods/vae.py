"""VAE (Kingma & Welling 2014): the baseline every other method is compared against (seed 004).

E(x) -> (μ, log σ²); z = μ + σ·ε; x̂ = G(z).
loss = β_rec · Σ_pixels rec(x, x̂) + β_kl · KL(N(μ, σ²) || N(0, I)), mean over the batch (methods.md §1).
One phase updates E and G together.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import MethodConfig, NetConfig, add_preset, add_tiny, check, check_choice, check_range
from ..data.base import Batch, DataInfo
from ..losses import kl_normal, recon_loss, reparameterize
from ..nets import MLP, ConvDecoder, ConvEncoder
from ..nets.conv import resolve_stem
from ..registry import METHODS, register
from .base import Method, OptimizerSpec, Phase, StepContext


@dataclass
class VAEConfig(NetConfig, MethodConfig):
    """Network options (arch, hidden, depth, act, base_channels, max_channels, norm) come from
    NetConfig; arch auto: mlp for points, conv for images."""

    z_dim: int = 64
    beta_rec: float = 1.0
    beta_kl: float = 1.0
    recon: str = "mse"  # mse (linear output) | bce (images in [0, 1], decoder emits logits)
    # Images' range in the model: auto (unit under bce, tanh under mse) | unit [0, 1] | tanh [-1, 1].
    # The squared error of an image is 4x larger in [-1, 1] than in [0, 1], so the range sets the
    # balance of β_rec·L_r against the KL (and Soft-IntroVAE's β_neg) terms: the official
    # Soft-IntroVAE trains MSE in [0, 1] (ToTensor, linear output).
    value_range: str = "auto"

    ARCHS = ("auto", "conv", "mlp")

    def __post_init__(self):
        super().__post_init__()
        check_range("z_dim", self.z_dim, 1, 4096)
        check_range("beta_rec", self.beta_rec, 0, lo_open=True)
        check_range("beta_kl", self.beta_kl, 0)
        check_choice("recon", self.recon, ("mse", "bce"))
        check_choice("value_range", self.value_range, ("auto", "unit", "tanh"))
        check(not (self.recon == "bce" and self.value_range == "tanh"),
              "recon=bce needs images in [0, 1]: value_range must be auto or unit; got 'tanh'")


def resolve_arch(arch: str, info: DataInfo, mlp_for_small_gray: bool = False) -> str:
    """``arch=auto`` chosen from the data: mlp for points, conv for images; with
    ``mlp_for_small_gray`` also mlp for one-channel images of at most 28 px (MNIST-like, as ALAE's
    and the AAE paper's MNIST setups)."""
    if arch != "auto":
        return arch
    if info.kind == "points" or (mlp_for_small_gray and info.channels == 1 and info.resolution <= 28):
        return "mlp"
    return "conv"


def build_encoder_decoder(net: NetConfig, info: DataInfo, enc_out: int, dec_in: int, arch: str):
    """E: data -> enc_out, G: dec_in -> data, for a resolved ``arch`` (mlp | conv) from the network
    options and the dataset's description."""
    if arch == "conv":
        if info.kind != "image":
            raise ValueError("arch=conv needs image data; use arch=mlp for points")
        stem = resolve_stem(net.stem, info.channels, info.resolution)
        E = ConvEncoder(info.channels, info.resolution, enc_out, net.base_channels, net.max_channels, net.norm, stem)
        G = ConvDecoder(info.channels, info.resolution, dec_in, net.base_channels, net.max_channels, net.norm, stem)
    else:
        E = MLP(info.numel, enc_out, net.hidden, net.depth, net.act)
        G = _Unflatten(MLP(dec_in, info.numel, net.hidden, net.depth, net.act), info.shape)
    return E, G


def resolve_value_range(cfg) -> str:
    """``value_range=auto``: unit [0, 1] under BCE (its targets are probabilities), else tanh [-1, 1]."""
    if cfg.value_range != "auto":
        return cfg.value_range
    return "unit" if cfg.recon == "bce" else "tanh"


class _Unflatten(torch.nn.Module):
    def __init__(self, net: torch.nn.Module, shape: tuple[int, ...]):
        super().__init__()
        self.net, self.shape = net, tuple(shape)

    def forward(self, z):
        return self.net(z).view(z.shape[0], *self.shape)


class VAEBase(Method):
    """Shared by the Gaussian-posterior methods (VAE, Soft-IntroVAE, ...): E, G and their surface."""

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        arch = resolve_arch(cfg.arch, info)
        E, G = build_encoder_decoder(cfg.net_config(), info, 2 * cfg.z_dim, cfg.z_dim, arch)
        self.nets["E"], self.nets["G"] = E, G
        self.conv = arch == "conv"
        self.value_range = resolve_value_range(cfg)

    def posterior(self, x: torch.Tensor, E: torch.nn.Module | None = None):
        mu, logvar = (E or self.nets["E"])(x).float().chunk(2, dim=1)  # [N, z] each
        return mu, logvar

    def output(self, logits: torch.Tensor) -> torch.Tensor:
        """Decoder output in the data range (sigmoid of logits under BCE)."""
        return torch.sigmoid(logits) if self.cfg.recon == "bce" else logits

    def encode(self, x):
        return self.posterior(x, self.net("E"))[0]

    def decode(self, w):
        return self.output(self.net("G")(w).float())

    def elbo(self, x: torch.Tensor, beta_rec: float | None = None, beta_kl: float | None = None) -> torch.Tensor:
        """Per-item −(β_rec·rec + β_kl·KL) with z = μ; the βs default to the training ones (the
        2-D toy metric passes 1 and 1, as the Soft-IntroVAE evaluation does)."""
        beta_rec = self.cfg.beta_rec if beta_rec is None else beta_rec
        beta_kl = self.cfg.beta_kl if beta_kl is None else beta_kl
        mu, logvar = self.posterior(x, self.net("E"))
        rec = recon_loss(self.net("G")(mu), x, self.cfg.recon, reduce=False)
        return -(beta_rec * rec + beta_kl * kl_normal(mu, logvar, reduce=False))


@register(METHODS, "vae")
class VAE(VAEBase):
    name = "vae"
    Config = VAEConfig

    def optimizers(self):
        return {"EG": OptimizerSpec(("E", "G"), self.cfg.lr, tuple(self.cfg.betas))}

    def phases(self):
        return [Phase("vae", ("E", "G"), "EG", vae_loss)]


def vae_loss(m: VAE, batch: Batch, ctx: StepContext) -> dict:
    """β_rec·Σ rec(x, G(z)) + β_kl·KL(q(z|x) || N(0, I)), z = μ + σ·ε (methods.md §1)."""
    x, cfg = batch.x, m.cfg
    mu, logvar = m.posterior(x)
    x_hat = m.nets["G"](reparameterize(mu, logvar))
    rec = recon_loss(x_hat, x, cfg.recon)
    kl = kl_normal(mu, logvar)
    return {"loss": cfg.beta_rec * rec + cfg.beta_kl * kl, "rec": rec, "kl": kl}


add_preset("vae-fractals", "vae", "VAE on 64 px fractals",
           train={"data": "fractals", "resolution": 64, "batch_size": 32, "kimg": 200},
           model={"z_dim": 128, "base_channels": 32, "lr": 2e-4})
add_preset("vae-demo", "vae", "the `calae demo` run: VAE on 32 px fractals (the demo sets its budget in seconds)",
           train={"data": "fractals", "resolution": 32, "batch_size": 32, "kimg": 12, "n_data": 4096},
           model={"z_dim": 64, "base_channels": 32, "max_channels": 128, "lr": 2e-4, "beta_kl": 0.1})
add_preset("vae-digits", "vae", "VAE on scikit-learn digits at 16 px",
           train={"data": "digits", "resolution": 16, "batch_size": 64, "kimg": 60},
           model={"z_dim": 16, "base_channels": 32, "lr": 1e-3})
add_preset("vae-mnist", "vae", "VAE on MNIST IDX files (use --data mnist:DIR)",
           train={"data": "mnist:data/mnist", "resolution": 28, "batch_size": 128, "kimg": 600},
           model={"z_dim": 32, "base_channels": 32, "lr": 1e-3})
add_preset("vae-toy", "vae", "VAE on a 2-D toy (official 2-D net: MLP 4x256 ReLU, z 2)",
           train={"data": "toy:8gaussians", "batch_size": 512, "kimg": 2000},
           model={"z_dim": 2, "arch": "mlp", "hidden": 256, "depth": 4, "act": "relu", "beta_kl": 0.3,
                  "beta_rec": 0.2, "lr": 2e-4})

# The contract tests' tiny config (calae.config.add_tiny).
add_tiny("vae", {"z_dim": 8, "base_channels": 8, "max_channels": 16, "hidden": 32, "depth": 2})
