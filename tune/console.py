"""What a search prints while it runs: one line per finished trial, with progress and ETA.

Ray Tune's own console tables print every metric of every trial, ~80 of them here, and its
current console engine ignores a passed progress reporter. So the search runs inside a
`ConsoleLog`: everything the process and its Ray workers write to stdout/stderr (Tune's tables,
worker logs, warnings) goes to a log file in the experiment directory, and the terminal gets only
what `say` writes: the start, one line per finished trial (`ProgressPrinter`, a `tune.Callback`)
and the summary. `--verbose` sends everything to the terminal as well.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from ray import tune

from tune import names as N
from tune.config import describe  # ray-free, so trials can title their figures with it

BAR = 12  # characters of the progress bar


def clock(seconds: float) -> str:
    """'1h02m', '12m03s' or '45s'."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class ConsoleLog:
    """While active, file descriptors 1 and 2 (so Python's prints, logging, Ray's and its child
    processes' output) go to a log file; `say` writes to the terminal and the log. With `verbose`
    the terminal gets everything too. Redirecting the descriptors, not sys.stdout, is what catches
    Ray: its logging handlers hold the original stream objects, its workers' lines are printed by
    a driver thread, and its C++ core writes to fd 2 directly."""

    def __init__(self, path: Path, verbose: bool = False) -> None:
        self.path = Path(path)
        self.verbose = verbose
        self._lock = threading.Lock()
        self._saved: tuple[int, int] | None = None
        self._log: BinaryIO | None = None
        self._pump: threading.Thread | None = None

    def __enter__(self) -> ConsoleLog:
        global _ACTIVE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._log = open(self.path, "ab", buffering=0)  # noqa: SIM115 - closed in __exit__
        self._saved = (os.dup(1), os.dup(2))
        read, write = os.pipe()
        os.dup2(write, 1)
        os.dup2(write, 2)
        os.close(write)
        self._pump = threading.Thread(target=self._copy, args=(read,), daemon=True)
        self._pump.start()
        _ACTIVE = self
        # Our own warnings (e.g. "MLflow is down, the search goes on") are for the user too.
        self._handler = _SayHandler(logging.WARNING)
        for name in OUR_LOGGERS:
            logging.getLogger(name).addHandler(self._handler)
        return self

    def _copy(self, read: int) -> None:
        with os.fdopen(read, "rb", buffering=0) as source:
            while chunk := source.read(65536):
                with self._lock:
                    self._log.write(chunk)
                    if self.verbose:
                        os.write(self._saved[0], chunk)

    def say(self, text: str, err: bool = False) -> None:
        data = (text + "\n").encode()
        with self._lock:
            self._log.write(data)
            os.write(self._saved[1 if err else 0], data)

    def __exit__(self, *exc) -> None:
        global _ACTIVE
        for name in OUR_LOGGERS:
            logging.getLogger(name).removeHandler(self._handler)
        _ACTIVE = None
        sys.stdout.flush()
        sys.stderr.flush()
        out, err = self._saved
        os.dup2(out, 1)  # closes the pipe's write end in fds 1 and 2: the pump sees EOF
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
        # Ray's own processes may still hold the write end; the pump is a daemon then.
        self._pump.join(timeout=2.0)
        with self._lock:
            self._log.close()


_ACTIVE: ConsoleLog | None = None
OUR_LOGGERS = ("tune", "clustertune")  # tune.* modules and the MLflow writer's


class _SayHandler(logging.Handler):
    """Log records of this project's loggers, as lines for the terminal (and the log)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            say(f"{record.levelname.lower()}: {record.getMessage()}", err=True)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _number(x: float, digits: int) -> str:
    """x with `digits` decimals, or a dash as wide (no such value: a trial stopped early)."""
    return f"{x:.{digits}f}" if math.isfinite(x) else "-".center(digits + 2)


def say(text: str = "", err: bool = False) -> None:
    """A line for the user: to the terminal (and the log while a ConsoleLog is active)."""
    if _ACTIVE is not None:
        _ACTIVE.say(text, err)
    else:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)


class ProgressPrinter(tune.Callback):
    """Prints one line as each trial ends: progress bar, elapsed, ETA, the trial in a few words,
    both objectives, its status and whether it entered the Pareto front of the trials so far.

    Counts come from the trial list Tune passes (a resumed search counts the trials finished
    before it); ETA from the trials finished since this command started. Holds no file: Tune
    pickles its callbacks with the experiment, and `say` finds the terminal."""

    def __init__(self, total: int, start: float | None = None, out: TextIO | None = None) -> None:
        self.total = total
        self.start = time.time() if start is None else start
        self.out = out  # tests: a stream instead of `say`
        self.done_here = 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "out": None}

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._report(trials, trial, trial.last_result or {})

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._report(trials, trial, {N.STATUS: N.Status.ERROR})

    def _report(self, trials: list, trial, result: Mapping[str, Any]) -> None:
        # Tune calls these hooks before it marks the trial finished.
        others = [t for t in trials if t is not trial and t.status in ("TERMINATED", "ERROR")]
        before = [t.last_result or {} for t in others if t.status == "TERMINATED"]
        self.report(trial.trial_id, trial.config, result, before, len(others) + 1)

    def report(
        self,
        trial_id: str,
        config: Mapping[str, Any],
        result: Mapping[str, Any],
        before: list[Mapping[str, Any]] = (),
        done: int | None = None,
    ) -> str:
        """The line for a finished trial; `before`: the final results of the trials finished
        earlier, `done`: how many have finished with this one."""
        self.done_here += 1
        done = self.done_here if done is None else done
        status = result.get(N.STATUS, N.Status.INCOMPLETE)
        sil = float(result.get(N.SILHOUETTE, math.nan))
        loss = float(result.get(N.RECON_LOSS, math.nan))
        if not N.is_final(result) and result.get(N.EPOCH):  # stopped by the scheduler or budget
            status = f"{N.Status.STOPPED} at epoch {int(result[N.EPOCH])}"
            # Its loss is the epoch's validation loss; its only silhouette is the rung's proxy
            # (a subsample, before fine-tuning ends), shown apart from the final metric's column.
            rung = float(result.get(N.RUNG_SILHOUETTE, math.nan))
            if math.isfinite(rung):
                status += f" (rung silhouette {rung:.3f})"
        note = ""
        if status == N.Status.OK and math.isfinite(sil) and math.isfinite(loss):
            front = [
                (float(r[N.SILHOUETTE]), float(r[N.RECON_LOSS]))
                for r in before
                if r.get(N.STATUS) == N.Status.OK
            ]
            dominated = any(s >= sil and l <= loss and (s, l) != (sil, loss) for s, l in front)
            note = "" if dominated else "  on the front"
        elapsed = time.time() - self.start
        left = elapsed / self.done_here * max(self.total - done, 0)
        filled = round(BAR * min(done / max(self.total, 1), 1.0))
        line = (
            f"[{done:>{len(str(self.total))}}/{self.total} {'#' * filled}{'.' * (BAR - filled)}]"
            f" {clock(elapsed)}, ETA {clock(left)} | {trial_id} {describe(config):<26}"
            f" | silhouette {_number(sil, 3)}  loss {_number(loss, 5)} | {status}{note}"
        )
        if self.out is not None:
            print(line, file=self.out, flush=True)
        else:
            say(line)
        return line
