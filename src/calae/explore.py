"""Using a trained model: samples, reconstructions, interpolations, codes and latent maps.

Everything here goes through ``calae.api`` (encode / decode / sample / reconstruct), so it works
for every method and for snapshots loaded without any training code. It changes no mode: a loaded
model is in eval mode already, and the training loop calls it inside ``api.inference``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .api import Model
from .data.base import Batch, Dataset
from .viz.grid import make_grid, save_figure, save_gif, save_image


def as_model(model) -> Model:
    """A ``calae.api.Model`` for a loaded model or a method held in memory (modes untouched)."""
    return model if isinstance(model, Model) else Model(model)


def fixed_indices(dataset: Dataset, n: int, seed: int = 0) -> torch.Tensor:
    """n item indices that are the same every time (frames of a run compare); the metrics' seeded
    subset at an offset seed, so pictures and evaluations need not show the same items."""
    from .metrics.base import real_indices

    return real_indices(len(dataset), n, seed + 12345)


def load_real(model, dataset: Dataset, n: int, seed: int = 0) -> Batch:
    """n fixed items of the dataset in the model's range, on its device."""
    b = dataset.get(fixed_indices(dataset, n, seed))
    return Batch(as_model(model).to_model(b.x), b.y, b.params)


def samples(model, n: int, seed: int = 0) -> torch.Tensor:
    """Float samples in the model range [n, ...] (untruncated: what metrics see)."""
    return as_model(model).sample_tensor(n, seed)


def to_uint8(model, x: torch.Tensor) -> torch.Tensor:
    return as_model(model).from_model(x)


def sample_grid(model, n: int = 64, seed: int = 0) -> torch.Tensor:
    """A picture of samples with the method's display options (ALAE's truncation ψ); metrics never."""
    mdl = as_model(model)
    return make_grid(mdl.sample(n, seed, **mdl.display_options()))


def reconstructions(model, x: torch.Tensor) -> torch.Tensor:
    return as_model(model).reconstruct_tensor(x)


def recon_grid(model, x: torch.Tensor, per_row: int = 8) -> torch.Tensor:
    """Rows alternate: real images, then their reconstructions."""
    mdl = as_model(model)
    rec = mdl.reconstruct_tensor(x)
    real_u8, rec_u8 = mdl.from_model(x), mdl.from_model(rec)
    rows = []
    for i in range(0, x.shape[0], per_row):
        rows += [real_u8[i:i + per_row], rec_u8[i:i + per_row]]
    return make_grid(torch.cat(rows), nrow=per_row)


def encode(model, x: torch.Tensor) -> torch.Tensor:
    return as_model(model).encode_tensor(x)


def interpolation_frames(model, x: torch.Tensor, pairs: int = 4, steps: int = 16) -> list[torch.Tensor]:
    """Linear interpolation in the code space between pairs (x[2i], x[2i+1]): one grid per step.

    Returns `steps` frames, each a row of `pairs` images; a GIF of them plays every pair at once.
    """
    mdl = as_model(model)
    need = 2 * pairs
    if x.shape[0] < need:
        raise ValueError(f"need {need} images for {pairs} pairs, got {x.shape[0]}")
    w = mdl.encode_tensor(x[:need])
    wa, wb = w[0::2], w[1::2]  # [P, d]
    return [make_grid(mdl.decode((1 - t) * wa + t * wb), nrow=pairs) for t in torch.linspace(0, 1, steps)]


def interpolation_strip(frames: list[torch.Tensor], model=None) -> torch.Tensor:
    """Frames stacked vertically -> one PNG showing every step (pairs across, steps down)."""
    return torch.cat(frames, dim=1)


def write_interpolation(model, x: torch.Tensor, out: str | Path, pairs: int = 4, steps: int = 16) -> list[Path]:
    out = Path(out)
    frames = interpolation_frames(model, x, pairs, steps)
    strip = out.with_suffix(".png")
    # ping-pong so the loop is smooth
    if out.suffix.lower() == ".mp4":
        from .viz.video import save_video

        movie = save_video(frames + frames[-2:0:-1], out, fps=1000 / 90, upscale=_upscale(frames[0]))
    else:
        movie = out.with_suffix(".gif")
        save_gif(frames + frames[-2:0:-1], movie, duration_ms=90, upscale=_upscale(frames[0]))
    save_image(interpolation_strip(frames), strip, upscale=_upscale(frames[0]))
    return [movie, strip]


def _upscale(img: torch.Tensor) -> int:
    side = max(img.shape[-2:])
    return max(1, 256 // side) if side < 256 else 1


def check_color_by(dataset: Dataset, color_by: str) -> None:
    """ValueError unless ``color_by`` is auto, none, label (labelled data) or one of its parameters."""
    info = dataset.info
    choices = ["auto", "none"] + (["label"] if info.num_classes else []) + (
        list(getattr(dataset, "param_names", None) or [f"param{i}" for i in range(info.num_params)]))
    if color_by not in choices:
        raise ValueError(f"--color-by {color_by!r} is not something this data has; choose one of "
                         f"{', '.join(choices)}")


def latent_map(model, dataset: Dataset, out: str | Path, n: int = 1000, method: str = "pca",
               color_by: str = "auto", seed: int = 0) -> Path:
    """2-D map of the codes (PCA or t-SNE), coloured by label or by a generating parameter."""
    check_color_by(dataset, color_by)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = load_real(model, dataset, n, seed)
    codes = encode(model, batch.x).numpy().astype(np.float64)
    xy = project_2d(codes, method, seed)
    colour, label = None, None
    if batch.y is not None and color_by in ("auto", "label"):
        colour, label = batch.y.numpy(), "label"
    elif batch.params is not None and color_by != "none":
        names = getattr(dataset, "param_names", None) or [f"param{i}" for i in range(batch.params.shape[1])]
        j = names.index(color_by) if color_by in names else 0
        colour, label = batch.params[:, j].numpy(), names[j]
    fig, ax = plt.subplots(figsize=(6, 6), dpi=110)
    categorical = colour is not None and np.allclose(colour, np.round(colour)) and len(np.unique(colour)) <= 10
    if categorical:  # labels, fractal family, colouring mode: one legend entry per value
        names = getattr(dataset, "category_names", {}).get(label) if hasattr(dataset, "category_names") else None
        for v in np.unique(colour):
            sel = colour == v
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, label=str(names[int(v)]) if names else f"{label} {int(v)}")
        ax.legend(markerscale=3, fontsize=8)
    else:
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=colour, s=6, cmap="viridis")
        if colour is not None:
            fig.colorbar(sc, ax=ax, label=label)
    ax.set_title(f"{model.name} codes ({codes.shape[1]}-D {as_model(model).latent.name}) by {method.upper()}")
    ax.set_xticks([]), ax.set_yticks([])
    return save_figure(fig, out)


def project_2d(codes: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    if codes.shape[1] <= 2:
        return np.pad(codes, ((0, 0), (0, 2 - codes.shape[1])))
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError as e:
            raise ValueError("t-SNE needs scikit-learn: pip install 'calae[metrics]' (or use --projection pca)") from e
        return TSNE(2, random_state=seed, init="pca", perplexity=min(30, len(codes) - 1)).fit_transform(codes)
    c = codes - codes.mean(0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    return c @ vt[:2].T


def projections() -> list[str]:
    """The 2-D projections available here: PCA always, t-SNE with scikit-learn, UMAP with umap-learn."""
    import importlib.util

    out = ["pca"]
    if importlib.util.find_spec("sklearn") is not None:
        out.append("tsne")
    if importlib.util.find_spec("umap") is not None:
        out.append("umap")
    return out


class LatentMap:
    """A 2-D map of codes [N, d] that can also go back: ``code_at(u, v)`` is the code of any point
    of the plane. PCA is linear, so its inverse is exact within the plane of the two principal axes
    (mean + u·v1 + v·v2); t-SNE and UMAP have no inverse, so a point gets the inverse-distance
    weighted mean of the codes of its k nearest mapped neighbours (the seed-004 explorer's
    behaviour: hovering between two digits blends them)."""

    def __init__(self, codes, method: str = "pca", seed: int = 0, k: int = 6):
        codes = np.asarray(codes, dtype=np.float64)
        self.codes, self.method, self.k = codes, method, k
        self.mean = codes.mean(0)
        if method == "pca" or codes.shape[1] <= 2:
            c = codes - self.mean
            _, _, vt = np.linalg.svd(c, full_matrices=False)
            self.axes = vt[:2] if codes.shape[1] > 2 else np.eye(2, codes.shape[1])
            self.xy = c @ self.axes.T
        elif method == "umap":
            try:
                import umap
            except ImportError as e:
                raise ValueError("UMAP needs umap-learn: pip install umap-learn (or use pca)") from e
            self.xy = umap.UMAP(n_components=2, random_state=seed).fit_transform(codes)
        else:
            self.xy = project_2d(codes, method, seed)
        self.xy = np.asarray(self.xy, dtype=np.float64)

    def code_at(self, u: float, v: float) -> np.ndarray:
        if self.method == "pca" or self.codes.shape[1] <= 2:
            return self.mean + np.array([u, v]) @ self.axes
        d = np.hypot(self.xy[:, 0] - u, self.xy[:, 1] - v)
        near = np.argsort(d)[: self.k]
        wts = 1.0 / np.maximum(d[near], 1e-9) ** 2
        return (wts[:, None] * self.codes[near]).sum(0) / wts.sum()


def principal_directions(model, k: int = 8, n: int = 2000, seed: int = 0):
    """GANSpace (Härkönen et al. 2020): the top-k principal directions of n codes drawn from the
    model's latent (``sample_latents``: z, or w = F(z) for ALAE). Returns (mean [d], unit
    directions [k, d], standard deviations along them [k]); a slider moves a code by s·σ_i·v_i."""
    w = as_model(model).sample_latents(n, seed).double()
    mean = w.mean(0)
    _, s, vt = torch.linalg.svd(w - mean, full_matrices=False)
    k = min(k, vt.shape[0])
    return mean.float(), vt[:k].float(), (s[:k] / max(1.0, (n - 1)) ** 0.5).float()
