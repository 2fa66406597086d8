"""The PNG artifacts of a trial: reconstruction grid, 2-D embedding scatter, loss curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # trials run headless on any node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def reconstruction_grid(x: np.ndarray, x_hat: np.ndarray, path: Path, n: int = 10) -> Path:
    """Top row: inputs [N, H, W] in [0, 1]; bottom row: their reconstructions."""
    n = min(n, len(x))
    fig, axes = plt.subplots(2, n, figsize=(n, 2.2), squeeze=False)
    for i in range(n):
        for row, img in enumerate((x[i], x_hat[i])):
            axes[row, i].imshow(img, cmap="gray", vmin=0, vmax=1)
            axes[row, i].axis("off")
    axes[0, 0].set_title("input", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    return _save(fig, path)


def embedding_scatter(z: np.ndarray, labels: dict[str, np.ndarray], path: Path) -> Path:
    """First two principal components of the embedding [N, d], one panel per clusterer."""
    zc = z - z.mean(axis=0)
    # PCA via SVD: deterministic and fast; t-SNE/UMAP would cost more than the trial's clustering
    _, _, vt = np.linalg.svd(zc[:5000], full_matrices=False)
    p = zc @ vt[:2].T if zc.shape[1] >= 2 else np.column_stack([zc[:, 0], np.zeros(len(zc))])
    fig, axes = plt.subplots(1, len(labels), figsize=(4.5 * len(labels), 4), squeeze=False)
    for ax, (name, lab) in zip(axes[0], labels.items(), strict=True):
        ax.scatter(p[:, 0], p[:, 1], c=lab, cmap="tab10", s=2, alpha=0.6, rasterized=True)
        ax.set_title(f"{name} clusters (PCA of the embedding)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)


def loss_curves(history: list[dict[str, float]], abo_loss: list[float], path: Path) -> Path:
    """Reconstruction MSE per epoch (train/validation) through pre-training and fine-tuning, and
    the clustering losses that ran: the fine-tuning stage's and ABO_clusterer's own fit's."""
    tuned = [h for h in history if "cluster_loss" in h]
    panels = 1 + bool(tuned) + bool(abo_loss)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.5), squeeze=False)
    a, rest = axes[0][0], list(axes[0][1:])
    epochs = [h["epoch"] for h in history]
    a.plot(epochs, [h["train_loss"] for h in history], marker="o", ms=3, label="train")
    a.plot(epochs, [h["val_loss"] for h in history], marker="o", ms=3, label="validation")
    if tuned:
        a.axvline(tuned[0]["epoch"] - 0.5, color="grey", ls="--", lw=1)
        a.text(tuned[0]["epoch"] - 0.5, a.get_ylim()[1], " fine-tuning", va="top", fontsize=8)
    a.set_xlabel("epoch")
    a.set_ylabel("reconstruction MSE")
    a.legend()
    if tuned:
        b = rest.pop(0)
        b.plot([h["epoch"] for h in tuned], [h["cluster_loss"] for h in tuned], marker="o", ms=3)
        b.set_xlabel("epoch")
        b.set_ylabel("fine-tuning clustering loss")
    if abo_loss:
        b = rest.pop(0)
        b.plot(range(1, len(abo_loss) + 1), abo_loss)
        b.set_xlabel("ABO epoch")
        b.set_ylabel("ABO_clusterer loss")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
