"""The search's Optuna sampler as a Ray Tune searcher, and what it is told about failed trials.

Lives in a module of its own, not in tune/search.py: Tune pickles the searcher (with the
define-by-run function) into the experiment directory, and `--resume` can only unpickle what is
importable under a module name (`python tune/search.py` runs as `__main__`).

The study lives in an Optuna journal file (`optuna-dashboard FILE` shows it), in the experiment
directory. Tune's pickle of the searcher carries the journal's content too, so a resumed search
rebuilds the file wherever its experiment is now (moved, or another machine for remote storage).
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend, JournalFileBackend
from ray.tune.search.optuna import OptunaSearch

from tune import names as N
from tune.space import SearchSpace

# Final statuses with no usable objective pair (NaN silhouette and/or NaN loss).
FAILED_STATUSES = (N.Status.DIVERGED, N.Status.DEGENERATE)


def define(trial, space: SearchSpace, seed: int) -> dict[str, Any]:
    """Define-by-run space for OptunaSearch: the YAML space plus the search's seed."""
    return {**space.define_by_run(trial), "seed": seed}


class ExperimentJournal(BaseJournalBackend):
    """An Optuna journal file that carries its content when pickled.

    Tune pickles the searcher, and with it the study's storage, at every experiment checkpoint.
    A pickled journal holds its logs, not an open file: unpickled, it answers reads from them and
    writes the file (at `path`, which the owner may change first) only when it must. So a resumed
    search never depends on where the first start kept the file (the experiment may have moved),
    and its journal holds exactly the study Tune restored: trials begun after the last
    checkpoint, which Tune forgets too, are not in it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._logs: list[dict[str, Any]] = []  # while unbound: the logs it carries
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._file: JournalFileBackend | None = JournalFileBackend(self.path)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "logs": self.read_logs(0)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self._logs, self._file = state["path"], state["logs"], None

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        if self._file is None:
            return self._logs[log_number_from:]
        return list(self._file.read_logs(log_number_from))

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        if self._file is None:
            self.bind()
        self._file.append_logs(logs)

    def bind(self) -> None:
        """Make the file at `path` hold this journal's logs, replacing what is there, and journal
        there from now on. The logs keep their numbers, so the storage goes on where it was."""
        logs = self.read_logs(0)
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(path.name + ".restoring")
        staged.unlink(missing_ok=True)
        if logs:  # JournalFileBackend writes a blank line for none
            JournalFileBackend(str(staged)).append_logs(logs)
        else:
            staged.touch()
        os.replace(staged, path)  # a reader (optuna-dashboard) never sees half a file
        self._file, self._logs = JournalFileBackend(str(path)), []


class ClusterSearch(OptunaSearch):
    """OptunaSearch that tells Optuna plainly how a trial ended, with its study in a journal file.

    Ray's OptunaSearch tells every finished trial as COMPLETE with its objective values; Optuna
    then turns NaN values into FAIL with a warning, and rejects a missing value (a trial stopped
    before its final report), leaving that Optuna trial RUNNING forever. Here a diverged or
    degenerate trial is told FAIL, and a trial stopped early (time budget, scheduler) is PRUNED,
    so the study's COMPLETE trials are the search's selectable ones and its best trials are the
    search's Pareto front.
    """

    # Where the study's journal is written. A restored searcher keeps the path it had before the
    # restore (keep_journal_at), not the pickled one, which is where the experiment was.
    journal_path: str | None = None

    def __init__(self, *, journal: ExperimentJournal, **kwargs: Any) -> None:
        self.journal, self.journal_path = journal, journal.path
        super().__init__(storage=JournalStorage(journal), **kwargs)

    def keep_journal_at(self, path: str | Path) -> None:
        """Journal the study at `path`: set on a restored Tuner's searcher before Tune restores
        its state (which brings back the path of the first start)."""
        self.journal_path = str(path)
        journal = self.__dict__.get("journal")  # None: a pickle without one (in-memory study)
        if journal is not None:
            journal.path = self.journal_path

    def restore(self, checkpoint_path: str) -> None:
        path = self.journal_path
        super().restore(checkpoint_path)
        if path is not None and "journal" in self.__dict__:
            self.keep_journal_at(path)
            self.journal.bind()  # the file shows the restored study at once

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        status = (result or {}).get(N.STATUS)
        if status in FAILED_STATUSES:
            result, error = None, True  # no values + error: Ray tells Optuna FAIL
        elif result is not None and not N.is_final(result):
            result = None  # no final report: Ray tells Optuna PRUNED (FAIL if it errored)
        super().on_trial_complete(trial_id, result=result, error=error)


def make_searcher(
    space: SearchSpace, seed: int, journal_path: str | Path, study_name: str
) -> ClusterSearch:
    """Two objectives (names and directions from tune.names), seeded TPE, the space's points
    first; the study is `study_name` in a new journal file at `journal_path`."""
    if Path(journal_path).exists():  # Ray's OptunaSearch would quietly continue its study
        raise FileExistsError(f"{journal_path}: a new search needs a new Optuna journal")
    journal = ExperimentJournal(journal_path)
    searcher = ClusterSearch(
        journal=journal,
        study_name=study_name,
        space=functools.partial(define, space=space, seed=seed),
        metric=list(N.OBJECTIVES),
        mode=list(N.OBJECTIVES.values()),
        points_to_evaluate=[dict(p) for p in space.points] or None,
        sampler=optuna.samplers.TPESampler(seed=seed),
    )
    study = optuna.load_study(study_name=study_name, storage=JournalStorage(journal))
    with warnings.catch_warnings():  # experimental since Optuna 3.2, and only a label
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(N.OBJECTIVES))  # optuna-dashboard's axis names
    return searcher
