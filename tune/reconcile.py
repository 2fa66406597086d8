"""After a search: make MLflow hold exactly what Ray's experiment directory holds.

From each trial's records (progress.csv, final result, checkpoint) `reconcile` logs whatever its
run lacks: the run itself, per-epoch points, the final result, artifacts, the end status; e.g.
after the tracking server was down during the search, or when the driver was killed. Runs of
trials Ray has no record of (started just before a killed driver could save the experiment
state; the resumed search ran them again under new ids) are tagged and soft-deleted, and so are
a trial's second runs (an HTTP client retries a `create_run` whose answer was lost, and the
server may have made both), so each trial has exactly one run. A second reconcile changes
nothing.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from tune import names as N
from tune.mlflow_writer import retry
from tune.trial_runs import TRIAL_TAG, TrialRuns, trial_number

ORPHAN_TAG = "clustertune.orphan"
DUPLICATE_TAG = "clustertune.duplicate_of"  # its value: the id of the trial's run that stays
ORPHAN_WHY = (
    "Ray has no record of this trial: the driver stopped before saving the experiment state, and "
    "the resumed search ran a new trial instead"
)


def reconcile(runs: TrialRuns, results, complete: Collection[str] = ()) -> tuple[int, set[str]]:
    """(how many runs changed, the trial ids seen) for a Tune ResultGrid; raises if MLflow fails.
    Trials in `complete` (their runs known to hold everything) are not read again."""
    changed, trial_ids = 0, set()
    for r in results:
        trial_id = dict(r.metrics or {}).get("trial_id")
        if not trial_id:
            continue
        trial_ids.add(trial_id)
        if trial_id in complete:
            continue
        if retry(lambda r=r, t=trial_id: _complete_run(runs, t, r), "sync"):
            changed += 1
    return changed + retry(lambda: _drop_extra_runs(runs, trial_ids), "orphan check"), trial_ids


def _complete_run(runs: TrialRuns, trial_id: str, r) -> bool:
    metrics = dict(r.metrics or {})
    dirname = Path(r.path).name if r.path else trial_id
    name = dirname[: dirname.find(trial_id) + len(trial_id)] if trial_id in dirname else dirname
    number = trial_number(metrics.get("experiment_tag"))
    run_id = runs.run_id_for(trial_id, r.config or {}, name, number)
    # every per-epoch point and the final result the run lacks, in a few requests
    history = r.metrics_dataframe
    rows = history.to_dict("records") if history is not None else []
    per_epoch = [row for row in rows if not N.is_final(row)]
    changed = runs.log_results(run_id, [*per_epoch, metrics])
    run = runs.client.get_run(run_id)
    if run.info.status in ("FINISHED", "FAILED"):
        return changed
    errored = r.error is not None
    error = str(r.error) if errored else None
    runs.end_run(run_id, r.checkpoint, errored, error, metrics, {})
    return True


def _drop_extra_runs(runs: TrialRuns, trial_ids: set[str]) -> int:
    """Soft-delete the runs of trials Ray has no record of, and every run of a trial other than
    the one reconcile completed; returns how many."""
    dropped = 0
    for run in runs.child_runs():
        trial_id, run_id = run.data.tags.get(TRIAL_TAG), run.info.run_id
        kept = runs.run_ids.get(trial_id)
        if trial_id is not None and trial_id not in trial_ids:
            runs.run_ids.pop(trial_id, None)
            _soft_delete(runs, run, ORPHAN_TAG, ORPHAN_WHY)
        elif kept is not None and kept != run_id:
            _soft_delete(runs, run, DUPLICATE_TAG, kept)
        else:
            continue
        dropped += 1
    return dropped


def _soft_delete(runs: TrialRuns, run, tag: str, value: str) -> None:
    """Tag the run with why it goes, end it if it is running, and delete it (`mlflow gc` purges,
    `restore_run` undoes)."""
    runs.client.set_tag(run.info.run_id, tag, value)
    if run.info.status == "RUNNING":
        runs.client.set_terminated(run.info.run_id, status="KILLED")
    runs.client.delete_run(run.info.run_id)
