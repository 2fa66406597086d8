"""Where a search's MLflow store is and whether it can be used: checked before anything starts.

Light on purpose (no mlflow, ray or torch import): `python tune/search.py` checks the tracking URI
before its slow imports, so a dead or black-holed server is reported within 10 seconds.
"""

from __future__ import annotations

import os
import re
import urllib.request
from pathlib import Path

LOCAL_STORE = Path(__file__).resolve().parent.parent / "mlflow" / "store"  # git-ignored
_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")  # the user:password@ of a URL


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or used."""


def default_tracking_uri() -> str:
    """sqlite file under mlflow/store/ (absolute: trial processes run in other directories)."""
    return f"sqlite:///{LOCAL_STORE / 'mlflow.db'}"


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast with a one-line TrackingError if the store is unusable; creates nothing.

    A server gets `timeout_s` to answer /health, so with Python's start-up a dead or black-holed
    address is reported within 10 seconds of the command.
    """
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(_health_url(uri), timeout=timeout_s) as r:
                if r.status != 200:
                    raise TrackingError(
                        f"MLflow server {redact(uri)} answered HTTP {r.status} on /health"
                    )
        except (OSError, ValueError) as e:  # refused, timed out, DNS, bad URL
            raise TrackingError(f"MLflow server {redact(uri)} is unreachable: {e}") from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///")).expanduser().absolute()
        ancestor = next(d for d in db.parents if d.exists())  # created later, by the search
        if db.is_dir() or not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise TrackingError(f"--mlflow-uri {uri}: cannot create or write {db}")
    elif "://" not in uri:
        raise TrackingError(f"--mlflow-uri {uri!r}: expected http(s)://host:port or sqlite:///path")


def _health_url(uri: str) -> str:
    # urllib cannot take user:password@ in a URL; /health needs no credentials anyway.
    return _CREDENTIALS.sub(r"\1", uri.rstrip("/")) + "/health"


def store_is_up(uri: str, timeout_s: float = 2.0) -> bool:
    """A cheap probe: a server answers /health; a local store is always there."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        check_tracking_uri(uri, timeout_s)
    except TrackingError:
        return False
    return True


def prepare_store(uri: str) -> None:
    """Create the directory of a sqlite store (after every input check passed)."""
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)


def fail_fast_http() -> None:
    """Bound how long one MLflow HTTP call may block the search driver.

    MLflow's client retries a failed request 7 times with exponential backoff (minutes) and waits
    120 s for an answer: with the tracking server gone, every result would stall Ray's event loop
    and with it every trial. A few seconds per call is enough for a live server; an unset variable
    only is changed, so a user's own settings win.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def redact(text: str) -> str:
    """Hide credentials in URLs (scheme://user:password@host -> scheme://***@host)."""
    return _CREDENTIALS.sub(r"\1***@", text)


def error_line(e: BaseException, limit: int = 200) -> str:
    """An exception as one short log line, credentials redacted (MLflow errors can be pages)."""
    return redact(str(e)).splitlines()[0][:limit] if str(e) else type(e).__name__
