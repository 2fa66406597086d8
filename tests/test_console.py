"""The concise console (tune/console.py) on hand-made trials."""

import io
import pickle
import subprocess
import sys
from pathlib import Path

from tune import names as N
from tune.console import ProgressPrinter, clock, describe

REPO = Path(__file__).resolve().parent.parent

CONV = {"arch": "conv", "conv_depth": 2, "conv_channels_1": 16, "conv_channels_2": 8,
        "latent_dim": 46, "finetune": "dec", "reduction": "umap", "umap_dim": 10}  # fmt: skip
MLP = {"arch": "mlp", "mlp_depth": 1, "mlp_width_1": 128, "latent_dim": 64, "finetune": "none",
       "reduction": "pca", "pca_dim": 8}  # fmt: skip


def test_describe_names_the_network_and_its_stages():
    assert describe(CONV) == "conv 16/8 z46 dec umap10"
    assert describe(MLP) == "mlp 128 z64 pca8"
    assert describe({**MLP, "reduction": "none", "finetune": "abo"}) == "mlp 128 z64 abo"


def test_clock():
    assert (clock(45), clock(723), clock(3720)) == ("45s", "12m03s", "1h02m")


def test_one_line_per_trial_with_progress_status_and_front():
    out = io.StringIO()
    p = ProgressPrinter(total=4, out=out)
    ok = {N.STATUS: "ok"}
    a = {**ok, N.SILHOUETTE: 0.2, N.RECON_LOSS: 0.01}
    b = {**ok, N.SILHOUETTE: 0.1, N.RECON_LOSS: 0.02}  # dominated by a
    c = {**ok, N.SILHOUETTE: 0.5, N.RECON_LOSS: 0.015}  # a trade-off
    p.report("a", MLP, a)
    p.report("b", CONV, b, before=[a])
    p.report("c", CONV, c, before=[a, b])
    p.report("d", MLP, {N.STATUS: "diverged"}, before=[a, b, c])
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("[1/4 ###.........]") and lines[0].endswith("| ok  on the front")
    assert lines[1].endswith("| ok") and "silhouette 0.100  loss 0.02000" in lines[1]
    assert lines[2].endswith("on the front") and "conv 16/8 z46 dec umap10" in lines[2]
    assert lines[3].startswith("[4/4 ############]") and lines[3].endswith("| diverged")
    assert "ETA 0s" in lines[3]


def test_a_stopped_trial_shows_its_rung_values_apart_from_the_final_ones():
    out = io.StringIO()
    stopped = {N.EPOCH: 3, N.RECON_LOSS: 0.0128, N.RUNG_SILHOUETTE: 0.3124}
    line = ProgressPrinter(total=2, out=out).report("s", CONV, stopped)
    assert line.endswith(
        "| silhouette   -    loss 0.01280 | stopped at epoch 3 (rung silhouette 0.312)"
    )


class FakeTrial:
    def __init__(self, trial_id, config, status="RUNNING", last_result=None):
        self.trial_id, self.config, self.status = trial_id, config, status
        self.last_result = last_result or {}


def test_a_resumed_search_counts_the_trials_finished_before_it():
    """Tune's trial list holds the trials finished before a --resume: they count toward the
    progress and the front, the ETA comes from this command's trials only."""
    ok = {N.STATUS: "ok"}
    old = [
        FakeTrial("a", MLP, "TERMINATED", {**ok, N.SILHOUETTE: 0.4, N.RECON_LOSS: 0.01}),
        FakeTrial("b", MLP, "ERROR"),
    ]
    new = FakeTrial("c", CONV, "RUNNING", {**ok, N.SILHOUETTE: 0.3, N.RECON_LOSS: 0.02})
    out = io.StringIO()
    p = ProgressPrinter(total=4, out=out)
    p.on_trial_complete(0, [*old, new, FakeTrial("d", MLP)], new)
    line = out.getvalue().strip()
    assert line.startswith("[3/4 #########...]"), line
    assert line.endswith("| ok"), line  # dominated by a, finished before the resume


def test_progress_printer_pickles_without_its_stream():
    """Tune pickles its callbacks into the experiment state."""
    p = ProgressPrinter(total=3, out=io.StringIO())
    q = pickle.loads(pickle.dumps(p))
    assert q.out is None and q.total == 3


def test_console_log_sends_everything_to_the_log_and_only_say_to_the_terminal(tmp_path):
    """Output of the process and of its child processes (as Ray's) goes to the log file only;
    `say` lines reach both. The terminal is a file here: the real fd 1 of a child process."""
    log, terminal = tmp_path / "search.log", tmp_path / "terminal.txt"
    script = f"""
import os, subprocess, sys
sys.path.insert(0, {str(REPO)!r})
from tune.console import ConsoleLog, say
with ConsoleLog({str(log)!r}, verbose=len(sys.argv) > 1):
    print("a table row from Tune")
    os.write(2, b"a line from Ray's C++ core\\n")
    subprocess.run([sys.executable, "-c", "print('a worker line')"], check=True)
    say("trial 1 done")
print("after the search")
"""
    for verbose in (False, True):
        log.unlink(missing_ok=True)
        args = [sys.executable, "-c", script] + (["-v"] if verbose else [])
        with terminal.open("w") as out:
            subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=900)
        shown, logged = terminal.read_text(), log.read_text()
        for text in ("a table row from Tune", "C++ core", "a worker line", "trial 1 done"):
            assert text in logged, (text, logged)
            assert (text in shown) == (verbose or text == "trial 1 done"), (verbose, text, shown)
        assert "after the search" in shown and "after the search" not in logged


def test_our_warnings_reach_the_terminal(tmp_path):
    """A warning of this project's loggers (e.g. MLflow is down, the search goes on) is shown,
    not only logged; Ray's and other libraries' go to the log file."""
    log, terminal = tmp_path / "search.log", tmp_path / "terminal.txt"
    script = f"""
import logging, sys
sys.path.insert(0, {str(REPO)!r})
from tune.console import ConsoleLog
with ConsoleLog({str(log)!r}):
    logging.getLogger("clustertune.tracking").error("MLflow failed. The search goes on")
    logging.getLogger("ray.tune").warning("a warning of Ray's")
"""
    with terminal.open("w") as out:
        subprocess.run([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT,
                       check=True, timeout=900)  # fmt: skip
    shown, logged = terminal.read_text(), log.read_text()
    assert "error: MLflow failed. The search goes on" in shown and "The search goes on" in logged
    assert "a warning of Ray's" not in shown and "a warning of Ray's" in logged
