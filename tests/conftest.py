"""The test harness: run real searches, wait for what they do, read back Ray's and MLflow's records.

Every test that runs `python tune/search.py` uses these (pytest puts this folder on sys.path, so
tests import the helpers with `from conftest import ...`; fixtures come by name).

Fault tests are event-driven: `hold` makes trials stop at a chosen epoch (tune/trial.py's test
hook, `CLUSTERTUNE_TEST_HOLD`) until the test releases them, so a fault happens at a known point
of a trial however fast or slow the machine is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mlflow import MlflowClient
from tune import names as N
from tune import ray_private

REPO = Path(__file__).resolve().parent.parent
# Small MLP trials on digits: about a second each once a worker has imported torch.
SMALL_MLP = {
    "arch": "mlp",
    "mlp_depth": 1,
    "mlp_width_1": 16,
    "mlp_activation": "relu",
    "mlp_batch_norm": False,
    "latent_dim": 4,
    "dropout": 0.0,
    "lr": 0.003,
    "weight_decay": 0.0,
    "batch_size": 32,
    "epochs": 3,
    "finetune": "none",
    "reduction": "none",
    "n_clusters": 10,
    "abo_lr": 0.1,
    "abo_epochs": 3,
    "abo_batch_size": 64,
    "abo_temperature": 1.0,
    "abo_init": "farthest",
    "kmeans_n_init": 2,
}
SEARCH = [sys.executable, str(REPO / "tune" / "search.py")]


def run_search(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    """`python tune/search.py ARGS` to the end, output captured. The timeout only catches a hang:
    on a machine busy with other work a smoke search takes many times its usual time."""
    return subprocess.run(
        [*SEARCH, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


class Hold:
    """Trials that reach `epoch` (not their last) wait there while the hold is on, after
    reporting that epoch (with a checkpoint) to Tune. A trial marks that it is waiting with a
    file `held-<trial id>`; a trial retried after a fault does not wait a second time."""

    def __init__(self, directory: Path, epoch: int, gather: int | None = None) -> None:
        """`gather`: also make every trial wait at its start until that many trials have
        started (tune/trial.py's `CLUSTERTUNE_TEST_GATHER`), so that they surely run at once."""
        self.dir, self.epoch, self.gather = directory, epoch, gather
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        env = {"CLUSTERTUNE_TEST_HOLD": f"{self.dir}:{self.epoch}"}
        if self.gather is not None:
            env["CLUSTERTUNE_TEST_GATHER"] = f"{self.dir}:{self.gather}"
        return env

    def on(self) -> None:
        (self.dir / "hold").touch()

    def release(self, *trial_ids: str) -> None:
        """Let the given trials go on, or every trial when none is named (the hold goes off)."""
        for trial_id in trial_ids:
            (self.dir / f"release-{trial_id}").touch()
        if not trial_ids:
            (self.dir / "hold").unlink(missing_ok=True)

    def held(self) -> set[str]:
        """Trial ids waiting at the hold (or that waited there before a release)."""
        return {p.name.removeprefix("held-") for p in self.dir.glob("held-*")}

    def arrived(self) -> set[str]:
        """Trial ids that reached the gather at their start (`gather`)."""
        return {p.name.removeprefix("arrived-") for p in self.dir.glob("arrived-*")}


class Search:
    """`python tune/search.py ARGS` in a new session (its Ray processes join it), output to a log."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            [*SEARCH, *args],
            cwd=REPO,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"search still running after {timeout} s:\n{self.tail()}"
            ) from None

    def kill(self) -> None:
        """SIGKILL the driver's process group, then whatever else of its session survives (Ray's
        workers make process groups of their own)."""
        sid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sid, signal.SIGKILL)
        self.proc.wait(30)
        for _ in range(50):
            left = session_pids(sid)
            if not left:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        raise AssertionError(f"processes of session {sid} survive: {session_pids(sid)}")

    def close(self) -> None:
        if self.proc.poll() is None or session_pids(self.proc.pid):
            self.kill()
        self._out.close()

    def tail(self, n: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-n:]


def session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-s", str(sid), "-o", "pid="], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.fixture
def searches(tmp_path):
    """Start searches with `searches(args, log_name, **env)`; every one is ended afterwards."""
    # Ray's socket paths must stay under 107 bytes: pytest's tmp_path is too deep for RAY_TMPDIR.
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    started: list[Search] = []

    def start(args: list[str], log: str, **env: str) -> Search:
        # A test polls the store while the search runs: both would create a new sqlite store's
        # tables at once (alembic then fails in one of them), so the test creates them first.
        if "--mlflow-uri" in args:
            uri = args[args.index("--mlflow-uri") + 1]
            if uri.startswith("sqlite:///"):
                MlflowClient(uri).search_experiments()
        full_env = {
            **os.environ,
            "RAY_TMPDIR": ray_tmp,
            "PYTHONPATH": str(REPO),
            "RAY_DEDUP_LOGS": "0",
            **env,
        }
        search = Search(args, full_env, tmp_path / log)
        started.append(search)
        return search

    yield start
    for search in started:
        search.close()
    shutil.rmtree(ray_tmp, ignore_errors=True)


def wait_for(condition, timeout: float, what: str, search: Search | None = None, poll=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if search is not None and search.proc.poll() is not None:
            raise AssertionError(f"search ended before {what}:\n{search.tail()}")
        time.sleep(poll)
    raise AssertionError(f"no {what} after {timeout} s" + (f":\n{search.tail()}" if search else ""))


def logged_epochs(
    uri: str, filter_string: str, experiment: str = "faults"
) -> tuple[str, int] | None:
    """(trial id, epochs in MLflow) of the first child run matching `filter_string`, if any."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string) if exp else []
    runs = [r for r in runs if "ray.trial_id" in r.data.tags]
    if not runs:
        return None
    history = client.get_metric_history(runs[0].info.run_id, N.TRAIN_LOSS)
    return runs[0].data.tags["ray.trial_id"], len(history)


def worker_of(trial_id: str, search: Search) -> int | None:
    """The pid of the Ray worker running the trial: Tune runs each trial in its own directory."""
    for pid in session_pids(search.proc.pid):
        with contextlib.suppress(OSError):
            if trial_id in os.readlink(f"/proc/{pid}/cwd"):
                return pid
    return None


# --------------------------------------------------------------------------- Ray's records


def trial_results(experiment_dir: Path) -> dict[str, list[dict]]:
    """trial id -> every result Ray recorded for it (result.json, one JSON object per line)."""
    out = {}
    for f in experiment_dir.glob("*/result.json"):
        rows = []
        for line in f.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line being written
                rows.append(json.loads(line))
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def reported_epochs(rows: list[dict]) -> list[list[float]]:
    """[epoch, train loss, val loss] of every epoch the rows carry (names.EPOCH_LOG), in order."""
    return [entry for r in rows for entry in r.get(N.EPOCH_LOG, [])]


def finished(experiment_dir: Path) -> set[str]:
    """Trials whose final result (with a status) is on disk."""
    return {t for t, rows in trial_results(experiment_dir).items() if N.is_final(rows[-1])}


def saved_statuses(experiment_dir: Path) -> dict[str, str]:
    """trial id -> status, as in the experiment state Tune last saved (what --resume restores)."""
    try:
        return ray_private.saved_trial_statuses(experiment_dir)
    except (json.JSONDecodeError, OSError):  # being written
        return {}


def optuna_study(experiment_dir: Path):
    """The Optuna study inside the searcher state Tune saved last."""
    return ray_private.saved_optuna_study(experiment_dir)


def journal_front(journal: Path, name: str) -> list[tuple[float, ...]]:
    """The objective values of the best trials of Optuna study `name` in a journal file (what
    optuna-dashboard shows), sorted."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=name, storage=storage)
    return sorted(tuple(t.values) for t in study.best_trials)


def search_front(uri: str, name: str, experiment: str, tmp: Path) -> list[tuple[float, ...]]:
    """The objective values of the Pareto front a search logged (its parent run's pareto.csv),
    sorted."""
    import pandas as pd

    parent, _ = search_runs(uri, name, experiment)
    path = MlflowClient(uri).download_artifacts(parent.info.run_id, "pareto.csv", str(tmp))
    front = pd.read_csv(path)
    return sorted(zip(*(front[k] for k in N.OBJECTIVES), strict=True))


# --------------------------------------------------------------------------- MLflow's records


def search_runs(uri: str, name: str, experiment: str = "faults"):
    """(the parent run named `name`, its active child runs) in MLflow `experiment`: the one
    parent/child lookup of every test that reads a search back."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [
        r for r in runs if r.info.run_name == name and "mlflow.parentRunId" not in r.data.tags
    ]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    parent = parents[0]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, kids


def epoch_points(client: MlflowClient, run) -> list[int]:
    """Steps of the per-epoch training-loss points (the final eval-mode loss has its own name)."""
    return sorted(h.step for h in client.get_metric_history(run.info.run_id, N.TRAIN_LOSS))
