"""The search's Optuna sampler as a Ray Tune searcher, and what it is told about failed trials.

Lives in a module of its own, not in tune/search.py: Tune pickles the searcher (with the
define-by-run function) into the experiment directory, and `--resume` can only unpickle what is
importable under a module name (`python tune/search.py` runs as `__main__`).
"""

from __future__ import annotations

import functools
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from tune import names as N
from tune.space import SearchSpace

# Final statuses with no usable objective pair (NaN silhouette and/or NaN loss).
FAILED_STATUSES = (N.Status.DIVERGED, N.Status.DEGENERATE)


def define(trial, space: SearchSpace, seed: int) -> dict[str, Any]:
    """Define-by-run space for OptunaSearch: the YAML space plus the search's seed."""
    return {**space.define_by_run(trial), "seed": seed}


class ClusterSearch(OptunaSearch):
    """OptunaSearch that tells Optuna plainly how a trial ended.

    Ray's OptunaSearch tells every finished trial as COMPLETE with its objective values; Optuna
    then turns NaN values into FAIL with a warning, and rejects a missing value (a trial stopped
    before its final report), leaving that Optuna trial RUNNING forever. Here a diverged or
    degenerate trial is told FAIL, and a trial stopped early (time budget, scheduler) is PRUNED.
    """

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        status = (result or {}).get(N.STATUS)
        if status in FAILED_STATUSES:
            result, error = None, True  # no values + error: Ray tells Optuna FAIL
        elif result is not None and not N.is_final(result):
            result = None  # no final report: Ray tells Optuna PRUNED (FAIL if it errored)
        super().on_trial_complete(trial_id, result=result, error=error)


def make_searcher(space: SearchSpace, seed: int) -> ClusterSearch:
    """Two objectives (names and directions from tune.names), seeded TPE, the space's points first."""
    return ClusterSearch(
        space=functools.partial(define, space=space, seed=seed),
        metric=list(N.OBJECTIVES),
        mode=list(N.OBJECTIVES.values()),
        points_to_evaluate=[dict(p) for p in space.points] or None,
        sampler=optuna.samplers.TPESampler(seed=seed),
    )
