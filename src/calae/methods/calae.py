"""CALAE: Contrastive Adversarial Latent AutoEncoder (seed 000; methods.md §4).

An ALAE (``calae.methods.alae``: E, F the "Projector", style G with EMA, latent D; its three phases,
R1, style mixing and progressive growing unchanged) with the terms seed 000 collected, each
implemented as the paper that introduced it says (the original code's slots for them were broken:
see "not copied" below):

  4. E, G, H   λ_NCE · PatchNCE(E_l(x̂), sg(E_l(x))) + λ_pix · mean (x̂ − x)²,   x̂ = G(E(x))
               Contrastive reconstruction (CUT, Park et al. 2020, eq. 2-3): the encoder's feature maps
               at the ``nce_layers`` finest levels; queries from the reconstruction x̂, keys from the
               real x at the same locations (the positive) against the image's other locations (the
               negatives, or the whole batch's); a two-layer MLP head per level (the networks "H",
               not F, which is the mapping net) to ``nce_dim``, L2-normalised, τ = ``nce_tau``.
               ALAE never compares an image with its reconstruction; this phase makes E(x) carry
               the detail G needs to redraw x, measured in E's own multi-scale features.
  5. G (F)     λ_H · HP(G, w), every ``hessian_every`` steps, scaled by it (StyleGAN2's lazy
               regularisation), λ ramped up linearly over ``hessian_warmup_kimg``; in fp32.
               Hessian penalty (Peebles et al. 2020, eq. 4-5; ``calae.losses.hessian_penalty``):
               k Rademacher directions, ε = 0.1, the unbiased variance of the second differences
               per element, max over elements, summed over G's block outputs (after AdaIN). With
               ``hessian_wrt="z"`` the derivative is taken through F (F learns too). G's injected
               noise is drawn once and frozen across the 2k + 1 calls, or the differences would
               measure the noise.
  prior        z ~ p(z) for F from the priors registry (``prior``: gaussian, ifs, sierpinski, kali, ...):
               seed 000's "fractal distribution as a prior in place of the usual Gaussian".

Not copied from the original code (methods.md §4): its reconstruction codes tiled across the batch
(here each image has its own w), PatchNCE positives taken from two unrelated generated images (here
x and its own reconstruction), Hessian paths that never ran (here a phase of its own the loop
runs), a patch discriminator detached from G.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, add_preset, add_tiny, check_choice, check_range
from ..data.base import Batch, DataInfo
from ..losses import hessian_penalty, patch_nce
from ..nets.layers import EqLinear
from ..nets.style import broadcast_styles
from ..registry import METHODS, PRESETS, register
from .alae import ALAE, ALAEConfig
from .base import Phase, StepContext

__all__ = ["CALAEConfig", "CALAE", "PatchHead", "nce_phase", "hessian_phase"]


@dataclass
class CALAEConfig(ALAEConfig):
    arch: str = "style"  # PatchNCE needs feature maps: the style networks
    # contrastive reconstruction (phase 4)
    nce_weight: float = 1.0  # λ_NCE; 0 turns the term off
    nce_layers: int = 3  # encoder levels used, finest first
    nce_patches: int = 256  # locations per level (CUT: 256)
    nce_tau: float = 0.07
    nce_dim: int = 256  # head output
    nce_negatives: str = "image"  # image: the other locations of the same image (CUT) | batch
    pixel_weight: float = 0.0  # λ_pix of mean (x̂ − x)² in phase 4
    # Hessian penalty (phase 5)
    # λ_H; 0 turns the phase off. The paper's 0.1 is for its networks' scale: on the style-32 nets
    # HP(w) at 32 px is 5e6 at initialisation and 2e5 after 5 kimg (benchmarks/bench_calae.py), so 0.1
    # makes phase 5's loss 1e4-1e6, which dominates the Adam state G shares with the other phases;
    # 1e-6 makes it ~1, like the other losses (row calae-hessian-paper of the benchmark: 0.1).
    hessian_weight: float = 1e-6
    hessian_every: int = 4  # lazy: every N steps, the loss scaled by N
    hessian_warmup_kimg: float = 0.0  # λ ramps linearly from 0 over this many kimg
    hessian_wrt: str = "w"  # w: G's input | z: through F
    hessian_k: int = 2
    hessian_eps: float = 0.1
    hessian_batch: int = 0  # images per evaluation (0: the batch)

    def __post_init__(self):
        super().__post_init__()
        check_range("nce_weight", self.nce_weight, 0)
        check_range("nce_layers", self.nce_layers, 1, 16)
        check_range("nce_patches", self.nce_patches, 1, 65536)
        check_range("nce_tau", self.nce_tau, 0, 10, lo_open=True)
        check_range("nce_dim", self.nce_dim, 1, 4096)
        check_choice("nce_negatives", self.nce_negatives, ("image", "batch"))
        check_range("pixel_weight", self.pixel_weight, 0)
        check_range("hessian_weight", self.hessian_weight, 0)
        check_range("hessian_every", self.hessian_every, 1, 10000)
        check_range("hessian_warmup_kimg", self.hessian_warmup_kimg, 0)
        check_choice("hessian_wrt", self.hessian_wrt, ("w", "z"))
        check_range("hessian_k", self.hessian_k, 2, 64)
        check_range("hessian_eps", self.hessian_eps, 0, 10, lo_open=True)
        check_range("hessian_batch", self.hessian_batch, 0)


class PatchHead(nn.Module):
    """CUT's projection head for one feature level: C -> d -> d, ReLU between (equalized layers, so
    that it trains at the ALAE learning rate like the networks around it). [..., C] -> [..., d]."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.fc1, self.fc2 = EqLinear(channels, dim), EqLinear(dim, dim, gain=1.0)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(f)))


@register(METHODS, "calae")
class CALAE(ALAE):
    name = "calae"
    Config = CALAEConfig

    def __init__(self, cfg: CALAEConfig, info: DataInfo):
        super().__init__(cfg, info)
        if cfg.nce_weight > 0 or cfg.pixel_weight > 0:
            if self.arch != "style":
                raise ConfigError("calae's reconstruction phase reads the style encoder's feature maps: use "
                                  "arch=style (or --set nce_weight=0 pixel_weight=0 for a plain ALAE)")
            # one head per encoder level, on the channels that level outputs
            self.nets["H"] = nn.ModuleList(PatchHead(cout, cfg.nce_dim) for _, cout in self.nets["E"].chans)

    def optimizers(self):
        opt = super().optimizers()
        if "H" in self.nets:
            spec = opt["adam"]
            spec.nets = tuple(spec.nets) + ("H",)
        return opt

    def phases(self):
        ph = super().phases()
        c = self.cfg
        if c.nce_weight > 0 or c.pixel_weight > 0:
            ph.append(Phase("recon", ("E", "G", "H") if c.nce_weight > 0 else ("E", "G"), "adam", nce_phase))
        if c.hessian_weight > 0:
            nets = self._trained("F", "G") if c.hessian_wrt == "z" else ("G",)
            ph.append(Phase("hessian", nets, "adam", hessian_phase, every=c.hessian_every, precision="fp32"))
        return ph

    def hessian_ramp(self, kimg: float) -> float:
        w = self.cfg.hessian_warmup_kimg
        return 1.0 if w <= 0 else min(1.0, max(0.0, kimg / w))

    def g_layers(self, w: torch.Tensor, lod: int, alpha: float, noise) -> list[torch.Tensor]:
        """G's block outputs (after AdaIN) at levels 0..lod for one w per image [N, w_dim], with the
        given frozen noise: the outputs the Hessian penalty regularises. For the MLP G, its hidden
        activations and output."""
        G = self.nets["G"]
        img, feats = G(broadcast_styles(w, G.num_ws), lod, alpha, noise, features=True)
        return list(feats) + [img]


# ---- the phases CALAE adds (1-3 are ALAE's) ------------------------------------------------------
def nce_phase(m: CALAE, batch: Batch, ctx: StepContext) -> dict:
    """Phase 4, E, G and H: λ_NCE·PatchNCE(E_l(G(E(x))), sg(E_l(x))) + λ_pix·mean (G(E(x)) − x)²."""
    c = m.cfg
    lod, alpha = m.level(ctx)
    x = m.real_at(batch.x, lod, alpha)
    E = m.nets["E"]
    # one w per image (not tiled across the batch as the original code did)
    w, real_feats = E(x, lod, alpha, features=True)  # w [N, w_dim]; maps finest first
    x_rec = m.generate(broadcast_styles(w, m.nets["G"].num_ws), lod, alpha)  # [N, C, r, r]
    out = {}
    loss = x.new_zeros((), dtype=torch.float32)
    if c.nce_weight > 0:
        _, rec_feats = E(x_rec, lod, alpha, features=True)
        L = min(c.nce_layers, len(rec_feats))
        # level b = lod - j produced the j-th map (finest first): its head is H[b]
        heads = [m.nets["H"][lod - j] for j in range(L)]
        # keys: the real image's maps; patch_nce detaches them after the head (stop-gradient, as CUT)
        nce = patch_nce(rec_feats[:L], real_feats[:L], heads, c.nce_patches, c.nce_tau, c.nce_negatives)
        loss = loss + c.nce_weight * nce
        out["nce"] = nce
    if c.pixel_weight > 0:
        pix = (x_rec.float() - x.float()).pow(2).mean()
        loss = loss + c.pixel_weight * pix
        out["pixel"] = pix
    return {"loss": loss, **out}


def hessian_phase(m: CALAE, batch: Batch, ctx: StepContext) -> dict:
    """Phase 5, G (and F for hessian_wrt=z): λ_H·N·ramp·HP, lazy every N steps, in fp32."""
    c = m.cfg
    lod, alpha = m.level(ctx)
    n = batch.x.shape[0] if c.hessian_batch <= 0 else min(c.hessian_batch, batch.x.shape[0])
    z = m.draw_z(n)
    G = m.nets["G"]
    # frozen: one noise draw serves all 2k+1 calls, so the differences see only the change of w
    noise = G.make_noise(n, lod, None, z.device) if (c.noise and m.arch == "style") else None
    if c.hessian_wrt == "w":
        # detach: the penalty is about G as a function of w; no gradient into F
        x0 = m.nets["F"](z).detach().float()
        fn = lambda w: m.g_layers(w, lod, alpha, noise)  # noqa: E731
    else:
        x0 = z.float()
        fn = lambda zz: m.g_layers(m.nets["F"](zz), lod, alpha, noise)  # noqa: E731
    hp = hessian_penalty(fn, x0, c.hessian_k, c.hessian_eps)
    scale = c.hessian_weight * c.hessian_every * m.hessian_ramp(ctx.kimg)
    return {"loss": scale * hp, "hp": hp}


# ---- presets ---------------------------------------------------------------------------------------
# The same data, networks and budget as ALAE's style presets, so that "CALAE against ALAE at the same
# architecture" compares one row with another.
for _src, _name, _doc, _extra in (
        ("style-32", "calae-32", "CALAE on 32 px fractals, growing 4 -> 32 px, Gaussian prior (ALAE's style-32 nets)", {}),
        ("style-32", "calae-32-fractal-prior", "CALAE on 32 px fractals with a fractal prior (IFS attractor) for F",
         {"prior": "ifs"}),
        ("style-64", "calae-64", "CALAE on 64 px fractals, growing 4 -> 64 px (ALAE's style-64 nets; CPU: hours)", {})):
    add_preset(_name, "calae", _doc, train=PRESETS[_src]["train"], model={**PRESETS[_src]["model"], **_extra})

add_tiny("calae", {"arch": "style", "z_dim": 8, "base_channels": 4, "max_channels": 8, "mapping_layers": 2,
                   "d_layers": 2, "growth_kimg": 0.064, "ema_kimg": 0.05, "nce_dim": 8, "nce_patches": 16,
                   "hessian_every": 2, "pixel_weight": 1.0})
