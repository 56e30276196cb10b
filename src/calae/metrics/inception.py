"""Inception-v3 pool3 features (2048-D) for FID, from a weights file the user provides.

Nothing is ever downloaded. The architecture (Szegedy et al., CVPR 2016) is written here with
torchvision's module names (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``,
...), so a state_dict of torchvision's ``inception_v3`` or the FID port used by pytorch-fid
(``pt_inception-2015-12-05-*.pth``) loads as is. Convert once, where a network is available:

    torch.save(torchvision.models.inception_v3(weights="DEFAULT").state_dict(), "inception.pt")

Accepted files: ``.safetensors``, or a torch file read with ``torch.load(weights_only=True)`` (never
unpickled); a ``{"state_dict": ...}`` wrapper and a ``module.`` prefix are accepted.

Two variants, detected from the classifier size (override with ``variant=``):
- "fid" (fc has 1008 outputs): the TensorFlow FID network as ported by pytorch-fid: average pools in
  the A/C/E blocks exclude the zero padding, and the last E block max-pools its pool branch. This is
  the network standard FID numbers come from (up to TF-vs-torch resize differences).
- "torchvision" (1000 outputs): torchvision's weights. FIDs from it are *not* comparable with
  published FIDs; the metric name/keys say which variant was used.
Input: images resized to 299x299 (bilinear, no antialias, as pytorch-fid), mapped from [0, 1] to
[-1, 1] (torchvision's ``transform_input`` ends at the same scaling); grey images are repeated to 3
channels.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .base import MetricError
from .features import _Extractor


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor, fid: bool) -> torch.Tensor:
    # TF's average pool ignores the zero padding; torchvision's counts it.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=not fid)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)
        self.fid = False

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg3(x, self.fid))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)
        self.fid = False

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for m in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = m(bd)
        bp = self.branch_pool(_avg3(x, self.fid))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)
        self.pool = "avg"  # the FID network's last block uses "max" (pytorch-fid's FIDInceptionE_2)
        self.fid = False

    def forward(self, x):
        b1 = self.branch1x1(x)
        t = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(t), self.branch3x3_2b(t)], 1)
        t = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(t), self.branch3x3dbl_3b(t)], 1)
        p = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else _avg3(x, self.fid)
        return torch.cat([b1, b3, bd, self.branch_pool(p)], 1)


class InceptionV3(nn.Module):
    """Inception-v3 up to the 2048-D global average pool ("pool3"), plus the classifier ``fc`` so
    that full state_dicts load; no auxiliary classifier (its keys are ignored when loading)."""

    def __init__(self, num_classes: int = 1008, variant: str = "fid"):
        super().__init__()
        if variant not in ("fid", "torchvision"):
            raise ValueError(f"variant must be 'fid' or 'torchvision', got {variant!r}")
        self.variant = variant
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.fc = nn.Linear(2048, num_classes)
        fid = variant == "fid"
        for m in self.modules():
            if isinstance(m, (InceptionA, InceptionC, InceptionE)):
                m.fid = fid
        if fid:
            self.Mixed_7c.pool = "max"

    def pool3(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3, 299, 299] in [-1, 1] -> [N, 2048]."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)  # [N, 64, 73, 73]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)  # [N, 192, 35, 35]
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, "Mixed_" + name)(x)
        return x.mean(dim=(2, 3))  # [N, 2048]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool3(x))


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a weights_only torch file; never unpickles objects."""
    if not os.path.isfile(path):
        raise MetricError(f"Inception weights file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path, device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is the file's problem
        raise MetricError(f"cannot read Inception weights {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise MetricError(f"{path} does not hold a state_dict of tensors")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


class InceptionFeatures(_Extractor):
    """Pool3 features of Inception-v3 loaded from ``weights_path``; see the module docstring."""

    dim = 2048

    def __init__(self, weights_path: str, variant: str = "auto"):
        super().__init__()
        sd = load_state_dict_file(str(weights_path))
        fc = sd.get("fc.weight")
        if variant == "auto":
            variant = "fid" if fc is not None and fc.shape[0] == 1008 else "torchvision"
        net = InceptionV3(num_classes=fc.shape[0] if fc is not None else 1008, variant=variant)
        want = net.state_dict()
        ignored = lambda k: k.startswith("AuxLogits.") or k.endswith("num_batches_tracked")  # noqa: E731
        missing = [k for k in want if k not in sd and not k.startswith("fc.")]
        unexpected = [k for k in sd if k not in want and not ignored(k)]
        wrong = [k for k in want if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)]
        if missing or unexpected or wrong:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
            if wrong:
                parts.append(f"{len(wrong)} with wrong shape (e.g. {wrong[0]})")
            raise MetricError(f"{weights_path} is not an Inception-v3 state_dict with torchvision key names: "
                              + ", ".join(parts))
        net.load_state_dict({k: v for k, v in sd.items() if k in want}, strict=False)
        self.net = net.eval().requires_grad_(False)
        self.variant = variant
        self.path = str(weights_path)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # x in [-1, 1]; back to [0, 1] for the resize, then to [-1, 1] as the network expects.
        x = (x + 1.0) * 0.5
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net.pool3(2.0 * x - 1.0)
