"""What a trial measures at a rung of `--scheduler mo-asha`: both objectives, cheaply.

The scheduler (tune/mo_asha.py) ranks trials at a few rungs on the two objectives, but the real
silhouette needs the whole pipeline (fine-tuning, reduction, both clusterers, every point of the
split). At a rung the trial measures a proxy instead: KMeans with the trial's n_clusters (seeded,
few inits) on the codes of a fixed, seeded subsample of the objective split, taken through the
trial's own reduction (PCA or UMAP, fitted on that subsample) as its clusterers will see them,
scored with the exact silhouette on that subsample; and the validation loss it reports every
epoch anyway. Every trial of a search has the same seed, so every trial is measured on the same
points. The reduction is part of the proxy because a UMAP stage multiplies the silhouette
(bench/RESULTS.md gives both for every trial): measured in the latent space, the proxy would rank
a UMAP trial by a number its final score has little to do with.

Rungs count epochs, or seconds of the trial (`Rungs.time_attr`). In seconds, a trial measures at
the end of the first epoch at or after a rung, and a trial whose training ends before the first
rung is never ranked: stopping it would save little, and at a rung counted in epochs a
cheap trial is stopped on the same near-tied proxy as a costly one.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

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
# Key of every epoch record, with rungs in seconds: the trial's clock when its rungs were decided.
CLOCK_KEY = "clock_s"


@dataclass(frozen=True)
class Rungs:
    """The scheduler's rungs `at`, in `time_attr` units (names.TIME_ATTRS): epochs, or seconds
    since the trial started."""

    at: tuple[int, ...]
    time_attr: str = N.EPOCH
    # In seconds: the trial's clock when it last decided on a rung before a checkpoint it now
    # resumes from (tune/trial.py): the rungs up to there were reported then.
    decided_until: float = 0.0

    def __post_init__(self) -> None:
        if self.time_attr not in N.TIME_ATTRS:
            raise ValueError(f"time_attr must be one of {N.TIME_ATTRS}, got {self.time_attr!r}")


def with_rung_values(
    on_epoch: OnEpoch,
    rungs: Rungs,
    model: torch.nn.Module,
    x_split: torch.Tensor,
    n_clusters: int,
    seed: int,
    reduction: Reduction | None = None,
    clock: Callable[[], float] | None = None,
) -> OnEpoch:
    """`on_epoch` whose record, at a rung, also carries the rung values and names.RUNG_AT (a
    copy: the training history keeps its own records). In epochs, a rung is that epoch. In
    seconds (`clock()`: the trial's seconds so far), it is the first epoch ending at or after
    it, for the latest rung passed (ASHA's rule), and the rung record carries the clock then
    (names.RUNG_CLOCK); every record carries it as CLOCK_KEY (what a checkpoint keeps as
    `Rungs.decided_until`), and rungs up to `rungs.decided_until` are not measured again."""
    in_seconds = rungs.time_attr == N.TIME_TOTAL
    if in_seconds and clock is None:
        raise ValueError("rungs in seconds need the trial's clock")
    x_sample = x_split[torch.as_tensor(rung_sample(len(x_split), seed), device=x_split.device)]
    passed = {at for at in rungs.at if in_seconds and at <= rungs.decided_until}

    def measured(record: dict[str, float], state: Callable[[], dict]) -> None:
        now = clock() if in_seconds else record["epoch"]
        due = [
            at for at in rungs.at if at not in passed and (at <= now if in_seconds else at == now)
        ]
        record = {**record, CLOCK_KEY: now} if in_seconds else record
        if due:
            values = rung_values(model, x_sample, record["val_loss"], n_clusters, seed, reduction)
            record = {**record, **values, N.RUNG_AT: max(due)}
            if in_seconds:
                record[N.RUNG_CLOCK] = now
            passed.update(due)
        on_epoch(record, state)

    return measured
