"""What a trial measures at a rung epoch of `--scheduler mo-asha`: both objectives, cheaply.

The scheduler (tune/mo_asha.py) ranks trials at a few epochs on the two objectives, but the real
silhouette needs the whole pipeline (fine-tuning, reduction, both clusterers, every point of the
split). At a rung the trial measures a proxy instead: KMeans with the trial's n_clusters (seeded,
few inits) on the codes of a fixed, seeded subsample of the objective split, taken through the
trial's own reduction (PCA or UMAP, fitted on that subsample) as its clusterers will see them,
scored with the exact silhouette on that subsample; and the validation loss it reports every
epoch anyway. Every trial of a search has the same seed, so every trial is measured on the same
points. The reduction is part of the proxy because a UMAP stage multiplies the silhouette
(bench/RESULTS.md gives both for every trial): measured in the latent space, the proxy would rank
a UMAP trial by a number its final score has little to do with.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from tune import names as N
from tune.config import Reduction
from tune.metrics import silhouette_scores
from tune.reduction import apply_reduction, fit_reduction
from tune.training import embed

# Points of the subsample: the exact silhouette is O(n^2), and a few thousand points rank trials
# as well as the whole split at a fraction of the cost.
SAMPLE_SIZE = 2000
# KMeans restarts at a rung: a proxy that ranks trials, not a final clustering.
KMEANS_N_INIT = 2


def rung_sample(n: int, seed: int, size: int = SAMPLE_SIZE) -> np.ndarray:
    """Sorted indices of a fixed subsample of a split of `n` points (all of them when n <= size):
    the same for every epoch and every trial of a search (they share the seed)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def rung_labels(codes: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """KMeans labels of `codes` [n, d]: the rung's clustering."""
    km = KMeans(n_clusters=n_clusters, n_init=KMEANS_N_INIT, random_state=seed)
    with warnings.catch_warnings():  # a collapsed embedding has fewer distinct points than k
        warnings.simplefilter("ignore", ConvergenceWarning)
        return km.fit_predict(codes.astype(np.float64, copy=False))


def rung_silhouette(
    codes: np.ndarray, n_clusters: int, seed: int, device: torch.device | str | None = None
) -> float:
    """Exact silhouette of `rung_labels` on `codes`; NaN when the clustering is degenerate or the
    codes are not finite."""
    if len(codes) <= n_clusters or not np.isfinite(codes).all():
        return math.nan
    return silhouette_scores(codes, [rung_labels(codes, n_clusters, seed)], device=device)[0]


def rung_values(
    model: torch.nn.Module,
    x_sample: torch.Tensor,
    val_loss: float,
    n_clusters: int,
    seed: int,
    reduction: Reduction | None = None,
) -> dict[str, float]:
    """Both rung objectives (names.RUNG_OBJECTIVES) of `model` as it is now; `x_sample` holds the
    subsample's images, `val_loss` the epoch's validation loss, `reduction` the trial's (fitted
    here on the subsample's codes). Leaves the model's mode alone."""
    codes = embed(model, x_sample).cpu().numpy()
    if reduction is not None and np.isfinite(codes).all():
        codes = apply_reduction(fit_reduction(reduction, seed, codes), codes)
    return {
        N.RUNG_SILHOUETTE: rung_silhouette(codes, n_clusters, seed, device=x_sample.device),
        N.RUNG_RECON_LOSS: float(val_loss),
    }


OnEpoch = Callable[[dict[str, float], Callable[[], dict]], None]


def with_rung_values(
    on_epoch: OnEpoch,
    rungs: frozenset[int],
    model: torch.nn.Module,
    x_split: torch.Tensor,
    n_clusters: int,
    seed: int,
    reduction: Reduction | None = None,
) -> OnEpoch:
    """`on_epoch` whose record, at an epoch in `rungs`, also carries the rung values (a copy: the
    training history keeps its own records)."""
    x_sample = x_split[torch.as_tensor(rung_sample(len(x_split), seed), device=x_split.device)]

    def measured(record: dict[str, float], state: Callable[[], dict]) -> None:
        if record["epoch"] in rungs:
            values = rung_values(model, x_sample, record["val_loss"], n_clusters, seed, reduction)
            record = {**record, **values}
        on_epoch(record, state)

    return measured
