"""The method contract: config + networks + an explicit list of phases + the inference surface.

A method is an ``nn.Module`` holding its networks in ``self.nets`` (and EMA copies in
``self.ema``). Training mechanics (requires_grad, zero_grad, backward, step, EMA, autocast,
intervals) belong to the loop in ``calae.training.loop``; a loss function only computes tensors.
Every method exposes ``encode / decode / sample / reconstruct`` plus its latent space and decode
options; ``calae.api`` wraps them, and metrics, pictures, the explorer and the CLI use only that.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..config import MethodConfig
from ..data.base import Batch, DataInfo


@dataclass
class StepContext:
    """What a loss may know about where training is, and what the phases of one step share.

    The loop makes one context per optimisation step and hands the same object to every phase of
    that step, then to ``Method.on_step_end``. Losses never keep state on the method between
    phases: what a method's paper shares between its phases (the same z, ε or fakes) goes in
    ``cache`` (``ctx.shared(key, make)``), and what a schedule or gate must learn from a step is
    read from ``logged`` in ``on_step_end``, where state changes belong.
    """

    step: int  # optimisation steps done so far (this one excluded)
    kimg: float  # thousands of images seen so far
    total_kimg: float
    cache: dict[str, Any] = field(default_factory=dict)  # shared by the phases of this step only
    logged: dict[str, float] = field(default_factory=dict)  # "phase/key" -> value, phases run so far
    skipped: tuple[str, ...] = ()  # phases of this step whose update was skipped (non-finite)

    def shared(self, key: str, make: Callable[[], Any]) -> Any:
        """``cache[key]``, made by ``make()`` the first time a phase of this step asks for it."""
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


LossFn = Callable[["Method", Batch, StepContext], dict]


@dataclass
class Phase:
    """One update: which networks learn, with which optimizer, from which loss, how often.

    ``loss`` returns a dict of named scalar tensors; key "loss" is minimised, the rest logged.
    ``active`` is an optional schedule gate consulted by the loop (e.g. warm-up).
    """

    name: str
    nets: tuple[str, ...]
    optimizer: str | tuple[str, ...]  # one optimizer, or several stepped together from one backward
    loss: LossFn
    every: int = 1
    active: Callable[[StepContext], bool] | None = None
    # "auto": the run's precision (bf16 autocast where chosen); "fp32": autocast off for this
    # phase's forward, for losses that bf16 would break (finite differences, tiny variances)
    precision: str = "auto"

    @property
    def optimizer_names(self) -> tuple[str, ...]:
        return (self.optimizer,) if isinstance(self.optimizer, str) else tuple(self.optimizer)

    def __post_init__(self):
        if self.precision not in ("auto", "fp32"):
            raise ValueError(f"Phase {self.name}: precision must be auto or fp32; got {self.precision!r}")


@dataclass
class OptimizerSpec:
    nets: tuple[str, ...]
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)


class Method(nn.Module):
    name: str = ""
    Config: type = MethodConfig
    value_range: str = "tanh"  # how images are scaled for this model: tanh [-1, 1] or unit [0, 1]
    conv: bool = True  # channels_last pays off for convolutional nets
    has_encoder: bool = True  # False: no encode / reconstruct (gan); pictures and default metrics skip them

    def __init__(self, cfg: MethodConfig, info: DataInfo):
        super().__init__()
        self.cfg, self.info = cfg, info
        self.nets = nn.ModuleDict()
        self.ema = nn.ModuleDict()

    # ---- training description -------------------------------------------------------------
    def optimizers(self) -> dict[str, OptimizerSpec]:
        raise NotImplementedError

    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def on_step_end(self, ctx: StepContext) -> None:
        """Called by the loop after every phase of a step ran (``ctx.logged`` holds their values,
        ``ctx.skipped`` the phases whose update was skipped). Schedules and gates update here and
        keep their state in buffers, so checkpoints carry it and resume is exact."""

    def optimizer_epoch(self, kimg: float) -> int:
        """A key of the training stage at ``kimg``: when it changes between two steps, the loop
        resets every optimizer's state (ALAE's growth levels, as the official code). Default: one
        stage."""
        return 0

    def ema_halflife_kimg(self) -> float:
        return getattr(self.cfg, "ema_kimg", 0.0)

    def make_ema(self, names: tuple[str, ...]) -> None:
        """Frozen copies of the named networks, updated by the loop, used for inference."""
        for n in names:
            self.ema[n] = copy.deepcopy(self.nets[n]).requires_grad_(False)

    def net(self, name: str) -> nn.Module:
        """The network used for inference: its EMA copy when one exists."""
        return self.ema[name] if name in self.ema else self.nets[name]

    # ---- inference surface (calae.api wraps it; nothing else calls it) ------------------------
    latent_name: str = "z"  # what decode takes: z for VAE-like methods and AAE, w for ALAE

    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ p(z), the prior the method trains against. [n, z_dim]"""
        dev = next(self.parameters()).device
        z = torch.randn(n, self.z_dim, generator=generator)
        return z.to(dev)

    @property
    def z_dim(self) -> int:
        return self.cfg.z_dim

    @property
    def latent_dim(self) -> int:
        """Dimension of the codes ``encode`` returns and ``decode`` takes."""
        return self.z_dim

    def latent_space(self):
        from ..api import LatentSpace

        return LatentSpace(self.latent_name, self.latent_dim, f"{self.name}: prior samples z ~ N(0, I)")

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n codes in the space ``decode`` takes, drawn as in training (default: the prior)."""
        return self.prior(n, generator)

    def decode_options(self) -> tuple:
        """The extra keyword options ``decode`` and ``sample`` take (``calae.api.DecodeOption``)."""
        return ()

    def display_options(self) -> dict:
        """Options for pictures (sample grids); metrics never use them."""
        return {}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, w: torch.Tensor, **options) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, **options) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(seed))
        return self.decode(self.sample_latents(n, g), **options)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def device(self) -> torch.device:
        return next(self.parameters()).device
