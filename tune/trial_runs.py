"""Which MLflow run is a trial's, and what it still lacks: run identity and de-duplication.

A trial's run is found again by its Ray trial id (tag `ray.trial_id` under the search's parent
run), so a resumed search or a retried trial never duplicates runs. A per-epoch point is known
by (epoch, training loss): training is deterministic for a seed, so epochs re-run from a
checkpoint give the same point and are logged once; the final result is logged once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag

from mlflow import MlflowClient
from tune import names as N

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "ray.trial_id"
SEARCH_TAG = "clustertune.search"


class TrialRuns:
    """The child runs of one search's parent run, and what each one holds already."""

    def __init__(self, client: MlflowClient, experiment_id: str, parent_run_id: str) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.run_ids: dict[str, str] = {}
        # run id -> its per-epoch points as (epoch, train loss), and the runs holding a final result
        self.epochs_logged: dict[str, set[tuple[int, float]]] = {}
        self.final_logged: set[str] = set()

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
            tags = found[0].data.tags
            # its final result is logged (a run the scheduler stopped has none: a trial restarted
            # after a resume may still report one)
            if N.is_final(tags) and tags[N.STATUS] != N.Status.STOPPED:
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

        The final result reports the eval-mode training loss at the last epoch: a point of its own.
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

    def end_run(
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


def result_metrics(result: Mapping[str, Any]) -> list[Metric]:
    """A Tune result's numbers as MLflow metrics at step = epoch, stamped when Tune got them."""
    step = int(result.get(N.EPOCH, 0) or 0)
    reported = result.get("timestamp")  # Tune's, in whole seconds; absent in hand-made results
    ts = int(1000 * (reported if isinstance(reported, int | float) else time.time()))
    items = sorted(numeric_items(result).items())
    return [Metric(k, v, ts, step) for k, v in items if k != N.EPOCH]


def epoch_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-epoch points a Tune result carries: its N.EPOCH_LOG entries, or else the result
    itself unless it is the final one. The rung values of a per-epoch result (a rung epoch is
    always the reported one) go with its own epoch; a final result's are logged with it."""
    log = result.get(N.EPOCH_LOG)
    if isinstance(log, list):
        stamp = {"timestamp": result["timestamp"]} if "timestamp" in result else {}
        rung = {} if N.is_final(result) else _rung_values(result)
        rows = []
        for e, t, v, *cluster in log:  # a fine-tuning epoch also carries its clustering loss
            row = {N.EPOCH: int(e), N.TRAIN_LOSS: _float(t), N.VAL_LOSS: _float(v), **stamp}
            if cluster:
                row[N.CLUSTER_LOSS] = _float(cluster[0])
            if int(e) == result.get(N.EPOCH):
                row.update(rung)
            rows.append(row)
        return rows
    return [] if N.is_final(result) else [dict(result)]


def _rung_values(result: Mapping[str, Any]) -> dict[str, float]:
    return {k: _float(result[k]) for k in N.RUNG_OBJECTIVES if k in result}


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
