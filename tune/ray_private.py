"""Everything the project knows of Ray's private state, read from Ray 2.60.0.

Production code and tests reach Ray internals only through this module, so a Ray upgrade means
checking it against the new release: tests/test_ray_private.py fails, naming this module, when
something it relies on is gone. Each use is here because Ray has no public API for it:

- `callbacks` / `set_callbacks`: `Tuner.restore` brings back the RunConfig pickled with the
  experiment, callbacks included, and takes no new ones; `--resume` has to swap the MLflow logger
  bound to the first start's tracking URI and parent run. Read and written through
  `Tuner._local_tuner.get_run_config()`, which returns the RunConfig the Tuner will run with.
- `searcher`: the same for the search algorithm of a restored Tuner: `--resume` tells it where
  the Optuna journal is now (the experiment may have moved). `Tuner._local_tuner._tune_config`.
- `on_autoscaler_events`: whether Ray's autoscaler has declared a resource request infeasible
  ("No available node types can fulfill ..."). Ray publishes that only as a line of the
  autoscaler's log, which the driver receives with `log_to_driver` and hands to the handlers of
  `ray._private.worker.global_worker_stdstream_dispatcher` (data with pid "autoscaler"); no
  public API reports it.
- `saved_trial_statuses`, `searcher_created_all`: whether a resumed search has anything left to
  run, without starting Ray. Tune's own state files in the experiment directory:
  experiment_state-<session>.json (TuneController.CKPT_FILE_TMPL; "trial_data" holds
  [trial JSON state, runtime metadata] pairs) and search_gen_state-<session>.json
  (SearchGenerator.CKPT_FILE_TMPL; a cloudpickled dict despite its name).
- `experiment_start_time`: when a search started (bench/bench_scheduler.py places its trials
  in time from it): `stats.start_time` of the experiment state, the earliest session's when a
  search was resumed.
- `saved_optuna_study`: the Optuna study OptunaSearch pickles (its `__dict__`, key `_ot_study`)
  into searcher-state-<session>.pkl (Searcher.CKPT_FILE_TMPL); the fault tests check what Optuna
  was told.
- `saved_callback_states`, `scheduler`: what `--scheduler mo-asha` relies on to resume (tests
  only): the callbacks' states Tune saves with each experiment checkpoint
  (callback-states-<session>.pkl, CallbackList.CKPT_FILE_TMPL: a cloudpickled dict of callback
  index -> state), and the scheduler a Tuner runs with (`Tuner._local_tuner._tune_config`), which
  for a restored Tuner must be the very object its restored callbacks hold (tuner.pkl pickles
  the TuneConfig and the RunConfig together).
- `dashboard_dependency_error`, `validate_cluster_config`: whether Ray's dashboard can run here,
  and the validator `ray up` applies to a cluster file (tests only).

None of these import Ray at module level: tune/search.py imports this module before Ray starts.
"""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

RAY_VERSION = "2.60.0"  # the release this module was read from

# The state files' names; `*` is the session's start time, so the greatest name is the newest
# session (Ray picks max() too; mtimes do not order them: Ray re-copies the files).
EXPERIMENT_STATE = "experiment_state-*.json"
SEARCH_GEN_STATE = "search_gen_state-*.json"
SEARCHER_STATE = "searcher-state-*.pkl"
CALLBACK_STATES = "callback-states-*.pkl"
# A trial's status in the experiment state once it finished without error (Trial.TERMINATED).
TERMINATED = "TERMINATED"


def callbacks(tuner) -> list:
    """The callbacks the Tuner will run with (for a restored one: those pickled with it)."""
    return list(tuner._local_tuner.get_run_config().callbacks or [])


def set_callbacks(tuner, new: list) -> None:
    """Make `new` the Tuner's callbacks (get_run_config returns the RunConfig itself)."""
    tuner._local_tuner.get_run_config().callbacks = list(new)


def searcher(tuner):
    """The search algorithm the Tuner will run with (for a restored one: the one pickled with it)."""
    return tuner._local_tuner._tune_config.search_alg


# What Ray's autoscaler (v1 and v2) writes when no node type can ever hold a request.
INFEASIBLE = "No available node types can fulfill"


def on_autoscaler_events(callback: Callable[[str], None]) -> Callable[[], None]:
    """Call `callback(line)` for every line of the autoscaler's log the driver receives (on Ray's
    log thread) until the returned function is called. Needs `ray.init(log_to_driver=True)`."""
    from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher

    name = f"clustertune-autoscaler-{id(callback)}"

    def handle(data: dict) -> None:
        if data.get("pid") == "autoscaler":
            for line in data.get("lines", []):
                callback(line)

    dispatcher.add_handler(name, handle)
    return lambda: dispatcher.remove_handler(name)


def _newest(experiment_dir: Path, pattern: str) -> Path | None:
    return max(Path(experiment_dir).glob(pattern), default=None)


def saved_trial_statuses(experiment_dir: Path) -> dict[str, str]:
    """Trial id -> Ray status (e.g. TERMINATED, ERROR) in the experiment state Tune saved last,
    which is what a resume restores; {} when there is none. Raises on a file being written."""
    state = _newest(experiment_dir, EXPERIMENT_STATE)
    if state is None:
        return {}
    trials = (json.loads(t[0]) for t in json.loads(state.read_text())["trial_data"])
    return {t["trial_id"]: t["status"] for t in trials}


def searcher_created_all(experiment_dir: Path) -> bool:
    """True when Tune's search generator, as saved last, had created all its trials."""
    state = _newest(experiment_dir, SEARCH_GEN_STATE)
    if state is None:
        return False
    with state.open("rb") as f:
        generator = pickle.load(f)
    return bool(generator["finished"] or generator["counter"] >= generator["total_samples"])


def experiment_start_time(experiment_dir: Path) -> float | None:
    """Unix time at which Tune started the experiment's first session; None without a state."""
    state = min(Path(experiment_dir).glob(EXPERIMENT_STATE), default=None)
    if state is None:
        return None
    return float(json.loads(state.read_text())["stats"]["start_time"])


def saved_optuna_study(experiment_dir: Path):
    """The optuna.Study inside the searcher state Tune saved last (OptunaSearch's)."""
    state = _newest(experiment_dir, SEARCHER_STATE)
    if state is None:
        raise FileNotFoundError(f"no {SEARCHER_STATE} in {experiment_dir}")
    with state.open("rb") as f:
        return pickle.load(f)["_ot_study"]


def saved_callback_states(experiment_dir: Path) -> dict[int, Any]:
    """Callback index -> the state it returned at the experiment checkpoint Tune saved last ({}
    when no callback had a state)."""
    state = _newest(experiment_dir, CALLBACK_STATES)
    if state is None:
        return {}
    with state.open("rb") as f:
        return pickle.load(f)


def scheduler(tuner):
    """The trial scheduler the Tuner will run with (for a restored one: the one pickled with it)."""
    return tuner._local_tuner._tune_config.scheduler


def dashboard_dependency_error() -> ImportError | None:
    """Why Ray's dashboard cannot start in this environment (ray[default] missing), or None."""
    from ray._private.utils import get_dashboard_dependency_error

    return get_dashboard_dependency_error()


def validate_cluster_config(config: dict[str, Any]) -> None:
    """Raise if `ray up` would reject this cluster launcher config (checked offline)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))
