"""Textbook loss terms shared by the methods. Each reduces as stated: sum over data dimensions,
mean over the batch, so that β weights mean the same thing in every method (methods.md §1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """z = μ + σ·ε (Kingma & Welling 2014, eq. 10); ε may be given so two phases share it."""
    eps = torch.randn_like(mu) if noise is None else noise
    return mu + torch.exp(0.5 * logvar) * eps


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor, reduce: bool = True) -> torch.Tensor:
    """KL(N(μ, σ²) || N(0, I)) = ½ Σ_d (μ² + σ² − log σ² − 1); per item, or its batch mean."""
    kl = 0.5 * (mu.float().pow(2) + logvar.float().exp() - logvar.float() - 1.0).sum(dim=1)
    return kl.mean() if reduce else kl


def recon_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str = "mse", reduce: bool = True) -> torch.Tensor:
    """Reconstruction error summed over data dimensions.

    kind "mse": Σ (x − x̂)²; "bce": Σ BCE(sigmoid(x̂), x) with x̂ as logits and x in [0, 1].
    """
    x_hat, x = x_hat.float(), x.float()
    if kind == "mse":
        err = (x_hat - x).pow(2)
    elif kind == "bce":
        err = F.binary_cross_entropy_with_logits(x_hat, x, reduction="none")
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r} (mse or bce)")
    err = err.flatten(1).sum(dim=1)
    return err.mean() if reduce else err


def nonsat_logistic(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Non-saturating logistic GAN term: softplus(−D) for real targets, softplus(D) for fake."""
    return F.softplus(-logits if real else logits).mean()


def r1_penalty(d_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): E‖∇_x D(x)‖² on real inputs; the caller weighs it by γ/2."""
    (grad,) = torch.autograd.grad(d_out.float().sum(), x, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(dim=1).mean()
