"""Equalized-learning-rate layers (Karras et al., "Progressive Growing of GANs", ICLR 2018, §4.1).

PGGAN: "we use a trivial N(0, 1) initialization and then explicitly scale the weights at runtime
... ŵ_i = w_i / c, where c is the per-layer normalization constant from He's initializer". Written
as a multiplication: the stored parameter v ~ N(0, 1) and the layer uses W = c·v with
c = gain / √fan_in. Adam normalises each parameter's step by its own gradient scale, so every
stored v moves by ≈ lr per step whatever the layer's fan-in; the effective weight W moves by c·lr,
i.e. by the same *fraction* lr of its own scale (std W = c) in every layer: one learning speed for
all layers ("equalized"). He-initialised weights trained directly would instead move by lr against
a scale of c, a relative speed lr/c ∝ √fan_in that differs from layer to layer.

Per-layer learning-rate multiplier (StyleGAN's ``lrmul``, ALAE uses 0.1 for F and D): the stored
v ~ N(0, 1/lrmul²) and c = gain/√fan_in · lrmul, so W has the same initial distribution while each
step moves W by lrmul·(c/lrmul)·lr: the layer learns lrmul times slower. Biases are stored as b and
used as lrmul·b (same argument). This is the formulation of StyleGAN's and ALAE's ``lreq`` layers
in their default (implicit) mode.

ALAE's official ``LREQAdam`` is the same thing written the other way round: it stores W itself
(initialised N(0, c²/lrmul²)) and multiplies each Adam step by c. Both give the same trajectory up
to where Adam's ε enters (tests/test_alae.py carries a LREQAdam and shows it). What is *not*
the same: layers that store W and are trained with a plain Adam (the equalisation silently
disappears) - so these layers store v and must be trained with a plain Adam, which the loop uses.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EqLinear", "EqConv2d", "EqMLP", "Blur", "pixel_norm", "upsample2x", "downsample2x", "lrelu",
           "LRELU_GAIN"]

LRELU_GAIN = math.sqrt(2.0)  # He gain used by StyleGAN / ALAE for every layer (also the leaky ones)


def lrelu(x: torch.Tensor, slope: float = 0.2) -> torch.Tensor:
    return F.leaky_relu(x, slope)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x / RMS(x) over the feature dimension (PGGAN eq. 2). Divides by the RMS; the reimplementation
    bug methods.md §3 mentions multiplied by it."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour ×2 (StyleGAN's upscale2d). [N, C, H, W] -> [N, C, 2H, 2W]"""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """2×2 box average (StyleGAN's downscale2d). [N, C, H, W] -> [N, C, H/2, W/2]"""
    return F.avg_pool2d(x, 2)


def _scaled(t: torch.Tensor | None, k: float) -> torch.Tensor | None:
    """k·t, without the copy when k is 1."""
    return t if t is None or k == 1.0 else t * k


class EqLinear(nn.Module):
    """Linear layer with runtime He scaling: y = x (c·v)ᵀ + lrmul·b, v ~ N(0, 1/lrmul²).

    ``coef`` (c = gain/√fan_in·lrmul) is what the official LREQAdam multiplies its steps by for the
    stored-weight formulation; ``effective_weight()`` is W = c·v.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, gain: float = LRELU_GAIN,
                 lrmul: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.gain, self.lrmul = float(gain), float(lrmul)
        self.coef = self.gain / math.sqrt(in_features) * self.lrmul
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / self.lrmul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / self.lrmul)) if bias else None

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.coef

    def effective_bias(self) -> torch.Tensor | None:
        return _scaled(self.bias, self.lrmul)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (c·v)ᵀ = (c·x) vᵀ: scale whichever is smaller (a batch of 128 against a 1024x1024
        # layer: 8x fewer multiplies, forward and backward)
        if x.numel() < self.weight.numel():
            return F.linear(x * self.coef, self.weight, self.effective_bias())
        return F.linear(x, self.effective_weight(), self.effective_bias())

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, gain={self.gain:.3g}, lrmul={self.lrmul:g}"


class EqConv2d(nn.Module):
    """2-D convolution with runtime He scaling (fan_in = in_channels·k²); same-padding by default."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | None = None, bias: bool = True, gain: float = LRELU_GAIN, lrmul: float = 1.0):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.gain, self.lrmul = float(gain), float(lrmul)
        self.coef = self.gain / math.sqrt(in_channels * kernel_size * kernel_size) * self.lrmul
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size) / self.lrmul)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.coef

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = _scaled(self.bias, self.lrmul)
        if x.numel() < self.weight.numel():  # zero padding commutes with the scale, as in EqLinear
            return F.conv2d(x * self.coef, self.weight, b, stride=self.stride, padding=self.padding)
        return F.conv2d(x, self.effective_weight(), b, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, k={self.kernel_size}, s={self.stride}, "
                f"gain={self.gain:.3g}, lrmul={self.lrmul:g}")


class EqMLP(nn.Module):
    """in_dim -> [hidden (LeakyReLU `slope`)] x depth -> out_dim with equalized layers; flattens its input.

    ``out_slope`` adds a LeakyReLU with that slope after the last layer (None: a linear output);
    ``act_out=True`` is the same with ``slope`` (StyleGAN's mapping network). ``out_gain`` is the He
    gain of the last layer. ALAE's official MNIST nets (branch ``mnist_ref``) differ here between E
    and G: E uses slope 0.2 and ends in LeakyReLU 0.01 (torch's default slope) on its 50-D output, G
    uses slope 0.01 and a linear output, and both last layers keep the default gain √2.
    ``features(x)`` returns the hidden activations (for probes and patch losses).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int, depth: int, lrmul: float = 1.0,
                 act_out: bool = False, out_gain: float = LRELU_GAIN, slope: float = 0.2,
                 out_slope: float | None = None):
        super().__init__()
        dims = [in_dim] + [hidden] * depth + [out_dim]
        self.layers = nn.ModuleList(
            EqLinear(a, b, lrmul=lrmul, gain=(out_gain if i == depth else LRELU_GAIN))
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])))
        self.slope = float(slope)
        self.out_slope = self.slope if (act_out and out_slope is None) else (
            None if out_slope is None else float(out_slope))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, feats = x.flatten(1), []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < last:
                h = lrelu(h, self.slope)
                feats.append(h)
            elif self.out_slope is not None:
                h = lrelu(h, self.out_slope)
        return h, feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[0]

    def extra_repr(self) -> str:
        return f"slope={self.slope:g}, out_slope={self.out_slope}"


class Blur(nn.Module):
    """Fixed [1 2 1]ᵀ[1 2 1]/16 low-pass filter per channel (StyleGAN v1), same padding."""

    def __init__(self, channels: int):
        super().__init__()
        f = torch.tensor([1.0, 2.0, 1.0])
        k = (f[:, None] * f[None, :]) / 16.0
        self.register_buffer("kernel", k.expand(channels, 1, 3, 3).clone(), persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel.to(x.dtype), padding=1, groups=self.channels)
