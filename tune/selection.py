"""Pick the winning trial of a two-objective search: the Pareto front, then one point on it.

The search maximises silhouette and minimises reconstruction loss, so there is no single best
trial, only a front of trade-offs. The rule used to pick one:

1. Drop excluded rows (failed or degenerate trials) and rows with a NaN or infinite objective.
2. The Pareto front is every remaining row that no other row dominates. Row a dominates row b
   if a is at least as good as b in every objective (in that objective's direction) and
   strictly better in at least one. Exact duplicates do not dominate each other: both stay.
3. On the front, each objective is rescaled to [0, 1] with 0 at its best value on the front
   (the ideal point) and 1 at its worst (the nadir); an objective constant over the front is 0
   for every row.
4. The winner is the front row nearest the ideal point (0, ..., 0) in weighted Euclidean
   distance, sqrt(sum_k w_k * d_k**2), with equal weights by default. Ties go to the row best
   in the first objective, then to the earlier row.

5. With baselines (rows the search started from: the space's points_to_evaluate, i.e. the two
   documents' configurations), if some front rows beat every baseline, i.e. dominate each of
   them, the winner is the nearest to the ideal point among those rows only (distances still
   rescaled over the whole front). A search exists to improve on what its user already has; a
   front row worse than a known configuration in one objective is a trade-off against it, not
   an improvement. Without such rows (or baselines) step 4 applies to the whole front.

Rescaling by the front's own range makes the objectives comparable whatever their units, and
the distance to the ideal point favours the knee of the front over its extremes; a weight of 0
ignores an objective, so weights (1, 0) pick the best silhouette on the front. Baselines that
were excluded or have a non-finite objective are ignored.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import pandas as pd

from tune.names import OBJECTIVES  # the single source of the objective names and directions

# Distances this close are a tie: the knee of a symmetric front should not be decided by
# rounding in the last bit.
_TIE_RTOL = 1e-12


def _costs(df: pd.DataFrame, objectives: Mapping[str, str]) -> np.ndarray:
    """Objective values as an [n, k] float array where lower is better in every column."""
    if not objectives:
        raise ValueError("objectives: need at least one")
    columns = []
    for name, direction in objectives.items():
        if direction not in ("min", "max"):
            raise ValueError(
                f"objectives: {name}: direction must be 'min' or 'max', not {direction!r}"
            )
        if name not in df.columns:
            raise KeyError(f"objective column {name!r} not in the frame (has {list(df.columns)})")
        values = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float)
        columns.append(values if direction == "min" else -values)
    return np.column_stack(columns) if len(df) else np.empty((0, len(objectives)))


def pareto_front(df: pd.DataFrame, objectives: Mapping[str, str] = OBJECTIVES) -> pd.DataFrame:
    """The rows no other row dominates, in their original order and with their original index.

    Rows with a NaN, infinite or non-numeric objective are dropped first.
    """
    costs = _costs(df, objectives)
    finite = np.isfinite(costs).all(axis=1)
    costs = costs[finite]
    dominated = dominates(costs, costs).any(axis=0)
    keep = np.flatnonzero(finite)[~dominated]
    return df.iloc[keep]


def dominates(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)]: a[i] is <= b[j] in every cost and < in one (costs: lower is better in
    every column). O(n m k), fine for the few thousand trials a search produces."""
    no_worse = (a[:, None, :] <= b[None, :, :]).all(axis=2)
    better = (a[:, None, :] < b[None, :, :]).any(axis=2)
    return no_worse & better


def beats_all(
    df: pd.DataFrame, baselines: pd.DataFrame, objectives: Mapping[str, str] = OBJECTIVES
) -> pd.Series:
    """Per row of df: True if it dominates every baseline row with finite objectives (and there
    is at least one such baseline). A baseline never beats itself."""
    costs = _costs(df, objectives)
    base = _costs(baselines, objectives)
    base = base[np.isfinite(base).all(axis=1)]
    if not len(base):
        return pd.Series(False, index=df.index)
    return pd.Series(dominates(costs, base).all(axis=1), index=df.index)


def choose_winner(
    front: pd.DataFrame,
    objectives: Mapping[str, str] = OBJECTIVES,
    weights: Mapping[str, float] | None = None,
    among: pd.Series | None = None,
) -> Hashable:
    """The index label of the front row nearest the ideal point (rule in the module docstring).

    `weights` maps every objective to a finite weight >= 0, not all zero. `among`, a boolean
    Series over the front's index, restricts the candidates to its True rows (when it has any);
    the rescaling stays the whole front's. Raises ValueError for an empty front or a non-finite
    objective value.
    """
    if front.empty:
        raise ValueError("no trials to choose from: the Pareto front is empty")
    w = _weights(objectives, weights)
    costs = _costs(front, objectives)
    if not np.isfinite(costs).all():
        raise ValueError("the front has NaN or infinite objective values; use pareto_front first")
    best, worst = costs.min(axis=0), costs.max(axis=0)
    span = worst - best
    # A constant objective is 0 (no gap to the ideal) for every row.
    gaps = np.divide(costs - best, span, out=np.zeros_like(costs), where=span > 0)
    distance = np.sqrt((w * gaps**2).sum(axis=1))
    if among is not None:
        allowed = among.reindex(front.index).fillna(False).to_numpy(dtype=bool)
        if allowed.any():
            distance = np.where(allowed, distance, np.inf)
    tied = np.flatnonzero(distance <= distance.min() * (1 + _TIE_RTOL))
    # Among tied rows: best first objective, then the earliest (argmin returns the first).
    winner = tied[np.argmin(costs[tied, 0])]
    return front.index[winner]


def _weights(objectives: Mapping[str, str], weights: Mapping[str, float] | None) -> np.ndarray:
    if weights is None:
        return np.ones(len(objectives))
    unknown = set(weights) - set(objectives)
    missing = set(objectives) - set(weights)
    if unknown or missing:
        raise ValueError(
            f"weights: need exactly the objectives {list(objectives)}; "
            f"unknown {sorted(unknown)}, missing {sorted(missing)}"
        )
    w = np.array([float(weights[name]) for name in objectives])
    if not np.isfinite(w).all() or (w < 0).any() or not (w > 0).any():
        raise ValueError(f"weights: need finite values >= 0, not all 0; got {dict(weights)}")
    return w


def _mask(name: str, mask: pd.Series, index: pd.Index) -> np.ndarray:
    mask = mask.reindex(index)
    if mask.isna().any():
        raise ValueError(f"{name}: needs a True/False value for every row of df (by index)")
    if not pd.api.types.is_bool_dtype(mask.dtype) and not mask.isin([True, False]).all():
        raise ValueError(f"{name}: values must be True or False")
    return mask.astype(bool).to_numpy()


def select(
    df: pd.DataFrame,
    objectives: Mapping[str, str] = OBJECTIVES,
    weights: Mapping[str, float] | None = None,
    exclude: pd.Series | None = None,
    baseline: pd.Series | None = None,
) -> tuple[pd.DataFrame, Hashable]:
    """Filter, take the Pareto front, choose the winner.

    `exclude` is a boolean Series over df's index; rows where it is True (failed or degenerate
    trials) are dropped first. `baseline`, also a boolean Series over df's index, marks the
    rows the search started from (rule step 5). Returns the front sorted by the first objective,
    best first (ties keep their order), and the winner's index label. Raises ValueError if
    nothing is left.
    """
    base = _mask("baseline", baseline, df.index) if baseline is not None else None
    if exclude is not None:
        keep = ~_mask("exclude", exclude, df.index)
        df = df[keep]
        base = base[keep] if base is not None else None
    front = pareto_front(df, objectives)
    among = beats_all(front, df[base], objectives) if base is not None else None
    winner = choose_winner(front, objectives, weights, among)
    first, direction = next(iter(objectives.items()))
    order = pd.to_numeric(front[first]).to_numpy(dtype=float)
    positions = np.argsort(order if direction == "min" else -order, kind="stable")
    return front.iloc[positions], winner


def hypervolume(points, reference: tuple[float, float]) -> float:
    """Share of the box between `reference` (silhouette, loss) and the ideal point (silhouette
    1, loss 0) that (silhouette, loss) `points` dominate: 0 when none beats the reference in both
    objectives, 1 only for a perfect clustering with zero loss. It only grows as trials are
    added, and grows only when a trial moves the front outward, so its curve over finished trials
    shows whether a search is still improving. Non-finite points are ignored."""
    sil_ref, loss_ref = reference
    box = (1.0 - sil_ref) * loss_ref
    if not box > 0:
        raise ValueError(f"hypervolume: reference {reference} leaves no box below (1, 0)")
    costs = sorted(
        (-float(s), float(l))
        for s, l in points
        if np.isfinite(s) and np.isfinite(l) and s > sil_ref and l < loss_ref
    )
    area, best_loss = 0.0, loss_ref
    for i, (c, loss) in enumerate(costs):
        best_loss = min(best_loss, loss)
        right = costs[i + 1][0] if i + 1 < len(costs) else -sil_ref
        area += (right - c) * (loss_ref - best_loss)
    return area / box
