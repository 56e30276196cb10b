"""Using a trained model from Python: one inference surface for every method.

    import calae.api as ca

    model = ca.load("runs/vae")                 # a run folder or a snapshot .safetensors
    codes = model.encode(images)                # uint8 [N, C, H, W] -> float codes [N, d]
    imgs = model.decode(codes)                  # codes -> uint8 [N, C, H, W]
    z = model.sample_latents(16, seed=0)        # what decode takes, drawn as in training
    imgs = model.sample(16, seed=0, psi=0.7)    # = decode(sample_latents(...), **options)
    model.options                               # the method's declared decode options
    model.latent                                # LatentSpace(name="w", dim=50, ...) for ALAE

The codes are the space the decoder takes: z for VAE-like methods and AAE, w = F(z) for ALAE
(``encode`` gives w = E(x), and ``sample_latents`` gives F(z), so both live in one space; a
method never receives a z where it expects a w). Point data (2-D toys) go in and out as float
arrays. Decode options are declared by the method (``Method.decode_options``): truncation ψ and
the noise seed for style generators, the class label for a supervised AAE; an unknown option is a
one-line error naming the known ones, never a silent ``hasattr`` probe.

Thread safety: ``load`` puts the networks in eval mode once and freezes their parameters; no call
changes a mode, a buffer or a global RNG (every draw takes its own seeded generator), so one
model may serve several threads at once (the explorer's web server does).

The tensor-level calls (``encode_tensor``, ``decode_tensor``, ``sample_tensor``,
``reconstruct_tensor``) work in the model's own value range; metrics and pictures use them.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from .data.base import from_model_range, to_model_range

__all__ = ["load", "Model", "LatentSpace", "DecodeOption", "inference", "APIError"]

BATCH = 256


class APIError(ValueError):
    """A call the model cannot serve (wrong image shape, unknown option); one line."""


@dataclass(frozen=True)
class LatentSpace:
    """The codes the decoder takes: their name (z, w), dimension and how samples are drawn."""

    name: str
    dim: int
    doc: str


@dataclass(frozen=True)
class DecodeOption:
    """An extra argument of ``decode`` / ``sample`` that a method declares."""

    name: str
    default: Any
    doc: str
    low: float | None = None
    high: float | None = None

    def check(self, value):
        if isinstance(self.default, (int, float)) and not isinstance(self.default, bool):
            try:
                value = type(self.default)(value)
            except (TypeError, ValueError):
                raise APIError(f"option {self.name} must be a number; got {value!r}") from None
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                raise APIError(f"option {self.name} must lie in [{self.low}, {self.high}]; got {value}")
        return value


@contextlib.contextmanager
def inference(*modules: torch.nn.Module | None) -> Iterator[None]:
    """Eval mode and no_grad for the duration of a block; each submodule's own training flag is
    restored afterwards (so deliberately frozen submodules stay frozen).

    For models that are also being trained (the loop's pictures and metrics, the metrics' feature
    nets); a loaded ``Model`` stays in eval mode and needs none of this. Known trap (Soft-IntroVAE's
    FID code): a feature network left in training mode changes FID."""
    saved = [(sub, sub.training) for m in modules if m is not None for sub in m.modules()]
    for m in modules:
        if m is not None:
            m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for sub, flag in saved:
            sub.training = flag


class Model:
    """A trained method behind the inference surface. ``Model(method)`` wraps one in memory (its
    modes are left to the caller, see ``inference``); ``load`` rebuilds one from a snapshot."""

    source: str | None = None  # the run folder or snapshot ``load`` read

    def __init__(self, method, meta: dict | None = None):
        self.method = method
        self.meta = meta if meta is not None else getattr(method, "snapshot_meta", {})
        self.info = method.info
        self.name = method.name
        self.value_range = method.value_range
        self.latent: LatentSpace = method.latent_space()
        self.options: dict[str, DecodeOption] = {o.name: o for o in method.decode_options()}

    @property
    def device(self) -> torch.device:
        return self.method.device()

    @property
    def is_image(self) -> bool:
        return self.info.kind == "image"

    @property
    def decoder(self) -> torch.nn.Module:
        """The network ``decode`` runs (its EMA copy where one exists); network bending hooks its
        layers (``calae.bending``)."""
        return self.method.net("G")

    @property
    def style_layers(self) -> int:
        """How many per-layer styles a style generator takes (``decode`` accepts codes [N, L, d],
        StyleGAN-style mixing); 1 for decoders that take one code per image."""
        return int(getattr(self.decoder, "num_ws", 1))

    def bend(self, *bends):
        """A block within which decoding goes through the given ``calae.bending.Bend``s (hooks on
        the decoder, removed on leaving it). One thread at a time: it changes the shared decoder."""
        from .bending import bent

        return bent(self, bends)

    # ---- conversions -------------------------------------------------------------------------
    def to_model(self, items) -> torch.Tensor:
        """uint8 images [N, C, H, W] (torch or numpy; [N, H, W, C] and [N, H, W] are accepted) or float
        points [N, d] -> the model's range and layout on its device."""
        x = torch.as_tensor(np.asarray(items)) if not torch.is_tensor(items) else items
        shape = tuple(self.info.shape)
        if self.is_image:
            if x.dim() == 3 and shape[0] == 1:
                x = x[:, None]
            if x.dim() == 4 and tuple(x.shape[1:]) != shape and x.shape[-1] == shape[0]:
                x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
            if x.dim() != 4 or tuple(x.shape[1:]) != shape:
                raise APIError(f"this {self.name} model takes images of shape [N, {', '.join(map(str, shape))}] "
                               f"(uint8); got {list(x.shape)}: resize them to {shape[-1]} px with {shape[0]} "
                               "channel(s) first")
        elif x.dim() != 2 or x.shape[1] != shape[0]:
            raise APIError(f"this {self.name} model takes points of shape [N, {shape[0]}]; got {list(x.shape)}")
        x = to_model_range(x.to(self.device), self.value_range)
        if self.method.conv and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        """Model-range output -> uint8 images on the CPU (points: float32)."""
        x = x.detach().float().cpu()
        return from_model_range(x, self.value_range) if self.is_image else x

    def _codes(self, codes) -> torch.Tensor:
        w = torch.as_tensor(np.asarray(codes), dtype=torch.float32) if not torch.is_tensor(codes) else codes.float()
        if w.dim() == 1:
            w = w[None]
        if w.dim() == 3 and (self.style_layers == 1 or w.shape[1] != self.style_layers):
            raise APIError(f"this {self.name} model takes codes [N, {self.latent.dim}]"
                           + (f" or per-layer styles [N, {self.style_layers}, {self.latent.dim}]"
                              if self.style_layers > 1 else "") + f"; got shape {list(w.shape)}")
        if w.shape[-1] != self.latent.dim:
            raise APIError(f"this {self.name} model decodes {self.latent.dim}-D {self.latent.name} codes; "
                           f"got shape {list(w.shape)}")
        return w.to(self.device)

    def _options(self, given: dict) -> dict:
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            known = ", ".join(self.options) or "none"
            raise APIError(f"{self.name} has no decode option {', '.join(unknown)}; its options: {known}")
        return {k: self.options[k].check(v) for k, v in given.items()}

    # ---- tensor level (model range) --------------------------------------------------------------
    def encode_tensor(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self.method.encode(x[i:i + BATCH]).float().cpu() for i in range(0, len(x), BATCH)]) \
                if len(x) else torch.empty(0, self.latent.dim)

    def decode_tensor(self, w: torch.Tensor, **options) -> torch.Tensor:
        opts = self._options(options)
        w = self._codes(w)
        with torch.no_grad():
            return torch.cat([self.method.decode(w[i:i + BATCH], **opts).float().cpu() for i in range(0, len(w), BATCH)])

    def reconstruct_tensor(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self.method.reconstruct(x[i:i + BATCH]).float().cpu() for i in range(0, len(x), BATCH)])

    def sample_tensor(self, n: int, seed: int = 0, **options) -> torch.Tensor:
        opts = self._options(options)
        with torch.no_grad():
            return self.method.sample(int(n), seed=int(seed), **opts).float().cpu()

    # ---- uint8 level -----------------------------------------------------------------------------
    def sample_latents(self, n: int, seed: int = 0) -> torch.Tensor:
        """n codes the decoder takes, drawn as training draws them (prior z; F(z) for ALAE). [n, d]"""
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            return self.method.sample_latents(int(n), g).float().cpu()

    def encode(self, images) -> torch.Tensor:
        """Codes [N, d] (float32, CPU) of uint8 images (or float points)."""
        return self.encode_tensor(self.to_model(images))

    def decode(self, codes, **options) -> torch.Tensor:
        """uint8 images [N, C, H, W] (points: float [N, d]) of codes [N, d]."""
        return self.from_model(self.decode_tensor(codes, **options))

    def reconstruct(self, images) -> torch.Tensor:
        return self.from_model(self.reconstruct_tensor(self.to_model(images)))

    def sample(self, n: int, seed: int = 0, **options) -> torch.Tensor:
        """n generated items, uint8 images (points: float); the same for the same seed."""
        return self.from_model(self.sample_tensor(n, seed, **options))

    def display_options(self) -> dict:
        """The options pictures use (e.g. ALAE's display truncation ψ = 0.7); metrics use none."""
        return dict(self.method.display_options())

    def __repr__(self) -> str:
        opts = ", ".join(self.options) or "none"
        return (f"calae.api.Model({self.name}, {self.info.kind} {tuple(self.info.shape)}, "
                f"{self.latent.name}: {self.latent.dim}-D, options: {opts})")


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Model:
    """A trained model from a run folder or a snapshot file, ready for inference from any thread."""
    from .training.checkpoint import load_snapshot

    method = load_snapshot(path, device)
    method.eval().requires_grad_(False)
    model = Model(method, getattr(method, "snapshot_meta", {}))
    model.source = os.fspath(path)  # where it came from (bending saves its channel clusters beside it)
    return model
