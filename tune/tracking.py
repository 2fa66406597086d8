"""MLflow tracking for a search: the parent run, and the Tune callback that logs each trial.

All writes happen in the driver process: trials report to Ray Tune, and `MLflowTrialLogger` (a Tune
callback) turns each trial's results and final checkpoint into its child run. One writer means the
local sqlite store never sees concurrent writers ("database is locked"), and every result also stays
in Ray's experiment directory, from which `MLflowTrialLogger.sync` (re)logs whatever is missing.

The parts, each answering one question:
  tune/mlflow_writer.py  how writes reach a slow or dead store without Tune waiting (thread, back-off)
  tune/trial_runs.py     which run is a trial's, and what it still lacks (identity, de-duplication)
  tune/reconcile.py      after the search, what MLflow must get from Ray's records
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Param
from ray.tune import Callback

from mlflow import MlflowClient
from tune import names as N
from tune.mlflow_writer import OFFLINE_COOLDOWN_S, StoreWriter
from tune.provenance import git_commit
from tune.reconcile import ORPHAN_TAG, reconcile
from tune.selection import hypervolume
from tune.store import TrackingError, redact, store_is_up
from tune.trial_runs import PARENT_TAG, SEARCH_TAG, TRIAL_TAG, TrialRuns, trial_number

__all__ = ["MLflowTrialLogger", "ORPHAN_TAG", "PARENT_TAG", "SEARCH_TAG", "TRIAL_TAG"]

LIBRARIES = ("torch", "torchvision", "ray", "optuna", "mlflow", "scikit-learn", "numpy", "numba")


# MLflow 3's UI opens an experiment on its GenAI pages unless the experiment says it is about
# training models (the value MLflow's UI itself sets when a user picks "machine learning").
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        for key, value in EXPERIMENT_KIND.items():
            if key not in exp.tags:
                client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    artifact_location = None
    if tracking_uri.startswith("sqlite:///"):  # artifacts beside the sqlite file, absolute
        db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        artifact_location = (db.parent / "artifacts" / name).as_uri()
    return client.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_KIND)


def dataset_input(summary: Mapping[str, Any], digest: str) -> DatasetInput:
    """The search's data as an MLflow dataset input (the runs table's Dataset column)."""
    source = {"uri": str(summary["source"])}
    dataset = Dataset(
        name=str(summary["name"]).rsplit("/", 1)[-1],
        digest=digest,
        source_type="local",
        source=json.dumps(source),
        profile=json.dumps({k: v for k, v in summary.items() if k not in ("name", "source")}),
    )
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "train")])


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            out[lib] = "absent"
    return out


@dataclass(frozen=True)
class TrialInfo:
    """What the logger needs of a Tune Trial, copied when Tune calls the hook (a Trial changes)."""

    trial_id: str
    name: str
    config: dict
    status: str = ""
    last_result: dict = field(default_factory=dict)
    checkpoint: Any = None
    error_file: str | None = None
    num_failures: int = 0
    experiment_tag: str = ""

    @classmethod
    def of(cls, trial) -> TrialInfo:
        return cls(
            trial.trial_id,
            str(trial),
            dict(trial.config),
            trial.status,
            dict(trial.last_result or {}),
            trial.checkpoint,
            trial.error_file,
            trial.num_failures,
            getattr(trial, "experiment_tag", ""),
        )


class MLflowTrialLogger(Callback):
    """Tune callback: one nested MLflow run per trial, written from the driver.

    The hooks only queue work for the StoreWriter's thread (Tune's event loop must never wait on
    MLflow); per-epoch results waiting for the writer go out in one request per trial, so it keeps
    up however short the epochs. If MLflow fails, the search goes on, `pending` lists the trials
    whose runs may miss something, and `sync` fills every gap afterwards from Ray's records.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        cooldown_s: float = OFFLINE_COOLDOWN_S,
        points: list[tuple[str, dict]] | None = None,
        reference: tuple[float, float] | None = None,
        dataset: DatasetInput | None = None,
        new_parent: bool = False,
    ) -> None:
        """`points`: the space's named points (their trials are the baselines), `reference`:
        the hypervolume's (silhouette, loss) reference point, `dataset`: each run's input,
        `new_parent`: the parent run was created by this process (see TrialRuns)."""
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.cooldown_s = cooldown_s
        self.points = list(points or [])
        self.reference = reference
        self.dataset = dataset
        self._reset(new_parent)

    def _reset(self, new_parent: bool = False) -> None:
        self.client = MlflowClient(self.tracking_uri)
        self.runs = TrialRuns(
            self.client,
            self.experiment_id,
            self.parent_run_id,
            self.points,
            self.dataset,
            new_parent,
        )
        self.writer = StoreWriter(self.tracking_uri, self.cooldown_s)
        self._lock = threading.Lock()
        self._waiting: dict[str, list[dict]] = {}  # trial id -> results not yet taken by the writer

    # Tune pickles its run config (with this callback) into the experiment directory.
    def __getstate__(self) -> dict:
        keys = (
            "tracking_uri",
            "experiment_id",
            "parent_run_id",
            "cooldown_s",
            "points",
            "reference",
            "dataset",
        )
        return {k: self.__dict__[k] for k in keys}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"points": [], "reference": None, "dataset": None, **state})
        self._reset()

    @property
    def pending(self) -> set[str]:
        return self.writer.pending

    @property
    def run_ids(self) -> dict[str, str]:
        return self.runs.run_ids

    def close(self, timeout_s: float = 120.0) -> bool:
        """Let the writer finish what is queued (at most `timeout_s`); True if it did."""
        return self.writer.close(timeout_s)

    def _run_of(self, t: TrialInfo) -> str:
        return self.runs.run_id_for(t.trial_id, t.config, t.name, trial_number(t.experiment_tag))

    def _log_waiting(self, t: TrialInfo) -> None:
        """Everything trial `t` reported since the writer last got here (log_metrics splits it into
        requests of log_batch's size)."""
        with self._lock:
            results = self._waiting.pop(t.trial_id, [])
        try:
            self.runs.log_results(self._run_of(t), results)
        except Exception:
            with self._lock:  # back in front of newer ones: a retry or the next result logs them
                self._waiting[t.trial_id] = results + self._waiting.get(t.trial_id, [])
            raise

    def _finish(self, t: TrialInfo, status: str) -> None:
        errored = status == "FAILED"
        has_file = errored and t.error_file and os.path.exists(t.error_file)
        # Tune calls the hook before it marks the trial: its status still says RUNNING
        tags = {
            "ray.trial_status": "ERROR" if errored else "TERMINATED",
            "ray.num_failures": str(t.num_failures),
        }
        if not errored and not N.is_final(t.last_result):
            # Tune completes a running trial before its final report only on a scheduler's STOP
            # (the end of a time budget stops trials without this hook).
            tags[N.STATUS] = N.Status.STOPPED
            tags[N.STOPPED_AT_EPOCH] = str(int(t.last_result.get(N.EPOCH, 0)))
            if N.RUNG_AT in t.last_result:
                tags[N.STOPPED_AT_RUNG] = str(int(t.last_result[N.RUNG_AT]))
        self.runs.end_run(
            self._run_of(t),
            t.checkpoint,
            errored,
            Path(t.error_file).read_text() if has_file else None,
            t.last_result,
            tags,
        )

    # -- Tune hooks (the driver's event loop: queue and return) -----------------------------
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        t = TrialInfo.of(trial)
        self.writer.submit(t.trial_id, "create run", lambda: self._run_of(t))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        t = TrialInfo.of(trial)
        with self._lock:
            self._waiting.setdefault(t.trial_id, []).append(dict(result))
        # The first of these jobs to run takes every result waiting by then; the rest find none.
        self.writer.submit(t.trial_id, "log metrics", lambda: self._log_waiting(t))

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        t = TrialInfo.of(trial)
        n = str(t.num_failures)
        self.writer.submit(
            t.trial_id,
            "tag retry",
            lambda: self.client.set_tag(self._run_of(t), "ray.num_failures", n),
        )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        t = TrialInfo.of(trial)
        self.writer.submit(t.trial_id, "finish run", lambda: self._finish(t, "FINISHED"))
        self._log_hypervolume(trials, trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        t = TrialInfo.of(trial)
        self.writer.submit(t.trial_id, "finish run", lambda: self._finish(t, "FAILED"))
        self._log_hypervolume(trials, trial)

    def _log_hypervolume(self, trials, trial) -> None:
        """The parent's N.HYPERVOLUME after this trial: step = trials ended so far (those of
        before a --resume included: Tune's list holds them), over every ok final result."""
        if self.reference is None:
            return
        # Tune calls the hooks before it marks the trial: its status still says RUNNING
        ended = [t for t in trials if t is trial or t.status in ("TERMINATED", "ERROR")]
        value = hypervolume(ok_objectives(t.last_result for t in ended), self.reference)
        step = len(ended)
        self.writer.submit(
            f"search:{self.parent_run_id}",
            "log hypervolume",
            lambda: self.client.log_metric(self.parent_run_id, N.HYPERVOLUME, value, step=step),
        )

    # -- after the search -------------------------------------------------------------------
    def sync(self, results) -> int:
        """Make every trial of a Tune ResultGrid one complete run (tune/reconcile.py); returns
        how many runs it changed. Raises if MLflow fails."""
        drained = self.close()  # the writer's queue first (quick with the store down: it skips)
        if not store_is_up(self.tracking_uri, timeout_s=5.0):  # no retries against a dead server
            raise TrackingError(f"MLflow store {redact(self.tracking_uri)} does not answer")
        self.writer.offline_until = None
        # Runs this driver wrote whole (every job of theirs ran and none failed) need no re-read;
        # with the queue not drained, no job is known to have run.
        whole = {t for t in self.runs.run_ids if self.runs.written_here(t)} if drained else set()
        complete = whole - self.writer.pending
        changed, trial_ids = reconcile(self.runs, results, complete)
        # the hypervolume points the writer missed are logged with the summary (tune/report.py)
        self.writer.pending -= {*trial_ids, f"search:{self.parent_run_id}"}
        return changed


def ok_objectives(results) -> list[tuple[float, float]]:
    """(silhouette, loss) of the final results with status ok (the hypervolume's points)."""
    out = []
    for r in results:
        if r and r.get(N.STATUS) == N.Status.OK:
            sil, loss = float(r.get(N.SILHOUETTE, math.nan)), float(r.get(N.RECON_LOSS, math.nan))
            out.append((sil, loss))
    return out


def start_search_run(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    params: Mapping[str, Any],
    space_file: Path,
    argv: Iterable[str] | None = None,
    dataset: DatasetInput | None = None,
) -> str:
    """The parent run: command line, commit, space file, dataset and library versions."""
    argv = list(sys.argv if argv is None else argv)
    tags = {
        "mlflow.runName": name,
        "command": redact(shlex.join([Path(sys.executable).name, *argv])),
        "mlflow.source.git.commit": git_commit(),
        "mlflow.source.name": "tune/search.py",
        SEARCH_TAG: name,
        N.ROLE: "search",
        "host": platform.node(),
    }
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    all_params = {**params, **{f"version.{k}": v for k, v in library_versions().items()}}
    client.log_batch(
        run_id, params=[Param(k, str(v)[:6000]) for k, v in sorted(all_params.items())]
    )
    client.log_artifact(run_id, str(space_file), artifact_path="space")
    if dataset is not None:
        client.log_inputs(run_id, datasets=[dataset])
    return run_id


def find_search_run(client: MlflowClient, experiment_id: str, name: str) -> str | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{SEARCH_TAG}` = '{name}' and tags.`mlflow.runName` = '{name}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None
