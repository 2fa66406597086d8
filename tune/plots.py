"""The figures a user sees in MLflow: per trial the reconstruction grid, the embedding and the loss
curves.

Each figure has a builder that returns the matplotlib Figure (what tests inspect) and a thin
wrapper that saves it as a PNG and closes it (what trials and the report call).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # trials run headless on any node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

CLUSTERER_NAMES = {"abo": "ABO_clusterer", "kmeans": "KMeans"}
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
# More points only make the PNG heavier (every trial writes one) without showing more structure.
MAX_POINTS = 5000
TITLE_SIZE = 11
LABEL_SIZE = 10


def reconstruction_grid(x: np.ndarray, x_hat: np.ndarray, path: Path, n: int = 10) -> Path:
    """Top row: inputs [N, H, W] in [0, 1]; bottom row: their reconstructions."""
    n = min(n, len(x))
    fig, axes = plt.subplots(2, n, figsize=(n, 2.4), squeeze=False)
    for i in range(n):
        for row, img in enumerate((x[i], x_hat[i])):
            axes[row, i].imshow(img, cmap="gray", vmin=0, vmax=1)
            axes[row, i].axis("off")
    axes[0, 0].set_title("input", fontsize=LABEL_SIZE, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=LABEL_SIZE, loc="left")
    return save(fig, path)


# --- embedding ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterPanel:
    """One clusterer's labeling of a split, in the space it clustered."""

    name: str  # "abo" | "kmeans"
    points: np.ndarray  # [N, d]: the split in the space the clusterer saw
    space: str  # what that space is: "latent", "PCA", "UMAP"
    labels: np.ndarray  # [N]
    silhouette: float  # measured in `points` (NaN: degenerate)
    clusters_used: int
    nmi: float | None = None  # None: no true labels


def embedding_figure(
    panels: Sequence[ClusterPanel],
    *,
    objective: str,
    n_clusters: int,
    split: str = "val",
    truth: np.ndarray | None = None,
    title: str = "",
    max_points: int = MAX_POINTS,
    seed: int = 0,
) -> Figure:
    """One panel per clusterer, its labels drawn in the space it clustered (its first two
    principal components when that space has more than two dimensions), the `objective`
    clusterer's first, then the true labels (`truth`, if any) in the same coordinates as it.

    With true labels, each clusterer's colours are its clusters matched to the classes (Hungarian),
    so a cluster and the class it is matched to share a colour across panels. More than
    `max_points` points: a seeded subsample is drawn (the scores in the titles are the trial's,
    on every point)."""
    order = sorted(panels, key=lambda p: p.name != objective)
    n = len(order[0].labels)
    shown = _subsample(n, max_points, seed)
    has_truth = truth is not None and len(truth) == n
    n_colours = max(
        n_clusters,
        *(int(p.labels.max()) + 1 for p in order if len(p.labels)),
        int(truth.max()) + 1 if has_truth and n else 0,
    )
    coords: dict[int, tuple[np.ndarray, bool]] = {}  # clusterers sharing a space share its PCA
    for p in order:
        if id(p.points) not in coords:
            coords[id(p.points)] = project_2d(p.points[shown])
    size = float(np.clip(3000 / max(len(shown), 1), 2, 14))

    cols = len(order) + has_truth
    fig, axes = plt.subplots(1, cols, figsize=(4.6 * cols, 5.0), squeeze=False)
    axes = list(axes[0])
    for i, p in enumerate(order):
        ax = axes[i + (has_truth and i > 0)]  # the true labels sit right of the objective's panel
        xy, is_pca = coords[id(p.points)]
        colour = _matched(p.labels, truth, n_colours) if has_truth else p.labels
        ax.scatter(*xy.T, c=_colours(colour[shown], n_colours), s=size, lw=0, rasterized=True)
        name = CLUSTERER_NAMES.get(p.name, p.name)
        head = f"{name} (objective)" if p.name == objective else name
        sil = "n/a (degenerate)" if not np.isfinite(p.silhouette) else f"{p.silhouette:.3f}"
        scores = f"silhouette {sil} · {p.clusters_used}/{n_clusters} clusters"
        if p.nmi is not None:
            scores += f" · NMI {p.nmi:.3f}"
        where = _space_words(p, is_pca)
        ax.set_title(f"{head}\n{scores}\n{where} {name} clustered", fontsize=LABEL_SIZE)
        _axis_labels(ax, p, is_pca)
    if has_truth:
        ax, best = axes[1], order[0]
        xy, is_pca = coords[id(best.points)]
        ax.scatter(*xy.T, c=_colours(truth[shown], n_colours), s=size, lw=0, rasterized=True)
        classes = np.unique(truth)
        for k in classes:  # the class ids at their medians, so colours need no legend
            at = truth[shown] == k
            if at.any():
                ax.text(
                    *np.median(xy[at], axis=0),
                    str(k),
                    fontsize=LABEL_SIZE,
                    ha="center",
                    va="center",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.7, "lw": 0},
                )
        name = CLUSTERER_NAMES.get(best.name, best.name)
        ax.set_title(
            f"true labels ({len(classes)} classes)\n"
            f"same coordinates as {name}\n"
            "clusters coloured as the class each is matched to",
            fontsize=LABEL_SIZE,
        )
        _axis_labels(ax, best, is_pca)
    total = f"{n} points" if len(shown) == n else f"{len(shown)} of {n} points"
    heading = f"{title} · " if title else ""
    fig.suptitle(
        f"{heading}{SPLIT_NAMES.get(split, split)} split, {total}", fontsize=TITLE_SIZE + 1
    )
    return fig


def embedding_scatter(panels: Sequence[ClusterPanel], path: Path, **kwargs: Any) -> Path:
    """embedding_figure(panels, **kwargs) as a PNG at `path`."""
    return save(embedding_figure(panels, **kwargs), path)


def project_2d(points: np.ndarray) -> tuple[np.ndarray, bool]:
    """(2-D coordinates [N, 2], whether they are principal components): a space of more than
    two dimensions is drawn as its first two principal components, a 2-d one as is (a 1-d one
    on a line)."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape[1] <= 2:
        pad = np.zeros((len(points), 2 - points.shape[1]))
        return np.hstack([points, pad]), False
    centred = points - points.mean(axis=0)
    # PCA from the d x d covariance: far cheaper than an SVD of the points (every trial draws
    # this), and t-SNE would cost more than the trial's clustering
    values, vectors = np.linalg.eigh(centred.T @ centred)
    top = vectors[:, np.argsort(values)[::-1][:2]]
    # fixed signs (each component's largest loading positive): the same picture every run
    top *= np.sign(top[np.abs(top).argmax(axis=0), [0, 1]])
    return centred @ top, True


def _subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def _matched(labels: np.ndarray, truth: np.ndarray, n_colours: int) -> np.ndarray:
    """Cluster ids renumbered to the class each is matched to (Hungarian on the counts); every
    cluster keeps a colour of its own."""
    counts = np.zeros((n_colours, n_colours), dtype=np.int64)
    np.add.at(counts, (labels, truth), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = np.empty(n_colours, dtype=np.int64)
    mapping[rows] = cols
    return mapping[labels]


def _colours(ids: np.ndarray, n: int) -> np.ndarray:
    """A categorical colour per id: tab10 up to 10 ids, tab20 up to 20, evenly spaced hues
    beyond (no qualitative map has more distinct colours)."""
    if n <= 10:
        return plt.get_cmap("tab10")(ids % 10)
    if n <= 20:
        return plt.get_cmap("tab20")(ids % 20)
    return plt.get_cmap("turbo")(ids / max(n - 1, 1))


def _space_words(p: ClusterPanel, is_pca: bool) -> str:
    d = p.points.shape[1]
    space = f"the {d}-d {p.space} space"
    return f"PCA of {space}" if is_pca else space


def _axis_labels(ax, p: ClusterPanel, is_pca: bool) -> None:
    axis = "PC" if is_pca else p.space
    ax.set_xlabel(f"{axis} 1", fontsize=LABEL_SIZE)
    ax.set_ylabel(f"{axis} 2" if p.points.shape[1] > 1 or is_pca else "", fontsize=LABEL_SIZE)
    ax.set_xticks([])
    ax.set_yticks([])


# --- loss curves --------------------------------------------------------------------------------

# What the fine-tuning stage's clustering term is, for its panel's title (tune/finetune.py).
FINETUNE_LOSSES = {"abo": "Deep k-Means, ABO's loss", "dec": "IDEC, KL(P || Q)"}


def loss_figure(
    history: Sequence[Mapping[str, float]],
    abo_loss: Sequence[float] = (),
    *,
    objective: str = "",
    finetune: str | None = None,
) -> Figure:
    """The losses of what ran and matters: reconstruction MSE per epoch (train and validation)
    through pre-training and fine-tuning; the fine-tuning stage's clustering loss when it ran
    (`finetune`: its kind); ABO_clusterer's own loss per ABO epoch only when ABO's labels are the
    trial's `objective` (otherwise its fit said nothing about the result) and it took steps."""
    tuned = [h for h in history if "cluster_loss" in h]
    show_abo = objective == "abo" and len(abo_loss) > 0
    cols = 1 + bool(tuned) + show_abo
    fig, axes = plt.subplots(1, cols, figsize=(4.8 * cols, 3.8), squeeze=False)
    axes = list(axes[0])
    a = axes.pop(0)
    epochs = [h["epoch"] for h in history]
    a.plot(epochs, [h["train_loss"] for h in history], marker="o", ms=3, label="train")
    a.plot(epochs, [h["val_loss"] for h in history], marker="o", ms=3, label="validation")
    stages = "pre-training"
    if tuned:
        stages += " + fine-tuning"
        a.axvline(tuned[0]["epoch"] - 0.5, color="grey", ls="--", lw=1)
        a.text(
            tuned[0]["epoch"] - 0.5,
            0.98,
            " fine-tuning",
            va="top",
            fontsize=9,
            transform=a.get_xaxis_transform(),
        )
    a.set_title(f"reconstruction loss ({stages})", fontsize=TITLE_SIZE)
    a.set_xlabel("epoch", fontsize=LABEL_SIZE)
    a.xaxis.set_major_locator(MaxNLocator(integer=True))
    a.set_ylabel("MSE", fontsize=LABEL_SIZE)
    a.legend(fontsize=9)
    if tuned:
        b = axes.pop(0)
        b.plot(
            [h["epoch"] for h in tuned],
            [h["cluster_loss"] for h in tuned],
            marker="o",
            ms=3,
            color="tab:green",
        )
        what = FINETUNE_LOSSES.get(finetune or "", finetune or "")
        b.set_title(
            f"fine-tuning clustering loss\n({what})" if what else "fine-tuning clustering loss",
            fontsize=TITLE_SIZE,
        )
        b.set_xlabel("epoch", fontsize=LABEL_SIZE)
        b.xaxis.set_major_locator(MaxNLocator(integer=True))
        b.set_ylabel("clustering loss", fontsize=LABEL_SIZE)
    if show_abo:
        c = axes.pop(0)
        c.plot(range(1, len(abo_loss) + 1), abo_loss, color="tab:purple")
        c.set_title("ABO_clusterer's own fit\n(its labels are the objective)", fontsize=TITLE_SIZE)
        c.set_xlabel("ABO epoch", fontsize=LABEL_SIZE)
        c.xaxis.set_major_locator(MaxNLocator(integer=True))
        c.set_ylabel("ABO loss", fontsize=LABEL_SIZE)
    return fig


def loss_curves(history: Sequence[Mapping[str, float]], path: Path, **kwargs: Any) -> Path:
    """loss_figure(history, **kwargs) as a PNG at `path`."""
    return save(loss_figure(history, **kwargs), path)


def save(fig: Figure, path: Path, dpi: int = 80) -> Path:
    """Write `fig` as a PNG and close it (figures are built in long-lived processes)."""
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
