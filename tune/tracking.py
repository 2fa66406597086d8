"""MLflow tracking for a search: one parent run, one nested child run per trial, the champion model.

All writes happen in the driver process: trials report to Ray Tune, and `MLflowTrialLogger` (a Tune
callback) turns each trial's results and final checkpoint into its child run. One writer means the
local sqlite store never sees concurrent writers ("database is locked"), and every result also stays
in Ray's experiment directory, from which `sync_from_results` can (re)log whatever is missing.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from ray.tune import Callback

from mlflow import MlflowClient
from tune import names as N

log = logging.getLogger("clustertune.tracking")

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_STORE = REPO_ROOT / "mlflow" / "store"  # git-ignored
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "ray.trial_id"
SEARCH_TAG = "clustertune.search"
LIBRARIES = ("torch", "torchvision", "ray", "optuna", "mlflow", "scikit-learn", "numpy", "numba")


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or used."""


def default_tracking_uri() -> str:
    """sqlite file under mlflow/store/ (absolute: trial processes run in other directories)."""
    return f"sqlite:///{LOCAL_STORE / 'mlflow.db'}"


def check_tracking_uri(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast (within `timeout_s`) with a one-line TrackingError if the store is unusable."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
                if r.status != 200:
                    raise TrackingError(f"MLflow server {uri} answered HTTP {r.status} on /health")
        except OSError as e:
            raise TrackingError(f"MLflow server {uri} is unreachable: {e}") from None
    elif uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif "://" not in uri:
        raise TrackingError(f"--mlflow-uri {uri!r}: expected http(s)://host:port or sqlite:///path")


def get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if tracking_uri.startswith("sqlite:///"):  # artifacts beside the sqlite file, absolute
        db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        artifact_location = (db.parent / "artifacts" / name).as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)


def redact(text: str) -> str:
    """Hide credentials in URLs (scheme://user:password@host -> scheme://***@host)."""
    return re.sub(r"(://)[^/@\s]+@", r"\1***@", text)


def git_commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"{sha}{'-dirty' if dirty else ''}" if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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


def _retry(fn: Callable[[], Any], what: str, attempts: int = 5) -> Any:
    """Retry transient store errors (a busy sqlite file, a restarting server) with backoff."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - MLflow raises many types for transient failures
            if i == attempts - 1:
                raise
            log.warning("MLflow %s failed (%s); retrying", what, str(e).splitlines()[0][:200])
            time.sleep(0.5 * 2**i)
    return None


class MLflowTrialLogger(Callback):
    """Tune callback: one nested MLflow run per trial, written from the driver.

    A trial's run is found again by its Ray trial id, so a resumed search never duplicates runs.
    If MLflow fails, the search goes on; `pending` lists trials whose run is incomplete.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str) -> None:
        self.client = MlflowClient(tracking_uri)
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.run_ids: dict[str, str] = {}
        self.pending: set[str] = set()

    # -- helpers ----------------------------------------------------------------------------
    def run_id_for(self, trial_id: str, config: Mapping[str, Any], name: str) -> str:
        if trial_id in self.run_ids:
            return self.run_ids[trial_id]
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
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
            params = [Param(k, str(v)) for k, v in sorted(config.items())]
            self.client.log_batch(run_id, params=params)
        self.run_ids[trial_id] = run_id
        return run_id

    def _safely(self, trial_id: str, what: str, fn: Callable[[], Any]) -> None:
        try:
            _retry(fn, what)
        except Exception as e:  # noqa: BLE001 - never let tracking kill the search
            self.pending.add(trial_id)
            log.error(
                "MLflow %s for trial %s failed: %s", what, trial_id, str(e).splitlines()[0][:300]
            )

    # -- Tune hooks -------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._safely(
            trial.trial_id,
            "create run",
            lambda: self.run_id_for(trial.trial_id, trial.config, str(trial)),
        )

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        def log_result() -> None:
            run_id = self.run_id_for(trial.trial_id, trial.config, str(trial))
            log_trial_result(self.client, run_id, result)

        self._safely(trial.trial_id, "log metrics", log_result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._safely(trial.trial_id, "finish run", lambda: self._finish(trial, "FINISHED"))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._safely(trial.trial_id, "finish run", lambda: self._finish(trial, "FAILED"))

    def sync(self, results) -> int:
        """Make sure every trial of a Tune ResultGrid has a complete run; returns how many it fixed.

        Re-logs a trial's whole history (Ray's progress.csv), final tags and artifacts when its run
        is missing or unfinished, e.g. after the tracking server was down during the search.
        """
        fixed = 0
        for r in results:
            metrics = dict(r.metrics or {})
            trial_id = metrics.get("trial_id")
            if not trial_id:
                continue
            run_id = self.run_id_for(trial_id, r.config or {}, Path(r.path).name)
            run = self.client.get_run(run_id)
            if run.info.status in ("FINISHED", "FAILED") and N.STATUS in run.data.tags:
                continue
            history = r.metrics_dataframe
            if history is not None:
                for row in history.to_dict("records"):
                    if N.STATUS not in row or not isinstance(row.get(N.STATUS), str):
                        log_trial_result(
                            self.client, run_id, {k: v for k, v in row.items() if k != N.STATUS}
                        )
            log_trial_result(self.client, run_id, metrics)
            if r.checkpoint is not None and r.error is None:
                with r.checkpoint.as_directory() as d:
                    log_trial_artifacts(self.client, run_id, Path(d))
            failed = r.error is not None or metrics.get(N.STATUS) == "diverged"
            self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")
            self.pending.discard(trial_id)
            fixed += 1
        return fixed

    def _finish(self, trial, status: str) -> None:
        run_id = self.run_id_for(trial.trial_id, trial.config, str(trial))
        checkpoint = trial.checkpoint
        if checkpoint is not None and status == "FINISHED":
            with checkpoint.as_directory() as d:
                log_trial_artifacts(self.client, run_id, Path(d))
        tags = {"ray.trial_status": trial.status}
        if status == "FAILED" and trial.error_file and os.path.exists(trial.error_file):
            tags["error"] = Path(trial.error_file).read_text()[-4000:]
            tags[N.STATUS] = "error"
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        result = trial.last_result or {}
        final_status = (
            "FAILED" if result.get(N.STATUS) == "diverged" or status == "FAILED" else status
        )
        self.client.set_terminated(run_id, status=final_status)
        self.pending.discard(trial.trial_id)


def log_trial_result(client: MlflowClient, run_id: str, result: Mapping[str, Any]) -> None:
    """Per-epoch results as metrics at step=epoch; the final result also sets the trial's tags."""
    step = int(result.get(N.EPOCH, 0) or 0)
    ts = int(time.time() * 1000)
    metrics = [
        Metric(k, v, ts, step) for k, v in sorted(numeric_items(result).items()) if k != N.EPOCH
    ]
    tags = []
    if N.STATUS in result:  # the final report of the trial
        for key in (N.STATUS, N.BEST_CLUSTERER, N.NODE, "hostname", "device", "reason"):
            if key in result:
                tags.append(RunTag(key, str(result[key])[:5000]))
        tags.append(RunTag("node_ip", str(result.get("node_ip", ""))))
        tags.append(RunTag(N.DEGENERATE, "true" if result.get(N.DEGENERATE) else "false"))
    for i in range(0, max(len(metrics), 1), 900):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=metrics[i : i + 900], tags=tags if i == 0 else [])


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
