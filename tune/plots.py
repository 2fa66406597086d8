"""The figures a user sees in MLflow: per trial the reconstruction grid, the embedding and the loss
curves; per search the Pareto front.

Each figure has a builder that returns the matplotlib Figure (what tests inspect) and a thin
wrapper that saves it as a PNG and closes it (what trials and the report call).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # trials run headless on any node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

from tune import names as N  # noqa: E402

CLUSTERER_NAMES = {"abo": "ABO_clusterer", "kmeans": "KMeans"}
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
# More points only make the PNG heavier (every trial writes one) without showing more structure.
MAX_POINTS = 5000
TITLE_SIZE = 11
LABEL_SIZE = 10
ARCH_MARKERS = {"mlp": "o", "conv": "s"}
OTHER_MARKERS = ("^", "D", "v", "P")  # an architecture the space may add later


def reconstruction_grid(x: np.ndarray, x_hat: np.ndarray, path: Path, n: int = 10) -> Path:
    """Top row: inputs [N, H, W] in [0, 1]; bottom row: their reconstructions."""
    n = min(n, len(x))
    # One strip per row, images side by side with white gaps: two axes instead of 2n, which
    # makes the figure several times cheaper to build and save (it is drawn every trial).
    fig, axes = plt.subplots(2, 1, figsize=(n, 2.4), squeeze=False)
    for row, (images, title) in enumerate(((x, "input"), (x_hat, "reconstruction"))):
        height, width = images.shape[1:]
        gap = np.ones((height, max(1, width // 8)), dtype=np.float32)
        strip = np.concatenate([part for img in images[:n] for part in (img, gap)][:-1], axis=1)
        axes[row, 0].imshow(strip, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[row, 0].axis("off")
        axes[row, 0].set_title(title, fontsize=LABEL_SIZE, loc="left")
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


# --- Pareto front -------------------------------------------------------------------------------


def pareto_figure(df: pd.DataFrame) -> Figure:
    """Every finished ok trial of a trials table (tune/report.py) in the objectives' plane: a
    marker per architecture, filled on the Pareto front, each labelled with its trial id; the
    front's line; the winner starred; the baselines (rows with a `point`) named."""
    sil, rec = N.SILHOUETTE, N.RECON_LOSS
    status_ok = df[N.STATUS] == N.Status.OK
    ok = df[status_ok & np.isfinite(df[rec].astype(float)) & np.isfinite(df[sil].astype(float))]
    pareto = ok["pareto"] if "pareto" in ok else pd.Series(False, index=ok.index)
    winner = ok["winner"] if "winner" in ok else pd.Series(False, index=ok.index)
    point = ok["point"].fillna("").astype(str) if "point" in ok else pd.Series("", index=ok.index)
    arch = ok["arch"].astype(str) if "arch" in ok else pd.Series("?", index=ok.index)
    fig, ax = plt.subplots(figsize=(8.5, 6.2))
    front = ok[pareto].sort_values(rec)
    ax.plot(front[rec], front[sil], "-", color="tab:blue", lw=1.2, zorder=1, gid="front")
    handles = []
    others = iter(OTHER_MARKERS)
    known = list(ARCH_MARKERS)  # the legend lists mlp, conv, then any other
    for a in sorted(arch.unique(), key=lambda a: (known.index(a) if a in known else 9, a)):
        marker = ARCH_MARKERS.get(a) or next(others, "X")
        for on_front in (False, True):
            rows = ok[(arch == a) & (pareto == on_front)]
            ax.plot(
                rows[rec],
                rows[sil],
                ls="none",
                marker=marker,
                ms=7,
                gid=f"arch={a}",
                mfc="tab:blue" if on_front else "0.85",
                mec="tab:blue" if on_front else "0.4",
                zorder=2 + on_front,
            )
        handles.append(
            Line2D(
                [],
                [],
                ls="none",
                marker=marker,
                ms=7,
                mfc="0.85",
                mec="0.4",
                label=f"{a} ({(arch == a).sum()})",
            )
        )
    won = ok[winner]
    ax.plot(
        won[rec],
        won[sil],
        ls="none",
        marker="*",
        ms=20,
        color="tab:red",
        mec="darkred",
        zorder=4,
        gid="winner",
    )
    handles.append(
        Line2D([], [], color="tab:blue", lw=1.2, marker="o", mfc="tab:blue", label="Pareto front")
    )
    if len(won):
        handles.append(
            Line2D(
                [],
                [],
                ls="none",
                marker="*",
                ms=14,
                color="tab:red",
                label=f"winner {short_id(won['trial_id'].iloc[0])}",
            )
        )
    ax.margins(0.08)
    ax.set_xlabel("validation reconstruction MSE (lower is better)", fontsize=LABEL_SIZE)
    ax.set_ylabel("validation silhouette (higher is better)", fontsize=LABEL_SIZE)
    ax.set_title(f"{len(ok)} finished trials; labels: trial ids", fontsize=TITLE_SIZE)
    ax.legend(handles=handles, fontsize=9, loc="best")
    skipped = df.loc[~df.index.isin(ok.index), N.STATUS].astype(str).value_counts()
    if len(skipped):
        note = ", ".join(f"{v} {k}" for k, v in skipped.items())
        fig.text(0.01, 0.01, f"not shown: {note}", fontsize=8, color="0.3")
    fig.tight_layout()  # label placement below works in the final layout's pixels

    # Most important first, so they get the free spots: winner, baselines, front, the rest.
    rank = 4 * winner.astype(int) + 2 * (point != "").astype(int) + pareto.astype(int)
    labels = []
    for i in rank.sort_values(ascending=False, kind="stable").index:
        tid = short_id(ok.at[i, "trial_id"])
        if point[i]:
            labels.append((i, f"{point[i]} ({tid})", 8, "bold", 0))
        else:
            labels.append((i, tid, 7, "bold", 7) if winner[i] else (i, tid, 6.5, "normal", 0))
    _place_labels(ax, ok[rec].to_numpy(float), ok[sil].to_numpy(float), ok.index, labels)
    return fig


def pareto_front(df: pd.DataFrame, path: Path) -> Path:
    """pareto_figure(df) as a PNG at `path`."""
    return save(pareto_figure(df), path, dpi=110)


def hypervolume_figure(history: Sequence[float], reference: tuple[float, float]) -> Figure:
    """The front's hypervolume after each ended trial: still rising = still improving."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = range(1, len(history) + 1)
    ax.step(steps, history, where="post", color="tab:blue")
    ax.plot(steps, history, "o", ms=3, color="tab:blue")
    ax.set_xlabel("trials ended")
    ax.set_ylabel("hypervolume of the front")
    ax.set_title(
        f"Is the search still improving its front? (reference: silhouette {reference[0]:g}, "
        f"loss {reference[1]:.4g})",
        fontsize=10,
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    return fig


def hypervolume_curve(history: Sequence[float], reference: tuple[float, float], path: Path) -> Path:
    return save(hypervolume_figure(history, reference), path, dpi=90)


def short_id(trial_id: object) -> str:
    """The 8 hex characters Ray gives a searcher's trial (also the MLflow tag `ray.trial_id`),
    found in a longer name too (a trial directory); another id as is, cut to 12 characters."""
    s = str(trial_id)
    m = re.search(r"(?<![0-9a-f])[0-9a-f]{8}(?![0-9a-f])", s)
    return m.group(0) if m and len(s) > 12 else s[:12]


# (dx, dy) in points from the marker, tried in order; alignment follows the direction.
_OFFSETS = [
    (4, 3),
    (4, -3),
    (-4, 3),
    (-4, -3),
    (0, 7),
    (0, -7),
    (10, 10),
    (10, -10),
    (-10, 10),
    (-10, -10),
    (0, 15),
    (0, -15),
]


def _place_labels(ax, xs: np.ndarray, ys: np.ndarray, index, labels) -> None:
    """Annotate each (row, text, fontsize, weight, pad) at the first offset where its box hits no
    placed label and no other marker (else where it overlaps least): a greedy placement, cheap
    for a few hundred points, that keeps most labels readable."""
    ax.get_xlim(), ax.get_ylim()  # settle the lazy autoscaling before transforming
    px = ax.figure.dpi / 72.0
    where = {i: k for k, i in enumerate(index)}
    pts = ax.transData.transform(np.column_stack([xs, ys]))
    r = 4 * px  # a marker's half size
    markers = np.column_stack([pts - r, pts + r])  # [x0, y0, x1, y1]
    for i, *_, pad in labels:  # a padded label's marker is a big one: others keep clear of it
        markers[where[i]] += np.array([-1, -1, 1, 1]) * pad * px
    boxes = np.empty((0, 4))
    for i, text, size, weight, pad in labels:
        k = where[i]
        w, h = 0.6 * size * len(text) * px, 1.1 * size * px
        best, best_cost = None, np.inf
        others = np.delete(markers, k, axis=0)
        for dx, dy in _OFFSETS:
            dx, dy = dx + pad * np.sign(dx), dy + pad * np.sign(dy)  # clear of a big marker
            x0 = pts[k, 0] + dx * px - (w if dx < 0 else w / 2 if dx == 0 else 0)
            y0 = pts[k, 1] + dy * px - (h if dy < 0 else 0)
            box = np.array([x0, y0, x0 + w, y0 + h])
            cost = _overlap(box, boxes).sum() + _overlap(box, others).sum()
            if cost < best_cost:
                best, best_cost = (dx, dy, box), cost
            if cost == 0:
                break
        dx, dy, box = best
        boxes = np.vstack([boxes, box])
        ax.annotate(
            text,
            (xs[k], ys[k]),
            xytext=(dx, dy),
            textcoords="offset points",
            fontsize=size,
            fontweight=weight,
            ha="right" if dx < 0 else "center" if dx == 0 else "left",
            va="top" if dy < 0 else "bottom",
            color="0.15",
            arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5}
            if abs(dx) > 6 + pad
            else None,
        )


def _overlap(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Overlap areas of `box` [4] with each of `boxes` [M, 4] (x0, y0, x1, y1)."""
    if not len(boxes):
        return np.zeros(0)
    w = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    h = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def save(fig: Figure, path: Path, dpi: int = 80) -> Path:
    """Write `fig` as a PNG and close it (figures are built in long-lived processes)."""
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
