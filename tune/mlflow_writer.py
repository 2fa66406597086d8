"""How MLflow writes reach a store that may be slow or down, without Tune ever waiting on them.

`StoreWriter` runs queued jobs on one background thread, in order. Tune calls its callbacks on
the driver's event loop, and a trial's `tune.report` waits until the driver takes its result, so
a callback only queues work here. A job that fails (after a few retries against a busy sqlite
file) marks the store offline: for `cooldown_s` jobs are skipped and their trials listed in
`pending`, then one cheap probe (/health) decides whether the store is back. Nothing is lost:
every result stays in Ray's experiment directory, and tune/reconcile.py logs what was skipped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from tune.store import error_line, redact, store_is_up

log = logging.getLogger("clustertune.tracking")

# After a failed MLflow call, the writer leaves the store alone this long, then probes it (/health)
# before calling it again: against a dead or black-holed server each call costs seconds.
OFFLINE_COOLDOWN_S = 30.0


def retry(fn: Callable[[], Any], what: str, attempts: int = 3) -> Any:
    """Retry transient store errors (a busy sqlite file, a restarting server) with backoff."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - MLflow raises many types for transient failures
            if i == attempts - 1:
                raise
            log.warning("MLflow %s failed (%s); retrying", what, error_line(e))
            time.sleep(0.5 * 2**i)
    return None


class StoreWriter:
    """One background thread that runs (trial id, what, job) in order and never raises."""

    def __init__(self, tracking_uri: str, cooldown_s: float = OFFLINE_COOLDOWN_S) -> None:
        self.tracking_uri = tracking_uri
        self.cooldown_s = cooldown_s
        # MLflow's HTTP client retries by itself; a sqlite store can be busy for a moment
        self.attempts = 1 if tracking_uri.startswith(("http://", "https://")) else 3
        self.pending: set[str] = set()  # trials whose run may miss something
        self.offline_until: float | None = None  # monotonic time; None while the store works
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def submit(self, trial_id: str, what: str, fn: Callable[[], Any]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._write, name="mlflow-writer", daemon=True)
            self._thread.start()
        self._queue.put((trial_id, what, fn))

    def _write(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._safely(*item)
            finally:
                self._queue.task_done()

    def close(self, timeout_s: float = 120.0) -> bool:
        """Let the writer finish what is queued (at most `timeout_s`); True if it did."""
        if self._thread is None:
            return True
        self._queue.put(None)
        self._thread.join(timeout_s)
        done = not self._thread.is_alive()
        self._thread = None if done else self._thread
        return done

    def online(self) -> bool:
        """False while cooling down after a failure; then one cheap probe decides."""
        if self.offline_until is None:
            return True
        if time.monotonic() < self.offline_until:
            return False
        if store_is_up(self.tracking_uri):
            log.warning("MLflow store %s is back; logging again", redact(self.tracking_uri))
            self.offline_until = None
            return True
        self.offline_until = time.monotonic() + self.cooldown_s
        return False

    def _safely(self, trial_id: str, what: str, fn: Callable[[], Any]) -> None:
        if not self.online():
            self.pending.add(trial_id)
            return
        try:
            retry(fn, what, self.attempts)
        except Exception as e:  # noqa: BLE001 - never let tracking kill the search
            self.pending.add(trial_id)
            self.offline_until = time.monotonic() + self.cooldown_s
            log.error(
                "MLflow %s for trial %s failed: %s. The search goes on; results stay in Ray's "
                "experiment directory and are logged when the store answers again (or by "
                "--resume)",
                what,
                trial_id,
                error_line(e, 300),
            )
