"""Loss curves from stats.jsonl."""
from __future__ import annotations

from pathlib import Path

from .grid import save_figure


def plot_losses(records: list[dict], out: str | Path, keys: list[str] | None = None) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        return None
    keys = keys or sorted({k for r in records for k in r if "/" in k and isinstance(r[k], (int, float))})
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(k.split("/")[0], []).append(k)
    fig, axes = plt.subplots(len(groups), 1, figsize=(7, 2.6 * len(groups)), dpi=100, squeeze=False)
    for ax, (g, ks) in zip(axes[:, 0], groups.items()):
        for k in ks:
            pts = [(r["kimg"], r[k]) for r in records if k in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k.split("/", 1)[1])
        ax.set_title(g)
        ax.set_xlabel("kimg")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return save_figure(fig, out)
