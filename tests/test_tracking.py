"""MLflowTrialLogger's background writer: per-epoch results that wait for it go out in one request
per trial, none is lost or logged twice (also when a request fails), the final result once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mlflow import MlflowClient
from tune import names as N
from tune.tracking import PARENT_TAG, SEARCH_TAG, TRIAL_TAG, MLflowTrialLogger

EPOCHS = 60
T0 = 1_795_000_000  # a Tune `timestamp` (whole seconds)


class FakeTrial:
    """The attributes of a Ray Tune Trial that the logger's hooks read."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id
        self.config = {"lr": 0.001, "epochs": EPOCHS}
        self.status = "RUNNING"
        self.last_result: dict = {}
        self.checkpoint = None
        self.error_file = None
        self.num_failures = 0

    def __str__(self) -> str:
        return f"trainable_{self.trial_id}"


def epoch_result(epoch: int) -> dict:
    return {
        N.EPOCH: epoch,
        N.TRAIN_LOSS: 1.0 / epoch,
        N.VAL_LOSS: 2.0 / epoch,
        "timestamp": T0 + epoch,
        "training_iteration": epoch,
    }


def final_result() -> dict:
    """At the last epoch, with the eval-mode losses measured after training (other values)."""
    return {
        **{k: v for k, v in epoch_result(EPOCHS).items() if k != N.TRAIN_LOSS},
        N.EVAL_TRAIN_LOSS: 0.5,
        N.VAL_LOSS: 0.75,  # also the objective N.RECON_LOSS: the same key
        N.STATUS: "ok",
        N.SILHOUETTE: 0.25,
        N.BEST_CLUSTERER: "abo",
    }


@pytest.fixture
def store(tmp_path: Path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("writer", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(exp).info.run_id
    return uri, exp, parent


class Recorder:
    """Wraps the logger's client: counts metric requests, can hold run creation or fail once."""

    def __init__(self, logger: MLflowTrialLogger, fail_first_metrics: bool = False) -> None:
        self.client = logger.client
        self.metric_requests = 0
        self.fail_next = fail_first_metrics
        self.release = threading.Event()
        create_run, log_batch = self.client.create_run, self.client.log_batch

        def held_create_run(*a, **k):
            self.release.wait(10)  # results pile up meanwhile, as behind a busy store
            return create_run(*a, **k)

        def counted_log_batch(run_id, metrics=(), **k):
            if metrics:
                if self.fail_next:
                    self.fail_next = False
                    raise ConnectionError("store busy")
                self.metric_requests += 1
            return log_batch(run_id, metrics=metrics, **k)

        self.client.create_run = held_create_run
        self.client.log_batch = counted_log_batch


def with_epoch_logs(every: int) -> list[dict]:
    """The trial's results as the trainable reports them: every `every` epochs, each carrying the
    epochs since the previous report (N.EPOCH_LOG); the final result carries the rest."""
    results, log = [], []
    for epoch in range(1, EPOCHS + 1):
        r = epoch_result(epoch)
        log.append([epoch, r[N.TRAIN_LOSS], r[N.VAL_LOSS]])
        if epoch % every == 0 and epoch < EPOCHS:
            results.append({**r, N.EPOCH_LOG: log})
            log = []
    return [*results, {**final_result(), N.EPOCH_LOG: log}]


def run_trial_through(
    logger: MLflowTrialLogger, rec: Recorder, trial: FakeTrial, every: int | None = None
) -> str:
    """Feed a trial's results to the logger's hooks: one per epoch (every=None), or with logs."""
    logger.on_trial_start(0, [], trial)
    if every is None:
        results = [*(epoch_result(e) for e in range(1, EPOCHS + 1)), final_result()]
    else:
        results = with_epoch_logs(every)
    for result in results:
        logger.on_trial_result(0, [], trial, result)
    logger.on_trial_result(0, [], trial, results[-1])  # Tune may hand over the final twice
    rec.release.set()
    assert logger.close(timeout_s=60)
    return logger.run_ids[trial.trial_id]


def assert_complete(uri: str, run_id: str) -> None:
    client = MlflowClient(uri)
    final = final_result()
    for key, scale, final_key in (
        (N.TRAIN_LOSS, 1.0, N.EVAL_TRAIN_LOSS),  # the final eval-mode loss: a metric of its own
        (N.VAL_LOSS, 2.0, N.VAL_LOSS),
    ):
        history = sorted(
            (m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key)
        )
        per_epoch = history if final_key != key else history[:-1]
        assert [h[:2] for h in per_epoch] == [(e, scale / e) for e in range(1, EPOCHS + 1)]
        finals = client.get_metric_history(run_id, final_key)
        assert [(m.step, m.value) for m in finals][-1] == (EPOCHS, final[final_key]), key
        assert len([m for m in finals if m.value == final[final_key]]) == 1  # the final, once
        assert all(T0 <= h[2] / 1000 <= T0 + EPOCHS for h in history), "Tune's timestamps"
    run = client.get_run(run_id)
    assert run.data.metrics[N.SILHOUETTE] == 0.25
    assert run.data.tags[N.STATUS] == "ok" and run.data.tags[N.BEST_CLUSTERER] == "abo"
    assert len(client.get_metric_history(run_id, N.SILHOUETTE)) == 1


@pytest.mark.parametrize("every", [None, 7], ids=["a-result-per-epoch", "epoch-logs"])
def test_results_waiting_for_the_writer_go_out_in_one_request(store, every):
    uri, exp, parent = store
    logger = MLflowTrialLogger(uri, exp, parent)
    rec = Recorder(logger)
    run_id = run_trial_through(logger, rec, FakeTrial("t1"), every)
    assert_complete(uri, run_id)
    # every result waited behind the held run creation: one request, not one per result
    assert rec.metric_requests == 1
    assert not logger.pending


def test_a_failed_request_loses_and_doubles_nothing(store):
    uri, exp, parent = store
    logger = MLflowTrialLogger(uri, exp, parent)
    rec = Recorder(logger, fail_first_metrics=True)
    run_id = run_trial_through(logger, rec, FakeTrial("t2"), every=7)
    assert_complete(uri, run_id)  # the retry logged every point once
    assert not logger.pending and not logger._waiting


def test_a_run_left_without_params_gets_them_on_resume(store):
    """A driver killed between creating a trial's run and logging its config (two requests) left a
    run with no params; the resumed search's logger finds the run and completes its config."""
    uri, exp, parent = store
    trial = FakeTrial("t3")
    client = MlflowClient(uri)
    tags = {PARENT_TAG: parent, TRIAL_TAG: trial.trial_id, SEARCH_TAG: parent}
    bare = client.create_run(exp, run_name=str(trial), tags=tags).info.run_id
    client.log_param(bare, "lr", trial.config["lr"])  # one param did get there

    logger = MLflowTrialLogger(uri, exp, parent)  # the resumed driver's
    run_id = run_trial_through(logger, Recorder(logger), trial, every=7)
    assert run_id == bare
    assert client.get_run(run_id).data.params == {k: str(v) for k, v in trial.config.items()}
    assert_complete(uri, run_id)


def test_a_trial_stopped_at_a_rung_keeps_its_rung_values_and_says_so(store):
    """--scheduler mo-asha: the report of an epoch that reached a rung carries the epochs since
    the previous report and the rung values; they reach MLflow at step = that epoch, once. A
    trial the scheduler stops completes with that result as its last: its run is tagged stopped
    at that epoch and that rung."""
    uri, exp, parent = store
    logger = MLflowTrialLogger(uri, exp, parent)
    trial = FakeTrial("t4")
    logger.on_trial_start(0, [], trial)
    rungs = {1: (0.3, 2.0), 3: (0.2, 2.0 / 3)}
    at = {1: 60, 3: 180}  # rungs in seconds, reached at epochs 1 and 3
    for epoch in (1, 3):  # epochs 2 and 3 in one report: the one at rung 3 carries epoch 2 too
        log = [[e, 1.0 / e, 2.0 / e] for e in range(2 if epoch == 3 else 1, epoch + 1)]
        result = {**epoch_result(epoch), N.EPOCH_LOG: log, N.RUNG_AT: at[epoch]}
        result.update(zip(N.RUNG_OBJECTIVES, rungs[epoch], strict=True))
        logger.on_trial_result(0, [], trial, result)
        logger.on_trial_result(0, [], trial, result)  # the same point again: logged once
    trial.last_result = result
    logger.on_trial_complete(0, [], trial)
    assert logger.close(timeout_s=60)

    client = MlflowClient(uri)
    run = client.get_run(logger.run_ids[trial.trial_id])
    for i, key in enumerate(N.RUNG_OBJECTIVES):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert history == [(e, v[i]) for e, v in rungs.items()]
    history = sorted(
        (m.step, m.value) for m in client.get_metric_history(run.info.run_id, N.RUNG_AT)
    )
    assert history == [(1, 60), (3, 180)]  # which rung each epoch's values are for
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, N.TRAIN_LOSS))
    assert steps == [1, 2, 3]
    assert run.data.tags[N.STATUS] == N.Status.STOPPED and run.data.tags[N.STOPPED_AT_EPOCH] == "3"
    assert run.data.tags[N.STOPPED_AT_RUNG] == "180"
    assert run.info.status == "FINISHED"
    assert N.SILHOUETTE not in run.data.metrics


def test_a_new_search_looks_a_run_up_only_after_a_failed_creation(store):
    """Under a parent run this driver created, a trial's run is created without a lookup; a
    creation whose answer was lost (the run did reach the store) is looked up on the retry, so
    the trial still gets one run."""
    uri, exp, parent = store
    logger = MLflowTrialLogger(uri, exp, parent, new_parent=True)
    client = logger.client
    lookups = []
    search_runs, create_run = client.search_runs, client.create_run
    client.search_runs = lambda *a, **k: lookups.append(k) or search_runs(*a, **k)
    lost = {"t6"}

    def create_run_losing_the_answer(*a, **k):
        run = create_run(*a, **k)
        if k["tags"][TRIAL_TAG] in lost:
            lost.clear()
            raise ConnectionError("read timed out")
        return run

    client.create_run = create_run_losing_the_answer
    for trial_id in ("t5", "t6"):
        assert_complete(uri, run_trial_through(logger, Recorder(logger), FakeTrial(trial_id), 7))
        logger.writer = type(logger.writer)(uri)  # run_trial_through closed it
    assert len(lookups) == 1  # t6's retry only
    runs = MlflowClient(uri).search_runs([exp], f"tags.`{PARENT_TAG}` = '{parent}'")
    assert sorted(r.data.tags[TRIAL_TAG] for r in runs) == ["t5", "t6"]

    resumed = MLflowTrialLogger(uri, exp, parent)  # a resumed search's: runs may exist
    client = resumed.client
    client.search_runs = lambda *a, **k: lookups.append(k) or search_runs(*a, **k)
    run_trial_through(resumed, Recorder(resumed), FakeTrial("t5"), 7)
    assert len(lookups) == 2
    assert resumed.run_ids["t5"] == logger.run_ids["t5"]


def test_a_restored_logger_looks_runs_up(store):
    """Tune pickles the callback with the experiment and a resumed search unpickles it: the
    restored logger cannot know which runs exist, so it looks each trial's up."""
    import pickle

    uri, exp, parent = store
    logger = MLflowTrialLogger(uri, exp, parent, new_parent=True)
    assert logger.runs.new_parent
    assert pickle.loads(pickle.dumps(logger)).runs.new_parent is False
