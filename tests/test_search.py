"""The main job as users run it: `python tune/search.py`, checked through the MLflow client."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from conftest import journal_front, run_search, search_front, search_runs
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

import mlflow
from mlflow import MlflowClient
from tune import names as N
from tune.data import load_dataset
from tune.trial import ARTIFACTS


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
        "--smoke",
    ):
        assert flag in out.stdout


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
            assert N.metric(split, "recon_loss") in m
            for c in N.CLUSTERERS:
                for metric in (*N.CLUSTER_METRICS, *N.LABEL_METRICS):
                    assert N.metric(split, metric, c) in m, (split, c, metric)
        assert N.SILHOUETTE in m and N.RECON_LOSS in m
        assert t[N.STATUS] in ("ok", "degenerate")
        assert t[N.BEST_CLUSTERER] in ("abo", "kmeans", "none")
        assert t[N.NODE]
        epochs = int(p["epochs"])
        hist = client.get_metric_history(run.info.run_id, N.TRAIN_LOSS)
        assert (
            sorted(h.step for h in hist if h.step > 0) == list(range(1, epochs + 1))
            or len(hist) >= epochs
        )
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert set(ARTIFACTS) <= arts
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
    from tune.tracking import redact

    cmd = "python tune/search.py --mlflow-uri http://alice:s3cret@10.0.0.1:5000 --address auto"
    assert "s3cret" not in redact(cmd) and "alice" not in redact(cmd)
    assert "http://***@10.0.0.1:5000" in redact(cmd)
    assert redact("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"


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
                "dec_update_interval": 10, "dec_tol": 0.001, "reduction": "pca", "pca_dim": 4,
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
