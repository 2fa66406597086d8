"""Where a command's CPU goes, process by process: the driver, Ray's trial workers, Ray's own
daemons (raylet, GCS, agents, log monitor) and anything else the command starts.

Runs the command, samples /proc every `--interval` seconds for the CPU time (user + system) of
the command's process and every process started after it, and prints CPU seconds per group, the
share of each, and the wall time. A process that exits between two samples is counted up to its
last sample, so short-lived processes are slightly under-counted. Linux only. Issue 13, item 4:
which part of a search's per-trial overhead is the driver's, and which is Ray's.

    .venv/bin/python bench/cpu_by_process.py -- .venv/bin/python tune/search.py --space smoke \\
        --dataset digits --num-samples 64 --max-concurrent 2 --cpus-per-trial 1 \\
        --storage-path /tmp/cpu/ray --mlflow-uri sqlite:////tmp/cpu/mlflow.db --name cpu
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def stat(pid: int) -> tuple[int, float] | None:
    """(start time in clock ticks since boot, CPU seconds used: user + system, its own and not
    its children's) of a live process, from one read of /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[19]), (int(fields[11]) + int(fields[12])) / TICK


def command_line(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except (FileNotFoundError, ProcessLookupError):
        return ""


def group(pid: int, driver: int, cmd: str) -> str:
    """The group a process's CPU counts in."""
    if pid == driver:
        return "driver (the command itself)"
    if cmd.startswith("ray::") or "default_worker.py" in cmd:
        return "Ray workers (trials; idle pool workers)"
    for name in ("raylet", "gcs_server", "dashboard", "log_monitor", "runtime_env", "monitor.py"):
        if name in cmd:
            return f"Ray daemon: {name}"
    return "other: " + (cmd.split(" ", 1)[0].rsplit("/", 1)[-1] or "?")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--interval", type=float, default=0.25)
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise SystemExit("cpu_by_process.py: no command given (put it after --)")
    stats = (stat(int(name)) for name in os.listdir("/proc") if name.isdigit())
    boot = max(st[0] for st in stats if st is not None)
    began = time.perf_counter()
    proc = subprocess.Popen(command)
    last: dict[int, tuple[str, float]] = {}  # pid -> (group, CPU seconds at its last sample)
    while True:
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            pid = int(name)
            st = stat(pid)
            if st is None or st[0] < boot:  # gone, or started before the command: not its own
                continue
            label = last[pid][0] if pid in last else group(pid, proc.pid, command_line(pid))
            last[pid] = (label, st[1])
        if proc.poll() is not None:
            break
        time.sleep(args.interval)
    wall = time.perf_counter() - began
    totals: dict[str, float] = defaultdict(float)
    for label, used in last.values():
        totals[label] += used
    whole = sum(totals.values())
    print(f"\nexit {proc.returncode}; wall {wall:.1f} s; CPU {whole:.1f} s in all", file=sys.stderr)
    print("| group | CPU (s) | share |\n|---|---|---|")
    for label, used in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {used:.1f} | {used / whole:.0%} |")
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
