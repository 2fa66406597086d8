"""The search's Optuna study in a journal file, as Tune saves and restores the searcher (no Ray).

Tune pickles the searcher into the experiment directory (`save`) and, on --resume, unpickles the
one pickled with the Tuner and restores the saved state into it (`restore`); here both happen
directly, with the experiment moved in between, as after `mv` or on another machine.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from tune import names as N
from tune.search import DEFAULT_STORAGE, Settings, journal_location
from tune.searcher import make_searcher
from tune.space import load_space


def trials_in(journal, name: str = "s") -> list[tuple[int, str]]:
    study = optuna.load_study(
        study_name=name, storage=JournalStorage(JournalFileBackend(str(journal)))
    )
    return [(t.number, t.state.name) for t in study.trials]


def test_a_restored_searcher_rebuilds_its_journal_where_it_is_told(tmp_path):
    first = tmp_path / "first" / "optuna.journal"
    searcher = make_searcher(load_space("smoke"), 0, first, "s")
    tuner_copy = pickle.dumps(searcher)  # what Tune pickles with the Tuner, before any trial
    for trial_id in ("a", "b", "c"):
        searcher.suggest(trial_id)
    searcher.on_trial_complete("a", {N.SILHOUETTE: 0.5, N.RECON_LOSS: 0.1, N.STATUS: "ok"})
    degenerate = {N.SILHOUETTE: float("nan"), N.RECON_LOSS: 0.2, N.STATUS: "degenerate"}
    searcher.on_trial_complete("b", degenerate)
    searcher.save(str(tmp_path / "first" / "searcher-state.pkl"))
    searcher.suggest("d")  # after the last save: Tune forgets this trial, and so does the study
    assert trials_in(first) == [(0, "COMPLETE"), (1, "PRUNED"), (2, "RUNNING"), (3, "RUNNING")]

    moved = tmp_path / "moved"
    shutil.move(tmp_path / "first", moved)
    restored = pickle.loads(tuner_copy)
    restored.keep_journal_at(moved / "optuna.journal")
    restored.restore(str(moved / "searcher-state.pkl"))
    journal = moved / "optuna.journal"
    assert trials_in(journal) == [(0, "COMPLETE"), (1, "PRUNED"), (2, "RUNNING")]
    restored.on_trial_complete("c", {N.SILHOUETTE: 0.6, N.RECON_LOSS: 0.2, N.STATUS: "ok"})
    restored.suggest("e")
    assert trials_in(journal) == [(0, "COMPLETE"), (1, "PRUNED"), (2, "COMPLETE"), (3, "RUNNING")]
    assert not (tmp_path / "first").exists()  # nothing written where the experiment was
    study = optuna.load_study(
        study_name="s", storage=JournalStorage(JournalFileBackend(str(journal)))
    )
    assert study.metric_names == list(N.OBJECTIVES)
    assert sorted(t.values for t in study.best_trials) == [[0.5, 0.1], [0.6, 0.2]]


def test_journaling_a_trial_never_waits_on_a_file_sync(tmp_path, monkeypatch):
    """Tune's driver loop waits on every journal write (one per suggested parameter): no lock
    file and no fsync per record, and the file still shows the study to a reader as it goes."""

    def no_sync(fd):
        raise AssertionError("the journal synced the file")

    monkeypatch.setattr(os, "fsync", no_sync)
    journal = tmp_path / "optuna.journal"
    searcher = make_searcher(load_space("smoke"), 0, journal, "s")
    for trial_id in ("a", "b"):
        searcher.suggest(trial_id)
    searcher.on_trial_complete("a", {N.SILHOUETTE: 0.5, N.RECON_LOSS: 0.1, N.STATUS: "ok"})
    assert trials_in(journal) == [(0, "COMPLETE"), (1, "RUNNING")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optuna.journal"]  # no lock left


def test_a_new_search_never_continues_an_old_journal(tmp_path):
    journal = tmp_path / "optuna.journal"
    make_searcher(load_space("smoke"), 0, journal, "s")
    with pytest.raises(FileExistsError):
        make_searcher(load_space("smoke"), 0, journal, "s")


@pytest.mark.parametrize(
    "experiment_dir,expected",
    [
        ("/data/ray/x", "/data/ray/x/optuna.journal"),
        ("file:///shared/ray/x", "/shared/ray/x/optuna.journal"),
        ("s3://bucket/ray/x", str(DEFAULT_STORAGE / "optuna-journals" / "x.journal")),
    ],
)
def test_the_journal_is_in_the_experiment_unless_that_is_remote(experiment_dir, expected):
    s = Settings(argparse.Namespace(), None, 1, "", "x", "", experiment_dir)
    assert str(journal_location(s)) == expected


def test_tpe_moves_away_from_trials_that_diverged(tmp_path):
    """Every conv config diverges. Told FAIL, TPE would ignore those trials and keep proposing
    conv (it did in most of 30 trials); told PRUNED, it ranks them below every complete one."""
    searcher = make_searcher(load_space("smoke"), 0, tmp_path / "optuna.journal", "s")
    archs = []
    for i in range(40):
        config = searcher.suggest(str(i))
        archs.append(config["arch"])
        if config["arch"] == "conv":
            nan = float("nan")
            result = {N.SILHOUETTE: nan, N.RECON_LOSS: nan, N.STATUS: N.Status.DIVERGED}
        else:
            lr = config["lr"]
            result = {N.SILHOUETTE: 30 * lr, N.RECON_LOSS: 0.1 - 5 * lr, N.STATUS: N.Status.OK}
        searcher.on_trial_complete(str(i), result)
    after_startup = archs[10:]  # TPE samples its first 10 at random
    assert after_startup.count("conv") <= 6, archs
    states = {s for _, s in trials_in(tmp_path / "optuna.journal")}
    assert states == {"COMPLETE", "PRUNED"}
