"""Plain MLP used for 2-D toys, flattened small images and latent discriminators."""
from __future__ import annotations

from torch import nn


class MLP(nn.Module):
    """in_dim -> hidden x depth (LeakyReLU 0.2) -> out_dim; flattens its input."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 256, depth: int = 3, act: str = "lrelu"):
        super().__init__()
        acts = {"lrelu": lambda: nn.LeakyReLU(0.2), "relu": nn.ReLU, "tanh": nn.Tanh}
        layers, d = [], in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), acts[act]()]
            d = hidden
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x.flatten(1))
