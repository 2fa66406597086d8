"""Which MLflow run is a trial's, and what it still lacks: run identity and de-duplication.

A trial's run is found again by its Ray trial id (tag `ray.trial_id` under the search's parent
run), so a resumed search or a retried trial never duplicates runs. A per-epoch point is known
by (epoch, training loss): training is deterministic for a seed, so epochs re-run from a
checkpoint give the same point and are logged once; the final result is logged once.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import DatasetInput, Metric, Param, RunTag

from mlflow import MlflowClient
from tune import names as N
from tune.config import describe, point_name

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "ray.trial_id"
SEARCH_TAG = "clustertune.search"


class TrialRuns:
    """The child runs of one search's parent run, and what each one holds already."""

    def __init__(
        self,
        client: MlflowClient,
        experiment_id: str,
        parent_run_id: str,
        points: list[tuple[str, dict]] | None = None,
        dataset: DatasetInput | None = None,
        new_parent: bool = False,
    ) -> None:
        """`new_parent`: this process created the parent run just now, so no trial has a run
        under it yet and a trial's first `run_id_for` need not look one up."""
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.points = points or []
        self.dataset = dataset
        self.run_ids: dict[str, str] = {}
        # run id -> its per-epoch points as (epoch, train loss), and the runs holding a final result
        self.epochs_logged: dict[str, set[tuple[int, float]]] = {}
        self.final_logged: set[str] = set()
        # run ids this process created, and those it ended: a run in both holds every write
        # made through it (see written_here)
        self.created: set[str] = set()
        self.ended: set[str] = set()
        self.new_parent = new_parent
        self.creating: set[str] = set()  # trial ids whose run creation was attempted here
        self._creation = threading.Lock()

    def run_id_for(
        self, trial_id: str, config: Mapping[str, Any], name: str, number: int | None = None
    ) -> str:
        """The trial's run, created (named with `number`, see run_name) if it has none."""
        # The writer thread and, after a writer that did not drain, the reconcile both call this:
        # one at a time, or both could create a run for the same trial.
        with self._creation:
            return self._run_id_for(trial_id, config, name, number)

    def _run_id_for(
        self, trial_id: str, config: Mapping[str, Any], name: str, number: int | None
    ) -> str:
        if trial_id in self.run_ids:
            return self.run_ids[trial_id]
        # Under a parent created here, a trial has a run only if a creation was attempted: one
        # that failed may still have reached the store (a lost answer), so that one is looked up.
        found = []
        if not self.new_parent or trial_id in self.creating:
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
            point = point_name(config, self.points)
            self.creating.add(trial_id)
            run = self.client.create_run(
                self.experiment_id,
                run_name=run_name(trial_id, config, point, number),
                tags={
                    PARENT_TAG: self.parent_run_id,
                    TRIAL_TAG: trial_id,
                    SEARCH_TAG: self.parent_run_id,
                    "ray.trial_name": name,
                    N.ROLE: "baseline" if point else "trial",
                    **({"point": point} if point else {}),
                },
            )
            run_id = run.info.run_id
            self.created.add(run_id)
            if self.dataset is not None:
                self.client.log_inputs(run_id, datasets=[self.dataset])
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
        """Log, in one request, those Tune results the run lacks; True if something was logged."""
        seen = self.epochs_logged.setdefault(run_id, set())
        metrics: list[Metric] = []
        tags: list[RunTag] = []
        points, final = set(), False
        for result in results:
            if N.is_final(result) and not (run_id in self.final_logged or final):
                final = True
                tags = result_tags(result)
                metrics += result_metrics(result)
            for row in epoch_rows(result):
                point = _point(row)
                if point not in seen and point not in points:
                    points.add(point)
                    metrics += result_metrics(row)
        if not points and not final:
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
        self.ended.add(run_id)

    def written_here(self, trial_id: str) -> bool:
        """True if this process both created and ended the trial's run. Tune passes a trial
        every result before it ends it, and the writer runs jobs in order, so such a run holds
        every result unless a write failed (the caller knows: StoreWriter.pending)."""
        run_id = self.run_ids.get(trial_id)
        return run_id in self.created and run_id in self.ended

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


def trial_number(experiment_tag: str | None) -> int | None:
    """The trial's number in the order Tune's searcher created it: the leading count of Tune's
    `experiment_tag` ("7_arch=conv,..."), which a Trial and each of its results carry."""
    head = str(experiment_tag or "").split("_", 1)[0]
    return int(head) if head.isdigit() else None


def run_name(
    trial_id: str, config: Mapping[str, Any], point: str = "", number: int | None = None
) -> str:
    """What the runs table shows: '07 conv 16/8 z46 pca8', or 'doc1-mlp (baseline)'."""
    if point:
        return f"{point} (baseline)"
    return f"{number:02d} {describe(config)}" if number is not None else describe(config)


def numeric_items(result: Mapping[str, Any]) -> dict[str, float]:
    """Our numeric entries of a Tune result: the "<split>/..." metrics and the model's size.

    Tune's own bookkeeping has no "/" in its keys; flattened config entries ("config/lr", in
    progress.csv rows) are params, not metrics. The 0/1 flags (degenerate, diverged, partial
    clustering, a clusterer's degenerate) are nearly always 0: the `status`,
    `degenerate_clusterers` and `partial_clustering` tags say the same without a constant chart
    in every run.
    """
    return {
        k: float(v)
        for k, v in result.items()
        if ("/" in k and not k.startswith("config/") or k == "n_parameters")
        and not k.endswith(f"/{N.CLUSTER_DEGENERATE}")
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
    itself unless it is the final one. The rung values of a per-epoch result, with the rung they
    are for (an epoch that reaches a rung is always the reported one), go with its own epoch; a
    final result's are logged with it."""
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
    if N.is_final(result) or not math.isfinite(_float(result.get(N.TRAIN_LOSS))):
        # progress.csv holds the final result as a plain row too (its columns are the first
        # result's), without a training loss: not an epoch's point
        return []
    return [dict(result)]


def _rung_values(result: Mapping[str, Any]) -> dict[str, float]:
    return {k: _float(result[k]) for k in N.RUNG_KEYS if k in result}


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def result_tags(result: Mapping[str, Any]) -> list[RunTag]:
    """The trial's tags, from its final result (none for a per-epoch one)."""
    if not N.is_final(result):
        return []
    values = {
        key: str(result[key])
        for key in (N.STATUS, N.BEST_CLUSTERER, "hostname", "node_ip", "device", "reason")
        if result.get(key) not in (None, "")
    }
    if result.get(N.NODE):  # a Ray node id: 56 hex digits; the tag a person reads is short
        node = str(result[N.NODE])
        values["ray.node_id"] = node
        host = result.get("hostname")
        values[N.NODE] = f"{host} {node[:8]}" if host and host != node else node[:40]
    split = "val" if N.metric("val", N.CLUSTER_DEGENERATE, N.CLUSTERERS[0]) in result else "train"
    collapsed = [
        c for c in N.CLUSTERERS if result.get(N.metric(split, N.CLUSTER_DEGENERATE, c)) == 1.0
    ]
    if collapsed:
        values[N.DEGENERATE_CLUSTERERS] = ",".join(collapsed)
    if result.get(N.PARTIAL) == 1.0:  # the objective's clustering leaves clusters unused
        values[N.PARTIAL] = "true"
    return [RunTag(k, v[:5000]) for k, v in values.items()]


def log_metrics(client: MlflowClient, run_id: str, metrics: list[Metric], tags=()) -> None:
    if not metrics and not tags:
        return
    for i in range(0, max(len(metrics), 1), 900):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=metrics[i : i + 900], tags=list(tags) if i == 0 else [])


def _point(result: Mapping[str, Any]) -> tuple[int, float]:
    """A per-epoch result's identity: (epoch, training loss)."""
    return int(result.get(N.EPOCH, 0) or 0), float(result.get(N.TRAIN_LOSS, math.nan))


def log_trial_artifacts(client: MlflowClient, run_id: str, directory: Path) -> None:
    # One file per request: MLflow writes each to a temporary name and renames it into place, so
    # the UI never shows a half-written file (its log_artifacts copies in place).
    from tune.trial import ARTIFACTS, CONFIG_FILE, RESULT_FILE

    for name in (*ARTIFACTS, CONFIG_FILE, RESULT_FILE):
        if (directory / name).exists():
            client.log_artifact(run_id, str(directory / name))
