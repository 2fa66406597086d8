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
import json
import os
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend
from ray.tune.search.optuna import OptunaSearch

from tune import names as N
from tune.space import SearchSpace

# Final statuses with no usable objective pair (NaN silhouette and/or NaN loss): told PRUNED.
UNSCORED_STATUSES = (N.Status.DIVERGED, N.Status.DEGENERATE)


def define(trial, space: SearchSpace, seed: int) -> dict[str, Any]:
    """Define-by-run space for OptunaSearch: the YAML space plus the search's seed."""
    return {**space.define_by_run(trial), "seed": seed}


class ExperimentJournal(BaseJournalBackend):
    """The study's journal: kept in memory, written to a file for optuna-dashboard, and carried
    whole when pickled.

    Optuna's JournalFileBackend locks the file and fsyncs it for every record (one per suggested
    parameter), and re-reads it for every read; Tune's driver loop waits on each of those, and
    meanwhile trials wait on their `tune.report`. Here the driver is the only writer, so a record
    is appended without a lock or a sync, and reads are answered from memory. The file is a view:
    a record lost with the machine costs nothing, because `--resume` restores the study from
    Tune's pickle of the searcher, which carries every record (and optuna-dashboard skips a half
    written last line).

    Unpickled, the journal writes the file (at `path`, which the owner may change first) only
    when it must. So a resumed search never depends on where the first start kept the file (the
    experiment may have moved), and its journal holds exactly the study Tune restored: trials
    begun after the last checkpoint, which Tune forgets too, are not in it.
    """

    def __init__(self, path: str | Path) -> None:
        """A new journal at `path`; a file already there is refused, never continued."""
        self.path = str(path)
        self._logs: list[dict[str, Any]] = []
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:  # open while the search runs
            self._file: BinaryIO | None = open(self.path, "xb")  # noqa: SIM115
        except FileExistsError:  # Ray's OptunaSearch would quietly continue its study
            raise FileExistsError(f"{path}: a new search needs a new Optuna journal") from None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "logs": list(self._logs)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self._logs, self._file = state["path"], list(state["logs"]), None

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        return self._logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        if self._file is None:
            self.bind()
        self._logs += logs
        self._file.write(_lines(logs))
        self._file.flush()  # optuna-dashboard sees each record as it comes

    def bind(self) -> None:
        """Make the file at `path` hold this journal's records, replacing what is there, and
        journal there from now on. The records keep their numbers, so the storage goes on where
        it was."""
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(path.name + ".restoring")
        staged.write_bytes(_lines(self._logs))
        os.replace(staged, path)  # a reader (optuna-dashboard) never sees half a file
        if self._file is not None:
            self._file.close()
        self._file = open(path, "ab")  # noqa: SIM115


def _lines(logs: list[dict[str, Any]]) -> bytes:
    """Journal records as Optuna's file backend writes them: one compact JSON line each."""
    return b"".join(json.dumps(log, separators=(",", ":")).encode() + b"\n" for log in logs)


class ClusterSearch(OptunaSearch):
    """OptunaSearch that tells Optuna plainly how a trial ended, with its study in a journal file.

    Ray's OptunaSearch tells every finished trial as COMPLETE with its objective values; Optuna
    then turns NaN values into FAIL with a warning, and rejects a missing value (a trial stopped
    before its final report), leaving that Optuna trial RUNNING forever. Here a trial with no
    usable objective pair (diverged, degenerate) and a trial stopped early (time budget,
    scheduler) are told PRUNED, and only a trial that raised is FAIL. So the study's COMPLETE
    trials are the search's selectable ones and its best trials are the search's Pareto front.

    Why PRUNED and not FAIL for a diverged trial: TPE never looks at FAIL trials, so it would go
    on proposing the neighbourhood of one that diverged; PRUNED trials it ranks below every
    complete one, and moves away from them.
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
        if status in UNSCORED_STATUSES or (result is not None and not N.is_final(result)):
            result = None  # no values: Ray tells Optuna PRUNED (FAIL if it errored)
        super().on_trial_complete(trial_id, result=result, error=error)


def make_searcher(
    space: SearchSpace, seed: int, journal_path: str | Path, study_name: str
) -> ClusterSearch:
    """Two objectives (names and directions from tune.names), seeded TPE, the space's points
    first; the study is `study_name` in a new journal file at `journal_path`."""
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
