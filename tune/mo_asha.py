"""Multi-objective asynchronous successive halving (`--scheduler mo-asha`): stop trials early on
both objectives.

Rungs are at grace_period * eta**k (1, 3, 9, 27, ... by default) of the scheduler's time_attr:
epochs, counted over the whole trial (fine-tuning's epochs continue pre-training's, so rungs fall
in either stage), or seconds since the trial started (on the trial's own clock,
names.TIME_TOTAL). A rung beyond a trial's end is simply never reached. At a rung the trial
reports its rung values (names.RUNG_OBJECTIVES, tune/rungs.py: silhouette up, reconstruction loss
down) with the rung they are for (names.RUNG_AT). Counted in seconds, rungs weigh a trial's cost:
a cheap trial (whose training ends before the first rung) is never stopped, since stopping it
saves little, and a costly one is ranked after the same spend as the others, whatever its epochs
cost.

The rule is Ray's ASHA (ray/tune/schedulers/async_hyperband.py) on ranks instead of values. ASHA
decides when a trial reaches a rung, from the trials recorded there before it, and never waits for
a full rung: the first trial at a rung continues; any later one stops if its value is below the
(1 - 1/eta) quantile of the values recorded before it (so the second trial at a rung already
stops if it is worse than the first). Here a trial's value is its place in the crowded order of
NSGA-II over the trials at the rung, itself included: first by non-dominated front (front 1 is
the trials no other one dominates, front 2 those only front 1 dominates, ...), then, inside a
front, by larger crowding distance (the boundary points of a front have an infinite one). With m
trials recorded before it, a trial continues if at most (m - 1) / eta of them are strictly ahead
of it in that order: ASHA's quantile position, in ranks (ASHA interpolates between values, so
where (m - 1) / eta is not a whole number this cut is a little stricter). Ties go to the trial,
as in ASHA (equal rung values get equal crowding distances), and crowding distance (not
hypervolume contribution) breaks ties inside a front, because it needs no reference point and
keeps the spread of a front rather than its knee. Only a result carrying rung values is ranked,
at the rung it names: the trainable reports each rung on its own, at the rung epoch itself or,
in seconds, at the first epoch ending past it (ASHA takes the first result past a rung).

A space can name config keys to rank within (`scheduler: {..., rank_within: [finetune]}`): a
trial is then ranked only against the trials at its rung with the same values of those keys.
The rung values are measured on the model as it is at the rung, and for most trials every rung
comes before the fine-tuning stage, which moves the final silhouette by its own method's amount
(IDEC raises it, bench/RESULTS.md): ranked together, a trial that is still to be fine-tuned is
stopped by one that will not be, whatever it would have reached.

Every trial's rung values are recorded, also those of trials it stops, as ASHA does. A trial
with a NaN or infinite rung value is stopped and not recorded (it cannot be ranked). The trials
of the space's points_to_evaluate (the documents' configurations, recognised by their config as
tune/report.py does) are never stopped, but their values count in the ranking.

The records are saved with Tune's experiment state through `SchedulerState` (a Tune callback:
Tune 2.60 saves no scheduler state of its own, only the scheduler as it was built, in tuner.pkl),
so `--resume` decides on what the search had seen: a trial it restarts is not ranked again at
a rung it was ranked at, and one the scheduler had stopped is stopped at its first result.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tune import names as N
from tune.selection import dominates

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

GRACE_PERIOD = 1
REDUCTION_FACTOR = 3
# Rungs are listed up to this epoch or second: beyond any trial's, and a rung never reached costs
# nothing.
MAX_RUNG = 10**6


def rung_milestones(
    grace_period: int = GRACE_PERIOD,
    reduction_factor: int = REDUCTION_FACTOR,
    max_t: int = MAX_RUNG,
) -> tuple[int, ...]:
    """grace_period * reduction_factor**k for k = 0, 1, ... up to max_t."""
    if grace_period < 1 or reduction_factor < 2 or max_t < grace_period:
        raise ValueError(
            f"rungs need grace_period >= 1, reduction_factor >= 2 and max_t >= grace_period; got "
            f"{grace_period}, {reduction_factor}, {max_t}"
        )
    rungs = [grace_period]
    while rungs[-1] * reduction_factor <= max_t:
        rungs.append(rungs[-1] * reduction_factor)
    return tuple(rungs)


def rung_costs(values: Sequence[float]) -> np.ndarray:
    """Rung values in names.RUNG_OBJECTIVES order as costs: lower is better in both."""
    signs = [1.0 if mode == "min" else -1.0 for mode in N.RUNG_OBJECTIVES.values()]
    return np.asarray(values, dtype=float) * signs


def nondominated_fronts(costs: np.ndarray) -> list[np.ndarray]:
    """Row indices of `costs` [n, k] (lower is better) by non-dominated front, best front first:
    one dominance matrix, then each front peeled off by counting who still dominates whom."""
    beats = dominates(costs, costs)  # [i, j]: row i dominates row j
    dominated_by = beats.sum(axis=0)
    fronts = []
    front = np.flatnonzero(dominated_by == 0)
    while front.size:
        fronts.append(front)
        dominated_by -= beats[front].sum(axis=0)
        dominated_by[front] = -1  # peeled: never counted again
        front = np.flatnonzero(dominated_by == 0)
    return fronts


def crowding_distance(costs: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each row of one front `costs` [n, k]: per objective, the gap
    between its two neighbours divided by the front's range, summed; the extremes are infinite.
    Equal rows get the same distance (that of their one point), so neither is ahead of the other."""
    unique, inverse = np.unique(costs, axis=0, return_inverse=True)
    n, k = unique.shape
    if n <= 2:
        return np.full(len(costs), math.inf)
    distance = np.zeros(n)
    for j in range(k):
        order = np.argsort(unique[:, j], kind="stable")
        column = unique[order, j]
        distance[order[[0, -1]]] = math.inf
        span = column[-1] - column[0]
        if span > 0:
            distance[order[1:-1]] += (column[2:] - column[:-2]) / span
    return distance[inverse.ravel()]


def ahead_of(candidate: np.ndarray, others: np.ndarray) -> int:
    """How many rows of `others` [m, k] are strictly ahead of `candidate` [k] in the crowded order
    of them all (costs: lower is better)."""
    costs = np.vstack([candidate[None, :], others])
    ahead = 0
    for front in nondominated_fronts(costs):
        if 0 in front:
            distance = crowding_distance(costs[front])
            return ahead + int((distance > distance[front == 0][0]).sum())
        ahead += len(front)
    raise AssertionError("every row is on some front")


def continues(candidate: np.ndarray, others: np.ndarray, reduction_factor: float) -> bool:
    """Whether a trial with rung costs `candidate` continues past a rung where `others` [m, k]
    were recorded before it: the first always does, any other if at most (m - 1) / eta of them
    are ahead of it (module docstring)."""
    m = len(others)
    return m == 0 or ahead_of(candidate, others) <= (m - 1) / reduction_factor


class MOASHAScheduler(FIFOScheduler):
    """Asynchronous successive halving on both rung objectives (module docstring). Give the
    trainable `Rungs(scheduler.rungs, time_attr)` (tune/rungs.py: where it must report its rung
    values) and add `SchedulerState(scheduler)` to the run's callbacks."""

    time_attr: str = N.EPOCH  # what a scheduler pickled before rungs could count seconds had

    def __init__(
        self,
        points: Sequence[Mapping[str, Any]] = (),
        grace_period: int = GRACE_PERIOD,
        reduction_factor: int = REDUCTION_FACTOR,
        rank_within: Sequence[str] = (),
        time_attr: str = N.EPOCH,
    ) -> None:
        super().__init__()
        if time_attr not in N.TIME_ATTRS:
            raise ValueError(f"time_attr must be one of {N.TIME_ATTRS}, got {time_attr!r}")
        self.time_attr = time_attr
        self.points = [dict(p) for p in points]
        self.rank_within = tuple(rank_within)
        self.reduction_factor = reduction_factor
        self.rungs = rung_milestones(grace_period, reduction_factor)
        # rung -> trial id -> rung values (names.RUNG_OBJECTIVES order) of every trial
        # ranked there; trial id -> the rung the scheduler stopped it at; trial id -> its
        # group (its values of rank_within's keys)
        self.recorded: dict[int, dict[str, tuple[float, ...]]] = {}
        self.stopped: dict[str, int] = {}
        self.groups: dict[str, tuple[Any, ...]] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        # Its objectives are names.RUNG_OBJECTIVES: Tune's one metric and mode do not apply.
        return metric is None and mode is None

    def is_point(self, config: Mapping[str, Any]) -> bool:
        """Whether `config` is one of the space's points_to_evaluate (with the search's keys)."""
        return any(all(config.get(k) == v for k, v in p.items()) for p in self.points)

    def group(self, config: Mapping[str, Any]) -> tuple[Any, ...]:
        """The trials a trial with `config` is ranked against share this key."""
        return tuple(config.get(k) for k in self.rank_within)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        if trial.trial_id in self.stopped:  # restarted by a resume that lost the stop: again
            return TrialScheduler.STOP
        # A final result has nothing left to stop; its rung values still count for the others.
        return self._rank(trial, result, can_stop=not N.is_final(result))

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        # Tune hands every result to on_trial_result first, the final one included: this only
        # records a rung result that somehow came this way alone (recording twice is a no-op).
        if result and trial.trial_id not in self.stopped:
            self._rank(trial, result, can_stop=False)

    def _rank(self, trial: Trial, result: Mapping[str, Any], can_stop: bool) -> str:
        """Record a rung result and decide (module docstring); CONTINUE for any other result."""
        at = result.get(N.RUNG_AT)
        if at not in self.rungs or not all(k in result for k in N.RUNG_OBJECTIVES):
            return TrialScheduler.CONTINUE
        recorded = self.recorded.setdefault(int(at), {})
        if trial.trial_id in recorded:  # decided when it first got here
            return TrialScheduler.CONTINUE
        values = tuple(float(result[k]) for k in N.RUNG_OBJECTIVES)
        finite = all(math.isfinite(v) for v in values)
        group = self.groups.setdefault(trial.trial_id, self.group(trial.config))
        keep = not can_stop or self.is_point(trial.config)
        if not keep and finite:
            peers = [v for t, v in recorded.items() if self.groups.get(t) == group]
            others = np.array([rung_costs(v) for v in peers]).reshape(-1, len(values))
            keep = continues(rung_costs(values), others, self.reduction_factor)
        if finite:
            recorded[trial.trial_id] = values
        if keep:
            return TrialScheduler.CONTINUE
        self.stopped[trial.trial_id] = int(at)
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        seconds = self.time_attr == N.TIME_TOTAL
        counts = ", ".join(
            f"{e} s: {len(r)}" if seconds else f"epoch {e}: {len(r)}"
            for e, r in sorted(self.recorded.items())
        )
        return f"MO-ASHA: stopped {len(self.stopped)}; trials ranked at {counts or 'no rung yet'}"

    # -- state: rung records and stop decisions ------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"recorded": self.recorded, "stopped": self.stopped, "groups": self.groups}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.recorded = {int(e): dict(r) for e, r in state["recorded"].items()}
        self.stopped = dict(state["stopped"])
        self.groups = dict(state.get("groups", {}))

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))


class SchedulerState(Callback):
    """Saves a MOASHAScheduler's records with each of Tune's experiment checkpoints and restores
    them on resume (Tune saves callbacks' states, not the scheduler's).

    Tune pickles the scheduler and the run's callbacks together in tuner.pkl, so a restored
    SchedulerState still holds the very scheduler the restored search runs with."""

    def __init__(self, scheduler: MOASHAScheduler) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any]:
        return self.scheduler.state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler.set_state(state)
