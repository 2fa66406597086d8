"""MLflow tracking for a search: one parent run, one nested child run per trial, the champion model.

All writes happen in the driver process: trials report to Ray Tune, and `MLflowTrialLogger` (a Tune
callback) turns each trial's results and final checkpoint into its child run. One writer means the
local sqlite store never sees concurrent writers ("database is locked"), and every result also stays
in Ray's experiment directory, from which `MLflowTrialLogger.sync` (re)logs whatever is missing.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import queue
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from ray.tune import Callback

from mlflow import MlflowClient
from tune import names as N
from tune.provenance import git_commit
from tune.store import (  # noqa: F401 - the store helpers, also importable from here
    LOCAL_STORE,
    TrackingError,
    check_tracking_uri,
    default_tracking_uri,
    error_line,
    fail_fast_http,
    prepare_store,
    redact,
    store_is_up,
)

log = logging.getLogger("clustertune.tracking")

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "ray.trial_id"
SEARCH_TAG = "clustertune.search"
LIBRARIES = ("torch", "torchvision", "ray", "optuna", "mlflow", "scikit-learn", "numpy", "numba")


def get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if tracking_uri.startswith("sqlite:///"):  # artifacts beside the sqlite file, absolute
        db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        artifact_location = (db.parent / "artifacts" / name).as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            out[lib] = "absent"
    return out


def numeric_items(result: Mapping[str, Any]) -> dict[str, float]:
    """Our numeric entries of a Tune result: "<split>/..." metrics and a few flags.

    Tune's own bookkeeping has no "/" in its keys; flattened config entries ("config/lr", in
    progress.csv rows) are params, not metrics.
    """
    extra = (N.DEGENERATE, N.DIVERGED, "n_parameters")
    return {
        k: float(v)
        for k, v in result.items()
        if ("/" in k and not k.startswith("config/") or k in extra)
        and isinstance(v, int | float)
        and not isinstance(v, bool)
    }


def _retry(fn: Callable[[], Any], what: str, attempts: int = 3) -> Any:
    """Retry transient store errors (a busy sqlite file, a restarting server) with backoff."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - MLflow raises many types for transient failures
            if i == attempts - 1:
                raise
            log.warning("MLflow %s failed (%s); retrying", what, error_line(e))
            time.sleep(0.5 * 2**i)
    return None


# After a failed MLflow call, the logger leaves the store alone this long, then probes it (/health)
# before calling it again: against a dead or black-holed server each call costs seconds.
OFFLINE_COOLDOWN_S = 30.0
ORPHAN_TAG = "clustertune.orphan"


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
        )


class MLflowTrialLogger(Callback):
    """Tune callback: one nested MLflow run per trial, written from the driver.

    Tune calls the hooks on the driver's event loop, which must never wait on MLflow (a trial's
    `tune.report` waits until the driver takes its result), so the hooks only queue the work and
    one background thread does the writing, in order. Per-epoch results waiting for the writer go
    out in one request per trial, so it keeps up however short the epochs (one request per epoch
    fell ~50 s behind two trials of ~75 ms epochs on 2 cores). A trial's run is found again by its
    Ray trial id, so a resumed search or a retried trial never duplicates runs, and a result Ray reports
    twice (a trial re-running epochs after a restore) is logged once. If MLflow fails, the search
    goes on: the logger leaves the store alone for `cooldown_s`, lists the trials it skipped in
    `pending`, and `sync` fills every gap afterwards from Ray's experiment directory.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        cooldown_s: float = OFFLINE_COOLDOWN_S,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.cooldown_s = cooldown_s
        # MLflow's HTTP client retries by itself; a sqlite store can be busy for a moment
        self.attempts = 1 if tracking_uri.startswith(("http://", "https://")) else 3
        self._reset()

    def _reset(self) -> None:
        self.client = MlflowClient(self.tracking_uri)
        self.run_ids: dict[str, str] = {}
        # run id -> its per-epoch points as (epoch, train loss), and the runs holding a final result
        self.epochs_logged: dict[str, set[tuple[int, float]]] = {}
        self.final_logged: set[str] = set()
        self.pending: set[str] = set()  # trials whose run may miss something
        self.offline_until: float | None = None  # monotonic time; None while the store works
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._waiting: dict[str, list[dict]] = {}  # trial id -> results not yet taken by the writer

    # Tune pickles its run config (with this callback) into the experiment directory.
    def __getstate__(self) -> dict:
        return {k: self.__dict__[k] for k in ("tracking_uri", "experiment_id", "parent_run_id")} | {
            "cooldown_s": self.cooldown_s,
            "attempts": self.attempts,
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    # -- the writer thread ------------------------------------------------------------------
    def _submit(self, trial_id: str, what: str, fn: Callable[[], Any]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._write, name="mlflow-writer", daemon=True)
            self._thread.start()
        self._queue.put((trial_id, what, fn))

    def _write(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._safely(*item)
            finally:
                self._queue.task_done()

    def close(self, timeout_s: float = 120.0) -> bool:
        """Let the writer finish what is queued (at most `timeout_s`); True if it did."""
        if self._thread is None:
            return True
        self._queue.put(None)
        self._thread.join(timeout_s)
        done = not self._thread.is_alive()
        self._thread = None if done else self._thread
        return done

    def _online(self) -> bool:
        """False while cooling down after a failure; then one cheap probe decides."""
        if self.offline_until is None:
            return True
        if time.monotonic() < self.offline_until:
            return False
        if store_is_up(self.tracking_uri):
            log.warning("MLflow store %s is back; logging again", redact(self.tracking_uri))
            self.offline_until = None
            return True
        self.offline_until = time.monotonic() + self.cooldown_s
        return False

    def _safely(self, trial_id: str, what: str, fn: Callable[[], Any]) -> None:
        if not self._online():
            self.pending.add(trial_id)
            return
        try:
            _retry(fn, what, self.attempts)
        except Exception as e:  # noqa: BLE001 - never let tracking kill the search
            self.pending.add(trial_id)
            self.offline_until = time.monotonic() + self.cooldown_s
            log.error(
                "MLflow %s for trial %s failed: %s. The search goes on; results stay in Ray's "
                "experiment directory and are logged when the store answers again (or by "
                "--resume)",
                what,
                trial_id,
                error_line(e, 300),
            )

    # -- writing ----------------------------------------------------------------------------
    def run_id_for(self, trial_id: str, config: Mapping[str, Any], name: str) -> str:
        if trial_id in self.run_ids:
            return self.run_ids[trial_id]
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
            max_results=1,
        )
        if found:  # a resumed search or a restarted driver: continue the trial's run
            run_id = found[0].info.run_id
            history = self.client.get_metric_history(run_id, N.TRAIN_LOSS)
            self.epochs_logged[run_id] = {(m.step, m.value) for m in history}
            if N.is_final(found[0].data.tags):  # its final result is logged
                self.final_logged.add(run_id)
            logged = found[0].data.params
        else:
            run = self.client.create_run(
                self.experiment_id,
                run_name=name,
                tags={
                    PARENT_TAG: self.parent_run_id,
                    TRIAL_TAG: trial_id,
                    SEARCH_TAG: self.parent_run_id,
                },
            )
            run_id = run.info.run_id
            self.epochs_logged[run_id] = set()
            logged = {}
        # Run and params are two requests: a driver killed between them leaves a run without
        # its config, which the resumed search completes here (MLflow params are write-once).
        params = [Param(k, str(v)) for k, v in sorted(config.items()) if k not in logged]
        if params:
            self.client.log_batch(run_id, params=params)
        self.run_ids[trial_id] = run_id
        return run_id

    def log_results(self, run_id: str, results: list[Mapping[str, Any]]) -> bool:
        """Log, in one request, those Tune results the run lacks; True if something was logged.

        A per-epoch result is known by (epoch, training loss): training is deterministic for a
        seed, so epochs re-run from a checkpoint give the same point and are skipped, while the
        final result (which reports the eval-mode training loss at the last epoch) is logged once.
        """
        seen = self.epochs_logged.setdefault(run_id, set())
        metrics: list[Metric] = []
        tags: list[RunTag] = []
        points, final = set(), False
        for result in results:
            if N.is_final(result) and not (run_id in self.final_logged or final):
                final = True
                tags = result_tags(result)
                metrics += result_metrics(result)
                # progress.csv may hold the final result as a plain row too (its columns are the
                # first result's): its point counts as logged
                points.add(_point(result))
            for row in epoch_rows(result):
                point = _point(row)
                if point not in seen and point not in points:
                    points.add(point)
                    metrics += result_metrics(row)
        if not points:
            return False
        log_metrics(self.client, run_id, metrics, tags)
        seen |= points
        if final:
            self.final_logged.add(run_id)
        return True

    def _log_waiting(self, t: TrialInfo) -> None:
        """Everything trial `t` reported since the writer last got here (log_metrics splits it into
        requests of log_batch's size)."""
        with self._lock:
            results = self._waiting.pop(t.trial_id, [])
        try:
            self.log_results(self._run_of(t), results)
        except Exception:
            with self._lock:  # back in front of newer ones: a retry or the next result logs them
                self._waiting[t.trial_id] = results + self._waiting.get(t.trial_id, [])
            raise

    def _run_of(self, t: TrialInfo) -> str:
        return self.run_id_for(t.trial_id, t.config, t.name)

    def _finish(self, t: TrialInfo, status: str) -> None:
        errored = status == "FAILED"
        has_file = errored and t.error_file and os.path.exists(t.error_file)
        self._end_run(
            self._run_of(t),
            t.checkpoint,
            errored,
            Path(t.error_file).read_text() if has_file else None,
            t.last_result,
            {"ray.trial_status": t.status, "ray.num_failures": str(t.num_failures)},
        )

    def _end_run(
        self,
        run_id: str,
        checkpoint,
        errored: bool,
        error: str | None,
        result: Mapping[str, Any],
        tags: dict[str, str],
    ) -> None:
        """A trial's artifacts (unless it errored), error text and tags, then its final status:
        FAILED when Ray saw an error or training diverged, else FINISHED."""
        if checkpoint is not None and not errored:
            with checkpoint.as_directory() as d:
                log_trial_artifacts(self.client, run_id, Path(d))
        if error is not None:
            tags = {**tags, "error": error[-4000:], N.STATUS: N.Status.ERROR}
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        failed = errored or result.get(N.STATUS) == N.Status.DIVERGED
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")

    # -- Tune hooks (the driver's event loop: queue and return) -----------------------------
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        t = TrialInfo.of(trial)
        self._submit(t.trial_id, "create run", lambda: self._run_of(t))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        t = TrialInfo.of(trial)
        with self._lock:
            self._waiting.setdefault(t.trial_id, []).append(dict(result))
        # The first of these jobs to run takes every result waiting by then; the rest find none.
        self._submit(t.trial_id, "log metrics", lambda: self._log_waiting(t))

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        t = TrialInfo.of(trial)
        n = str(t.num_failures)
        self._submit(
            t.trial_id,
            "tag retry",
            lambda: self.client.set_tag(self._run_of(t), "ray.num_failures", n),
        )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        t = TrialInfo.of(trial)
        self._submit(t.trial_id, "finish run", lambda: self._finish(t, "FINISHED"))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        t = TrialInfo.of(trial)
        self._submit(t.trial_id, "finish run", lambda: self._finish(t, "FAILED"))

    # -- after the search -------------------------------------------------------------------
    def sync(self, results) -> int:
        """Make every trial of a Tune ResultGrid one complete run; returns how many it changed.

        From Ray's experiment directory (each trial's progress.csv, final result and checkpoint),
        logs whatever a run lacks: the run itself, per-epoch points, the final result, artifacts,
        the end status; e.g. after the tracking server was down during the search, or when the
        driver was killed. Runs of trials Ray has no record of (started just before a killed driver
        could save the experiment state; the resumed search ran them again under new ids) are
        tagged and deleted, so each trial has exactly one run. Raises if MLflow fails.
        """
        self.close()  # the writer's queue first (quick while the store is down: it skips)
        if not store_is_up(self.tracking_uri, timeout_s=5.0):  # no retries against a dead server
            raise TrackingError(f"MLflow store {redact(self.tracking_uri)} does not answer")
        self.offline_until = None
        changed, trial_ids = 0, set()
        for r in results:
            metrics = dict(r.metrics or {})
            trial_id = metrics.get("trial_id")
            if not trial_id:
                continue
            trial_ids.add(trial_id)
            if _retry(lambda r=r, t=trial_id: self._complete_run(t, r), "sync"):
                changed += 1
            self.pending.discard(trial_id)
        return changed + _retry(lambda: self._drop_orphans(trial_ids), "orphan check")

    def _complete_run(self, trial_id: str, r) -> bool:
        metrics = dict(r.metrics or {})
        dirname = Path(r.path).name if r.path else trial_id
        name = dirname[: dirname.find(trial_id) + len(trial_id)] if trial_id in dirname else dirname
        run_id = self.run_id_for(trial_id, r.config or {}, name)
        # every per-epoch point and the final result the run lacks, in a few requests
        history = r.metrics_dataframe
        rows = history.to_dict("records") if history is not None else []
        per_epoch = [row for row in rows if not N.is_final(row)]
        changed = self.log_results(run_id, [*per_epoch, metrics])
        run = self.client.get_run(run_id)
        if run.info.status in ("FINISHED", "FAILED"):
            return changed
        errored = r.error is not None
        error = str(r.error) if errored else None
        self._end_run(run_id, r.checkpoint, errored, error, metrics, {})
        return True

    def _drop_orphans(self, trial_ids: set[str]) -> int:
        dropped = 0
        for run in self.child_runs():
            trial_id = run.data.tags.get(TRIAL_TAG)
            if trial_id is None or trial_id in trial_ids:
                continue
            run_id = run.info.run_id
            self.client.set_tag(
                run_id,
                ORPHAN_TAG,
                "Ray has no record of this trial: the driver stopped before saving the experiment "
                "state, and the resumed search ran a new trial instead",
            )
            if run.info.status == "RUNNING":
                self.client.set_terminated(run_id, status="KILLED")
            self.client.delete_run(run_id)  # soft delete: `mlflow gc` purges, restore_run undoes
            self.run_ids.pop(trial_id, None)
            dropped += 1
        return dropped

    def child_runs(self) -> list:
        """Every active child run of this search (all pages)."""
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
                max_results=1000,
                page_token=token,
            )
            runs += list(page)
            token = page.token
            if not token:
                return runs


def result_metrics(result: Mapping[str, Any]) -> list[Metric]:
    """A Tune result's numbers as MLflow metrics at step = epoch, stamped when Tune got them."""
    step = int(result.get(N.EPOCH, 0) or 0)
    reported = result.get("timestamp")  # Tune's, in whole seconds; absent in hand-made results
    ts = int(1000 * (reported if isinstance(reported, int | float) else time.time()))
    items = sorted(numeric_items(result).items())
    return [Metric(k, v, ts, step) for k, v in items if k != N.EPOCH]


def epoch_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-epoch points a Tune result carries: its N.EPOCH_LOG entries, or else the result
    itself unless it is the final one."""
    log = result.get(N.EPOCH_LOG)
    if isinstance(log, list):
        stamp = {"timestamp": result["timestamp"]} if "timestamp" in result else {}
        rows = []
        for e, t, v, *cluster in log:  # a fine-tuning epoch also carries its clustering loss
            row = {N.EPOCH: int(e), N.TRAIN_LOSS: _float(t), N.VAL_LOSS: _float(v), **stamp}
            if cluster:
                row[N.CLUSTER_LOSS] = _float(cluster[0])
            rows.append(row)
        return rows
    return [] if N.is_final(result) else [dict(result)]


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def result_tags(result: Mapping[str, Any]) -> list[RunTag]:
    """The trial's tags, from its final result (none for a per-epoch one)."""
    if not N.is_final(result):
        return []
    tags = [
        RunTag(key, str(result[key])[:5000])
        for key in (N.STATUS, N.BEST_CLUSTERER, N.NODE, "hostname", "device", "reason")
        if key in result
    ]
    tags.append(RunTag("node_ip", str(result.get("node_ip", ""))))
    tags.append(RunTag(N.DEGENERATE, "true" if result.get(N.DEGENERATE) else "false"))
    split = "val" if N.metric("val", N.CLUSTER_DEGENERATE, N.CLUSTERERS[0]) in result else "train"
    collapsed = [
        c for c in N.CLUSTERERS if result.get(N.metric(split, N.CLUSTER_DEGENERATE, c)) == 1.0
    ]
    tags.append(RunTag(N.DEGENERATE_CLUSTERERS, ",".join(collapsed)))
    return tags


def log_metrics(client: MlflowClient, run_id: str, metrics: list[Metric], tags=()) -> None:
    if not metrics and not tags:
        return
    for i in range(0, max(len(metrics), 1), 900):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=metrics[i : i + 900], tags=list(tags) if i == 0 else [])


def _point(result: Mapping[str, Any]) -> tuple[int, float]:
    """A per-epoch result's identity: (epoch, training loss)."""
    return int(result.get(N.EPOCH, 0) or 0), float(result.get(N.TRAIN_LOSS, math.nan))


def log_trial_artifacts(client: MlflowClient, run_id: str, directory: Path) -> None:
    from tune.trial import ARTIFACTS, CONFIG_FILE, RESULT_FILE

    for name in (*ARTIFACTS, CONFIG_FILE, RESULT_FILE):
        if (directory / name).exists():
            client.log_artifact(run_id, str(directory / name))


def start_search_run(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    params: Mapping[str, Any],
    space_file: Path,
    argv: Iterable[str] | None = None,
) -> str:
    """The parent run: command line, commit, space file, dataset and library versions."""
    argv = list(sys.argv if argv is None else argv)
    tags = {
        "mlflow.runName": name,
        "command": redact(shlex.join([Path(sys.executable).name, *argv])),
        "mlflow.source.git.commit": git_commit(),
        "mlflow.source.name": "tune/search.py",
        SEARCH_TAG: name,
        "host": platform.node(),
    }
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    all_params = {**params, **{f"version.{k}": v for k, v in library_versions().items()}}
    client.log_batch(
        run_id, params=[Param(k, str(v)[:6000]) for k, v in sorted(all_params.items())]
    )
    client.log_artifact(run_id, str(space_file), artifact_path="space")
    return run_id


def find_search_run(client: MlflowClient, experiment_id: str, name: str) -> str | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{SEARCH_TAG}` = '{name}' and tags.`mlflow.runName` = '{name}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None
