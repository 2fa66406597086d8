"""What tune/ray_private.py relies on still holds in the installed Ray.

A failure here means a Ray upgrade changed one of the internals that module reads: fix the module
(and its docstring's Ray version), not the callers.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import optuna
import pytest
import ray
import yaml
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from tune import ray_private
from tune.search import tune_finished

MODULE = "tune/ray_private.py"
REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def relied_on(what: str):
    """Turn any failure inside into one that names the module and both Ray versions."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - whatever Ray changed, report it the same way
        message = (
            f"{MODULE} was written against Ray {ray_private.RAY_VERSION}; with the installed Ray "
            f"{ray.__version__}, {what} no longer holds ({type(e).__name__}: {e}). Read the new "
            f"Ray's source and update {MODULE}."
        )
        raise pytest.fail.Exception(message, pytrace=False) from None


def make_trainable():
    """A trivial trainable, pickled by value (workers cannot import this test module)."""

    def trainable(config):
        tune.report({"y": config["x"]})

    return trainable


class Marker(tune.Callback):
    """Writes its name to `path` when the experiment ends (a file: Tune may run a copy of it)."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name

    def on_experiment_end(self, trials, **info) -> None:
        self.path.write_text(self.name)


def test_the_state_file_names_and_trial_status_are_rays():
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial
    from ray.tune.search import Searcher, SearchGenerator

    with relied_on("the names of Tune's state files"):
        assert TuneController.CKPT_FILE_TMPL.format("*") == ray_private.EXPERIMENT_STATE
        assert SearchGenerator.CKPT_FILE_TMPL.format("*") == ray_private.SEARCH_GEN_STATE
        assert Searcher.CKPT_FILE_TMPL.format("*") == ray_private.SEARCHER_STATE
        assert OptunaSearch.CKPT_FILE_TMPL == Searcher.CKPT_FILE_TMPL
    with relied_on("Trial.TERMINATED"):
        assert Trial.TERMINATED == ray_private.TERMINATED


def test_callbacks_of_a_tuner_are_read_and_replaced(tmp_path):
    """Without starting Ray: a Tuner is built locally (the real swap runs in the test below)."""
    first, second = Marker(tmp_path / "m", "first"), Marker(tmp_path / "m", "second")
    tuner = tune.Tuner(
        make_trainable(), run_config=tune.RunConfig(storage_path=str(tmp_path), callbacks=[first])
    )
    with relied_on("Tuner._local_tuner.get_run_config()"):
        assert ray_private.callbacks(tuner) == [first]
        ray_private.set_callbacks(tuner, [second])
        assert ray_private.callbacks(tuner) == [second]


def test_the_search_algorithm_of_a_tuner_is_read(tmp_path):
    searcher = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0, 1)})
    tuner = tune.Tuner(
        make_trainable(),
        tune_config=tune.TuneConfig(search_alg=searcher, metric="y", mode="max"),
        run_config=tune.RunConfig(storage_path=str(tmp_path)),
    )
    with relied_on("Tuner._local_tuner._tune_config.search_alg"):
        assert ray_private.searcher(tuner) is searcher


def test_autoscaler_events_reach_a_handler_of_the_driver():
    """What the driver's log thread does with the autoscaler's lines, without a cluster: it hands
    each message to the dispatcher's handlers, and the autoscalers write the infeasible line."""
    import inspect

    import ray.autoscaler._private.autoscaler as autoscaler_v1
    import ray.autoscaler.v2.event_logger as autoscaler_v2
    from ray._private import worker

    with relied_on("Worker.print_logs handing messages to global_worker_stdstream_dispatcher"):
        assert "global_worker_stdstream_dispatcher.emit(data)" in inspect.getsource(
            worker.Worker.print_logs
        )
    with relied_on(f"the autoscalers' infeasible-request message ({ray_private.INFEASIBLE!r})"):
        assert ray_private.INFEASIBLE in inspect.getsource(autoscaler_v1)
        assert ray_private.INFEASIBLE in inspect.getsource(autoscaler_v2)
    seen: list[str] = []
    with relied_on("global_worker_stdstream_dispatcher's add_handler/emit/remove_handler"):
        stop = ray_private.on_autoscaler_events(seen.append)
        line = f"{ray_private.INFEASIBLE} resource request {{'CPU': 4.0}}."
        worker.global_worker_stdstream_dispatcher.emit({"pid": "autoscaler", "lines": [line]})
        worker.global_worker_stdstream_dispatcher.emit({"pid": 123, "lines": ["a trial's line"]})
        stop()
        worker.global_worker_stdstream_dispatcher.emit({"pid": "autoscaler", "lines": ["later"]})
        assert seen == [line]


def test_the_searcher_states_are_read_back(tmp_path):
    """SearchGenerator and OptunaSearch write their states as during a search (no Ray needed)."""
    from ray.tune.search import SearchGenerator

    searcher = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0, 1)})
    searcher.set_search_properties("y", "max", {})
    generator = SearchGenerator(searcher)
    with relied_on("the search generator's state (counter, total_samples, finished)"):
        state = generator.get_state()
        generator.set_state({**state, "counter": 1, "total_samples": 2, "finished": False})
        generator.save_to_dir(str(tmp_path), "2000-01-01_00-00-00")
        assert ray_private.searcher_created_all(tmp_path) is False
        generator.set_state({**state, "counter": 2, "total_samples": 2, "finished": False})
        generator.save_to_dir(str(tmp_path), "2000-01-01_00-00-01")  # the newer session wins
        assert ray_private.searcher_created_all(tmp_path) is True
    with relied_on("OptunaSearch's pickled state (key _ot_study)"):
        assert isinstance(ray_private.saved_optuna_study(tmp_path), optuna.Study)


def test_the_helpers_for_the_cluster_tests_exist():
    config = yaml.safe_load((REPO / "cluster.local.yaml").read_text())
    with relied_on("ray.autoscaler._private.util's prepare_config and validate_config"):
        ray_private.validate_cluster_config(config)
    with relied_on("ray._private.utils.get_dashboard_dependency_error"):
        error = ray_private.dashboard_dependency_error()
        assert error is None or isinstance(error, ImportError)


@pytest.mark.slow
def test_a_real_experiment_is_read_and_its_restored_callbacks_replaced(tmp_path):
    """One trial on a local Ray: what --resume relies on."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        trainable = make_trainable()
        marks = tmp_path / "marks"
        marks.mkdir()
        before = int(time.time())  # Tune's start time may be rounded down to the second
        tune.Tuner(
            trainable,
            param_space={"x": tune.uniform(0, 1)},
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(metric="y", mode="max", seed=0), num_samples=1
            ),
            run_config=tune.RunConfig(
                name="exp",
                storage_path=str(tmp_path),
                callbacks=[Marker(marks / "first", "first")],
                verbose=0,
            ),
        ).fit()
        experiment = tmp_path / "exp"
        with relied_on(f"the experiment state ({ray_private.EXPERIMENT_STATE}, trial_data)"):
            statuses = ray_private.saved_trial_statuses(experiment)
            assert list(statuses.values()) == [ray_private.TERMINATED], statuses
        with relied_on(f"the experiment's start time ({ray_private.EXPERIMENT_STATE}, stats)"):
            started_at = ray_private.experiment_start_time(experiment)
            assert started_at is not None and before <= started_at <= time.time(), started_at
        with relied_on(f"the search generator state ({ray_private.SEARCH_GEN_STATE})"):
            assert ray_private.searcher_created_all(experiment)
        with relied_on(f"the searcher state ({ray_private.SEARCHER_STATE})"):
            assert len(ray_private.saved_optuna_study(experiment).trials) == 1
        assert tune_finished(str(experiment))

        restored = tune.Tuner.restore(str(experiment), trainable=trainable)
        with relied_on("the search algorithm of a restored Tuner (pickled with the experiment)"):
            assert isinstance(ray_private.searcher(restored), OptunaSearch)
        with relied_on("the callbacks of a restored Tuner (pickled with the experiment)"):
            names = [type(c).__name__ for c in ray_private.callbacks(restored)]
            assert Marker.__name__ in names, names
            ray_private.set_callbacks(restored, [Marker(marks / "second", "second")])
            restored.fit()
            assert (marks / "second").exists(), "the restored run did not call the new callback"
    finally:
        if started:
            ray.shutdown()


def test_a_restored_tuner_runs_the_scheduler_its_callbacks_hold(tmp_path):
    """--scheduler mo-asha's records come back through a callback's state: the restored Tuner's
    scheduler must be the object that callback holds (no Ray needed: tuner.pkl is written when
    the Tuner is built)."""
    from ray.tune.callback import CallbackList

    from tune.mo_asha import MOASHAScheduler, SchedulerState

    scheduler = MOASHAScheduler()
    tune.Tuner(
        make_trainable(),
        tune_config=tune.TuneConfig(scheduler=scheduler),
        run_config=tune.RunConfig(
            name="exp", storage_path=str(tmp_path), callbacks=[SchedulerState(scheduler)]
        ),
    )
    restored = tune.Tuner.restore(str(tmp_path / "exp"), trainable=make_trainable())
    with relied_on("the scheduler and callbacks of a restored Tuner (one pickle, tuner.pkl)"):
        state = next(c for c in ray_private.callbacks(restored) if isinstance(c, SchedulerState))
        assert ray_private.scheduler(restored) is state.scheduler
    with relied_on(f"the callbacks' saved states ({ray_private.CALLBACK_STATES})"):
        assert CallbackList.CKPT_FILE_TMPL.format("*") == ray_private.CALLBACK_STATES
        scheduler.recorded[1] = {"t1": (0.5, 0.1)}
        CallbackList([SchedulerState(scheduler)]).save_to_dir(str(tmp_path), "2000-01-01_00")
        assert ray_private.saved_callback_states(tmp_path)[0]["recorded"] == scheduler.recorded
