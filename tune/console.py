"""What a search prints while it runs: one line per finished trial, with progress and ETA.

Ray Tune's own console tables (verbose 1-2) print every metric of every trial, ~80 of them here;
its current console engine ignores a passed progress reporter, so the supported way to a concise
view is `verbose=0` plus a `tune.Callback` that prints (NOTES.md section 7). `--verbose` brings
Tune's tables back.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

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


class ProgressPrinter(tune.Callback):
    """Prints one line as each trial ends: progress bar, elapsed, ETA, the trial in a few words,
    both objectives, its status and whether it entered the Pareto front of the trials so far."""

    def __init__(self, total: int, out: TextIO | None = None, start: float | None = None) -> None:
        self.total = total
        self.out = out
        self.start = time.time() if start is None else start
        self.done = 0
        self.front: list[tuple[float, float]] = []  # (silhouette, loss) of finished ok trials

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.report(trial.trial_id, trial.config, trial.last_result or {})

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.report(trial.trial_id, trial.config, {N.STATUS: "error"})

    def report(self, trial_id: str, config: Mapping[str, Any], result: Mapping[str, Any]) -> str:
        self.done += 1
        status = result.get(N.STATUS, "incomplete")
        sil = float(result.get(N.SILHOUETTE, math.nan))
        loss = float(result.get(N.RECON_LOSS, math.nan))
        note = ""
        if status == "ok" and math.isfinite(sil) and math.isfinite(loss):
            dominated = any(s >= sil and l <= loss and (s, l) != (sil, loss) for s, l in self.front)
            note = "" if dominated else "  on the front"
            self.front.append((sil, loss))
        elapsed = time.time() - self.start
        left = elapsed / self.done * max(self.total - self.done, 0)
        filled = round(BAR * min(self.done / max(self.total, 1), 1.0))
        line = (
            f"[{self.done:>{len(str(self.total))}}/{self.total} {'#' * filled}{'.' * (BAR - filled)}]"
            f" {clock(elapsed)}, ETA {clock(left)} | {trial_id} {describe(config):<26}"
            f" | silhouette {sil:.3f}  loss {loss:.5f} | {status}{note}"
        )
        print(line, file=self.out or sys.stdout, flush=True)
        return line
