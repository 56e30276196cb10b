"""LREQAdam: the official ALAE optimizer, as a reference for the equalized-learning-rate tests.

Official ALAE (``custom_adam.py``) stores each equalized weight *pre-scaled*, W = c·v, and scales
each Adam step by the layer's constant c (``lr_equalization_coef``): with β1 = 0,

    v_t = β2·v_{t−1} + (1 − β2)·g²,   W ← W − lr·c·√(1 − β2^t)·g / (√v_t + ε),   g = ∂L/∂W.

Runtime scaling (``calae.nets.layers``) stores v and trains it with a plain Adam; the gradient
with respect to v is c·g, so the plain-Adam step of W = c·v is lr·c·g / (√v̂_t + ε/c) with
v̂_t = v_t/(1 − β2^t): the same step except where ε enters. We train with runtime scaling (the
loop's plain Adam); this class exists so a test can show the two agree, and as a drop-in for
anyone porting official checkpoints/hyper-parameters. Each parameter group may carry ``coef``
(default 1: a plain Adam step with the official ε placement).
"""
from __future__ import annotations

import math

import torch

__all__ = ["LREQAdam"]


class LREQAdam(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.0, 0.99), eps: float = 1e-8):
        if lr < 0 or eps < 0 or not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"invalid LREQAdam settings lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, coef=1.0))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
                t = st["step"]
                st["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = st["exp_avg_sq"].sqrt().add_(group["eps"])
                step = group["lr"] * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * group["coef"]
                p.addcdiv_(st["exp_avg"], denom, value=-step)
        return loss
