"""What the clusterers see: the autoencoder's codes, their first principal components, or UMAP.

`reduction: pca` keeps the first `pca_dim` principal components of the train codes (a linear
projection). `reduction: umap` is N2D's manifold step (McConville et al., 2020): UMAP
(umap-learn) fitted on `umap_fit_size` seeded train codes, then applied to every split with
`transform`, so train, validation, test and the served champion go through the same map. Fitting
on a subsample bounds its cost (UMAP's fit grows faster than linearly in the number of points),
and `transform` of the rest is cheaper per point.

umap-learn is imported only when a trial uses it (the import costs seconds, and its numba
functions compile on their first call in each worker process: bench/RESULTS.md gives the cost).
With `random_state` set UMAP runs single-threaded and reproducibly; the trainable bounds numba's
threads by the trial's CPUs in any case.

Silhouette measured after UMAP with a small `min_dist` is far higher than in the autoencoder's own
space (UMAP packs each cluster tightly), so a trial also logs its clusterings' silhouette in the
latent space (tune/trial.py), and the two must never be compared as if alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.decomposition import PCA

from tune.config import Reduction


def fit_reduction(reduction: Reduction, seed: int, z_train: np.ndarray) -> Any | None:
    """A fitted reducer with `transform` (sklearn's PCA or umap's UMAP), or None for the codes as
    they are (`reduction: none`, or a PCA that would keep every component: a rotation and a
    shift, which changes no distance and so no clustering or score)."""
    if reduction.kind == "none":
        return None
    if reduction.kind == "pca":
        if reduction.pca_dim >= z_train.shape[1]:
            return None
        return PCA(n_components=reduction.pca_dim, svd_solver="full").fit(z_train)
    return _fit_umap(reduction, seed, z_train[umap_rows(reduction, seed, len(z_train))])


def fit_sample(
    reduction: Reduction, seed: int, z_train: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """(rows, their reduced codes [len(rows), dim]) of a reduction fitted on z_train, or
    (every row, None) where there is none. UMAP gives its own embedding of the subsample it was
    fitted on, so nothing else goes through `transform`; PCA projects every row."""
    if reduction.kind == "umap":
        rows = umap_rows(reduction, seed, len(z_train))
        reducer = _fit_umap(reduction, seed, z_train[rows])
        return rows, np.asarray(reducer.embedding_, dtype=np.float32)
    reducer = fit_reduction(reduction, seed, z_train)
    every = np.arange(len(z_train))
    return every, None if reducer is None else apply_reduction(reducer, z_train)


def umap_rows(reduction: Reduction, seed: int, n: int) -> np.ndarray:
    """The sorted, seeded rows of n train codes that UMAP is fitted on."""
    n_fit = min(reduction.umap_fit_size, n)
    return np.sort(np.random.default_rng(seed).choice(n, n_fit, replace=False))


def _fit_umap(reduction: Reduction, seed: int, z_fit: np.ndarray) -> Any:
    """UMAP fitted on exactly the codes z_fit (the rows umap_rows chose)."""
    import umap  # only here: seconds to import, and most trials never need it

    n_fit = len(z_fit)
    reducer = umap.UMAP(
        n_components=reduction.umap_dim,
        n_neighbors=min(reduction.umap_n_neighbors, n_fit - 1),
        min_dist=reduction.umap_min_dist,
        random_state=seed,
        transform_seed=seed,
        n_jobs=1,  # what a random_state implies anyway (reproducible); said, so UMAP does not warn
    )
    return reducer.fit(z_fit)


def apply_reduction(reducer: Any | None, z: np.ndarray) -> np.ndarray:
    """[N, latent_dim] -> [N, reduced dim] float32 (z itself without a reducer); empty stays empty."""
    if reducer is None:
        return z
    if len(z) == 0:
        return np.zeros((0, reduced_dim(reducer)), np.float32)
    return np.asarray(reducer.transform(z), dtype=np.float32)


def reduced_dim(reducer: Any) -> int:
    return int(getattr(reducer, "n_components_", None) or reducer.n_components)
