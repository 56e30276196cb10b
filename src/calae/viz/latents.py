"""Latent-space figures: codes of real data over samples of the latent the decoder takes."""
from __future__ import annotations

from pathlib import Path

import torch

from .grid import save_figure


def latent_scatter(model, dataset, out: str | Path, n: int = 2000, n_prior: int | None = None, seed: int = 0,
                   title: str | None = None) -> Path:
    """2-D scatter of codes E(x) of n real items, coloured by label, over prior samples in grey
    (Makhzani et al. 2016, Figs. 2 and 4). Codes with more than two dimensions are shown in the
    plane of the two principal axes of the prior samples (the same projection for both sets).
    Goes through ``calae.api``: the codes ``encode`` gives and the latents ``sample_latents`` draws
    live in the decoder's space (z, or w = F(z) for ALAE), so the two sets are comparable for every
    method. Returns the path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import explore
    from ..priors import energy_distance

    mdl = explore.as_model(model)
    batch = explore.load_real(mdl, dataset, n, seed)
    codes = mdl.encode_tensor(batch.x).double()  # [n, d]
    zp = mdl.sample_latents(n_prior or max(n, 2000), seed + 1).double()
    space = mdl.latent.name
    d = codes.shape[1]
    k = min(len(codes), len(zp), 1000)
    ed = energy_distance(codes[:k], zp[:k])
    if d == 1:
        codes, zp = torch.cat([codes, torch.zeros_like(codes)], 1), torch.cat([zp, torch.zeros_like(zp)], 1)
        axes_note = ""
    elif d == 2:
        axes_note = ""
    else:
        mean = zp.mean(0)
        _, _, vt = torch.linalg.svd(zp - mean, full_matrices=False)
        proj = vt[:2].T  # [d, 2]
        codes, zp = (codes - mean) @ proj, (zp - mean) @ proj
        axes_note = f" ({d}-D, prior's principal plane)"
    fig, ax = plt.subplots(figsize=(6.4, 6), dpi=110)
    ax.scatter(zp[:, 0], zp[:, 1], s=3, c="0.75", alpha=0.5, linewidths=0, label=f"prior samples ({space})")
    if batch.y is not None:
        k = int(batch.y.max()) + 1
        sc = ax.scatter(codes[:, 0], codes[:, 1], s=5, c=batch.y.numpy(), cmap="tab10" if k <= 10 else "tab20",
                        vmin=-0.5, vmax=k - 0.5, linewidths=0)
        fig.colorbar(sc, ax=ax, label="label", ticks=range(k))
    else:
        ax.scatter(codes[:, 0], codes[:, 1], s=5, c="tab:blue", linewidths=0, label="codes E(x)")
    ax.set_title(title or f"{model.name}: codes E(x) over prior samples of {space}{axes_note}\n"
                          f"energy distance {ed:.3g}", fontsize=9)
    ax.set_aspect("equal", adjustable="datalim")
    return save_figure(fig, out)
