"""Faults and bad input (issue #5): each fault is made to happen to the real `python tune/search.py`
(tiny budgets on digits), and what the search did about it is read back from Ray's experiment
directory, the Optuna study Tune saved there, and MLflow.

Every search here runs in its own process session with a private RAY_TMPDIR, so a test can kill
the driver together with the local Ray cluster it started, and never touches another Ray.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import (
    REPO,
    SEARCH,
    SMALL_MLP,
    Hold,
    Search,
    epoch_points,
    logged_epochs,
    optuna_study,
    reported_epochs,
    saved_statuses,
    search_runs,
    session_pids,
    trial_results,
    wait_for,
    worker_of,
)

from mlflow import MlflowClient
from tune import names as N
from tune.trial import ARTIFACTS

EXPERIMENT = "faults"

BASE = SMALL_MLP


def points_space(path: Path, points: dict[str, dict]) -> Path:
    """A points-only space: the search runs exactly these configs (BASE with changes), in order."""
    doc = {
        "description": "fault tests",
        "points": [{"name": name, "config": {**BASE, **change}} for name, change in points.items()],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --------------------------------------------------------------------------- MLflow's records


def assert_one_complete_run_per_trial(uri: str, name: str, trials: dict[str, list[dict]]) -> None:
    """Each Ray trial: exactly one active child run, ended, with each epoch's point exactly once."""
    client = MlflowClient(uri)
    parent, kids = search_runs(uri, name)
    by_trial: dict[str, list] = {}
    for run in kids:
        by_trial.setdefault(run.data.tags["ray.trial_id"], []).append(run)
    assert sorted(by_trial) == sorted(trials), "child runs and Ray trials differ"
    for trial_id, runs in by_trial.items():
        assert len(runs) == 1, f"trial {trial_id}: {len(runs)} runs"
        run = runs[0]
        assert run.info.status in ("FINISHED", "FAILED"), (trial_id, run.info.status)
        final = trials[trial_id][-1]
        assert run.data.tags[N.STATUS] == final[N.STATUS]
        epochs = int(run.data.params["epochs"])
        if final[N.STATUS] != "diverged":
            assert epoch_points(client, run) == list(range(1, epochs + 1)), trial_id
            assert run.data.metrics[N.RECON_LOSS] == pytest.approx(final[N.RECON_LOSS])
            assert set(ARTIFACTS) <= {a.path for a in client.list_artifacts(run.info.run_id)}


# --------------------------------------------------------------------------- bad input


def _idx(arr: np.ndarray) -> bytes:
    import struct

    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def idx_dir(directory: Path, corrupt: str | None = None, missing: str | None = None) -> Path:
    """A small, valid 8x8 IDX dataset; `corrupt` truncates one file, `missing` leaves one out."""
    from tune.data import IDX_FILES

    rng = np.random.default_rng(0)
    arrays = (
        rng.integers(0, 256, (60, 8, 8), dtype=np.uint8),
        rng.integers(0, 10, 60, dtype=np.uint8),
        rng.integers(0, 256, (20, 8, 8), dtype=np.uint8),
        rng.integers(0, 10, 20, dtype=np.uint8),
    )
    directory.mkdir(parents=True, exist_ok=True)
    for stem, arr in zip(IDX_FILES, arrays, strict=True):
        if stem != missing:
            raw = _idx(arr)
            (directory / stem).write_bytes(raw[: len(raw) // 2] if stem == corrupt else raw)
    return directory


def _file(path: Path) -> Path:
    path.write_text("not a directory")
    return path


def space_file(tmp: Path, change: dict) -> Path:
    """search_spaces/smoke.yaml with `change` merged into its parameters."""
    doc = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    doc["parameters"].update(change)
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# (arguments, expected pieces of the one line): {tmp} is the test's directory.
BAD_INPUT = {
    "unknown YAML key": (
        lambda t: ["--space", str(space_file(t, {"colour": 3}))],
        ["space.yaml", "parameters.colour", "unknown parameter"],
    ),
    "wrong type": (
        lambda t: [
            "--space",
            str(space_file(t, {"epochs": {"type": "int", "low": "one", "high": 2}})),
        ],
        ["space.yaml", "parameters.epochs.low", "expected an int", "'one'"],
    ),
    "low > high": (
        lambda t: [
            "--space",
            str(space_file(t, {"lr": {"type": "float", "low": 0.1, "high": 0.01}})),
        ],
        ["space.yaml", "parameters.lr", "low (0.1) > high (0.01)"],
    ),
    "empty categorical": (
        lambda t: [
            "--space",
            str(space_file(t, {"batch_size": {"type": "categorical", "choices": []}})),
        ],
        ["space.yaml", "parameters.batch_size.choices", "non-empty list"],
    ),
    "unknown architecture": (
        lambda t: [
            "--space",
            str(space_file(t, {"arch": {"type": "categorical", "choices": ["mlp", "rnn"]}})),
        ],
        ["space.yaml", "parameters.arch.choices[1]", "expected one of mlp, conv", "'rnn'"],
    ),
    "missing space file": (
        lambda t: ["--space", str(t / "nope.yaml")],
        ["nope.yaml", "no such file"],
    ),
    "CLI: not a number": (
        lambda t: ["--num-samples", "six"],
        ["--num-samples", "invalid int value: 'six'"],
    ),
    "CLI: unknown flag": (
        lambda t: ["--epochs", "3"],
        ["unrecognized arguments: --epochs 3"],
    ),
    "CLI: out of range": (lambda t: ["--val-fraction", "1.5"], ["--val-fraction", "[0, 1)", "1.5"]),
    "CLI: negative retries": (lambda t: ["--max-failures", "-1"], ["--max-failures", ">= 0"]),
    "CLI: no grace": (lambda t: ["--grace-period", "0"], ["--grace-period", ">= 1", "got 0"]),
    "missing dataset directory": (
        lambda t: ["--dataset", str(t / "no-such-dir")],
        ["no-such-dir", "no such directory"],
    ),
    "missing dataset file": (
        lambda t: ["--dataset", str(idx_dir(t / "idx", missing="t10k-labels-idx1-ubyte"))],
        ["idx", "missing IDX file(s) t10k-labels-idx1-ubyte"],
    ),
    "corrupt dataset file": (
        lambda t: ["--dataset", str(idx_dir(t / "idx", corrupt="train-images-idx3-ubyte"))],
        ["train-images-idx3-ubyte", "truncated"],
    ),
    "MLflow store under a file": (
        lambda t: ["--mlflow-uri", f"sqlite:///{_file(t / 'notes.txt')}/mlflow.db"],
        ["notes.txt/mlflow.db", "cannot create"],
    ),
    "resume of an unknown search": (
        lambda t: ["--resume", "--name", "never-ran"],
        ["--resume", "never-ran", "no Tune experiment"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_line_and_starts_nothing(case, tmp_path, monkeypatch, capsys):
    """In-process (the CLI's own main()) for speed; test_bad_input_through_the_real_cli runs a few
    of the same cases as real processes."""
    from tune import search

    ray_tmp = tmp_path / "raytmp"
    ray_tmp.mkdir()
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    make_args, pieces = BAD_INPUT[case]
    args = make_args(tmp_path)
    if "--mlflow-uri" not in args:
        args += ["--mlflow-uri", f"sqlite:///{tmp_path}/mlflow/m.db"]
    args += ["--storage-path", str(tmp_path / "ray"), "--experiment", EXPERIMENT, "--smoke"]
    try:
        code = search.main(args)
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for piece in pieces:
        assert piece in lines[0], (piece, lines[0])
    assert out == ""
    # nothing started: no Ray session, no Tune experiment, no MLflow store
    assert not any(ray_tmp.iterdir())
    assert not (tmp_path / "ray").exists() and not (tmp_path / "mlflow").exists()
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()


@pytest.mark.parametrize("case", ["CLI: not a number", "corrupt dataset file"])
def test_bad_input_through_the_real_cli(case, tmp_path):
    make_args, pieces = BAD_INPUT[case]
    ray_tmp = tmp_path / "raytmp"
    ray_tmp.mkdir()
    out = subprocess.run(
        [*SEARCH, *make_args(tmp_path), "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow/m.db"]
        + ["--storage-path", str(tmp_path / "ray")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "RAY_TMPDIR": str(ray_tmp)},
    )
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert all(piece in lines[0] for piece in pieces), lines[0]
    assert not any(ray_tmp.iterdir()) and not (tmp_path / "ray").exists()
    assert not (tmp_path / "mlflow").exists()


# --------------------------------------------------------------------------- MLflow at start


@contextlib.contextmanager
def black_hole():
    """A port that accepts TCP connections (the kernel completes them) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free again once closed: nothing listens there


@pytest.mark.parametrize("kind", ["refused", "black hole"])
def test_unreachable_mlflow_fails_clearly_within_10_s(kind, tmp_path):
    with black_hole() as hole:
        port = hole if kind == "black hole" else _closed_port()
        uri = f"http://ci:s3cret@127.0.0.1:{port}"
        start = time.monotonic()
        out = subprocess.run(
            [*SEARCH, "--smoke", "--mlflow-uri", uri, "--storage-path", str(tmp_path / "ray")],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        elapsed = time.monotonic() - start
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert f"MLflow server http://***@127.0.0.1:{port} is unreachable" in lines[0]
    assert ("timed out" if kind == "black hole" else "refused") in lines[0]
    assert "s3cret" not in out.stderr
    assert elapsed < 10, elapsed
    assert not (tmp_path / "ray").exists()


# --------------------------------------------------------------------------- sync (no Ray)


class _Result:
    """The parts of a Ray Tune Result that MLflowTrialLogger.sync reads."""

    def __init__(self, trial_id: str, epochs: int, path: Path) -> None:
        import pandas as pd

        self.config = {**BASE, "epochs": epochs, "seed": 0}
        rows = [
            {N.EPOCH: e, N.TRAIN_LOSS: 1.0 / e, N.VAL_LOSS: 1.1 / e, "trial_id": trial_id}
            for e in range(1, epochs + 1)
        ]
        self.metrics = {
            **{k: v for k, v in rows[-1].items() if k != N.TRAIN_LOSS},
            N.EVAL_TRAIN_LOSS: 0.05,  # the final result: eval-mode loss after training
            N.SILHOUETTE: 0.3,
            N.STATUS: "ok",
            N.BEST_CLUSTERER: "kmeans",
        }
        # progress.csv has the first result's columns: the final result is a plain row there
        final_row = {k: self.metrics.get(k, float("nan")) for k in rows[-1]}
        self.metrics_dataframe = pd.DataFrame([*rows, final_row])
        self.path = str(path / f"trainable_{trial_id}_1_arch=mlp")
        self.checkpoint = None
        self.error = None


def _search_store(tmp_path: Path) -> tuple[str, MlflowClient, str, str]:
    """A sqlite MLflow store holding one search's parent run "s": (uri, client, experiment id,
    parent run id)."""
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT)
    return uri, client, exp, client.create_run(exp, run_name="s").info.run_id


def test_sync_fills_gaps_once_and_drops_orphan_runs(tmp_path):
    """What --resume does after a killed driver or a tracking-server outage, without Ray: a run
    that missed epochs gets exactly the missing ones and its final result; a trial with no run gets
    one; a run whose trial Ray never recorded (started just before the driver died) is deleted."""
    from tune.tracking import ORPHAN_TAG, MLflowTrialLogger

    uri, client, exp, parent = _search_store(tmp_path)
    logger = MLflowTrialLogger(uri, exp, parent)
    partial, missing = _Result("aaaa0001", 4, tmp_path), _Result("aaaa0002", 3, tmp_path)
    run = logger.runs.run_id_for("aaaa0001", partial.config, "trainable_aaaa0001")
    logger.runs.log_results(run, [partial.metrics_dataframe.iloc[0].to_dict()])  # epoch 1, live
    logger.runs.log_results(run, [partial.metrics_dataframe.iloc[0].to_dict()])  # reported again
    orphan = logger.runs.run_id_for("deadbeef", partial.config, "trainable_deadbeef")

    assert logger.sync([partial, missing]) == 3  # two trials completed, one orphan dropped
    restarted = MLflowTrialLogger(uri, exp, parent)  # as after a driver restart: nothing in memory
    assert restarted.sync([partial, missing]) == 0  # nothing left to do

    _, kids = search_runs(uri, "s")
    assert sorted(k.data.tags["ray.trial_id"] for k in kids) == ["aaaa0001", "aaaa0002"]
    for kid in kids:
        assert kid.info.status == "FINISHED" and kid.data.tags[N.STATUS] == "ok"
        assert epoch_points(client, kid) == list(range(1, int(kid.data.params["epochs"]) + 1))
    gone = client.get_run(orphan)
    assert gone.info.lifecycle_stage == "deleted" and ORPHAN_TAG in gone.data.tags
    assert gone.info.status == "KILLED"


def test_sync_keeps_one_run_of_a_trial_that_got_two(tmp_path):
    """An HTTP client retries a create_run whose answer was lost; the server may have made both
    runs. The sync keeps the run it completed and soft-deletes the other, naming the kept one."""
    from tune.reconcile import DUPLICATE_TAG
    from tune.tracking import MLflowTrialLogger
    from tune.trial_runs import PARENT_TAG, TRIAL_TAG

    uri, client, exp, parent = _search_store(tmp_path)
    logger = MLflowTrialLogger(uri, exp, parent)
    result = _Result("aaaa0001", 3, tmp_path)
    kept = logger.runs.run_id_for("aaaa0001", result.config, "trainable_aaaa0001")
    # the first of the two creations: its answer never reached the client
    twin = client.create_run(exp, tags={PARENT_TAG: parent, TRIAL_TAG: "aaaa0001"}).info.run_id

    assert logger.sync([result]) == 2  # the trial completed, its twin dropped
    assert MLflowTrialLogger(uri, exp, parent).sync([result]) == 0

    _, kids = search_runs(uri, "s")
    assert [k.info.run_id for k in kids] == [kept]
    assert kids[0].info.status == "FINISHED"
    assert epoch_points(client, kids[0]) == [1, 2, 3]
    gone = client.get_run(twin)
    assert gone.info.lifecycle_stage == "deleted" and gone.info.status == "KILLED"
    assert gone.data.tags[DUPLICATE_TAG] == kept


class _CountedResult(_Result):
    """A _Result that counts how often its history (progress.csv) is read."""

    reads = 0

    @property
    def metrics_dataframe(self):
        self.reads += 1
        return self._history

    @metrics_dataframe.setter
    def metrics_dataframe(self, value) -> None:
        self._history = value


def test_sync_rereads_only_trials_whose_writes_did_not_all_go_through(tmp_path):
    """After a search, runs this driver created and ended with no failed write are not read
    again; a run it never ended, one whose write failed, and any run when the writer's queue did
    not drain are, and come out complete."""
    from tune.tracking import MLflowTrialLogger

    uri, client, exp, parent = _search_store(tmp_path)
    logger = MLflowTrialLogger(uri, exp, parent)
    whole, unended, failed = (_CountedResult(f"bbbb000{i}", 3, tmp_path) for i in (1, 2, 3))
    for r in (whole, unended, failed):
        trial_id = r.metrics["trial_id"]
        run = logger.runs.run_id_for(trial_id, r.config, f"trainable_{trial_id}")
        history = r._history.to_dict("records")
        logger.runs.log_results(run, [*history[:-1], r.metrics])  # as the live hooks log them
        if r is not unended:
            logger.runs.end_run(run, None, False, None, r.metrics, {})
    logger.writer.pending.add("bbbb0003")  # e.g. its artifacts' upload failed

    assert logger.sync([whole, unended, failed]) == 1  # the unended run is ended
    assert (whole.reads, unended.reads, failed.reads) == (0, 1, 1)

    # a writer that did not drain: nothing is known to have gone through, every trial is read
    stuck = MLflowTrialLogger(uri, exp, parent)
    for r in (whole, unended, failed):
        trial_id = r.metrics["trial_id"]
        run = stuck.runs.run_id_for(trial_id, r.config, f"trainable_{trial_id}")
        stuck.runs.created.add(run)
        stuck.runs.ended.add(run)
    stuck.close = lambda timeout_s=120.0: False
    assert stuck.sync([whole, unended, failed]) == 0
    assert (whole.reads, unended.reads, failed.reads) == (1, 2, 2)

    _, kids = search_runs(uri, "s")
    assert len(kids) == 3 and all(k.info.status == "FINISHED" for k in kids)
    for kid in kids:
        assert epoch_points(client, kid) == [1, 2, 3]


# --------------------------------------------------------------------------- killed processes


@pytest.mark.slow
def test_killed_driver_resumes_to_the_asked_trials(searches, tmp_path):
    """SIGKILL the driver (and its local Ray) once Tune's saved state holds 2 finished trials,
    while the others wait at a hold; --resume finishes the search: 6 trials, one run each, and
    the restored Optuna study."""
    space = tmp_path / "space.yaml"
    doc = {
        "description": "kill test",
        "parameters": {
            **{k: v for k, v in BASE.items() if k not in ("latent_dim", "mlp_width_1", "epochs")},
            "latent_dim": {"type": "int", "low": 2, "high": 8},
            "mlp_width_1": {"type": "int", "low": 8, "high": 32},
            "epochs": 4,
        },
        "points_to_evaluate": [{"name": "first", "config": {**BASE, "epochs": 4}}],
    }
    space.write_text(yaml.safe_dump(doc, sort_keys=False))
    uri = f"sqlite:///{tmp_path}/m.db"
    exp_dir = tmp_path / "ray" / "k"
    where = ["--name", "k", "--storage-path", str(tmp_path / "ray"), "--mlflow-uri", uri]
    where += ["--experiment", EXPERIMENT]
    args = ["--space", str(space), "--dataset", "digits", "--num-samples", "6"]
    args += ["--max-concurrent", "2", "--cpus-per-trial", "0.5", *where]
    hold = Hold(tmp_path / "hold", epoch=2)  # every trial waits at epoch 2...
    hold.on()
    # Tune saves its experiment state every 10 s or more by default; every 2 s here, so the kill
    # need not wait long for a state with the finished trials in it.
    first = searches(args, "first.log", TUNE_GLOBAL_CHECKPOINT_S="2", **hold.env)
    two = wait_for(lambda: len(hold.held()) >= 2 and sorted(hold.held())[:2], 180, "2 held", first)
    hold.release(*two)  # ...but these two, which finish while the rest wait

    def two_done_in_saved_state():
        saved = saved_statuses(exp_dir)
        return all(saved.get(t) == "TERMINATED" for t in two) and saved

    wait_for(two_done_in_saved_state, 180, "saved state with 2 finished trials", first)
    assert len([s for s in saved_statuses(exp_dir).values() if s == "TERMINATED"]) == 2
    first.kill()
    assert not session_pids(first.proc.pid)
    hold.release()
    asked_before = len(optuna_study(exp_dir).trials)
    assert asked_before >= 2

    # only where the search is: its space, data set and seed come from its first start
    second = searches([*where, "--resume"], "second.log")
    assert second.wait(300) == 0, second.tail()
    assert "MNIST is not on disk" not in second.log.read_text()  # --dataset digits, restored

    trials = trial_results(exp_dir)
    trials = {t: rows for t, rows in trials.items() if t in saved_statuses(exp_dir)}
    assert len(trials) == 6  # what was asked, not 6 + the ones re-run
    assert all(rows[-1][N.STATUS] == "ok" for rows in trials.values())
    assert_one_complete_run_per_trial(uri, "k", trials)
    parent, _ = search_runs(uri, "k")
    assert parent.info.status == "FINISHED"

    # Optuna state restored: one study with the 6 trials, numbered on from before the kill. A
    # fresh searcher would have enqueued the point again and re-drawn the first seeded samples.
    study = optuna_study(exp_dir)
    assert [t.number for t in study.trials] == list(range(6))
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    configs = [json.dumps(rows[0]["config"], sort_keys=True) for rows in trials.values()]
    assert len(set(configs)) == 6
    point = {**BASE, "epochs": 4}
    assert (
        sum(all(rows[0]["config"][k] == v for k, v in point.items()) for rows in trials.values())
        == 1
    )


# --------------------------------------------------------------------------- bad trials, load

SLOW_EPOCHS = 6
HOLD_EPOCH = 3  # the slow trial waits there (the others end at epoch 3) until its worker is killed
FAULTY = {
    "ok": {},
    "diverges": {"lr": 1.0e20},  # Adam steps of 1e20: NaN loss in the first epoch
    "constant-embedding": {"mlp_activation": "tanh", "lr": 10.0},  # tanh saturates: one point
    "abo-collapses": {"abo_lr": 1000.0},  # ABO's centres all but one die; KMeans is fine
    "slow": {"epochs": SLOW_EPOCHS},  # its worker is killed while it waits at HOLD_EPOCH
    "ok-2": {"latent_dim": 3},
    "ok-3": {"latent_dim": 6, "mlp_width_1": 24},
    "ok-4": {"mlp_activation": "elu"},
}
SECRETS = {
    "RAY_AUTH_TOKEN": "raytoken-0123456789abcdef0123456789abcdef",
    "MLFLOW_TRACKING_TOKEN": "mlflowtoken-do-not-log",
    "AWS_SECRET_ACCESS_KEY": "awssecret-do-not-log",
}


def _point_of(config: dict) -> str:
    return next(
        n for n, c in FAULTY.items() if all(config[k] == v for k, v in {**BASE, **c}.items())
    )


@pytest.fixture(scope="module")
def faulty_search(tmp_path_factory):
    """One search of 8 trials at once (0.25 CPU each) logging to a local sqlite store: a diverging
    trial, a degenerate one, one whose ABO collapses, a longer one whose worker process the
    fixture SIGKILLs while it waits at epoch HOLD_EPOCH (a checkpoint every epoch here), 4
    ordinary ones; secrets in the environment. (One search for all of these: each costs a Ray
    start and 8 torch imports.)"""
    tmp = tmp_path_factory.mktemp("faulty")
    space = points_space(tmp / "space.yaml", FAULTY)
    uri = f"sqlite:///{tmp}/mlflow.db"
    exp_dir = tmp / "ray" / "faulty"
    args = ["--space", str(space), "--dataset", "digits", "--num-samples", "8"]
    args += ["--max-concurrent", "8", "--cpus-per-trial", "0.25", "--name", "faulty"]
    args += ["--max-failures", "1", "--storage-path", str(tmp / "ray"), "--mlflow-uri", uri]
    args += ["--experiment", EXPERIMENT]
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(REPO), **SECRETS}
    env["CLUSTERTUNE_CHECKPOINT_INTERVAL_S"] = "0"
    # every trial starts only once all 8 have: 8 at once, however slow the machine is
    hold = Hold(tmp / "hold", epoch=HOLD_EPOCH, gather=8)
    hold.on()
    search = Search(args, {**env, **hold.env}, tmp / "search.log")

    def slow_worker_held_and_logged():
        # held after reporting HOLD_EPOCH, and the driver has that report (MLflow has the epoch)
        run = logged_epochs(uri, f"params.epochs = '{SLOW_EPOCHS}'")
        held = run and run[0] in hold.held() and run[1] >= HOLD_EPOCH
        return worker_of(run[0], search) if held else None

    try:
        worker = wait_for(slow_worker_held_and_logged, 300, "the slow trial held", search)
        os.kill(worker, signal.SIGKILL)
        code = search.wait(400)
    finally:
        search.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert code == 0, search.tail()
    trials = trial_results(exp_dir)
    return {
        "uri": uri,
        "log": search.log.read_text(errors="replace"),
        "exp_dir": exp_dir,
        "trials": trials,
        "id": {_point_of(rows[0]["config"]): t for t, rows in trials.items()},
        "client": MlflowClient(uri),
        "killed_worker": worker,
        "gathered": len(hold.arrived()),
    }


def _run_of(f, point: str):
    _, kids = search_runs(f["uri"], "faulty")
    return next(k for k in kids if k.data.tags["ray.trial_id"] == f["id"][point])


def _artifact_text(f, name: str) -> str:
    parent, _ = search_runs(f["uri"], "faulty")
    path = f["client"].download_artifacts(parent.info.run_id, name, str(f["exp_dir"].parent))
    return Path(path).read_text()


@pytest.mark.slow
def test_diverged_trial_stops_fails_and_is_never_selected(faulty_search):
    f = faulty_search
    rows = f["trials"][f["id"]["diverges"]]
    assert len(rows) == 1  # stopped in its first epoch: no per-epoch report, only the final one
    final = rows[0]
    assert final[N.STATUS] == "diverged" and final[N.EPOCH] == 1 < BASE["epochs"]
    assert math.isnan(final[N.SILHOUETTE]) and math.isnan(final[N.RECON_LOSS])
    run = _run_of(f, "diverges")
    assert run.info.status == "FAILED"
    assert run.data.tags[N.STATUS] == "diverged"
    assert "training loss is nan at epoch 1" in run.data.tags["reason"]
    # Optuna was told the trial was pruned (so TPE moves away from it); every other completed
    study = optuna_study(f["exp_dir"])
    states = {t.params["lr"]: t.state.name for t in study.trials if "lr" in t.params}
    assert states.pop(1.0e20) == "PRUNED"
    # the search went on: every other trial ended, and the diverged one is in no selection
    assert {rows[-1][N.STATUS] for t, rows in f["trials"].items() if t != f["id"]["diverges"]} <= {
        "ok",
        "degenerate",
    }
    assert f["id"]["diverges"] not in _artifact_text(f, "pareto.csv")
    parent, _ = search_runs(f["uri"], "faulty")
    assert parent.data.tags["winner_trial_id"] != f["id"]["diverges"]


@pytest.mark.slow
def test_degenerate_clusterings_are_nan_tagged_and_off_the_front(faulty_search):
    f = faulty_search
    # a constant embedding: no clusterer finds 2 clusters, every cluster metric is NaN
    run = _run_of(f, "constant-embedding")
    assert run.info.status == "FINISHED"
    assert run.data.tags[N.STATUS] == "degenerate"  # the status says it: no 0/1 flag beside it
    assert N.DEGENERATE not in run.data.metrics
    assert run.data.tags[N.DEGENERATE_CLUSTERERS] == "abo,kmeans"
    assert math.isnan(run.data.metrics[N.SILHOUETTE])
    for c in N.CLUSTERERS:
        assert run.data.metrics[N.metric("val", N.CLUSTERS_USED, c)] == 1
        for m in N.CLUSTER_METRICS:
            assert math.isnan(run.data.metrics[N.metric("val", m, c)])
    assert math.isfinite(run.data.metrics[N.RECON_LOSS])
    study = optuna_study(f["exp_dir"])
    tanh = [t for t in study.trials if t.params.get("mlp_activation") == "tanh"]
    assert [t.state.name for t in tanh] == ["PRUNED"]
    # ABO collapsed to one cluster: its metrics are NaN and tagged; the trial stands on KMeans
    run = _run_of(f, "abo-collapses")
    assert run.data.tags[N.DEGENERATE_CLUSTERERS] == "abo" and run.data.tags[N.STATUS] == "ok"
    assert math.isnan(run.data.metrics[N.metric("val", "silhouette", "abo")])
    assert run.data.tags[N.BEST_CLUSTERER] == "kmeans"
    assert (
        run.data.metrics[N.SILHOUETTE] == run.data.metrics[N.metric("val", "silhouette", "kmeans")]
    )
    # off the front, never the winner
    pareto = _artifact_text(f, "pareto.csv")
    assert f["id"]["constant-embedding"] not in pareto
    parent, _ = search_runs(f["uri"], "faulty")
    assert parent.data.tags["winner_trial_id"] != f["id"]["constant-embedding"]


@pytest.mark.slow
def test_killed_worker_retries_the_trial_from_its_checkpoint(faulty_search):
    """The slow trial's worker was SIGKILLed while it waited at epoch HOLD_EPOCH: Ray retried
    the trial (FailureConfig), which continued from its last checkpoint, not from epoch 1."""
    f = faulty_search
    worker, trial_id = f["killed_worker"], f["id"]["slow"]
    rows = f["trials"][trial_id]
    first = [r for r in rows if r["pid"] == worker]
    second = [r for r in rows if r["pid"] != worker]
    assert first and second and len({r["pid"] for r in second}) == 1
    resumed_at = second[0][N.EPOCH]
    # From the checkpoint of the held epoch, or of the one before when Tune had not registered
    # the held one yet (Tune registers a reported checkpoint in a save task of its own, after the
    # driver's callbacks have seen the result).
    assert resumed_at - 1 in (HOLD_EPOCH - 1, HOLD_EPOCH), resumed_at
    assert second[0]["iterations_since_restore"] == 1
    # each epoch once from there on (a checkpoint every epoch here: one report each; the final
    # report carries the last epoch)
    assert [e for e, *_ in reported_epochs(second)] == list(range(resumed_at, SLOW_EPOCHS + 1))
    assert second[-1][N.STATUS] == "ok"
    error = next(f["exp_dir"].glob(f"*{trial_id}*/error.txt")).read_text()
    assert "Failure # 1" in error and str(worker) in error
    run = _run_of(f, "slow")  # one run, each epoch once (see the load test), retry recorded
    assert run.info.status == "FINISHED" and run.data.tags["ray.num_failures"] == "1"


@pytest.mark.slow
def test_eight_concurrent_trials_lose_no_metric_point(faulty_search):
    f = faulty_search
    assert_one_complete_run_per_trial(f["uri"], "faulty", f["trials"])
    _, kids = search_runs(f["uri"], "faulty")
    assert len(kids) == 8
    assert f["gathered"] == 8  # every trial waited at its start for the others
    spans = [(k.info.start_time, k.info.end_time) for k in kids]
    assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) == 8  # the gather: 8 at once
    for k in kids:  # every per-epoch point of both losses, exactly as Ray recorded them
        points = reported_epochs(f["trials"][k.data.tags["ray.trial_id"]])
        assert points or k.data.tags[N.STATUS] == "diverged"  # that one: stopped in epoch 1
        for key, column in ((N.TRAIN_LOSS, 1), (N.VAL_LOSS, 2)):
            history = f["client"].get_metric_history(k.info.run_id, key)
            logged = sorted((h.step, h.value) for h in history)
            for point in points:
                assert (point[0], point[column]) in logged
    # no tracking error (the killed worker's traceback is the only one in this log)
    for bad in ("database is locked", "MLflow log metrics", "MLflow finish run", "MLflow create"):
        assert bad not in f["log"]


@pytest.mark.slow
def test_no_secret_reaches_mlflow(faulty_search):
    """Tokens in the environment (Ray's auth token included) appear in no param, tag or artifact
    text of the search's runs."""
    f = faulty_search
    parent, kids = search_runs(f["uri"], "faulty")
    for run in [parent, *kids]:
        text = json.dumps([run.data.params, run.data.tags])
        for secret in SECRETS.values():
            assert secret not in text, run.info.run_name
    for name in ("all_trials.csv", "best_config.yaml"):
        text = _artifact_text(f, name)
        assert not any(secret in text for secret in SECRETS.values())


# --------------------------------------------------------------------------- server outage


class TrackingServer:
    """mlflow/server.sh on a free loopback port, its store and artifacts under `tmp`."""

    def __init__(self, tmp: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.tmp = tmp
        self.env = {
            **os.environ,
            "MLFLOW_BACKEND_URI": f"sqlite:///{tmp}/server.db",
            "MLFLOW_ARTIFACTS_DESTINATION": str(tmp / "artifacts"),
            # the launcher looks for .venv/bin/mlflow first, then PATH
            "MLFLOW_BIN": os.environ.get("MLFLOW_BIN", str(Path(sys.executable).parent / "mlflow")),
        }

    def _script(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(REPO / "mlflow" / "server.sh"), *args, "--pidfile", str(self.tmp / "server.pid")],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start(self) -> None:
        log = self.tmp / "server.log"
        out = self._script(
            "--port", str(self.port), "--daemon", "--log", str(log), "--workers", "1"
        )
        assert out.returncode == 0, out.stderr + log.read_text()

    def crash(self) -> None:
        """SIGKILL the server and its workers (their own process group): gone, mid-request."""
        pidfile = self.tmp / "server.pid"
        os.killpg(int(pidfile.read_text()), signal.SIGKILL)
        pidfile.unlink()

    def stop(self) -> None:
        if (self.tmp / "server.pid").exists():
            self._script("--stop")


@pytest.mark.slow
def test_tracking_server_outage_loses_nothing(searches, tmp_path):
    """Kill the tracking server while trials run: they keep running and the search finishes
    (exit 3, with the command that logs the rest); once the server is back, that command
    completes every run."""
    server = TrackingServer(tmp_path)
    server.start()
    try:
        space = points_space(
            tmp_path / "space.yaml",
            {f"p{i}": {"epochs": 20, "latent_dim": 2 + i} for i in range(3)},
        )
        hold = Hold(tmp_path / "hold", epoch=2)  # every trial waits there until the crash
        hold.on()
        exp_dir = tmp_path / "ray" / "outage"
        args = ["--space", str(space), "--dataset", "digits", "--max-concurrent", "3"]
        args += [
            "--cpus-per-trial",
            "0.5",
            "--name",
            "outage",
            "--storage-path",
            str(tmp_path / "ray"),
        ]
        args += ["--mlflow-uri", server.uri, "--experiment", EXPERIMENT, "--model-name", "outage-m"]
        search = searches(args, "search.log", **hold.env)

        def held_and_logging() -> bool:
            run = logged_epochs(server.uri, "")
            return len(hold.held()) == 3 and run is not None and run[1] >= 2

        wait_for(held_and_logging, 180, "3 trials held and logging", search, poll=0.2)
        server.crash()
        crashed_at = int(time.time())  # Tune's result timestamps are whole seconds
        hold.release()
        assert search.wait(300) == 3, search.tail()
        log = search.log.read_text()
        trials = trial_results(exp_dir)
        assert len(trials) == 3 and all(r[-1][N.STATUS] == "ok" for r in trials.values())
        # the trials went on while MLflow was gone: every epoch after the held one came after
        # the crash (18 of each trial's 20)
        for rows in trials.values():
            late = [r for r in rows if any(e > 2 for e, *_ in r.get(N.EPOCH_LOG, []))]
            assert [e for e, *_ in reported_epochs(late)] == list(range(3, 21))
            assert all(r["timestamp"] >= crashed_at for r in late), (crashed_at, late)
        assert "The search goes on" in log
        assert "3 trials in" in log and "Pareto front" in log  # the summary, without MLflow
        command = log.split("log the rest with:\n", 1)[1].splitlines()[0].split()
        assert command[:2] == ["python", "tune/search.py"] and "--resume" in command

        server.start()  # same port, same store
        recovery = searches(command[2:], "recovery.log")
        assert recovery.wait(300) == 0, recovery.tail()
        recovered = recovery.log.read_text()
        assert "every trial finished; logging what MLflow misses" in recovered
        assert "Started a local Ray instance" not in recovered  # nothing to run: no Ray
        assert_one_complete_run_per_trial(server.uri, "outage", trials)
        parent, _ = search_runs(server.uri, "outage")
        assert parent.info.status == "FINISHED"
        client = MlflowClient(server.uri)
        artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {"pareto.csv", "all_trials.csv"} <= artifacts
        assert client.get_model_version_by_alias("outage-m", "champion").version == "1"
    finally:
        server.stop()
