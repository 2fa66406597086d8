"""The main job as users run it: `python tune/search.py`, checked through the MLflow client."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from conftest import journal_front, run_search, search_front, search_runs, wait_for
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

import mlflow
from mlflow import MlflowClient
from tune import names as N
from tune.data import load_dataset
from tune.selection import hypervolume
from tune.trial import ARTIFACTS, CONFIG_FILE, RESULT_FILE


def test_help_describes_every_flag():
    out = run_search("--help", timeout=60)
    assert out.returncode == 0
    for flag in (
        "--space",
        "--dataset",
        "--data-dir",
        "--num-samples",
        "--max-concurrent",
        "--cpus-per-trial",
        "--gpus-per-trial",
        "--address",
        "--mlflow-uri",
        "--experiment",
        "--storage-path",
        "--name",
        "--resume",
        "--seed",
        "--scheduler",
        "--verbose",
        "--smoke",
    ):
        assert flag in out.stdout
    assert "mo-asha" in out.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--num-samples", "0"], "--num-samples must be >= 1"),
        (["--cpus-per-trial", "0"], "--cpus-per-trial must be > 0"),
        (["--max-concurrent", "-1"], "--max-concurrent must be >= 1"),
        (["--space", "no-such-space"], "no-such-space"),
        (["--dataset", "no-such-dataset"], "no-such-dataset"),
        (["--resume"], "--resume needs --name"),
        (["--mlflow-uri", "http://127.0.0.1:9"], "unreachable"),
        (["--scheduler", "random"], "invalid choice"),
        (["--weights", "0", "0"], "--weights"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_starts_nothing(tmp_path, args, message):
    start = time.monotonic()
    out = run_search(
        *args,
        "--storage-path",
        str(tmp_path / "ray"),
        "--mlflow-uri" if "--mlflow-uri" not in args else "--experiment",
        f"sqlite:///{tmp_path}/m.db" if "--mlflow-uri" not in args else "x",
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert message in lines[-1]
    assert len([line for line in lines if line.startswith(("error", "usage"))]) <= 2
    assert time.monotonic() - start < 30
    assert not (tmp_path / "ray").exists() and not (tmp_path / "m.db").exists()


def test_invalid_space_file_names_file_key_and_reason(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("description: x\nparameters:\n  lr: {type: float, low: 0.1, high: 0.01}\n")
    out = run_search("--space", str(bad), "--storage-path", str(tmp_path / "ray"), timeout=60)
    assert out.returncode == 2
    assert "bad.yaml" in out.stderr and "parameters.lr" in out.stderr and "low" in out.stderr
    assert not (tmp_path / "ray").exists()


@pytest.fixture(scope="module")
def smoke_search(tmp_path_factory):
    """One real smoke search on digits: 6 trials, 4 at a time (0.5 CPU each) on a local Ray."""
    tmp = tmp_path_factory.mktemp("search")
    uri = f"sqlite:///{tmp}/mlflow.db"
    out = run_search(
        "--smoke",
        "--num-samples",
        "6",
        "--max-concurrent",
        "4",
        "--cpus-per-trial",
        "0.5",
        "--storage-path",
        str(tmp / "ray"),
        "--mlflow-uri",
        uri,
        "--name",
        "smoke-test",
        "--experiment",
        "test-exp",
        "--model-name",
        "ct-test",
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out, uri, tmp


def test_smoke_search_prints_front_and_ui_command(smoke_search):
    out, uri, _ = smoke_search
    assert "Pareto front" in out.stdout
    assert "* " in out.stdout  # the winner's marker
    assert f"mlflow ui --backend-store-uri {uri}" in out.stdout


def test_parent_run_records_what_reproduces_it(smoke_search):
    _, uri, _ = smoke_search
    client = MlflowClient(uri)
    parent, _ = search_runs(uri, "smoke-test", "test-exp")
    tags, params = parent.data.tags, parent.data.params
    assert "tune/search.py" in tags["command"] and "--smoke" in tags["command"]
    assert len(tags["mlflow.source.git.commit"]) >= 7
    assert params["space"].endswith("smoke.yaml")
    assert params["dataset.name"] == "digits"
    for lib in ("torch", "ray", "optuna", "mlflow", "scikit-learn"):
        assert params[f"version.{lib}"]
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {
        "all_trials.csv",
        "pareto.csv",
        "pareto_front.png",
        "best_config.yaml",
        "space",
    } <= names
    assert parent.info.status == "FINISHED"


def test_every_trial_is_a_complete_child_run(smoke_search):
    _, uri, _ = smoke_search
    client = MlflowClient(uri)
    _, kids = search_runs(uri, "smoke-test", "test-exp")
    assert len(kids) == 6
    assert len({k.data.tags[("ray.trial_id")] for k in kids}) == 6
    for run in kids:
        m, p, t = run.data.metrics, run.data.params, run.data.tags
        assert p["arch"] in ("mlp", "conv") and "seed" in p
        for split in N.SPLITS:
            assert N.recon_loss(split) in m
            for c in N.CLUSTERERS:
                for metric in (*N.CLUSTER_METRICS, *N.LABEL_METRICS):
                    assert N.metric(split, metric, c) in m, (split, c, metric)
        assert N.SILHOUETTE in m and N.RECON_LOSS in m
        assert t[N.STATUS] in ("ok", "degenerate")
        assert t[N.BEST_CLUSTERER] in ("abo", "kmeans", "none")
        assert t[N.NODE]
        epochs = int(p["epochs"]) + (int(p["finetune_epochs"]) if p["finetune"] != "none" else 0)
        hist = client.get_metric_history(run.info.run_id, N.TRAIN_LOSS)
        # one point per epoch: the final eval-mode loss is N.EVAL_TRAIN_LOSS, not a second one
        assert sorted(h.step for h in hist) == list(range(1, epochs + 1))
        # the figures, config and result at the run's root; the model stays in Ray's checkpoint
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert arts == {*ARTIFACTS, CONFIG_FILE, RESULT_FILE}
        assert run.info.status == "FINISHED"


def test_four_trials_really_ran_at_once_and_lost_nothing(smoke_search):
    _, uri, _ = smoke_search
    client = MlflowClient(uri)
    _, kids = search_runs(uri, "smoke-test", "test-exp")
    spans = [(k.info.start_time, k.info.end_time) for k in kids]
    overlap = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert overlap >= 4
    for k in kids:  # per-epoch points: one per epoch for both losses, none lost
        epochs = int(k.data.params["epochs"])
        for key in (N.TRAIN_LOSS, N.VAL_LOSS):
            steps = [h.step for h in client.get_metric_history(k.info.run_id, key)]
            assert set(range(1, epochs + 1)) <= set(steps)


def test_no_finished_run_says_running(smoke_search):
    _, uri, _ = smoke_search
    _, kids = search_runs(uri, "smoke-test", "test-exp")
    assert kids and all(k.info.status == "FINISHED" for k in kids)
    assert {k.data.tags["ray.trial_status"] for k in kids} == {"TERMINATED"}


def test_best_config_reruns_the_winner(smoke_search, tmp_path):
    """best_config.yaml, given back as the space with the printed --seed, runs exactly the
    winning trial again: the same objectives."""
    _, uri, _ = smoke_search
    client = MlflowClient(uri)
    parent, kids = search_runs(uri, "smoke-test", "test-exp")
    winner = next(
        k for k in kids if k.data.tags["ray.trial_id"] == parent.data.tags["winner_trial_id"]
    )
    best = Path(client.download_artifacts(parent.info.run_id, "best_config.yaml", str(tmp_path)))
    seed = yaml.safe_load(best.read_text())["description"].split("--seed ")[1].split()[0]
    again = f"sqlite:///{tmp_path}/again.db"
    out = run_search(
        "--space", str(best), "--seed", seed, "--dataset", "digits", "--name", "again",
        "--storage-path", str(tmp_path / "ray"), "--mlflow-uri", again, "--experiment", "again",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    _, rerun = search_runs(again, "again", "again")
    assert len(rerun) == 1
    for key in N.OBJECTIVES:
        assert rerun[0].data.metrics[key] == pytest.approx(winner.data.metrics[key], rel=1e-6)
    assert rerun[0].data.params == winner.data.params


def test_champion_is_registered_and_predicts(smoke_search):
    _, uri, _ = smoke_search
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("ct-test", "champion")
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/ct-test@champion")
    ds = load_dataset("digits")
    pred = model.predict(ds.x_test[:50])
    assert pred.shape == (50,) and pred.dtype == np.int64
    assert pred.min() >= 0 and pred.max() < 10
    assert str(version.version) == "1"


def test_the_optuna_study_is_a_journal_whose_best_trials_are_the_front(smoke_search):
    """optuna-dashboard FILE shows the search: a journal in the experiment directory, the study
    named after the search, its objectives named, its best trials the search's Pareto front."""
    _, uri, tmp = smoke_search
    journal = tmp / "ray" / "smoke-test" / "optuna.journal"
    study = optuna.load_study(
        study_name="smoke-test", storage=JournalStorage(JournalFileBackend(str(journal)))
    )
    assert len(study.trials) == 6
    assert study.metric_names == list(N.OBJECTIVES)
    assert journal_front(journal, "smoke-test") == search_front(uri, "smoke-test", "test-exp", tmp)


def test_credentials_in_urls_are_redacted():
    from tune.store import redact

    cmd = "python tune/search.py --mlflow-uri http://alice:s3cret@10.0.0.1:5000 --address auto"
    assert "s3cret" not in redact(cmd) and "alice" not in redact(cmd)
    assert "http://***@10.0.0.1:5000" in redact(cmd)
    assert redact("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"


def test_the_default_space_on_digits_is_digits_yaml(tmp_path):
    from tune.search import (
        UsageError,
        check_args,
        make_scheduler,
        parse_args,
        resolve_args,
        scheduler_summary,
    )

    def settings(*argv):
        args = ["--storage-path", str(tmp_path), "--mlflow-uri", f"sqlite:///{tmp_path}/m.db"]
        return check_args(resolve_args(parse_args([*args, *argv])))

    s = settings()
    assert s.space.path.name == "default.yaml" and s.num_samples == 20
    assert s.for_dataset("fashion-mnist") is s
    digits = s.for_dataset("digits")
    assert (digits.space.path.name, digits.num_samples, digits.name) == ("digits.yaml", 20, s.name)
    assert settings("--space", "seeds").for_dataset("digits").num_samples == 2
    assert settings("--smoke").for_dataset("digits").space.path.name == "smoke.yaml"
    # The scheduler, its unit and grace period: the command's, else the space's (after the
    # hand-over).
    assert (s.scheduler, s.time_attr, s.grace_period) == ("mo-asha", "time_total_s", 60)
    assert (digits.scheduler, digits.time_attr, digits.grace_period) == ("fifo", "epoch", 1)
    fifo = settings("--scheduler", "fifo")
    assert (fifo.scheduler, fifo.grace_period) == ("fifo", 60)
    asha = settings("--scheduler", "asha", "--grace-period", "2").for_dataset("digits")
    assert (asha.scheduler, asha.time_attr, asha.grace_period) == ("asha", "epoch", 2)
    with pytest.raises(UsageError, match="grace_period counts time_total_s; give --grace-period"):
        settings("--time-attr", "epoch")  # default.yaml's grace period is in seconds
    epochs = settings("--time-attr", "epoch", "--grace-period", "3")
    assert (epochs.scheduler, epochs.time_attr, epochs.grace_period) == ("mo-asha", "epoch", 3)
    # what the search's first line says of them
    assert scheduler_summary(s) == "mo-asha scheduler (rungs at 60, 180, 540, ... s)"
    assert scheduler_summary(epochs) == "mo-asha scheduler (rungs at 3, 9, 27, ... epochs)"
    assert scheduler_summary(asha) == "asha scheduler (rungs at 2, 6, 18, ... epochs)"
    assert scheduler_summary(digits) == "fifo scheduler"
    # the schedulers built from them: Ray's ASHA in seconds stops no trial for its length (its
    # max_t), only at a rung
    assert (
        make_scheduler(s).rungs[:2] == (60, 180) and make_scheduler(s).time_attr == "time_total_s"
    )
    assert type(make_scheduler(digits)).__name__ == "FIFOScheduler"
    from ray.tune.experiment import Trial

    seconds = settings("--scheduler", "asha", "--grace-period", "60")
    asha_s = make_scheduler(seconds)
    assert [at for at, _ in asha_s._brackets[0]._rungs][-3:] == [540, 180, 60]  # Ray's, private
    trial = Trial("__fake", config={}, stub=True)
    asha_s.on_trial_add(None, trial)
    at = {N.VAL_LOSS: 0.1, "time_total_s": 150.0, "epoch": 40}
    assert asha_s.on_trial_result(None, trial, at) == "CONTINUE"
    assert asha_s.on_trial_result(None, trial, {**at, "time_total_s": 5000.0}) == "CONTINUE"


def test_resuming_a_search_saved_before_time_attr_counts_epochs(tmp_path):
    """An experiment saved before rungs could count seconds ranked at epochs: --resume keeps it
    so, whatever its space says now (default.yaml counts seconds)."""
    from tune.search import parse_args, resolve_args

    where = ["--resume", "--name", "old", "--storage-path", str(tmp_path)]
    (tmp_path / "old").mkdir()
    saved = {"scheduler": "mo-asha", "grace_period": 3, "space": "default", "seed": 0}
    (tmp_path / "old" / "clustertune.json").write_text(json.dumps(saved))
    args = resolve_args(parse_args(where))
    assert (args.scheduler, args.grace_period, args.time_attr) == ("mo-asha", 3, "epoch")
    saved["time_attr"] = "time_total_s"
    (tmp_path / "old" / "clustertune.json").write_text(json.dumps(saved))
    assert resolve_args(parse_args(where)).time_attr == "time_total_s"


def test_artifacts_live_beside_the_sqlite_store(smoke_search):
    _, uri, tmp = smoke_search
    exp = MlflowClient(uri).get_experiment_by_name("test-exp")
    assert exp.artifact_location.startswith((tmp / "artifacts").as_uri())
    assert list((tmp / "artifacts").rglob("all_trials.csv"))


NET = {
    "arch": "mlp", "mlp_depth": 1, "mlp_width_1": 32, "mlp_activation": "relu",
    "mlp_batch_norm": False, "latent_dim": 8, "dropout": 0.0, "lr": 0.003, "weight_decay": 0.0,
    "batch_size": 32, "epochs": 4, "n_clusters": 10, "abo_lr": 0.1, "abo_epochs": 3,
    "abo_batch_size": 64, "abo_temperature": 1.0, "abo_init": "k-means++", "kmeans_n_init": 2,
}  # fmt: skip
FT = {"finetune_epochs": 2, "finetune_lr": 0.001, "finetune_batch_size": 64}
STAGED_POINTS = {
    "description": "The new stages through a real search; the champion must serve them.",
    "points": [
        {
            "name": "abo-umap",
            "config": {
                **NET, **FT, "finetune": "abo", "finetune_gamma": 0.05,
                "finetune_temperature_start": 5.0, "finetune_temperature_end": 0.5,
                "reduction": "umap", "umap_dim": 4, "umap_n_neighbors": 15,
                "umap_min_dist": 0.0, "umap_fit_size": 600,
            },
        },
        {
            "name": "dec-pca",
            "config": {
                **NET, **FT, "finetune": "dec", "finetune_gamma": 0.1,
                "dec_update_interval": 10, "dec_tol": 0.001, "dec_init": "reduced",
                "reduction": "pca", "pca_dim": 4,
            },
        },
    ],
}  # fmt: skip


def test_a_search_with_the_new_stages_serves_its_winner(tmp_path):
    """Fine-tuning (abo, dec) and reduction (UMAP, PCA) through the real command: per-epoch
    clustering losses in MLflow, and the champion, loaded by alias, labels test images as the
    winning trial did."""
    space = tmp_path / "staged.yaml"
    space.write_text(yaml.safe_dump(STAGED_POINTS, sort_keys=False))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = run_search(
        "--space", str(space), "--dataset", "digits", "--storage-path", str(tmp_path / "ray"),
        "--mlflow-uri", uri, "--name", "staged", "--experiment", "staged-exp",
        "--model-name", "ct-staged",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    client = MlflowClient(uri)
    parent, kids = search_runs(uri, "staged", "staged-exp")
    assert sorted(k.data.params["finetune"] for k in kids) == ["abo", "dec"]
    for kid in kids:
        assert kid.data.tags[N.STATUS] == "ok"
        steps = [m.step for m in client.get_metric_history(kid.info.run_id, N.CLUSTER_LOSS)]
        assert steps == [5, 6]  # the two fine-tuning epochs, after 4 of pre-training
        assert N.stage_seconds("finetune") in kid.data.metrics
        assert N.metric("val", N.LATENT_SILHOUETTE, "kmeans") in kid.data.metrics
    won = parent.data.tags["winner_trial_id"]
    winner = next(k for k in kids if k.data.tags["ray.trial_id"] == won)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/ct-staged@champion")
    ds = load_dataset("digits")
    from sklearn.metrics import normalized_mutual_info_score

    pred = model.predict(ds.x_test)
    best = winner.data.tags[N.BEST_CLUSTERER]
    assert normalized_mutual_info_score(ds.y_test, pred) == pytest.approx(
        winner.data.metrics[N.metric("test", "nmi", best)], abs=1e-9
    )


def test_console_is_short_and_everything_else_is_in_the_log(smoke_search):
    """The terminal gets a start line, one line per trial and the summary; Tune's tables and the
    workers' output go to the log file named in the first line."""
    out, _, tmp = smoke_search
    lines = out.stdout.splitlines()
    assert len(lines) <= 40, out.stdout
    assert lines[0].startswith("Search smoke-test (starting): 6 trials"), lines[0]
    log = Path(lines[0].split("Log: ")[1])
    assert log == tmp / "ray" / "smoke-test" / "search.log" and log.exists()
    progress = [line for line in lines if line.startswith("[")]
    assert [p.split()[0] for p in progress] == [f"[{i}/6" for i in range(1, 7)], progress
    logged = log.read_text()
    assert "Trial status" in logged  # Tune's own table, not on the terminal
    assert "Trial status" not in out.stdout
    assert all(p in logged for p in progress)


def test_runs_say_what_they_are(smoke_search):
    """Run names describe the trial, `role` and `pareto` tags match the search's front, the
    winner's name is starred; no empty tag and no always-zero flag metric on any run."""
    _, uri, tmp = smoke_search
    client = MlflowClient(uri)
    parent, kids = search_runs(uri, "smoke-test", "test-exp")
    table = pd.read_csv(
        client.download_artifacts(parent.info.run_id, "all_trials.csv", str(tmp / "dl1"))
    )
    by_trial = {k.data.tags["ray.trial_id"]: k for k in kids}
    for _, row in table.iterrows():
        run = by_trial[row["trial_id"]]
        tags = run.data.tags
        assert tags[N.PARETO] == ("true" if row["pareto"] else "false")
        assert tags[N.ROLE] == (
            "winner" if row["winner"] else "pareto" if row["pareto"] else "trial"
        )
        name = run.info.run_name
        assert name.startswith("★ winner ") == bool(row["winner"]), name
        assert f"z{row['latent_dim']}" in name and row["arch"] in name, name
        assert name.removeprefix("★ winner ")[:2].isdigit(), name
        assert all(v != "" for v in tags.values()), {k for k, v in tags.items() if v == ""}
        assert len(tags[N.NODE]) < 40 and tags["ray.node_id"].startswith(tags[N.NODE][-8:])
        assert not any(k.endswith("degenerate") or k == N.DIVERGED for k in run.data.metrics)
        assert N.EVAL_TRAIN_LOSS in run.data.metrics
        dataset = run.inputs.dataset_inputs[0].dataset
        assert dataset.name == "digits" and len(dataset.digest) == 12
    assert parent.data.tags[N.ROLE] == "search"
    assert parent.inputs.dataset_inputs[0].dataset.digest == dataset.digest
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_parent_run_tells_the_story(smoke_search):
    """Its note names the winner with a link to its run and holds the Pareto table; the table is
    also an MLflow table; the hypervolume has one point per ended trial, never decreasing."""
    out, uri, tmp = smoke_search
    client = MlflowClient(uri)
    parent, kids = search_runs(uri, "smoke-test", "test-exp")
    tags = parent.data.tags
    winner = next(k for k in kids if k.data.tags[N.ROLE] == "winner")
    assert tags["winner_run_id"] == winner.info.run_id
    note = tags["mlflow.note.content"]
    exp = parent.info.experiment_id
    assert f"(#/experiments/{exp}/runs/{winner.info.run_id}?workflowType=machine_learning)" in note
    assert "### Pareto front" in note and note.count("★") >= 1
    front = [k for k in kids if k.data.tags[N.PARETO] == "true"]
    assert all(k.info.run_name.removeprefix("★ winner ") in note for k in front)
    table = json.loads(
        Path(
            client.download_artifacts(parent.info.run_id, "pareto_table.json", str(tmp / "dl2"))
        ).read_text()
    )
    assert len(table["data"]) == len(front)
    history = client.get_metric_history(parent.info.run_id, N.HYPERVOLUME)
    steps = sorted((m.step, m.value) for m in history)
    assert [s for s, _ in steps] == list(range(1, 7)), steps
    values = [v for _, v in steps]
    reference = json.loads(parent.data.params["hypervolume.reference"])
    assert reference[0] == 0.0 and 0 < reference[1] < 1
    # smoke trials may all score worse than the reference: then it stays 0, as it must
    trials = pd.read_csv(
        client.download_artifacts(parent.info.run_id, "all_trials.csv", str(tmp / "dl3"))
    )
    ok = trials[trials[N.STATUS] == "ok"]
    points = list(zip(ok[N.SILHOUETTE], ok[N.RECON_LOSS], strict=True))
    assert values == sorted(values) and values[-1] == pytest.approx(hypervolume(points, reference))
    assert f"Hypervolume of the front: {values[-1]:.4f}" in out.stdout
    link = next(line for line in out.stdout.splitlines() if "workflowType=machine_learning" in line)
    assert parent.info.run_id in link and f"/#/experiments/{exp}/runs?" in link


def test_the_champion_is_the_winners_model(smoke_search):
    """Logged in the winning trial's run with its hyperparameters; the version says what it is."""
    _, uri, _ = smoke_search
    client = MlflowClient(uri)
    parent, kids = search_runs(uri, "smoke-test", "test-exp")
    winner = next(k for k in kids if k.data.tags[N.ROLE] == "winner")
    version = client.get_model_version_by_alias("ct-test", "champion")
    assert version.run_id == winner.info.run_id
    assert winner.data.tags["ray.trial_id"] in version.description
    assert version.tags["trial_id"] == winner.data.tags["ray.trial_id"]
    assert version.tags["search"] == "smoke-test"
    model = client.get_logged_model(version.source.removeprefix("models:/"))
    assert model.source_run_id == winner.info.run_id
    assert model.params["latent_dim"] == winner.data.params["latent_dim"]
    assert client.get_run(winner.info.run_id).info.status == "FINISHED"


@pytest.mark.skipif(
    not any(map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
    reason="no Chromium (apt-get install chromium) to load the MLflow UI with",
)
def test_the_printed_link_shows_the_winner_in_mlflow_ui(smoke_search, tmp_path):
    """The runs view the search prints a link to, opened in a real browser on `mlflow ui`,
    lists the search's trials by name, the starred winner among them."""
    import socket
    import urllib.request

    out, uri, _ = smoke_search
    _, kids = search_runs(uri, "smoke-test", "test-exp")
    winner = next(k for k in kids if k.data.tags[N.ROLE] == "winner").info.run_name
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
    )  # fmt: skip
    try:

        def up() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(up, 300, "the MLflow UI")
        line = next(x for x in out.stdout.splitlines() if "best silhouette first:" in x)
        link = line.split(": ", 1)[1].replace("127.0.0.1:5000", f"127.0.0.1:{port}")
        chrome = next(
            filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome")))
        )
        dom = subprocess.run(
            [chrome, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--virtual-time-budget=30000", "--dump-dom", link],
            capture_output=True, text=True, timeout=300,
        ).stdout  # fmt: skip
        assert winner in dom, dom[-2000:]
        assert all(k.info.run_name in dom for k in kids)  # every trial of the search, by name
    finally:
        ui.terminate()
        ui.wait(60)
