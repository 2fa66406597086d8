"""Search throughput and the overhead of Ray Tune + MLflow over calling the trial function directly.

For each space it (1) runs the real command, `python tune/search.py --space S --num-samples N
--max-concurrent 2` (fresh Ray, fresh sqlite MLflow store), timing it end to end, then (2) replays
exactly the same trial configs through `tune.trial.run_trial` in a plain 2-process pool on the
same data, and reports trials per hour for both and the overhead ratio. Appends to
bench/RESULTS.md.

    .venv/bin/python bench/bench_search.py                          # smoke (digits) + medium (Fashion-MNIST)
    .venv/bin/python bench/bench_search.py --only smoke
    .venv/bin/python bench/bench_search.py --only smoke --num-samples 8 64
        # two sizes: also the marginal overhead per extra trial, which the fixed start-up
        # (imports, joining Ray, summary, champion model) does not enter
    .venv/bin/python bench/bench_search.py --only smoke --num-samples 8 64 --repeats 3
        # the same, each size 3 times (alternating), marginal overhead from the medians
    .venv/bin/python bench/bench_search.py --from-search NAME --storage-path DIR --dataset fashion-mnist
        # replay the trials of an existing search (e.g. the default one) instead of running one
    .venv/bin/python bench/bench_search.py --only smoke --num-samples 64 --repeats 3 \
        --without-mlflow-writes
        # a diagnostic, not the product: the search's driver drops every MLflow write it would
        # queue while trials run (the end-of-search sync then logs them), so the steady overhead
        # is Ray's and Optuna's alone
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CASES = {
    "smoke": {"space": "smoke", "dataset": "digits", "num_samples": 8},
    "medium": {
        "space": str(REPO / "bench/spaces/medium.yaml"),
        "dataset": "fashion-mnist",
        "num_samples": 6,
    },
}


def direct_trial(args: tuple[dict, str]) -> tuple[float, float]:
    """Run one trial in this worker process exactly as a 1-CPU Tune trial would; (its seconds,
    the unix time it ended)."""
    config, dataset_name = args
    import torch

    from tune.data import load_dataset
    from tune.trial import run_trial

    torch.set_num_threads(1)
    ds = direct_trial.cache.get(dataset_name) if hasattr(direct_trial, "cache") else None
    if ds is None:
        ds = load_dataset(dataset_name, seed=config["seed"])
        direct_trial.cache = {dataset_name: ds}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:  # the same outputs the Tune trial writes
        run_trial(config, ds, device="cpu", out_dir=out)
    return time.perf_counter() - start, time.time()


def trial_ends(storage: Path, name: str) -> list[float]:
    """The unix time (whole seconds: Tune's `timestamp`) of each trial's last result."""
    ends = []
    for result in sorted((storage / name).glob("*/result.json")):
        lines = result.read_text().splitlines()
        if lines:
            ends.append(float(json.loads(lines[-1])["timestamp"]))
    return ends


def steady_seconds(ends: list[float]) -> float:
    """Seconds per trial between the first trial's end and the last's: the rate at which trials
    come out once the search runs, without its start-up (Ray, imports, data) and its end
    (summary, champion), which dominate a short search and vary by more than the per-trial
    cost."""
    ends = sorted(ends)
    return (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else math.nan


def trial_configs(storage: Path, name: str) -> list[dict]:
    configs = []
    for params in sorted((storage / name).glob("*/params.json")):
        configs.append(json.loads(params.read_text()))
    return configs


# `python -c` program: tune/search.py (the arguments after -c) with the driver's MLflow writer
# dropping its jobs; tune/tracking.py's sync logs everything from Ray's records at the end.
WITHOUT_MLFLOW_WRITES = f"""
import runpy, sys
sys.path.insert(0, {str(REPO)!r})
from tune.mlflow_writer import StoreWriter
StoreWriter.submit = lambda self, trial_id, what, fn: None
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def search_command(
    label: str, space: str, dataset: str, num_samples: int, tmp: Path, mlflow_writes: bool = True
) -> list[str]:
    """The search command a case runs (see WITHOUT_MLFLOW_WRITES for mlflow_writes=False)."""
    launch = [sys.executable] if mlflow_writes else [sys.executable, "-c", WITHOUT_MLFLOW_WRITES]
    return [
        *launch,
        str(REPO / "tune/search.py"),
        "--space",
        space,
        "--dataset",
        dataset,
        "--num-samples",
        str(num_samples),
        "--max-concurrent",
        "2",
        "--cpus-per-trial",
        "1",
        "--storage-path",
        str(tmp / "ray"),
        "--mlflow-uri",
        f"sqlite:///{tmp}/mlflow.db",
        "--name",
        label,
    ]


def run_case(
    label: str, space: str, dataset: str, num_samples: int, mlflow_writes: bool = True
) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{label}-"))
    cmd = search_command(label, space, dataset, num_samples, tmp, mlflow_writes)
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    search_s = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"search failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return replay(label, tmp / "ray", label, dataset, search_s)


def replay(label: str, storage: Path, name: str, dataset: str, search_s: float) -> dict:
    configs = trial_configs(storage, name)
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2) as pool:
        timed = list(pool.map(direct_trial, [(c, dataset) for c in configs]))
    direct_s = time.perf_counter() - start
    r = row(label, len(configs), search_s, direct_s, sum(t for t, _ in timed) / len(configs))
    r["search_steady_s"] = steady_seconds(trial_ends(storage, name))
    r["direct_steady_s"] = steady_seconds([end for _, end in timed])
    r["steady_overhead"] = r["search_steady_s"] / r["direct_steady_s"] - 1
    return r


def row(case: str, n: int, search_s: float, direct_s: float, mean_trial_s: float) -> dict:
    """One table row: n trials took search_s through the search and direct_s called directly."""
    return {
        "case": case,
        "trials": n,
        "search_s": search_s,
        "direct_s": direct_s,
        "search_trials_per_h": 3600 * n / search_s,
        "direct_trials_per_h": 3600 * n / direct_s,
        "overhead": search_s / direct_s - 1,
        "mean_trial_s": mean_trial_s,
    }


def marginal_of_repeats(case: str, runs: list[dict]) -> dict:
    """What the extra trials of the largest size cost over the smallest, search vs direct, from
    one or more runs of each size: per size, the median over runs of the search's seconds beyond
    its own direct replay (each run's configs replayed, so TPE's different picks cancel) and the
    median direct time; fixed costs cancel out. Medians: one run's fixed costs (Ray's start,
    imports) vary by more than the per-trial cost."""
    sizes = sorted({r["trials"] for r in runs})
    small, large = sizes[0], sizes[-1]

    def at(n: int, key) -> float:
        return median([key(r) for r in runs if r["trials"] == n])

    def beyond(r: dict) -> float:
        return r["search_s"] - r["direct_s"]

    def trial_seconds(r: dict) -> float:
        return r["mean_trial_s"] * r["trials"]

    n = large - small
    extra = at(large, beyond) - at(small, beyond)
    direct = at(large, lambda r: r["direct_s"]) - at(small, lambda r: r["direct_s"])
    mean = (at(large, trial_seconds) - at(small, trial_seconds)) / n
    repeated = len(runs) > len(sizes)
    label = f"{case}, marginal ({small} -> {large})" + (", medians" if repeated else "")
    return row(label, n, direct + extra, direct, mean)


def machine() -> str:
    import torch

    from tune.provenance import cpu_model, git_commit

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    sha = git_commit()
    commit = sha[:7] + ("-dirty" if sha.endswith("-dirty") else "")
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, GPU: {gpu}, torch {torch.__version__}, "
        f"commit {commit}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", choices=list(CASES), default=list(CASES))
    p.add_argument(
        "--from-search", help="replay this existing search (Tune experiment name) instead"
    )
    p.add_argument(
        "--num-samples",
        type=int,
        nargs="+",
        help="trial counts to run each case with (default: the case's own); with two or more, "
        "also the marginal overhead between the smallest and largest",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run every size this many times, the sizes alternating; the marginal overhead "
        "comes from the medians (see marginal_of_repeats)",
    )
    p.add_argument(
        "--without-mlflow-writes",
        action="store_true",
        help="diagnostic: the search's driver drops the MLflow writes it queues while trials run "
        "(the sync after the search logs them)",
    )
    p.add_argument("--storage-path", default=str(REPO / "ray_results"))
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument(
        "--search-seconds", type=float, help="wall time of that search (from its log/MLflow)"
    )
    args = p.parse_args()
    if args.from_search:
        rows = [
            replay(
                args.from_search,
                Path(args.storage_path),
                args.from_search,
                args.dataset,
                args.search_seconds,
            )
        ]
    else:
        rows = []
        writes = not args.without_mlflow_writes
        suffix = "" if writes else "-no-mlflow-writes"
        for c in args.only:
            case = CASES[c]
            sizes = args.num_samples or [case["num_samples"]]
            runs = []
            for k in range(args.repeats):
                for n in sizes:
                    label = (f"{c}-{n}" if args.num_samples else c) + suffix
                    runs.append(run_case(label, case["space"], case["dataset"], n, writes))
                    if args.repeats > 1:
                        runs[-1]["case"] += f", run {k + 1}"
                    print(runs[-1], flush=True)
            rows += runs
            if len(sizes) > 1:
                rows.append(marginal_of_repeats(c, runs))
    lines = [
        f"\n## Search throughput and overhead ({time.strftime('%Y-%m-%d %H:%M')})\n",
        f"Machine: {machine()}. 2 concurrent trials, 1 CPU each; direct = the same configs through "
        "`run_trial` in a 2-process pool.\n",
        "Steady = seconds per trial between the first trial's end and the last's (search: Tune's "
        "whole-second timestamps), so start-up and the end of the search are left out.\n",
        "| case | trials | search wall (s) | direct wall (s) | search trials/h | direct trials/h "
        "| overhead | mean trial (s) | steady s/trial, search | steady s/trial, direct "
        "| steady overhead |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        steady = [r.get(k, math.nan) for k in ("search_steady_s", "direct_steady_s")]
        lines.append(
            f"| {r['case']} | {r['trials']} | {r['search_s']:.1f} | {r['direct_s']:.1f} | "
            f"{r['search_trials_per_h']:.0f} | {r['direct_trials_per_h']:.0f} | "
            f"{100 * r['overhead']:+.1f}% | {r['mean_trial_s']:.2f} | {steady[0]:.3f} | "
            f"{steady[1]:.3f} | {100 * r.get('steady_overhead', math.nan):+.1f}% |"
        )
    timed = [r for r in rows if "steady_overhead" in r]  # not the marginal rows
    largest = max((r["trials"] for r in timed), default=0)
    at_largest = [r["steady_overhead"] for r in timed if r["trials"] == largest]
    if len(at_largest) > 1:
        lines.append(
            f"\nSteady overhead at {largest} trials, median of {len(at_largest)} runs: "
            f"{100 * median(at_largest):+.1f}%"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    with open(REPO / "bench" / "RESULTS.md", "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
