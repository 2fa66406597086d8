"""What a user sees when a search is stopped or cannot start: Ctrl-C, impossible resources.

Real `python tune/search.py` runs on digits. Ctrl-C is what a terminal sends: SIGINT to the
driver's whole process group (the search runs in a session of its own here; Ray's daemons block
SIGINT and its workers have process groups of their own, as under a terminal).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time

import pytest
import yaml
from conftest import (
    REPO,
    SEARCH,
    SMALL_MLP,
    Hold,
    finished,
    journal_front,
    run_search,
    search_front,
    search_runs,
    wait_for,
)

from mlflow import MlflowClient

EXPERIMENT = "faults"  # conftest.search_runs' default
MODEL = "ct-interrupt"
# small MLP trials on digits; width and code size are the test space's parameters
TRIAL = {k: v for k, v in SMALL_MLP.items() if k not in ("mlp_width_1", "latent_dim")}


@pytest.mark.slow
def test_ctrl_c_stops_without_a_champion_and_prints_the_resume_command(searches, tmp_path):
    """Ctrl-C while one trial has finished and two wait at a hold: exit 130, the count, this
    project's resume command, no model version, the parent run KILLED. The printed command
    finishes the search: exit 0, the champion registered, the Optuna journal's best trials equal
    to the search's front (tests/test_searcher.py moves a journal with its experiment)."""
    space = tmp_path / "space.yaml"
    doc = {
        "description": "Ctrl-C test",
        "parameters": {
            **TRIAL,
            "latent_dim": {"type": "int", "low": 2, "high": 8},
            "mlp_width_1": {"type": "int", "low": 8, "high": 32},
        },
    }
    space.write_text(yaml.safe_dump(doc, sort_keys=False))
    uri = f"sqlite:///{tmp_path}/m.db"
    exp_dir = tmp_path / "ray" / "c"
    args = ["--space", str(space), "--dataset", "digits", "--num-samples", "4"]
    args += ["--max-concurrent", "2", "--cpus-per-trial", "0.5", "--name", "c"]
    args += ["--storage-path", str(tmp_path / "ray"), "--mlflow-uri", uri]
    args += ["--experiment", EXPERIMENT, "--model-name", MODEL]
    hold = Hold(tmp_path / "hold", epoch=1)
    hold.on()
    first = searches(args, "first.log", **hold.env)
    held = wait_for(lambda: len(hold.held()) >= 2 and sorted(hold.held()), 300, "2 held", first)
    hold.release(held[0])  # it finishes; the third trial takes its place and waits too
    wait_for(lambda: held[0] in finished(exp_dir), 300, "the released trial's end", first)
    wait_for(lambda: len(hold.held()) >= 3, 300, "a third trial held", first)

    os.killpg(first.proc.pid, signal.SIGINT)  # Ctrl-C: the terminal's foreground group
    assert first.wait(300) == 130, first.tail()
    log = first.log.read_text()
    assert "1 of 4 trials finished" in log, log[-3000:]
    assert "Tuner.restore(" not in log  # Tune's own hint (its Python API) is not shown
    command = log.split("Resume the search with:\n", 1)[1].splitlines()[0].strip()
    resume = shlex.split(command)
    assert resume[:3] == ["python", "tune/search.py", "--resume"], command
    for flag in ("--name", "--storage-path", "--mlflow-uri", "--experiment", "--model-name"):
        assert flag in resume, command
    assert resume[resume.index("--cpus-per-trial") + 1] == "0.5"  # the trials' shape again
    client = MlflowClient(uri)
    assert client.search_model_versions(f"name = '{MODEL}'") == []
    parent, kids = search_runs(uri, "c", EXPERIMENT)
    assert parent.info.status == "KILLED"
    assert "RUNNING" not in {k.info.status for k in kids}

    hold.release()
    # Moved, the search cannot resume yet: Ray would create its 4th trial where it was.
    shutil.move(tmp_path / "ray", tmp_path / "moved")
    moved = [*resume[2:]]
    moved[moved.index("--storage-path") + 1] = str(tmp_path / "moved")
    out = run_search(*moved, timeout=300)
    assert out.returncode == 2 and "move it back" in out.stderr, out.stderr[-3000:]
    shutil.move(tmp_path / "moved", tmp_path / "ray")
    # The printed command, as a user runs it from the repository root.
    second = searches([*resume[2:]], "second.log")
    assert second.wait(600) == 0, second.tail()
    out = second.log.read_text()
    assert f"Winner registered as models:/{MODEL}@champion" in out, out[-3000:]
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    parent, kids = search_runs(uri, "c", EXPERIMENT)
    assert parent.info.status == "FINISHED"
    assert len(kids) == 4 and {k.info.status for k in kids} == {"FINISHED"}
    assert journal_front(exp_dir / "optuna.journal", "c") == search_front(
        uri, "c", EXPERIMENT, tmp_path
    )


def _one_error_line(out) -> str:
    lines = [line for line in out.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1, out.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("flag", ["--cpus-per-trial", "--gpus-per-trial"])
def test_more_than_the_machine_has_exits_2_before_ray_starts(tmp_path, flag):
    """Locally: one more CPU (GPU) per trial than the machine has stops the search with one line
    naming the flag, before Ray or MLflow start."""
    if flag == "--cpus-per-trial":
        asked = os.cpu_count() + 1
    else:
        import torch

        asked = torch.cuda.device_count() + 1
    start = time.monotonic()
    out = run_search(
        "--smoke", flag, str(asked), "--name", "big", "--storage-path", str(tmp_path / "ray"),
        "--mlflow-uri", f"sqlite:///{tmp_path}/m.db", timeout=600,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    line = _one_error_line(out)
    assert f"{flag} {asked}: this machine has" in line, line
    assert "Started a local Ray instance" not in out.stdout + out.stderr
    assert not (tmp_path / "ray").exists() and not (tmp_path / "m.db").exists()
    print(f"\n{flag} {asked}: exit 2 after {time.monotonic() - start:.0f} s: {line}")


@pytest.mark.slow
def test_more_than_the_local_ray_has_exits_2_before_any_trial(tmp_path):
    """Ray may get less than the machine (a cgroup limit; here Ray's resource override): the
    check after Ray starts stops the search before any trial, experiment or MLflow run."""
    start = time.monotonic()
    out = subprocess.run(
        [*SEARCH, "--smoke", "--cpus-per-trial", "1.5", "--name", "big",
         "--storage-path", str(tmp_path / "ray"), "--mlflow-uri", f"sqlite:///{tmp_path}/m.db"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env={**os.environ, "RAY_OVERRIDE_RESOURCES": '{"CPU": 1}'},
    )  # fmt: skip
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    line = _one_error_line(out)
    assert "--cpus-per-trial 1.5" in line, line
    assert not (tmp_path / "ray").exists()  # no experiment, so no trial
    print(f"\nexit 2 after {time.monotonic() - start:.0f} s: {line}")


def test_the_resume_command_names_what_the_command_line_must_repeat():
    from tune.search import check_args, parse_args, resolve_args, resume_command

    args = resolve_args(parse_args(["--smoke", "--name", "n", "--gpus-per-trial", "0.25"]))
    args.address = "auto"
    command = shlex.split(resume_command(check_args(args)))
    assert command[command.index("--address") + 1] == "auto"
    assert command[command.index("--gpus-per-trial") + 1] == "0.25"
    assert "--cpus-per-trial" not in command  # the default
