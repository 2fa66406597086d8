"""The MLflow writes of a search's trials, measured alone: driver CPU per trial, per request kind.

    .venv/bin/python bench/bench_tracking.py --experiment DIR [--repeats 5] [--no-write]

DIR is the Tune experiment directory of a finished search, for instance of the smoke search that
bench_search.py runs (`tune/search.py --smoke --dataset digits --num-samples 64 --storage-path S
--name N` makes S/N). Without Ray and without the trials, this replays in one thread what the
search's MLflowTrialLogger writes for each of them, into a fresh sqlite store: the run and its
tags, the dataset input, the params, the results (all of a trial's reports in one request, as
when they wait for the writer), the artifacts, the end tags and status, and the parent's
hypervolume point. In a search these writes run on the driver, on the same cores as the trials,
so their CPU time is part of the per-trial overhead that bench_search.py measures end to end
(issue 13, item 4); alone, they can be measured to a millisecond on a noisy machine.

Two ways to write, each replayed --repeats times (each replay in a fresh process, after a
warm-up there; the two alternate), medians reported:

  reference  a run lookup (`search_runs` by trial id) before each run is created: what a
             resumed search does, and what every search did before.
  now        tune.trial_runs as a new search uses it (no lookup under a parent run it created).

Appends its table to bench/RESULTS.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlflow import MlflowClient  # noqa: E402
from tune import names as N  # noqa: E402
from tune import trial_runs  # noqa: E402
from tune.tracking import dataset_input  # noqa: E402

VARIANTS = ("reference", "now")
# The client's requests that a trial's writes make, timed one by one.
REQUESTS = (
    "search_runs",
    "create_run",
    "log_inputs",
    "log_batch",
    "log_artifact",
    "set_terminated",
    "log_metric",
)
# The requests in which the two variants differ; every other one they make alike, so between
# the variants those show the measurement's noise.
DIFFER = ("search_runs",)


@dataclass
class Trial:
    name: str
    config: dict
    results: list[dict]
    checkpoint: Path | None


class Checkpoint:
    """The one method of a Ray Checkpoint that TrialRuns.end_run calls."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        yield str(self.path)


def load_trials(experiment: Path) -> list[Trial]:
    """Every trial of a Tune experiment directory with a final result, in trial-number order."""
    trials = []
    for d in sorted(experiment.glob("*/result.json")):
        results = [json.loads(line) for line in d.read_text().splitlines() if line.strip()]
        if not results or not N.is_final(results[-1]):
            continue
        checkpoints = sorted(d.parent.glob("checkpoint_*"))
        config = json.loads((d.parent / "params.json").read_text())
        trials.append(
            Trial(d.parent.name, config, results, checkpoints[-1] if checkpoints else None)
        )
    if not trials:
        raise SystemExit(f"--experiment {experiment}: no trial with a final result.json")
    return sorted(
        trials, key=lambda t: trial_runs.trial_number(t.results[-1].get("experiment_tag")) or 0
    )


def timed(client: MlflowClient, spent: dict[str, float]) -> None:
    """Wrap the client's requests so that each adds its thread CPU seconds to spent[kind]."""
    for name in REQUESTS:
        method = getattr(client, name)

        def wrapper(*a, _method=method, _name=name, **k):
            start = time.thread_time()
            try:
                return _method(*a, **k)
            finally:
                kind = _name
                if _name == "log_batch":  # which parts: params, metrics, tags
                    kind += ":" + ",".join(p for p in ("params", "metrics", "tags") if k.get(p))
                spent[kind] += time.thread_time() - start

        setattr(client, name, wrapper)


def replay(trials: list[Trial], variant: str, tmp: Path) -> dict[str, float]:
    """CPU milliseconds per trial of each request kind ("total": all of the trials' writes)."""
    root = Path(tempfile.mkdtemp(dir=tmp))
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiment_id = client.create_experiment("bench", artifact_location=(root / "a").as_uri())
    parent = client.create_run(experiment_id, run_name="search").info.run_id
    data = dataset_input({"name": "digits", "source": "sklearn", "n": 1797}, "0123abcd")
    runs = trial_runs.TrialRuns(
        client, experiment_id, parent, dataset=data, new_parent=variant == "now"
    )
    spent: dict[str, float] = defaultdict(float)
    timed(client, spent)
    start = time.thread_time()
    for i, t in enumerate(trials):
        run_id = runs.run_id_for(t.results[-1]["trial_id"], t.config, t.name, i)
        runs.log_results(run_id, t.results)
        checkpoint = Checkpoint(t.checkpoint) if t.checkpoint else None
        tags = {"ray.trial_status": "TERMINATED", "ray.num_failures": "0"}
        runs.end_run(run_id, checkpoint, False, None, t.results[-1], tags)
        client.log_metric(parent, N.HYPERVOLUME, 0.5, step=i + 1)
    spent["total"] = time.thread_time() - start
    return {k: 1000 * v / len(trials) for k, v in spent.items()}


def fresh_replay(experiment: Path, variant: str) -> dict[str, float]:
    """One timed replay in a fresh process (run through `measure`): a warm-up replay of a few
    trials first (imports, SQLAlchemy's statement caches), into a store of its own."""
    trials = load_trials(experiment)
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        replay(trials[:8], variant, Path(tmp))
        return replay(trials, variant, Path(tmp))


def measure(experiment: Path, repeats: int) -> dict[str, dict[str, float]]:
    """variant -> request kind -> median ms per trial over `repeats` replays of each.

    Each replay runs in a process of its own (one process's later replays get slower as its
    heap grows), one at a time, in the order reference, now, now, reference, ... so that
    neither variant always goes first.
    """
    order = [v for k in range(repeats) for v in (VARIANTS if k % 2 == 0 else VARIANTS[::-1])]
    samples: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    spawn = multiprocessing.get_context("spawn")
    for v in order:
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
            samples[v].append(pool.submit(fresh_replay, experiment, v).result())
    kinds = sorted({k for s in samples.values() for run in s for k in run})
    return {v: {k: median(run.get(k, 0.0) for run in samples[v]) for k in kinds} for v in VARIANTS}


def table(result: dict[str, dict[str, float]]) -> list[str]:
    ref, now = result["reference"], result["now"]
    kinds = sorted(
        (k for k in ref.keys() | now.keys() if k != "total"), key=lambda k: -ref.get(k, 0)
    )

    def subtotal(variant: dict[str, float], differ: bool) -> float:
        return sum(variant.get(k, 0.0) for k in kinds if (k in DIFFER) == differ)

    return [
        "| request | reference (ms/trial) | now (ms/trial) |",
        "|---|---|---|",
        *(f"| {k} | {ref.get(k, 0):.2f} | {now.get(k, 0):.2f} |" for k in kinds),
        f"| requests the two make alike | {subtotal(ref, False):.1f} | {subtotal(now, False):.1f} |",
        f"| requests that differ | {subtotal(ref, True):.1f} | {subtotal(now, True):.1f} |",
        f"| **all of a trial's writes** | **{ref['total']:.1f}** | **{now['total']:.1f}** |",
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", type=Path, required=True, help="a Tune experiment directory")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-write", action="store_true", help="print only; no RESULTS.md entry")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = p.parse_args(argv)
    if not args.experiment.is_dir():
        raise SystemExit(f"--experiment {args.experiment}: not a directory")
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    trials = load_trials(args.experiment)  # here first: a bad directory fails at once
    load0 = "/".join(f"{x:.2f}" for x in os.getloadavg())
    result = measure(args.experiment, args.repeats)
    load1 = "/".join(f"{x:.2f}" for x in os.getloadavg())
    ratio = result["reference"]["total"] / result["now"]["total"]

    from tune.provenance import cpu_model, git_commit

    lines = [
        f"\n## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — MLflow writes per trial, "
        "replayed without Ray (bench_tracking.py, issue 13, item 4)\n",
        f"Command: `python bench/bench_tracking.py --experiment {args.experiment} --repeats "
        f"{args.repeats}`\n",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores; commit {git_commit()[:12]}",
        f"- Load average (1/5/15 min) at start {load0}, at end {load1}",
        f"- {len(trials)} trials; thread CPU per trial, median of {args.repeats} replays per "
        "variant, each in a fresh process and into a fresh sqlite store\n",
        *table(result),
        f"\nreference / now: **{ratio:.2f}x** the CPU of a trial's writes.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        with open(args.results, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
