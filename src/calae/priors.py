"""Prior distributions p(z) for latent codes, registered in ``calae.registry.PRIORS``.

An adversarial autoencoder (Makhzani et al. 2016) can match its codes to *any* distribution it can
sample from; these are the ones users ask for, fractal ones included (seed 000's stated goal).

Every sampler has one signature::

    fn(n, dim, generator=None, **options) -> float32 tensor [n, dim] on the CPU

``generator`` (a CPU ``torch.Generator``; None: torch's global one) is the only source of
randomness, so samples are a pure function of (seed, n, dim, options). Samplers whose
distribution is a mixture of labelled parts (``mixture``, ``swiss_roll``) also accept
``labels=LongTensor[n]`` and then draw item i from component ``labels[i]``: the paper's
label-tied regularisation (§2.3 / Fig. 4). Everything is vectorised over n.

Constants a distribution is defined by (the random IFS maps, the normalisation of fractal
priors) come from fixed internal seeds, never from ``generator``: the *distribution* depends only
on (dim, options); the generator only picks the samples.

``make_prior(name, dim, **options)`` validates a name and options once and returns a
:class:`Prior` with ``.sample(n, generator)`` / ``.sample_for_labels(labels, generator)``, so
methods can keep a prior by name in their config (``prior: str``, ``prior_opts: dict``).

Two-sample statistics used to check that codes match a prior: :func:`energy_distance` and
:func:`mmd_rbf`.
"""
from __future__ import annotations

import functools
import inspect
import json
import math
from typing import Callable

import torch

from .config import ConfigError, check, check_range
from .registry import PRIORS, register

__all__ = ["Prior", "make_prior", "energy_distance", "mmd_rbf", "gaussian", "uniform", "sphere", "mixture",
           "swiss_roll", "ifs", "sierpinski", "kali", "mixture_means", "ifs_maps", "simplex_vertices", "chaos_game",
           "prior_options"]

_REF_N = 8192  # reference sample size for the normalisation constants of fractal priors
_REF_SEED = 20240531


def _randn(n: int, dim: int, generator) -> torch.Tensor:
    return torch.randn(n, dim, generator=generator, dtype=torch.float32)


def _rand(n: int, dim: int, generator) -> torch.Tensor:
    return torch.rand(n, dim, generator=generator, dtype=torch.float32)


def _labels_or_draw(n: int, k: int, labels, generator) -> torch.Tensor:
    if labels is None:
        return torch.randint(0, k, (n,), generator=generator)
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    check(labels.shape == (n,), f"labels must have shape [{n}], got {tuple(labels.shape)}")
    if n:
        check(int(labels.min()) >= 0 and int(labels.max()) < k,
              f"labels must lie in 0..{k - 1} for a prior with k={k} components; got "
              f"{int(labels.min())}..{int(labels.max())}")
    return labels


# ---- simple priors ------------------------------------------------------------------------------
@register(PRIORS, "gaussian")
def gaussian(n: int, dim: int, generator=None, *, sigma: float = 1.0) -> torch.Tensor:
    """N(0, σ² I). Seed 002 uses σ = 5."""
    check_range("prior option sigma", sigma, 0, lo_open=True)
    return sigma * _randn(n, dim, generator)


@register(PRIORS, "uniform")
def uniform(n: int, dim: int, generator=None, *, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """U([low, high]^d): independent uniform coordinates."""
    check(high > low, f"prior option high must exceed low; got low={low}, high={high}")
    return low + (high - low) * _rand(n, dim, generator)


@register(PRIORS, "sphere")
def sphere(n: int, dim: int, generator=None, *, radius: float = 1.0) -> torch.Tensor:
    """Uniform on the hypersphere r·S^{d−1}: z = r·ε/‖ε‖, ε ~ N(0, I) (the normal law is isotropic)."""
    check_range("prior option radius", radius, 0, lo_open=True)
    e = _randn(n, dim, generator)
    return radius * e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)


# ---- the paper's 2-D priors, generalised to d dimensions ---------------------------------------
def mixture_means(k: int, dim: int, radius: float = 1.4, layout: str = "auto") -> torch.Tensor:
    """Component means r·u_k: [k, dim].

    layout "circle": u_k = (cos 2πk/K, sin 2πk/K, 0, …), the paper's petals in the first two
    coordinates; "axes": u_k = e_1, …, e_d, −e_1, …, −e_d in that order (K <= 2d), means that are
    pairwise at least r·√2 apart and use every coordinate; "auto": circle in 2-D or when K > 2d,
    axes otherwise.
    """
    if layout == "auto":
        layout = "circle" if dim == 2 or k > 2 * dim else "axes"
    if layout == "axes":
        check(k <= 2 * dim, f"prior option layout=axes needs k <= 2*dim; got k={k}, dim={dim}")
        u = torch.cat([torch.eye(dim), -torch.eye(dim)])[:k]
    elif layout == "circle":
        check(dim >= 2, "prior option layout=circle needs dim >= 2")
        a = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
        u = torch.zeros(k, dim, dtype=torch.float64)
        u[:, 0], u[:, 1] = a.cos(), a.sin()
        u = u.float()
    else:
        raise ConfigError(f"prior option layout must be auto, circle or axes; got {layout!r}")
    return radius * u


@register(PRIORS, "mixture")
def mixture(n: int, dim: int, generator=None, labels=None, *, k: int = 10, radius: float = 1.4,
            radial_std: float = 0.5, tangential_std: float = 0.1, layout: str = "auto") -> torch.Tensor:
    """Equal-weight mixture of K elongated Gaussians (Makhzani et al. 2016, Figs. 2 and 4).

    Component k has mean m_k = r·u_k (see :func:`mixture_means`) and covariance
    σ_r² u_k u_kᵀ + σ_t² (I − u_k u_kᵀ): long along its own direction, thin across it, i.e.
        z = r·u + σ_t·ε + (σ_r − σ_t)(uᵀε)·u,   ε ~ N(0, I_d).
    The paper's 2-D figure: K = 10 petals at radius 1.4, σ_r = 0.5, σ_t = 0.1.
    """
    check_range("prior option k", k, 1, 1024)
    check_range("prior option radius", radius, 0)
    check_range("prior option radial_std", radial_std, 0)
    check_range("prior option tangential_std", tangential_std, 0)
    u = mixture_means(int(k), dim, 1.0, layout)  # unit directions [K, d]
    means = radius * u
    lab = _labels_or_draw(n, int(k), labels, generator)
    eps = _randn(n, dim, generator)
    uk = u.index_select(0, lab)  # [n, d] (index_select: advanced indexing is slow on small threaded CPUs)
    along = (eps * uk).sum(1, keepdim=True)
    return means.index_select(0, lab) + tangential_std * eps + (radial_std - tangential_std) * along * uk


def _rotation(dim: int, seed: int) -> torch.Tensor:
    """A fixed Haar-random orthogonal matrix [dim, dim] (QR of a Gaussian matrix, signs fixed)."""
    g = torch.Generator().manual_seed(int(seed))
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


@register(PRIORS, "swiss_roll")
def swiss_roll(n: int, dim: int, generator=None, labels=None, *, k: int = 10, noise: float = 0.0,
               rotate: bool = False) -> torch.Tensor:
    """The paper's swiss roll (Fig. 4), split into K labelled arcs.

    t ~ U[0, 1) (label-tied: t ~ U[k/K, (k+1)/K)), r = 3√t, θ = 4π√t, z₁₂ = (r cos θ, r sin θ).
    Other coordinates are 0 (d > 2: "padding"); then N(0, noise²) is added to every coordinate and,
    with rotate=true, a fixed random rotation of R^d spreads the roll over all coordinates.
    """
    check(dim >= 2, "the swiss_roll prior needs dim >= 2")
    check_range("prior option k", k, 1, 1024)
    check_range("prior option noise", noise, 0)
    lab = _labels_or_draw(n, int(k), labels, generator)
    t = (lab.float() + _rand(n, 1, generator)[:, 0]) / int(k)
    r, th = 3.0 * t.sqrt(), 4 * math.pi * t.sqrt()
    z = torch.zeros(n, dim)
    z[:, 0], z[:, 1] = r * th.cos(), r * th.sin()
    if noise > 0:
        z = z + noise * _randn(n, dim, generator)
    if rotate:
        z = z @ _rotation(dim, 7).T
    return z


# ---- fractal priors -------------------------------------------------------------------------------
def simplex_vertices(dim: int) -> torch.Tensor:
    """The d+1 vertices of a regular simplex centred at 0 with circumradius 1: [d+1, d].

    The standard basis of R^{d+1} lies in the hyperplane Σx = 1; centring it and expressing it in an
    orthonormal basis of that hyperplane gives the regular d-simplex.
    """
    e = torch.eye(dim + 1, dtype=torch.float64) - 1.0 / (dim + 1)  # centred vertices in R^{d+1}
    q, _ = torch.linalg.qr(e[:, :dim])  # orthonormal basis of the centred hyperplane: [d+1, d]
    v = e @ q  # [d+1, d]
    return (v / v.norm(dim=1, keepdim=True)).float()


@functools.lru_cache(maxsize=64)
def ifs_maps(dim: int, maps: int, contraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random contractive similarities f_i(z) = s·Q_i z + b_i: (A [m, d, d], b [m, d]).

    Q_i are Haar-random orthogonal matrices and b_i ~ N(0, I_d), all from ``seed``; every f_i has
    Lipschitz constant s < 1, so the IFS has a unique attractor (Hutchinson 1981) whose similarity
    dimension solves m·s^D = 1, D = log m / log(1/s) (an upper bound on its Hausdorff dimension).
    """
    g = torch.Generator().manual_seed(int(seed))
    q, r = torch.linalg.qr(torch.randn(maps, dim, dim, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # Haar: fix column signs
    b = torch.randn(maps, dim, generator=g, dtype=torch.float64)
    return (contraction * q).float(), b.float()


def chaos_game(A: torch.Tensor, b: torch.Tensor, n: int, generator=None, burn_in: int = 40,
               probs: torch.Tensor | None = None) -> torch.Tensor:
    """Affine maps f_i(z) = A_i z + b_i (A [m, d, d], or [m] for s_i·I; b [m, d]).

    n independent chaos-game chains run in parallel; returns each chain's last point [n, d].

    z₀ ~ U[−1, 1]^d; z_{t+1} = A_{i_t} z_t + b_{i_t}, i_t ~ p (Barnsley's random iteration). With
    contraction s the distance to the attractor shrinks like s^t, so after ``burn_in`` steps each
    chain's point is a draw from the IFS's invariant measure (up to s^burn_in · diameter). Chains
    are independent, so the n points are i.i.d.
    """
    m, dim = b.shape
    z = 2 * _rand(n, dim, generator) - 1
    if probs is None:  # equal probabilities
        idx = torch.randint(0, m, (burn_in, n), generator=generator)
    else:
        idx = torch.multinomial(probs, n * burn_in, replacement=True, generator=generator).view(burn_in, n)
    if A.dim() == 1:  # similarities s_i·I (Sierpinski): no matrices needed
        for t in range(burn_in):
            i = idx[t]
            z = A.index_select(0, i)[:, None] * z + b.index_select(0, i)
        return z
    if n * dim * dim <= 1 << 18:  # small batches: gather each chain's matrix, one batched product
        for t in range(burn_in):
            i = idx[t]
            z = torch.bmm(A.index_select(0, i), z.unsqueeze(2)).squeeze(2) + b.index_select(0, i)  # [n, d]
        return z
    At = A.transpose(1, 2).contiguous()  # large n: one matmul per map over the chains that chose it
    for t in range(burn_in):
        i, new = idx[t], torch.empty_like(z)
        for j in range(m):
            sel = (i == j).nonzero().squeeze(1)
            if sel.numel():
                new.index_copy_(0, sel, z.index_select(0, sel) @ At[j] + b[j])
        z = new
    return z


@functools.lru_cache(maxsize=64)
def _norm_stats(name: str, dim: int, opts_json: str, robust: bool) -> tuple[torch.Tensor, float]:
    """Centre and scalar scale of an un-normalised prior, from a fixed-seed reference sample."""
    fn = PRIORS[name]
    ref = fn(_REF_N, dim, torch.Generator().manual_seed(_REF_SEED), normalize=False, **json.loads(opts_json))
    if robust:  # heavy tails: median and median absolute deviation (×1.4826 = σ for a Gaussian)
        centre = ref.median(dim=0).values
        scale = float((ref - centre).abs().median()) * 1.4826
    else:  # mean and root mean per-coordinate variance
        centre = ref.mean(dim=0)
        scale = float(ref.var(dim=0).mean().sqrt())
    return centre, max(scale, 1e-12)


def _normalise(z: torch.Tensor, name: str, dim: int, opts: dict, scale: float, robust: bool = False) -> torch.Tensor:
    centre, s = _norm_stats(name, dim, json.dumps(opts, sort_keys=True), robust)
    return (z - centre) * (scale / s)


@register(PRIORS, "ifs")
def ifs(n: int, dim: int, generator=None, *, maps: int = 0, contraction: float = 0.5, seed: int = 0,
        burn_in: int = 40, scale: float = 1.0, normalize: bool = True) -> torch.Tensor:
    """Invariant measure of a random iterated function system in R^d (a fractal "dust").

    m maps f_i(z) = s·Q_i z + b_i with equal probabilities (see :func:`ifs_maps`; m = 0 means d + 1),
    sampled by the parallel chaos game (:func:`chaos_game`), then standardised to mean 0 and root
    mean per-coordinate variance ``scale`` with constants from a fixed reference sample. The map
    set depends only on (dim, maps, contraction, seed); similarity dimension log m / log(1/s).
    """
    m = int(maps) or dim + 1
    check_range("prior option maps", m, 2, 4096)
    check_range("prior option contraction", contraction, 0, 1, lo_open=True)
    check(contraction < 1, f"prior option contraction must be < 1 (a contraction); got {contraction}")
    check_range("prior option burn_in", burn_in, 1, 10_000)
    check_range("prior option scale", scale, 0, lo_open=True)
    A, b = ifs_maps(dim, m, float(contraction), int(seed))
    z = chaos_game(A, b, n, generator, int(burn_in))
    if not normalize:
        return z
    return _normalise(z, "ifs", dim, {"maps": m, "contraction": contraction, "seed": seed, "burn_in": burn_in},
                      scale)


@register(PRIORS, "sierpinski")
def sierpinski(n: int, dim: int, generator=None, *, ratio: float = 0.5, burn_in: int = 40, scale: float = 1.0,
               normalize: bool = True) -> torch.Tensor:
    """The Sierpinski simplex in R^d: the attractor of f_i(z) = v_i + r·(z − v_i), i = 0..d,
    with v_i the vertices of a regular simplex (:func:`simplex_vertices`) and r = 1/2.

    d = 2: the Sierpinski triangle (dimension log 3 / log 2 ≈ 1.585); d = 3: the tetrahedron
    (dimension 2); in general log(d+1)/log(1/r). Sampled by the chaos game; ``scale`` as for ifs.
    Un-normalised points have barycentric coordinates λ with, at every level, some λ_i >= 1/2.
    """
    check_range("prior option ratio", ratio, 0, 1, lo_open=True)
    check(ratio < 1, f"prior option ratio must be < 1; got {ratio}")
    check_range("prior option burn_in", burn_in, 1, 10_000)
    check_range("prior option scale", scale, 0, lo_open=True)
    v = simplex_vertices(dim)  # [d+1, d]
    A = torch.full((dim + 1,), float(ratio))  # f_i(z) = r·z + (1 − r)·v_i
    b = (1 - ratio) * v
    z = chaos_game(A, b, n, generator, int(burn_in))
    if not normalize:
        return z
    return _normalise(z, "sierpinski", dim, {"ratio": ratio, "burn_in": burn_in}, scale)


@register(PRIORS, "kali")
def kali(n: int, dim: int, generator=None, *, param: float = 0.7, iters: int = 8, sigma: float = 1.0,
         clip: float = 4.0, scale: float = 1.0, normalize: bool = True) -> torch.Tensor:
    """Gaussian noise pushed through Kali's map ("Kaliset", Kali 2011) in R^d.

    z₀ ~ N(0, σ² I); z_{t+1} = |z_t| / ‖z_t‖² + c, with |·| coordinate-wise and
    c = −param·√(3/d)·(1, …, 1), so that ‖c‖ = param·√3 in every dimension (the classic 3-D
    formula with c = −param per coordinate). The inversion in the unit sphere followed by the fold
    into the positive orthant and the shift is chaotic; ``iters`` iterations give a measure with
    spherical-arc (fractal) structure and heavy tails. It is then standardised robustly
    (median, 1.4826·MAD → ``scale``), and, with clip > 0, squashed coordinate-wise by
    clip·tanh(z/clip) so that it is bounded (|z_i| < clip·scale).
    """
    check_range("prior option iters", iters, 1, 1000)
    check_range("prior option sigma", sigma, 0, lo_open=True)
    check_range("prior option clip", clip, 0)
    check_range("prior option scale", scale, 0, lo_open=True)
    c = -float(param) * math.sqrt(3.0 / dim)
    z = sigma * _randn(n, dim, generator)
    for _ in range(int(iters)):
        z = z.abs() / z.pow(2).sum(dim=1, keepdim=True).clamp_min(1e-12) + c
    if not normalize:
        return z
    z = _normalise(z, "kali", dim, {"param": param, "iters": iters, "sigma": sigma}, 1.0, robust=True)
    if clip > 0:
        z = clip * torch.tanh(z / clip)
    return scale * z


# ---- a prior chosen by name -------------------------------------------------------------------
_INTERNAL = {"generator", "labels", "normalize"}


def prior_options(name: str) -> dict:
    """The options a registered prior accepts, with their defaults."""
    sig = inspect.signature(PRIORS[name])
    return {p.name: p.default for p in sig.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _INTERNAL}


class Prior:
    """A registered prior bound to a dimension and options: ``.sample(n, generator)``."""

    def __init__(self, name: str, dim: int, **opts):
        check(name in PRIORS, f"unknown prior {name!r}; choose one of {', '.join(sorted(PRIORS))}")
        check(isinstance(dim, int) and dim >= 1, f"prior dimension must be a whole number >= 1; got {dim!r}")
        known = prior_options(name)
        unknown = sorted(set(opts) - set(known))
        check(not unknown, f"unknown option(s) {', '.join(unknown)} for prior {name!r}; known: "
                           f"{', '.join(sorted(known)) or 'none'}")
        self.name, self.dim, self.opts = name, int(dim), dict(opts)
        self.fn: Callable = PRIORS[name]
        self.supports_labels = "labels" in inspect.signature(self.fn).parameters
        self.sample(2, torch.Generator().manual_seed(0))  # validate option values now, not mid-training

    @property
    def num_components(self) -> int:
        """Number of label-tied components (0 when the prior has none)."""
        return int(self.opts.get("k", prior_options(self.name)["k"])) if self.supports_labels else 0

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """float32 [n, dim] on the CPU; deterministic given the generator's state."""
        return self.fn(int(n), self.dim, generator, **self.opts)

    def sample_for_labels(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Item i drawn from component labels[i] (mixture, swiss_roll): [len(labels), dim]."""
        check(self.supports_labels, f"prior {self.name!r} has no label-tied components; use mixture or swiss_roll")
        labels = torch.as_tensor(labels).long().cpu()
        return self.fn(int(labels.shape[0]), self.dim, generator, labels=labels, **self.opts)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.opts.items())
        return f"Prior({self.name!r}, dim={self.dim}{', ' if opts else ''}{opts})"


def make_prior(name: str, dim: int, **opts) -> Prior:
    """Validate a prior name and its options for ``dim`` and bind them: see :class:`Prior`."""
    return Prior(name, dim, **opts)


# ---- two-sample statistics ---------------------------------------------------------------------
def _pdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a.double(), b.double())


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Energy distance (Székely & Rizzo 2004): 2E‖X−Y‖ − E‖X−X'‖ − E‖Y−Y'‖ >= 0, zero iff the laws
    are equal. V-statistic on the two samples [n, d] and [m, d]; in the units of the data."""
    a, b = a.flatten(1), b.flatten(1)
    return float(2 * _pdist(a, b).mean() - _pdist(a, a).mean() - _pdist(b, b).mean())


def mmd_rbf(a: torch.Tensor, b: torch.Tensor, bandwidths=None) -> float:
    """Squared MMD with a sum of RBF kernels exp(−‖x−y‖²/(2h²)) (Gretton et al. 2012), biased
    estimate. Default bandwidths: the median pairwise distance of the pooled sample × {½, 1, 2}."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    pooled = torch.cat([a, b])
    d2 = torch.cdist(pooled, pooled).pow(2)
    if bandwidths is None:
        med = d2[d2 > 0].sqrt().median() if bool((d2 > 0).any()) else torch.tensor(1.0, dtype=torch.float64)
        bandwidths = [0.5 * float(med), float(med), 2 * float(med)]
    k = sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)
    n = a.shape[0]
    return float(k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean())
