"""bench/bench_tracking.py on a hand-made two-trial experiment: both variants replay every
trial's writes, the reference with a lookup of each run, and the entry is written.

    .venv/bin/python -m pytest tests/test_bench_tracking.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mlflow import MlflowClient
from tune import names as N
from tune.trial import ARTIFACTS, CONFIG_FILE, RESULT_FILE

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import bench_tracking as bench  # noqa: E402


def make_experiment(root: Path, n: int = 2) -> Path:
    """A Tune experiment directory as a finished search leaves it (the files the bench reads)."""
    exp = root / "smoke"
    for i in range(1, n + 1):
        trial = exp / f"trainable_abcd000{i}_{i}_arch=mlp"
        checkpoint = trial / "checkpoint_000000"
        checkpoint.mkdir(parents=True)
        for name in (*ARTIFACTS, CONFIG_FILE, RESULT_FILE, "model.pt"):
            (checkpoint / name).write_text(name)
        (trial / "params.json").write_text(json.dumps({"lr": 0.001, "epochs": 2}))
        epochs = [{N.EPOCH: e, N.TRAIN_LOSS: 1.0 / e, N.VAL_LOSS: 2.0 / e} for e in (1, 2)]
        final = {N.EPOCH: 2, N.STATUS: "ok", N.SILHOUETTE: 0.3, N.VAL_LOSS: 0.5}
        lines = [
            {**r, "trial_id": f"abcd000{i}", "experiment_tag": f"{i}_arch=mlp"}
            for r in (*epochs, final)
        ]
        (trial / "result.json").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    (exp / "trainable_unfinished_3").mkdir()  # no result: left out
    return exp


def test_both_variants_replay_every_trial_and_differ_where_they_should(tmp_path):
    exp = make_experiment(tmp_path)
    trials = bench.load_trials(exp)
    assert [t.results[-1]["trial_id"] for t in trials] == ["abcd0001", "abcd0002"]

    ref, now = (bench.replay(trials, v, tmp_path) for v in ("reference", "now"))
    assert ref["total"] > 0 and now["total"] > 0
    assert ref["search_runs"] > 0 and "search_runs" not in now
    for kind in (
        "create_run",
        "log_inputs",
        "log_batch:params",
        "log_batch:metrics,tags",
        "log_batch:tags",
        "set_terminated",
        "log_metric",
    ):
        assert ref[kind] > 0 and now[kind] > 0, kind


def test_a_replay_writes_what_the_search_would(tmp_path, monkeypatch):
    """The replay's store holds one finished run per trial, with its params, every epoch, the
    final metrics and the artifacts."""
    exp = make_experiment(tmp_path)
    stores = []
    real = bench.MlflowClient
    monkeypatch.setattr(bench, "MlflowClient", lambda uri: stores.append(uri) or real(uri))
    bench.replay(bench.load_trials(exp), "now", tmp_path)
    client = MlflowClient(stores[0])
    runs = client.search_runs([client.get_experiment_by_name("bench").experiment_id])
    kids = [r for r in runs if "ray.trial_id" in r.data.tags]
    assert sorted(r.data.tags["ray.trial_id"] for r in kids) == ["abcd0001", "abcd0002"]
    for r in kids:
        assert r.info.status == "FINISHED" and r.data.params == {"lr": "0.001", "epochs": "2"}
        assert [m.step for m in client.get_metric_history(r.info.run_id, N.TRAIN_LOSS)] == [1, 2]
        assert r.data.metrics[N.SILHOUETTE] == 0.3
        assert {a.path for a in client.list_artifacts(r.info.run_id)} == {
            *ARTIFACTS,
            CONFIG_FILE,
            RESULT_FILE,
        }


def test_the_command_appends_its_table_and_rejects_a_bad_directory(tmp_path, capsys):
    exp = make_experiment(tmp_path)
    results = tmp_path / "RESULTS.md"
    bench.main(["--experiment", str(exp), "--repeats", "1", "--results", str(results)])
    text = results.read_text()
    assert "| search_runs |" in text and "reference / now:" in text
    assert "| requests that differ |" in text and "2 trials" in text
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="empty: no trial with a final result"):
        bench.main(["--experiment", str(tmp_path / "empty"), "--no-write"])
    with pytest.raises(SystemExit, match="none: not a directory"):
        bench.main(["--experiment", str(tmp_path / "none"), "--no-write"])
    assert results.read_text() == text  # nothing more written
