"""bench/cpu_by_process.py: a command's CPU, split between the command and what it starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "cpu_by_process.py"
# the command burns CPU itself, then in a child process, and exits 3
CHILD = "x = sum(range(2 * 10**7))"
COMMAND = (
    "import subprocess, sys; x = sum(range(2 * 10**7)); "
    f"subprocess.run([sys.executable, '-c', {CHILD!r}]); sys.exit(3)"
)


def test_the_command_and_its_child_are_counted_apart_and_the_exit_code_passes():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--interval", "0.05", "--", sys.executable, "-c", COMMAND],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 3, out.stderr
    rows = {
        line.split(" | ")[0].strip("| "): float(line.split(" | ")[1])
        for line in out.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| group")
    }
    assert rows["driver (the command itself)"] > 0
    child = [v for k, v in rows.items() if k.startswith("other: python")]
    assert child and child[0] > 0, rows
    assert "CPU" in out.stderr and "wall" in out.stderr


def test_no_command_is_a_one_line_error():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode != 0
    assert (
        out.stderr.strip().splitlines()[-1]
        == "cpu_by_process.py: no command given (put it after --)"
    )
