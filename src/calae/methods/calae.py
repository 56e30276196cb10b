"""CALAE: Contrastive Adversarial Latent AutoEncoder (seed 000; methods.md §4).

An ALAE (``calae.methods.alae``: E, F the "Projector", style G with EMA, latent D; its three phases,
R1, style mixing and progressive growing unchanged) with the terms seed 000 collected, each
implemented as the paper that introduced it says (the original code's slots for them were broken:
see "not copied" below):

  4. E, G, H   λ_NCE · PatchNCE(E_l(x̂), sg(E_l(x))) + λ_pix · mean (x̂ − x)²,   x̂ = G(E(x))
               Contrastive reconstruction (CUT, Park et al. 2020, eq. 2-3): the encoder's feature maps
               at the ``nce_layers`` finest levels; queries from the reconstruction x̂, keys from the
               real x at the same locations (the positive) against the batch's other locations (the
               negatives; ``nce_negatives=image``: CUT's choice, the same image's only, which lets
               position alone identify the positive); a two-layer MLP head per level (the networks "H",
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
  6. P         softplus(P(t(x̃))) + softplus(−P(t(x))) + γ_P/2·E‖∇ P(t(x))‖²   (``patch_weight`` > 0)
               Patch discriminator: P is an image discriminator (``nets.discriminator``) on tiles
               t(·), random ``patch_size``-pixel squares of the images at the data resolution (the
               current growth level's image, nearest-upsampled, so that real and generated tiles
               went through the same resampling); x̃ are the reconstructions G(E(x)) (and, with
               ``patch_fakes=both``, samples G(F(z))), made without gradient. Its generator-side
               term, the one the original code lacked, is in phase 4: λ_P·softplus(−P(t(x̂))) with P
               frozen, so the gradient reaches G and E through x̂ only (and phase 2 gets
               λ_P·softplus(−P(t(G(F(z))))) with ``patch_fakes=both``).
  prior        z ~ p(z) for F from the priors registry (``prior``: gaussian, ifs, sierpinski, kali, ...):
               seed 000's "fractal distribution as a prior in place of the usual Gaussian".

Not copied from the original code (methods.md §4): its reconstruction codes tiled across the batch
(here each image has its own w), PatchNCE positives taken from two unrelated generated images (here
x and its own reconstruction), Hessian paths that never ran (here a phase of its own the loop
runs), a patch discriminator detached from G (here it trains G through its own non-saturating term).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, add_preset, add_tiny, check_choice, check_range
from ..data.base import Batch, DataInfo
from ..losses import hessian_penalty, nonsat_logistic, patch_nce, r1_penalty
from ..nets.discriminator import ImageDiscriminator
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
    # batch: every other location of every image in the batch, the same location of the other images
    # included | image: the other locations of the same image only (CUT's default). With "image" a
    # query can find its key by position alone, and the encoder learned to map every image to nearly
    # one w: at 20 kimg (benchmarks/bench_calae.py, 3 seeds) all reconstructions were one blob and
    # FD 1.40 ± 0.33, against FD 0.76 ± 0.21 and image-specific reconstructions with "batch".
    nce_negatives: str = "batch"
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
    # patch discriminator (phase 6 and a generator-side term in phase 4)
    patch_weight: float = 0.0  # λ_P of the generator-side term; 0: no patch discriminator
    patch_size: int = 16  # tile side in data pixels (the whole image when the data is smaller)
    patch_fakes: str = "rec"  # what P sees as generated: rec (G(E(x))) | both (also samples G(F(z)))
    patch_r1: float = 1.0  # γ_P of P's R1 penalty on real tiles
    patch_channels: int = 32  # P's first width (doubling per level, at most 4x)

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
        check_range("patch_weight", self.patch_weight, 0)
        check_range("patch_size", self.patch_size, 4, 4096)
        check_choice("patch_fakes", self.patch_fakes, ("rec", "both"))
        check_range("patch_r1", self.patch_r1, 0)
        check_range("patch_channels", self.patch_channels, 1, 1024)


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
        if self.has_recon:
            if self.arch != "style":
                raise ConfigError("calae's reconstruction phase reads the style encoder's feature maps: use "
                                  "arch=style (or --set nce_weight=0 pixel_weight=0 patch_weight=0 for a plain ALAE)")
            if cfg.nce_weight > 0:  # one head per encoder level, on the channels that level outputs
                self.nets["H"] = nn.ModuleList(PatchHead(cout, cfg.nce_dim) for _, cout in self.nets["E"].chans)
        if cfg.patch_weight > 0:
            self.patch = min(cfg.patch_size, info.resolution)
            self.nets["P"] = ImageDiscriminator(info.channels, self.patch, cfg.patch_channels, 4 * cfg.patch_channels,
                                                hidden=4 * cfg.patch_channels)

    @property
    def has_recon(self) -> bool:
        c = self.cfg
        return c.nce_weight > 0 or c.pixel_weight > 0 or c.patch_weight > 0

    def optimizers(self):
        opt = super().optimizers()
        spec = opt["adam"]
        spec.nets = tuple(spec.nets) + tuple(n for n in ("H", "P") if n in self.nets)
        return opt

    def phases(self):
        ph = super().phases()
        c = self.cfg
        if c.patch_weight > 0:
            if c.patch_fakes == "both":  # phase 2 also answers P on samples
                ph[[p.name for p in ph].index("gen")] = Phase("gen", self._trained("F", "G"), "adam", gen_patch_phase)
            ph.append(Phase("patch", ("P",), "adam", patch_phase))
        if self.has_recon:
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

    def tiles(self, img: torch.Tensor) -> torch.Tensor:
        """Random ``patch_size`` squares [N, C, p, p] of images at the current level, one per image
        at a position drawn from the global RNG (exact resume); the level's image is first
        nearest-upsampled to the data resolution, so tiles cover the same share of every level."""
        img = self.to_full(img)
        n, c, h, w = img.shape
        p = self.patch
        if p >= h and p >= w:
            return img
        i = torch.randint(0, h - p + 1, (n, 1)).to(img.device)
        j = torch.randint(0, w - p + 1, (n, 1)).to(img.device)
        ar = torch.arange(p, device=img.device)
        rows, cols = (i + ar)[:, None, :, None], (j + ar)[:, None, None, :]
        return img[torch.arange(n, device=img.device)[:, None, None, None],
                   torch.arange(c, device=img.device)[None, :, None, None], rows, cols]

    def patch_logit(self, img: torch.Tensor) -> torch.Tensor:
        """P on tiles of img (one set): logit [N], float32."""
        return self.nets["P"].run(self.tiles(img))[1]


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
    if c.patch_weight > 0:
        # P is not in this phase's networks (frozen): its gradient reaches x̂, hence G and E, only
        g_adv = nonsat_logistic(m.patch_logit(x_rec), real=True)
        loss = loss + c.patch_weight * g_adv
        out["patch_g"] = g_adv
    return {"loss": loss, **out}


def patch_phase(m: CALAE, batch: Batch, ctx: StepContext) -> dict:
    """Phase 6, P: softplus(P(t(x̃))) + softplus(−P(t(x))) + γ_P/2·E‖∇_t P(t(x))‖², x̃ = G(E(x))
    (and G(F(z)) with patch_fakes=both), generated without gradient."""
    c = m.cfg
    lod, alpha = m.level(ctx)
    x = m.real_at(batch.x, lod, alpha)
    n = x.shape[0]
    with torch.no_grad():  # fakes made without gradient: this phase trains P only
        G = m.nets["G"]
        fakes = [m.generate(broadcast_styles(m.nets["E"](x, lod, alpha), G.num_ws), lod, alpha)]
        if c.patch_fakes == "both":
            fakes.append(m.generate(m.styles(m.draw_z(n), lod, mixing=True), lod, alpha))
        fake_t = torch.cat([m.tiles(f) for f in fakes])
    # a fresh leaf: R1 takes the gradient of P's logit with respect to the real tiles' pixels
    real_t = m.tiles(x).detach().requires_grad_(c.patch_r1 > 0)
    _, logit = m.nets["P"].run(torch.cat([real_t, fake_t.to(real_t.dtype)]), set_size=n)
    real_logit, fake_logit = logit[:n], logit[n:]
    adv = nonsat_logistic(fake_logit, real=False) + nonsat_logistic(real_logit, real=True)
    r1 = r1_penalty(real_logit, real_t) if c.patch_r1 > 0 else torch.zeros((), device=x.device)
    return {"loss": adv + 0.5 * c.patch_r1 * r1, "adv": adv, "r1": r1, "real": real_logit.mean(),
            "fake": fake_logit.mean()}


def gen_patch_phase(m: CALAE, batch: Batch, ctx: StepContext) -> dict:
    """Phase 2 with patch_fakes=both, F and G: ALAE's softplus(−D(E(G(F(z))))) plus
    λ_P·softplus(−P(t(G(F(z))))) on the same samples (E, D and P frozen: not this phase's nets)."""
    lod, alpha = m.level(ctx)
    fake = m.generate(m.styles(m.draw_z(batch.x.shape[0]), lod, mixing=True), lod, alpha)
    logit = m.critic(fake, lod, alpha)
    g_adv = nonsat_logistic(m.patch_logit(fake), real=True)
    return {"loss": nonsat_logistic(logit, real=True) + m.cfg.patch_weight * g_adv, "fake": logit.mean(),
            "patch_g": g_adv}


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
