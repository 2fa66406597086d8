"""Multi-node scaling: search throughput on a 2-node Ray cluster versus a 1-node one (1 CPU each).

In one run of this script, on this machine: start a real 1-node Ray cluster (`ray start`, 1 CPU),
run the search command against it (`python tune/search.py --address ... --mlflow-uri ...`, N
equal-cost trials of bench/spaces/scaling.yaml on digits, 1 CPU per trial) and time it; stop the
cluster; then the same with a 2-node cluster (two `ray start`s, 1 CPU each, 2 trials at once).
Both searches log to one real MLflow tracking server on 127.0.0.1 (started once, not timed).
Reports trials per hour for both and the 2-node/1-node ratio (target >= 1.8x), two ways:

- end to end: N / the search command's wall time, which includes its fixed costs (Python and
  library imports, joining Ray, putting the dataset, the MLflow parent run, the Pareto summary and
  the champion model); `ray start` itself is timed separately, not included;
- steady state: N / (last trial's end - first trial's start), from the MLflow child runs.

Reference, in the same run and without Ray: the same kind of trial called directly
(`tune.trial.run_trial`, one thread, as in a 1-CPU trial), first in one process, then in two
processes side by side. Their ratio is what two trials at once can give on this machine at best
(cores that share caches, memory bandwidth or a hypervisor's time give less than 2x); the report
shows how much of it Ray reaches.

Appends a dated section (machine, versions, commit, load) to bench/RESULTS.md.

    .venv/bin/python bench/bench_scaling.py                       # 12 trials of ~20 s: ~10 min quiet
    .venv/bin/python bench/bench_scaling.py --space bench/spaces/scaling_wide.yaml  # memory-bound
    .venv/bin/python bench/bench_scaling.py --trials 4 --epochs 5 --no-write   # does it work? (~2 min)

Two 1-CPU nodes on one machine need two idle cores: on a 2-core machine any other busy process
takes the second node's core and the ratio with it. The "machine busy" column (from /proc/stat)
shows how many cores were busy in all during each search: about 1 resp. 2 plus a little for the
driver and Ray when the machine is otherwise quiet. Run it on a quiet machine for numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "bench"):  # run as a script: `tune` and bench_core's helpers importable
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_core import machine_lines  # noqa: E402
from bench_search import direct_trial  # noqa: E402

from mlflow import MlflowClient  # noqa: E402
from tune import names as N  # noqa: E402
from tune.local_cluster import LocalRayCluster, mlflow_server  # noqa: E402
from tune.space import load_space  # noqa: E402

SPACE = ROOT / "bench" / "spaces" / "scaling.yaml"
EXPERIMENT = "bench-scaling"
TARGET = 1.8


def busy_ticks() -> int:
    """Busy CPU ticks of the whole machine so far (all but idle and iowait), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]) - fields[3] - fields[4]


def busy_cores(seconds: float = 2.0) -> float:
    """Cores kept busy (by anything) over the next `seconds`."""
    t0 = busy_ticks()
    time.sleep(seconds)
    return (busy_ticks() - t0) / os.sysconf("SC_CLK_TCK") / seconds


def _direct_init(warm_config: dict[str, Any], barrier) -> None:
    """A direct-reference worker: data loaded and first-call costs (JIT, plotting) paid."""
    os.environ["OMP_NUM_THREADS"] = "1"  # what Ray sets for a 1-CPU trial (KMeans' OpenMP)
    direct_trial(({**warm_config, "epochs": 1}, "digits"))
    barrier.wait()  # the timed trials of all workers start together


def direct_reference(space: Path, per_process: int = 2) -> dict[str, float]:
    """Mean seconds of one trial called directly: alone in 1 process, and in 2 side by side."""
    s = load_space(space)
    configs = [{**s.sample(random.Random(i)), "seed": 0} for i in range(2 * per_process)]
    ctx = mp.get_context("spawn")  # fresh interpreters, like Ray's workers
    out = {}
    for procs in (1, 2):
        barrier = ctx.Barrier(procs)
        with ProcessPoolExecutor(
            procs, mp_context=ctx, initializer=_direct_init, initargs=(configs[0], barrier)
        ) as pool:
            jobs = [(c, "digits") for c in configs[: procs * per_process]]
            times = list(pool.map(direct_trial, jobs))
        out[procs] = statistics.mean(times)
        print(f"[{time.strftime('%H:%M:%S')}] direct, {procs} process(es): {times}", flush=True)
    return {"solo_s": out[1], "duo_s": out[2], "ceiling": 2 * out[1] / out[2]}


def run_case(nodes: int, trials: int, space: Path, uri: str, tmp: Path) -> dict[str, Any]:
    """Start a `nodes`-node cluster (1 CPU each), run and time the search on it, stop it."""
    name = f"scaling-{nodes}node"
    with LocalRayCluster() as cluster:
        t0 = time.perf_counter()
        for i in range(nodes):
            cluster.add_node(num_cpus=1, head=i == 0)
        cluster.wait_for_nodes()
        ray_start_s = time.perf_counter() - t0
        before = busy_cores()  # everything else on the machine, with our idle cluster
        print(f"[{time.strftime('%H:%M:%S')}] {nodes} node(s) up; searching", flush=True)
        ticks, t0 = busy_ticks(), time.perf_counter()
        out = subprocess.run(
            [
                sys.executable,
                str(ROOT / "tune" / "search.py"),
                "--address",
                cluster.address,
                "--mlflow-uri",
                uri,
                "--space",
                str(space),
                "--dataset",
                "digits",
                "--num-samples",
                str(trials),
                "--cpus-per-trial",
                "1",
                "--max-concurrent",
                str(nodes),
                # Shared storage for Tune: both nodes see this machine's filesystem.
                "--storage-path",
                str(tmp / "ray"),
                "--name",
                name,
                "--experiment",
                EXPERIMENT,
                "--model-name",
                "bench-scaling",
            ],
            env=cluster.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        busy = (busy_ticks() - ticks) / os.sysconf("SC_CLK_TCK") / wall
    if out.returncode != 0:
        raise SystemExit(
            f"search on {nodes} node(s) failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}"
        )
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.runName` = '{name}'"
    )
    parent = runs[0].info.run_id
    kids = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    if len(kids) != trials:
        raise SystemExit(f"{nodes} node(s): {len(kids)} trial runs in MLflow, expected {trials}")
    span = (max(k.info.end_time for k in kids) - min(k.info.start_time for k in kids)) / 1000
    return {
        "nodes": nodes,
        "trials": trials,
        "ray_start_s": ray_start_s,
        "wall_s": wall,
        "span_s": span,
        "mean_trial_s": statistics.mean(k.data.metrics[N.TRIAL_SECONDS] for k in kids),
        "nodes_used": len({k.data.tags[N.NODE] for k in kids}),
        "busy_before": before,
        "busy": busy,
    }


def report(
    rows: list[dict[str, Any]],
    ref: dict[str, float],
    args: argparse.Namespace,
    started: str,
    load0: str,
) -> str:
    one, two = rows
    e2e = one["wall_s"] / two["wall_s"]
    steady = one["span_s"] / two["span_s"]
    lines = [
        f"\n## {started} UTC — bench_scaling.py: search throughput on 2 Ray nodes vs 1 (1 CPU each)\n",
        f"Command: `python3 bench/bench_scaling.py --trials {args.trials} --epochs {args.epochs} "
        f"--space {args.space_shown}`. "
        f"Each case: a fresh `ray start` cluster on this machine (nodes x 1 CPU, token auth), "
        f"`tune/search.py --address ... --mlflow-uri http://127.0.0.1:PORT --space "
        f"{args.space_shown} --dataset digits --cpus-per-trial 1 --max-concurrent NODES`, "
        f"{args.trials} equal-cost trials ({args.epochs} AE epochs each).\n",
        *machine_lines(),
        f"- load average (1/5/15 min) at start {load0}, at end {'/'.join(f'{x:.2f}' for x in os.getloadavg())}",
        "- machine busy = cores busy in all (ours and others') during the search; before = with "
        "our cluster idle, i.e. everyone else\n",
        "| nodes | trials | nodes used | ray start (s) | search wall (s) | trials/h end to end | "
        "trials span (s) | trials/h steady | mean trial (s) | machine busy before / during |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['nodes']} | {r['trials']} | {r['nodes_used']} | {r['ray_start_s']:.1f} | "
            f"{r['wall_s']:.1f} | {3600 * r['trials'] / r['wall_s']:.0f} | {r['span_s']:.1f} | "
            f"{3600 * r['trials'] / r['span_s']:.0f} | {r['mean_trial_s']:.1f} | "
            f"{r['busy_before']:.2f} / {r['busy']:.2f} |"
        )
    verdict = lambda x: "met" if x >= TARGET else "NOT met"  # noqa: E731
    lines += [
        "",
        f"2 nodes / 1 node: **{e2e:.2f}x end to end** (target >= {TARGET}x: {verdict(e2e)}), "
        f"{steady:.2f}x steady state. Fixed cost of one search (end-to-end wall minus trials "
        f"span): {one['wall_s'] - one['span_s']:.1f} s on 1 node, "
        f"{two['wall_s'] - two['span_s']:.1f} s on 2.",
        "",
        f"Reference without Ray (same run, same kind of trial through `run_trial`, 1 thread): "
        f"{ref['solo_s']:.1f} s per trial alone, {ref['duo_s']:.1f} s with two side by side, so "
        f"two trials at once give at most **{ref['ceiling']:.2f}x** on this machine. Ray reaches "
        f"{100 * e2e / ref['ceiling']:.0f}% of that end to end and "
        f"{100 * steady / ref['ceiling']:.0f}% in the steady state.",
    ]
    if two["busy_before"] > 0.3 or min(r["busy"] - r["nodes"] for r in rows) > 0.6:
        lines.append(
            f"\nDisturbed: other processes kept about {two['busy_before']:.1f} cores busy before the "
            "2-node search; on this machine's "
            f"{os.cpu_count()} cores the second node competed with them. Rerun on a quiet machine."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--trials", type=int, default=12, help="trials per search (even: 2 nodes balance)"
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="AE epochs per trial (default: the space's 24)"
    )
    p.add_argument(
        "--space", type=Path, default=SPACE, help="equal-cost space (default: %(default)s)"
    )
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    load0 = "/".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp_name:
        tmp = Path(tmp_name)
        space = args.space.resolve()
        args.space_shown = os.path.relpath(space, ROOT)
        config = yaml.safe_load(space.read_text())
        if args.epochs is not None:
            config["parameters"]["epochs"] = args.epochs
            space = tmp / space.name
            space.write_text(yaml.safe_dump(config, sort_keys=False))
        args.epochs = config["parameters"]["epochs"]
        ref = direct_reference(space)
        with mlflow_server(tmp / "mlflow") as server:
            rows = [run_case(n, args.trials, space, server.uri, tmp) for n in (1, 2)]
    text = report(rows, ref, args, started, load0)
    print(text)
    if not args.no_write:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
