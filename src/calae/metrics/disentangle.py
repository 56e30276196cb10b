"""Disentanglement of codes against known generative factors: DCI and MIG.

The fractal renderer returns the parameters of every image it draws (``Batch.params``), so the
factors behind the data are known exactly - a measurement other codebases cannot make on their
data. Given codes c [n, d] (E(x)) and factors v [n, k] (the parameters that vary in the subset):

- DCI (Eastwood & Williams, ICLR 2018), with linear importances: codes and factors standardised on a
  75 % fit split, one ridge regression per factor, importance R_ij = |β_ij| of code i for factor j.
  Disentanglement D = Σ_i ρ_i (1 − H_k(R_i· / Σ_j R_ij)) with ρ_i = Σ_j R_ij / Σ R (each code should
  explain one factor); completeness C = mean_j (1 − H_d(R_·j / Σ_i R_ij)) (each factor captured by
  one code); informativeness I = mean R² of the regressions on the 25 % held out. Entropies in
  base k and d, so D, C ∈ [0, 1].
- MIG (Chen et al., NeurIPS 2018): codes and factors discretised into ``bins`` quantile bins; per
  factor, the gap between the two largest mutual informations I(c_i; v_j) divided by H(v_j); mean
  over factors.

The paper used lasso or random-forest importances; a linear model is stated here because it is
deterministic, fast and needs no extra package. The registered metric ``disentangle`` applies to
image datasets that carry parameters (fractals).
"""
from __future__ import annotations

import math

import torch

from .base import MetricError, real_indices
from .probe import split_indices
from .suite import Context, metric


def _standardise(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (a - ref.mean(0)) / ref.std(0).clamp_min(1e-12)


def varying_factors(v: torch.Tensor, tol: float = 1e-9) -> torch.Tensor:
    """Indices of the columns of v [n, k] that vary (constant parameters carry no information)."""
    return torch.nonzero(v.double().std(0) > tol).flatten()


def dci(codes, factors, seed: int = 0, ridge: float = 1e-2) -> dict[str, float]:
    """{"disentanglement", "completeness", "informativeness"} of codes [n, d] for factors [n, k]."""
    c, v = torch.as_tensor(codes).double().flatten(1), torch.as_tensor(factors).double().flatten(1)
    if c.shape[0] != v.shape[0] or c.shape[0] < 8:
        raise MetricError(f"dci needs matching codes and factors with at least 8 items; got {c.shape[0]} and "
                          f"{v.shape[0]}")
    v = v[:, varying_factors(v)]
    d, k = c.shape[1], v.shape[1]
    if k == 0:
        raise MetricError("dci: no factor varies in this subset")
    tr, te = split_indices(c.shape[0], 0.25, seed)
    ctr, cte = _standardise(c[tr], c[tr]), _standardise(c[te], c[tr])
    vtr, vte = _standardise(v[tr], v[tr]), _standardise(v[te], v[tr])
    beta = torch.linalg.solve(ctr.T @ ctr + ridge * ctr.shape[0] * torch.eye(d, dtype=c.dtype), ctr.T @ vtr)  # [d, k]
    pred = cte @ beta
    r2 = 1 - (pred - vte).pow(2).mean(0) / vte.var(0, unbiased=False).clamp_min(1e-12)
    R = beta.abs() + 1e-12

    def ent(p: torch.Tensor, base: int) -> torch.Tensor:  # rows of p sum to 1
        return -(p * p.log()).sum(-1) / math.log(base) if base > 1 else torch.zeros(p.shape[0], dtype=p.dtype)

    D_i = 1 - ent(R / R.sum(1, keepdim=True), k)  # [d]
    rho = R.sum(1) / R.sum()
    C_j = 1 - ent((R / R.sum(0, keepdim=True)).T, d)  # [k]
    return {"disentanglement": float((rho * D_i).sum()), "completeness": float(C_j.mean()),
            "informativeness": float(r2.clamp(min=0).mean()), "factors": k}


def _discretise(a: torch.Tensor, bins: int) -> torch.Tensor:
    """Per column, quantile bins 0..bins-1 (ties share a bin: discrete factors keep their values)."""
    out = torch.empty(a.shape, dtype=torch.long)
    for j in range(a.shape[1]):
        col = a[:, j].contiguous()  # a column view is strided; bucketize wants it contiguous
        edges = torch.quantile(col, torch.linspace(0, 1, bins + 1, dtype=col.dtype)[1:-1])
        out[:, j] = torch.bucketize(col, edges.unique())
    return out


def _mi(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mutual information (nats) of two discrete label vectors."""
    n = a.shape[0]
    ka, kb = int(a.max()) + 1, int(b.max()) + 1
    joint = torch.bincount(a * kb + b, minlength=ka * kb).double().view(ka, kb) / n
    pa, pb = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    nz = joint > 0
    return float((joint[nz] * (joint[nz] / (pa @ pb)[nz]).log()).sum())


def mig(codes, factors, bins: int = 20) -> float:
    """Mutual information gap of codes [n, d] for factors [n, k] (see the module docstring)."""
    c, v = torch.as_tensor(codes).double().flatten(1), torch.as_tensor(factors).double().flatten(1)
    v = v[:, varying_factors(v)]
    if v.shape[1] == 0:
        raise MetricError("mig: no factor varies in this subset")
    if c.shape[1] < 2:
        raise MetricError("mig needs codes of at least 2 dimensions")
    cd, vd = _discretise(c, bins), _discretise(v, bins)
    gaps = []
    for j in range(vd.shape[1]):
        h = _mi(vd[:, j], vd[:, j])  # H(v_j)
        mis = sorted((_mi(cd[:, i], vd[:, j]) for i in range(cd.shape[1])), reverse=True)
        gaps.append((mis[0] - mis[1]) / max(h, 1e-12))
    return float(sum(gaps) / len(gaps))


@metric("disentangle", kinds=("image",))
def disentangle(ctx: Context) -> dict[str, float]:
    """DCI and MIG of the codes E(x) against the renderer's parameters of the same images (data that
    carries parameters: fractals)."""
    if not ctx.info.num_params:
        raise MetricError(f"disentangle needs data that carries its generative parameters (fractals); "
                          f"{ctx.info.name or 'this dataset'} has none")
    idx = real_indices(len(ctx.dataset), ctx.n_real, ctx.seed)
    params = torch.cat([ctx.dataset.get(idx[s:s + ctx.batch_size]).params.double()
                        for s in range(0, idx.shape[0], ctx.batch_size)])
    codes = ctx.codes()
    out = dci(codes, params, seed=ctx.seed)
    out["mig"] = mig(codes, params)
    return out


__all__ = ["dci", "mig", "varying_factors"]
