"""Textbook loss terms shared by the methods. Each reduces as stated: sum over data dimensions,
mean over the batch, so that β weights mean the same thing in every method (methods.md §1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """z = μ + σ·ε (Kingma & Welling 2014, eq. 10); ε may be given so two phases share it."""
    eps = torch.randn_like(mu) if noise is None else noise
    return mu + torch.exp(0.5 * logvar) * eps


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor, reduce: bool = True) -> torch.Tensor:
    """KL(N(μ, σ²) || N(0, I)) = ½ Σ_d (μ² + σ² − log σ² − 1); per item, or its batch mean."""
    kl = 0.5 * (mu.float().pow(2) + logvar.float().exp() - logvar.float() - 1.0).sum(dim=1)
    return kl.mean() if reduce else kl


def recon_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str = "mse", reduce: bool = True) -> torch.Tensor:
    """Reconstruction error summed over data dimensions.

    kind "mse": Σ (x − x̂)²; "bce": Σ BCE(sigmoid(x̂), x) with x̂ as logits and x in [0, 1].
    """
    x_hat, x = x_hat.float(), x.float()
    if kind == "mse":
        err = (x_hat - x).pow(2)
    elif kind == "bce":
        err = F.binary_cross_entropy_with_logits(x_hat, x, reduction="none")
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r} (mse or bce)")
    err = err.flatten(1).sum(dim=1)
    return err.mean() if reduce else err


def nonsat_logistic(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Non-saturating logistic GAN term: softplus(−D) for real targets, softplus(D) for fake."""
    return F.softplus(-logits if real else logits).mean()


def r1_penalty(d_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): E‖∇_x D(x)‖² on real inputs; the caller weighs it by γ/2."""
    (grad,) = torch.autograd.grad(d_out.float().sum(), x, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(dim=1).mean()


def patch_nce(queries: list[torch.Tensor], keys: list[torch.Tensor], heads=None, n_patches: int = 256,
              tau: float = 0.07, negatives: str = "image", generator: torch.Generator | None = None,
              locations: list[torch.Tensor] | None = None) -> torch.Tensor:
    """PatchNCE (Park et al., ECCV 2020, eq. 2-3), averaged over layers.

    ``queries[l]`` and ``keys[l]`` are feature maps [N, C, H, W] of two images that correspond
    location by location (CALAE: the encoder's maps of a reconstruction x̂ and of the real x). At P =
    min(n_patches, H·W) locations, drawn once per layer and shared by the batch (CUT), each feature is
    projected by ``heads[l]`` (None: identity) and L2-normalised. For query q_i the positive is key
    k_i at the same location of the same image; the negatives are the keys at the other locations of
    the same image (``negatives="image"``, CUT's default) or at every other location of every image
    in the batch ("batch"). The loss is the cross-entropy of picking the positive,
    −log( exp(q·k⁺/τ) / (exp(q·k⁺/τ) + Σ exp(q·k⁻/τ)) ), averaged over queries.
    Keys are detached after their head (as CUT's PatchNCELoss): the heads and the network learn
    through the queries only. ``locations`` may fix the sampled indices (tests).
    """
    if negatives not in ("image", "batch"):
        raise ValueError(f"negatives must be 'image' or 'batch', got {negatives!r}")
    total = 0.0
    for li, (fq, fk) in enumerate(zip(queries, keys)):
        n, c, h, w = fq.shape
        if fk.shape != fq.shape:
            raise ValueError(f"layer {li}: query maps {tuple(fq.shape)} and key maps {tuple(fk.shape)} differ")
        if locations is not None:
            idx = locations[li].to(fq.device)
        elif h * w > n_patches:
            idx = torch.randperm(h * w, generator=generator)[:n_patches].to(fq.device)
        else:
            idx = torch.arange(h * w, device=fq.device)
        q = fq.flatten(2).transpose(1, 2)[:, idx].float()  # [N, P, C]
        k = fk.flatten(2).transpose(1, 2)[:, idx].float()
        if heads is not None:
            q, k = heads[li](q), heads[li](k)  # [N, P, D]
        q = F.normalize(q, dim=-1)
        # detach: the keys are targets; no gradient into the key branch (CUT detaches them too)
        k = F.normalize(k, dim=-1).detach()
        p = q.shape[1]
        pos = (q * k).sum(-1, keepdim=True)  # [N, P, 1]
        if negatives == "batch":  # one pool of N·P keys: every other location of every image
            q, k = q.reshape(1, n * p, -1), k.reshape(1, n * p, -1)
            pos = pos.reshape(1, n * p, 1)
            p = n * p
        neg = q @ k.transpose(1, 2)  # [B, P, P]: q_i · k_j
        eye = torch.eye(p, dtype=torch.bool, device=q.device)
        neg = neg.masked_fill(eye, float("-inf"))  # k_i is the positive, not a negative
        logits = torch.cat([pos, neg], dim=2) / tau  # [B, P, 1 + P]
        target = torch.zeros(logits.shape[:2], dtype=torch.long, device=q.device)
        total = total + F.cross_entropy(logits.flatten(0, 1), target.flatten())
    return total / max(len(queries), 1)


def rademacher(shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """±1 entries with probability ½ each (float32)."""
    return (torch.randint(0, 2, tuple(shape), generator=generator).float() * 2 - 1).to(device)


def hessian_penalty(fn, x: torch.Tensor, k: int = 2, eps: float = 0.1, directions: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Hessian penalty (Peebles et al., ECCV 2020, eq. 4-5), summed over the outputs of ``fn``.

    For k Rademacher directions v (``directions`` [k, *x.shape] may fix them) the second directional
    derivative of each output element is estimated by central differences,
    vᵀHv ≈ [f(x + εv) − 2 f(x) + f(x − εv)] / ε², and its unbiased variance over the k directions
    (which equals 2·Σ_{i≠j} H_ij² in expectation, zero when every output is additive in x) is reduced
    by the max over elements (the paper's max reduction), then summed over the outputs
    (``fn(x)`` returns a tensor or a list of tensors, e.g. several generator layers). ``fn`` must be
    deterministic over the 2k + 1 calls (freeze injected noise) and is best run in fp32: ε² = 0.01
    in the denominator amplifies rounding.
    """
    if directions is None:
        if k < 2:
            raise ValueError("the Hessian penalty needs k >= 2 directions (a variance over them)")
        directions = rademacher((k, *x.shape), generator, x.device)
    as_list = lambda y: list(y) if isinstance(y, (list, tuple)) else [y]  # noqa: E731
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32  # at least fp32 differences
    center = as_list(fn(x))
    seconds = []  # per direction: a list of [N, ...] second differences, one per output
    for v in directions.to(x.device, x.dtype):
        plus, minus = as_list(fn(x + eps * v)), as_list(fn(x - eps * v))
        seconds.append([(p.to(acc) - 2 * c.to(acc) + m.to(acc)) / eps ** 2 for p, c, m in zip(plus, center, minus)])
    total = x.new_zeros((), dtype=acc)
    for j in range(len(center)):
        stack = torch.stack([s[j] for s in seconds])  # [k, N, ...]
        total = total + stack.var(dim=0, unbiased=True).max()
    return total
