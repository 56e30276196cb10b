"""Feature extractors that need no download, for Fréchet distance and precision/recall.

- :class:`ClassifierFeatures` ("classifier"): a small CNN trained on the labelled real data (MNIST,
  digits) for a few hundred steps; features are its penultimate layer (128-D). The same idea as the
  LeNet-based "FID for MNIST" used in the literature, but trained here, deterministically from a
  seed, so a number is reproducible without any weights file. Its held-out accuracy is reported
  with the metric: features of a classifier that did not learn are meaningless.
- :class:`RandConvFeatures` ("randconv"): a fixed random-weight conv network (He-normal weights
  drawn from a torch.Generator with a fixed seed, never trained), for unlabelled images. Random conv
  features are weaker than learned ones but respond to texture, edges and layout at several scales;
  the extractor is identical on every machine and every run, so numbers are comparable across runs
  of this code base (and only with this code base).

Both take images as uint8 [N, C, H, W] (what a saved PNG holds): model samples are quantised first,
so a model cannot score by producing values the data never has. Inside, images are mapped to
[-1, 1]. Both are always run in eval mode under torch.no_grad.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _to_pm1(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()


class _Extractor(nn.Module):
    """Common batching: ``extractor.extract(x_uint8, batch_size, device) -> [N, D]`` float32 on the CPU."""

    dim: int

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def extract(self, x: torch.Tensor, batch_size: int = 256, device: torch.device | str = "cpu") -> torch.Tensor:
        self.eval()
        self.to(device)
        out = []
        for s in range(0, x.shape[0], batch_size):
            out.append(self.features(_to_pm1(x[s : s + batch_size].to(device))).float().cpu())
        return torch.cat(out)


class RandConvFeatures(_Extractor):
    """Fixed random conv features: 4 stages (3x3 conv, leaky ReLU, 2x2 average pool) of width
    32/64/128/256; the feature vector concatenates the global mean of every stage (480-D), so it
    mixes fine (first stage) and coarse (last stage) statistics."""

    widths = (32, 64, 128, 256)

    def __init__(self, channels: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        self.weights = nn.ParameterList()
        c = channels
        for w in self.widths:
            std = (2.0 / (c * 9)) ** 0.5  # He-normal: keeps activations O(1) through the stack
            self.weights.append(nn.Parameter(torch.randn(w, c, 3, 3, generator=g) * std, requires_grad=False))
            c = w
        self.dim = sum(self.widths)
        self.seed = int(seed)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []
        for w in self.weights:
            x = F.leaky_relu(F.conv2d(x, w, padding=1), 0.2)
            pooled.append(x.mean(dim=(2, 3)))
            if min(x.shape[-2:]) >= 2:
                x = F.avg_pool2d(x, 2)
        return torch.cat(pooled, 1)  # [N, 480]


class ClassifierFeatures(_Extractor):
    """Small CNN classifier; ``features`` is its penultimate layer (128-D, after ReLU).

    conv4x4/2 (32) - conv4x4/2 (64) - conv3x3/2 (128) - global mean - fc 128 - [features] - fc K.
    No batch norm or dropout, so train and eval mode compute the same function.
    """

    def __init__(self, channels: int, num_classes: int, width: int = 32, dim: int = 128):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, 2, 1), nn.ReLU(),
        )
        self.fc = nn.Linear(4 * width, dim)
        self.head = nn.Linear(dim, num_classes)
        self.dim = dim
        self.heldout_accuracy = float("nan")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.trunk(x).mean(dim=(2, 3))))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, num_classes: int, *, steps: int = 400, batch: int = 128,
            lr: float = 2e-3, seed: int = 0, heldout: float = 0.1, device: torch.device | str = "cpu") -> "ClassifierFeatures":
        """Train on uint8 images x [N, C, H, W] with labels y [N]; deterministic given seed (on CPU).

        A held-out fraction (at most 2,000 items) measures the classifier's accuracy, stored in
        ``heldout_accuracy``. The global RNG is left untouched.
        """
        g = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(x.shape[0], generator=g)
        n_held = min(2000, int(round(heldout * x.shape[0]))) if x.shape[0] >= 20 else 0
        held, train = perm[:n_held], perm[n_held:]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            net = cls(x.shape[1], num_classes).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        y = y.long()
        with torch.enable_grad():
            net.train()
            for _ in range(int(steps)):
                idx = train[torch.randint(len(train), (min(batch, len(train)),), generator=g)]
                xb, yb = _to_pm1(x[idx].to(device)), y[idx].to(device)
                loss = F.cross_entropy(net.logits(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        if n_held:
            with torch.no_grad():
                pred = torch.cat([net.logits(_to_pm1(x[held[s : s + 512]].to(device))).argmax(1).cpu()
                                  for s in range(0, n_held, 512)])
            net.heldout_accuracy = float((pred == y[held]).float().mean())
        return net
