"""bench/bench_search.py's arithmetic: the marginal overhead per extra trial from repeated runs.

    .venv/bin/python -m pytest tests/test_bench_search.py

Hand-made run rows; no search runs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "bench" / "bench_search.py"
_spec = importlib.util.spec_from_file_location("bench_search", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def run(trials: int, search_s: float, direct_s: float) -> dict:
    return bench.row(f"smoke-{trials}", trials, search_s, direct_s, 1.0)


def test_marginal_comes_from_the_medians_of_each_size() -> None:
    runs = [
        # 8 trials: search beyond direct 20, 22, 40 s (median 22); direct 10, 12, 11 (median 11)
        run(8, 30.0, 10.0),
        run(64, 70.0, 40.0),  # 64 trials: beyond direct 30, 26, 27 (median 27)
        run(8, 34.0, 12.0),
        run(64, 64.0, 38.0),  # direct 40, 38, 36 (median 38)
        run(8, 51.0, 11.0),  # one slow start-up: the median ignores it
        run(64, 63.0, 36.0),
    ]
    m = bench.marginal_of_repeats("smoke", runs)
    assert m["trials"] == 56
    assert m["direct_s"] == pytest.approx(38.0 - 11.0)  # the extra trials, called directly
    assert m["search_s"] == pytest.approx(27.0 + (27.0 - 22.0))  # ... plus their extra overhead
    assert m["overhead"] == pytest.approx(5.0 / 27.0)


def test_steady_seconds_leave_out_the_start_and_the_end() -> None:
    # ends at 100 (first trial), then one every 2 s: 4 intervals in 8 s, whatever came before
    assert bench.steady_seconds([108.0, 100.0, 104.0, 102.0, 106.0]) == 2.0
    assert bench.steady_seconds([100.0]) != bench.steady_seconds([100.0])  # NaN: no interval


def test_trial_ends_read_each_trials_last_result(tmp_path) -> None:
    import json

    for i, stamps in enumerate(([5, 9], [7])):
        d = tmp_path / "exp" / f"trial_{i}"
        d.mkdir(parents=True)
        (d / "params.json").write_text("{}")
        (d / "result.json").write_text("".join(json.dumps({"timestamp": t}) + "\n" for t in stamps))
    assert sorted(bench.trial_ends(tmp_path, "exp")) == [7.0, 9.0]


def test_the_diagnostic_runs_the_search_script_with_mlflow_writes_dropped(tmp_path) -> None:
    """--without-mlflow-writes runs tune/search.py's path as __main__, with its own arguments, in
    a driver whose StoreWriter drops every job (nothing queued, no thread started)."""
    import json
    import subprocess

    plain = bench.search_command("x", "smoke", "digits", 4, tmp_path)
    cmd = bench.search_command("x", "smoke", "digits", 4, tmp_path, mlflow_writes=False)
    assert cmd[:3] == [plain[0], "-c", bench.WITHOUT_MLFLOW_WRITES]
    assert cmd[3:] == plain[1:]  # the same script and arguments
    script = tmp_path / "search.py"  # stands in for tune/search.py
    script.write_text(
        "import json, sys\n"
        "from tune.mlflow_writer import StoreWriter\n"
        "w = StoreWriter('sqlite:///unused.db')\n"
        "w.submit('t', 'job', lambda: 1 / 0)\n"
        "print(json.dumps([__name__, sys.argv, w._queue.qsize(), w._thread is None]))\n"
    )
    out = subprocess.run(
        [*cmd[:3], str(script), *cmd[4:]], capture_output=True, text=True, check=True
    )
    name, argv, queued, no_thread = json.loads(out.stdout.splitlines()[-1])
    assert name == "__main__" and argv == [str(script), *cmd[4:]]
    assert queued == 0 and no_thread
