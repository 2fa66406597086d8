"""bench/bench_scheduler.py's pure part: hypervolume as a step function of wall-clock time, when it
first reaches a target, and reading trials back from a Tune experiment directory.

    .venv/bin/python -m pytest tests/test_bench_scheduler.py

Hand-made (timestamp, silhouette, loss, status) rows; no search runs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from tune import names as N
from tune.selection import hypervolume

_PATH = Path(__file__).resolve().parent.parent / "bench" / "bench_scheduler.py"
_spec = importlib.util.spec_from_file_location("bench_scheduler", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_scheduler"] = bench  # dataclasses look their module up while it executes
_spec.loader.exec_module(bench)

REF = (0.0, 0.1)  # silhouette 0, loss 0.1: the box is 1 x 0.1
START = 1000.0
OK, STOPPED = N.Status.OK, None


def hv(*points: tuple[float, float]) -> float:
    return hypervolume(list(points), REF)


def test_steps_follow_the_front_in_time_order() -> None:
    rows = [
        # Out of order on purpose: the steps follow the timestamps, not the row order.
        (START + 300, 0.6, 0.02, OK),  # moves the front outward: a step
        (START + 60, 0.5, 0.05, OK),  # first ok trial: first step
        (START + 120, 0.4, 0.06, OK),  # dominated by the first: no step
        (START + 200, 0.9, 0.01, STOPPED),  # stopped early: nothing, however good its values
        (START + 240, 0.95, 0.005, N.Status.DIVERGED),  # not ok: nothing
        (START + 250, math.nan, 0.01, N.Status.DEGENERATE),
    ]
    steps = bench.hypervolume_steps(rows, START, REF)
    assert steps == [
        (0.0, 0.0),
        (60.0, pytest.approx(hv((0.5, 0.05)))),
        (300.0, pytest.approx(hv((0.5, 0.05), (0.6, 0.02)))),
    ]
    # (0.6, 0.02) dominates (0.5, 0.05): the front is that one point, 0.6 x 0.08 of the 1 x 0.1 box.
    assert steps[-1][1] == pytest.approx(0.6 * 0.08 / 0.1)


def test_same_second_is_one_step_and_early_stamps_count_at_zero() -> None:
    rows = [
        (START - 5, 0.2, 0.09, OK),  # stamped before the start (clock, or Tune's start): at 0
        (START + 10, 0.5, 0.05, OK),
        (START + 10, 0.3, 0.01, OK),  # same second, a trade-off: one step with both
    ]
    steps = bench.hypervolume_steps(rows, START, REF)
    assert [t for t, _ in steps] == [0.0, 10.0]
    assert steps[0][1] == pytest.approx(hv((0.2, 0.09)))
    assert steps[1][1] == pytest.approx(hv((0.2, 0.09), (0.5, 0.05), (0.3, 0.01)))


def test_no_ok_trial_is_zero_throughout() -> None:
    steps = bench.hypervolume_steps([(START + 5, 0.9, 0.01, STOPPED)], START, REF)
    assert steps == [(0.0, 0.0)]
    assert bench.value_at(steps, 1e9) == 0.0
    assert bench.time_to_reach(steps, 0.1) is None
    # A target of 0 (a reference search with no ok trial) is had from the start.
    assert bench.time_to_reach(steps, 0.0) == 0.0


def test_value_at_and_time_to_reach() -> None:
    steps = [(0.0, 0.0), (60.0, 0.25), (300.0, 0.48)]
    assert bench.value_at(steps, 59.9) == 0.0
    assert bench.value_at(steps, 60.0) == 0.25  # right-continuous: the step counts at its time
    assert bench.value_at(steps, 299.0) == 0.25
    assert bench.value_at(steps, 1e6) == 0.48
    assert bench.time_to_reach(steps, 0.25) == 60.0
    assert bench.time_to_reach(steps, 0.3) == 300.0
    assert bench.time_to_reach(steps, 0.48 * (1 + 1e-15)) == 300.0  # equal up to rounding
    assert bench.time_to_reach(steps, 0.5) is None


def _search(scheduler: str, rows: list, wall_s: float) -> object:
    return bench.Search(scheduler, Path("."), START, wall_s, rows, 0, REF, "command start", "", "")


def test_compare_against_fifo() -> None:
    fifo = _search("fifo", [(START + 100, 0.5, 0.05, OK), (START + 900, 0.6, 0.02, OK)], 1000.0)
    moasha = _search(
        "mo-asha",
        [
            (START + 50, 0.5, 0.05, OK),
            (START + 80, 0.7, 0.9, STOPPED),
            (START + 400, 0.6, 0.02, OK),  # FIFO's final front, at 0.4 of FIFO's time
            (START + 1100, 0.7, 0.01, OK),  # after FIFO's end: not in the value at FIFO's end
        ],
        1200.0,
    )
    c = bench.compare(fifo, moasha)
    assert c.fifo_final == pytest.approx(hv((0.6, 0.02)))
    assert c.reach_s == 400.0
    assert c.time_ratio == pytest.approx(0.4)
    assert c.hv_ratio == pytest.approx(1.0)
    assert c.moasha_final > c.fifo_final
    assert moasha.finished == 3 and moasha.stopped == 1
    assert moasha.trials_per_hour == pytest.approx(3600 * 4 / 1200)
    text = "\n".join(bench.report_lines(c))
    assert "**0.40x** FIFO's wall time (target <= 0.5x: met)" in text
    assert "**1.000x** FIFO's final (target >= 1x: met)" in text


def test_a_section_is_dated_by_the_later_search_and_names_each_commit() -> None:
    """With --fifo-from, FIFO's search ran in an earlier benchmark, maybe at another commit."""
    from dataclasses import replace

    day = 1796342400.0  # 2026-12-04 00:00 UTC
    fifo = replace(_search("fifo", [], 100.0), start=day - 3 * 3600, commit="aaa")
    moasha = replace(_search("mo-asha", [], 100.0), start=day + 600, commit="bbb")
    c = bench.compare(fifo, moasha)
    later = bench.dt.datetime.fromtimestamp(day + 600).astimezone().strftime("%Y-%m-%d %H:%M")
    text = bench.section(c, "default", Path("p.png"), ("0", "0"), "", "cmd")
    assert text.splitlines()[1].startswith(f"## {later} ")
    assert "- git commit: fifo aaa, mo-asha bbb" in text
    same = bench.section(
        replace(c, fifo=replace(fifo, commit="bbb")), "d", Path("p"), ("", ""), "", ""
    )
    assert "- git commit: bbb\n" in same


def test_no_targets_when_fifo_never_beats_the_reference() -> None:
    # Losses above the reference loss (an autoencoder no better than the mean image): nothing on
    # the front counts, so there is no hypervolume to reach and no ratio to report.
    fifo = _search("fifo", [(START + 100, 0.5, 0.2, OK)], 1000.0)
    moasha = _search("mo-asha", [(START + 50, 0.4, 0.05, OK)], 800.0)
    c = bench.compare(fifo, moasha)
    assert c.fifo_final == 0.0 and math.isnan(c.hv_ratio)
    text = "\n".join(bench.report_lines(c))
    assert "targets not measured" in text
    assert "met" not in text


def test_read_trials_takes_each_trials_last_result(tmp_path: Path) -> None:
    def trial(name: str, results: list[dict], error: bool = False) -> None:
        d = tmp_path / name
        d.mkdir()
        (d / "params.json").write_text("{}")
        if results:
            (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in results))
        if error:
            (d / "error.txt").write_text("boom")

    epoch = {"timestamp": 10, N.RECON_LOSS: 0.05}  # a per-epoch result: no status
    trial("a", [epoch, {"timestamp": 20, N.SILHOUETTE: 0.4, N.RECON_LOSS: 0.03, N.STATUS: OK}])
    trial("b", [epoch, {"timestamp": 15, N.RUNG_SILHOUETTE: 0.1, N.RECON_LOSS: 0.04}])  # stopped
    trial("c", [epoch], error=True)  # failed for good
    trial(  # failed once, retried from its checkpoint, then finished
        "d",
        [epoch, epoch, {"timestamp": 30, N.SILHOUETTE: 0.2, N.RECON_LOSS: 0.02, N.STATUS: OK}],
        error=True,
    )
    trial("e", [])  # never reported
    rows, failed = bench.read_trials(tmp_path)
    assert failed == 1
    assert [(r[0], r[3]) for r in rows] == [(20.0, OK), (15.0, None), (30.0, OK)]
    assert math.isnan(rows[1][1])  # a stopped trial has rung values, not the objective


class _LaunchedError(Exception):
    """Raised by the fake subprocess.run: the command was built, nothing runs."""


@pytest.mark.parametrize("equal_time", [True, False])
def test_equal_time_stops_mo_asha_at_fifos_wall_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, equal_time: bool
) -> None:
    fifo = tmp_path / "bench-fifo"
    fifo.mkdir()
    timing = {
        "start": START,
        "end": START + 750.0,
        "reference": list(REF),
        "command": "",
        "commit": "",
    }
    (fifo / bench.TIMING_FILE).write_text(json.dumps(timing))
    launched: list[list[str]] = []

    def fake_run(cmd: list[str], **kw: object) -> None:
        launched.append(cmd)
        raise _LaunchedError

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    argv = ["--fifo-from", str(fifo), "--mo-asha-samples", "40", "--no-write"]
    argv += ["--time-attr", "epoch", "--grace-period", "3"]
    with pytest.raises(_LaunchedError):
        bench.main(argv + (["--equal-time"] if equal_time else []))
    (cmd,) = launched  # FIFO came from the directory: only mo-asha's search was launched
    assert cmd[cmd.index("--scheduler") + 1] == "mo-asha"
    assert cmd[cmd.index("--num-samples") + 1] == "40"
    assert cmd[cmd.index("--time-attr") + 1 : cmd.index("--time-attr") + 4] == [
        "epoch", "--grace-period", "3",
    ]  # fmt: skip
    if equal_time:  # FIFO's 750 s from its command's start
        assert cmd[cmd.index("--time-budget-min") + 1] == "12.50"
    else:
        assert "--time-budget-min" not in cmd
