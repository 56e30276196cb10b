"""Projecting arbitrary images into a trained model by optimisation (StyleGAN's projector, reduced).

The code the decoder takes is optimised so that the decoded image matches the target in pixel
MSE (in the model's value range), starting from the encoder's code of the image (``init="encoder"``,
the default where the method has an encoder) or from the mean code of ``n_mean`` prior samples
(``init="mean"``, the only start for a model without encoder). Adam, learning rate ``lr`` with a
cosine ramp-down to zero over the last three quarters of the steps, codes kept per image (one
optimiser over the batch, whose loss is the sum of the per-image means, so images do not share a
step size). The decoder's weights are never changed; the model's modes are untouched.
For a weak encoder this finds a code that reconstructs better than E(x); it does not make the code
more typical of the prior (no regulariser), so decoding far outside the prior can look off.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass
class Projection:
    codes: np.ndarray  # [N, d] the projected codes
    init_codes: np.ndarray  # [N, d] where they started
    mse_init: np.ndarray  # [N] pixel MSE (model range) of the start
    mse: np.ndarray  # [N] pixel MSE after the steps
    images: torch.Tensor  # uint8 [N, C, H, W] decoded from the projected codes
    init_images: torch.Tensor  # uint8 decoded from the start


def mean_code(model, n: int = 1000, seed: int = 0) -> torch.Tensor:
    """The mean of n codes drawn as training draws them ([d])."""
    return model.sample_latents(n, seed).mean(0)


def project(model, x: torch.Tensor, steps: int = 200, lr: float = 0.05, init: str = "encoder",
            options: dict | None = None, report: Callable[[int, float], None] | None = None) -> Projection:
    """Project model-range images ``x`` [N, C, H, W]; ``report(step, mean mse)`` is called now and then."""
    opts = model._options(options or {})
    meth = model.method
    x = x.detach().float()
    with torch.no_grad():
        if init == "encoder":
            w0 = model.encode_tensor(x)
        elif init == "mean":
            w0 = mean_code(model).expand(x.shape[0], -1).clone()
        else:
            raise ValueError(f"init must be encoder or mean; got {init!r}")
    w = w0.clone().to(model.device).requires_grad_(True)
    target = x.to(model.device)
    opt = torch.optim.Adam([w], lr=lr, betas=(0.9, 0.999))

    def per_image_mse(out):
        return ((out.float() - target) ** 2).flatten(1).mean(1)

    with torch.no_grad():
        first = per_image_mse(meth.decode(w0.to(model.device), **opts)).cpu()
    last_report = time.monotonic()
    for i in range(steps):
        t = i / max(1, steps)
        scale = 1.0 if t < 0.25 else 0.5 * (1 + math.cos(math.pi * (t - 0.25) / 0.75))
        for g in opt.param_groups:
            g["lr"] = lr * max(scale, 0.01)
        with torch.enable_grad():
            loss = per_image_mse(meth.decode(w, **opts))
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
        opt.step()
        if report is not None and (time.monotonic() - last_report > 5.0 or i == steps - 1):
            report(i + 1, float(loss.detach().mean()))
            last_report = time.monotonic()
    codes = w.detach().cpu()
    with torch.no_grad():
        out = model.decode_tensor(codes, **opts)
        start = model.decode_tensor(w0, **opts)
    return Projection(codes.numpy(), w0.numpy(), first.numpy(), per_image_mse(out.to(model.device)).cpu().numpy(),
                      model.from_model(out), model.from_model(start))


def side_by_side(target_u8: torch.Tensor, start_u8: torch.Tensor, proj_u8: torch.Tensor) -> torch.Tensor:
    """One row per image: target | start (E(x) or the mean code) | projection, as a grid."""
    from .viz.grid import make_grid

    rows = torch.stack([target_u8, start_u8, proj_u8], 1).flatten(0, 1)
    return make_grid(rows, nrow=3)


__all__ = ["project", "Projection", "side_by_side", "mean_code"]
